"""Reading run directories: `Run` (one run's config and metrics lines), `load_runs` (every run under a root,
grouped by recipe), `series` (seeds aligned on the full-RL step, mean ± std) and the pass@k curves.

A *run directory* holds `config.json` (at least "recipe" in {"rl", "cf-rl", "lp-ft"}, "seed", "steps",
"head_steps"; ntkdyn.rl also writes the stage plan) and `metrics.jsonl` (one JSON object per line; any key may be
missing on a given line): step (global; stage-1 steps come first), stage ("stage1" | "rl"), stage_step, reward,
entropy, ..., "dz_share/gradient", "eval/reward", "eval/pass_at_k_curve" ([[k, v], ...] or {k: v}), ... It is read
by ntkdyn.rl.rundir.read_run, the run format's one reader.

x axis.  Runs are compared at equal *full-RL* steps: x = "rl_step" = global step − (number of stage-1 steps of
that run), so stage 1 occupies x < 0 and x = 0 is the start of stage 2 (of full RL for the "rl" recipe).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..rl.recipes import RECIPES
from ..rl.rundir import is_run_dir, read_run

__all__ = ["Run", "load_runs", "series", "parse_curve", "curve_series", "PASS_CURVE"]

PASS_CURVE = "eval/pass_at_k_curve"


@dataclasses.dataclass
class Run:
    """One training run: its `config` (config.json, read as one flat dict), `records` (metrics.jsonl lines, in
    file order) and `stages`, the stage plan the trainer wrote ([{"name", "steps", ...}]; None when unknown)."""

    config: dict
    records: list
    path: str | None = None
    stages: list | None = None

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe", "unknown"))

    @property
    def seed(self):
        return self.config.get("seed")

    @functools.cached_property
    def stage1_steps(self) -> int:
        """Number of stage-1 steps, the shift between global step and rl_step.

        The steps of the stage "stage1" in the stage plan; without one (a run directory not written by
        ntkdyn.rl), in order: config["stage1_steps"]; 0 for the "rl" recipe; config["head_steps"]; the logs
        (step − stage_step on stage "rl" lines; else the count of distinct stage-1 steps); else 0.
        """
        if self.stages is not None:
            return sum(int(s["steps"]) for s in self.stages if s.get("name") == "stage1")
        v = self.config.get("stage1_steps")
        if _is_int(v):
            return int(v)
        if self.recipe == "rl":
            return 0
        v = self.config.get("head_steps")
        if _is_int(v):
            return int(v)
        offs = [
            int(r["step"]) - int(r["stage_step"])
            for r in self.records
            if r.get("stage") == "rl" and _is_int(r.get("step")) and _is_int(r.get("stage_step"))
        ]
        if offs:
            return int(np.median(offs))
        s1 = {int(r["step"]) for r in self.records if r.get("stage") == "stage1" and _is_int(r.get("step"))}
        return len(s1)

    def x_of(self, record: Mapping, x: str = "rl_step") -> float | None:
        """The x coordinate of one record ("rl_step", "step" or "stage_step"); None when it cannot be told."""
        step = record.get("step")
        if x == "step":
            return float(step) if is_number(step) else None
        if x == "rl_step":
            return float(step) - self.stage1_steps if is_number(step) else None
        if x == "stage_step":
            v = record.get("stage_step")
            return float(v) if is_number(v) else None
        raise ValueError(f"unknown x {x!r}; expected 'rl_step', 'step' or 'stage_step'")

    def values(self, key: str, x: str = "rl_step") -> tuple[np.ndarray, np.ndarray]:
        """(x, value) of the lines with a finite scalar `key`, sorted by x (the last line wins on repeated x)."""
        got: dict[float, float] = {}
        for r in self.records:
            v = r.get(key)
            if not is_number(v) or not math.isfinite(float(v)):
                continue
            xv = self.x_of(r, x)
            if xv is None:
                continue
            got[xv] = float(v)
        xs = np.array(sorted(got), dtype=np.float64)
        return xs, np.array([got[k] for k in xs], dtype=np.float64)

    def has(self, key: str) -> bool:
        return any(r.get(key) is not None for r in self.records)


def is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _recipe_order(recipes: Iterable[str]) -> list[str]:
    recipes = list(recipes)
    return [r for r in RECIPES if r in recipes] + sorted(r for r in recipes if r not in RECIPES)


def load_runs(runs_root, max_depth: int = 1) -> dict[str, list[Run]]:
    """{recipe: [Run, ...]} for every run directory (config.json + metrics.jsonl) at `runs_root` itself or up to
    `max_depth` levels below it. Recipes come in the order rl, cf-rl, lp-ft (then others); runs by seed.
    A dict already of this form is returned as is."""
    if isinstance(runs_root, Mapping):
        return dict(runs_root)
    root = os.fspath(runs_root)
    dirs: list[str] = []
    frontier = [root]
    for depth in range(max_depth + 1):
        nxt = []
        for d in frontier:
            if is_run_dir(d):
                dirs.append(d)
            if depth < max_depth and os.path.isdir(d):
                nxt += [os.path.join(d, e) for e in sorted(os.listdir(d)) if os.path.isdir(os.path.join(d, e))]
        frontier = nxt
    grouped: dict[str, list[Run]] = {}
    for d in dirs:
        try:
            data = read_run(d)
        except (OSError, ValueError):  # unreadable, malformed or not an object: not a run
            continue
        cfg = {**data.config, **data.resolved}  # the RLConfig keys and the resolved run facts, as one flat dict
        records = data.records
        ks = cfg.get("pass_at_k")
        if ks:  # pass@k curves logged as bare values, one per k of config["pass_at_k"]
            for r in records:
                c = r.get(PASS_CURVE)
                if isinstance(c, list) and len(c) == len(ks) and all(isinstance(v, (int, float)) for v in c):
                    r[PASS_CURVE] = [[k, v] for k, v in zip(ks, c)]
        run = Run(config=cfg, records=records, path=d, stages=data.stages)
        grouped.setdefault(run.recipe, []).append(run)
    for runs in grouped.values():
        runs.sort(key=lambda r: (str(type(r.seed)), r.seed if r.seed is not None else 0, r.path or ""))
    return {k: grouped[k] for k in _recipe_order(grouped)}


# ----------------------------------------------------------------------------- aggregation


def series(runs: Sequence[Run], key: str, x: str = "rl_step", require_all: bool = False, ddof: int = 0):
    """Align seeds on a common x and aggregate `key`: returns (x, mean, std, n) as arrays.

    Each run contributes its lines where `key` is a finite number (see Run.values). At each x the mean and the
    std (ddof `ddof`; 0 where fewer than ddof + 1 seeds) are over the runs that have it; n counts them. With
    require_all=True only the x present in every run are kept.
    """
    per = [r.values(key, x) for r in runs]
    table: dict[float, list[float]] = {}
    for xs, vs in per:
        for a, b in zip(xs, vs):
            table.setdefault(float(a), []).append(float(b))
    keep = sorted(k for k, v in table.items() if not require_all or len(v) == len(runs))
    xs = np.array(keep, dtype=np.float64)
    mean = np.array([np.mean(table[k]) for k in keep], dtype=np.float64)
    std = np.array([np.std(table[k], ddof=ddof) if len(table[k]) > ddof else 0.0 for k in keep], dtype=np.float64)
    n = np.array([len(table[k]) for k in keep], dtype=np.int64)
    return xs, mean, std, n


def parse_curve(value) -> tuple[np.ndarray, np.ndarray]:
    """A pass@k curve as (ks, values) sorted by k, from [[k, v], ...], {k: v} (keys may be strings, as JSON
    makes them) or [{"k": k, "value": v}, ...]. Entries that are not numbers are dropped."""
    pairs: list[tuple[float, float]] = []
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for e in value:
            if isinstance(e, Mapping):
                items.append((e.get("k"), e.get("value", e.get("v", e.get("pass@k")))))
            elif isinstance(e, (list, tuple)) and len(e) == 2:
                items.append((e[0], e[1]))
    else:
        items = []
    for k, v in items:
        try:
            kf, vf = float(k), float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(kf) and math.isfinite(vf):
            pairs.append((kf, vf))
    pairs.sort()
    return np.array([p[0] for p in pairs], dtype=np.float64), np.array([p[1] for p in pairs], dtype=np.float64)


def _pick_record(run: Run, key: str, which: str, x: str = "rl_step"):
    """(x, value) of the first ("first") or last ("last") record, by x then file order, that has `key`."""
    cands = []
    for i, r in enumerate(run.records):
        if r.get(key) is None:
            continue
        xv = run.x_of(r, x)
        cands.append((xv if xv is not None else float(i), i, r[key]))
    if not cands:
        return None
    cands.sort(key=lambda t: (t[0], t[1]))
    if which == "first":
        return cands[0][0], cands[0][2]
    if which == "stage2":  # the first record at or after the start of stage 2 (x >= 0)
        later = [c for c in cands if c[0] >= 0]
        return (later[0][0], later[0][2]) if later else None
    if which == "last":
        return cands[-1][0], cands[-1][2]
    raise ValueError(f"which must be 'first', 'stage2' or 'last' (got {which!r})")


def curve_series(runs: Sequence[Run], key: str = "eval/pass_at_k_curve", which: str = "first", ddof: int = 0):
    """Mean ± std over seeds of the pass@k curve in each run's first / last record that has `key` (which="first"
    | "last"; "stage2": the first such record at rl_step >= 0, i.e. after stage 1).

    Returns (ks, mean, std, n, xs) where xs lists the rl_step of the record used in each contributing run."""
    table: dict[float, list[float]] = {}
    xs = []
    for run in runs:
        got = _pick_record(run, key, which)
        if got is None:
            continue
        ks, vals = parse_curve(got[1])
        if not len(ks):
            continue
        xs.append(got[0])
        for k, v in zip(ks, vals):
            table.setdefault(float(k), []).append(float(v))
    keep = sorted(table)
    return (
        np.array(keep, dtype=np.float64),
        np.array([np.mean(table[k]) for k in keep], dtype=np.float64),
        np.array([np.std(table[k], ddof=ddof) if len(table[k]) > ddof else 0.0 for k in keep], dtype=np.float64),
        np.array([len(table[k]) for k in keep], dtype=np.int64),
        xs,
    )
