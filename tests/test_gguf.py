"""GGUF import (ntkdyn.models.gguf): tiny random Llama / Qwen2 / Qwen3 / Gemma 3 / Gemma 2 GGUF files written here
with the `gguf` package, converted, and compared with transformers' own GGUF loader on the same file (a test-only
reference)."""
import argparse
import json
import os
import time

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer

import gguf_models as gm
import ntkdyn as nd
from ntkdyn.models import gguf as ng
from ntkdyn.models.config import CheckpointError
from ntkdyn.models.hf import read_weights

K_QUANTS = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
TEXTS = ["The capital of France is Paris.", "hello world, hello there!", "naïve café 12345 — emoji 😀🎉",
         "def f(x):\n    return x ** 2\n", "   spaces\t\ttabs\n\n\n  ", "<|im_start|>user\nhi<|im_end|>", "", " "]
CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}]


@pytest.fixture(scope="module")
def bpe():
    return gm.tiny_bpe()


def _write(tmp_path, bpe, name="tiny.gguf", **kw):
    path = os.path.join(str(tmp_path), name)
    return path, gm.write_llama(path, bpe=bpe, **kw)


def _reference_logits(path, ids):
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32)
    with torch.no_grad():
        return ref(torch.tensor(ids)).logits.numpy()


def _ids(V, seed=0):
    return np.random.default_rng(seed).integers(0, V, (2, 9)).astype(np.int32)


@pytest.mark.parametrize("tied", [True, False])
def test_f32_weights_round_trip_exactly(tmp_path, bpe, tied):
    path, hf = _write(tmp_path, bpe, tied=tied)
    out = ng.convert_gguf(path, str(tmp_path / "out"))
    state = read_weights(out)
    assert set(state) == set(hf)  # tied: no lm_head.weight
    for k, v in hf.items():  # Q/K rows un-permuted: the Hugging Face layout comes back bit for bit
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["max_position_embeddings"]) == \
        ("llama", 64, 2, 4, 2, 128, 128)
    assert cfg["tie_word_embeddings"] is tied and cfg["rms_norm_eps"] == 1e-5 and cfg["vocab_size"] == 320
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)
    assert json.load(open(os.path.join(out, "gguf_source.json")))["format"] == ng.FORMAT


@pytest.mark.parametrize("qtype,tied", [(Q.F32, True), (Q.F16, False), (Q.BF16, True), (Q.Q8_0, True),
                                        (Q.Q4_0, True), (Q.Q4_1, False)] + [(q, q == Q.Q6_K) for q in K_QUANTS],
                         ids=lambda v: getattr(v, "name", "tied" if v else "untied"))
def test_logits_match_transformers_gguf_loader(tmp_path, bpe, qtype, tied):
    dims = dict(d=256, d_ff=512) if qtype in K_QUANTS else {}  # K-quant rows hold 256-value blocks
    path, _ = _write(tmp_path, bpe, qtype=qtype, tied=tied, **dims)
    lm = nd.load(ng.convert_gguf(path, str(tmp_path / "out")))
    assert lm.config.tie_word_embeddings is tied
    ids = _ids(lm.config.vocab_size)
    z, zr = np.asarray(lm.logits(ids)), _reference_logits(path, ids)
    assert np.abs(z - zr).max() <= 1e-4 * np.abs(zr).max(), (qtype.name, np.abs(z - zr).max(), np.abs(zr).max())


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_matches_transformers(tmp_path, bpe, arch):
    # transformers' GGUF loader reads no head_dim for Qwen3 and takes its default, 128 (as in real Qwen3 files)
    dims = dict(d=512, d_ff=256) if arch == "qwen3" else {}
    path, _ = _write(tmp_path, bpe, arch=arch, tied=False, pre="qwen2", **dims)
    lm = nd.load(ng.convert_gguf(path, str(tmp_path / "out")))
    assert lm.config.model_type == arch and lm.config.qkv_bias == (arch == "qwen2")
    assert lm.config.qk_norm == (arch == "qwen3")
    ids = _ids(lm.config.vocab_size, 1)
    z, zr = np.asarray(lm.logits(ids)), _reference_logits(path, ids)
    assert np.abs(z - zr).max() <= 1e-4 * np.abs(zr).max()


