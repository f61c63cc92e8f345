"""Tests for the synthetic tasks in ntkdyn.tasks."""

import numpy as np
import pytest

from ntkdyn import tasks
from ntkdyn.tasks import CHARSET

TASK_NAMES = tasks.names()
SINGLE_ANSWER = {"plus"}  # one correct answer per prompt (the others have many)

GARBAGE = [
    "",
    "abc",
    "+",
    "99999999999999999999+1",
    "1+2+3",
    "-5+52",
    " \n",
    "☃",
    "٣+٤",  # non-ASCII digits
    "1" * 10_000,
    "9" * 5000 + "+1",  # would exceed int-from-str limits if parsed
    "a" * 100_000,
    "\x00",
    " 12+35",
    "word",
]


def _prompts(task, split, n=200, seed=0):
    return task.prompts(split, n, seed)


def test_registry():
    assert tasks.DEFAULT_TASK == "sum"
    assert tasks.names()[0] == "sum"
    assert {"sum", "multiple", "word"} <= set(TASK_NAMES)
    assert tasks.get("sum").name == "sum"
    assert tasks.get().name == tasks.DEFAULT_TASK
    with pytest.raises(KeyError, match="multiple"):
        tasks.get("nope")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_metadata(name):
    task = tasks.get(name)
    assert task.name == name
    assert task.description
    assert isinstance(task.binary, bool)
    assert "nswer space" in type(task).__doc__


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("split", tasks.SPLITS)
def test_correct_answers_score_one(name, split):
    task = tasks.get(name)
    for prompt in _prompts(task, split):
        answers = task.correct_answers(prompt)
        assert len(answers) == len(set(answers)) == task.answer_space_size(prompt)
        assert task.answer_space_size(prompt) >= 10 or name in SINGLE_ANSWER and len(answers) == 1
        for a in answers:
            assert task.reward(prompt, a) == 1.0
            assert task.reward(prompt, a + " \n") == 1.0  # trailing whitespace ok


