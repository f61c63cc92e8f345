"""The task abstraction shared by every source of prompts and rewards.

A task is: a prompt space split deterministically into disjoint ``"train"`` / ``"test"`` prompts (text, or chat
messages ``[{"role": ..., "content": ...}, ...]`` rendered later through the model's chat template), one or more
reward functions in TRL's signature (:meth:`Task.reward_funcs`), per-prompt extra columns (:meth:`Task.columns`,
passed to the reward functions by name as a TRL dataset's columns are), reference answers (the LP stage of LP-FT,
SFT: :meth:`Task.reference`) and, when it can be enumerated, the set of correct answers of a prompt (exact
diversity statistics: :meth:`Task.correct_answers`, :meth:`Task.canonical`).

Three kinds implement it: the synthetic character tasks (:mod:`.synthetic`), the natural-language verifiable tasks
for instruct models (:mod:`.natural`) and a user's dataset (:mod:`.datasets`).

Generated tasks (synthetic and natural) share the split rule: a prompt belongs to ``"test"`` when the CRC32 hash of
``"<task name>|<prompt key>"`` falls in the lowest 20% (:meth:`Task.split_of`), so the splits are disjoint and do
not depend on the seed; ``prompts(split, n, seed)`` draws ``n`` prompts of a split (distinct when the split holds at
least ``n``, with replacement otherwise), a function of ``(split, n, seed)`` only.
"""
from __future__ import annotations

import copy
import json
import zlib
from functools import lru_cache

import numpy as np

from .rewards import is_conversational, task_reward_function

__all__ = ["Task", "SPLITS", "MAX_COMPLETION_CHARS", "prompt_key", "check_split"]

SPLITS = ("train", "test")

#: Completions longer than this (after stripping trailing whitespace) score 0 in the synthetic tasks.
MAX_COMPLETION_CHARS = 32
TEST_PERCENT = 20  # share of the prompt space in the test split


