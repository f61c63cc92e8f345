"""The RL trainer: rollouts → rewards → advantages → jit-compiled update, over the stages of a recipe, with the
learning dynamics tracked, JSONL metrics, atomic checkpoints and exact resume.

    from ntkdyn.rl import RLConfig, train
    summary = train(RLConfig(recipe="cf-rl", task="sum", steps=60, head_steps=8, seed=0, out="runs/cf"))

A run directory OUT holds config.json, metrics.jsonl (one line per global step; step 0 = the starting model's
evaluation), checkpoint/ (model/, optimizer.npz, state.json, replaced atomically), final/ (the final model, HF
layout) and summary.json (see ntkdyn.rl.rundir); with RLConfig.ntk_every, ntk0.npz (the eNTK drift's starting
kernels: rl/tracking.py). RLConfig.claim6 adds claim 6's measures at the first step of the stage "rl"
(rl/claim6.py).

The run is a RunContext (what is fixed: context.py) and a RunState (what changes: params, optimizer state,
baseline, position, costs); `_run_step` maps one state to the next. PRNG: every random draw is keyed by (seed,
stage id, stage step) (rollouts, stage-1 reference answers, prompt order) or (seed, global step) (evaluation
samples), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import os
import time
from functools import partial
from typing import Any, Callable

import jax
import numpy as np

from . import checkpoint, claim6, rundir, tracking
from .config import ConfigError, RLConfig, TrainingError
from .context import RunContext, on_devices, resolve
from .evaluate import dz_share_metrics, evaluate, probe_metrics
from .recipes import Stage
from .rollout import dry_run, lp_step, rl_step
from .rundir import TIMING_KEYS, read_metrics
from .step import lp_update, opt_init, rl_update, stage_optimizer

__all__ = ["RLConfig", "ConfigError", "TrainingError", "train", "TIMING_KEYS", "read_metrics", "enable_compile_cache"]


@dataclasses.dataclass
class RunState:
    """What changes during a run (and what a checkpoint restores)."""

    params: Any
    opt_state: Any  # the stage's optimizer state; on resume, first the checkpoint's leaves
    baseline: np.float32  # REINFORCE running baseline (NaN: not set yet)
    step: int = 0  # global step
    stage_index: int = 0
    stage_step: int = 0
    # cost per stage (rollout + reward + update time, generated tokens); evaluation and dz probes apart
    costs: dict = dataclasses.field(default_factory=dict)
    first_eval: dict | None = None
    last: dict | None = None  # the last metrics record
    ntk0: dict | None = None  # the eNTK drift's starting kernels (tracking.initial_kernels; RLConfig.ntk_every)


def enable_compile_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (compiled programs are reused by later processes: a run's
    first steps no longer wait for XLA) in `path`, default `<ntkdyn cache>/xla` (see ntkdyn.cache.cache_root).
    A cache directory already configured (jax_compilation_cache_dir / JAX_COMPILATION_CACHE_DIR) is kept;
    NTKDYN_NO_COMPILE_CACHE=1 disables. Returns the directory in use, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if os.environ.get("NTKDYN_NO_COMPILE_CACHE"):
        return None
    try:
        from ..cache import cache_root

        path = path or os.path.join(cache_root(), "xla")
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


# ============================================================================= start, resume, finish


def _start(ctx: RunContext) -> RunState:
    """A fresh run (config.json, metrics.jsonl with the step-0 record) or the state of the run's checkpoint."""
    costs = {s.name: dict(steps=0, time_s=0.0, generated_tokens=0) for s in ctx.stages}
    costs["eval"] = dict(time_s=0.0)
    found = checkpoint.find(ctx.out, ctx.sh) if ctx.c.resume else None
    if found is not None:
        params, opt_leaves, st = found
        last = rundir.resume(ctx, st["step"])
        costs.update(st["costs"])
        return RunState(params, opt_leaves, np.float32(np.nan if st["baseline"] is None else st["baseline"]),
                        st["step"], st["stage_index"], st["stage_step"], costs, st.get("first_eval"), last,
                        ntk0=tracking.initial_kernels(ctx, resumed=True) if ctx.c.ntk_every else None)
    rundir.write_config(ctx)
    state = RunState(ctx.base_params, None, np.float32(np.nan), costs=costs)
    rundir.start_metrics(ctx.out)
    rec = {"step": 0, "stage": ctx.stages[0].name, "stage_step": 0}
    rec.update(probe_metrics(ctx, state.params))
    if ctx.c.ntk_every:
        state.ntk0 = tracking.initial_kernels(ctx, resumed=False)
        rec.update(tracking.drift_metrics(state.ntk0, state.ntk0))
    rec.update(evaluate(ctx, state.params, 0))
    state.first_eval = {k: v for k, v in rec.items() if k.startswith("eval/")}
    rundir.log(ctx.out, rec)
    return state


