"""The paper's figures, drawn from run logs on disk (or from arrays given).

Every figure is a `matplotlib.figure.Figure` built directly (pyplot is never imported) and written twice by `save`:
PNG (dpi 150) and PDF, with fixed colours per recipe (`RECIPE_COLORS`).

  runs.py      reading run directories: Run, load_runs, series (seeds aligned on the full-RL step), parse_curve,
               curve_series
  style.py     colours, labels, the rc style, shared drawing pieces, save
  training.py  run-based figures: plot_reward, plot_confidence, plot_diversity, plot_dz_share, plot_head_norm,
               plot_ntk_drift; plot_all writes them all
  analysis.py  array-based figures: plot_feature_similarity (+ feature_table_markdown), plot_one_step(_split),
               plot_kernel, plot_pass_at_k, plot_claims (fig_claims: each claim's effect, CI and threshold)
"""
from ..rl.recipes import RECIPES
from .analysis import (feature_table_markdown, plot_claims, plot_feature_similarity, plot_kernel, plot_one_step,
                       plot_one_step_split, plot_pass_at_k)
from .runs import Run, curve_series, load_runs, parse_curve, series
from .style import RECIPE_COLORS, RECIPE_LABELS, save
from .training import (plot_all, plot_confidence, plot_diversity, plot_dz_share, plot_head_norm, plot_ntk_drift,
                       plot_reward)

__all__ = [
    "RECIPES",
    "RECIPE_COLORS",
    "RECIPE_LABELS",
    "Run",
    "load_runs",
    "series",
    "parse_curve",
    "curve_series",
    "plot_claims",
    "save",
    "plot_reward",
    "plot_confidence",
    "plot_diversity",
    "plot_dz_share",
    "plot_head_norm",
    "plot_ntk_drift",
    "plot_feature_similarity",
    "feature_table_markdown",
    "plot_one_step",
    "plot_one_step_split",
    "plot_pass_at_k",
    "plot_kernel",
    "plot_all",
]
