"""pass@k curves (k = 1..n) of several policies on held-out prompts: does RL's pass@1 gain come with a pass@k loss
at large k (the crossover reported for RLVR on large models)?

Each policy (a label with one model directory per seed: a base model, the ``final/`` model of RL or CF-RL runs)
samples ``n`` completions per held-out prompt (``evaluation.held_out_prompts(task, prompts, EVAL_PROMPT_SEED)``:
the trainer's evaluation prompts when ``prompts`` equals its ``eval_prompts``) at temperature 1, prompts encoded by
``encode_prompt`` (the chat template when the model has one), with ``LM.generate`` in fixed-shape chunks. The
completions are scored by the task's reward functions (``evaluation.sample_and_score``: the one sample-and-score
path, as the trainer scores them; a truncated completion scores 0) and are correct at reward >=
``evaluation.CORRECT``. The unbiased pass@k curve
(``metrics.pass_at_k_curve``: per prompt, then averaged) of each model gives, per label, the mean ± std over seeds;
``crossings`` lists the k where a label's mean curve crosses the reference label's (``base`` when present).

    res = run({"base": [base_dir], "rl": [rl0, rl1]}, "plus", "runs/pass_at_k", samples=256, prompts=16)

writes ``pass_at_k.json`` (atomically) and ``fig_pass_at_k.png`` / ``.pdf`` into ``out``; CLI ``ntkdyn pass-at-k``.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from .. import tasks as _tasks
from ..evaluation import CORRECT, MAX_NEW_TOKENS, held_out_prompts, sample_and_score, task_of
from ..io import check_writable_dir, write_json
from ..metrics import pass_at_k_curve
from ..models.tokenizer import CHAT_CHOICES
from ..options import add_options, build, given, option
from ..rl.context import EVAL_PROMPT_SEED  # the trainer's held-out evaluation prompts

__all__ = ["SMALL_MODEL", "PassAtKConfig", "sample_correct", "policy_curves", "crossings", "run", "parse_policies",
           "add_arguments", "run_cli"]

SMALL_MODEL = 10_000_000  # parameters; larger models sample in chunks of 256 (SmolLM2-135M: about 2.5 GB)


@dataclasses.dataclass(frozen=True)
class PassAtKConfig:
    """The experiment's settings (`run`'s keywords; `ntkdyn pass-at-k` is generated from the fields)."""

    task: str = option(_tasks.DEFAULT_TASK, "a built-in task or a dataset path")
    policy: list | None = option(None, "a policy: its label and one model directory (or RL run directory) per seed; "
                                 "repeatable. Default: base=the embedded default base model of the task", type=str,
                                 append=True, metavar="LABEL=DIR[,DIR...]")
    samples: int = option(256, "samples per prompt n (the curve runs k = 1..n)")
    prompts: int = option(16, "held-out prompts (the trainer's evaluation prompts when equal to its --eval-prompts)")
    max_new_tokens: int = option(MAX_NEW_TOKENS, "tokens per sample at most")
    temperature: float = option(1.0, "sampling temperature")
    seed: int = option(0, "sampling seed")
    chunk: int | None = option(None, "samples per generate call (bounds the memory; default 1024 for the character "
                               "models, 256 for larger ones)")
    chat: bool | None = option(None, "prompts through the tokenizer's chat template (auto: when it has one)",
                               flag="--chat-template", choices=CHAT_CHOICES)
    out: str = option("runs/pass_at_k", "output directory")
    plots: bool = option(True, "no figure (only pass_at_k.json)", flag="--no-plots")


def _model_dir(path: str) -> str:
    """A model directory: `path`/final for an RL run directory (its config.json is the run's), else `path`."""
    path = os.fspath(path)
    final = os.path.join(path, "final")
    return final if os.path.isfile(os.path.join(final, "config.json")) else path


def _load(path: str):
    from ..models.lm import load, with_char_tokenizer

    return with_char_tokenizer(load(_model_dir(path)), f"policy model {path}")


def sample_correct(lm, task, prompts, samples: int, *, max_new_tokens: int = MAX_NEW_TOKENS,
                   temperature: float = 1.0, seed: int = 0, chunk: int | None = None, chat: bool | None = None):
    """Sample ``samples`` completions per prompt and score them (evaluation.sample_and_score with the task's reward
    functions): ``(correct (P, samples) bool, info)`` with info = reward (mean), frac_truncated, tokens (generated,
    EOS included), seconds. Chunks of ``chunk`` samples (default 1024 for models up to SMALL_MODEL parameters, 256
    above: the KV cache stays bounded); chunk i uses ``seed + i``."""
    task = task_of(task)
    chunk = (1024 if lm.num_params <= SMALL_MODEL else 256) if chunk is None else int(chunk)
    t0 = time.perf_counter()
    rows = [{"prompt": p, **task.columns(p)} for p in prompts]
    sc = sample_and_score(lm, rows, samples, _tasks.reward_set(task), max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, chunk=chunk, chat=chat)
    r = np.nan_to_num(np.asarray(sc.rewards, np.float64), nan=0.0)  # unscored (every function gave None): wrong
    c = sc.completions
    info = dict(reward=float(r.mean()), frac_truncated=float(1.0 - c.finished.mean()), tokens=int(c.lengths.sum()),
                seconds=round(time.perf_counter() - t0, 2))
    return (r >= CORRECT).reshape(len(prompts), samples), info


def policy_curves(dirs, task, prompts, samples: int, **kw) -> dict:
    """pass@k for k = 1..samples of each model in ``dirs`` (the seeds of one label), and their mean ± std."""
    curves, runs = [], []
    ks = list(range(1, samples + 1))
    for d in dirs:
        correct, info = sample_correct(_load(d), task, prompts, samples, **kw)
        curves.append(pass_at_k_curve(correct, ks))
        runs.append(dict(dir=os.path.abspath(_model_dir(d)), n_correct=correct.sum(1).tolist(), **info))
    c = np.stack(curves)
    return dict(runs=runs, curves=c.tolist(), mean=c.mean(0).tolist(), std=c.std(0).tolist(), n_seeds=len(dirs))


def crossings(curve, reference, tol: float = 1e-9) -> list[dict]:
    """The k (1-based) where ``curve`` crosses ``reference``: the first k whose difference has the sign opposite
    to the last non-zero one (|difference| <= tol counts as zero), with the direction ("falls below" /
    "rises above" the reference)."""
    diff = np.asarray(curve, np.float64) - np.asarray(reference, np.float64)
    out, last = [], 0
    for i, d in enumerate(diff):
        s = 0 if abs(d) <= tol else int(np.sign(d))
        if s and last and s != last:
            out.append(dict(k=i + 1, direction="falls below" if s < 0 else "rises above"))
        last = s or last
    return out


def _reference(labels) -> str:
    return "base" if "base" in labels else labels[0]


def run(policies: dict, task, out: str, *, progress: bool = True, **options) -> dict:
    """The pass@k experiment (module docstring): ``policies`` {label: [model dir, ...]}; options: the fields of
    PassAtKConfig but task, policy and out (samples, prompts, max_new_tokens, seed, temperature, chunk, chat,
    plots). Returns the result written to OUT/pass_at_k.json."""
    o = build(PassAtKConfig, options, exclude=("task", "policy", "out"), what="pass@k option")
    samples, prompts, max_new_tokens, seed, temperature = o.samples, o.prompts, o.max_new_tokens, o.seed, o.temperature
    task = task_of(task)
    out = check_writable_dir(out, "pass@k output directory")
    if not policies or any(not dirs for dirs in policies.values()):
        raise ValueError(f"policies must map each label to at least one model directory; got {policies!r}")
    if samples < 1 or prompts < 1:
        raise ValueError(f"samples and prompts must be >= 1; got {samples}, {prompts}")
    held = held_out_prompts(task, prompts, EVAL_PROMPT_SEED, "test")
    t0 = time.perf_counter()
    res = dict(task=task.name, prompts=held, samples=samples, temperature=temperature,
               max_new_tokens=max_new_tokens, seed=seed, correct_threshold=CORRECT, policies={})
    for label, dirs in policies.items():
        res["policies"][label] = policy_curves(dirs, task, held, samples, max_new_tokens=max_new_tokens,
                                               temperature=temperature, seed=seed, chunk=o.chunk, chat=o.chat)
        if progress:
            p = res["policies"][label]
            print(f"[pass@k] {label}: pass@1 {p['mean'][0]:.3f}, pass@{samples} {p['mean'][-1]:.3f} "
                  f"({len(dirs)} model(s), {sum(r['seconds'] for r in p['runs']):.1f}s)", flush=True)
    ref = _reference(list(policies))
    res["reference"] = ref
    res["crossings"] = {lab: crossings(p["mean"], res["policies"][ref]["mean"])
                        for lab, p in res["policies"].items() if lab != ref}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(out, exist_ok=True)
    if o.plots:
        from ..plots.analysis import plot_pass_at_k

        plot_pass_at_k({lab: (p["mean"], p["std"], p["n_seeds"]) for lab, p in res["policies"].items()},
                       os.path.join(out, "fig_pass_at_k"), reference=ref,
                       crossings={lab: [c["k"] for c in cr] for lab, cr in res["crossings"].items()},
                       title=f"pass@k on {task.name} ({len(held)} held-out prompts, n = {samples}, "
                             f"T = {temperature:g})")
    write_json(os.path.join(out, "pass_at_k.json"), res)
    return res


# ----------------------------------------------------------------------------- CLI


def parse_policies(specs) -> dict:
    """``["base=DIR", "rl=DIR1,DIR2"]`` -> {"base": ["DIR"], "rl": ["DIR1", "DIR2"]} (a repeated label adds seeds)."""
    out: dict = {}
    for s in specs or []:
        label, sep, dirs = s.partition("=")
        paths = [d for d in dirs.split(",") if d]
        if not sep or not label or not paths:
            raise ValueError(f"--policy {s!r}: expected LABEL=DIR[,DIR...] (e.g. base=runs/base, "
                             "rl=runs/rl0,runs/rl1)")
        for p in paths:
            if not os.path.isfile(os.path.join(_model_dir(p), "config.json")):
                raise FileNotFoundError(f"--policy {s!r}: {p} is not a model directory (no config.json, nor "
                                        "final/config.json of an RL run)")
        out.setdefault(label, []).extend(paths)
    return out


def add_arguments(p):
    add_options(p, PassAtKConfig)


def run_cli(args) -> int:
    o = given(args, PassAtKConfig)
    task, out = o.pop("task", PassAtKConfig.task), o.pop("out", PassAtKConfig.out)
    policies = parse_policies(o.pop("policy", None))
    if not policies:
        from ..default import default_model_dir

        policies = {"base": [default_model_dir(task=task)]}
    res = run(policies, task, out, **o)
    for lab, cr in res["crossings"].items():
        where = ", ".join(f"{c['direction']} at k={c['k']}" for c in cr) or "no crossing"
        print(f"{lab} vs {res['reference']}: {where}")
    print(f"wrote {os.path.join(out, 'pass_at_k.json')} in {res['seconds']:.1f}s")
    return 0
