"""ntkdyn.stats against references: the t distribution against scipy.stats.t, the interval against its formula
with scipy's quantile, the verdict rule on hand-made records, items_needed against the closed form, the rerun
probabilities against a simulation of their model."""
import math

import numpy as np
import pytest

from ntkdyn import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 15, 30, 57, 200, 5000])
def test_t_quantile_and_cdf_match_scipy(df):
    for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.025):
        assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-10)
    for t in (-3.0, -0.5, 0.0, 0.7, 2.0, 12.0):
        assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9, abs=1e-12)


def test_t_interval_matches_scipy():
    x = np.array([0.3, -0.1, 0.25, 0.4, 0.05, 0.12, 0.31, -0.02, 0.2, 0.18])
    m, lo, hi, s, n = stats.t_interval(x)
    ref_lo, ref_hi = scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    assert (n, m) == (10, pytest.approx(x.mean()))
    assert s == pytest.approx(x.std(ddof=1))
    assert (lo, hi) == (pytest.approx(ref_lo, rel=1e-9), pytest.approx(ref_hi, rel=1e-9))
    assert stats.t_interval([1.0, None, float("nan")])[1:3] == (-math.inf, math.inf)  # one item: no interval
    assert math.isnan(stats.t_interval([])[0])


def test_verdicts_on_hand_made_records():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 10)
    clear = stats.effect("CF-RL − RL", 0.3 + noise, 0.0, "above")
    assert clear.verdict == stats.SUPPORTED and clear.needed is None and clear.lo > 0
    zero = stats.effect("CF-RL − RL", noise - noise.mean(), 0.0, "above")  # mean exactly 0: the CI straddles it
    assert zero.verdict == stats.INCONCLUSIVE and zero.lo < 0 < zero.hi and zero.needed is None
    reversed_ = stats.effect("CF-RL − RL", -0.3 + noise, 0.0, "above")
    assert reversed_.verdict == stats.NOT_SUPPORTED
    below = stats.effect("relative error", 0.01 + noise / 100, 0.05, "below", unit="probes")
    assert below.verdict == stats.SUPPORTED and below.unit == "probes"
    one = stats.effect("x", [1.0], 0.0, "above")
    assert one.verdict == stats.INCONCLUSIVE and one.n == 1
    with pytest.raises(ValueError, match="side"):
        stats.verdict(0, 1, 0, "left")


def test_combine():
    S, N, I = stats.SUPPORTED, stats.NOT_SUPPORTED, stats.INCONCLUSIVE
    assert stats.combine([S, S]) == S
    assert stats.combine([S, I]) == I
    assert stats.combine([I, N, S]) == N
    assert stats.combine([]) == I


@pytest.mark.parametrize("mean,s", [(0.1, 0.2), (0.02, 0.05), (-0.3, 1.0), (0.5, 0.01)])
def test_items_needed_closed_form(mean, s):
    n = stats.items_needed(mean, s, 0.0)
    # the closed form: the smallest n >= 2 with t_{0.975, n-1} s / sqrt(n) < |mean|, searched from 2 with scipy
    ref = next(k for k in range(2, 10 ** 6) if scipy_stats.t.ppf(0.975, k - 1) * s / math.sqrt(k) < abs(mean))
    assert n == ref
    assert stats.items_needed(0.0, 1.0, 0.0) is None
    assert stats.items_needed(1.0, 0.0, 0.0) == 2


def test_inconclusive_states_seeds_needed():
    e = stats.effect("d", [0.05, -0.02, 0.11, 0.0, 0.06], 0.0, "above")
    assert e.verdict == stats.INCONCLUSIVE
    ref = next(k for k in range(2, 10 ** 6)
               if scipy_stats.t.ppf(0.975, k - 1) * e.s / math.sqrt(k) < abs(e.mean))
    assert e.needed == ref > e.n


@pytest.mark.parametrize("mean,s,n,threshold,side", [(-0.138, 0.164, 10, -0.05, "above"),
                                                      (0.03, 0.04, 10, 0.0, "above"),
                                                      (0.012, 0.05, 5, 0.05, "below"), (-0.5, 0.2, 3, 0.0, "below")])
def test_rerun_probabilities_against_simulation(mean, s, n, threshold, side):
    """The closed form against its model drawn: a true mean μ ~ N(mean, s²/n) (flat prior), a rerun's mean
    M' ~ N(μ, s²/n), its interval M' ± t_{0.975, n−1} s/√n judged by stats.verdict."""
    p = stats.rerun(mean, s, n, threshold, side)
    assert sum(p.values()) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    se, draws = s / math.sqrt(n), 400_000
    m2 = rng.normal(rng.normal(mean, se, draws), se)
    h = scipy_stats.t.ppf(0.975, n - 1) * se
    got = {v: 0 for v in p}
    for lo, hi in zip(m2 - h, m2 + h):
        got[stats.verdict(lo, hi, threshold, side)] += 1
    for v in p:
        assert got[v] / draws == pytest.approx(p[v], abs=0.004), v


def test_rerun_edge_cases_and_conjunction():
    S, N, I = stats.SUPPORTED, stats.NOT_SUPPORTED, stats.INCONCLUSIVE
    assert stats.rerun(0.2, 0.0, 5, 0.0, "above") == {S: 1.0, N: 0.0, I: 0.0}  # no spread: the same verdict
    assert stats.rerun(0.2, 0.0, 5, 0.5, "above") == {S: 0.0, N: 1.0, I: 0.0}
    assert stats.rerun(0.2, 0.1, 1, 0.0, "above") is None and stats.rerun(math.nan, 0.1, 5, 0.0, "above") is None
    with pytest.raises(ValueError, match="side"):
        stats.rerun(0.2, 0.1, 5, 0.0, "up")
    # far from the threshold: certain; on it (mean = threshold): never decided the claim's way more than half
    assert stats.rerun(5.0, 0.1, 10, 0.0, "above")[S] == pytest.approx(1.0)
    on = stats.rerun(0.0, 0.1, 10, 0.0, "above")
    assert on[S] == pytest.approx(on[N]) and on[S] < 0.5
    e = stats.effect("d", [0.05, -0.02, 0.11, 0.0, 0.06], 0.0, "above")
    assert e.rerun == stats.rerun(e.mean, e.s, e.n, 0.0, "above") and e.as_dict()["rerun"] == e.rerun
    a, b = {S: 0.9, N: 0.05, I: 0.05}, {S: 0.5, N: 0.2, I: 0.3}
    c = stats.combine_rerun([a, b])  # independent parts: all supported / some not supported / the rest
    assert c[S] == pytest.approx(0.45) and c[N] == pytest.approx(1 - 0.95 * 0.8)
    assert c[I] == pytest.approx(1 - c[S] - c[N])
    assert stats.combine_rerun([]) is None and stats.combine_rerun([a, None]) is None
