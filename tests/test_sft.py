"""Tests for ntkdyn.sft (data format, loss, training, CLI); the evaluation
is tested in test_evaluation.py."""
import json
import os

import jax
import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import sft, tasks
from ntkdyn.models.lm import LM

TOK = tasks.CharTokenizer()
# one tiny recipe shared by the tests, so the jitted train step and sampler compile once (B = 16 sequences)
TINY = dict(size="tiny", steps=40, batch_size=16, lr=3e-3, warmup=5, log_every=10, eval_prompts=2, eval_samples=8,
            progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sft") / "sum-tiny")
    lm = sft.train("sum", out, **TINY)
    return out, lm


def _log(out):
    with open(os.path.join(out, "sft_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_prompt_ids_and_make_examples_mask_answer_and_eos():
    task = tasks.get("sum")
    prompts, answers = ["sum 47:", "sum 20:"], ["12+35", "0+20"]
    assert sft.prompt_ids(TOK, prompts) == [[TOK.bos_id] + TOK.encode(p) for p in prompts]
    ids, mask = sft.make_examples(task, TOK, prompts, answers)
    assert ids.dtype == np.int32 and mask.dtype == np.float32 and ids.shape == mask.shape == (2, 14)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        seq = [TOK.bos_id] + TOK.encode(p) + TOK.encode(a) + [TOK.eos_id]
        assert ids[i, : len(seq)].tolist() == seq
        assert (ids[i, len(seq):] == TOK.pad_id).all()  # right-padded
        want = np.zeros(ids.shape[1], np.float32)
        want[1 + len(p): len(seq)] = 1.0  # exactly the answer tokens and the EOS
        np.testing.assert_array_equal(mask[i], want)
        assert TOK.decode(ids[i][mask[i] == 1]) == a
    ids2, _ = sft.make_examples(task, TOK, prompts, answers, length=20)
    assert ids2.shape == (2, 20)
    with pytest.raises(ValueError, match="shorter"):
        sft.make_examples(task, TOK, prompts, answers, length=5)
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        sft.make_examples(task, TOK, prompts, answers[:1])


def test_sequence_ce_loss_matches_numpy():
    cfg = sft.default_config(TOK.vocab_size, "gpt_neox", "tiny")
    lm = LM.init(cfg, seed=3, tokenizer=TOK)
    task = tasks.get("multiple")
    prompts, answers = sft.draw_sft_data(task, 5, seed=1, correct_frac=0.5)
    ids, mask = sft.make_examples(task, TOK, prompts, answers)
    got = float(sft.sequence_ce_loss(lm, lm.params, ids, mask))
    z = np.asarray(lm.logits(ids), np.float64)
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                total -= logp[b, t - 1, ids[b, t]]
                count += 1
    assert count == int(mask.sum())
    np.testing.assert_allclose(got, total / count, rtol=1e-5)
    # pure in params: a head-only gradient (the LP stage of LP-FT) flows through it
    g = jax.grad(lambda head: sft.sequence_ce_loss(lm, {"backbone": lm.params["backbone"], "head": head},
                                                   ids, mask))(lm.params["head"])
    assert np.isfinite(np.asarray(g["W"])).all() and np.abs(np.asarray(g["W"])).sum() > 0


def test_draw_sft_data_is_mixed_and_deterministic():
    task = tasks.get("sum")
    p1, a1 = sft.draw_sft_data(task, 400, seed=0, correct_frac=0.5)
    p2, a2 = sft.draw_sft_data(task, 400, seed=0, correct_frac=0.5)
    assert (p1, a1) == (p2, a2)
    assert all(task.split_of(p) == "train" for p in p1)
    r = np.mean([task.reward(p, a) for p, a in zip(p1, a1)])
    assert 0.4 < r < 0.6
    assert len(set(a1)) > 200  # diverse answers
    assert np.mean([task.reward(p, a) for p, a in zip(*sft.draw_sft_data(task, 50, 0, 1.0))]) == 1.0


@pytest.mark.parametrize("family", sft.BASE_FAMILIES)
def test_default_config_sizes(family):
    tiny = sft.default_config(TOK.vocab_size, family, "tiny")
    big = sft.default_config(TOK.vocab_size, family, "default")
    n_tiny = LM.init(tiny, 0).num_params
    n_big = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: LM.init(big, 0).params)))
    assert 40_000 <= n_tiny <= 110_000
    assert 700_000 <= n_big <= 5_000_000
    assert (big.bos_token_id, big.eos_token_id, big.pad_token_id) == (TOK.bos_id, TOK.eos_id, TOK.pad_id)
    if family == "gpt_neox":
        assert big.rotary_pct == 0.25 and big.parallel_residual and not big.tie_word_embeddings


