"""Reward functions in TRL's signature, combined with weights.

A reward function is what ``trl.GRPOTrainer(reward_funcs=...)`` accepts::

    def my_reward(prompts, completions, completion_ids, **columns) -> list[float | None]

called once per batch of N completions with keyword arguments: ``prompts`` (N prompts, repeated per sample),
``completions`` (N completions), ``completion_ids`` (N lists of token ids) and every extra column of the dataset by
name (N values each; ``prompt`` itself is not repeated as a column). For standard data ``prompts`` and
``completions`` are strings; for conversational data (prompts are lists of ``{"role", "content"}`` messages) each
completion is ``[{"role": "assistant", "content": text}]``, as TRL gives it. ``None`` means "not applicable": it is
NaN here and is left out of the weighted sum (``nansum``); a completion for which every function returns ``None``
gets a NaN total (TRL: unscorable, advantage 0). A function that lists its parameters without ``**kwargs`` receives
only the ones it names.

:class:`RewardSet` calls each function once, checks what it returns (an error names the function and, for a bad
value, the sample index) and gives the weighted total, the per-function values and TRL's per-function metrics
``rewards/<name>/mean`` and ``rewards/<name>/std`` (``<name>`` is the function's ``__name__``), and
``rewards/<name>/unusable``: how many completions of the batch the function gave no value (None or NaN)::

    rs = RewardSet([correct, "my_rewards.py:brevity"], weights=[1.0, 0.1])
    out = rs(prompts, texts, completion_ids, answer=answers)    # out.rewards (N,), out.per_func (N, 2), out.metrics
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import os
import sys
from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = ["RewardError", "RewardSet", "RewardOutput", "load_reward_function", "task_reward_function",
           "text_reward_function",
           "reward_name", "completion_text", "is_conversational", "as_completions"]

_RESERVED = ("prompts", "completions", "completion_ids")


class RewardError(ValueError):
    """A reward function that cannot be loaded, or that raised or returned something unusable (the message names
    the function, and the sample for a bad value)."""


# ---------------------------------------------------------------------------------------------- shapes (TRL)
def is_conversational(prompt) -> bool:
    """``prompt`` is a chat: a non-empty list of dicts with a ``"role"`` (TRL's ``is_conversational``)."""
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and isinstance(prompt[0], dict) \
        and "role" in prompt[0]


def as_completions(prompts: Sequence, texts: Sequence):
    """Completions as TRL hands them to reward functions: the decoded texts for standard prompts,
    ``[{"role": "assistant", "content": text}]`` for conversational ones (texts already in that form are kept)."""
    if not prompts or not is_conversational(prompts[0]):
        return list(texts)
    return [t if not isinstance(t, str) else [{"role": "assistant", "content": t}] for t in texts]


def completion_text(completion) -> str | None:
    """The text of one completion: the string itself, or the content of the last message of a conversational
    completion; ``None`` when it is neither."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        return content if isinstance(content, str) else None
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        return content if isinstance(content, str) else None
    return None


def reward_name(fn) -> str:
    """The name TRL logs a reward function under: ``__name__`` (through ``functools.partial``), else the class
    name of a callable object."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def text_reward_function(fn: Callable, name: str = "reward_fn") -> Callable:
    """``fn(prompt, completion_text) -> float`` (one completion at a time) in TRL's batch signature, named `name`
    (its metrics rewards/<name>/mean|std do not depend on what the callable is called, e.g. a lambda)."""

    def reward(prompts, completions, completion_ids=None, **columns):
        return [float(fn(p, completion_text(c))) for p, c in zip(prompts, completions)]

    reward.__name__ = reward.__qualname__ = str(name)
    return reward


def task_reward_function(task) -> Callable:
    """``task.reward`` (one prompt, one completion text) in TRL's batch signature, named after the task."""
    reward = text_reward_function(task.reward, task.name)
    reward.__doc__ = f"The reward of task {task.name!r} ({task.description})"
    return reward


# ---------------------------------------------------------------------------------------------- loading
def load_reward_function(spec: str) -> Callable:
    """A reward function from ``"package.module:function"`` (importable from the current directory or
    PYTHONPATH) or ``"path/to/file.py:function"``. A callable is returned as it is. Errors name the spec."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise RewardError(f"reward function spec {spec!r}: expected 'package.module:function' or "
                          "'path/to/file.py:function' (task names and reward-model directories go through "
                          "ntkdyn.tasks.reward_function / reward_set)")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _module_from_file(target, spec)
    else:
        module = _module_from_import(target, spec)
    fn = getattr(module, attr, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardError(f"reward function spec {spec!r}: {target} has no function {attr!r}; "
                          f"callables found: {found}")
    if not callable(fn):
        raise RewardError(f"reward function spec {spec!r}: {target}.{attr} is a {type(fn).__name__}, not callable")
    return fn


def _module_from_file(path: str, spec: str):
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise RewardError(f"reward function spec {spec!r}: file {path} does not exist")
    name = "ntkdyn_reward_" + os.path.splitext(os.path.basename(path))[0] + f"_{abs(hash(path)):x}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        raise RewardError(f"reward function spec {spec!r}: {path} failed to load "
                          f"({type(e).__name__}: {e})") from e
    sys.modules[name] = module
    return module


def _module_from_import(target: str, spec: str):
    if os.getcwd() not in sys.path:  # "importable from the current directory", as `python -m` would
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(target)
    except Exception as e:
        raise RewardError(f"reward function spec {spec!r}: cannot import module {target!r} "
                          f"({type(e).__name__}: {e}); it must be importable from the current directory or "
                          "PYTHONPATH") from e


# ---------------------------------------------------------------------------------------------- combining
class RewardOutput(NamedTuple):
    rewards: np.ndarray  # (N,) float64: the weighted sum over functions (nansum; NaN when every function gave None)
    per_func: np.ndarray  # (N, K) float64: each function's values, NaN where it returned None
    metrics: dict  # {"rewards/<name>/mean": float, "rewards/<name>/std": float} for each function (TRL's names)
    # and "rewards/<name>/unusable": int, the completions it gave no value
    unscored: np.ndarray  # (N, K) bool: where each function returned None or NaN (before the `finished` rule)


class RewardSet:
    """Several reward functions with weights (TRL's ``reward_funcs`` + ``reward_weights``).

    ``funcs``: callables in TRL's signature or spec strings for :func:`load_reward_function`; ``weights``: one
    float per function (default 1.0 each). ``names`` are the functions' ``__name__`` (a repeated name gets a
    ``_2``, ``_3`` ... suffix so that the metrics stay apart).
    """

    def __init__(self, funcs, weights: Sequence[float] | None = None):
        funcs = [funcs] if callable(funcs) or isinstance(funcs, str) else list(funcs)
        if not funcs:
            raise RewardError("a RewardSet needs at least one reward function")
        self.funcs = [load_reward_function(f) for f in funcs]
        if weights is None:
            weights = [1.0] * len(self.funcs)
        weights = list(weights)
        if len(weights) != len(self.funcs):
            raise RewardError(f"{len(weights)} reward weights for {len(self.funcs)} reward functions "
                              f"{[reward_name(f) for f in self.funcs]}; expected one weight per function")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not math.isfinite(w):
                raise RewardError(f"reward weights must be finite numbers; got {weights}")
        self.weights = np.asarray(weights, np.float64)
        self.names = _unique([reward_name(f) for f in self.funcs])
        self._params = [_accepted(f) for f in self.funcs]

    def __repr__(self) -> str:
        return f"RewardSet({dict(zip(self.names, self.weights.tolist()))})"

    def __call__(self, prompts: Sequence, completions: Sequence, completion_ids: Sequence | None = None, *,
                 finished: Sequence[bool] | None = None, **columns) -> RewardOutput:
        """Score N completions. ``completions``: decoded texts (wrapped as TRL does for conversational prompts) or
        completions already in TRL's form; ``completion_ids``: N token-id lists (default: empty lists);
        ``columns``: extra columns by name, N values each (plus anything else to pass, e.g. ``trainer_state``,
        given as a non-list). ``finished``: optional (N,) bools; a completion that did not finish (no EOS) gets 0
        from every function (the rule of ntkdyn's evaluation)."""
        prompts = list(prompts)
        n = len(prompts)
        completions = as_completions(prompts, list(completions))
        completion_ids = [[] for _ in range(n)] if completion_ids is None else [list(c) for c in completion_ids]
        if len(completions) != n or len(completion_ids) != n:
            raise ValueError(f"{n} prompts, {len(completions)} completions and {len(completion_ids)} "
                             "completion_ids: expected one of each per sample")
        for k, v in columns.items():
            if k in _RESERVED or k == "prompt":
                raise ValueError(f"column {k!r} clashes with a reward function argument; rename it")
            if isinstance(v, (list, tuple, np.ndarray)) and len(v) != n:
                raise ValueError(f"column {k!r} has {len(v)} values for {n} completions")
        kwargs = dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                      **{k: list(v) if isinstance(v, (tuple, np.ndarray)) else v for k, v in columns.items()})
        per_func = np.stack([self._call(i, kwargs, n) for i in range(len(self.funcs))], 1) if n else \
            np.zeros((0, len(self.funcs)))
        unscored = np.isnan(per_func)
        if finished is not None:
            per_func = np.where(np.asarray(finished, bool)[:, None], per_func, 0.0)
        return RewardOutput(combine(per_func, self.weights), per_func, self.metrics(per_func, unscored), unscored)

    def score_rows(self, rows: Sequence[dict], completions: Sequence, completion_ids: Sequence | None = None, *,
                   group_size: int = 1, finished: Sequence[bool] | None = None, **extra) -> RewardOutput:
        """Score ``len(rows) * group_size`` completions laid out prompt-major (completion ``p * group_size + g`` is
        sample g of row p, TRL's order): each row ``{"prompt": ..., **columns}`` (``task.rows(...)``) is repeated
        ``group_size`` times and its columns are passed by name. ``extra``: further keyword arguments passed as
        they are (e.g. ``trainer_state``)."""
        rep = [r for r in rows for _ in range(int(group_size))]
        names = [k for k in (rows[0] if rows else {}) if k != "prompt"]
        for i, r in enumerate(rows):
            if set(r) != set(names) | {"prompt"}:
                raise ValueError(f"row {i} has columns {sorted(r)}; row 0 has {sorted(names + ['prompt'])}")
        columns = {k: [r[k] for r in rep] for k in names}
        return self([r["prompt"] for r in rep], completions, completion_ids, finished=finished, **columns, **extra)

    def _call(self, i: int, kwargs: dict, n: int) -> np.ndarray:
        fn, name, accepted = self.funcs[i], self.names[i], self._params[i]
        args = kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}
        try:
            out = fn(**args)
        except Exception as e:
            raise RewardError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
        return _check_values(name, out, n)

    def metrics(self, per_func: np.ndarray, unscored: np.ndarray | None = None) -> dict:
        """TRL's per-function metrics of (N, K) values: ``rewards/<name>/mean`` (nanmean) and ``/std`` (nanstd
        with Bessel's correction, 0 for fewer than two values); with ``unscored`` ((N, K) bool: no value from the
        function), ``rewards/<name>/unusable``, its count per function."""
        out = {}
        for k, name in enumerate(self.names):
            v = per_func[:, k]
            v = v[~np.isnan(v)]
            out[f"rewards/{name}/mean"] = float(v.mean()) if v.size else float("nan")
            out[f"rewards/{name}/std"] = float(v.std(ddof=1)) if v.size > 1 else 0.0
            if unscored is not None:
                out[f"rewards/{name}/unusable"] = int(np.sum(unscored[:, k]))
        return out


