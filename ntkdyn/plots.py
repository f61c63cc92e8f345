"""The paper's figures, drawn from run logs on disk (or from arrays given).

Every figure is a `matplotlib.figure.Figure` built directly (pyplot is never imported, so no backend or global
figure state is touched: safe inside notebooks and interactive sessions) and written twice by `save`: PNG (dpi
150) and PDF.  Colours are fixed per recipe (`RECIPE_COLORS`) so that every figure reads the same way.

Run logs.  A *run directory* holds `config.json` (at least "recipe" in {"rl", "cf-rl", "lp-ft"}, "seed",
"steps", "head_steps") and `metrics.jsonl` (one JSON object per line; any key may be missing on a given line):
step (global; stage-1 steps come first), stage ("stage1" | "rl"), stage_step, reward, entropy, ...,
"dz_share/gradient", "eval/reward", "eval/pass_at_k_curve" ([[k, v], ...] or {k: v}), ...

x axis.  Runs are compared at equal *full-RL* steps: x = "rl_step" = global step − (number of stage-1 steps of
that run), so stage 1 occupies x < 0 and x = 0 is the start of stage 2 (of full RL for the "rl" recipe).

Run-based figures (`runs_root`: a directory whose run directories are found one level deep, or the dict that
`load_runs` returns; `out`: a path prefix without extension; each returns the written [png, pdf]):

  plot_reward, plot_confidence, plot_diversity, plot_dz_share, plot_head_norm; plot_all writes all five.

Array-based figures: plot_feature_similarity (+ feature_table_markdown), plot_one_step, plot_kernel.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

__all__ = [
    "RECIPES",
    "RECIPE_COLORS",
    "RECIPE_LABELS",
    "Run",
    "load_runs",
    "series",
    "parse_curve",
    "curve_series",
    "save",
    "plot_reward",
    "plot_confidence",
    "plot_diversity",
    "plot_dz_share",
    "plot_head_norm",
    "plot_feature_similarity",
    "feature_table_markdown",
    "plot_one_step",
    "plot_kernel",
    "plot_all",
]

RECIPES = ("rl", "cf-rl", "lp-ft")
RECIPE_COLORS = {"rl": "#1f77b4", "cf-rl": "#d62728", "lp-ft": "#2ca02c"}
RECIPE_LABELS = {"rl": "RL", "cf-rl": "CF-RL", "lp-ft": "LP-FT"}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e")

DPI = 150
# applied with rc_context around building and saving each figure (restored afterwards)
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

STAGE1_SHADE = "0.93"
X_LABEL = "full-RL step (stage 1 at x < 0)"


# ============================================================================ loading


@dataclasses.dataclass
class Run:
    """One training run: its `config` (config.json) and `records` (metrics.jsonl lines, in file order)."""

    config: dict
    records: list
    path: str | None = None

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe", "unknown"))

    @property
    def seed(self):
        return self.config.get("seed")

    @functools.cached_property
    def stage1_steps(self) -> int:
        """Number of stage-1 steps, the shift between global step and rl_step.

        Taken from, in order: config["stage1_steps"]; 0 for the "rl" recipe; config["head_steps"]; the logs
        (step − stage_step on stage "rl" lines; else the count of distinct stage-1 steps); else 0.
        """
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
            return float(step) if _is_num(step) else None
        if x == "rl_step":
            return float(step) - self.stage1_steps if _is_num(step) else None
        if x == "stage_step":
            v = record.get("stage_step")
            return float(v) if _is_num(v) else None
        raise ValueError(f"unknown x {x!r}; expected 'rl_step', 'step' or 'stage_step'")

    def values(self, key: str, x: str = "rl_step") -> tuple[np.ndarray, np.ndarray]:
        """(x, value) of the lines with a finite scalar `key`, sorted by x (the last line wins on repeated x)."""
        got: dict[float, float] = {}
        for r in self.records:
            v = r.get(key)
            if not _is_num(v) or not math.isfinite(float(v)):
                continue
            xv = self.x_of(r, x)
            if xv is None:
                continue
            got[xv] = float(v)
        xs = np.array(sorted(got), dtype=np.float64)
        return xs, np.array([got[k] for k in xs], dtype=np.float64)

    def has(self, key: str) -> bool:
        return any(r.get(key) is not None for r in self.records)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _read_jsonl(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # e.g. a partial last line of a run still being written
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _is_run_dir(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "config.json")) and os.path.isfile(os.path.join(d, "metrics.jsonl"))


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
            if _is_run_dir(d):
                dirs.append(d)
            if depth < max_depth and os.path.isdir(d):
                nxt += [os.path.join(d, e) for e in sorted(os.listdir(d)) if os.path.isdir(os.path.join(d, e))]
        frontier = nxt
    grouped: dict[str, list[Run]] = {}
    for d in dirs:
        try:
            with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(cfg, dict):
            continue
        # ntkdyn.rl writes {"config": RLConfig fields, ...resolved run facts}: read them as one flat dict
        if isinstance(cfg.get("config"), dict):
            cfg = {**cfg["config"], **{k: v for k, v in cfg.items() if k != "config"}}
        records = _read_jsonl(os.path.join(d, "metrics.jsonl"))
        ks = cfg.get("pass_at_k")
        if ks:  # pass@k curves logged as bare values, one per k of config["pass_at_k"]
            for r in records:
                c = r.get(PASS_CURVE)
                if isinstance(c, list) and len(c) == len(ks) and all(isinstance(v, (int, float)) for v in c):
                    r[PASS_CURVE] = [[k, v] for k, v in zip(ks, c)]
        run = Run(config=cfg, records=records, path=d)
        grouped.setdefault(run.recipe, []).append(run)
    for runs in grouped.values():
        runs.sort(key=lambda r: (str(type(r.seed)), r.seed if r.seed is not None else 0, r.path or ""))
    return {k: grouped[k] for k in _recipe_order(grouped)}


# ============================================================================ aggregation


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


PASS_CURVE = "eval/pass_at_k_curve"


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


# ============================================================================ drawing helpers


def save(fig: Figure, path_without_ext) -> list[str]:
    """Write `fig` to <path>.png (dpi 150) and <path>.pdf (a trailing .png / .pdf on the path is dropped);
    parent directories are created. Returns [png, pdf]."""
    base = os.fspath(path_without_ext)
    if base.lower().endswith((".png", ".pdf")):
        base = base[:-4]
    parent = os.path.dirname(base)
    if parent:
        os.makedirs(parent, exist_ok=True)
    png, pdf = f"{base}.png", f"{base}.pdf"
    engine = fig.get_layout_engine()
    with matplotlib.rc_context(_STYLE):
        fig.savefig(png, dpi=DPI, format="png", metadata={"Software": "ntkdyn"})
        # the PDF reuses the layout just computed (constrained layout is the costliest part of a save)
        if engine is not None:
            fig.set_layout_engine("none")
        try:
            fig.savefig(pdf, dpi=DPI, format="pdf", metadata={"Creator": "ntkdyn", "CreationDate": None})
        finally:
            if engine is not None:
                fig.set_layout_engine(engine)
    return [png, pdf]


def _styled(fn):
    """Run a figure function under the module style (rc_context: global rcParams are restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Figure, list]:
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _color(recipe: str) -> str:
    if recipe in RECIPE_COLORS:
        return RECIPE_COLORS[recipe]
    return _EXTRA_COLORS[sum(map(ord, recipe)) % len(_EXTRA_COLORS)]


