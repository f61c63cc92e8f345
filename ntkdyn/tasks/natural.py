"""Natural-language verifiable tasks for instruct models (e.g. smollm2-135m-instruct).

Prompts are chat messages (``[{"role": "user", "content": "What is 47 + 38?"}]``, with an optional system message),
rendered later through the model's chat template. Answers are read the way instruct models write them
(:mod:`.extract`: the last number, a stated ``a + b``, "The answer is 42.", markdown bold, ``\\boxed{}``).

* ``"add"`` / ``"mul"`` (:class:`ArithmeticTask`): one correct answer per prompt ("What is 3 + 5? Answer with just
  the number." / "What is 3 times 5? ..."; one-digit operands by default, ``a_digits`` / ``b_digits`` for harder
  ones), binary; pass@k can fall under RL here.
* ``"two-sum"`` (:class:`PairSumTask`): "Give two positive whole numbers that add up to N." -- N-1 correct ordered
  pairs, enumerable (the spirit of the character task ``sum``), binary.
* ``"list-multiples"`` (:class:`ListMultiplesTask`): "Name k different multiples of m between lo and hi." --
  graded in [0, 1], the correct set (reward >= 0.9) is the C(M, k) sets of k of the M multiples.

Difficulty parameters are constructor arguments (:func:`make` ``(name, **params)``); splits follow
:class:`ntkdyn.tasks.base.Task` (a CRC32 hash of the prompt, so they are deterministic and disjoint).
"""
from __future__ import annotations

import itertools
import math
import re
import string
import zlib

import numpy as np

from .base import TEST_PERCENT, Task
from .extract import final_number, integers, stated_pair
from .rewards import completion_text

__all__ = ["NaturalTask", "ArithmeticTask", "PairSumTask", "ListMultiplesTask", "names", "get", "make"]

_MAX_ENUMERATED = 200_000  # larger prompt spaces are sampled instead of enumerated
_LIST_MARKER = re.compile(r"(?m)^\s*(?:\d{1,2}[.)]|[-*•])\s+")  # "1. ", "2) ", "- " item markers of a list


class NaturalTask(Task):
    """A chat task generated from integer parameters through a ``template`` (``str.format`` fields named after
    the parameters); :meth:`parse` reads the parameters back from the last user message."""

    chat = True
    template = ""
    fields: tuple[str, ...] = ()

    def __init__(self, template: str | None = None, system: str | None = None):
        self.template = template or type(self).template
        self.system = system
        found = {f for _, f, _, _ in string.Formatter().parse(self.template) if f}
        if found != set(self.fields):
            raise ValueError(f"{self.name} template {self.template!r} must use exactly the fields "
                             f"{sorted(self.fields)}; it uses {sorted(found)}")
        self._regex = _template_regex(self.template)

    def split_of(self, prompt) -> str:
        """The split of the prompt's parameters (hashed as ``"<name>|a,b"``), so that another template or system
        message keeps every question in its split."""
        try:
            key = ",".join(map(str, self.parse(prompt)))
        except ValueError:
            return super().split_of(prompt)
        return "test" if zlib.crc32(f"{self.name}|{key}".encode()) % 100 < TEST_PERCENT else "train"

    def well_formed(self, completion, prompt=None) -> bool:
        """An answer can be read from ``completion`` (:meth:`canonical` is not None)."""
        return self.canonical(prompt, completion) is not None

    def params(self) -> list[tuple[int, ...]]:
        """Every parameter tuple (fields order) of the prompt space."""
        raise NotImplementedError

    def render(self, *values: int) -> list[dict]:
        """The chat prompt of a parameter tuple."""
        user = {"role": "user", "content": self.template.format(**dict(zip(self.fields, values)))}
        return ([{"role": "system", "content": self.system}] if self.system else []) + [user]

    def space_size(self) -> int:
        """How many parameter tuples the prompt space holds (without listing them when it is large)."""
        return len(self.params())

    def param_at(self, i: int) -> tuple[int, ...]:
        """The i-th parameter tuple, in the order of :meth:`params`."""
        return self.params()[i]

    def all_prompts(self) -> list[list[dict]] | None:
        if self.space_size() > _MAX_ENUMERATED:
            return None
        return [self.render(*v) for v in self.params()]

    def _random_prompt(self, rng: np.random.Generator) -> list[dict]:
        return self.render(*self.param_at(int(rng.integers(self.space_size()))))

    def parse(self, prompt) -> tuple[int, ...]:
        text = _user_text(prompt)
        m = self._regex.fullmatch(text.strip()) if text is not None else None
        if m is None:
            raise ValueError(f"malformed {self.name} prompt: {prompt!r}")
        values = {k: int(v) for k, v in m.groupdict().items()}
        return tuple(values[f] for f in self.fields)


