"""What every claim function of the reproduction shares: `ClaimResult` (one claim's numbers and verdict), the verdict
words, numbers as mean ± std over seeds, reading a value out of run records, `robust_verdict` (the verdict over
seeds), and the pieces several claims' measures share (pass@k of a policy, steps to a reward, stage-1 gains, head
growth). The measurements and thresholds of each claim are pre-registered in docs/claims.md."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..plots.runs import parse_curve
from ..stats import CANNOT

__all__ = ["ClaimResult", "VERDICTS", "CANNOT", "mean_std", "fmt_mean_std", "fmt_number", "first_last", "deltas",
           "finals", "pass_at", "first_in_stage", "robust_verdict", "PASSK_SATURATED", "passk_at", "CLAIM5_START_RECORDS",
           "CLAIM5_THRESHOLD_FRACTION", "CLAIM5_WINDOW", "CLAIM5_MAX_STAGE1_GAIN", "CLAIM5_MIN_RISE", "steps_to",
           "stage1_gains", "head_growth"]

VERDICTS = {True: "supported", False: "not supported", None: "not measured"}


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """One claim: its label `n` ("1", "2x", "6 (v1)", ...), its text, the measured `numbers` (one line), whether it
    `holds` (None: not judged) and a `note` (the thresholds used, or why the test could not show). `cannot`: the
    setting cannot distinguish the claim from its negation (the note says why); the verdict is then CANNOT."""

    n: str
    claim: str
    numbers: str
    holds: bool | None
    note: str = ""
    cannot: bool = False

    @property
    def verdict(self) -> str:
        return CANNOT if self.holds is None and self.cannot else VERDICTS[self.holds]

    def as_dict(self) -> dict:
        """The record of summary.md and reproduce.json: n, claim, numbers, holds, verdict, note."""
        return dict(n=self.n, claim=self.claim, numbers=self.numbers, holds=self.holds, verdict=self.verdict,
                    note=self.note)


def mean_std(values):
    """(mean, std, n) of the finite values among `values` (None skipped); (nan, nan, 0) when there are none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), len(v)


def fmt_mean_std(values, digits=3):
    """Seeds' values as "mean ± std" (one value: the value alone; none: "n/a")."""
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def fmt_number(x, digits=3):
    """One number with `digits` decimals; "n/a" for None or non-finite."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def first_last(run, key, stage=None):
    """(first, last) value of `key` in a run's records (optionally of one stage); (None, None) if absent."""
    recs = [r for r in run.records if key in r and r[key] is not None and (stage is None or r.get("stage") == stage)]
    if not recs:
        return None, None
    return float(recs[0][key]), float(recs[-1][key])


def deltas(runs, key):
    """last − first of `key`, per run that logs it."""
    return [(b - a) for a, b in (first_last(r, key) for r in runs) if a is not None]


def finals(runs, key):
    """The last value of `key`, per run that logs it."""
    return [first_last(r, key)[1] for r in runs if first_last(r, key)[1] is not None]


def first_in_stage(runs, key, stage="rl"):
    """The first value of `key` logged in `stage`, per run that logs it there."""
    return [v for v, _ in (first_last(r, key, stage) for r in runs) if v is not None]


def pass_at(curve, k):
    """pass@k read off a logged curve ([[k, v], ...] or {k: v}); the largest k's value when k is not on it."""
    ks, vals = parse_curve(curve)
    ks = list(ks)
    return float(vals[ks.index(k)]) if k in ks else float(vals[-1])


def robust_verdict(holds_mean, holds_per_seed, fallback: str | None = None) -> str:
    """The verdict over seeds: "supported" / "not supported" when the mean over seeds and every seed agree,
    "mixed" when they disagree; when nothing was judged, `fallback` (the claim's own verdict, e.g. CANNOT) or
    "not measured". One measurement (a claim on the base model, or one seed) is its own verdict."""
    measured = [h for h in holds_per_seed if h is not None]
    if holds_mean is None and not measured:
        return fallback or VERDICTS[None]
    votes = set(measured) | ({holds_mean} if holds_mean is not None else set())
    return VERDICTS[votes.pop()] if len(votes) == 1 else "mixed"


# ------------------------------------------------------------------------------------------------- pieces of several claims' measures (v3 and earlier readings)
PASSK_SATURATED = 0.999  # pass@kmax at least this for the base and every RL policy: no room to lose coverage


def passk_at(passk, label, k):
    """pass@k of every seed of policy `label` in a pass@k result ({"ks", "policies": {label: {"seeds",
    "curves"}}}); [] when absent."""
    if not passk or label not in passk.get("policies", {}):
        return []
    ks = list(passk["ks"])
    return [float(c[ks.index(k)]) for c in passk["policies"][label]["curves"]] if k in ks else []


CLAIM5_START_RECORDS = 5  # RL's start reward: the mean over its first records
CLAIM5_THRESHOLD_FRACTION = 0.5  # the reward threshold: this far from RL's start to its end ("halfway")
CLAIM5_WINDOW = 5  # moving-average window (steps) for reaching the threshold
CLAIM5_MAX_STAGE1_GAIN = 0.5  # 'slightly': stage 1's Δ eval reward below this fraction of RL's whole-run gain
CLAIM5_MIN_RISE = 0.05  # RL's train reward must rise at least this much (end − start) for the claim to show


def steps_to(run, threshold, key="reward", window=CLAIM5_WINDOW):
    """Full-RL steps until the moving average (window) of `key` first reaches threshold (None if never)."""
    vals = np.asarray([r[key] for r in run.records if r.get("stage") == "rl" and key in r], np.float64)
    for i in range(len(vals)):
        if vals[max(0, i - window + 1):i + 1].mean() >= threshold:
            return i + 1
    return None


def stage1_gains(cf_runs):
    """Eval reward at the start of stage 2 minus at the start of stage 1, per CF-RL run."""
    gains = []
    for r in cf_runs:
        recs = [x for x in r.records if "eval/reward" in x]
        s1 = [x for x in recs if x.get("stage") == "stage1"]
        s2 = [x for x in recs if x.get("stage") == "rl"]
        if s1 and s2:
            gains.append(s2[0]["eval/reward"] - s1[0]["eval/reward"])
    return gains


def head_growth(runs):
    """‖W‖_F at the start of stage 2 over ‖W‖_F at the first logged step, per run."""
    v = []
    for r in runs:
        recs = [x for x in r.records if "head_norm" in x]
        s2 = [x for x in recs if x.get("stage") == "rl"]
        if recs and s2:
            v.append(s2[0]["head_norm"] / recs[0]["head_norm"])
    return v
