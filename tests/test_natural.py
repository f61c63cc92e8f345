"""Natural-language verifiable tasks (ntkdyn.tasks.natural) and answer extraction (ntkdyn.tasks.extract)."""
import numpy as np
import pytest

from ntkdyn import tasks
from ntkdyn.tasks import extract, natural

NAMES = natural.names()
JUNK = [None, "", "no idea", "☃" * 50, "9" * 5000, "1" * 30 + " + " + "2" * 30, "\\boxed{", "**", "answer is",
        "-" * 100, "1.2.3.4", "The answer is: ", [{"role": "assistant"}], 3.5]


@pytest.mark.parametrize("text, number", [
    ("85", 85), ("47 + 38 = 85.", 85), ("The answer is 85.", 85), ("The answer is **85**.", 85),
    ("**85**", 85), ("$\\boxed{85}$", 85), ("\\boxed{85} because 47 + 38", 85), ("So we get 85. Hope it helps!", 85),
    ("The answer is 85 (47 + 38).", 85), ("The answer is: 47 + 38 = 85", 85), ("**47 + 38** = 85", 85),
    ("**Answer:** 1,234", 1234), ("85.0", 85), ("85.5", None), ("no number", None), ("-5", -5),
    ("Sure! 47 + 38 equals **85**. Let me know", 85), ("Answer: 85\n\nExplanation: 47 + 38", 85),
])
def test_final_number(text, number):
    assert extract.final_number(text) == number


@pytest.mark.parametrize("text, pair", [
    ("12 + 35", (12, 35)), ("12+35 = 47", (12, 35)), ("Sure! 12 + 35 = 47.", (12, 35)),
    ("The two numbers are 20 and 27.", (20, 27)), ("\\boxed{20 + 27}", (20, 27)), ("20 plus 27", (20, 27)),
    ("**20** and **27**", (20, 27)), ("1,234", None), ("47", None), ("The answer is 20, 27", (20, 27)),
])
def test_stated_pair(text, pair):
    assert extract.stated_pair(text) == pair


def test_extractors_never_raise():
    for junk in JUNK:
        for f in (extract.final_number, extract.stated_pair, extract.integers, extract.answer_region):
            f(junk)


@pytest.mark.parametrize("name", NAMES)
def test_prompts_are_chats_with_disjoint_deterministic_splits(name):
    task = natural.get(name)
    assert task.chat and task.name == name and task.description
    train, test = task.split_prompts("train"), task.split_prompts("test")
    keys = lambda ps: {tasks.prompt_key(p) for p in ps}  # noqa: E731
    assert keys(train).isdisjoint(keys(test)) and len(test) > 0
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.3
    for split in tasks.SPLITS:
        a = task.prompts(split, 10, seed=0)
        assert a == task.prompts(split, 10, seed=0) and a != task.prompts(split, 10, seed=1)
        assert all(task.split_of(p) == split for p in a)
    p = train[0]
    assert isinstance(p, list) and p[-1]["role"] == "user" and isinstance(p[-1]["content"], str)
    p[-1]["content"] = "edited"  # handing out copies: the task's pool is untouched
    assert task.split_prompts("train")[0][-1]["content"] != "edited"
    with pytest.raises(ValueError):
        task.prompts("val", 2)


@pytest.mark.parametrize("name", NAMES)
def test_answers_rewards_and_answer_sets(name):
    task = natural.get(name)
    rng = np.random.default_rng(0)
    for p in task.prompts("test", 25, seed=0):
        answers = task.correct_answers(p)
        assert len(answers) == len(set(answers)) == task.answer_space_size(p) >= 1
        good, bad = task.sample_answer(p, rng, True), task.sample_answer(p, rng, False)
        assert task.reward(p, good) == 1.0 and task.canonical(p, good) in answers
        assert task.reward(p, bad) == 0.0 if task.binary else task.reward(p, bad) <= 0.5
        assert task.reference(p) is not None and task.reward(p, task.reference(p)) == 1.0
        for junk in JUNK:
            r = task.reward(p, junk)
            assert isinstance(r, float) and 0.0 <= r <= 1.0
        # the completion as TRL gives it for a conversational prompt
        assert task.reward_funcs()[0]([p], [[{"role": "assistant", "content": good}]], [[]]) == [1.0]
    with pytest.raises(ValueError, match="malformed"):
        task.reward([{"role": "user", "content": "something else"}], "1")


def test_arithmetic_as_instruct_models_answer():
    task = natural.get("add")
    p = task.render(47, 38)  # the default wording asks for the number alone (tuned on smollm2-135m-instruct)
    assert p == [{"role": "user", "content": "What is 47 + 38? Answer with just the number."}]
    assert task.parse(p) == (47, 38) and task.columns(p) == {"answer": "85"}
    for text in ["85", "47 + 38 = 85", "The answer is **85**.", "$\\boxed{85}$", "Sure! 47 plus 38 is 85.",
                 "To add them: 40 + 30 = 70, 7 + 8 = 15, so 70 + 15 = 85."]:
        assert task.reward(p, text) == 1.0, text
    for text in ["86", "47 + 38 = 84", "The answer is 84 (not 85)", ""]:
        assert task.reward(p, text) == 0.0, text
    assert task.correct_answers(p) == ["85"] and task.canonical(p, "It is **85**") == "85"
    mul = natural.get("mul")
    q = mul.prompts("train", 1, seed=0)[0]
    a, b = mul.parse(q)
    assert q[-1]["content"] == f"What is {a} times {b}? Answer with just the number."
    assert 1 <= a <= 9 and 1 <= b <= 9 and mul.reward(q, f"{a * b}") == 1.0
    assert len(mul.split_prompts("train")) + len(mul.split_prompts("test")) == 81  # one-digit operands