class ArithmeticTask(NaturalTask):
    """One arithmetic question, one correct answer: "What is a + b?" (``op`` "+", "-" or "*"), a with
    ``a_digits`` digits and b with ``b_digits``. Reward 1.0 when the final number of the completion
    (:func:`~.extract.final_number`) is the result, else 0.0. Answer space: 1 answer per prompt."""

    binary = True
    template = "What is {a} {op} {b}?"
    fields = ("a", "b")
    _OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

    def __init__(self, name: str = "add", op: str = "+", a_digits: int = 2, b_digits: int = 2,
                 template: str | None = None, system: str | None = None):
        if op not in self._OPS:
            raise ValueError(f"op must be one of {sorted(self._OPS)}; got {op!r}")
        for what, d in (("a_digits", a_digits), ("b_digits", b_digits)):
            if not isinstance(d, int) or not 1 <= d <= 6:
                raise ValueError(f"{what} must be an integer in 1..6; got {d!r}")
        self.name, self.op, self.a_digits, self.b_digits = name, op, a_digits, b_digits
        self.description = f"What is a {op} b? ({a_digits}-digit {op} {b_digits}-digit, one answer)"
        super().__init__((template or self.template).replace("{op}", op), system)

    def params(self):
        lo_a, lo_b = 10 ** (self.a_digits - 1), 10 ** (self.b_digits - 1)
        return list(itertools.product(range(lo_a, 10 * lo_a), range(lo_b, 10 * lo_b)))

    def space_size(self) -> int:
        return 81 * 10 ** (self.a_digits + self.b_digits - 2)

    def param_at(self, i: int) -> tuple[int, int]:
        lo_a, lo_b = 10 ** (self.a_digits - 1), 10 ** (self.b_digits - 1)
        a, b = divmod(i, 9 * lo_b)  # row-major over (a, b), as params() lists them
        return lo_a + a, lo_b + b

    def result(self, prompt) -> int:
        return self._OPS[self.op](*self.parse(prompt))

    def columns(self, prompt) -> dict:
        return {"answer": str(self.result(prompt))}

    def reward(self, prompt, completion) -> float:
        return 1.0 if final_number(completion_text(completion)) == self.result(prompt) else 0.0

    def correct_answers(self, prompt) -> list[str]:
        return [str(self.result(prompt))]

    def canonical(self, prompt, completion) -> str | None:
        v = final_number(completion_text(completion))
        return None if v is None else str(v)

    def sample_answer(self, prompt, rng: np.random.Generator, correct: bool) -> str:
        a, b = self.parse(prompt)
        c = self.result(prompt)
        if not correct:
            c += int(rng.choice([d for d in range(-10, 11) if d]))
        return f"{a} {self.op} {b} = {c}"


