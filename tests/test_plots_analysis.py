"""ntkdyn.plots.analysis: the array-based figures (feature similarity + its table, one step, kernel)."""
import numpy as np
import pytest
from run_logs import check_figure_files

from ntkdyn import plots as P
from ntkdyn.plots import analysis, style


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
    monkeypatch.setattr(style, "DPI", 60)  # only speed: the figures are the same at 150


def test_feature_similarity(tmp_path):
    rng = np.random.default_rng(0)
    cp = np.clip(0.9 + 0.03 * rng.standard_normal(300), -1, 1)
    h = rng.standard_normal((6, 8)) + 3.0
    hn = h / np.linalg.norm(h, axis=1, keepdims=True)
    cos_mat = hn @ hn.T  # a square cosine matrix: its upper triangle is used
    np.testing.assert_allclose(analysis._cos_values(cos_mat), cos_mat[np.triu_indices(6, 1)])
    table = {"mean cos (prompts)": float(cp.mean()), "mean cos (positions)": 0.8, "s std / mean": 0.05, "N": 300}
    check_figure_files(P.plot_feature_similarity(cp, cos_mat, tmp_path / "feat", table=table), 2)
    check_figure_files(P.plot_feature_similarity(cp, [], tmp_path / "feat_empty"), 2)
    md = P.feature_table_markdown(table)
    assert md.splitlines()[0] == "| quantity | value |"
    assert "| N | 300 |" in md and "| mean cos (positions) | 0.8 |" in md
    md2 = P.feature_table_markdown({"gpt2": {"cos": 0.9, "s": 1.0}, "qwen": {"cos": 0.95}})
    lines = md2.splitlines()
    assert lines[0] == "| | cos | s |" and lines[3] == "| qwen | 0.95 |  |"


def test_one_step(tmp_path):
    rng = np.random.default_rng(1)
    actual = rng.standard_normal((4, 7)) * 0.01
    pred = actual * 1.02
    split = {"representation": np.abs(rng.standard_normal(4)), "gradient": np.abs(rng.standard_normal(4))}
    check_figure_files(P.plot_one_step(pred, actual, tmp_path / "one_split", split=split), 2)
    many = {"representation": rng.random(100), "gradient": rng.random(100)}
    check_figure_files(P.plot_one_step(pred, actual, tmp_path / "one_many", split=many), 2)
    check_figure_files(P.plot_one_step([], [], tmp_path / "one_empty", split={}), 2)
    with pytest.raises(ValueError):
        P.plot_one_step(np.ones(3), np.ones(4), tmp_path / "bad")


def test_kernel(tmp_path):
    rng = np.random.default_rng(2)
    N, k = 4, 3
    s = 1.0 + 0.05 * rng.standard_normal((N, N))
    s = (s + s.T) / 2
    A = rng.standard_normal((N * k, N * k))
    Gbig = A @ A.T
    G4 = Gbig.reshape(N, k, N, k).transpose(0, 2, 1, 3)
    labels = [f"ctx{i}" for i in range(N)]
    check_figure_files(P.plot_kernel(s, G4, tmp_path / "kernel", labels=labels, tokens=["a", "b", "c"]), 2)
    check_figure_files(P.plot_kernel(s, Gbig, tmp_path / "kernel_flat", normalize=True), 2)
    with pytest.raises(ValueError):
        P.plot_kernel(s, np.ones((N, N + 1, k, k)), tmp_path / "bad")
    with pytest.raises(ValueError):
        P.plot_kernel(np.ones((N, N + 1)), G4, tmp_path / "bad")


def test_plot_claims(tmp_path):
    from ntkdyn import stats

    def rec(n, *effs):
        return dict(n=n, effects=[stats.effect(name, v, thr, side).as_dict() for name, v, thr, side in effs])

    a = [rec("7", ("CF-RL − RL", [0.1, 0.12, 0.11], 0.0, "above"), ("entropy", [0.2, -0.1], 0.05, "below")),
         rec("4", ("rel. error", [0.01], 0.05, "below")), dict(n="6 (v2)", verdict="mixed")]
    b = [rec("7", ("CF-RL − RL", [-0.1, -0.12, -0.11], 0.0, "above"))]
    check_figure_files(P.plot_claims({"default": a, "SmolLM2": b}, tmp_path / "fig_claims"), 2)
    check_figure_files(P.plot_claims({"default": a}, tmp_path / "one"), 2)
    with pytest.raises(ValueError, match="effects"):
        P.plot_claims({"default": [dict(n="6 (v2)")]}, tmp_path / "none")
