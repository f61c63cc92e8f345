"""The single-answer character task "plus": hand-checked prompts, rewards, answers and near misses."""
import numpy as np
import pytest

from ntkdyn import tasks
from ntkdyn.tasks import CHARSET, CharTokenizer


@pytest.fixture(scope="module")
def plus():
    return tasks.get("plus")


def test_prompt_space_and_splits(plus):
    everything = plus.all_prompts()
    assert len(everything) == len(set(everything)) == 90 * 90
    assert everything[0] == "plus 10+10:" and everything[-1] == "plus 99+99:"
    test, train = plus.split_prompts("test"), plus.split_prompts("train")
    assert not set(test) & set(train) and len(test) + len(train) == 8100
    assert 0.15 < len(test) / 8100 < 0.25  # about 20% held out
    tok = CharTokenizer()
    for p in everything[::97]:
        assert len(p) <= 16 and set(p) <= set(CHARSET) and tok.decode(tok.encode(p)) == p
    assert tasks.resolve("plus") is plus and "plus" in tasks.all_names()


def test_rewards_hand_checked(plus):
    p = "plus 23+45:"
    assert plus.parse(p) == (23, 45)
    assert plus.correct_answers(p) == ["68"] and plus.answer_space_size(p) == 1
    for good in ("68", "68 ", "68\n"):
        assert plus.reward(p, good) == 1.0
    for bad in ("67", "69", "068", " 68", "+68", "68.0", "6 8", "23+45", "sixty-eight", "", None, "9" * 40, "٦٨"):
        assert plus.reward(p, bad) == 0.0
    assert plus.reward("plus 99+99:", "198") == 1.0 and plus.reward("plus 10+10:", "20") == 1.0
    for malformed in ("plus 5+45:", "plus 23+45", "plus 100+1:", "plus 23+05:", "sum 47:", "plus 23 + 45:", 7):
        with pytest.raises(ValueError, match="malformed plus prompt"):
            plus.reward(malformed, "68")


def test_sample_answers(plus):
    rng = np.random.default_rng(0)
    for p in plus.prompts("train", 50, seed=1):
        a, b = plus.parse(p)
        assert plus.sample_answer(p, rng, correct=True) == str(a + b)
        miss = plus.sample_answer(p, rng, correct=False)
        assert plus.reward(p, miss) == 0.0 and plus.well_formed(miss)
        assert 1 <= abs(int(miss) - (a + b)) <= 10 and 1 <= len(miss) <= 8
    assert plus.reference("plus 23+45:") == "68"
    assert plus.canonical("plus 23+45:", "68 ") == "68"
