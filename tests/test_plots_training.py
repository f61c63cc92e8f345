"""ntkdyn.plots.training: every run-based figure (PNG + PDF) on synthetic run directories, with data and without."""
import json
import os

import matplotlib
import pytest
from run_logs import check_figure_files, write_runs

from ntkdyn import plots as P
from ntkdyn.plots import style


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return write_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
    monkeypatch.setattr(style, "DPI", 60)  # only speed: the figures are the same at 150


def test_run_figures(runs_root, tmp_path):
    backend = matplotlib.get_backend()
    rc_before = dict(matplotlib.rcParams)
    out = tmp_path / "figs"
    check_figure_files(P.plot_reward(runs_root, out / "reward", threshold=2.5), 2)
    check_figure_files(P.plot_confidence(runs_root, out / "confidence_logp", with_logp=True), 2)  # logp: "no data"
    files = P.plot_all(runs_root, out / "all")
    check_figure_files(files, 10)
    names = sorted({os.path.splitext(os.path.basename(f))[0] for f in files})
    assert names == sorted(["fig_reward", "fig_confidence", "fig_diversity", "fig_dz_share", "fig_head_norm"])
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == rc_before


def test_run_figures_missing_data(tmp_path):
    # a single seed of one recipe with only training reward: every panel either draws or says "no data"
    root = tmp_path / "runs"
    d = root / "only"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"recipe": "rl", "seed": 0, "steps": 3, "head_steps": None}))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps({"step": i, "reward": 0.1 * i}) for i in range(3)))
    check_figure_files(P.plot_reward(root, tmp_path / "a" / "reward"), 2)
    check_figure_files(P.plot_diversity(root, tmp_path / "a" / "diversity", before="stage2"), 2)
    check_figure_files(P.plot_head_norm(root, tmp_path / "a" / "head_norm"), 2)
    # no runs at all: every panel of every figure says "no data"
    (tmp_path / "empty").mkdir()
    assert P.load_runs(tmp_path / "empty") == {}
    check_figure_files(P.plot_all(tmp_path / "empty", tmp_path / "b"), 10)
    # a run directory given directly as the root
    assert list(P.load_runs(d)) == ["rl"]


def test_ntk_drift_figure(tmp_path):
    # fig_ntk_drift joins plot_all only when some run tracked the eNTK (ntk/align_* keys)
    root = tmp_path / "runs"
    for recipe, align in (("rl", (1.0, 0.9, 0.8)), ("cf-rl", (1.0, 0.95, 0.9))):
        d = root / recipe
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"recipe": recipe, "seed": 0, "steps": 3, "head_steps": 0}))
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(
            {"step": i, "stage": "rl", "stage_step": i, "reward": 0.1 * i, **{f"ntk/align_{c}": a for c in "KRG"}})
            for i, a in enumerate(align)))
    files = P.plot_all(root, tmp_path / "figs")
    check_figure_files(files, 12)
    assert {os.path.basename(f) for f in files} >= {"fig_ntk_drift.png", "fig_ntk_drift.pdf"}
    check_figure_files(P.plot_ntk_drift(tmp_path / "nothing", tmp_path / "e" / "drift"), 2)  # "no data" panels