def test_train_lowers_loss_and_writes_hf_dir(tiny_run):
    out, lm = tiny_run
    log = _log(out)
    losses = [r["loss"] for r in log if "loss" in r]
    assert [r["step"] for r in log if "loss" in r] == [1, 10, 20, 30, 40]
    assert losses[-1] < losses[0] - 0.5
    ev = log[-1]["eval"]
    assert 0.0 <= ev["reward"] <= 1.0 and ev["samples"] == 8 and ev["n_prompts"] == 2
    conf = json.load(open(os.path.join(out, "sft_config.json")))
    assert conf["task"] == "sum" and conf["steps"] == 40 and conf["num_params"] == lm.num_params
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".tmp")]

    lm2 = nd.load(out)
    assert isinstance(lm2.tokenizer, tasks.CharTokenizer)
    ids = np.asarray(sft.make_examples(tasks.get("sum"), TOK, ["sum 47:", "sum 93:"], ["12+35", "0+93"])[0])
    z = np.asarray(lm2.logits(ids))
    np.testing.assert_allclose(z, np.asarray(lm.logits(ids)), atol=1e-5)

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        zt = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(zt, z, atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("sum 47:12+35")["input_ids"] == TOK.encode("sum 47:12+35")
    assert hf_tok.eos_token_id == TOK.eos_id and hf_tok.pad_token_id == TOK.pad_id


@pytest.mark.parametrize("kw, match", [
    (dict(task_name="nope"), "unknown task"),
    (dict(family="bert"), "family"),
    (dict(size="huge"), "size"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(batch_size=-1), "batch_size"),
    (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(correct_frac=1.5), "correct_frac"),
    (dict(log_every=0), "log_every"),
])
def test_bad_arguments_rejected_before_work(tmp_path, kw, match):
    args = dict(task_name="sum", out_dir=str(tmp_path / "out"), progress=False) | kw
    with pytest.raises(ValueError, match=match):
        sft.train(**args)
    assert not os.listdir(tmp_path)


def test_out_dir_that_is_not_an_sft_dir_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an ntkdyn sft directory"):
        sft.train("sum", str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_non_finite_loss_names_the_step(tmp_path):
    with pytest.raises(ValueError, match=r"non-finite loss .* at step \d+"):
        sft.train("sum", str(tmp_path / "nan"), size="tiny", steps=3, batch_size=4, lr=1e30, warmup=0,
                  log_every=1, eval_prompts=0, progress=False)
    assert not os.listdir(tmp_path)


def test_cli_sft(tmp_path, capsys):
    from ntkdyn.cli import main

    out = str(tmp_path / "cli")
    flags = ["--size", "tiny", "--steps", "40", "--batch-size", "16", "--lr", "3e-3", "--warmup", "5",
             "--eval-prompts", "2", "--eval-samples", "8", "--no-progress"]  # TINY: reuses the compiled step
    assert main(["sft", "--task", "sum", "--out", out] + flags) == 0
    printed = capsys.readouterr().out
    assert "reward" in printed and "distinct" in printed
    assert nd.load(out).config.family == "gpt_neox"
    assert main(["sft", "--task", "nope", "--out", out, "--no-progress"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_make_examples_real_mask():
    ids, loss_mask, real = sft.make_examples(tasks.get("sum"), TOK, ["sum 47:", "sum 5:"], ["12+35", "0+5"],
                                             real_mask=True)
    assert real.dtype == np.float32 and real.sum(1).tolist() == [14, 11]
    np.testing.assert_array_equal(real, (ids != TOK.pad_id).astype(np.float32))  # pad 0 is no real token here
    assert (loss_mask <= real).all()


def test_fine_tune_a_given_model(tiny_run, tmp_path):
    base_out, base = tiny_run
    out = str(tmp_path / "ft")
    lm = sft.train("sum", out, **dict(TINY, steps=2, eval_prompts=0), model=base_out)
    conf = json.load(open(os.path.join(out, "sft_config.json")))
    assert conf["base_model"] == base_out and conf["family"] == "gpt_neox" and conf["size"] is None
    assert conf["data_format"].startswith("[bos] + encode(prompt)")
    assert lm.config == base.config and lm.num_params == base.num_params
    moved = [not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(base.params))]
    assert any(moved)
    with pytest.raises(ValueError, match="has none"):
        sft.train("sum", str(tmp_path / "x"), **dict(TINY, steps=1), model=base_out, chat=True)


def test_sft_on_a_dataset(tmp_path, capsys):
    """`ntkdyn sft --dataset PATH`: the prompt + completion columns are the training pairs; no completion column is
    a clear error."""
    import json as _json

    from ntkdyn.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(_json.dumps({"prompt": f"sum {n}:", "completion": f"1+{n - 1}"}) + "\n"
                            for n in range(10, 20)))
    out = str(tmp_path / "sft")
    assert main(["sft", "--dataset", str(data), "--out", out, "--size", "tiny", "--steps", "2", "--batch-size", "4",
                 "--warmup", "0", "--no-progress"]) == 0
    prompts, answers = sft.draw_sft_data(str(data), 6, seed=0)
    assert all(a == "1+" + str(int(p[4:-1]) - 1) for p, a in zip(prompts, answers))
    bad = tmp_path / "nocompletion.jsonl"
    bad.write_text(_json.dumps({"prompt": "sum 12:"}) + "\n" + _json.dumps({"prompt": "sum 13:"}) + "\n")
    assert main(["sft", "--dataset", str(bad), "--out", str(tmp_path / "b"), "--size", "tiny", "--steps", "1",
                 "--no-progress"]) == 2
    assert "no 'completion' column" in capsys.readouterr().err