def _save(ctx: RunContext, state: RunState, opt_state, stage: Stage) -> None:
    checkpoint.save(ctx.out, ctx.lm, state.params, opt_state, dict(
        step=state.step, stage_index=state.stage_index, stage_step=state.stage_step, stage=stage.name,
        baseline=state.baseline, costs=state.costs, first_eval=state.first_eval))


def _finish(ctx: RunContext, state: RunState, total: int) -> dict:
    """final/, summary.json; returns the summary."""
    if total == 0 and not os.path.isdir(os.path.join(ctx.out, "checkpoint")):
        _save(ctx, state, None, ctx.stages[0])
    final_dir = rundir.write_final(ctx.out, ctx.lm, state.params)
    evals = [r for r in read_metrics(ctx.out) if "eval/reward" in r]
    c = ctx.c
    summary = dict(
        out=ctx.out, recipe=c.recipe, task=c.task, seed=c.seed, model_dir=ctx.model_dir,
        steps=total, stages=[dataclasses.asdict(s) for s in ctx.stages],
        cost=state.costs,
        stage1_steps=sum(s.steps for s in ctx.stages if s.name == "stage1"),
        first_eval={k: v for k, v in evals[0].items() if k.startswith("eval/")} if evals else None,
        final_eval={k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else None,
        final_metrics={k: v for k, v in (state.last or {}).items() if not k.startswith("eval/")},
        final_model=final_dir,
    )
    return rundir.write_summary(ctx.out, summary)


# ============================================================================= the loop


def _stage_update(ctx: RunContext, state: RunState, si: int, stage: Stage):
    """The stage's optimizer state (restored from the checkpoint's leaves mid-stage, else fresh) and its jitted
    update with every static argument bound. The optimizer is built once per stage."""
    tx = stage_optimizer(ctx.c, stage)
    if si == state.stage_index and state.stage_step > 0 and state.opt_state is not None:
        state.opt_state = checkpoint.restore_optimizer(tx, state.params, state.opt_state, ctx.out, ctx.sh)
    else:
        state.opt_state, state.stage_step = ctx.sh.replicate(opt_init(state.params, tx=tx)), 0
    if stage.kind == "rl":
        return partial(rl_update, tx=tx, ls=ctx.loss_spec, group=stage.group, **ctx.gd)
    return partial(lp_update, tx=tx, **ctx.gd)


def _claim6_hook(ctx: RunContext, state: RunState, stage: Stage, update):
    """At the first step of the stage "rl" with RLConfig.claim6: (the claim6/trG_answer record at the stage's
    starting params, the update wrapped to keep the batch and params of its first call, what it keeps); else
    (None, update, None)."""
    if not (ctx.c.claim6 and stage.name == "rl" and stage.kind == "rl" and state.stage_step == 0):
        return None, update, None
    contexts = tracking.drift_contexts(ctx.probe_pos, ctx.c.ntk_contexts)
    kept: dict = {}

    def first_update(params, opt_state, batch, *args):
        out = update(params, opt_state, batch, *args)
        if not kept:  # iteration 0: the on-policy update of this batch
            kept.update(before=params, after=out[0], batch=batch)
        return out

    return claim6.answer_trace(ctx, state.params, contexts), first_update, kept


def _tracked(ctx: RunContext, state: RunState, stage: Stage, before, c6_start, kept) -> dict:
    """The dz shares, claim-6 measures and eNTK drift due at this step (RLConfig.probe_every / claim6 /
    ntk_every)."""
    c, rec = ctx.c, {}
    if c.probe_every and (state.stage_step == 1 or state.stage_step % c.probe_every == 0):
        rec.update(dz_share_metrics(ctx, before, state.params))
    if c6_start is not None:
        rec.update(c6_start)
        rec.update(claim6.update_measures(ctx, kept["before"], kept["after"], kept["batch"]))
    if c.ntk_every and (state.step % c.ntk_every == 0 or state.step == sum(s.steps for s in ctx.stages)):
        K = tracking.trace_kernels(ctx, state.params, state.ntk0["contexts"])
        rec.update(tracking.drift_metrics(state.ntk0, K))
    return rec


def _run_step(ctx: RunContext, state: RunState, stage: Stage, update) -> dict:
    """One global step of `stage`: the update, the tracked quantities, maybe an evaluation; returns the record."""
    c = ctx.c
    c6_start, update, kept = _claim6_hook(ctx, state, stage, update)
    state.stage_step += 1
    state.step += 1
    rec = {"step": state.step, "stage": stage.name, "stage_step": state.stage_step}
    t0 = time.perf_counter()
    before = state.params
    if stage.kind == "rl":
        state.params, state.opt_state, state.baseline, m = rl_step(
            ctx, stage, state.stage_step, state.step, update, state.params, state.opt_state, state.baseline)
    else:
        state.params, state.opt_state, m = lp_step(ctx, stage, state.stage_step, state.step, update, state.params,
                                                   state.opt_state)
    rec.update(m)
    rec.update(probe_metrics(ctx, state.params))
    dt = time.perf_counter() - t0
    cost = state.costs[stage.name]
    cost["steps"] += 1
    cost["time_s"] += dt
    ntok = int(rec.pop("_generated_tokens", 0))
    cost["generated_tokens"] += ntok
    if stage.kind == "rl":
        rec["generated_tokens"] = sum(v.get("generated_tokens", 0) for v in state.costs.values())
    rec.update(_tracked(ctx, state, stage, before, c6_start, kept))
    if (c.eval_every and state.step % c.eval_every == 0) or state.stage_step == stage.steps:
        t1 = time.perf_counter()
        rec.update(evaluate(ctx, state.params, state.step))
        state.costs["eval"]["time_s"] += time.perf_counter() - t1
    rec["step_time"] = dt
    if stage.kind == "rl":
        rec["tokens_per_s"] = ntok / dt if dt > 0 else 0.0
    return rec


def _progress_postfix(stage: Stage, rec: dict) -> dict:
    post = {"stage": stage.name}
    if "reward" in rec:
        post["reward"] = f"{rec['reward']:.3f}"
    if "eval/reward" in rec:
        post["eval"] = f"{rec['eval/reward']:.3f}"
    return post


def _loop(ctx: RunContext, state: RunState, total: int, bar, callback) -> None:
    """Every remaining step of every stage: log, checkpoint, progress, callback after each."""
    c = ctx.c
    for si, stage in enumerate(ctx.stages):
        if si < state.stage_index or (si == state.stage_index and state.stage_step >= stage.steps):
            continue
        update = _stage_update(ctx, state, si, stage)
        state.stage_index = si
        while state.stage_step < stage.steps:
            rec = _run_step(ctx, state, stage, update)
            rundir.log(ctx.out, rec)
            state.last = rec
            if (c.checkpoint_every and state.step % c.checkpoint_every == 0) or state.step == total:
                _save(ctx, state, state.opt_state, stage)
            bar.update(1)
            bar.set_postfix(_progress_postfix(stage, rec))
            if callback is not None:
                callback(rec)
        state.opt_state = None


def train(config: RLConfig | dict, *, mesh=None, progress: bool = True,
          reward_fn: Callable[[str, str], float] | None = None, reward_funcs: list | None = None,
          callback: Callable[[dict], Any] | None = None, compile_cache: bool = True) -> dict:
    """Run `config.recipe` and return the summary (also written to OUT/summary.json).

    config: an RLConfig (or a dict of its keys; unknown keys are rejected). mesh: an optional
    jax.sharding.Mesh; the rollout and update batch axis is sharded over its "data" axis, params replicated.
    progress: a tqdm bar on the terminal. reward_funcs: reward functions in TRL's signature
    f(prompts, completions, completion_ids, **columns) -> list[float | None] (callables, or the specs of
    RLConfig.rewards), weighted by RLConfig.reward_weights; they replace RLConfig.rewards and the task's own
    rewards. The logged `reward` is their weighted sum, `rewards/<name>/mean|std` each one's (TRL's metrics).
    reward_fn(prompt, completion_text) -> float (older, one completion at a time) replaces the task's reward.
    callback(record) is called after each step's metrics line (and checkpoint) is written; an exception in it
    stops the run there (as a kill would). compile_cache: turn on JAX's persistent compilation cache
    (`enable_compile_cache`) so that later runs skip XLA compilation. Raises ConfigError before any work on bad
    input, TrainingError on a non-finite reward / loss / gradient (the last good checkpoint is kept). The process
    holds OUT's lock for the whole run (rundir.lock: RunLocked, a ConfigError, while another process writes it);
    a new run (fresh or overwrite) first scores one sample batch of the starting model through its reward
    functions (rollout.dry_run), and only then removes anything of a previous run."""
    from tqdm.auto import tqdm

    if isinstance(config, dict):
        config = RLConfig.from_dict(config)
    if not isinstance(config, RLConfig):
        raise ConfigError(f"train: expected an RLConfig or a dict; got {type(config).__name__}")
    with rundir.lock(config.out):  # one writer per run directory, for the whole run
        ctx = resolve(config, mesh, reward_fn, reward_funcs)  # validates everything before any work
        if compile_cache:
            enable_compile_cache()
        ctx = on_devices(ctx)
        if not config.resume:
            dry_run(ctx)  # the reward functions on a real batch, before anything of an old run is removed
        rundir.prepare(ctx.out, config.overwrite)
        state = _start(ctx)
        total = sum(s.steps for s in ctx.stages)
        with tqdm(total=total, initial=state.step, disable=not progress, dynamic_ncols=True,
                  desc=f"{config.recipe} {config.task} seed {config.seed}") as bar:
            _loop(ctx, state, total, bar, callback)
        return _finish(ctx, state, total)
