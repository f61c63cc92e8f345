"""ntkdyn.plots: loading run logs, aligning seeds on the full-RL step, and every figure (PNG + PDF) on synthetic
run directories (3 recipes x 2 seeds, stage 1 for cf-rl / lp-ft, eval lines every few steps, keys missing)."""
import json
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from ntkdyn import plots as P

STEPS, HEAD, EVAL_EVERY = 10, 4, 3
SEED_OFFSET = {0: 1.0, 1: 3.0}  # train reward = 0.1 * rl_step + offset  ->  mean 2 + 0.1 x, std 1 (ddof 0)


def _curve(recipe, seed, after, fmt):
    ks = [1, 2, 4, 8, 16]
    base = 0.2 + 0.1 * seed + (0.2 if after else 0.0)
    vals = [min(1.0, base + 0.1 * i * (0.5 if after else 1.0)) for i in range(len(ks))]
    if fmt == "pairs":
        return [[k, v] for k, v in zip(ks, vals)]
    return {k: v for k, v in zip(ks, vals)}  # json turns the keys into strings


def _write_run(root, recipe, seed, head_steps=HEAD, config_head_steps="same", drop=(), garbage_tail=False,
               curve_fmt="pairs", no_dz=False):
    d = root / f"{recipe}_s{seed}"
    d.mkdir(parents=True)
    k1 = head_steps if recipe != "rl" else 0
    cfg = {"recipe": recipe, "seed": seed, "steps": STEPS,
           "head_steps": (k1 if config_head_steps == "same" else config_head_steps)}
    (d / "config.json").write_text(json.dumps(cfg))
    lines = []
    off = SEED_OFFSET[seed]
    for g in range(k1 + STEPS):
        stage1 = g < k1
        x = g - k1
        st = "stage1" if stage1 else "rl"
        ss = g if stage1 else g - k1
        if (stage1 and g == 0) or (not stage1 and (ss % EVAL_EVERY == 0 or ss == STEPS - 1)):
            ev = {"step": g, "stage": st, "stage_step": ss,
                  "eval/reward": 0.5 + 0.05 * x + 0.1 * seed,
                  "eval/entropy": 2.0 - 0.05 * x, "eval/max_prob": 0.3 + 0.02 * x,
                  "eval/unique_answers": 6 - 0.2 * x, "eval/unique_correct": 3 - 0.1 * x + seed}
            if g == 0 or ss == STEPS - 1:
                ev["eval/pass_at_k_curve"] = _curve(recipe, seed, after=(ss == STEPS - 1 and not stage1), fmt=curve_fmt)
            lines.append(ev)
        rec = {"step": g, "stage": st, "stage_step": ss, "reward": 0.1 * x + off, "reward_std": 0.2,
               "entropy": 2.0 - 0.04 * x, "max_prob": 0.3 + 0.01 * x, "loss": 0.1,
               "head_norm": 10.0 + (0.5 * (g + 1) if (recipe == "lp-ft" and stage1) else 0.05 * g),
               "feature_change": 0.0 if stage1 else 0.01 * ss * (0.5 if recipe == "lp-ft" else 1.0)}
        if not no_dz and (not stage1) and ss % 2 == 0:
            rec["dz_share/gradient"] = 0.6 - 0.01 * ss
            rec["dz_share/representation"] = 0.5 + 0.01 * ss
        if (seed, x) in drop:
            del rec["reward"]
        lines.append(rec)
    text = "\n".join(json.dumps(r) for r in lines) + "\n"
    if garbage_tail:
        text += '{"step": 99, "reward": '  # partial last line of a run still being written
    (d / "metrics.jsonl").write_text(text)
    return d


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        _write_run(root, "rl", seed, drop={(1, 5)}, garbage_tail=(seed == 1))
        _write_run(root, "cf-rl", seed, curve_fmt="dict")
        # lp-ft: no dz_share logged; seed 1's config lacks head_steps (the shift comes from the logs)
        _write_run(root, "lp-ft", seed, no_dz=True, config_head_steps=("same" if seed == 0 else None))
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("hi")
    return root


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
    monkeypatch.setattr(P, "DPI", 60)  # only speed: the figures are the same at 150