class PairSumTask(NaturalTask):
    """Many answers per prompt, in the spirit of the character task ``sum``: "Give two positive whole numbers that
    add up to N." with N in ``lo..hi``. The completion's last stated pair (``a + b``, "a plus b", else "a and b")
    is read (:func:`~.extract.stated_pair`); reward 1.0 when a, b >= 1 and a + b = N, else 0.0. Answer space: the
    N - 1 ordered pairs, canonical form ``"a+b"``."""

    name = "two-sum"
    binary = True
    template = "Give two positive whole numbers that add up to {n}."
    fields = ("n",)

    def __init__(self, lo: int = 10, hi: int = 99, template: str | None = None, system: str | None = None):
        if not (isinstance(lo, int) and isinstance(hi, int) and 3 <= lo <= hi):
            raise ValueError(f"two-sum needs integers 3 <= lo <= hi; got lo={lo!r}, hi={hi!r}")
        self.lo, self.hi = lo, hi
        self.description = f"two positive numbers adding up to N (N in {lo}..{hi}, N-1 answers)"
        super().__init__(template, system)

    def params(self):
        return [(n,) for n in range(self.lo, self.hi + 1)]

    def columns(self, prompt) -> dict:
        return {"target": self.parse(prompt)[0]}

    def reward(self, prompt, completion) -> float:
        (n,) = self.parse(prompt)
        pair = stated_pair(completion_text(completion))
        return 1.0 if pair is not None and min(pair) >= 1 and sum(pair) == n else 0.0

    def correct_answers(self, prompt) -> list[str]:
        (n,) = self.parse(prompt)
        return [f"{a}+{n - a}" for a in range(1, n)]

    def canonical(self, prompt, completion) -> str | None:
        pair = stated_pair(completion_text(completion))
        return None if pair is None else f"{pair[0]}+{pair[1]}"

    def sample_answer(self, prompt, rng: np.random.Generator, correct: bool) -> str:
        (n,) = self.parse(prompt)
        a = int(rng.integers(1, n))
        b = n - a if correct else max(1, n - a + int(rng.choice([d for d in range(-9, 10) if d])))
        if not correct and a + b == n:
            b += 1
        return f"{a} + {b} = {a + b}"


class ListMultiplesTask(NaturalTask):
    """Graded: "Name k different multiples of m between lo and hi." (lo and hi are not multiples of m, so
    "between" is unambiguous). The integers of the completion are read (list markers such as "1." skipped; the
    prompt's own numbers k, m, lo, hi ignored); with v the distinct valid multiples, the reward is min(v, k) / k,
    halved when another number is given or v > k. Correct set (reward >= 0.9): exactly k valid multiples and
    nothing else. Answer space: C(M, k) sets for the M multiples in the interval, canonical form "14,21,28"."""

    name = "list-multiples"
    binary = False
    template = "Name {k} different multiples of {m} between {lo} and {hi}."
    fields = ("k", "m", "lo", "hi")

    def __init__(self, ks=(2, 3), ms=range(3, 10), los=range(10, 60), widths=range(20, 41),
                 template: str | None = None, system: str | None = None):
        self.ks, self.ms, self.los, self.widths = tuple(ks), tuple(ms), tuple(los), tuple(widths)
        if not self.ks or min(self.ks) < 1 or not self.ms or min(self.ms) < 2 or not self.los or not self.widths:
            raise ValueError("list-multiples needs non-empty ks (>= 1), ms (>= 2), los and widths")
        self.description = "k different multiples of m in (lo, hi) (graded, C(M, k) best answers)"
        super().__init__(template, system)

    def params(self):
        out = []
        for k, m, lo, w in itertools.product(self.ks, self.ms, self.los, self.widths):
            hi = lo + w
            if lo % m and hi % m and lo > max(k, m) and len(_multiples(m, lo, hi)) >= 2 * k:
                out.append((k, m, lo, hi))
        if not out:
            raise ValueError("list-multiples: no prompt satisfies the parameters (need >= 2k multiples)")
        return out

    def _read(self, prompt, completion) -> tuple[set, set, int, set]:
        k, m, lo, hi = self.parse(prompt)
        text = completion_text(completion)
        said = set(integers(_LIST_MARKER.sub(" ", text), bold=False)) if text else set()
        valid = set(_multiples(m, lo, hi))
        return said & valid, said - valid - {k, m, lo, hi}, k, said - {k, m, lo, hi}

    def reward(self, prompt, completion) -> float:
        good, bad, k, _ = self._read(prompt, completion)
        score = min(len(good), k) / k
        return score * 0.5 if bad or len(good) > k else score

    def correct_answers(self, prompt) -> list[str]:
        k, m, lo, hi = self.parse(prompt)
        return [",".join(map(str, c)) for c in itertools.combinations(_multiples(m, lo, hi), k)]

    def answer_space_size(self, prompt) -> int:
        k, m, lo, hi = self.parse(prompt)
        return math.comb(len(_multiples(m, lo, hi)), k)

    def canonical(self, prompt, completion) -> str | None:
        if prompt is None:  # well_formed without a prompt: the numbers said, none ignored
            text = completion_text(completion)
            said = set(integers(_LIST_MARKER.sub(" ", text), bold=False)) if text else set()
            return ",".join(map(str, sorted(said))) if said else None
        said = self._read(prompt, completion)[3]
        return ",".join(map(str, sorted(said))) if said else None

    def sample_answer(self, prompt, rng: np.random.Generator, correct: bool) -> str:
        k, m, lo, hi = self.parse(prompt)
        valid = _multiples(m, lo, hi)
        pick = sorted(int(v) for v in rng.choice(valid, size=k, replace=False))
        if not correct:  # k-1 good ones and a non-multiple: reward (k-1)/k / 2 <= 0.5
            others = [v for v in range(lo + 1, hi) if v % m and v not in (k, m)]
            pick = sorted(pick[:-1] + [int(rng.choice(others))])
        return ", ".join(map(str, pick))


