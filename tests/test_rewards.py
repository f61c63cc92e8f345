"""Reward functions in TRL's signature (ntkdyn.tasks.rewards): calling convention, weights, metrics, loading, errors."""
import math
import sys

import numpy as np
import pytest

from ntkdyn import tasks
from ntkdyn.tasks import RewardError, RewardSet, load_reward_function, task_reward_function

PROMPTS = ["sum 47:", "sum 47:", "sum 20:", "sum 20:"]
TEXTS = ["12+35", "1+1", "20+0", "x"]


def test_trl_signature_standard():
    seen = {}

    def spy(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, kwargs=kwargs)
        return [0.5] * len(prompts)

    ids = [[3, 4], [5], [6, 7, 8], []]
    out = RewardSet([spy])(PROMPTS, TEXTS, ids, answer=["a", "b", "c", "d"], level=[1, 2, 3, 4])
    assert seen["prompts"] == PROMPTS and seen["completions"] == TEXTS and seen["completion_ids"] == ids
    assert seen["kwargs"] == {"answer": ["a", "b", "c", "d"], "level": [1, 2, 3, 4]}
    assert out.rewards.tolist() == [0.5] * 4 and out.per_func.shape == (4, 1)
    assert out.metrics == {"rewards/spy/mean": 0.5, "rewards/spy/std": 0.0, "rewards/spy/unusable": 0}


def test_trl_signature_conversational():
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions, kwargs=kwargs)
        return [len(c[0]["content"]) for c in completions]

    chats = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], [{"role": "user",
                                                                                              "content": "yo"}]]
    out = RewardSet(spy)(chats, ["hello", "hey"], [[1], [2]])
    # TRL: each conversational completion is a list holding one assistant message
    assert seen["completions"] == [[{"role": "assistant", "content": "hello"}], [{"role": "assistant",
                                                                                   "content": "hey"}]]
    assert seen["prompts"] == chats and seen["kwargs"] == {"completion_ids": [[1], [2]]}
    assert out.rewards.tolist() == [5.0, 3.0]
    # completions already in TRL's form are passed unchanged
    RewardSet(spy)(chats, [[{"role": "assistant", "content": "x"}]] * 2)
    assert seen["completions"][0] == [{"role": "assistant", "content": "x"}]


