"""Tests for ntkdyn.evaluation: decoding, rewards, the shared sample statistics (one correctness threshold) and
`evaluate` of a model (re-exported as sft.evaluate)."""
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
    assert 1 <= ev["distinct"] <= 8 and 0 <= ev["distinct_correct"] <= ev["distinct"]
    assert 0 <= ev["frac_truncated"] <= ev["frac_malformed"] <= 1
    # the whole test split of "sum" when it holds fewer prompts than asked
    assert sft.evaluate(lm, task, n_prompts=1000, samples=1)["n_prompts"] == len(task.split_prompts("test"))
    texts, finished = sft.decode_completions(TOK, [[TOK.encode("5")[0], TOK.eos_id, 0], [4, 5, 6]],
                                             [[1, 1, 0], [1, 1, 1]])
    assert texts[0] == "5" and finished.tolist() == [True, False]
    assert sft.completion_rewards(task, ["sum 20:"] * 2, ["0+20", "0+20"], [True, False]).tolist() == [1.0, 0.0]


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
    p = evaluation.completion_rewards(tasks.get("sum"), ["sum 20:"] * 2, ["0+20", "x"], [True, True],
                                      reward_fn=lambda prompt, text: len(text))
    assert p.tolist() == [4.0, 1.0]


def test_held_out_prompts():
    task = tasks.get("sum")
    assert evaluation.held_out_prompts(task, 1000) == list(task.split_prompts("test"))
    assert evaluation.held_out_prompts(task, 3, seed=0) == task.prompts("test", 3, 0)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        evaluation.task_of("nope")


def test_several_eos_ids_and_truncated_scoring():
    five, six = TOK.encode("5")[0], TOK.encode("6")[0]
    rows, mask = [[five, six, TOK.eos_id], [five, 4, 5], [six, five, 0]], [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    texts, finished = evaluation.decode_completions(TOK, rows, mask, eos_id=(TOK.eos_id, six))
    assert texts == ["5", "5" + TOK.decode([4, 5]), ""] and finished.tolist() == [True, False, True]
    assert evaluation.decode_completions(TOK, rows, mask)[1].tolist() == [True, False, False]  # default: (eos,)
    r = evaluation.completion_rewards(tasks.get("sum"), ["sum 5:"] * 3, texts, finished, reward_fn=lambda p, t: 1.0)
    assert r.tolist() == [1.0, 0.0, 1.0]
    r = evaluation.completion_rewards(tasks.get("sum"), ["sum 5:"] * 3, texts, finished,
                                      reward_fn=lambda p, t: 1.0, score_truncated=True)
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