def _multiples(m: int, lo: int, hi: int) -> list[int]:
    return list(range((lo // m + 1) * m, hi, m))


def _user_text(prompt) -> str | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return None


def _template_regex(template: str) -> re.Pattern:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field:
            parts.append(f"(?P<{field}>-?[0-9]+)")
    return re.compile("".join(parts).strip())


# Defaults tuned on smollm2-135m-instruct (temperature 1, chat template): one-digit operands and an instruction to
# answer with the number alone put add and mul inside 0.05-0.8 from the start (two-digit operands and the bare
# question gave 0.03 / 0.06, half of the completions rambling past 64 tokens). See docs/rl.md.
ANSWER_ONLY = " Answer with just the number."
_FACTORIES = {
    "add": lambda **kw: ArithmeticTask(**{"name": "add", "op": "+", "a_digits": 1, "b_digits": 1,
                                          "template": "What is {a} + {b}?" + ANSWER_ONLY, **kw}),
    "mul": lambda **kw: ArithmeticTask(**{"name": "mul", "op": "*", "a_digits": 1, "b_digits": 1,
                                          "template": "What is {a} times {b}?" + ANSWER_ONLY, **kw}),
    "two-sum": lambda **kw: PairSumTask(**kw),
    "list-multiples": lambda **kw: ListMultiplesTask(**kw),
}
_DEFAULTS: dict[str, Task] = {}


def names() -> list[str]:
    """Names of the natural-language tasks."""
    return list(_FACTORIES)


def make(name: str, **params) -> Task:
    """A new natural task ``name`` with difficulty parameters ``params`` (e.g. ``make("add", a_digits=3)``,
    ``make("two-sum", lo=20, hi=60)``, ``make("list-multiples", ks=(2,))``); errors name the bad argument."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown natural task {name!r}; known: {names()}")
    try:
        return _FACTORIES[name](**params)
    except TypeError as e:
        raise ValueError(f"natural task {name!r}: bad parameters {sorted(params)} ({e})") from None


def get(name: str) -> Task:
    """The natural task ``name`` with its default parameters (one shared instance)."""
    if name not in _DEFAULTS:
        _DEFAULTS[name] = make(name)
    return _DEFAULTS[name]