def _label(recipe: str) -> str:
    return RECIPE_LABELS.get(recipe, recipe)


def _no_data(ax, what: str = "") -> None:
    ax.text(
        0.5, 0.5, "no data" + (f"\n({what})" if what else ""), transform=ax.transAxes,
        ha="center", va="center", fontsize=11, color="0.45",
    )


def _band(ax, x, mean, std, n, color, *, ls="-", lw=1.6, marker=None, ms=4.0, alpha=1.0, band_alpha=0.18,
          label=None, zorder=2) -> bool:
    """Line (and markers) of the mean; a ± std band where at least two seeds contribute. Returns whether
    anything was drawn."""
    x, mean, std, n = (np.asarray(a) for a in (x, mean, std, n))
    if x.size == 0:
        return False
    ax.plot(x, mean, ls=ls, lw=lw, marker=marker, ms=ms, color=color, alpha=alpha, label=label, zorder=zorder)
    multi = n > 1
    if multi.any():
        lo, hi = mean - std, mean + std
        ax.fill_between(x, lo, hi, where=multi, color=color, alpha=band_alpha, lw=0, zorder=zorder - 1,
                        interpolate=False, step=None)
    return True


def _mark_stage2(ax, any_stage1: bool) -> None:
    """Shade x < 0 (stage 1) when some run has stage-1 data drawn on this axis; dotted line at x = 0 where
    stage 2 starts."""
    lo, hi = ax.get_xlim()
    if any_stage1 and lo < 0 and ax.dataLim.x0 < 0:
        ax.axvspan(lo, 0, color=STAGE1_SHADE, zorder=0, lw=0)
        if -lo > 0.08 * (hi - lo):
            ax.text(0, 0.99, "stage 1 ", transform=ax.get_xaxis_transform(), ha="right", va="top",
                    fontsize=7, color="0.4")
    ax.axvline(0, color="0.25", ls=":", lw=1.0, zorder=1)
    ax.text(0, 0.99, " stage 2 starts", transform=ax.get_xaxis_transform(), ha="left", va="top",
            fontsize=7, color="0.25")
    ax.set_xlim(lo, hi)


