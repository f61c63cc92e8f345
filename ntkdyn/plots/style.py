"""The look shared by every figure: fixed recipe colours and labels, the rc style, figure construction, the
common drawing pieces (mean ± std bands, the stage-2 marker, legends, "no data"), and `save` (PNG + PDF).

Every figure is a `matplotlib.figure.Figure` built directly (pyplot is never imported, so no backend or global
figure state is touched: safe inside notebooks and interactive sessions) and written twice by `save`: PNG (dpi
150) and PDF.  Colours are fixed per recipe (`RECIPE_COLORS`) so that every figure reads the same way.
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Mapping

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..io import atomic_file

__all__ = ["RECIPE_COLORS", "RECIPE_LABELS", "DPI", "STYLE", "X_LABEL", "save", "styled", "new_figure",
           "recipe_color", "recipe_label", "no_data", "band", "mark_stage2", "recipe_handles", "fig_legend",
           "format_value"]

RECIPE_COLORS = {"rl": "#1f77b4", "cf-rl": "#d62728", "lp-ft": "#2ca02c"}
RECIPE_LABELS = {"rl": "RL", "cf-rl": "CF-RL", "lp-ft": "LP-FT"}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e")

DPI = 150
# applied with rc_context around building and saving each figure (restored afterwards)
STYLE = {
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


def save(fig: Figure, path_without_ext) -> list[str]:
    """Write `fig` to <path>.png (dpi 150) and <path>.pdf (a trailing .png / .pdf on the path is dropped);
    parent directories are created. Returns [png, pdf]."""
    base = os.fspath(path_without_ext)
    if base.lower().endswith((".png", ".pdf")):
        base = base[:-4]
    png, pdf = f"{base}.png", f"{base}.pdf"
    engine = fig.get_layout_engine()
    with matplotlib.rc_context(STYLE):
        with atomic_file(png) as tmp:  # parent directories are created; no half-written figure remains
            fig.savefig(tmp, dpi=DPI, format="png", metadata={"Software": "ntkdyn"})
        # the PDF reuses the layout just computed (constrained layout is the costliest part of a save)
        if engine is not None:
            fig.set_layout_engine("none")
        try:
            with atomic_file(pdf) as tmp:
                fig.savefig(tmp, dpi=DPI, format="pdf", metadata={"Creator": "ntkdyn", "CreationDate": None})
        finally:
            if engine is not None:
                fig.set_layout_engine(engine)
    return [png, pdf]


def styled(fn):
    """Run a figure function under the module style (rc_context: global rcParams are restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Figure, list]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def recipe_color(recipe: str) -> str:
    if recipe in RECIPE_COLORS:
        return RECIPE_COLORS[recipe]
    return _EXTRA_COLORS[sum(map(ord, recipe)) % len(_EXTRA_COLORS)]


def recipe_label(recipe: str) -> str:
    return RECIPE_LABELS.get(recipe, recipe)


def no_data(ax, what: str = "") -> None:
    ax.text(
        0.5, 0.5, "no data" + (f"\n({what})" if what else ""), transform=ax.transAxes,
        ha="center", va="center", fontsize=11, color="0.45",
    )


def band(ax, x, mean, std, n, color, *, ls="-", lw=1.6, marker=None, ms=4.0, alpha=1.0, band_alpha=0.18,
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


def mark_stage2(ax, any_stage1: bool) -> None:
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


def recipe_handles(recipes: Iterable[str], n_seeds: Mapping[str, int] | None = None) -> list:
    hs = []
    for rc in recipes:
        lab = recipe_label(rc) + (f" (n={n_seeds[rc]})" if n_seeds and rc in n_seeds else "")
        hs.append(Patch(facecolor=recipe_color(rc), edgecolor=recipe_color(rc), label=lab))
    return hs


def fig_legend(fig: Figure, handles: list) -> None:
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)

def format_value(v) -> str:
    """A value as a table cell: 4 significant digits (scientific outside [1e-3, 1e4)), ints as ints, sequences
    comma-separated."""
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
        return ", ".join(format_value(e) for e in np.asarray(v).ravel().tolist())
    try:
        return format_value(float(v))  # 0-d arrays (e.g. jax scalars)
    except (TypeError, ValueError):
        return str(v)
