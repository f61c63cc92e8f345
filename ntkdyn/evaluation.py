"""Scoring sampled completions: the one evaluation used by SFT (`sft.evaluate`) and by the RL trainer.

A completion is the generated tokens up to and including its first EOS id (:func:`decode_completions`; every id
of ``tokenizer.eos_ids_of``: a chat model's end-of-turn and end-of-text); one without EOS inside
``max_new_tokens`` is truncated and scores 0 (:func:`completion_rewards`, unless ``score_truncated``). A
completion is correct when its reward is at least :data:`CORRECT` (reward 1 for a binary task, the near-optimal answers of a graded one: the task's
correct set, ``tasks.Task.correct_answers``). :func:`sample_stats` turns the rewards and texts of ``samples``
completions per prompt into the reported numbers (reward, pass@k curve, distinct answers, ...); :func:`evaluate`
samples a model (``lm.generate``) on held-out prompts and scores it. The RL trainer samples with its own sharded,
keyed sampler (ntkdyn.rl.evaluate) and scores with the same functions.
"""
from __future__ import annotations

import math

import numpy as np

from . import metrics as M
from . import tasks as _tasks
from .models.tokenizer import encode_prompt, eos_ids_of

__all__ = ["CORRECT", "MAX_NEW_TOKENS", "decode_completions", "completion_rewards",
           "canonical_answers", "held_out_prompts", "pass_ks", "sample_stats", "task_of", "evaluate"]

CORRECT = 0.9  # reward at or above which a completion is in the task's correct set (tasks.Task.correct_answers)


def decode_completions(tokenizer, tokens, mask, eos_id=None):
    """Texts of sampled completions (``Generation.tokens`` / ``.mask``, (B, N)): the tokens before the first EOS,
    decoded. ``eos_id``: an id or a sequence of ids (default: every EOS id of the tokenizer, ``eos_ids_of``).
    Returns ``(texts, finished)``; ``finished[i]`` is False when row i hit ``max_new_tokens`` without EOS."""
    eos = eos_ids_of(tokenizer) if eos_id is None else np.asarray(eos_id).reshape(-1).tolist()
    eos = set(int(i) for i in eos)
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    texts, finished = [], []
    for row, m in zip(tokens, mask):
        row = row[m.astype(bool)].tolist()
        end = next((i for i, t in enumerate(row) if t in eos), None)
        texts.append(tokenizer.decode(row if end is None else row[:end]))
        finished.append(end is not None)
    return texts, np.asarray(finished, bool)


def completion_rewards(task, prompts, texts, finished, reward_fn=None, score_truncated: bool = False) -> np.ndarray:
    """float64 rewards: ``reward_fn(prompt, text)`` (default ``task.reward``) of each completion; a truncated
    completion (no EOS) scores 0, unless ``score_truncated`` (then it is scored like the others, as TRL does)."""
    fn = reward_fn or task.reward
    return np.asarray([float(fn(p, t)) if f or score_truncated else 0.0 for p, t, f in zip(prompts, texts, finished)],
                      np.float64)


def held_out_prompts(task, n: int, seed: int = 0, split: str = "test") -> list[str]:
    """``n`` prompts of ``split``: the whole split when it holds at most ``n`` (e.g. the 16 test prompts of
    "sum"), else ``task.prompts(split, n, seed)``."""
    pool = task.split_prompts(split)
    return list(pool) if pool is not None and len(pool) <= n else task.prompts(split, n, seed)


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
    """Statistics of ``samples`` completions per prompt (prompt-major: row j·samples + s), rewards float64.

    reward, reward_std (population std), frac_correct (share in the correct set, reward >= CORRECT),
    pass_at_k_curve (at k = pass_ks(samples)), and the per-prompt means of unique_answers (distinct answers),
    unique_correct (distinct answers in the correct set) and distinct_2 (distinct bigrams of the texts).
    ``answers``: the completions' answers (:func:`canonical_answers`) to count instead of the texts."""
    rewards = np.asarray(rewards, np.float64)
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


MAX_NEW_TOKENS = 12  # longest answer (8 characters) + EOS, with room to spare


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
    """Sample ``samples`` completions per held-out prompt at ``temperature`` (stopping at EOS) and score them.

    Prompts: ``n_prompts`` of ``split`` (the whole split when it holds fewer, e.g. the 16 test prompts of "sum").
    Returns ``reward`` (mean over all samples), ``reward_std``, ``frac_correct`` (share of samples in the task's
    correct set: reward 1, or >= 0.9 for a graded task; equals ``reward`` for binary tasks), ``distinct`` (distinct
    answers per prompt as ``task.canonical`` reads them, mean over prompts), ``distinct_correct`` (distinct answers
    in the correct set), ``answer_space`` (mean size of the correct set per prompt, ``task.answer_space_size``;
    None when it cannot be enumerated, e.g. a dataset), ``frac_malformed`` (no EOS or not in the task's answer
    format: ``task.well_formed``), ``frac_truncated`` (no EOS), ``mean_length`` (completion tokens incl.
    EOS), ``n_prompts`` and ``samples``. Prompts are encoded by ``encode_prompt(tok, p, chat=chat)`` (the chat
    template when the tokenizer has one, for ``chat=None``); sampling stops at every EOS id of the model."""
    task = task_of(task)
    if lm.tokenizer is None:
        raise ValueError("evaluate needs a model with a tokenizer (lm.tokenizer is None)")
    if n_prompts < 1 or samples < 1:
        raise ValueError(f"n_prompts and samples must be >= 1; got {n_prompts}, {samples}")
    prompts = held_out_prompts(task, n_prompts, seed, split)
    tok = lm.tokenizer
    flat = [p for p in prompts for _ in range(samples)]
    ids = [encode_prompt(tok, p, chat=chat) for p in flat]
    eos = eos_ids_of(tok, lm.config)
    texts, finished, lengths = [], [], []
    for i in range(0, len(ids), chunk):
        rows = ids[i: i + chunk]  # prompt-major: each prompt's samples consecutive, so groups of gcd(samples,
        # chunk) rows from a multiple of chunk are one prompt each; ragged ids are padded alike within a group
        g = lm.generate(rows, max_new_tokens, temperature=temperature, seed=seed + i, stop_token=eos,
                        shared_prompts=math.gcd(samples, len(rows)))
        t, f = decode_completions(tok, g.tokens, g.mask, eos)
        texts += t
        finished.append(f)
        lengths.append(np.asarray(g.mask).sum(1))
    finished = np.concatenate(finished)
    rewards = completion_rewards(task, flat, texts, finished)
    malformed = np.asarray([not (f and task.well_formed(t, p)) for p, t, f in zip(flat, texts, finished)])
    spaces = [task.answer_space_size(p) for p in prompts]
    st = sample_stats(texts, rewards, samples, canonical_answers(task, flat, texts))
    return dict(reward=st["reward"], reward_std=st["reward_std"], frac_correct=st["frac_correct"],
                distinct=st["unique_answers"], distinct_correct=st["unique_correct"],
                answer_space=None if None in spaces else float(np.mean(spaces)),
                frac_malformed=float(malformed.mean()), frac_truncated=float(1.0 - finished.mean()),
                mean_length=float(np.concatenate(lengths).mean()), n_prompts=len(prompts), samples=int(samples))