def combine(per_func: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted total of (N, K) per-function values: sum_k w_k r_k over the functions that gave a value
    (TRL's nansum); NaN for a row where none did."""
    per_func = np.asarray(per_func, np.float64)
    total = np.nansum(per_func * weights[None, :], axis=1)
    return np.where(np.isnan(per_func).all(1), np.nan, total) if per_func.shape[1] else total


def _check_values(name: str, out, n: int) -> np.ndarray:
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__"):
        raise RewardError(f"reward function {name!r} returned {type(out).__name__}; expected a list of {n} floats "
                          "(or None) for the batch of completions")
    values = list(out)
    if len(values) != n:
        raise RewardError(f"reward function {name!r} returned {len(values)} values for {n} completions")
    res = np.empty(n, np.float64)
    for j, v in enumerate(values):
        if v is None:
            res[j] = np.nan
            continue
        if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
            raise RewardError(f"reward function {name!r} returned {v!r} ({type(v).__name__}) for completion {j}; "
                              "expected a float or None")
        try:
            f = float(v)
        except (TypeError, ValueError) as e:
            raise RewardError(f"reward function {name!r} returned {v!r} for completion {j}; expected a float or "
                              f"None ({e})") from None
        if math.isinf(f):
            raise RewardError(f"reward function {name!r} returned {f} for completion {j}; expected a finite "
                              "float or None")
        res[j] = f  # NaN counts as None
    return res


def _accepted(fn) -> set | None:
    """The keyword names ``fn`` accepts, or None when it takes ``**kwargs`` (or its signature is unknown)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                 inspect.Parameter.KEYWORD_ONLY)}


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out