def _has_stage1(runs_by_recipe: Mapping[str, list[Run]]) -> bool:
    return any(r.stage1_steps > 0 for runs in runs_by_recipe.values() for r in runs)


def _first_key(runs_by_recipe: Mapping[str, list[Run]], keys: Sequence[str]) -> str | None:
    """The first of `keys` that some run logs as a number."""
    for k in keys:
        for runs in runs_by_recipe.values():
            for r in runs:
                if any(_is_num(rec.get(k)) for rec in r.records):
                    return k
    return None


def _recipe_handles(recipes: Iterable[str], n_seeds: Mapping[str, int] | None = None) -> list:
    hs = []
    for rc in recipes:
        lab = _label(rc) + (f" (n={n_seeds[rc]})" if n_seeds and rc in n_seeds else "")
        hs.append(Patch(facecolor=_color(rc), edgecolor=_color(rc), label=lab))
    return hs


def _fig_legend(fig: Figure, handles: list) -> None:
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)


def _plot_recipes(ax, runs_by_recipe, key, *, x="rl_step", recipes=None, **style) -> bool:
    drawn = False
    for rc in recipes or runs_by_recipe:
        runs = runs_by_recipe.get(rc, [])
        if not runs or key is None:
            continue
        xs, m, s, n = series(runs, key, x=x)
        drawn |= _band(ax, xs, m, s, n, _color(rc), **style)
    return drawn


def _panel_lines(ax, runs_by_recipe, metrics: Sequence[tuple[str, dict]], *, title, ylabel, any_stage1,
                 recipes=None, what="") -> bool:
    """Plot several (key, style) metrics for each recipe on one axis; 'no data' when nothing is logged."""
    drawn = False
    for key, style in metrics:
        drawn |= _plot_recipes(ax, runs_by_recipe, key, recipes=recipes, **style)
    ax.set_title(title)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(ylabel)
    if drawn:
        _mark_stage2(ax, any_stage1)
    else:
        _no_data(ax, what or ", ".join(k for k, _ in metrics if k))
    return drawn


def _n_seeds(runs_by_recipe) -> dict[str, int]:
    return {rc: len(runs) for rc, runs in runs_by_recipe.items()}


# ============================================================================ run-based figures


