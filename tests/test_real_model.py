"""The pipelines on a real pretrained chat model (SmolLM2-135M-Instruct, the session fixture `smollm2`): prompts
through the chat template against transformers' tokenizer, generation that stops at the end-of-turn id, SFT
examples as the assistant turn, and an RL run with a checkpoint, a resume and a final/ that transformers opens.

Kept lean (one model load per module, one tiny RL run): about two minutes on a 2-core CPU."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import ntkdyn as nd
from ntkdyn.evaluation import split_completions
from ntkdyn.examples import make_examples
from ntkdyn.models.tokenizer import CharTokenizer, encode_prompt, eos_ids_of, load_tokenizer
from ntkdyn.rl import RLConfig, read_metrics, train

QUESTION = "What is 2 + 3? Answer with the number only."


def _ids(out):
    """transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4 a list."""
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def lm(smollm2):
    return nd.load(smollm2["dir"])


@pytest.fixture(scope="module")
def hf_tok(smollm2):
    return AutoTokenizer.from_pretrained(smollm2["dir"])


def test_chat_prompt_ids_equal_transformers(smollm2, hf_tok):
    tok = load_tokenizer(smollm2["dir"])
    system = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": QUESTION}]
    for prompt, msgs in ((QUESTION, [{"role": "user", "content": QUESTION}]), ("sum 47:", None), (system, None)):
        msgs = msgs or ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
        want = _ids(hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
        assert encode_prompt(tok, prompt) == want == encode_prompt(tok, prompt, chat=True)
    assert want[:1] == [tok.bos_id] and want[-4:] == tok.encode("<|im_start|>assistant\n")
    # no template: transformers' own rule (SmolLM2: add_bos_token false -> no BOS)
    assert encode_prompt(tok, QUESTION, chat=False) == list(hf_tok(QUESTION)["input_ids"]) == tok.encode(QUESTION)
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(tok, system, chat=False)
    with pytest.raises(ValueError, match="has none"):
        encode_prompt(CharTokenizer(), "sum 47:", chat=True)
    assert encode_prompt(CharTokenizer(), "sum 47:") == [1] + CharTokenizer().encode("sum 47:")


def test_greedy_generation_stops_at_end_of_turn(lm):
    tok = lm.tokenizer
    assert eos_ids_of(tok, lm.config) == (2,) and tok.decode([2], skip_special_tokens=False) == "<|im_end|>"
    prompt = encode_prompt(tok, QUESTION)
    # two stop ids: <|im_end|> (end of turn) and <|endoftext|> (0); the same shapes below (one compilation)
    g = lm.generate([prompt, prompt[3:]], 16, temperature=0, stop_token=(2, 0))
    tokens, mask = np.asarray(g.tokens), np.asarray(g.mask)
    n = int(mask[0].sum())
    assert n < 16 and tokens[0, n - 1] == 2 and (mask[0, n:] == 0).all() and (tokens[0, n:] == lm.config.pad_token_id).all()
    comps = split_completions(tok, tokens[:1], mask[:1])
    texts, finished = comps.texts, comps.finished
    assert finished.tolist() == [True] and "5" in texts[0] and "<|im_end|>" not in texts[0]
    # any of the stop ids ends a row: here the first greedy token itself
    first = int(tokens[0, 0])
    g2 = lm.generate([prompt, prompt[3:]], 16, temperature=0, stop_token=[2, first])
    assert np.asarray(g2.mask)[0].tolist() == [1] + [0] * 15 and int(np.asarray(g2.tokens)[0, 0]) == first


def test_sft_examples_are_the_assistant_turn(smollm2, hf_tok):
    tok = load_tokenizer(smollm2["dir"])
    ids, loss_mask, real = make_examples(None, tok, [QUESTION, "sum 47:"], ["5", "12+35"], real_mask=True)
    head = encode_prompt(tok, QUESTION)
    answer = tok.encode("5") + [2]  # the answer and the end-of-turn token <|im_end|>
    n = len(head) + len(answer)
    assert ids[0, :n].tolist() == head + answer and real[0].sum() == n == ids.shape[1]
    assert np.flatnonzero(loss_mask[0]).tolist() == list(range(len(head), n))
    full = _ids(hf_tok.apply_chat_template([{"role": "user", "content": QUESTION},
                                            {"role": "assistant", "content": "5"}], tokenize=True))
    assert full[:n] == head + answer  # transformers renders the same turn (then a newline)
    m = int(real[1].sum())  # the shorter row: padded with <|im_end|> (the pad id here), so `real` tells them apart
    assert m < n and ids[1, m - 1] == 2 and ids[1, m:].tolist() == [tok.pad_id] * (n - m) and tok.pad_id == 2


def _length_reward(prompt, text):
    """A graded reward that differs inside almost every group (the task's own reward is 0 for a chat model)."""
    return len(text) / 40.0


def test_rl_checkpoint_resume_and_final_open_in_transformers(smollm2, lm, tmp_path):
    out = str(tmp_path / "rl")
    cfg = RLConfig(recipe="rl", model=smollm2["dir"], out=out, steps=1, prompts_per_step=2, group_size=2,
                   max_new_tokens=8, eval_prompts=1, eval_samples=2, probe_prompts=1, eval_every=0, probe_every=0,
                   checkpoint_every=1, lr=1e-4, score_truncated=True, seed=0)
    train(cfg, progress=False, reward_fn=_length_reward)
    assert sorted(os.listdir(out)) == ["checkpoint", "config.json", "final", "metrics.jsonl", "summary.json"]
    summary = train(cfg.replace(steps=2, resume=True), progress=False, reward_fn=_length_reward)
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == [0, 1, 2] and summary["steps"] == 2
    assert any(r["reward_std"] > 0 for r in recs[1:]) and recs[-1]["grad_norm/backbone"] > 0
    assert sorted(os.listdir(out)) == ["checkpoint", "config.json", "final", "metrics.jsonl", "summary.json"]
    assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == ["model", "optimizer.npz", "state.json"]
    final = nd.load(os.path.join(out, "final"))
    assert not np.array_equal(np.asarray(final.params["head"]["W"]), np.asarray(lm.params["head"]["W"]))
    ref = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"), dtype=torch.float32).eval()
    ids = np.asarray([encode_prompt(final.tokenizer, QUESTION)], np.int32)
    z = np.asarray(final.logits(ids))
    with torch.no_grad():
        zr = ref(torch.tensor(ids)).logits.numpy()
    assert np.abs(z - zr).max() / np.abs(zr).max() <= 1e-4
