"""The shipped default base models ("sum", and "plus" for the single-answer task): present in the package,
bit-identical to their records, and reproducing their recorded base rewards; and the cached rebuild path of
ntkdyn.default."""
import hashlib
import json
import os

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import default, sft

from test_sft import TINY


@pytest.mark.parametrize("task", ["sum", "plus"])
def test_shipped_weights_match_their_record(task):
    path = default.default_model_dir(task=task)
    assert path == default.SHIPPED_DIRS[task] and os.path.isdir(path)
    info = default.shipped_info(task)
    sha = hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()
    assert sha == info["sha256"]
    assert info["recipe_hash"] == default.recipe_hash(default.RECIPES[task]) and info["recipe"] == default.RECIPES[task]
    assert info["recipe"] == dict(default.RECIPE, task=task)  # the same recipe, on another task
    lm = default.base_model(task=task)
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert lm.config == nd.ModelConfig.from_hf(cfg)
    assert (lm.config.family, lm.config.d_model, lm.config.n_layers, lm.config.vocab_size) == ("gpt_neox", 128, 4, 52)
    assert lm.num_params == info["num_params"] == 806_656
    assert lm.tokenizer is not None and lm.tokenizer.decode(lm.tokenizer.encode("sum 47:")) == "sum 47:"


def test_the_default_model_is_unchanged_and_serves_tasks_without_their_own():
    assert default.shipped_info()["sha256"].startswith("0cc0b9b8") and default.recipe_hash(default.RECIPE) == \
        "e23b905855"
    assert default.SHIPPED_DIR == default.SHIPPED_DIRS["sum"] == default.default_model_dir()
    for task in ("sum", "multiple", "word", None):  # no model of their own: the default one, as before
        assert default.default_model_dir(task=task) == default.SHIPPED_DIR
    assert default.default_model_dir(task="plus") != default.SHIPPED_DIR
    assert default.default_model_dir(recipe=default.RECIPES["plus"], build=False) == default.SHIPPED_DIRS["plus"]
    with pytest.raises(ValueError, match="differs from task"):
        default.default_model_dir(recipe=default.RECIPE, task="plus")


@pytest.mark.parametrize("task", ["sum", "plus"])
def test_shipped_model_reproduces_its_base_reward(task):
    """The evaluation the recipe ran at the end of training (held-out prompts x 32 samples, seed 0: the 16 test
    prompts of "sum", 64 of "plus")."""
    info = default.shipped_info(task)
    r = default.RECIPES[task]
    ev = sft.evaluate(default.base_model(task=task), r["task"], n_prompts=r["eval_prompts"],
                      samples=r["eval_samples"], seed=r["seed"])
    n = ev["n_prompts"] * ev["samples"]
    assert n == info["base_eval"]["n_prompts"] * info["base_eval"]["samples"] == {"sum": 512, "plus": 2048}[task]
    # sampling is deterministic on one machine (exact equality here); allow 4 of 512 samples to flip elsewhere
    assert abs(ev["reward"] - info["base_reward"]) <= 4 / 512, (ev["reward"], info["base_reward"])
    assert np.isclose(ev["unique_answers"], info["base_eval"]["unique_answers"], atol=0.5)
    if task == "plus":  # room to learn and a signal to learn from
        assert 0.1 <= info["base_reward"] <= 0.6 and ev["answer_space"] == 1.0


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
