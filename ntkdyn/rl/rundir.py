"""The run directory OUT: the one module that writes and reads it. Its files (written through ntkdyn.io: atomic
files and directories, appended JSON lines):

  config.json      the config and what was resolved from it: model dir, the stage plan ("stages"), shapes
  metrics.jsonl    one JSON line per global step (step 0 = the starting model's evaluation)
  checkpoint/      the last checkpoint (ntkdyn.rl.checkpoint)
  final/           the final model (HF layout)
  summary.json     the summary `train` returns
  ntk0.npz         the eNTK drift's starting kernels (RLConfig.ntk_every; rl/trackers/drift.py)
  snapshots/       step-N/: the model after global step N (HF layout; RLConfig.save_every), what `ntkdyn analyze`
                   reads
  .lock            while a process writes the run: its pid, start time and command

One process writes a run directory at a time: the writer holds `lock(out)` for the whole run (with
jax.distributed, the writer process alone). Another writer gets RunLocked naming the holder; a killed writer's lock
frees itself, and the next writer sweeps what the kill left (temporaries of atomic writes, a checkpoint moved aside
in mid-replacement is put back). Any other file in OUT is the user's: never read, never removed.

    with lock(out):                        # RunLocked (a ConfigError) while another process writes the run
        ...                                # validate the new run
        prepare(out, overwrite)            # with overwrite: remove every file of the previous run
        write_config(ctx); start_metrics(out); log(out, rec); checkpoint.save(...); write_final(...)
    run = read_run(out)                    # RunData(config, stages, records, resolved)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from typing import NamedTuple

import jax
import numpy as np

from ..evaluation import pass_ks
from ..io import (LockHeld, append_jsonl, atomic_file, check_writable_dir, describe_holder, exclusive_lock,
                  read_json, read_jsonl, sweep, write_json, write_text)
from . import checkpoint
from .config import ConfigError
from .sharding import is_writer

__all__ = ["FILES", "LOCK_FILE", "NTK0_FILE", "SNAPSHOTS", "snapshot_dir", "write_snapshot", "TIMING_KEYS",
           "RunLocked", "RunData", "lock", "holds_run", "prepare", "write_config", "resume", "start_metrics", "log",
           "truncate_metrics", "read_metrics", "write_final", "write_arrays", "read_arrays", "write_summary",
           "read_run", "is_run_dir"]

TIMING_KEYS = ("step_time", "tokens_per_s")  # the only metrics.jsonl keys that differ between identical runs
NTK0_FILE = "ntk0.npz"
SNAPSHOTS = "snapshots"
# all a run writes
FILES = ("config.json", "metrics.jsonl", "checkpoint", "final", "summary.json", NTK0_FILE, SNAPSHOTS)
LOCK_FILE = ".lock"
_LEGACY = ("checkpoint.old",)  # written by older versions


class RunLocked(ConfigError):
    """Another process is writing the run directory (the message names its pid, start time and command)."""


class RunData(NamedTuple):
    """A run directory as read back (`read_run`)."""

    config: dict  # the RLConfig keys the run was started with (config.json's "config"), or a foreign flat config
    stages: list | None  # the stage plan [{"name", "kind", "group", "steps", "lr", "stage_id"}, ...] (None: unknown)
    records: list  # the metrics.jsonl lines in file order (a line cut by a kill is skipped)
    resolved: dict  # the rest of config.json (model_dir, prompt_len, batch, pass_at_k, model_config, ...)


# ============================================================================================== the writer


def holds_run(out: str) -> bool:
    """Whether OUT holds (part of) a run: one of its files, or a checkpoint moved aside by a kill."""
    return os.path.isdir(out) and (any(os.path.lexists(os.path.join(out, n)) for n in FILES + _LEGACY)
                                   or checkpoint.exists(out))


@contextlib.contextmanager
def lock(out: str):
    """Hold OUT's lock for the body (OUT is created; directories created here are removed again when the body
    leaves them empty, as a run refused before any work does), after sweeping what a killed writer left. Yields
    the absolute path. RunLocked naming the holder when another process holds it; ConfigError when OUT is a
    file. A process of a multi-process run other than process 0 (sharding.is_writer) takes no lock."""
    if not is_writer():
        yield os.path.abspath(out)
        return
    try:
        path = check_writable_dir(out, "run directory")
    except ValueError as e:
        raise ConfigError(f"RLConfig.out={out!r}: {e}") from None
    created = []
    d = path
    while not os.path.exists(d):
        created.append(d)
        d = os.path.dirname(d)
    os.makedirs(path, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(os.path.join(path, LOCK_FILE)))
            except LockHeld as e:
                pid = e.holder.get("pid")
                raise RunLocked(f"RLConfig.out={out!r}: another process is writing this run directory: "
                                f"{describe_holder(e.holder)}; expected it to end first (or stop it"
                                f"{f': kill {pid}' if pid else ''}, then resume=True continues its run)") from None
            _sweep(path)
            yield path
    finally:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _sweep(out: str) -> None:
    """Leftovers of interrupted writes: temporaries of killed processes (a checkpoint moved aside put back),
    and the names older versions used."""
    sweep(out)
    checkpoint.recover(out)
    for n in os.listdir(out):
        if checkpoint.is_leftover(n) or _is_legacy_tmp(n):
            _remove(os.path.join(out, n))


def _is_legacy_tmp(name: str) -> bool:
    """A temporary of an older version's atomic write of a run file (`<stem>.tmp-<pid><ext>`, `<name>.tmp-<pid>`)."""
    for f in ("metrics.jsonl", "summary.json", "config.json"):
        stem, ext = os.path.splitext(f)
        if name.startswith(f + ".tmp-") or (name.startswith(stem + ".tmp-") and name.endswith(ext)):
            return True
    return False


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def prepare(out: str, overwrite: bool) -> None:
    """Make OUT ready for the run: the leftovers of interrupted writes swept and, with `overwrite`, every file of
    the previous run (FILES) removed; the user's own files stay. Call it holding `lock(out)`, once the new run is
    validated. Every write below is process 0's alone in a multi-process run (sharding.is_writer): a no-op on the
    others."""
    if not is_writer():
        return
    os.makedirs(out, exist_ok=True)
    _sweep(out)
    if overwrite:
        for n in FILES + _LEGACY:
            _remove(os.path.join(out, n))