def _check_files(files, n):
    assert len(files) == n
    for f in files:
        assert os.path.isfile(f) and os.path.getsize(f) > 0, f
    assert sorted(os.path.splitext(f)[1] for f in files) == sorted([".pdf", ".png"] * (n // 2))
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(8)
        assert head.startswith(b"\x89PNG") if f.endswith(".png") else head.startswith(b"%PDF")


# ----------------------------------------------------------------------------- loading / aggregation


def test_load_runs(runs_root):
    rr = P.load_runs(runs_root)
    assert list(rr) == ["rl", "cf-rl", "lp-ft"]
    assert all(len(v) == 2 for v in rr.values())
    assert [r.seed for r in rr["rl"]] == [0, 1]
    assert all(isinstance(r, P.Run) and isinstance(r.config, dict) and isinstance(r.records, list)
               for v in rr.values() for r in v)
    # the partial last line is skipped
    assert all(rec.get("step") != 99 for rec in rr["rl"][1].records)
    assert P.load_runs(rr) == rr  # already loaded: passed through


def test_rl_step_shift(runs_root):
    rr = P.load_runs(runs_root)
    assert [r.stage1_steps for r in rr["rl"]] == [0, 0]
    assert [r.stage1_steps for r in rr["cf-rl"]] == [HEAD, HEAD]
    assert [r.stage1_steps for r in rr["lp-ft"]] == [HEAD, HEAD]  # seed 1 from step - stage_step in the logs
    x, v = rr["cf-rl"][0].values("reward")
    np.testing.assert_array_equal(x, np.arange(-HEAD, STEPS))
    np.testing.assert_allclose(v, 0.1 * x + 1.0)
    xg, _ = rr["cf-rl"][0].values("reward", x="step")
    np.testing.assert_array_equal(xg, np.arange(HEAD + STEPS))
    x, _ = rr["rl"][0].values("reward")
    np.testing.assert_array_equal(x, np.arange(STEPS))
    # eval lines of every recipe share the full-RL step grid
    for rc in ("rl", "cf-rl", "lp-ft"):
        x, _, _, n = P.series(rr[rc], "eval/reward")
        assert set([0.0, 3.0, 6.0, 9.0]) <= set(x.tolist())
        assert (x < 0).any() == (rc != "rl")


def test_series_alignment_mean_std(runs_root):
    rr = P.load_runs(runs_root)
    x, m, s, n = P.series(rr["cf-rl"], "reward")
    np.testing.assert_array_equal(x, np.arange(-HEAD, STEPS))
    np.testing.assert_allclose(m, 2.0 + 0.1 * x)  # (1 + 3) / 2
    np.testing.assert_allclose(s, 1.0)  # population std of {1, 3} around 2
    assert (n == 2).all()
    _, _, s1, _ = P.series(rr["cf-rl"], "reward", ddof=1)
    np.testing.assert_allclose(s1, np.sqrt(2.0))
    # rl seed 1 lacks reward at x = 5: n = 1 there, mean = seed 0 alone, no spread
    x, m, s, n = P.series(rr["rl"], "reward")
    i = int(np.where(x == 5)[0][0])
    assert n[i] == 1 and m[i] == pytest.approx(1.5) and s[i] == 0.0
    x2, _, _, n2 = P.series(rr["rl"], "reward", require_all=True)
    assert 5.0 not in x2 and (n2 == 2).all() and len(x2) == STEPS - 1
    # a key nobody logs
    x, m, s, n = P.series(rr["lp-ft"], "dz_share/gradient")
    assert x.size == m.size == s.size == n.size == 0
    # the eval keys are aligned between seeds
    x, m, s, n = P.series(rr["rl"], "eval/reward")
    np.testing.assert_array_equal(x, [0, 3, 6, 9])
    np.testing.assert_allclose(m, 0.55 + 0.05 * x)
    np.testing.assert_allclose(s, 0.05)


def test_parse_curve_both_formats():
    ks, v = P.parse_curve([[4, 0.7], [1, 0.3], [2, 0.5]])
    np.testing.assert_array_equal(ks, [1, 2, 4])
    np.testing.assert_allclose(v, [0.3, 0.5, 0.7])
    ks2, v2 = P.parse_curve(json.loads(json.dumps({1: 0.3, 4: 0.7, 2: 0.5})))  # string keys
    np.testing.assert_array_equal(ks2, ks)
    np.testing.assert_allclose(v2, v)
    ks3, v3 = P.parse_curve([{"k": 2, "value": 0.5}, {"k": 1, "value": 0.3}])
    np.testing.assert_array_equal(ks3, [1, 2])
    assert P.parse_curve(None)[0].size == 0
    assert P.parse_curve({"a": 1, 2: None})[0].size == 0


def test_curve_series(runs_root):
    rr = P.load_runs(runs_root)
    for rc in ("rl", "cf-rl"):  # "pairs" and "dict" on disk
        ks, m, s, n, xs = P.curve_series(rr[rc], which="first")
        np.testing.assert_array_equal(ks, [1, 2, 4, 8, 16])
        np.testing.assert_allclose(m, 0.25 + 0.1 * np.arange(5))  # seeds 0.2 and 0.3 offsets
        np.testing.assert_allclose(s, 0.05)
        assert (n == 2).all()
        assert xs == ([0.0, 0.0] if rc == "rl" else [-HEAD, -HEAD])
        _, _, _, _, xs2 = P.curve_series(rr[rc], which="stage2")  # first curve at rl_step >= 0
        assert xs2 == [STEPS - 1, STEPS - 1] if rc == "cf-rl" else xs2 == [0.0, 0.0]
        ks, m, s, n, xs = P.curve_series(rr[rc], which="last")
        np.testing.assert_allclose(m, 0.45 + 0.05 * np.arange(5))
        assert xs == [STEPS - 1, STEPS - 1]


def test_band_single_seed_has_no_band():
    fig = Figure()
    ax = fig.add_subplot()
    x = np.arange(3.0)
    assert P._band(ax, x, x, np.ones(3), np.ones(3, int), "r")
    assert len(ax.collections) == 0 and len(ax.lines) == 1
    assert P._band(ax, x, x, np.ones(3), np.full(3, 2), "r")
    assert len(ax.collections) == 1
    assert not P._band(ax, [], [], [], [], "r")


# ----------------------------------------------------------------------------- figures


def test_run_figures(runs_root, tmp_path):
    backend = matplotlib.get_backend()
    rc_before = dict(matplotlib.rcParams)
    out = tmp_path / "figs"
    _check_files(P.plot_reward(runs_root, out / "reward", threshold=2.5), 2)
    _check_files(P.plot_confidence(runs_root, out / "confidence_logp", with_logp=True), 2)  # logp: "no data"
    files = P.plot_all(runs_root, out / "all")
    _check_files(files, 10)
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
    _check_files(P.plot_reward(root, tmp_path / "a" / "reward"), 2)
    _check_files(P.plot_diversity(root, tmp_path / "a" / "diversity", before="stage2"), 2)
    _check_files(P.plot_head_norm(root, tmp_path / "a" / "head_norm"), 2)
    # no runs at all: every panel of every figure says "no data"
    (tmp_path / "empty").mkdir()
    assert P.load_runs(tmp_path / "empty") == {}
    _check_files(P.plot_all(tmp_path / "empty", tmp_path / "b"), 10)
    # a run directory given directly as the root
    assert list(P.load_runs(d)) == ["rl"]


def test_feature_similarity(tmp_path):
    rng = np.random.default_rng(0)
    cp = np.clip(0.9 + 0.03 * rng.standard_normal(300), -1, 1)
    h = rng.standard_normal((6, 8)) + 3.0
    hn = h / np.linalg.norm(h, axis=1, keepdims=True)
    cos_mat = hn @ hn.T  # a square cosine matrix: its upper triangle is used
    np.testing.assert_allclose(P._cos_values(cos_mat), cos_mat[np.triu_indices(6, 1)])
    table = {"mean cos (prompts)": float(cp.mean()), "mean cos (positions)": 0.8, "s std / mean": 0.05, "N": 300}
    _check_files(P.plot_feature_similarity(cp, cos_mat, tmp_path / "feat", table=table), 2)
    _check_files(P.plot_feature_similarity(cp, [], tmp_path / "feat_empty"), 2)
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
    _check_files(P.plot_one_step(pred, actual, tmp_path / "one_split", split=split), 2)
    many = {"representation": rng.random(100), "gradient": rng.random(100)}
    _check_files(P.plot_one_step(pred, actual, tmp_path / "one_many", split=many), 2)
    _check_files(P.plot_one_step([], [], tmp_path / "one_empty", split={}), 2)
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
    _check_files(P.plot_kernel(s, G4, tmp_path / "kernel", labels=labels, tokens=["a", "b", "c"]), 2)
    _check_files(P.plot_kernel(s, Gbig, tmp_path / "kernel_flat", normalize=True), 2)
    with pytest.raises(ValueError):
        P.plot_kernel(s, np.ones((N, N + 1, k, k)), tmp_path / "bad")


def test_save_strips_extension_and_creates_dirs(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    files = P.save(fig, tmp_path / "deep" / "dir" / "x.png")
    assert files == [str(tmp_path / "deep" / "dir" / "x.png"), str(tmp_path / "deep" / "dir" / "x.pdf")]
    _check_files(files, 2)


def test_no_pyplot_import():
    # load the module file alone (no jax via the package __init__): it must not pull in pyplot
    path = P.__file__
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('plots_alone', {path!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['plots_alone'] = m; spec.loader.exec_module(m); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
