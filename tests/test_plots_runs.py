"""ntkdyn.plots.runs: loading run logs and aligning seeds on the full-RL step (synthetic run directories)."""
import json

import numpy as np
import pytest
from run_logs import HEAD, STEPS, write_runs

from ntkdyn import plots as P


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return write_runs(tmp_path_factory.mktemp("runs"))


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


def test_load_runs_skips_bad_configs(tmp_path):
    for name, text in (("bad", "{not json"), ("list", "[1, 2]")):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(text)
        (d / "metrics.jsonl").write_text('{"step": 0, "reward": 1.0}\n')
    assert P.load_runs(tmp_path) == {}


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