@_styled
def plot_reward(runs_root, out, threshold: float | None = None) -> list[str]:
    """Training reward (light line) and eval/reward (markers) vs full-RL step, mean ± std over seeds per recipe;
    stage 1 shaded, x = 0 marked "stage 2 starts". `threshold` optionally draws a horizontal reference line."""
    rr = load_runs(runs_root)
    fig, (ax,) = _figure(1, width=6.4, height=4.0)
    d1 = _plot_recipes(ax, rr, "reward", lw=1.0, alpha=0.45, band_alpha=0.10)
    d2 = _plot_recipes(ax, rr, "eval/reward", lw=1.8, marker="o", ms=4.5, band_alpha=0.22, zorder=3)
    ax.set_title("Reward during post-training (mean ± std over seeds)")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel("reward")
    if d1 or d2:
        _mark_stage2(ax, _has_stage1(rr))
        if threshold is not None:
            ax.axhline(threshold, color="0.5", ls="--", lw=0.9)
    else:
        _no_data(ax, "reward, eval/reward")
    hs = _recipe_handles(rr, _n_seeds(rr)) + [
        Line2D([], [], color="0.3", lw=1.0, alpha=0.45, label="train reward"),
        Line2D([], [], color="0.3", lw=1.8, marker="o", ms=4.5, label="eval reward"),
    ]
    if threshold is not None:
        hs.append(Line2D([], [], color="0.5", ls="--", lw=0.9, label=f"threshold {threshold:g}"))
    _fig_legend(fig, hs)
    return save(fig, out)


@_styled
def plot_confidence(runs_root, out, with_logp: bool = False) -> list[str]:
    """Mean token entropy and mean max-probability (eval/ keys, else the training ones) vs full-RL step,
    bands per recipe; with_logp adds a panel of the mean log-prob of sampled tokens."""
    rr = load_runs(runs_root)
    panels = [
        (("eval/entropy", "entropy"), "Mean token entropy", "entropy (nats)"),
        (("eval/max_prob", "max_prob"), "Mean max-probability", "max_y π(y | c)"),
    ]
    if with_logp:
        panels.append((("eval/logp", "logp"), "Mean log-prob of sampled tokens", "log π(y | c)"))
    fig, axes = _figure(len(panels))
    st1 = _has_stage1(rr)
    for ax, (keys, title, ylabel) in zip(axes, panels):
        key = _first_key(rr, keys)
        style = {"marker": "o", "ms": 3.5} if key and key.startswith("eval/") else {"lw": 1.2}
        t = f"{title}\n[{key}]" if key else title
        _panel_lines(ax, rr, [(key, style)], title=t, ylabel=ylabel, any_stage1=st1, what=" / ".join(keys))
    _fig_legend(fig, _recipe_handles(rr, _n_seeds(rr)))
    return save(fig, out)


@_styled
def plot_diversity(runs_root, out, before: str = "first") -> list[str]:
    """Panel 1: eval/unique_correct (solid) and eval/unique_answers (dashed) vs full-RL step. Panel 2: pass@k
    vs k (log2 axis) from each run's first ("before", dashed) and last ("after", solid) eval/pass_at_k_curve,
    mean ± std over seeds per recipe. before="stage2" takes the "before" curve at the start of stage 2 instead
    (the first one at rl_step >= 0)."""
    rr = load_runs(runs_root)
    fig, (a1, a2) = _figure(2)
    drawn1 = _panel_lines(
        a1, rr,
        [("eval/unique_correct", {"marker": "o", "ms": 3.5}),
         ("eval/unique_answers", {"ls": "--", "marker": "s", "ms": 3.0, "band_alpha": 0.10})],
        title="Distinct answers per prompt", ylabel="distinct answers", any_stage1=_has_stage1(rr),
    )
    drawn = False
    all_ks: set[float] = set()
    for rc, runs in rr.items():
        for which, ls, mk in ((before, "--", "v"), ("last", "-", "o")):
            ks, m, s, n, xs = curve_series(runs, which=which)
            if not len(ks) or np.any(ks <= 0):
                ks, m, s, n = ks[ks > 0], m[ks > 0], s[ks > 0], n[ks > 0]
            if not len(ks):
                continue
            drawn |= _band(a2, ks, m, s, n, _color(rc), ls=ls, marker=mk, ms=3.5)
            all_ks |= set(ks.tolist())
    a2.set_title("pass@k before and after training")
    a2.set_xlabel("k")
    a2.set_ylabel("pass@k")
    if drawn:
        a2.set_xscale("log", base=2)
        ticks = sorted(all_ks)
        if len(ticks) <= 12:
            a2.set_xticks(ticks)
            a2.set_xticklabels([f"{t:g}" for t in ticks])
            a2.minorticks_off()
    else:
        _no_data(a2, "eval/pass_at_k_curve")
    if drawn1:
        a1.legend(handles=[Line2D([], [], color="0.3", marker="o", ms=3.5, label="unique correct"),
                           Line2D([], [], color="0.3", ls="--", marker="s", ms=3.0, label="unique answers")],
                  loc="best", framealpha=0.8)
    if drawn:
        a2.legend(handles=[Line2D([], [], color="0.3", ls="--", marker="v", ms=3.5, label="before (" + ("first eval" if before == "first" else "stage-2 start") + ")"),
                           Line2D([], [], color="0.3", marker="o", ms=3.5, label="after (last eval)")],
                  loc="lower right", framealpha=0.8)
    _fig_legend(fig, _recipe_handles(rr, _n_seeds(rr)))
    return save(fig, out)


