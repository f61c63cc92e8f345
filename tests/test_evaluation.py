"""Tests for ntkdyn.evaluation: where a completion ends, scoring, the shared sample statistics (one correctness
threshold), the sample-and-score path and `evaluate` of a model (re-exported as sft.evaluate)."""
import numpy as np
import pytest

from ntkdyn import evaluation, sft, tasks

TOK = tasks.CharTokenizer()
# the recipe of test_sft.TINY (the jitted train step and sampler compile once when both modules run)
TINY = dict(size="tiny", steps=40, batch_size=16, lr=3e-3, warmup=5, log_every=10, eval_prompts=0, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evaluation") / "sum-tiny")
    return out, sft.train("sum", out, **TINY)


def test_evaluate_counts(tiny_run):
    _, lm = tiny_run
    task = tasks.get("sum")
    ev = sft.evaluate(lm, task, n_prompts=2, samples=8, seed=1)
    assert ev["n_prompts"] == 2 and ev["samples"] == 8 and ev["frac_correct"] == ev["reward"]
    assert 1 <= ev["unique_answers"] <= 8 and 0 <= ev["unique_correct"] <= ev["unique_answers"]
    assert 0 <= ev["frac_truncated"] <= ev["frac_malformed"] <= 1
    # the whole test split of "sum" when it holds fewer prompts than asked
    assert sft.evaluate(lm, task, n_prompts=1000, samples=1)["n_prompts"] == len(task.split_prompts("test"))
    comps = evaluation.split_completions(TOK, [[TOK.encode("5")[0], TOK.eos_id, 0], [4, 5, 6]],
                                         [[1, 1, 0], [1, 1, 1]])
    assert comps.texts[0] == "5" and comps.finished.tolist() == [True, False]
    assert comps.ids == [[TOK.encode("5")[0], TOK.eos_id], [4, 5, 6]] and comps.lengths.tolist() == [2, 3]
    done = evaluation.Completions(["0+20", "0+20"], [[], []], np.array([True, False]), np.array([5, 5]))
    assert _score(task, ["sum 20:"] * 2, done).tolist() == [1.0, 0.0]


def test_sample_stats_hand_values():
    texts = ["1+2", "1+2", "0+3", "x", "2+2", "2+2", "3+1", "3+1"]
    rewards = np.array([1.0, 1.0, 0.95, 0.0, 0.5, 0.0, 0.0, 0.0])
    st = evaluation.sample_stats(texts, rewards, 4)
    assert st["reward"] == pytest.approx(rewards.mean()) and st["reward_std"] == pytest.approx(rewards.std())
    assert st["frac_correct"] == 3 / 8  # reward >= CORRECT = 0.9 (graded: 0.95 counts)
    assert st["unique_answers"] == (3 + 2) / 2 and st["unique_correct"] == (2 + 0) / 2
    assert evaluation.pass_ks(4) == [1, 2, 4] and evaluation.pass_ks(6) == [1, 2, 4, 6]
    np.testing.assert_allclose(st["pass_at_k_curve"], [(3 / 4 + 0) / 2, (1 + 0) / 2, (1 + 0) / 2])  # c=3 of n=4, c=0
    assert sft.CORRECT == evaluation.CORRECT == 0.9
    done = evaluation.Completions(["0+20", "x"], [[], []], np.array([True, True]), np.array([5, 2]))
    p = _score(tasks.get("sum"), ["sum 20:"] * 2, done, reward_fn=lambda prompt, text: len(text))
    assert p.tolist() == [4.0, 1.0]


def _score(task, prompts, comps, reward_fn=None, score_truncated=False):
    """evaluation.score with the task's rewards (or reward_fn(prompt, text)), one completion per prompt."""
    from ntkdyn.tasks.rewards import text_reward_function

    rs = tasks.reward_set(task, None if reward_fn is None else [text_reward_function(reward_fn)])
    return evaluation.score(rs, [{"prompt": p, **task.columns(p)} for p in prompts], comps, 1,
                            score_truncated).rewards


def test_sample_and_score_is_evaluate_s_path(tiny_run):
    """evaluate's numbers come from sample_and_score: the same completions, rewards and statistics; last_eval reads
    a model directory's last SFT evaluation, older logs' names included."""
    out, lm = tiny_run
    task = tasks.get("sum")
    prompts = evaluation.held_out_prompts(task, 2, 1)
    rows = [{"prompt": p, **task.columns(p)} for p in prompts]
    sc = evaluation.sample_and_score(lm, rows, 4, tasks.reward_set(task), seed=1)
    assert sc.tokens.shape == sc.mask.shape == sc.logp_model.shape and len(sc.completions.texts) == 8
    flat = [p for p in prompts for _ in range(4)]
    for p, r, t, f in zip(flat, sc.rewards, sc.completions.texts, sc.completions.finished):
        assert r == (task.reward(p, t) if f else 0.0)  # a truncated completion scores 0
    ev = sft.evaluate(lm, task, n_prompts=2, samples=4, seed=1)
    st = evaluation.sample_stats(sc.completions.texts, sc.rewards, 4,
                                 evaluation.canonical_answers(task, flat, sc.completions.texts))
    assert {k: ev[k] for k in st} == st
    import json
    import os
    with open(os.path.join(out, "sft_log.jsonl"), "a") as f:
        f.write(json.dumps({"step": 99, "eval": {"reward": 0.5, "distinct": 3.0, "distinct_correct": 1.0}}) + "\n")
    assert evaluation.last_eval(out) == {"reward": 0.5, "unique_answers": 3.0, "unique_correct": 1.0}


def test_held_out_prompts():
    task = tasks.get("sum")
    assert evaluation.held_out_prompts(task, 1000) == list(task.split_prompts("test"))
    assert evaluation.held_out_prompts(task, 3, seed=0) == task.prompts("test", 3, 0)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        evaluation.task_of("nope")


def test_several_eos_ids_and_truncated_scoring():
    five, six = TOK.encode("5")[0], TOK.encode("6")[0]
    rows, mask = [[five, six, TOK.eos_id], [five, 4, 5], [six, five, 0]], [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    comps = evaluation.split_completions(TOK, rows, mask, eos=(TOK.eos_id, six))
    texts, finished = comps.texts, comps.finished
    assert texts == ["5", "5" + TOK.decode([4, 5]), ""] and finished.tolist() == [True, False, True]
    assert comps.ids == [[five, six], [five, 4, 5], [six]]  # through the first EOS id, as TRL's completion_ids
    assert evaluation.split_completions(TOK, rows, mask).finished.tolist() == [True, False, False]  # default: (eos,)
    r = _score(tasks.get("sum"), ["sum 5:"] * 3, comps, reward_fn=lambda p, t: 1.0)
    assert r.tolist() == [1.0, 0.0, 1.0]
    r = _score(tasks.get("sum"), ["sum 5:"] * 3, comps, reward_fn=lambda p, t: 1.0, score_truncated=True)
    assert r.tolist() == [1.0, 1.0, 1.0]


def test_distinct_answers_count_canonical_answers():
    """Distinct answers are counted as the task reads them (task.canonical): "85" and "The answer is 85." are one
    answer of "add"; a completion with no readable answer counts as its text."""
    add = tasks.resolve("add")
    p = add.prompts("test", 1, 0)[0]
    answer = add.columns(p)["answer"]
    texts = [answer, f"The answer is {answer}.", "no idea", "no idea!"]
    answers = evaluation.canonical_answers(add, [p] * 4, texts)
    assert answers[0] == answers[1] and answers[2:] == ["no idea", "no idea!"]
    st = evaluation.sample_stats(texts, np.array([1.0, 1.0, 0.0, 0.0]), 4, answers)
    assert st["unique_answers"] == 3 and st["unique_correct"] == 1
    assert evaluation.sample_stats(texts, np.array([1.0, 1.0, 0.0, 0.0]), 4)["unique_correct"] == 2