def write_config(ctx) -> None:
    """OUT/config.json: the config and what was resolved from it."""
    if not is_writer():
        return
    write_json(os.path.join(ctx.out, "config.json"), dict(
        config=ctx.c.to_dict(), model_dir=ctx.model_dir,
        stages=[dataclasses.asdict(s) for s in ctx.stages], prompt_len=ctx.Tp, batch=ctx.B,
        eval_batch=ctx.B_eval, n_train_prompts=len(ctx.train_pool), eval_prompts=ctx.eval_prompts,
        pass_at_k=pass_ks(ctx.c.eval_samples), model_config=ctx.cfg.to_hf(),
        num_params=ctx.lm.num_params, mesh_devices=ctx.sh.devices, mesh=mesh_shape(ctx.sh),
        processes=jax.process_count(), jax_version=jax.__version__))


def mesh_shape(sh) -> dict | None:
    """{"data": D, "fsdp": F} of the run's mesh (None: one device), as config.json and summary.json record it."""
    return None if sh.mesh is None else {str(a): int(n) for a, n in sh.mesh.shape.items()}


def resume(ctx, step: int) -> dict | None:
    """Resuming from the checkpoint of `step`: metrics.jsonl cut back to it, and config.json's stage plan (and
    steps) brought up to date when the resumed config changes the number of steps. Returns the last record kept
    (None when there is none)."""
    kept = truncate_metrics(ctx.out, step)
    stages = [dataclasses.asdict(s) for s in ctx.stages]
    saved = ctx.saved or {}
    if saved.get("stages") != stages and isinstance(saved.get("config"), dict) and is_writer():
        write_json(os.path.join(ctx.out, "config.json"),
                   dict(saved, config=dict(saved["config"], steps=ctx.c.steps), stages=stages))
    return kept[-1] if kept else None


def start_metrics(out: str) -> None:
    """An empty OUT/metrics.jsonl."""
    if not is_writer():
        return
    write_text(os.path.join(out, "metrics.jsonl"), "")


def log(out: str, rec: dict) -> None:
    """Append one record to OUT/metrics.jsonl."""
    if not is_writer():
        return
    append_jsonl(os.path.join(out, "metrics.jsonl"), rec)


