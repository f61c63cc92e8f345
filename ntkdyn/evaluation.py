"""Sample and score: the one path from prompts to completions, rewards and the reported statistics, used by held-out
evaluation (SFT, `evaluate`), the RL trainer (rollouts and its evaluation), pass@k and the one-step experiment.

    comps = split_completions(tokenizer, tokens, mask, eos)     # where a completion ends: its first EOS id
    out = score(reward_set, rows, comps, group_size)            # rewards (NaN: no function scored a completion)
    st = sample_stats(comps.texts, rewards, samples, answers)   # reward, pass@k curve, unique answers, ...
    sc = sample_and_score(lm, rows, samples, reward_set, ...)   # all of it for a model (lm.generate in chunks)

A completion is the generated tokens up to and including its first EOS id (every id of `tokenizer.eos_ids_of`: a
chat model's end-of-turn and end-of-text); its text is what comes before that id, and its `completion_ids` (TRL's)
include it. One without EOS inside `max_new_tokens` is truncated and scores 0 unless `score_truncated` (TRL scores
it). Rewards come from a `tasks.RewardSet` (the task's own reward functions, or the run's) in TRL's signature. A
completion is correct when its reward is at least CORRECT (reward 1 for a binary task, the near-optimal answers of
a graded one). Metric names follow TRL where it has one (reward, reward_std) and are the same everywhere else
(unique_answers, unique_correct, distinct_2, pass_at_k_curve, frac_correct, frac_truncated, mean_length).
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from . import metrics as M
from . import tasks as _tasks
from .io import read_jsonl
from .models.padding import pad_left
from .models.tokenizer import encode_prompt, eos_ids_of

__all__ = ["CORRECT", "MAX_NEW_TOKENS", "Completions", "Scored", "split_completions", "score", "generate_samples",
           "sample_and_score", "canonical_answers", "held_out_prompts", "pass_ks", "sample_stats", "task_of",
           "evaluate", "last_eval", "with_current_names"]

CORRECT = 0.9  # reward at or above which a completion is in the task's correct set (tasks.Task.correct_answers)
MAX_NEW_TOKENS = 12  # the character tasks' longest answer (8 characters) + EOS, with room to spare


# ----------------------------------------------------------------------------- completions and rewards
class Completions(NamedTuple):
    """Sampled completions, split at their first EOS id (`split_completions`)."""

    texts: list  # the tokens before the first EOS, decoded
    ids: list  # token ids up to and including the first EOS (TRL's completion_ids; all of them when truncated)
    finished: np.ndarray  # (N,) bool: an EOS id ended it (False: truncated at max_new_tokens)
    lengths: np.ndarray  # (N,) generated tokens, EOS included


def split_completions(tokenizer, tokens, mask, eos=None) -> Completions:
    """The one rule for where a completion ends. tokens, mask: (N, L) sampled tokens and their mask (1 on generated
    tokens, `Generation.tokens` / `.mask`); eos: an id or a sequence of ids (default: every EOS id of the
    tokenizer, `eos_ids_of`)."""
    stop = set(int(i) for i in (eos_ids_of(tokenizer) if eos is None else np.asarray(eos).reshape(-1).tolist()))
    texts, ids, finished = [], [], []
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    for row, m in zip(tokens, mask):
        row = row[m.astype(bool)].tolist()
        end = next((i for i, t in enumerate(row) if t in stop), None)
        texts.append(tokenizer.decode(row if end is None else row[:end]))
        ids.append(row if end is None else row[:end + 1])
        finished.append(end is not None)
    return Completions(texts, ids, np.asarray(finished, bool), mask.astype(bool).sum(1))


def score(reward_set, rows, comps: Completions, group_size: int = 1, score_truncated: bool = False):
    """`reward_set` (a tasks.RewardSet) on completions laid out prompt-major (`group_size` per row {"prompt": ...,
    **columns}); a truncated completion scores 0 unless `score_truncated`. Returns the RewardOutput (rewards
    float64, NaN where no function scored a completion; per-function values; TRL's rewards/<name>/mean|std)."""
    return reward_set.score_rows(rows, comps.texts, comps.ids, group_size=group_size,
                                 finished=None if score_truncated else comps.finished)


# ----------------------------------------------------------------------------- sampling a model
def generate_samples(lm, prompts, samples: int, *, max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = 1.0,
                     seed: int = 0, chunk: int = 1024, chat: bool | None = None, eos=None):
    """`samples` completions per prompt from `lm` (lm.generate, stopping at every EOS id): prompts encoded by
    `encode_prompt`, left-padded to the longest, repeated prompt-major (row j·samples + s), sampled in chunks of
    `chunk` rows (chunk i with seed + i; each group of gcd(samples, rows) rows shares its prompt, prefilled once).
    Returns the host arrays (tokens, mask, logp_model), (P·samples, max_new_tokens) each."""
    tok = lm.tokenizer
    if tok is None:
        raise ValueError("sampling needs a model with a tokenizer (lm.tokenizer is None)")
    if samples < 1 or chunk < 1 or not len(prompts):
        raise ValueError(f"samples and chunk must be >= 1 and prompts non-empty; got {samples}, {chunk}, "
                         f"{len(prompts)} prompts")
    ids, pmask = pad_left([encode_prompt(tok, p, chat=chat) for p in prompts], int(lm.config.pad_token_id or 0))
    ids, pmask = np.repeat(ids, samples, 0), np.repeat(pmask, samples, 0)
    eos = eos_ids_of(tok, lm.config) if eos is None else eos
    out = []
    for i in range(0, len(ids), chunk):
        n = len(ids[i: i + chunk])
        g = lm.generate(ids[i: i + chunk], max_new_tokens, prompt_mask=pmask[i: i + chunk], temperature=temperature,
                        seed=seed + i, stop_token=eos, shared_prompts=math.gcd(samples, n))
        out.append(tuple(np.asarray(x) for x in (g.tokens, g.mask, g.logp_model)))
    return tuple(np.concatenate([o[k] for o in out]) for k in range(3))


class Scored(NamedTuple):
    """Completions of a model on prompts and their rewards (`sample_and_score`)."""

    rows: list  # {"prompt": ..., **columns} per prompt
    samples: int  # completions per prompt (prompt-major)
    tokens: np.ndarray  # (N, L)
    mask: np.ndarray  # (N, L)
    logp_model: np.ndarray  # (N, L) the model's log-prob of each sampled token (temperature 1)
    completions: Completions
    rewards: np.ndarray  # (N,) float64, NaN where no function scored it
    reward_metrics: dict  # rewards/<name>/mean|std


def sample_and_score(lm, rows, samples: int, reward_set, *, max_new_tokens: int = MAX_NEW_TOKENS,
                     temperature: float = 1.0, seed: int = 0, chunk: int = 1024, chat: bool | None = None,
                     score_truncated: bool = False) -> Scored:
    """Sample `samples` completions per row {"prompt": ..., **columns} (`generate_samples`), split them
    (`split_completions`) and score them (`score`)."""
    eos = eos_ids_of(lm.tokenizer, lm.config) if lm.tokenizer is not None else None
    tokens, mask, logp = generate_samples(lm, [r["prompt"] for r in rows], samples, max_new_tokens=max_new_tokens,
                                          temperature=temperature, seed=seed, chunk=chunk, chat=chat, eos=eos)
    comps = split_completions(lm.tokenizer, tokens, mask, eos)
    out = score(reward_set, rows, comps, samples, score_truncated)
    return Scored(list(rows), int(samples), tokens, mask, logp, comps, out.rewards, out.metrics)


# ----------------------------------------------------------------------------- statistics
def pass_ks(n: int) -> list[int]:
    """The k of the pass@k curve for n samples per prompt: 1, 2, 4, ... and n."""
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks


def canonical_answers(task, prompts, texts) -> list[str]:
    """The answer each completion gives, ``task.canonical(prompt, text)`` (what distinct-answer statistics count:
    "The answer is 85" and "85" are one answer), or the text itself when no answer can be read from it."""
    out = []
    for p, t in zip(prompts, texts):
        a = task.canonical(p, t)
        out.append(t if a is None else a)
    return out


def sample_stats(texts, rewards, samples: int, answers=None) -> dict:
    """Statistics of ``samples`` completions per prompt (prompt-major: row j·samples + s), rewards float64 (NaN, an
    unscored completion, counts as reward 0 and incorrect).

    reward, reward_std (population std), frac_correct (share in the correct set, reward >= CORRECT),
    pass_at_k_curve (at k = pass_ks(samples)), and the per-prompt means of unique_answers (distinct answers),
    unique_correct (distinct answers in the correct set) and distinct_2 (distinct bigrams of the texts).
    ``answers``: the completions' answers (:func:`canonical_answers`) to count instead of the texts."""
    rewards = np.nan_to_num(np.asarray(rewards, np.float64), nan=0.0)
    answers = list(texts) if answers is None else list(answers)
    E = len(texts) // samples
    correct = rewards >= CORRECT
    per = [slice(j * samples, (j + 1) * samples) for j in range(E)]
    curve = M.pass_at_k_curve(correct.reshape(E, samples), pass_ks(samples))
    return dict(
        reward=float(rewards.mean()), reward_std=float(rewards.std()), frac_correct=float(correct.mean()),
        pass_at_k_curve=[float(x) for x in curve],
        unique_answers=float(np.mean([M.unique_answers(answers[s]) for s in per])),
        unique_correct=float(np.mean([M.unique_correct(answers[s], rewards[s].tolist(), CORRECT) for s in per])),
        distinct_2=float(np.mean([M.distinct_n(texts[s], 2) for s in per])),
    )


# ----------------------------------------------------------------------------- a model on a task
def held_out_prompts(task, n: int, seed: int = 0, split: str = "test") -> list[str]:
    """``n`` prompts of ``split``: the whole split when it holds at most ``n`` (e.g. the 16 test prompts of
    "sum"), else ``task.prompts(split, n, seed)``."""
    pool = task.split_prompts(split)
    return list(pool) if pool is not None and len(pool) <= n else task.prompts(split, n, seed)


def task_of(task):
    """A task object, or the task `task` names: a built-in task (character or natural) or a dataset path
    (tasks.resolve; ValueError naming the known tasks)."""
    if not isinstance(task, str):
        return task
    try:
        return _tasks.resolve(task)
    except (KeyError, ValueError) as e:
        raise ValueError(f"unknown task {task!r}; expected one of {_tasks.all_names()} or a dataset path "
                         f"({e})") from None


def evaluate(lm, task, n_prompts: int = 64, samples: int = 32, seed: int = 0, split: str = "test", *,
             max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = 1.0, chunk: int = 1024,
             chat: bool | None = None) -> dict:
    """Sample ``samples`` completions per held-out prompt at ``temperature`` (`sample_and_score` with the task's
    reward functions) and summarise them.

    Prompts: ``n_prompts`` of ``split`` (the whole split when it holds fewer, e.g. the 16 test prompts of "sum").
    Returns `sample_stats`' numbers (reward, reward_std, frac_correct, pass_at_k_curve, unique_answers and
    unique_correct as ``task.canonical`` reads the answers, distinct_2) and ``answer_space`` (mean size of the
    correct set per prompt, ``task.answer_space_size``; None when it cannot be enumerated, e.g. a dataset),
    ``frac_malformed`` (no EOS or not in the task's answer format: ``task.well_formed``), ``frac_truncated`` (no
    EOS), ``mean_length`` (completion tokens incl. EOS), ``n_prompts`` and ``samples``."""
    task = task_of(task)
    if n_prompts < 1 or samples < 1:
        raise ValueError(f"n_prompts and samples must be >= 1; got {n_prompts}, {samples}")
    prompts = held_out_prompts(task, n_prompts, seed, split)
    rows = [{"prompt": p, **task.columns(p)} for p in prompts]
    sc = sample_and_score(lm, rows, samples, _tasks.reward_set(task), max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, chunk=chunk, chat=chat)
    c = sc.completions
    flat = [p for p in prompts for _ in range(samples)]
    malformed = np.asarray([not (f and task.well_formed(t, p)) for p, t, f in zip(flat, c.texts, c.finished)])
    spaces = [task.answer_space_size(p) for p in prompts]
    st = sample_stats(c.texts, sc.rewards, samples, canonical_answers(task, flat, c.texts))
    return dict(st, answer_space=None if None in spaces else float(np.mean(spaces)),
                frac_malformed=float(malformed.mean()), frac_truncated=float(1.0 - c.finished.mean()),
                mean_length=float(c.lengths.mean()), n_prompts=len(prompts), samples=int(samples))


_OLD_NAMES = {"distinct": "unique_answers", "distinct_correct": "unique_correct"}  # records before 2026-12


def with_current_names(ev: dict | None) -> dict | None:
    """An `evaluate` record written before the metric names were unified, read with today's names."""
    return None if ev is None else {_OLD_NAMES.get(k, k): v for k, v in ev.items()}


def last_eval(model_dir: str) -> dict | None:
    """The last held-out evaluation a model directory's SFT log (sft_log.jsonl) records (`evaluate`'s dict), or
    None; logs written before the metric names were unified are read with today's names."""
    path = os.path.join(model_dir, "sft_log.jsonl")
    if not os.path.isfile(path):
        return None
    ev = None
    for rec in read_jsonl(path):
        ev = rec.get("eval", ev)
    return with_current_names(ev)