@_styled
def plot_dz_share(runs_root, out) -> list[str]:
    """‖Δz_G‖/‖Δz‖ and ‖Δz_R‖/‖Δz‖ vs full-RL step, one panel each, for rl and cf-rl (and lp-ft, if logged)."""
    rr = load_runs(runs_root)
    fig, axes = _figure(2)
    st1 = _has_stage1(rr)
    for ax, comp, sym in zip(axes, ("gradient", "representation"), ("G", "R")):
        _panel_lines(ax, rr, [(f"dz_share/{comp}", {"marker": "o", "ms": 3.0})],
                     title=f"{comp.capitalize()} share ‖Δz_{sym}‖ / ‖Δz‖", ylabel="share", any_stage1=st1)
    present = [rc for rc, runs in rr.items() if any(r.has("dz_share/gradient") or r.has("dz_share/representation")
                                                     for r in runs)]
    _fig_legend(fig, _recipe_handles(present or list(rr), _n_seeds(rr)))
    return save(fig, out)


@_styled
def plot_head_norm(runs_root, out) -> list[str]:
    """Head norm ‖W‖_F and feature change vs full-RL step for CF-RL vs LP-FT (vs RL): LP inflates ‖W‖_F and
    reduces later feature change; CF-RL stage 1 does not (spec 5.4 / claim 8)."""
    rr = load_runs(runs_root)
    order = [rc for rc in ("cf-rl", "lp-ft", "rl") if rc in rr] + [rc for rc in rr if rc not in RECIPES]
    fig, axes = _figure(2)
    st1 = _has_stage1(rr)
    draw = order[::-1]  # RL first (the reference), CF-RL on top
    _panel_lines(axes[0], rr, [("head_norm", {})], title="Head norm ‖W‖_F", ylabel="‖W‖_F",
                 any_stage1=st1, recipes=draw)
    _panel_lines(axes[1], rr, [("feature_change", {})], title="Feature change ‖h_t − h_0‖",
                 ylabel="feature change", any_stage1=st1, recipes=draw)
    _fig_legend(fig, _recipe_handles(order, _n_seeds(rr)))
    return save(fig, out)


def plot_all(runs_root, out_dir) -> list[str]:
    """The five run-based figures as out_dir/fig_{reward,confidence,diversity,dz_share,head_norm}.{png,pdf}."""
    rr = load_runs(runs_root)
    out_dir = os.fspath(out_dir)
    files = []
    for name, fn in (
        ("fig_reward", plot_reward),
        ("fig_confidence", plot_confidence),
        ("fig_diversity", plot_diversity),
        ("fig_dz_share", plot_dz_share),
        ("fig_head_norm", plot_head_norm),
    ):
        files += fn(rr, os.path.join(out_dir, name))
    return files


# ============================================================================ array-based figures