def prompt_key(prompt) -> str:
    """A text that identifies ``prompt``: the prompt itself for a string, the JSON of the messages for a chat."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


class Task:
    """A prompt space, a split rule, reward functions, references and (optionally) answer sets.

    Subclasses define ``name``, ``description``, ``binary`` (rewards are 0/1) and implement :meth:`parse`,
    :meth:`reward`, :meth:`correct_answers`, :meth:`sample_answer` and either :meth:`all_prompts` (small prompt
    spaces) or :meth:`_random_prompt` (large ones). A task whose prompts are chat messages sets ``chat = True``.
    """

    name: str = ""
    description: str = ""
    binary: bool = True
    chat: bool = False  # prompts are lists of {"role", "content"} messages

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # ----- prompt space and splits -------------------------------------------
    def split_of(self, prompt) -> str:
        """``"train"`` or ``"test"``: the split ``prompt`` belongs to (a fixed function of the prompt text)."""
        h = zlib.crc32(f"{self.name}|{prompt_key(prompt)}".encode()) % 100
        return "test" if h < TEST_PERCENT else "train"

    def all_prompts(self) -> list | None:
        """Every prompt of the task, in a fixed order, or ``None`` when the
        prompt space is too large to enumerate."""
        return None

    def _random_prompt(self, rng: np.random.Generator):
        """One uniformly random prompt (needed when :meth:`all_prompts` is None)."""
        raise NotImplementedError

    def split_prompts(self, split: str) -> list | None:
        """All prompts of ``split`` (``None`` if the space is not enumerable)."""
        check_split(split)
        pool = _split_pool_cached(self, split)
        return None if pool is None else [_fresh(p) for p in pool]

    def prompts(self, split: str, n: int, seed: int = 0) -> list:
        """``n`` prompts of ``split`` (``"train"`` or ``"test"``), deterministic
        in ``seed``.

        Distinct prompts when the split holds at least ``n`` of them; otherwise
        drawn with replacement (so repeats occur).
        """
        check_split(split)
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        pool = _split_pool_cached(self, split)
        if pool is not None:
            idx = rng.choice(len(pool), size=n, replace=n > len(pool))
            return [_fresh(pool[i]) for i in idx]
        out, seen = [], set()
        while len(out) < n:
            p = self._random_prompt(rng)
            key = prompt_key(p)
            if key not in seen and self.split_of(p) == split:
                seen.add(key)
                out.append(p)
        return out

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """``n`` rows ``{"prompt": ..., **columns}`` of ``split``: the prompts of :meth:`prompts` with their
        columns (what a TRL dataset row holds)."""
        return [{"prompt": p, **self.columns(p)} for p in self.prompts(split, n, seed)]

    def split_rows(self, split: str) -> list[dict] | None:
        """Every row of ``split`` in :meth:`split_prompts` order (``None`` if the space is not enumerable)."""
        prompts = self.split_prompts(split)
        return None if prompts is None else [{"prompt": p, **self.columns(p)} for p in prompts]

    def columns(self, prompt) -> dict:
        """Extra per-prompt columns passed to the reward functions by name (e.g. ``{"answer": "85"}``)."""
        return {}

    # ----- rewards --------------------------------------------------------------
    def reward_funcs(self) -> list:
        """The task's reward functions in TRL's signature ``f(prompts, completions, completion_ids, **columns)``;
        for a generated task one function named after the task that calls :meth:`reward` per completion."""
        return [task_reward_function(self)]

    def reward_weights(self) -> list[float] | None:
        """Weights of :meth:`reward_funcs` (``None``: 1.0 each)."""
        return None

    # ----- answers ------------------------------------------------------------
    def parse(self, prompt) -> tuple:
        """Parameters of ``prompt``; raises ``ValueError`` if it is malformed."""
        raise NotImplementedError

    def reward(self, prompt, completion: str) -> float:
        """Reward in [0, 1] of ``completion`` for ``prompt`` (never raises on
        the completion)."""
        raise NotImplementedError

    def correct_answers(self, prompt) -> list[str] | None:
        """All answers with reward 1 (binary) / >= 0.9 (graded), in a fixed order, in the form :meth:`canonical`
        gives (``None`` when the answer set cannot be enumerated)."""
        raise NotImplementedError

    def answer_space_size(self, prompt) -> int | None:
        """Number of correct (binary) / near-optimal, reward >= 0.9 (graded)
        answers."""
        answers = self.correct_answers(prompt)
        return None if answers is None else len(answers)

    def sample_answer(self, prompt, rng: np.random.Generator, correct: bool) -> str:
        """A well-formed answer: uniformly random among the correct ones if
        ``correct``, else a wrong one (reward 0 for binary tasks, <= 0.5 for
        graded)."""
        raise NotImplementedError

    def reference(self, prompt, seed: int = 0) -> str | None:
        """One correct reference answer of ``prompt`` (the LP stage of LP-FT, SFT); ``None`` when there is none."""
        return self.sample_answer(prompt, np.random.default_rng(seed), correct=True)

    def canonical(self, prompt, completion) -> str | None:
        """The answer ``completion`` gives, in the canonical form of :meth:`correct_answers` (what distinct-answer
        statistics count), or ``None`` when no answer can be read from it."""
        return self.normalize(completion)

    def well_formed(self, completion, prompt=None) -> bool:
        """An answer can be read from ``completion`` (evaluation's ``frac_malformed`` counts the others). For the
        character tasks: the normalized text matches the task's answer format ``_answer_re``."""
        pattern = getattr(self, "_answer_re", None)
        norm = self.normalize(completion)
        return norm is not None and (pattern is None or pattern.fullmatch(norm) is not None)

    @staticmethod
    def normalize(completion) -> str | None:
        """The completion as scored (trailing whitespace removed), or ``None``
        when it is not a string or is longer than ``MAX_COMPLETION_CHARS``."""
        if not isinstance(completion, str):
            return None
        text = completion.rstrip()
        return text if len(text) <= MAX_COMPLETION_CHARS else None


def _fresh(prompt):
    """A prompt safe to hand out: strings as they are, chat messages copied (callers may edit them)."""
    return copy.deepcopy(prompt) if is_conversational(prompt) else prompt


@lru_cache(maxsize=None)
def _split_pool_cached(task: Task, split: str) -> tuple | None:
    """The prompts of `split`, computed once per task object (None when the space is not enumerable)."""
    cache = task.__dict__.setdefault("_split_pools", {})
    if split not in cache:
        everything = task.all_prompts()
        cache[split] = None if everything is None else tuple(p for p in everything if task.split_of(p) == split)
    return cache[split]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
