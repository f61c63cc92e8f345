"""The RL trainer: rollouts → rewards → advantages → jit-compiled update, over the stages of a recipe, with the
learning dynamics tracked, JSONL metrics, atomic checkpoints and exact resume.

    from ntkdyn.rl import RLConfig, train, train_batch
    summary = train(RLConfig(recipe="cf-rl", task="sum", steps=60, head_steps=8, seed=0, out="runs/cf"))
    summaries = train_batch([cfg.replace(seed=s, out=f"runs/cf-seed{s}") for s in range(10)])   # one program

`train_batch` trains several runs that differ only in their seed (and run directory) as lanes of one program
(rl/lanes.py): every step's sampling, update, evaluation and probes run once for all of them, and each run still
writes its own run directory, equal (to float rounding) to what a lone run of its seed writes.

A run directory OUT holds config.json, metrics.jsonl (one line per global step; step 0 = the starting model's
evaluation), checkpoint/ (model/, optimizer.npz, state.json, replaced atomically), final/ (the final model, HF
layout) and summary.json (see ntkdyn.rl.rundir); with RLConfig.ntk_every, ntk0.npz (the eNTK drift's starting
kernels); with RLConfig.save_every, snapshots/step-N (the model after every k-th step and the last, HF layout:
what `ntkdyn analyze` reads).

A run is a RunContext per lane (what is fixed: context.py) and one RunState (what changes: params and optimizer
state with a lane axis, per lane baseline, costs, records; the position, shared); `_run_step` maps one state to the
next: rollout -> reward -> update -> trackers
(rl/trackers: the dz share, claim 6's measures, the eNTK drift, each with its own cadence) -> evaluate ->
checkpoint. PRNG: every random draw is keyed by (seed, stage id, stage step) (rollouts, stage-1 reference answers,
prompt order) or (seed, global step) (evaluation samples), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from . import checkpoint, rundir, trackers
from .config import ConfigError, RLConfig, TrainingError
from .context import RunContext, on_devices, resolve
from .evaluate import evaluate, probe_metrics
from .lanes import Lanes
from .recipes import Stage
from .rollout import dry_run, lp_step, rl_step
from .rundir import TIMING_KEYS, read_metrics
from .sharding import device_bytes, make_mesh, sync
from .step import lp_update, opt_init, rl_update, stage_optimizer

__all__ = ["RLConfig", "ConfigError", "TrainingError", "train", "train_batch", "TIMING_KEYS", "read_metrics",
           "enable_compile_cache"]


@dataclasses.dataclass
class RunState:
    """What changes during a run of one or several lanes (and what their checkpoints restore)."""

    lanes: Lanes
    params: Any  # with a lane axis when there are several lanes
    opt_state: Any  # the stage's optimizer state (lane axis too); on resume, first the checkpoints' leaves per lane
    baselines: list  # per lane: the REINFORCE running baseline (NaN: not set yet)
    step: int = 0  # global step
    stage_index: int = 0
    stage_step: int = 0
    # per lane, cost per stage (rollout + reward + update time, generated tokens); evaluation and dz probes apart.
    # The time is the batched step's: a step of several lanes costs them together
    costs: list = dataclasses.field(default_factory=list)
    first_eval: list = dataclasses.field(default_factory=list)
    last: list = dataclasses.field(default_factory=list)  # per lane: the last metrics record
    trackers: list = dataclasses.field(default_factory=list)  # per lane: rl/trackers, in record order
    # nothing reads params' buffers after the next update but the trainer (they were made by an update, or they are
    # the starting model's and no KL term reads π_ref), so that update may take them over (`_run_step`)
    owned: bool = False


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


def _trackers(ctx: RunContext) -> list:
    return trackers.from_config(ctx.c, ctx.lm, trackers.Probes(ctx.probe_ids, ctx.probe_mask, ctx.probe_pos), ctx.out,
                                mesh=ctx.sh.mesh)


def _start(ctxs: list[RunContext], found: list) -> RunState:
    """Fresh runs (config.json, metrics.jsonl with the step-0 record) or the state of the runs' checkpoints
    (`found`: checkpoint.find of every lane, all at the same step, or all None)."""
    lanes, ctx = Lanes(len(ctxs)), ctxs[0]
    costs = [{**{s.name: dict(steps=0, time_s=0.0, generated_tokens=0) for s in ctx.stages}, "eval": dict(time_s=0.0)}
             for _ in ctxs]
    tracked = [_trackers(x) for x in ctxs]
    memo: dict = {}  # what one lane's trackers computed of the starting params, for the others (e.g. the drift's K0)
    if found[0] is not None:
        last = []
        for x, (_, _, st), cost, ts in zip(ctxs, found, costs, tracked):
            last.append(rundir.resume(x, st["step"]))
            cost.update(st["costs"])
            for t in ts:
                t.start(ctx.base_params, resumed=True, memo=memo)
        st = found[0][2]
        params = ctx.sh.place(lanes.stack([f[0] for f in found]), lanes=lanes.n > 1)
        return RunState(lanes, params, [f[1] for f in found],
                        [np.float32(np.nan if f[2]["baseline"] is None else f[2]["baseline"]) for f in found],
                        st["step"], st["stage_index"], st["stage_step"], costs,
                        [f[2].get("first_eval") for f in found], last, tracked)
    params = ctx.sh.place(lanes.stack([ctx.base_params] * len(ctxs)), lanes=lanes.n > 1)
    # one lane starts from the very arrays of ctx.base_params (and of its lm): the first update may take them over
    # unless the KL term reads them as π_ref later (the trackers read them before it: start; reads_before)
    state = RunState(lanes, params, None, [np.float32(np.nan)] * len(ctxs),
                     costs=costs, first_eval=[None] * len(ctxs), last=[None] * len(ctxs), trackers=tracked,
                     owned=lanes.n > 1 or all(x.c.beta == 0 for x in ctxs))
    recs = [{"step": 0, "stage": ctx.stages[0].name, "stage_step": 0} for _ in ctxs]
    for rec, pm in zip(recs, probe_metrics(ctx, lanes, state.params)):
        rec.update(pm)
    for rec, ts in zip(recs, tracked):
        for t in ts:
            rec.update(t.start(ctx.base_params, resumed=False, memo=memo))
    for i, (x, rec, ev) in enumerate(zip(ctxs, recs, evaluate(ctxs, lanes, state.params, 0))):
        rec.update(ev)
        state.first_eval[i] = {k: v for k, v in rec.items() if k.startswith("eval/")}
        rundir.write_config(x)
        rundir.start_metrics(x.out)
        rundir.log(x.out, rec)
    return state


def _save(ctxs: list[RunContext], state: RunState, opt_state, stage: Stage) -> None:
    """Every lane's checkpoint (each run directory's own, replaced atomically; gathered to the host by every
    process, written by process 0)."""
    L, sh = state.lanes, ctxs[0].sh
    params, opt_state = sh.gather((state.params, opt_state))
    for i, x in enumerate(ctxs):
        checkpoint.save(x.out, x.lm, L.take(params, i), None if opt_state is None else L.take(opt_state, i),
                        dict(step=state.step, stage_index=state.stage_index, stage_step=state.stage_step,
                             stage=stage.name, baseline=state.baselines[i], costs=state.costs[i],
                             first_eval=state.first_eval[i]))


def _finish(ctxs: list[RunContext], state: RunState, total: int) -> list[dict]:
    """final/ and summary.json of every lane; returns the summaries."""
    if total == 0 and not os.path.isdir(os.path.join(ctxs[0].out, "checkpoint")):
        _save(ctxs, state, None, ctxs[0].stages[0])
    params = ctxs[0].sh.gather(state.params)
    sync("ntkdyn-rl-finish")  # process 0 has written every record the others read below
    out = []
    for i, ctx in enumerate(ctxs):
        final_dir = rundir.write_final(ctx.out, ctx.lm, state.lanes.take(params, i))
        evals = [r for r in read_metrics(ctx.out) if "eval/reward" in r]
        c = ctx.c
        summary = dict(
            out=ctx.out, recipe=c.recipe, task=c.task, seed=c.seed, model_dir=ctx.model_dir,
            steps=total, stages=[dataclasses.asdict(s) for s in ctx.stages],
            cost=state.costs[i],
            stage1_steps=sum(s.steps for s in ctx.stages if s.name == "stage1"),
            first_eval={k: v for k, v in evals[0].items() if k.startswith("eval/")} if evals else None,
            final_eval={k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else None,
            final_metrics={k: v for k, v in (state.last[i] or {}).items() if not k.startswith("eval/")},
            final_model=final_dir,
            lanes=state.lanes.n,  # runs trained together as one program (train_batch); 1: a lone run
            mesh=rundir.mesh_shape(ctx.sh), processes=jax.process_count(),
            param_bytes_per_device=device_bytes(state.params),  # the final params' share on the fullest device
        )
        out.append(rundir.write_summary(ctx.out, summary))
    return out


# ============================================================================= the loop


def _stage_update(ctxs: list[RunContext], state: RunState, si: int, stage: Stage):
    """The stage's optimizer state (restored from the checkpoints' leaves mid-stage, else fresh) and its jitted
    update over the lanes with every static argument bound, as {donate_params: update}: both donate the optimizer
    state; the True one the params too (their buffers become the new params': one parameter copy less at the
    step's peak; `_run_step` picks it when nothing reads the old params after the update). The optimizer is built
    once per stage."""
    ctx, L = ctxs[0], state.lanes
    tx = stage_optimizer(ctx.c, stage)
    if si == state.stage_index and state.stage_step > 0 and state.opt_state is not None:
        state.opt_state = L.stack([checkpoint.restore_optimizer(tx, L.take(state.params, i), leaves, x.out, x.sh)
                                   for i, (x, leaves) in enumerate(zip(ctxs, state.opt_state))])
    else:
        state.opt_state, state.stage_step = L.map(opt_init, dict(tx=tx))(state.params), 0
    state.opt_state = ctx.sh.place(state.opt_state, lanes=L.n > 1)  # FSDP: as its parameters (sharding.py)
    out = {}
    for donate_params in (False, True):
        donate = (0, 1) if donate_params else (1,)
        if stage.kind == "rl":
            update = L.map(rl_update, dict(tx=tx, ls=ctx.loss_spec, group=stage.group, **ctx.gd),
                           in_axes=(0, 0, 0, 0, None, 0), donate=donate)
        else:
            update = L.map(lp_update, dict(tx=tx, **ctx.gd), donate=donate)
        out[donate_params] = ctx.sh.pinned(update, state.params, state.opt_state, 4 if stage.kind == "rl" else 3,
                                           lanes=L.n > 1, donate=donate)
    return out


def _run_step(ctxs: list[RunContext], state: RunState, stage: Stage, updates: dict) -> list[dict]:
    """One global step of `stage` for every lane: the update (`_stage_update`'s; the one that takes over the old
    params' buffers when nothing else holds them (RunState.owned) and no tracker reads them after the update), the
    tracked quantities, maybe an evaluation; returns the lanes' records."""
    ctx, L = ctxs[0], state.lanes
    c = ctx.c
    state.stage_step += 1
    state.step += 1
    recs = [{"step": state.step, "stage": stage.name, "stage_step": state.stage_step} for _ in ctxs]
    t0 = time.perf_counter()
    donate = state.owned and not any(trackers.reads_before(ts, stage, state.stage_step) for ts in state.trackers)
    update = updates[donate]
    before = None if donate else state.params  # donated: deleted by the update, and no tracker reads it
    if stage.kind == "rl":
        state.params, state.opt_state, state.baselines, ms, (first_after, batch) = rl_step(
            ctxs, L, stage, state.stage_step, state.step, update, state.params, state.opt_state, state.baselines)
    else:
        state.params, state.opt_state, ms = lp_step(ctxs, L, stage, state.stage_step, state.step, update,
                                                    state.params, state.opt_state)
        first_after, batch = state.params, None
    state.owned = True
    for rec, m, pm in zip(recs, ms, probe_metrics(ctx, L, state.params)):
        rec.update(m)
        rec.update(pm)
    dt = time.perf_counter() - t0
    total = sum(s.steps for s in ctx.stages)
    ntoks = []
    for i, rec in enumerate(recs):
        cost = state.costs[i][stage.name]
        cost["steps"] += 1
        cost["time_s"] += dt
        ntoks.append(int(rec.pop("_generated_tokens", 0)))
        cost["generated_tokens"] += ntoks[-1]
        if stage.kind == "rl":
            rec["generated_tokens"] = sum(v.get("generated_tokens", 0) for v in state.costs[i].values())
        u = trackers.Update(stage, state.step, state.stage_step, total, L, i, before, state.params, first_after,
                            batch)
        for t in state.trackers[i]:
            rec.update(t.after_update(u))
    if (c.eval_every and state.step % c.eval_every == 0) or state.stage_step == stage.steps:
        t1 = time.perf_counter()
        for rec, ev in zip(recs, evaluate(ctxs, L, state.params, state.step)):
            rec.update(ev)
        for cost in state.costs:
            cost["eval"]["time_s"] += time.perf_counter() - t1
    for rec, ntok in zip(recs, ntoks):
        rec["step_time"] = dt
        if stage.kind == "rl":
            rec["tokens_per_s"] = ntok / dt if dt > 0 else 0.0
    return recs


def _progress_postfix(stage: Stage, recs: list[dict]) -> dict:
    post = {"stage": stage.name}
    for key, name in (("reward", "reward"), ("eval/reward", "eval")):
        vals = [r[key] for r in recs if key in r]
        if vals:
            post[name] = f"{np.mean(vals):.3f}"
    return post


def _loop(ctxs: list[RunContext], state: RunState, total: int, bar, callback) -> None:
    """Every remaining step of every stage: log, checkpoint, progress, callback after each."""
    c = ctxs[0].c
    for si, stage in enumerate(ctxs[0].stages):
        if si < state.stage_index or (si == state.stage_index and state.stage_step >= stage.steps):
            continue
        updates = _stage_update(ctxs, state, si, stage)
        state.stage_index = si
        while state.stage_step < stage.steps:
            recs = _run_step(ctxs, state, stage, updates)
            for x, rec in zip(ctxs, recs):
                rundir.log(x.out, rec)
            state.last = recs
            if c.save_every and (state.step % c.save_every == 0 or state.step == total):
                params = ctxs[0].sh.gather(state.params)
                for i, x in enumerate(ctxs):
                    rundir.write_snapshot(x.out, x.lm, state.lanes.take(params, i), state.step)
            if (c.checkpoint_every and state.step % c.checkpoint_every == 0) or state.step == total:
                _save(ctxs, state, state.opt_state, stage)
            bar.update(1)
            bar.set_postfix(_progress_postfix(stage, recs))
            if callback is not None:
                for rec in recs:
                    callback(rec)
        state.opt_state = None


def train(config: RLConfig | dict, *, mesh=None, progress: bool = True,
          reward_fn: Callable[[str, str], float] | None = None, reward_funcs: list | None = None,
          callback: Callable[[dict], Any] | None = None, compile_cache: bool = True) -> dict:
    """Run `config.recipe` and return the summary (also written to OUT/summary.json).

    config: an RLConfig (or a dict of its keys; unknown keys are rejected). mesh: an optional
    jax.sharding.Mesh (or a mesh string "data=D,fsdp=F"; RLConfig.mesh is the same string, and giving both is a
    ConfigError): the batch is split over its "data" and "fsdp" axes, parameters and optimizer state over "fsdp"
    (the rules: rl/sharding.py). A run of several processes (jax.distributed initialized first: ntkdyn.distributed)
    spans every process's devices; process 0 writes the run directory.
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
    return train_batch([config], mesh=mesh, progress=progress, reward_fn=reward_fn, reward_funcs=reward_funcs,
                       callback=callback, compile_cache=compile_cache)[0]


_LANE_KEYS = ("seed", "out", "resume", "overwrite")  # what the runs of one batch may differ in


def train_batch(configs: list, *, mesh=None, progress: bool = True,
                reward_fn: Callable[[str, str], float] | None = None, reward_funcs: list | None = None,
                callback: Callable[[dict], Any] | None = None, compile_cache: bool = True) -> list[dict]:
    """Run several configs that differ only in seed, out, resume and overwrite (ConfigError otherwise) as lanes of
    one program; returns their summaries, in order. Each run directory is what `train` would write for its config
    (to float rounding: the lanes' arithmetic is vmapped). Runs that start from different steps (a resume of
    checkpoints at different steps, or fresh and resumed runs together) are trained in one batch per starting step;
    so are runs whose evaluation prompts or probe sets differ (a dataset task whose held-out split depends on the
    seed). Keywords as `train`'s; callback is called with each lane's record. Holds every run directory's lock
    for the whole batch."""
    configs = [RLConfig.from_dict(c) if isinstance(c, dict) else c for c in configs]
    if not configs or not all(isinstance(c, RLConfig) for c in configs):
        raise ConfigError("train_batch: expected a non-empty list of RLConfigs (or dicts of their keys)")
    first = {k: v for k, v in configs[0].to_dict().items() if k not in _LANE_KEYS}
    for c in configs[1:]:
        diff = sorted(k for k, v in c.to_dict().items() if k not in _LANE_KEYS and first[k] != v)
        if diff:
            raise ConfigError(f"train_batch: the runs of one batch may differ only in {list(_LANE_KEYS)}; "
                              f"seed {c.seed} differs from seed {configs[0].seed} in {diff}")
    outs = [os.path.abspath(os.fspath(c.out)) for c in configs]
    if len(set(outs)) < len(outs):
        twice = sorted(o for o in outs if outs.count(o) > 1)[0]
        raise ConfigError(f"train_batch: two runs share the run directory {twice}; expected one directory per run")
    with contextlib.ExitStack() as locks:
        for c in configs:  # one writer per run directory, for the whole run
            locks.enter_context(rundir.lock(c.out))
        return _train_locked(configs, mesh, progress, reward_fn, reward_funcs, callback, compile_cache)


def _mesh(c: RLConfig, mesh):
    """The run's jax.sharding.Mesh (None: one device): the `mesh=` argument (a Mesh or a mesh string) or
    RLConfig.mesh; ConfigError when both are given or the string does not fit the devices."""
    if mesh is not None and c.mesh is not None:
        raise ConfigError(f"train: mesh= and RLConfig.mesh={c.mesh!r} both given; expected one of them")
    spec, what = (mesh, "train(mesh=...)") if isinstance(mesh, str) else (c.mesh, "RLConfig.mesh")
    if spec is None:
        return mesh
    try:
        return make_mesh(spec, what=what)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _train_locked(configs, mesh, progress, reward_fn, reward_funcs, callback, compile_cache) -> list[dict]:
    from tqdm.auto import tqdm

    mesh = _mesh(configs[0], mesh)
    ctxs = [resolve(configs[0], mesh, reward_fn, reward_funcs)]  # validates everything before any work
    ctxs += [resolve(c, mesh, reward_fn, reward_funcs, model=(ctxs[0].lm, ctxs[0].model_dir)) for c in configs[1:]]
    if compile_cache:
        enable_compile_cache()
    shared = on_devices(ctxs[0])
    ctxs = [shared] + [on_devices(x, like=shared) for x in ctxs[1:]]
    fresh = [x for x in ctxs if not x.c.resume]
    if fresh:  # the reward functions on a real batch, before anything of an old run is removed
        dry_run(fresh, Lanes(len(fresh)))
    sync("ntkdyn-rl-resolved")  # every process has read the run directory before process 0 changes it
    for x, c in zip(ctxs, configs):
        rundir.prepare(x.out, c.overwrite)
    sync("ntkdyn-rl-prepared")
    found = [checkpoint.find(x.out, x.sh) if x.c.resume else None for x in ctxs]
    groups: dict = {}
    for i, (x, f) in enumerate(zip(ctxs, found)):
        key = (0 if f is None else f[2]["step"], repr(x.eval_prompts), x.probe_ids.tobytes(), x.Tp, x.T_lp)
        groups.setdefault(key, []).append(i)
    summaries = [None] * len(ctxs)
    for idx in groups.values():
        group = [ctxs[i] for i in idx]
        state = _start(group, [found[i] for i in idx])
        total = sum(s.steps for s in group[0].stages)
        seeds = ", ".join(str(x.c.seed) for x in group)
        with tqdm(total=total, initial=state.step, disable=not progress, dynamic_ncols=True,
                  desc=f"{group[0].c.recipe} {group[0].c.task} seed{'s' if len(group) > 1 else ''} {seeds}") as bar:
            _loop(group, state, total, bar, callback)
        for i, summ in zip(idx, _finish(group, state, total)):
            summaries[i] = summ
    return summaries