def test_only_named_parameters_without_kwargs():
    def picky(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    out = RewardSet(picky)(PROMPTS, TEXTS, None, answer=["12+35", "0", "20+0", "y"], other=[0] * 4)
    assert out.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_weights_none_and_metrics():
    def first(prompts, completions, **kw):
        return [1.0, 0.0, None, 2.0]

    def second(prompts, completions, **kw):
        return [0.5, None, None, np.float32(1.0)]

    rs = RewardSet([first, second], weights=[2.0, -1.0])
    out = rs(PROMPTS, TEXTS)
    assert out.rewards[:2].tolist() == [1.5, 0.0] and math.isnan(out.rewards[2]) and out.rewards[3] == 3.0
    assert np.isnan(out.per_func[2]).all()
    m = out.metrics
    assert m["rewards/first/mean"] == 1.0 and m["rewards/first/std"] == pytest.approx(1.0)  # Bessel, NaN left out
    assert m["rewards/second/mean"] == 0.75 and m["rewards/second/std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert m["rewards/first/unusable"] == 1 and m["rewards/second/unusable"] == 2  # the Nones, counted per function
    assert out.unscored.tolist() == [[False, False], [False, True], [True, True], [False, False]]
    assert rs.names == ["first", "second"]
    assert RewardSet([first, first]).names == ["first", "first_2"]
    fin = rs(PROMPTS, TEXTS, finished=[True, True, True, False])
    assert fin.rewards[3] == 0.0 and fin.per_func[3].tolist() == [0.0, 0.0]
    assert fin.metrics["rewards/second/unusable"] == 2  # counted before the truncation rule sets 0
    with pytest.raises(RewardError, match="2 reward weights for 1 reward functions"):
        RewardSet([first], weights=[1.0, 2.0])
    with pytest.raises(RewardError, match="at least one"):
        RewardSet([])


def test_bad_reward_functions():
    def three(prompts, completions, **kw):
        return [1.0, 1.0, 1.0]

    def boom(prompts, completions, **kw):
        raise ZeroDivisionError("oops")

    def text(prompts, completions, **kw):
        return "1.0"

    def stringy(prompts, completions, **kw):
        return [1.0, 0.0, "high", 1.0]

    def infinite(prompts, completions, **kw):
        return [1.0, float("inf"), 0.0, 0.0]

    with pytest.raises(RewardError, match=r"'three' returned 3 values for 4 completions"):
        RewardSet(three)(PROMPTS, TEXTS)
    with pytest.raises(RewardError, match=r"'boom' raised ZeroDivisionError: oops"):
        RewardSet(boom)(PROMPTS, TEXTS)
    with pytest.raises(RewardError, match=r"'text' returned str; expected a list of 4 floats"):
        RewardSet(text)(PROMPTS, TEXTS)
    with pytest.raises(RewardError, match=r"'stringy' returned 'high' \(str\) for completion 2"):
        RewardSet(stringy)(PROMPTS, TEXTS)
    with pytest.raises(RewardError, match=r"'infinite' returned inf for completion 1"):
        RewardSet(infinite)(PROMPTS, TEXTS)
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 4"):
        RewardSet(three)(PROMPTS, TEXTS, answer=[1, 2])


def test_task_reward_is_bit_identical_to_evaluation():
    task = tasks.get("sum")
    fn = task_reward_function(task)
    assert fn.__name__ == "sum"
    finished = np.array([True, True, True, False])
    out = RewardSet(fn)(PROMPTS, TEXTS, finished=finished)
    ref = np.asarray([task.reward(p, t) if f else 0.0 for p, t, f in zip(PROMPTS, TEXTS, finished)], np.float64)
    assert out.rewards.dtype == ref.dtype == np.float64
    assert out.rewards.tolist() == ref.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out.metrics["rewards/sum/mean"] == 0.5


def test_load_by_spec(tmp_path, monkeypatch):
    f = tmp_path / "my_rewards.py"
    f.write_text("def brevity(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n"
                 "NOT_CALLABLE = 3\n")
    fn = load_reward_function(f"{f}:brevity")
    assert fn.__name__ == "brevity" and fn(prompts=["a"], completions=["abc"], completion_ids=[[]]) == [-3]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "rewardpkg_ntkdyn_test.py").write_text("def exact(completions, **kw):\n    return [1.0] * len(completions)\n")
    assert load_reward_function("rewardpkg_ntkdyn_test:exact")(completions=["x"]) == [1.0]  # from the cwd
    assert load_reward_function("my_rewards.py:brevity")(prompts=["p"], completions=["ab"]) == [-2]  # relative file path
    with pytest.raises(RewardError, match="has no function 'nope'; callables found: \\['brevity'\\]"):
        load_reward_function(f"{f}:nope")
    with pytest.raises(RewardError, match="is a int, not callable"):
        load_reward_function(f"{f}:NOT_CALLABLE")
    with pytest.raises(RewardError, match="does not exist"):
        load_reward_function("missing_file.py:f")
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        load_reward_function("no_such_module_xyz:f")
    with pytest.raises(RewardError, match="expected 'package.module:function'"):
        load_reward_function("justaname")
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(RewardError, match="broken.py failed to load \\(SyntaxError"):
        load_reward_function("broken.py:f")


def test_reward_function_specs_and_reward_set(tmp_path):
    fn = tasks.reward_function("add")
    assert fn.__name__ == "add"
    chat = tasks.resolve("add").prompts("train", 2, seed=0)
    answers = [tasks.resolve("add").correct_answers(p)[0] for p in chat]
    out = tasks.reward_set(tasks.resolve("add"))(chat, [f"The answer is **{answers[0]}**.", "no idea"])
    assert out.rewards.tolist() == [1.0, 0.0]
    f = tmp_path / "r.py"
    f.write_text("def short(completions, **kw):\n    return [1.0 if len(c[0]['content']) < 30 else 0.0 "
                 "for c in completions]\n")
    rs = tasks.reward_set(tasks.resolve("add"), ["add", f"{f}:short"], weights=[1.0, 0.5])
    assert rs.names == ["add", "short"]
    out = rs(chat, [f"The answer is **{answers[0]}**.", "no idea"])
    assert out.rewards.tolist() == [1.5, 0.5]
    with pytest.raises(RewardError, match="reward spec must be"):
        tasks.reward_function(3)
