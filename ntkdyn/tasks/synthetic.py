"""Synthetic character tasks with verifiable rewards.

Each task maps a short prompt (<= 16 characters) to an enumerable set of short
correct answers (<= 8 characters): a large one for ``sum``, ``multiple`` and
``word``, so that the diversity of a policy's answers can be measured exactly,
and a single answer for ``plus`` (where diversity can only show in pass@k). All prompts and answers use only
:data:`ntkdyn.models.tokenizer.CHARSET`; only ntkdyn's own character model (the
embedded default model) understands them.

Conventions shared by every task:

* The answer follows the prompt directly (no separating space): the model sees
  ``"sum 47:"`` and should generate e.g. ``"12+35"`` then EOS.
* ``reward(prompt, completion)`` takes the decoded completion (EOS stripped).
  Trailing whitespace is ignored (``completion.rstrip()``); anything else that
  does not match the answer format exactly -- leading spaces, leading zeros,
  signs, non-ASCII digits, extra text, more than 32 characters -- is malformed
  and scores 0.0. It never raises on any completion string. A malformed
  *prompt* is a caller bug and raises ``ValueError``.
* ``prompts(split, n, seed)`` partitions the prompt space deterministically by
  a CRC32 hash of the prompt text (about 20% of prompts are "test"), so the
  splits never share a prompt (:class:`ntkdyn.tasks.base.Task`).

Use :func:`names` / :func:`get` to access the registry.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

import numpy as np

from .base import SPLITS, Task

__all__ = [
    "Task",
    "SumTask",
    "MultipleTask",
    "WordTask",
    "PlusTask",
    "DEFAULT_TASK",
    "SPLITS",
    "names",
    "get",
]

DEFAULT_TASK = "sum"
_NUMBER = "(0|[1-9][0-9]*)"  # canonical non-negative decimal, ASCII digits only


class SumTask(Task):
    """Write the target as a sum of two non-negative integers.

    Prompt ``"sum N:"`` with N in 20..99 (80 prompts). Answer ``"a+b"`` with
    canonical decimals (no sign, no leading zeros, ASCII digits) and a + b = N.
    Answer space: N + 1 answers (21..100). Verification: regex parse of the
    completion then integer check of a + b == N; reward is 1.0 or 0.0.
    """

    name = "sum"
    description = "sum N: -> a+b with a+b=N (N in 20..99, N+1 answers)"
    binary = True
    low, high = 20, 99

    _prompt_re = re.compile(r"sum (0|[1-9][0-9]*):")
    _answer_re = re.compile(_NUMBER + r"\+" + _NUMBER)

    def all_prompts(self) -> list[str]:
        return [f"sum {n}:" for n in range(self.low, self.high + 1)]

    def parse(self, prompt: str) -> tuple[int]:
        m = self._prompt_re.fullmatch(prompt) if isinstance(prompt, str) else None
        if m is None:
            raise ValueError(f"malformed {self.name} prompt: {prompt!r}")
        return (int(m.group(1)),)

    def reward(self, prompt: str, completion: str) -> float:
        (target,) = self.parse(prompt)
        text = self.normalize(completion)
        m = self._answer_re.fullmatch(text) if text is not None else None
        if m is None:
            return 0.0
        return 1.0 if int(m.group(1)) + int(m.group(2)) == target else 0.0

    def correct_answers(self, prompt: str) -> list[str]:
        (target,) = self.parse(prompt)
        return [f"{a}+{target - a}" for a in range(target + 1)]

    def answer_space_size(self, prompt: str) -> int:
        return self.parse(prompt)[0] + 1

    def sample_answer(self, prompt: str, rng: np.random.Generator, correct: bool) -> str:
        (target,) = self.parse(prompt)
        a = int(rng.integers(0, target + 1))
        if correct:
            return f"{a}+{target - a}"
        # A near miss: b off by a non-zero delta (kept non-negative).
        while True:
            delta = int(rng.integers(-9, 10))
            b = target - a + delta
            if delta != 0 and b >= 0:
                return f"{a}+{b}"


class MultipleTask(Task):
    """Name a multiple of k inside an interval.

    Prompt ``"kx[lo,hi]:"`` with k in 2..9, lo in 10..99 and
    hi - lo + 1 in 10k..10k+60 (8 * 90 * 61 = 43,920 prompts), e.g.
    ``"7x[20,90]:"``. Answer: a canonical decimal v with lo <= v <= hi and
    v % k == 0. Answer space: the multiples of k in [lo, hi], between 10 and
    40 per prompt (the interval holds at least 10k integers). Verification:
    regex parse then integer checks; reward is 1.0 or 0.0.
    """

    name = "multiple"
    description = "kx[lo,hi]: -> a multiple of k in [lo,hi] (10..40 answers)"
    binary = True
    ks = range(2, 10)
    los = range(10, 100)
    extra_widths = range(0, 61)

    _prompt_re = re.compile(r"([2-9])x\[" + _NUMBER + "," + _NUMBER + r"\]:")
    _answer_re = re.compile(_NUMBER)

    def all_prompts(self) -> list[str]:
        return [
            f"{k}x[{lo},{lo + 10 * k - 1 + w}]:"
            for k in self.ks
            for lo in self.los
            for w in self.extra_widths
        ]

    def parse(self, prompt: str) -> tuple[int, int, int]:
        m = self._prompt_re.fullmatch(prompt) if isinstance(prompt, str) else None
        if m is None or int(m.group(2)) > int(m.group(3)):
            raise ValueError(f"malformed {self.name} prompt: {prompt!r}")
        return int(m.group(1)), int(m.group(2)), int(m.group(3))

    def reward(self, prompt: str, completion: str) -> float:
        k, lo, hi = self.parse(prompt)
        text = self.normalize(completion)
        if text is None or self._answer_re.fullmatch(text) is None:
            return 0.0
        v = int(text)
        return 1.0 if lo <= v <= hi and v % k == 0 else 0.0

    def correct_answers(self, prompt: str) -> list[str]:
        k, lo, hi = self.parse(prompt)
        first = -(-lo // k) * k
        return [str(v) for v in range(first, hi + 1, k)]

    def sample_answer(self, prompt: str, rng: np.random.Generator, correct: bool) -> str:
        k, lo, hi = self.parse(prompt)
        if correct:
            answers = self.correct_answers(prompt)
            return answers[int(rng.integers(len(answers)))]
        if rng.random() < 0.25:  # a multiple of k just outside the interval
            below = (lo - 1) // k * k
            options = [below] if below >= 0 else []
            options.append(-(-(hi + 1) // k) * k)
            return str(options[int(rng.integers(len(options)))])
        while True:  # a non-multiple inside the interval (exists since k >= 2)
            v = int(rng.integers(lo, hi + 1))
            if v % k:
                return str(v)


class WordTask(Task):
    """Graded task (stands in for a learned reward model): build a word.

    Prompt ``"word LETTERS n:"``: 5 or 6 distinct letters (the first one is the
    required initial, the others are listed in alphabetical order) and a
    target length n in 3..5, e.g. ``"word qaeit 4:"``.
    Answer: a string of lowercase letters. Score = mean of four terms:

    * length: 1 if len == n, 0.5 if off by one, else 0;
    * letters: 1 if every letter is one of LETTERS, else 0;
    * distinct: 1 if no letter repeats, else 0;
    * initial: 1 if it starts with the first given letter, else 0.

    Anything that is not 1..32 lowercase ASCII letters (after stripping
    trailing whitespace) scores 0. Every imperfect answer scores <= 0.875, so
    the answers with reward >= 0.9 are exactly those with reward 1.0: the
    first letter followed by n-1 distinct other given letters.
    Answer space (reward >= 0.9): P(m-1, n-1) answers for m letters -- 12, 24,
    24 (m=5; n=3,4,5) or 20, 60, 120 (m=6). Prompt space: 26 * (C(25,4) + C(25,5)) * 3 ~ 5.1M prompts.
    """

    name = "word"
    description = "word LETTERS n: -> n distinct given letters, starting with the first (graded)"
    binary = False
    letter_counts = (5, 6)
    lengths = (3, 4, 5)

    _prompt_re = re.compile(r"word ([a-z]{5,6}) ([3-5]):")
    _answer_re = re.compile(r"[a-z]+")

    def _random_prompt(self, rng: np.random.Generator) -> str:
        m = int(rng.choice(self.letter_counts))
        n = int(rng.choice(self.lengths))
        letters = [chr(ord("a") + int(i)) for i in rng.choice(26, size=m, replace=False)]
        return f"word {letters[0] + ''.join(sorted(letters[1:]))} {n}:"

    def parse(self, prompt: str) -> tuple[str, int]:
        m = self._prompt_re.fullmatch(prompt) if isinstance(prompt, str) else None
        if m is None:
            raise ValueError(f"malformed {self.name} prompt: {prompt!r}")
        letters = m.group(1)
        rest = letters[1:]
        if len(set(letters)) != len(letters) or list(rest) != sorted(rest):
            raise ValueError(f"malformed {self.name} prompt (letters): {prompt!r}")
        return letters, int(m.group(2))

    def reward(self, prompt: str, completion: str) -> float:
        letters, n = self.parse(prompt)
        text = self.normalize(completion)
        if text is None or self._answer_re.fullmatch(text) is None:
            return 0.0
        diff = abs(len(text) - n)
        length = 1.0 if diff == 0 else 0.5 if diff == 1 else 0.0
        allowed = 1.0 if set(text) <= set(letters) else 0.0
        distinct = 1.0 if len(set(text)) == len(text) else 0.0
        initial = 1.0 if text[0] == letters[0] else 0.0
        return (length + allowed + distinct + initial) / 4.0

    def correct_answers(self, prompt: str) -> list[str]:
        letters, n = self.parse(prompt)
        return list(_word_answers(letters, n))

    def sample_answer(self, prompt: str, rng: np.random.Generator, correct: bool) -> str:
        letters, n = self.parse(prompt)
        if correct:
            answers = _word_answers(letters, n)
            return answers[int(rng.integers(len(answers)))]
        alphabet = "abcdefghijklmnopqrstuvwxyz"
        for _ in range(100):
            size = int(rng.integers(max(1, n - 2), n + 3))
            word = "".join(
                letters[int(rng.integers(len(letters)))]
                if rng.random() < 0.5
                else alphabet[int(rng.integers(26))]
                for _ in range(size)
            )
            if self.reward(prompt, word) <= 0.5:
                return word
        outsider = next(c for c in alphabet if c not in letters)
        return outsider * (n + 2)  # reward 0


@lru_cache(maxsize=4096)
def _word_answers(letters: str, n: int) -> tuple[str, ...]:
    return tuple(
        letters[0] + "".join(p) for p in itertools.permutations(sorted(letters[1:]), n - 1)
    )


class PlusTask(Task):
    """Add two numbers: the single-answer task.

    Prompt ``"plus a+b:"`` with a, b in 10..99 (8,100 prompts), e.g.
    ``"plus 23+45:"``. Answer: the canonical decimal of a + b (``"68"``).
    Answer space: one answer per prompt. Verification: regex parse then an
    integer check; reward is 1.0 or 0.0. Near misses are a + b off by 1..10.
    """

    name = "plus"
    description = "plus a+b: -> a+b in decimal (a, b in 10..99, one answer)"
    binary = True
    low, high = 10, 99

    _prompt_re = re.compile(r"plus ([1-9][0-9])\+([1-9][0-9]):")
    _answer_re = re.compile(_NUMBER)

    def all_prompts(self) -> list[str]:
        span = range(self.low, self.high + 1)
        return [f"plus {a}+{b}:" for a in span for b in span]

    def parse(self, prompt: str) -> tuple[int, int]:
        m = self._prompt_re.fullmatch(prompt) if isinstance(prompt, str) else None
        if m is None:
            raise ValueError(f"malformed {self.name} prompt: {prompt!r}")
        return int(m.group(1)), int(m.group(2))

    def reward(self, prompt: str, completion: str) -> float:
        a, b = self.parse(prompt)
        text = self.normalize(completion)
        if text is None or self._answer_re.fullmatch(text) is None:
            return 0.0
        return 1.0 if int(text) == a + b else 0.0

    def correct_answers(self, prompt: str) -> list[str]:
        a, b = self.parse(prompt)
        return [str(a + b)]

    def sample_answer(self, prompt: str, rng: np.random.Generator, correct: bool) -> str:
        a, b = self.parse(prompt)
        if correct:
            return str(a + b)
        delta = int(rng.integers(1, 11)) * (1 if rng.random() < 0.5 else -1)
        return str(a + b + delta)  # a + b >= 20: never negative


_REGISTRY: dict[str, Task] = {t.name: t for t in (SumTask(), MultipleTask(), WordTask(), PlusTask())}


def names() -> list[str]:
    """Names of the registered tasks (the default, ``"sum"``, first)."""
    return list(_REGISTRY)


def get(name: str = DEFAULT_TASK) -> Task:
    """The registered task called ``name``; ``KeyError`` listing the known
    names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown task {name!r}; known tasks: {names()}") from None
