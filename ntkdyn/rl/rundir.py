"""The files of a run directory OUT (all written through ntkdyn.io: atomic files, appended JSON lines):

  config.json      the config (and what was resolved from it: model dir, stage plan, shapes)
  metrics.jsonl    one JSON line per global step (step 0 = the starting model's evaluation)
  checkpoint/      the last checkpoint (ntkdyn.rl.checkpoint)
  final/           the final model (HF layout)
  summary.json     the summary `train` returns
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax

from ..evaluation import pass_ks
from ..io import append_jsonl, read_jsonl, write_json, write_text
from . import checkpoint

__all__ = ["TIMING_KEYS", "read_metrics", "prepare", "write_config", "start_metrics", "log", "truncate_metrics",
           "write_summary"]

TIMING_KEYS = ("step_time", "tokens_per_s")  # the only metrics.jsonl keys that differ between identical runs
_FILES = ("metrics.jsonl", "summary.json", "config.json")
_OVERWRITTEN = ("metrics.jsonl", "checkpoint", "checkpoint.old", "final", "summary.json", "config.json")


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl (a run directory or the file); an unreadable last line is skipped."""
    return read_jsonl(path, name="metrics.jsonl")


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _is_tmp_file(name: str) -> bool:
    """A temporary of an interrupted atomic write of one of the run's files (io.atomic_file names it
    `<stem>.tmp-<pid><ext>`; older versions `<name>.tmp-<pid>`)."""
    for f in _FILES:
        stem, ext = os.path.splitext(f)
        if name.startswith(f + ".tmp-") or (name.startswith(stem + ".tmp-") and name.endswith(ext)):
            return True
    return False


def prepare(out: str, overwrite: bool) -> None:
    """Create OUT, put back a checkpoint moved aside by a kill, remove the leftovers of interrupted writes and,
    with `overwrite`, the previous run."""
    os.makedirs(out, exist_ok=True)
    checkpoint.recover(out)
    for n in os.listdir(out):
        if checkpoint.is_leftover(n) or _is_tmp_file(n):
            _remove(os.path.join(out, n))
    if overwrite:
        for n in _OVERWRITTEN:
            _remove(os.path.join(out, n))


def write_config(ctx) -> None:
    """OUT/config.json: the config and what was resolved from it."""
    write_json(os.path.join(ctx.out, "config.json"), dict(
        config=ctx.c.to_dict(), model_dir=ctx.model_dir,
        stages=[dataclasses.asdict(s) for s in ctx.stages], prompt_len=ctx.Tp, batch=ctx.B,
        eval_batch=ctx.B_eval, n_train_prompts=len(ctx.train_pool), eval_prompts=ctx.eval_prompts,
        pass_at_k=pass_ks(ctx.c.eval_samples), model_config=ctx.cfg.to_hf(),
        num_params=ctx.lm.num_params, mesh_devices=ctx.sh.size, jax_version=jax.__version__))


def start_metrics(out: str) -> None:
    """An empty OUT/metrics.jsonl."""
    write_text(os.path.join(out, "metrics.jsonl"), "")


def log(out: str, rec: dict) -> None:
    """Append one record to OUT/metrics.jsonl."""
    append_jsonl(os.path.join(out, "metrics.jsonl"), rec)


def truncate_metrics(out: str, step: int) -> None:
    """Keep the metrics records up to `step` (resuming from the checkpoint of that step)."""
    path = os.path.join(out, "metrics.jsonl")
    keep = [r for r in read_jsonl(path) if r.get("step", 1 << 60) <= step] if os.path.exists(path) else []
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def write_summary(out: str, summary: dict) -> None:
    write_json(os.path.join(out, "summary.json"), summary)
