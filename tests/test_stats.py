"""ntkdyn.stats against references: the t distribution against scipy.stats.t, the interval against its formula
with scipy's quantile, the verdict rule on hand-made records, items_needed against the closed form."""
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
