"""ntkdyn.plots.style: bands, saving (PNG + PDF, atomic), the table-cell format, and no pyplot anywhere."""
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from run_logs import check_figure_files

from ntkdyn import plots as P
from ntkdyn.plots import style


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
    monkeypatch.setattr(style, "DPI", 60)  # only speed: the figures are the same at 150


def test_band_single_seed_has_no_band():
    fig = Figure()
    ax = fig.add_subplot()
    x = np.arange(3.0)
    assert style.band(ax, x, x, np.ones(3), np.ones(3, int), "r")
    assert len(ax.collections) == 0 and len(ax.lines) == 1
    assert style.band(ax, x, x, np.ones(3), np.full(3, 2), "r")
    assert len(ax.collections) == 1
    assert not style.band(ax, [], [], [], [], "r")


def test_save_strips_extension_and_creates_dirs(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    files = P.save(fig, tmp_path / "deep" / "dir" / "x.png")
    assert files == [str(tmp_path / "deep" / "dir" / "x.png"), str(tmp_path / "deep" / "dir" / "x.pdf")]
    check_figure_files(files, 2)
    assert sorted(os.listdir(tmp_path / "deep" / "dir")) == ["x.pdf", "x.png"]  # no temporary left behind


def test_recipe_colors_and_labels():
    assert set(P.RECIPES) == set(P.RECIPE_COLORS) == set(P.RECIPE_LABELS)
    assert style.recipe_color("rl") == P.RECIPE_COLORS["rl"]
    assert style.recipe_color("other") == style.recipe_color("other")  # stable for unknown recipes
    assert style.recipe_label("cf-rl") == "CF-RL" and style.recipe_label("other") == "other"


def test_format_value():
    assert style.format_value(300) == "300"
    assert style.format_value(0.8) == "0.8"
    assert style.format_value(0.98924) == "0.9892"
    assert style.format_value(1e-5) == "1.000e-05"
    assert style.format_value(True) == "True" and style.format_value(None) == "None"
    assert style.format_value([1, 0.5]) == "1, 0.5"
    assert style.format_value(np.float32(0.25)) == "0.25"


def test_no_pyplot_import():
    # importing every figure module must not pull in pyplot (no backend or global figure state is touched)
    code = ("import sys; import ntkdyn.plots, ntkdyn.reproduce, ntkdyn.experiments.features, "
            "ntkdyn.experiments.kernel; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