@pytest.mark.parametrize("qtype,step", [(Q.Q8_0, 0.01), (Q.Q5_0, 0.05), (Q.Q5_1, 0.05)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_quantized_weights_stay_close_to_the_originals(tmp_path, bpe, qtype, step):
    # transformers reads no Q5_0/Q5_1: check that the dequantized, un-permuted weights are the originals up to the
    # quantisation step (a wrong row order would be off by the weights' own size, ~0.2).
    path, hf = _write(tmp_path, bpe, qtype=qtype)
    state = read_weights(ng.convert_gguf(path, str(tmp_path / "out")))
    for k, v in hf.items():
        assert np.abs(state[k] - v).max() < step, k


def test_tokenizer_matches_transformers(tmp_path, bpe):
    path, _ = _write(tmp_path, bpe, pre="gpt2")  # transformers' GGUF loader knows this pre-tokenizer (see below)
    out = ng.convert_gguf(path, str(tmp_path / "out"))
    tok = nd.load(out).tokenizer
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    saved = AutoTokenizer.from_pretrained(out)
    for t in TEXTS:
        ids = tok.encode(t)
        assert ids == ref.encode(t, add_special_tokens=False) == saved.encode(t, add_special_tokens=False), t
        assert tok.decode(ids) == saved.decode(ids, skip_special_tokens=True)
    assert tok.encode("<|im_start|>") == [1]
    chat = tok.apply_chat_template(CHAT)
    assert chat == list(ref.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"])
    assert tok.chat_template == gm.CHAT_TEMPLATE
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eos_ids) == (1, 2, 0, [2])


def test_smollm_pre_tokenizer_splits_digits_one_by_one(tmp_path, bpe):
    # llama.cpp's "smollm" pre-tokenizer (llama-vocab.cpp) splits \p{N} one by one before GPT-2's regex, as
    # SmolLM's own tokenizer.json (Digits(individual_digits=True)) does. transformers' GGUF loader does not know
    # "smollm" and keeps GPT-2's regex, so it is the reference only on text without digit runs.
    path, _ = _write(tmp_path, bpe, pre="smollm")
    tok = ng.read_gguf(path)[2]
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    assert tok.encode("12345") == [tok.tokenizer.token_to_id(c) for c in "12345"]
    assert ref.encode("12345", add_special_tokens=False) != tok.encode("12345")  # the tiny vocab merges digits
    for t in TEXTS:
        if not any(c.isdigit() for c in t):
            assert tok.encode(t) == ref.encode(t, add_special_tokens=False), t


def test_every_eos_id_reaches_generation_config(tmp_path, bpe):
    path, _ = _write(tmp_path, bpe, extra=lambda w: w.add_eot_token_id(0))
    out = ng.convert_gguf(path, str(tmp_path / "out"))
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == [2, 0]
    lm = nd.load(out)
    assert lm.tokenizer.eos_ids == [2, 0] and lm.config.eos_token_id == 2
    again = lm.save(str(tmp_path / "saved"))  # lm.save keeps them
    assert json.load(open(os.path.join(again, "generation_config.json")))["eos_token_id"] == [2, 0]


def test_load_gguf_file_converts_once_into_the_cache(tmp_path, bpe, monkeypatch):
    monkeypatch.setenv("NTKDYN_CACHE", str(tmp_path / "cache"))
    path, _ = _write(tmp_path, bpe)
    lm = nd.load(path)
    (converted,) = os.listdir(tmp_path / "cache" / "models")
    assert converted.startswith("gguf-") and converted.endswith(str(os.path.getsize(path)))
    stamp = os.path.getmtime(tmp_path / "cache" / "models" / converted / "model.safetensors")
    lm2 = nd.load(path)
    assert os.path.getmtime(tmp_path / "cache" / "models" / converted / "model.safetensors") == stamp
    ids = _ids(lm.config.vocab_size)
    np.testing.assert_array_equal(np.asarray(lm.logits(ids)), np.asarray(lm2.logits(ids)))


def test_unsupported_architecture_quantisation_and_tokenizer(tmp_path, bpe):
    path, _ = _write(tmp_path, bpe, arch="gemma")
    with pytest.raises(CheckpointError, match="architecture 'gemma' is not supported"):
        ng.convert_gguf(path, str(tmp_path / "out"))
    path, _ = _write(tmp_path, bpe, pre="made-up")
    with pytest.raises(CheckpointError, match="pre-tokenizer 'made-up'"):
        ng.read_gguf(path)
    path = os.path.join(str(tmp_path), "iq4.gguf")
    real = gm.encode
    gm.encode = lambda w, qtype, rng: (np.random.default_rng(0).integers(0, 120, (w.shape[0], w.shape[1] // 32 * 18),
                                                                         dtype=np.uint8), Q.IQ4_NL)
    try:
        gm.write_llama(path, bpe=bpe)
    finally:
        gm.encode = real
    with pytest.raises(CheckpointError, match="quantisation type IQ4_NL"):
        ng.read_gguf(path)
    assert not os.path.exists(tmp_path / "out")  # nothing half-written


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="bad.gguf: not a readable GGUF file"):
        ng.convert_gguf(str(bad), str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match="no such file"):
        ng.read_gguf(str(tmp_path / "missing.gguf"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        ng.convert_gguf(str(bad), str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "x"


def test_cli_convert_gguf(tmp_path, bpe, capsys):
    path, _ = _write(tmp_path, bpe)
    p = argparse.ArgumentParser()
    ng.add_arguments_convert_gguf(p)
    assert ng.run_convert_gguf(p.parse_args([path, str(tmp_path / "cli")])) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert os.path.isfile(tmp_path / "cli" / "model.safetensors")


# ---------------------------------------------------------------------------------------------- Gemma 3 / Gemma 2
@pytest.fixture(scope="module")
def sp():
    return gm.tiny_sentencepiece()


def _write_gemma(tmp_path, sp, name="gemma.gguf", **kw):
    path = os.path.join(str(tmp_path), name)
    return path, gm.write_gemma3(path, sp=sp, **kw)


def test_gemma3_f32_weights_and_config(tmp_path, sp):
    path, hf = _write_gemma(tmp_path, sp)
    out = ng.convert_gguf(path, str(tmp_path / "out"))
    state = read_weights(out)
    assert set(state) == set(hf)  # tied; ffn_norm is the pre-feed-forward norm; q/k norms; 1 + w undone exactly
    for k, v in hf.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    c = nd.load(out).config
    assert (c.family, c.model_type, c.d_model, c.head_dim, c.n_heads, c.n_kv_heads, c.sliding_window) == \
        ("gemma3", "gemma3_text", 256, 256, 4, 1, 4)
    assert c.layer_types == ("sliding_attention",) * 5 + ("full_attention", "sliding_attention")
    assert (c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar, c.norm_eps) == (1e6, 1e4, 256, 1e-6)
    assert c.tie_word_embeddings and c.qk_norm and c.final_logit_softcapping is None
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (2, 1, 0)
    saved = json.load(open(os.path.join(out, "config.json")))
    assert saved["architectures"] == ["Gemma3ForCausalLM"] and saved["sliding_window"] == 4
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == [1, 6]  # <end_of_turn>


@pytest.mark.parametrize("qtypes", [gm.GEMMA_MIX] + [{k: q for k in gm.GEMMA_MIX} for q in
                                                     (Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K)],
                         ids=["real_file_mix", "Q8_0", "Q5_0", "Q4_K", "Q6_K"])
def test_gemma3_logits_match_transformers_gguf_loader(tmp_path, sp, qtypes):
    # 13 positions past a sliding window of 4, seven layers (the sixth global), norms stored as 1 + w
    path, _ = _write_gemma(tmp_path, sp, qtypes=qtypes)
    lm = nd.load(ng.convert_gguf(path, str(tmp_path / "out")))
    ids = np.random.default_rng(0).integers(0, lm.config.vocab_size, (2, 13)).astype(np.int32)
    z, zr = np.asarray(lm.logits(ids)), _reference_logits(path, ids)
    assert np.abs(z - zr).max() <= 1e-4 * np.abs(zr).max(), np.abs(z - zr).max() / np.abs(zr).max()


def test_gemma2_with_soft_capping_matches_transformers(tmp_path, sp):
    # transformers' GGUF loader keeps Gemma 2's default cappings (50, 30) whatever the file says: write those
    path, _ = _write_gemma(tmp_path, sp, arch="gemma2", caps=(50.0, 30.0))
    lm = nd.load(ng.convert_gguf(path, str(tmp_path / "out")))
    c = lm.config
    assert (c.model_type, c.qk_norm, c.attn_logit_softcapping, c.final_logit_softcapping) == ("gemma2", False, 50, 30)
    assert c.layer_types[:2] == ("sliding_attention", "full_attention") and c.rope_local_theta is None
    ids = np.random.default_rng(1).integers(0, c.vocab_size, (2, 13)).astype(np.int32)
    z, zr = np.asarray(lm.logits(ids)), _reference_logits(path, ids)
    assert np.abs(z - zr).max() <= 1e-4 * np.abs(zr).max()


GEMMA_TEXTS = TEXTS + ["    indented  twice   thrice", "  x  ", "<start_of_turn>user\nhi<end_of_turn>\n",
                       "[multimodal] tokens", "\u200b zero width"]


def test_gemma3_sentencepiece_tokenizer_matches_transformers(tmp_path, sp):
    from ntkdyn.models.tokenizer import encode_prompt

    path, _ = _write_gemma(tmp_path, sp)
    out = ng.convert_gguf(path, str(tmp_path / "out"))
    tok = nd.load(out).tokenizer
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="gemma.gguf")
    saved = AutoTokenizer.from_pretrained(out)
    for t in GEMMA_TEXTS:  # whitespace runs, byte fallback (emoji, accents), control and user-defined tokens
        ids = tok.encode(t)
        assert ids == ref.encode(t, add_special_tokens=False) == saved.encode(t, add_special_tokens=False), t
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True) == saved.decode(ids, skip_special_tokens=True)
        assert encode_prompt(tok, t) == ref.encode(t) == saved.encode(t) == [2] + ids  # BOS, as add_bos_token says
    assert tok.encode("<end_of_turn>") == [6] and tok.encode("  ") == [tok.tokenizer.token_to_id("\u2581\u2581")]
    assert max(tok.encode("".join(GEMMA_TEXTS))) < len(sp[0])  # nothing added past the vocabulary
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eos_ids, tok.chat_template) == (2, 1, 0, [1, 6], None)


def test_unsupported_files_are_refused_from_the_header(tmp_path, sp, bpe, monkeypatch):
    # a 100,000-token vocabulary of an unsupported architecture: refused before the vocabulary is parsed
    big = (sp[0] + [f"piece{i}" for i in range(100_000 - len(sp[0]))], sp[1] + [1] * (100_000 - len(sp[0])),
           [0.0] * 100_000)
    path, _ = _write_gemma(tmp_path, big, arch="gemma4", d=32, d_ff=32, head_dim=8, n_layers=1)
    monkeypatch.setattr(ng, "open_gguf", lambda p: pytest.fail("the GGUF reader parsed a refused file"))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="architecture 'gemma4' is not supported; expected one of .*gemma3"):
        nd.load(path)
    assert time.perf_counter() - t0 < 1.0
    meta = ng.header(path)
    assert meta["general.architecture"] == "gemma4" and meta["gemma4.attention.sliding_window"] == 4
    assert "tokenizer.ggml.tokens" not in meta  # arrays are stepped over
    path, _ = _write(tmp_path, bpe, name="sp_llama.gguf")
    with open(path, "rb") as f:
        raw = f.read()
    bad = raw.replace(b"\x04\x00\x00\x00\x00\x00\x00\x00gpt2", b"\x04\x00\x00\x00\x00\x00\x00\x00llam", 1)
    assert bad != raw
    (tmp_path / "sp_llama2.gguf").write_bytes(bad)  # a Llama file with a "llam" tokenizer model: refused by name
    with pytest.raises(CheckpointError, match="tokenizer model 'llam' is not supported for architecture 'llama'"):
        ng.read_gguf(str(tmp_path / "sp_llama2.gguf"))
    (tmp_path / "cut.gguf").write_bytes(raw[:40])
    with pytest.raises(CheckpointError, match="cut.gguf: not a readable GGUF file"):
        ng.header(str(tmp_path / "cut.gguf"))


def test_processes_converting_one_file_at_once_take_turns(tmp_path, bpe):
    """Two processes that load the same GGUF file into an empty cache at once (two runs, or two test workers):
    one converts, the other waits for the entry's lock and finds the conversion done."""
    import subprocess
    import sys

    from ntkdyn.io import entry_lock
    from ntkdyn.models import known

    path, _ = _write(tmp_path, bpe)
    cache = str(tmp_path / "cache")
    entry = known.gguf_entry(path, cache)
    code = f"from ntkdyn.models import known; print(known.gguf_dir({path!r}, {cache!r}))"
    with entry_lock(entry):  # both start while the entry is locked, so they must take turns
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        time.sleep(3)
        assert all(p.poll() is None for p in procs), "a process went on while the entry was locked"
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert {o.strip() for o, _ in outs} == {entry}
    assert sum(e.count("ntkdyn: converting ") for _, e in outs) == 1
    assert os.listdir(os.path.dirname(entry)) == [os.path.basename(entry)]  # no temporaries, the lock file removed
