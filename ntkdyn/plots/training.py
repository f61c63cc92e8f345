"""The run-based figures (spec §5, claims 2 and 5-8), drawn from run directories: reward, confidence, diversity,
the R/G share of Δz, the head norm and feature change. Each takes `runs_root` (a directory whose run directories
are found one level deep, or the dict that `load_runs` returns) and `out` (a path prefix without extension) and
returns the written [png, pdf]; `plot_all` writes all five.

Curves are mean ± std over seeds per recipe against the full-RL step (see `runs`): stage 1 is shaded at x < 0 and
x = 0 is marked "stage 2 starts".
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.lines import Line2D

from ..rl.recipes import RECIPES
from .runs import Run, curve_series, is_number, load_runs, series
from .style import (X_LABEL, band, fig_legend, mark_stage2, new_figure, no_data, recipe_color, recipe_handles,
                    save, styled)

__all__ = ["plot_reward", "plot_confidence", "plot_diversity", "plot_dz_share", "plot_head_norm", "plot_ntk_drift",
           "plot_all"]


def _has_stage1(runs_by_recipe: Mapping[str, list[Run]]) -> bool:
    return any(r.stage1_steps > 0 for runs in runs_by_recipe.values() for r in runs)


def _first_key(runs_by_recipe: Mapping[str, list[Run]], keys: Sequence[str]) -> str | None:
    """The first of `keys` that some run logs as a number."""
    for k in keys:
        for runs in runs_by_recipe.values():
            for r in runs:
                if any(is_number(rec.get(k)) for rec in r.records):
                    return k
    return None


def _plot_recipes(ax, runs_by_recipe, key, *, x="rl_step", recipes=None, **style) -> bool:
    drawn = False
    for rc in recipes or runs_by_recipe:
        runs = runs_by_recipe.get(rc, [])
        if not runs or key is None:
            continue
        xs, m, s, n = series(runs, key, x=x)
        drawn |= band(ax, xs, m, s, n, recipe_color(rc), **style)
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
        mark_stage2(ax, any_stage1)
    else:
        no_data(ax, what or ", ".join(k for k, _ in metrics if k))
    return drawn


def _n_seeds(runs_by_recipe) -> dict[str, int]:
    return {rc: len(runs) for rc, runs in runs_by_recipe.items()}


# ----------------------------------------------------------------------------- the figures

# ============================================================================ run-based figures


@styled
def plot_reward(runs_root, out, threshold: float | None = None) -> list[str]:
    """Training reward (light line) and eval/reward (markers) vs full-RL step, mean ± std over seeds per recipe;
    stage 1 shaded, x = 0 marked "stage 2 starts". `threshold` optionally draws a horizontal reference line."""
    rr = load_runs(runs_root)
    fig, (ax,) = new_figure(1, width=6.4, height=4.0)
    d1 = _plot_recipes(ax, rr, "reward", lw=1.0, alpha=0.45, band_alpha=0.10)
    d2 = _plot_recipes(ax, rr, "eval/reward", lw=1.8, marker="o", ms=4.5, band_alpha=0.22, zorder=3)
    ax.set_title("Reward during post-training (mean ± std over seeds)")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel("reward")
    if d1 or d2:
        mark_stage2(ax, _has_stage1(rr))
        if threshold is not None:
            ax.axhline(threshold, color="0.5", ls="--", lw=0.9)
    else:
        no_data(ax, "reward, eval/reward")
    hs = recipe_handles(rr, _n_seeds(rr)) + [
        Line2D([], [], color="0.3", lw=1.0, alpha=0.45, label="train reward"),
        Line2D([], [], color="0.3", lw=1.8, marker="o", ms=4.5, label="eval reward"),
    ]
    if threshold is not None:
        hs.append(Line2D([], [], color="0.5", ls="--", lw=0.9, label=f"threshold {threshold:g}"))
    fig_legend(fig, hs)
    return save(fig, out)


@styled
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
    fig, axes = new_figure(len(panels))
    st1 = _has_stage1(rr)
    for ax, (keys, title, ylabel) in zip(axes, panels):
        key = _first_key(rr, keys)
        style = {"marker": "o", "ms": 3.5} if key and key.startswith("eval/") else {"lw": 1.2}
        t = f"{title}\n[{key}]" if key else title
        _panel_lines(ax, rr, [(key, style)], title=t, ylabel=ylabel, any_stage1=st1, what=" / ".join(keys))
    fig_legend(fig, recipe_handles(rr, _n_seeds(rr)))
    return save(fig, out)


@styled
def plot_diversity(runs_root, out, before: str = "first") -> list[str]:
    """Panel 1: eval/unique_correct (solid) and eval/unique_answers (dashed) vs full-RL step. Panel 2: pass@k
    vs k (log2 axis) from each run's first ("before", dashed) and last ("after", solid) eval/pass_at_k_curve,
    mean ± std over seeds per recipe. before="stage2" takes the "before" curve at the start of stage 2 instead
    (the first one at rl_step >= 0)."""
    rr = load_runs(runs_root)
    fig, (a1, a2) = new_figure(2)
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
            drawn |= band(a2, ks, m, s, n, recipe_color(rc), ls=ls, marker=mk, ms=3.5)
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
        no_data(a2, "eval/pass_at_k_curve")
    if drawn1:
        a1.legend(handles=[Line2D([], [], color="0.3", marker="o", ms=3.5, label="unique correct"),
                           Line2D([], [], color="0.3", ls="--", marker="s", ms=3.0, label="unique answers")],
                  loc="best", framealpha=0.8)
    if drawn:
        before_label = "before (" + ("first eval" if before == "first" else "stage-2 start") + ")"
        a2.legend(handles=[Line2D([], [], color="0.3", ls="--", marker="v", ms=3.5, label=before_label),
                           Line2D([], [], color="0.3", marker="o", ms=3.5, label="after (last eval)")],
                  loc="lower right", framealpha=0.8)
    fig_legend(fig, recipe_handles(rr, _n_seeds(rr)))
    return save(fig, out)


@styled
def plot_dz_share(runs_root, out) -> list[str]:
    """‖Δz_G‖/‖Δz‖ and ‖Δz_R‖/‖Δz‖ vs full-RL step, one panel each, for rl and cf-rl (and lp-ft, if logged)."""
    rr = load_runs(runs_root)
    fig, axes = new_figure(2)
    st1 = _has_stage1(rr)
    for ax, comp, sym in zip(axes, ("gradient", "representation"), ("G", "R")):
        _panel_lines(ax, rr, [(f"dz_share/{comp}", {"marker": "o", "ms": 3.0})],
                     title=f"{comp.capitalize()} share ‖Δz_{sym}‖ / ‖Δz‖", ylabel="share", any_stage1=st1)
    present = [rc for rc, runs in rr.items() if any(r.has("dz_share/gradient") or r.has("dz_share/representation")
                                                     for r in runs)]
    fig_legend(fig, recipe_handles(present or list(rr), _n_seeds(rr)))
    return save(fig, out)


@styled
def plot_head_norm(runs_root, out) -> list[str]:
    """Head norm ‖W‖_F and feature change vs full-RL step for CF-RL vs LP-FT (vs RL): LP inflates ‖W‖_F and
    reduces later feature change; CF-RL stage 1 does not (spec 5.4 / claim 8)."""
    rr = load_runs(runs_root)
    order = [rc for rc in ("cf-rl", "lp-ft", "rl") if rc in rr] + [rc for rc in rr if rc not in RECIPES]
    fig, axes = new_figure(2)
    st1 = _has_stage1(rr)
    draw = order[::-1]  # RL first (the reference), CF-RL on top
    _panel_lines(axes[0], rr, [("head_norm", {})], title="Head norm ‖W‖_F", ylabel="‖W‖_F",
                 any_stage1=st1, recipes=draw)
    _panel_lines(axes[1], rr, [("feature_change", {})], title="Feature change ‖h_t − h_0‖",
                 ylabel="feature change", any_stage1=st1, recipes=draw)
    fig_legend(fig, recipe_handles(order, _n_seeds(rr)))
    return save(fig, out)


@styled
def plot_ntk_drift(runs_root, out) -> list[str]:
    """eNTK drift during training: the alignment ⟨K_t, K_0⟩/(‖K_t‖‖K_0‖) of the trace kernels on the fixed probe
    contexts with step 0's, for K = R + G, R and G (one panel each), vs full-RL step, per recipe."""
    rr = load_runs(runs_root)
    fig, axes = new_figure(3)
    st1 = _has_stage1(rr)
    for ax, comp in zip(axes, ("K", "R", "G")):
        name = {"K": "K = R + G", "R": "R (features)", "G": "G (gradient)"}[comp]
        _panel_lines(ax, rr, [(f"ntk/align_{comp}", {"marker": "o", "ms": 3.0})],
                     title=f"alignment of {name} with step 0", ylabel="alignment", any_stage1=st1)
    tracked = {rc: [r for r in runs if r.has("ntk/align_K")] for rc, runs in rr.items()}
    present = [rc for rc, runs in tracked.items() if runs]
    fig_legend(fig, recipe_handles(present or list(rr), _n_seeds(tracked)))  # n: the runs that tracked the drift
    return save(fig, out)


def plot_all(runs_root, out_dir) -> list[str]:
    """The run-based figures as out_dir/fig_{reward,confidence,diversity,dz_share,head_norm}.{png,pdf}, and
    fig_ntk_drift when some run tracked the eNTK (ntk/align_*)."""
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
    if any(r.has("ntk/align_K") for runs in rr.values() for r in runs):
        files += plot_ntk_drift(rr, os.path.join(out_dir, "fig_ntk_drift"))
    return files
