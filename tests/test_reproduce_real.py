"""The real-model reproduction (`ntkdyn reproduce --profile real`, issue #16) end to end on its tiny profile: a tiny
random Llama that reads SmolLM2's own tokenizer and chat template, the natural task `add`, one seed, two steps. The
real profile runs this same code on SmolLM2-135M-Instruct (make reproduce-real)."""
import json
import os
import shutil

import pytest
import torch
import transformers

from hf_models import randomize
from ntkdyn import reproduce
from ntkdyn.io import read_jsonl


@pytest.fixture(scope="module")
def tiny_chat_model(smollm2, tmp_path_factory):
    """A 2-layer, d 16 Llama with SmolLM2's vocabulary, special tokens and tokenizer files (chat template)."""
    src = smollm2["dir"]
    real = json.load(open(os.path.join(src, "config.json")))
    cfg = transformers.LlamaConfig(vocab_size=real["vocab_size"], hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                                   max_position_embeddings=256, tie_word_embeddings=True,
                                   bos_token_id=real.get("bos_token_id"), eos_token_id=real.get("eos_token_id"),
                                   pad_token_id=real.get("pad_token_id"))
    torch.manual_seed(0)
    model = randomize(transformers.LlamaForCausalLM(cfg).eval())
    path = str(tmp_path_factory.mktemp("tiny-chat") / "model")
    model.save_pretrained(path)
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copyfile(os.path.join(src, name), os.path.join(path, name))
    return path


def test_real_tiny_reproduction(tiny_chat_model, tmp_path):
    out = tmp_path / "rep"
    res = reproduce.run(str(out), profile="real-tiny", model=tiny_chat_model, progress=False)
    figs = out / "figures"
    for name in reproduce.FIGURES + ("fig_one_step_split",):
        assert (figs / f"{name}.png").is_file(), name
    assert not list(figs.glob("fig_reward_*"))  # no second task: pass@k runs on the main (single-answer) task
    assert [c["n"] for c in res["claims"]] == list(reproduce.CLAIMS)
    summary = (figs / "summary.md").read_text()
    assert "`ntkdyn reproduce --profile real-tiny`" in summary and "task `add`" in summary
    assert "pass@k: 4 samples per prompt on 2 held-out prompts of `add`" in summary
    rec = json.loads((out / "reproduce.json").read_text())
    pk = rec["pass_at_k"]
    assert pk["ks"] == [1, 2, 3, 4] and set(pk["policies"]) == {"base", "rl"}  # passk.recipes, as the real profile
    for p in pk["policies"].values():
        assert all(len(c) == 4 and all(0.0 <= v <= 1.0 for v in c) for c in p["curves"])
        assert all(a <= b + 1e-12 for c in p["curves"] for a, b in zip(c, c[1:]))  # pass@k never falls with k
    for recipe in ("rl", "cf-rl", "lp-ft"):
        recs = read_jsonl(str(out / "runs" / f"{recipe}-seed0"))
        first_rl = next(r for r in recs if r.get("stage") == "rl" and r.get("stage_step") == 1)
        assert {"claim6/trG_answer", "claim6/align_G", "claim6/gain_G"} <= set(first_rl), recipe
        drift = [r for r in recs if "ntk/align_K" in r]  # ntk_recipes: plain RL's runs only, as the real profile
        assert (recipe == "rl") == bool(drift), recipe
        assert all(-1.0 - 1e-6 <= r["ntk/align_K"] <= 1.0 + 1e-6 for r in drift), recipe