def test_two_sum_and_list_multiples():
    task = natural.get("two-sum")
    p = [{"role": "user", "content": "Give two positive whole numbers that add up to 47."}]
    assert task.answer_space_size(p) == 46 and task.columns(p) == {"target": 47}
    for text in ["20 + 27", "Sure! 20 + 27 = 47.", "The numbers are 20 and 27.", "\\boxed{1 + 46}"]:
        assert task.reward(p, text) == 1.0, text
    for text in ["0 + 47", "20 + 28", "47", "20 and 20"]:
        assert task.reward(p, text) == 0.0, text
    assert task.canonical(p, "Sure! 20 + 27 = 47.") == "20+27"
    task = natural.get("list-multiples")
    p = [{"role": "user", "content": "Name 3 different multiples of 7 between 10 and 50."}]
    assert task.correct_answers(p)[0] == "14,21,28" and task.answer_space_size(p) == 20  # C(6, 3): 14 ... 49
    assert task.reward(p, "14, 21, 28") == 1.0
    assert task.reward(p, "Multiples of 7 between 10 and 50:\n1. 14\n2. 21\n3. 35") == 1.0
    assert task.reward(p, "**14**, **21** and **49**") == 1.0
    assert task.reward(p, "14 and 21") == pytest.approx(2 / 3)
    assert task.reward(p, "14, 21, 22") == pytest.approx(1 / 3)  # a wrong number halves it
    assert task.reward(p, "14, 21, 28, 35") == 0.5  # more than asked
    assert task.canonical(p, "28, 14, 21") == "14,21,28"


def test_difficulty_parameters_and_resolve():
    easy = tasks.resolve("add", a_digits=1, b_digits=1)
    assert len(easy.split_prompts("train")) + len(easy.split_prompts("test")) == 81
    hard = tasks.resolve("add", a_digits=4, b_digits=4)  # 81M prompts: sampled, not enumerated
    assert hard.all_prompts() is None and len(set(map(str, hard.prompts("train", 50, seed=0)))) == 50
    sub = tasks.resolve("add", op="-", template="Compute {a} - {b}.", system="You are a calculator.")
    p = sub.prompts("train", 1, seed=0)[0]
    assert p[0] == {"role": "system", "content": "You are a calculator."}
    a, b = sub.parse(p)
    assert p[1]["content"] == f"Compute {a} - {b}." and sub.reward(p, str(a - b)) == 1.0
    two = tasks.resolve("two-sum", lo=20, hi=30)
    assert sorted(two.parse(q)[0] for q in two.split_prompts("train") + two.split_prompts("test")) == list(
        range(20, 31))
    lm = tasks.resolve("list-multiples", ks=(2,), ms=(3,))
    assert {lm.parse(q)[:2] for q in lm.split_prompts("train")} == {(2, 3)}
    with pytest.raises(ValueError, match="a_digits"):
        tasks.resolve("add", a_digits=0)
    with pytest.raises(ValueError, match="bad parameters"):
        tasks.resolve("add", digits=3)
    with pytest.raises(ValueError, match="must use exactly the fields"):
        tasks.resolve("two-sum", template="Give two numbers.")
    assert tasks.resolve("add") is tasks.resolve("add")


def test_well_formed_and_rows_scoring():
    add = natural.get("add")
    assert add.well_formed("The answer is 85") and not add.well_formed("no idea") and not add.well_formed(None)
    lm = natural.get("list-multiples")
    assert lm.well_formed("1. 14\n2. 21") and not lm.well_formed("none")
    assert tasks.get("sum").well_formed("12+35") and not tasks.get("sum").well_formed("12 + 35")
    rows = add.rows("train", 2, seed=0)  # [{"prompt": chat, "answer": "..."}]
    seen = {}

    def uses_answer(prompts, completions, completion_ids, answer, **kw):
        seen.update(prompts=prompts, answer=answer, completion_ids=completion_ids)
        return [1.0 if c[0]["content"] == a else 0.0 for c, a in zip(completions, answer)]

    texts = [rows[0]["answer"], "x", "y", rows[1]["answer"]]
    out = tasks.RewardSet([uses_answer, add.reward_funcs()[0]], weights=[0.5, 1.0]).score_rows(
        rows, texts, [[1], [2], [3], [4]], group_size=2, finished=[True, True, True, False])
    assert seen["prompts"] == [rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2
    assert seen["answer"] == [rows[0]["answer"]] * 2 + [rows[1]["answer"]] * 2
    assert out.rewards.tolist() == [1.5, 0.0, 0.0, 0.0]  # the last one did not finish
    assert set(out.metrics) == {f"rewards/{f}/{k}" for f in ("uses_answer", "add") for k in ("mean", "std", "unusable")}
    assert out.metrics["rewards/uses_answer/unusable"] == 0 and out.metrics["rewards/add/unusable"] == 0


def test_split_depends_on_the_question_not_the_wording():
    plain, worded = natural.get("add"), tasks.resolve("add", template="Compute {a} + {b}.", system="Be brief.")
    assert [plain.parse(p) for p in plain.split_prompts("test")] == [worded.parse(p) for p in
                                                                      worded.split_prompts("test")]
