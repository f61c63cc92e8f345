"""Statistical verdicts: an effect measured on n independent items (seeds, or the prompts/probes a base-model claim
averages), its mean, a 95 % confidence interval, the verdict against a pre-registered threshold and the number of
items that would decide it.

Interval: Student's t, mean ± t_{1−α/2, n−1} · s/√n (s the sample standard deviation, ddof = 1). Why t and not a
bootstrap: the reproduction has n ≈ 5-10 seeds; a percentile bootstrap at that n is known to undercover (its
interval is about √((n−1)/n) times too narrow and ignores the extra spread of s, i.e. it behaves like a z interval),
while the t interval is exact for normal effects and robust enough for the roughly symmetric per-seed differences
measured here. The same function serves the claims measured once on the base model, with the prompts / probes as
the items (an interval over items, conditional on the one base model).

The t quantile is computed here, without scipy (a runtime dependency only for this would be heavy): the Student t
CDF through the regularized incomplete beta function (Lentz's continued fraction, Numerical Recipes §6.4) and the
quantile by bisection to 1e-12; tests compare both with scipy.stats.t.

Verdict rule (docs/claims.md, v3): with `side` "above" (the claim says effect > threshold) or "below":
  supported      the CI lies wholly on the claim's side of the threshold,
  not supported  the CI lies wholly on the other side,
  inconclusive   the CI contains the threshold (or fewer than 2 items: no interval);
a claim of several effects (a conjunction) is supported iff every part is, not supported iff some part is, else
inconclusive (`combine`). "cannot show on this setting" is decided by the claim, not here.
Seeds needed: the smallest n ≥ 2 with t_{0.975, n−1} · s/√n < |mean − threshold| (the observed mean and spread taken
as the truth); None when mean = threshold or s is not finite.

Same verdict on a rerun (`rerun`, `combine_rerun`; docs/claims.md, v3, "Verdict stability"): the probability of each
verdict in an independent rerun of the same size (new seeds or items; another machine's rounding makes the seeds'
trajectories part ways after the first flipped token, so a `--perturb` rerun is largely one), predicted from the
observed mean m, spread s and n. The rerun's mean M' is drawn from the flat-prior predictive N(m, 2 s²/n) (the
unknown true mean's uncertainty plus the rerun's own), its half-width is taken as the observed h = t_{0.975, n−1}·s/√n:
  P(interval wholly above θ) = 1 − Φ((θ + h − m) / (s √(2/n))),   P(wholly below θ) = Φ((θ − h − m) / (s √(2/n))),
mapped to supported / not supported by the claim's side, the rest inconclusive. For a conjunction the parts are taken
as independent (they share seeds, so this is an approximation): P(supported) = Π P_i(supported), P(not supported) =
1 − Π (1 − P_i(not supported)). A verdict with a low probability is one that another machine may move.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["SUPPORTED", "NOT_SUPPORTED", "INCONCLUSIVE", "CANNOT", "Effect", "t_cdf", "t_quantile", "t_interval",
           "effect", "verdict", "items_needed", "combine", "rerun", "combine_rerun", "FRAGILE"]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
CANNOT = "cannot show on this setting"
SIDES = ("above", "below")
MAX_ITEMS = 100_000  # items_needed gives up (None) beyond this
FRAGILE = 0.9  # a verdict whose probability on a rerun (`rerun`) is below this is marked as one a rerun may move


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` > 0 degrees of freedom: 1 − ½ I_{df/(df+t²)}(df/2, ½) for t ≥ 0."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (0 < p < 1), by bisection of t_cdf to 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values, level: float = 0.95) -> tuple[float, float, float, float, int]:
    """(mean, lo, hi, s, n) of the finite values: mean ± t_{(1+level)/2, n−1} · s/√n, s with ddof 1. With n = 1 the
    interval is (−inf, inf) and s NaN; with n = 0 everything is NaN."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    m = float(v.mean())
    if n == 1:
        return m, -math.inf, math.inf, math.nan, 1
    s = float(v.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * s / math.sqrt(n)
    return m, m - half, m + half, s, n


def verdict(lo: float, hi: float, threshold: float, side: str) -> str:
    """The v3 rule on an interval [lo, hi]: SUPPORTED when it lies wholly on `side` ("above" / "below") of
    `threshold`, NOT_SUPPORTED when wholly on the other side, INCONCLUSIVE otherwise (also for NaN bounds)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    above, below = lo > threshold, hi < threshold
    if side == "above":
        return SUPPORTED if above else NOT_SUPPORTED if below else INCONCLUSIVE
    return SUPPORTED if below else NOT_SUPPORTED if above else INCONCLUSIVE


def items_needed(mean: float, s: float, threshold: float, level: float = 0.95) -> int | None:
    """The smallest n ≥ 2 with t_{(1+level)/2, n−1} · s/√n < |mean − threshold|: how many seeds (items) would decide
    the verdict if the observed mean and spread were the truth. None when it cannot (mean on the threshold, s not
    finite) or would need more than MAX_ITEMS. s = 0 and mean ≠ threshold: 2."""
    gap = abs(mean - threshold)
    if not (np.isfinite(gap) and np.isfinite(s)) or gap == 0:
        return None
    if s == 0:
        return 2
    q = 0.5 + level / 2.0
    # the normal bound gives a lower start: t > z, so n ≥ (z s / gap)²
    z = t_quantile(q, 1e9)
    n = max(2, int((z * s / gap) ** 2))
    while n <= MAX_ITEMS:
        if t_quantile(q, n - 1) * s / math.sqrt(n) < gap:
            return n
        n += 1
    return None


def _phi(z: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def rerun(mean: float, s: float, n: int, threshold: float, side: str, level: float = 0.95) -> dict | None:
    """{verdict: probability} of SUPPORTED, NOT_SUPPORTED and INCONCLUSIVE in an independent rerun with n items,
    predicted from the observed mean and s (module docstring: the rerun's mean ~ N(mean, 2 s²/n), its half-width the
    observed t_{(1+level)/2, n−1} · s/√n). s = 0: the observed verdict with probability 1. None when n < 2 or mean / s
    is not finite."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if n < 2 or not (np.isfinite(mean) and np.isfinite(s)):
        return None
    se = s / math.sqrt(n)
    if se == 0:
        v = verdict(mean, mean, threshold, side)
        return {k: float(k == v) for k in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)}
    h = t_quantile(0.5 + level / 2.0, n - 1) * se
    sd = math.sqrt(2.0) * se
    high = 1.0 - _phi((threshold + h - mean) / sd)  # the rerun's interval wholly above the threshold
    low = _phi((threshold - h - mean) / sd)  # wholly below
    sup, nsup = (high, low) if side == "above" else (low, high)
    return {SUPPORTED: sup, NOT_SUPPORTED: nsup, INCONCLUSIVE: max(0.0, 1.0 - sup - nsup)}