def _cos_values(a) -> np.ndarray:
    """Finite values of `a`; a square symmetric matrix (a cosine matrix) gives its strict upper triangle."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1] and arr.shape[0] > 1 and np.allclose(arr, arr.T,
                                                                                          equal_nan=True):
        arr = arr[np.triu_indices(arr.shape[0], k=1)]
    arr = arr.ravel()
    return arr[np.isfinite(arr)]


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0 or (1e-3 <= abs(v) < 1e4):
            return f"{v:.4g}"
        return f"{v:.3e}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(_fmt(e) for e in np.asarray(v).ravel().tolist())
    try:
        return _fmt(float(v))  # 0-d arrays (e.g. jax scalars)
    except (TypeError, ValueError):
        return str(v)


def feature_table_markdown(stats: Mapping[str, Any]) -> str:
    """A markdown table of `stats`: {name: value} gives | quantity | value | rows; {row: {col: value}} gives one
    column per inner key (union, in first-seen order; blanks where missing)."""
    if stats and all(isinstance(v, Mapping) for v in stats.values()):
        cols: list[str] = []
        for v in stats.values():
            cols += [str(c) for c in v if str(c) not in cols]
        lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for r, v in stats.items():
            vv = {str(k): x for k, x in v.items()}
            lines.append(f"| {r} | " + " | ".join(_fmt(vv[c]) if c in vv else "" for c in cols) + " |")
        return "\n".join(lines) + "\n"
    lines = ["| quantity | value |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in stats.items()]
    return "\n".join(lines) + "\n"


def _hist(ax, vals, color, title, xlabel) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if vals.size == 0:
        _no_data(ax)
        return
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.01, hi + 0.01
    ax.hist(vals, bins=min(50, max(10, int(np.sqrt(vals.size)) * 2)), range=(lo, hi), color=color, alpha=0.75,
            edgecolor="white", lw=0.4)
    m = float(vals.mean())
    ax.axvline(m, color="k", ls="--", lw=1.2)
    ax.text(0.03, 0.95, f"mean = {m:.4f}\nstd = {vals.std():.4f}\nmin = {vals.min():.4f}\nn = {vals.size}",
            transform=ax.transAxes, ha="left", va="top", fontsize=8,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7", alpha=0.9))


@_styled
def plot_feature_similarity(cos_prompts, cos_positions, out, table: Mapping[str, Any] | None = None) -> list[str]:
    """Histograms of pairwise cosine similarities of the features h across prompts and across positions (arrays
    of values; a square symmetric cosine matrix contributes its strict upper triangle), means annotated;
    `table` ({name: number}) is rendered as a small table in a third panel (the paper's Table 1 analogue)."""
    ncols = 3 if table else 2
    fig, axes = _figure(ncols, width=4.0, height=3.3)
    _hist(axes[0], _cos_values(cos_prompts), "#4c72b0", "Across prompts", "cos(h_i, h_j)")
    _hist(axes[1], _cos_values(cos_positions), "#dd8452", "Across positions", "cos(h_t, h_t')")
    if table:
        ax = axes[2]
        ax.axis("off")
        ax.grid(False)
        rows = [[str(k), _fmt(v)] for k, v in table.items()]
        tb = ax.table(cellText=rows, colLabels=["quantity", "value"], loc="center", cellLoc="left",
                      colLoc="left", colWidths=[0.68, 0.32])
        tb.auto_set_font_size(False)
        tb.set_fontsize(8)
        tb.scale(1.0, 1.3)
        ax.set_title("Feature statistics")
    fig.suptitle("Feature similarity (pairwise cosine of h)")
    return save(fig, out)


@_styled
def plot_one_step(predicted, actual, out, split: Mapping[str, Any] | None = None) -> list[str]:
    """Scatter of the first-order prediction vs the real Δ log π after one step (flattened), with y = x and the
    relative error ‖pred − real‖ / ‖real‖ in the title. `split` = dict(representation=..., gradient=...) of
    per-probe norms ‖Δz_R‖, ‖Δz_G‖ adds a second panel (bars per probe; a scatter for many probes)."""
    pred = np.asarray(predicted, dtype=np.float64).ravel()
    act = np.asarray(actual, dtype=np.float64).ravel()
    if pred.shape != act.shape:
        raise ValueError(f"predicted and actual must have the same size (got {pred.size} and {act.size})")
    ok = np.isfinite(pred) & np.isfinite(act)
    pred, act = pred[ok], act[ok]
    fig, axes = _figure(2 if split is not None else 1, width=4.6, height=4.0)
    ax = axes[0]
    ax.set_xlabel("real Δ log π")
    ax.set_ylabel("predicted Δ log π (first order, R + G)")
    if act.size:
        denom = float(np.linalg.norm(act))
        rel = float(np.linalg.norm(pred - act)) / denom if denom > 0 else float("nan")
        ax.scatter(act, pred, s=9, alpha=0.6, color="#4c72b0", edgecolors="none", label="probe entries")
        lo = float(min(act.min(), pred.min()))
        hi = float(max(act.max(), pred.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 1e-3 + 0.05 * abs(hi)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", ls="--", lw=1.0, label="y = x")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.legend(loc="upper left")
        ax.set_title(f"One-step prediction (relative error {100 * rel:.2f}%)")
    else:
        ax.set_title("One-step prediction")
        _no_data(ax)
    if split is not None:
        ax2 = axes[1]
        r = np.asarray(split.get("representation", []), dtype=np.float64).ravel()
        g = np.asarray(split.get("gradient", []), dtype=np.float64).ravel()
        ax2.set_title("Per-probe parts of Δz")
        if r.size and r.size == g.size and r.size <= 40:
            idx = np.arange(r.size)
            w = 0.4
            ax2.bar(idx - w / 2, r, width=w, color="#55a868", label="‖Δz_R‖ (representation)")
            ax2.bar(idx + w / 2, g, width=w, color="#c44e52", label="‖Δz_G‖ (gradient)")
            ax2.set_xlabel("probe")
            ax2.set_ylabel("norm")
            top = float(np.nanmax(np.concatenate([r, g, [0.0]])))
            if top > 0:
                ax2.set_ylim(0, 1.3 * top)  # room for the legend
            if r.size <= 20:
                ax2.set_xticks(idx)
            ax2.legend()
        elif r.size and r.size == g.size:
            ax2.scatter(r, g, s=10, alpha=0.6, color="#8172b2", edgecolors="none")
            top = float(max(r.max(), g.max(), 0))
            ax2.plot([0, top], [0, top], color="k", ls="--", lw=1.0, label="y = x")
            ax2.set_xlabel("‖Δz_R‖ (representation)")
            ax2.set_ylabel("‖Δz_G‖ (gradient)")
            ax2.legend()
        else:
            _no_data(ax2, "representation / gradient norms")
    return save(fig, out)


@_styled
def plot_kernel(s, G_blocks, out, labels: Sequence[str] | None = None, tokens: Sequence[str] | None = None,
                normalize: bool = False) -> list[str]:
    """The kernel for a handful of contexts. Panel 1: the representation scalars s (N, N) (R = s · I). Panel 2:
    the gradient component, G_blocks (N, N, k, k) (block (i, j) over a k-token subset) assembled into an
    (N·k) × (N·k) heatmap with block separators; an (N·k, N·k) matrix is accepted as already assembled.
    normalize=True divides block (i, j) by sqrt(tr G_ii · tr G_jj) / k (so the diagonal blocks have unit
    mean diagonal). `labels`: N context names; `tokens`: k token names (shown when the map is small)."""
    s_arr = np.asarray(s, dtype=np.float64)
    if s_arr.ndim != 2 or s_arr.shape[0] != s_arr.shape[1]:
        raise ValueError(f"s must be (N, N), got {s_arr.shape}")
    N = s_arr.shape[0]
    G = np.asarray(G_blocks, dtype=np.float64)
    if G.ndim == 4:
        if G.shape[:2] != (N, N) or G.shape[2] != G.shape[3]:
            raise ValueError(f"G_blocks must be (N, N, k, k) with N={N}, got {G.shape}")
        k = G.shape[2]
        G4 = G
    elif G.ndim == 2 and G.shape[0] == G.shape[1] and G.shape[0] % N == 0:
        k = G.shape[0] // N
        G4 = G.reshape(N, k, N, k).transpose(0, 2, 1, 3)
    else:
        raise ValueError(f"G_blocks must be (N, N, k, k) or (N*k, N*k), got {G.shape}")
    if normalize:
        tr = np.array([np.trace(G4[i, i]) for i in range(N)]) / k
        scale = np.sqrt(np.abs(np.outer(tr, tr)))
        scale[scale == 0] = 1.0
        G4 = G4 / scale[:, :, None, None]
    big = G4.transpose(0, 2, 1, 3).reshape(N * k, N * k)

    fig, (a1, a2) = _figure(2, width=4.8, height=4.3)
    vmax_s = float(np.nanmax(np.abs(s_arr))) if s_arr.size else 1.0
    if np.nanmin(s_arr) >= 0:
        im1 = a1.imshow(s_arr, cmap="viridis", vmin=0, vmax=vmax_s or 1.0)
    else:
        im1 = a1.imshow(s_arr, cmap="RdBu_r", vmin=-vmax_s, vmax=vmax_s)
    fig.colorbar(im1, ax=a1, shrink=0.8, label="s(c_i, c_j)")
    a1.set_title("Representation component: s  (R = s·I)")
    a1.grid(False)
    ticks = np.arange(N)
    if labels is not None and len(labels) == N:
        a1.set_xticks(ticks, [str(l) for l in labels], rotation=45, ha="right")
        a1.set_yticks(ticks, [str(l) for l in labels])
    else:
        a1.set_xticks(ticks)
        a1.set_yticks(ticks)
    if N <= 8:
        for i in range(N):
            for j in range(N):
                v = s_arr[i, j]
                a1.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="white" if (np.nanmin(s_arr) >= 0 and v < 0.6 * vmax_s) else "black")
    a1.set_xlabel("context j")
    a1.set_ylabel("context i")

    vmax_g = float(np.nanmax(np.abs(big))) if big.size else 1.0
    im2 = a2.imshow(big, cmap="RdBu_r", vmin=-(vmax_g or 1.0), vmax=vmax_g or 1.0, interpolation="nearest")
    fig.colorbar(im2, ax=a2, shrink=0.8, label="G (tr-normalised)" if normalize else "G")
    a2.set_title(f"Gradient component: G blocks ({k}×{k} tokens)")
    a2.grid(False)
    for b in range(1, N):
        a2.axhline(b * k - 0.5, color="k", lw=0.8)
        a2.axvline(b * k - 0.5, color="k", lw=0.8)
    centres = np.arange(N) * k + (k - 1) / 2
    ctx = [str(l) for l in labels] if labels is not None and len(labels) == N else [str(i) for i in range(N)]
    if tokens is not None and len(tokens) == k and N * k <= 48:
        pos = np.arange(N * k)
        a2.set_xticks(pos, [str(t) for t in tokens] * N, fontsize=6, rotation=90)
        a2.set_yticks(pos, [str(t) for t in tokens] * N, fontsize=6)
        a2.set_xlabel("token (within context block j)")
        a2.set_ylabel("token (within context block i)")
        top = a2.secondary_xaxis("top")
        top.set_xticks(centres, ctx, fontsize=7)
        top.tick_params(length=0)
        right = a2.secondary_yaxis("right")
        right.set_yticks(centres, ctx, fontsize=7, rotation=90, va="center")
        right.tick_params(length=0)
    else:
        rot = labels is not None
        a2.set_xticks(centres, ctx, rotation=45 if rot else 0, ha="right" if rot else "center")
        a2.set_yticks(centres, ctx)
        a2.set_xlabel("context j" + (f"  (tokens: {', '.join(map(str, tokens))})" if tokens is not None else ""))
        a2.set_ylabel("context i")
    fig.suptitle("Empirical NTK for a few contexts: K = R + G")
    return save(fig, out)