@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompt_and_answer_lengths_and_charset(name):
    task = tasks.get(name)
    rng = np.random.default_rng(0)
    for split in tasks.SPLITS:
        for prompt in _prompts(task, split, 100):
            assert len(prompt) <= 16
            assert set(prompt) <= set(CHARSET)
            answers = task.correct_answers(prompt) + [
                task.sample_answer(prompt, rng, correct=False) for _ in range(5)
            ]
            for a in answers:
                assert 1 <= len(a) <= 8
                assert set(a) <= set(CHARSET)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sample_answer(name):
    task = tasks.get(name)
    rng = np.random.default_rng(1)
    for prompt in _prompts(task, "train", 50):
        for _ in range(10):
            good = task.sample_answer(prompt, rng, correct=True)
            bad = task.sample_answer(prompt, rng, correct=False)
            assert task.reward(prompt, good) == 1.0
            if task.binary:
                assert task.reward(prompt, bad) == 0.0
            else:
                assert task.reward(prompt, bad) <= 0.5


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sample_answer_is_diverse_and_deterministic(name):
    task = tasks.get(name)
    prompt = task.prompts("train", 1, seed=3)[0]
    draws = [task.sample_answer(prompt, np.random.default_rng(7), True) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(0)
    many = {task.sample_answer(prompt, rng, True) for _ in range(200)}
    assert len(many) >= (1 if name in SINGLE_ANSWER else 8)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_garbage_completions(name):
    task = tasks.get(name)
    for prompt in _prompts(task, "test", 20):
        for junk in GARBAGE:
            r = task.reward(prompt, junk)
            assert isinstance(r, float)
            assert 0.0 <= r <= 1.0
            if task.binary:
                assert r in (0.0, 1.0)
        assert task.reward(prompt, None) == 0.0  # not even a string
        for junk in ["", "+", "-5+52", " \n", "☃", "1" * 10_000, " 12+35"]:
            assert task.reward(prompt, junk) == 0.0


def test_sum_specifics():
    task = tasks.get("sum")
    assert task.reward("sum 47:", "12+35") == 1.0
    assert task.reward("sum 47:", "35+12") == 1.0
    assert task.reward("sum 47:", "47+0") == 1.0
    assert task.reward("sum 47:", "12+36") == 0.0
    assert task.reward("sum 47:", "012+35") == 0.0  # no leading zeros
    assert task.reward("sum 47:", "12+35+0") == 0.0
    assert task.reward("sum 47:", "-5+52") == 0.0
    assert task.reward("sum 47:", "12 + 35") == 0.0
    assert task.reward("sum 47:", "12+35\n") == 1.0
    assert task.answer_space_size("sum 47:") == 48
    assert task.answer_space_size("sum 20:") == 21
    assert len(task.all_prompts()) == 80
    with pytest.raises(ValueError):
        task.reward("sum x:", "1+1")


def test_multiple_specifics():
    task = tasks.get("multiple")
    p = "7x[20,90]:"
    assert task.correct_answers(p) == [str(v) for v in range(21, 91, 7)]
    assert task.reward(p, "21") == 1.0
    assert task.reward(p, "84") == 1.0
    assert task.reward(p, "14") == 0.0  # multiple, out of range
    assert task.reward(p, "91") == 0.0
    assert task.reward(p, "22") == 0.0
    assert task.reward(p, "021") == 0.0
    sizes = [task.answer_space_size(q) for q in task.all_prompts()]
    assert min(sizes) >= 10


def test_word_specifics():
    task = tasks.get("word")
    p = "word qaeit 4:"
    assert task.parse(p) == ("qaeit", 4)
    assert task.answer_space_size(p) == 24
    assert task.reward(p, "qate") == 1.0
    assert task.reward(p, "qat") == 0.875  # length off by one
    assert task.reward(p, "aqte") == 0.75  # wrong initial
    assert task.reward(p, "qaqe") == 0.75  # repeated letter
    assert task.reward(p, "qazt") == 0.75  # letter not given
    assert task.reward(p, "zzzzzzzz") == 0.0
    assert task.reward(p, "QATE") == 0.0
    # Exactly the perfect answers reach 0.9: check exhaustively on a small prompt.
    p = "word abcde 3:"
    letters = "abcdefz"
    near_opt = {
        a + b + c
        for a in letters
        for b in letters
        for c in letters
        if task.reward(p, a + b + c) >= 0.9
    }
    assert near_opt == set(task.correct_answers(p))
    for q in ["word abcde 3:", "word abcdef 5:"]:
        assert task.answer_space_size(q) in (12, 120)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompts_deterministic(name):
    task = tasks.get(name)
    for split in tasks.SPLITS:
        n = 10
        a = task.prompts(split, n, seed=0)
        assert a == task.prompts(split, n, seed=0)
        assert a != task.prompts(split, n, seed=1)
        assert len(a) == n
        assert all(task.split_of(p) == split for p in a)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_bad_split_raises(name):
    task = tasks.get(name)
    for split in ["val", "", "Train", None]:
        with pytest.raises(ValueError):
            task.prompts(split, 3, seed=0)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splits_disjoint(name):
    task = tasks.get(name)
    everything = task.all_prompts()
    if everything is not None:  # whole prompt space
        train, test = task.split_prompts("train"), task.split_prompts("test")
        assert set(train).isdisjoint(test)
        assert sorted(train + test) == sorted(everything)
        assert len(set(everything)) == len(everything)
        assert 0.05 < len(test) / len(everything) < 0.4
    else:  # split is a function of the prompt: check a large sample
        train = set(task.prompts("train", 5000, seed=0))
        test = set(task.prompts("test", 2000, seed=0))
        assert len(train) == 5000 and len(test) == 2000
        assert train.isdisjoint(test)


def test_sampling_with_replacement_when_split_is_small():
    task = tasks.get("sum")
    pool = task.split_prompts("test")
    few = task.prompts("test", len(pool), seed=0)
    assert sorted(few) == sorted(pool)  # without replacement: all distinct
    many = task.prompts("test", 3 * len(pool), seed=0)
    assert len(many) == 3 * len(pool)
    assert set(many) <= set(pool)


def test_resolve_and_the_common_task_interface():
    assert tasks.names() == ["sum", "multiple", "word", "plus"]  # the character tasks only (rl/sft validate against it)
    assert tasks.all_names() == tasks.names() + ["add", "mul", "two-sum", "list-multiples"]
    for name in tasks.all_names():
        task = tasks.resolve(name)
        assert isinstance(task, tasks.Task) and task.name == name
        rows = task.rows("train", 3, seed=0)
        assert [r["prompt"] for r in rows] == task.prompts("train", 3, seed=0)
        pool = task.split_rows("test")
        assert pool is None or [r["prompt"] for r in pool] == task.split_prompts("test")
        p = rows[0]["prompt"]
        assert task.reward(p, task.reference(p)) == 1.0
        assert task.canonical(p, task.reference(p)) in task.correct_answers(p)
        (fn,) = task.reward_funcs()
        assert fn.__name__ == name and task.reward_weights() is None
    assert tasks.resolve("sum") is tasks.get("sum")
    with pytest.raises(ValueError, match="unknown task 'nope'.*'sum', 'multiple', 'word', 'plus', 'add'"):
        tasks.resolve("nope")
    with pytest.raises(ValueError, match="takes no parameters"):
        tasks.resolve("sum", lo=3)


def test_character_task_reward_function_matches_reward():
    task = tasks.get("word")
    prompts = task.prompts("test", 5, seed=0)
    texts = ["qate", "", "abc", "zzzz", None]
    out = tasks.RewardSet(task.reward_funcs())(prompts, texts)
    assert out.rewards.tolist() == [task.reward(p, t) for p, t in zip(prompts, texts)]