def truncate_metrics(out: str, step: int) -> list[dict]:
    """Keep the metrics records up to `step` (resuming from the checkpoint of that step); returns them."""
    path = os.path.join(out, "metrics.jsonl")
    keep = [r for r in read_jsonl(path) if r.get("step", 1 << 60) <= step] if os.path.exists(path) else []
    if is_writer():
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return keep


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl (a run directory or the file); an unreadable line is skipped."""
    return read_jsonl(path, name="metrics.jsonl")


def write_final(out: str, lm, params) -> str:
    """OUT/final: `lm` with `params` (host arrays, or arrays this process addresses) (HF layout, atomic). Returns
    its path."""
    path = os.path.join(out, "final")
    return lm.save(path, params=jax.device_get(params)) if is_writer() else path


def snapshot_dir(out: str, step: int) -> str:
    """OUT/snapshots/step-N: where the model after global step N is kept (RLConfig.save_every)."""
    return os.path.join(out, SNAPSHOTS, f"step-{int(step)}")


def write_snapshot(out: str, lm, params, step: int) -> str:
    """OUT/snapshots/step-N: `lm` with `params` after global step N (HF layout, atomic; an older snapshot of that
    step, from a run resumed before it, is replaced). Returns its path."""
    if not is_writer():
        return snapshot_dir(out, step)
    os.makedirs(os.path.join(out, SNAPSHOTS), exist_ok=True)
    return lm.save(snapshot_dir(out, step), params=jax.device_get(params))


def write_arrays(out: str, name: str, **arrays) -> None:
    """OUT/`name` (one of FILES, an .npz): the arrays, written atomically."""
    if name not in FILES or not name.endswith(".npz"):
        raise ValueError(f"{name!r} is not an array file of the run format; expected one of "
                         f"{[f for f in FILES if f.endswith('.npz')]}")
    if not is_writer():
        return
    with atomic_file(os.path.join(out, name)) as tmp:
        np.savez(tmp, **arrays)


def read_arrays(out: str, name: str) -> dict | None:
    """The arrays of OUT/`name` written by `write_arrays`; None when the file is missing or unreadable (what it
    holds can be computed again)."""
    try:
        with np.load(os.path.join(out, name)) as f:
            return {k: f[k] for k in f.files}
    except Exception:  # missing, truncated, not an npz (numpy raises OSError, ValueError, BadZipFile, EOFError...)
        return None


def write_summary(out: str, summary: dict) -> dict:
    """OUT/summary.json: `summary` plus `unusable_rewards`, {reward function: completions of the run's steps it
    gave no value (None / NaN)}, summed over metrics.jsonl's `rewards/<name>/unusable`. Returns what was
    written."""
    totals: dict = {}
    for r in read_metrics(out):
        for k, v in r.items():
            if k.startswith("rewards/") and k.endswith("/unusable") and isinstance(v, (int, float)):
                name = k[len("rewards/"):-len("/unusable")]
                totals[name] = totals.get(name, 0) + int(v)
    summary = dict(summary, unusable_rewards=totals)
    if is_writer():
        write_json(os.path.join(out, "summary.json"), summary)
    return summary


# ============================================================================================== the reader


def is_run_dir(path: str) -> bool:
    """Whether `path` holds a run to read: config.json and metrics.jsonl."""
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "metrics.jsonl"))


def read_run(path: str) -> RunData:
    """The run in directory `path`: config, stage plan and metrics records as the trainer wrote them. A
    config.json of another layout (a flat JSON object of config keys) is read as the config, its stages unknown
    (None). ValueError naming the file when config.json is unreadable or not an object; FileNotFoundError when
    config.json or metrics.jsonl is missing."""
    path = os.fspath(path)
    cfg = read_json(os.path.join(path, "config.json"), what="run config")
    records_path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(records_path):
        raise FileNotFoundError(f"{records_path}: no such file; expected the metrics of the run in {path}")
    records = read_metrics(records_path)
    if isinstance(cfg.get("config"), dict):  # ntkdyn.rl's layout: {"config": RLConfig keys, ...resolved facts}
        stages = cfg.get("stages")
        resolved = {k: v for k, v in cfg.items() if k not in ("config", "stages")}
        return RunData(cfg["config"], stages if _is_plan(stages) else None, records, resolved)
    return RunData(cfg, None, records, {})


def _is_plan(stages) -> bool:
    return isinstance(stages, list) and all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("steps"), int) for s in stages)
