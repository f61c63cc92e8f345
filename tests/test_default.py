"""The shipped default base model: present in the package, bit-identical to its record, and reproducing its
recorded base reward; and the cached rebuild path of ntkdyn.default."""
import hashlib
import json
import os

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import default, sft

from test_sft import TINY


def test_shipped_weights_match_their_record():
    path = default.default_model_dir()
    assert path == default.SHIPPED_DIR and os.path.isdir(path)
    info = default.shipped_info()
    sha = hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()
    assert sha == info["sha256"]
    assert info["recipe_hash"] == default.recipe_hash(default.RECIPE) and info["recipe"] == default.RECIPE
    lm = default.base_model()
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert lm.config == nd.ModelConfig.from_hf(cfg)
    assert (lm.config.family, lm.config.d_model, lm.config.n_layers, lm.config.vocab_size) == ("gpt_neox", 128, 4, 52)
    assert lm.num_params == info["num_params"] == 806_656
    assert lm.tokenizer is not None and lm.tokenizer.decode(lm.tokenizer.encode("sum 47:")) == "sum 47:"


def test_shipped_model_reproduces_its_base_reward():
    """The evaluation the recipe ran at the end of training (all 16 held-out "sum" prompts x 32 samples, seed 0)."""
    info = default.shipped_info()
    r = default.RECIPE
    ev = sft.evaluate(default.base_model(), r["task"], n_prompts=r["eval_prompts"], samples=r["eval_samples"],
                      seed=r["seed"])
    assert ev["n_prompts"] * ev["samples"] == info["base_eval"]["n_prompts"] * info["base_eval"]["samples"] == 512
    # sampling is deterministic on one machine (exact equality here); allow 4 of 512 samples to flip elsewhere
    assert abs(ev["reward"] - info["base_reward"]) <= 4 / 512, (ev["reward"], info["base_reward"])
    assert np.isclose(ev["distinct"], info["base_eval"]["distinct"], atol=0.5)


def test_default_model_dir_builds_once_and_reuses(tmp_path, monkeypatch):
    recipe = dict(task="sum", family="gpt_neox", **dict(TINY, eval_prompts=0, progress=None))
    del recipe["progress"]
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    stale = os.path.join(cache, f".tmp-{default._dir_name(recipe)}-999999999-abc")  # a killed build's leftovers
    os.makedirs(stale)
    with pytest.raises(FileNotFoundError, match="not built"):
        default.default_model_dir(cache, build=False, recipe=recipe)
    path = default.default_model_dir(cache, progress=False, recipe=recipe)
    assert os.path.basename(path) == f"default-sum-gpt_neox-{default.recipe_hash(recipe)}"
    assert os.path.dirname(path) == cache
    conf = json.load(open(os.path.join(path, "sft_config.json")))
    assert conf["recipe_hash"] == default.recipe_hash(recipe) and conf["build_seconds"] > 0

    def boom(*a, **k):
        raise AssertionError("rebuilt a cached default model")

    monkeypatch.setattr(sft, "train", boom)
    assert default.default_model_dir(cache, progress=False, recipe=recipe) == path
    assert default.default_model_dir(cache, build=False, recipe=recipe) == path
    lm = default.base_model(cache, recipe=recipe)
    assert lm.config.family == "gpt_neox" and lm.tokenizer is not None
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp")]  # the stale staging dir was swept too
    # another recipe is another directory; the environment variable picks the cache
    assert default.recipe_hash(dict(recipe, steps=4)) != default.recipe_hash(recipe)
    monkeypatch.setenv("NTKDYN_CACHE", cache)
    assert default.cache_root() == cache
    assert default.default_model_dir(build=False, recipe=recipe) == path
    # the default recipe is the shipped model, never built
    assert default.default_model_dir(build=False) == default.SHIPPED_DIR