def combine_rerun(parts) -> dict | None:
    """The rerun probabilities of a conjunction from its parts' (`rerun` dicts, taken as independent): supported iff
    every part is, not supported iff some part is (as `combine`). None when a part has none or there are no parts."""
    parts = list(parts)
    if not parts or any(p is None for p in parts):
        return None
    sup = float(np.prod([p[SUPPORTED] for p in parts]))
    nsup = 1.0 - float(np.prod([1.0 - p[NOT_SUPPORTED] for p in parts]))
    return {SUPPORTED: sup, NOT_SUPPORTED: nsup, INCONCLUSIVE: max(0.0, 1.0 - sup - nsup)}


@dataclasses.dataclass(frozen=True)
class Effect:
    """One effect of a claim over its items: `name` (what is measured), `values` (one per item: seed or prompt),
    `threshold`, `side` ("above" / "below": where the claim puts the effect), `unit` ("seeds", "prompts",
    "probes", ...). Derived: mean, the 95 % t interval (lo, hi), s, n, `verdict`, `needed` (items that would
    decide it at the observed mean and spread; only for an inconclusive verdict) and `rerun` (each verdict's
    probability in an independent rerun of the same size: `rerun`; None with fewer than 2 items)."""

    name: str
    values: tuple
    threshold: float
    side: str
    unit: str = "seeds"
    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    s: float = math.nan
    n: int = 0
    verdict: str = INCONCLUSIVE
    needed: int | None = None
    rerun: dict | None = None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["values"] = list(self.values)
        return d


def effect(name: str, values, threshold: float, side: str, unit: str = "seeds", level: float = 0.95) -> Effect:
    """An Effect of `values` (non-finite and None values dropped) against `threshold` on `side`: its mean, t
    interval, verdict, when inconclusive the items needed, and the verdicts' probabilities on a rerun."""
    vals = tuple(float(x) for x in values if x is not None and np.isfinite(x))
    m, lo, hi, s, n = t_interval(vals, level)
    v = verdict(lo, hi, threshold, side) if n >= 2 else INCONCLUSIVE
    need = items_needed(m, s, threshold, level) if v == INCONCLUSIVE and n >= 2 else None
    return Effect(name, vals, float(threshold), side, unit, m, lo, hi, s, n, v, need,
                  rerun(m, s, n, threshold, side, level))


def combine(verdicts) -> str:
    """The verdict of a conjunction: SUPPORTED iff every part is, NOT_SUPPORTED iff some part is, else
    INCONCLUSIVE (no parts: INCONCLUSIVE)."""
    verdicts = list(verdicts)
    if not verdicts:
        return INCONCLUSIVE
    if any(v == NOT_SUPPORTED for v in verdicts):
        return NOT_SUPPORTED
    return SUPPORTED if all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE
