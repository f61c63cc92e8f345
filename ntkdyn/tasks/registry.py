"""Finding a task or a reward by name: built-in character tasks, natural-language tasks, dataset paths, reward
function specs and reward models.

    task = resolve("sum")                                   # a character task (ntkdyn.tasks.get)
    task = resolve("add", a_digits=3)                       # a natural task with difficulty parameters
    task = resolve("data/prompts.jsonl", rewards=["my_rewards.py:correct"], eval_fraction=0.1)
    rs = reward_set(task, ["add", "my_rewards.py:brevity", "runs/rm"], weights=[1.0, 0.1, 0.5])
"""
from __future__ import annotations

import os

from . import natural, synthetic
from .base import Task
from .datasets import DatasetTask
from .rewards import RewardError, RewardSet, load_reward_function, task_reward_function

__all__ = ["resolve", "all_names", "reward_function", "reward_set", "REWARD_MODEL"]

REWARD_MODEL = "reward-model:"  # spec prefix: "reward-model:NAME_OR_DIR" (`ntkdyn rl --reward-model`)


def all_names() -> list[str]:
    """Every built-in task name: the character tasks, then the natural-language ones."""
    return synthetic.names() + natural.names()


def resolve(name_or_path, *, eval_dataset: str | None = None, eval_fraction: float = 0.1, seed: int = 0,
            rewards=None, reward_weights=None, **params) -> Task:
    """The task for a built-in name (a character task; a natural task, built with the difficulty ``params``) or a
    dataset path (JSONL / JSON / CSV / Parquet file or a saved ``datasets`` directory; ``eval_dataset`` or a
    ``seed``-ed ``eval_fraction`` held out; ``rewards`` / ``reward_weights`` its reward functions, each resolved
    by :func:`reward_function`). A task object is returned as it is. Errors name the known tasks."""
    if isinstance(name_or_path, Task):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"task must be a name or a dataset path; got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if name in synthetic.names():
        if params:
            raise ValueError(f"task {name!r} takes no parameters; got {sorted(params)}")
        return synthetic.get(name)
    if name in natural.names():
        return natural.make(name, **params) if params else natural.get(name)
    if os.path.exists(name):
        if params:
            raise ValueError(f"a dataset task takes no difficulty parameters; got {sorted(params)}")
        funcs = None if rewards is None else [reward_function(r) for r in _as_list(rewards)]
        return DatasetTask(name, eval_path=eval_dataset, eval_fraction=eval_fraction, seed=seed,
                           reward_funcs=funcs, reward_weights=reward_weights)
    raise ValueError(f"unknown task {name!r}: not a built-in task ({all_names()}) and no such dataset file or "
                     "directory")


def reward_function(spec):
    """A reward function in TRL's signature from: a callable (as it is); a built-in task name (that task's
    reward, named after it); a reward-model directory (``config.json`` of a sequence classifier:
    ``load_reward_model(dir).as_reward_function()``) or ``"reward-model:NAME_OR_DIR"`` (a directory or a known
    name, :data:`REWARD_MODEL`); ``"package.module:function"`` or ``"file.py:function"``."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise RewardError(f"reward spec must be a string or a callable; got {type(spec).__name__}")
    if spec in all_names():
        return task_reward_function(resolve(spec))
    if spec.startswith(REWARD_MODEL):
        return _reward_model(spec[len(REWARD_MODEL):])
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.json")):
        return _reward_model(spec)
    return load_reward_function(spec)


def _reward_model(name_or_dir: str):
    """The reward function of a sequence classifier; RewardError naming it when it is not one."""
    from ..models.classifier import load_reward_model

    if not name_or_dir:
        raise RewardError(f"reward model spec {REWARD_MODEL!r} names no model; expected {REWARD_MODEL}NAME_OR_DIR")
    try:
        return load_reward_model(name_or_dir).as_reward_function()
    except (ValueError, OSError) as e:
        raise RewardError(f"reward model {name_or_dir!r}: {e} (expected a Hugging Face sequence-classifier "
                          "directory, *ForSequenceClassification, or a known name)") from None


def reward_set(task: Task, specs=None, weights=None) -> RewardSet:
    """The rewards of a run: ``specs`` (each resolved by :func:`reward_function`) with ``weights`` when given,
    else the task's own reward functions and weights."""
    if specs:
        return RewardSet([reward_function(s) for s in _as_list(specs)], weights)
    return RewardSet(task.reward_funcs(), weights if weights is not None else task.reward_weights())


def _as_list(x) -> list:
    return [x] if isinstance(x, str) or callable(x) else list(x)
