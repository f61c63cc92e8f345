"""The eight claims of spec §5, one function each: the numbers that test the claim, a verdict, and the thresholds
behind the verdict as named constants beside the function (the note printed with each verdict states them).

Each claim function reads structured inputs (run records, the feature analysis's "stats", the one-step
experiment's result dict) and returns a `ClaimResult`; `claims` evaluates all eight on a reproduction's outputs.
Numbers are mean ± std over seeds (`fmt_mean_std`) unless one value is shown.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..plots.runs import load_runs, parse_curve

__all__ = ["ClaimResult", "claims", "robust_verdict", "mean_std", "fmt_mean_std", "fmt_number", "claim1_features",
           "claim2_confidence_diversity", "claim3_prop2", "claim4_first_order", "claim5_cf_rl_speed",
           "claim6_gradient_share", "claim7_confidence", "claim8_head_norm"]

VERDICTS = {True: "supported", False: "not supported", None: "not measured"}


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """One claim: its number `n`, its text, the measured `numbers` (one line), whether it `holds` (None: not
    measured) and a `note` (the thresholds used, or why the test could not show)."""

    n: int
    claim: str
    numbers: str
    holds: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        return VERDICTS[self.holds]

    def as_dict(self) -> dict:
        """The record of summary.md and reproduce.json: n, claim, numbers, holds, verdict, note."""
        return dict(n=self.n, claim=self.claim, numbers=self.numbers, holds=self.holds, verdict=self.verdict,
                    note=self.note)


# ------------------------------------------------------------------------------------------------- numbers
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


def _first_last(run, key, stage=None):
    """(first, last) value of `key` in a run's records (optionally of one stage); (None, None) if absent."""
    recs = [r for r in run.records if key in r and r[key] is not None and (stage is None or r.get("stage") == stage)]
    if not recs:
        return None, None
    return float(recs[0][key]), float(recs[-1][key])


def _deltas(runs, key):
    """last − first of `key`, per run that logs it."""
    return [(b - a) for a, b in (_first_last(r, key) for r in runs) if a is not None]


def _finals(runs, key):
    """The last value of `key`, per run that logs it."""
    return [_first_last(r, key)[1] for r in runs if _first_last(r, key)[1] is not None]


def _pass_at(curve, k):
    ks, vals = parse_curve(curve)
    ks = list(ks)
    return float(vals[ks.index(k)]) if k in ks else float(vals[-1])


# ------------------------------------------------------------------------------------------------- claim 1
CLAIM1_MIN_COS_PROMPTS = 0.5  # mean pairwise cos of h across prompts (last prompt position)
CLAIM1_MIN_COS_POSITIONS = 0.3  # ... across positions of the same sequence
CLAIM1_MAX_S_CV = 0.5  # std/|mean| of s = h·h'


def claim1_features(stats) -> ClaimResult:
    """Claim 1 from the feature analysis's stats (`ntkdyn.experiments.features`)."""
    c1, c_pos, s_cv = stats["cos_prompts_last"], stats["cos_positions"], stats["s_cv"]
    return ClaimResult(
        1, "Features of different prompts (and positions) are highly similar, and s varies little.",
        f"mean pairwise cos of h across prompts {c1:.3f} (last prompt position), "
        f"{stats['cos_prompts_mean']:.3f} (mean over positions); across positions {c_pos:.3f}; s std/|mean| "
        f"{s_cv:.3f}",
        c1 > CLAIM1_MIN_COS_PROMPTS and c_pos > CLAIM1_MIN_COS_POSITIONS and s_cv < CLAIM1_MAX_S_CV,
        f"thresholds used: cos across prompts > {CLAIM1_MIN_COS_PROMPTS:g}, across positions > "
        f"{CLAIM1_MIN_COS_POSITIONS:g}, std/|mean| of s < {CLAIM1_MAX_S_CV:g}; the three are reported separately "
        "above, so a partial agreement is visible")


# ------------------------------------------------------------------------------------------------- claim 2
def claim2_confidence_diversity(rl_runs) -> ClaimResult:
    """Claim 2: during RL (held-out prompts) confidence rises and diversity falls, start to end of each run.
    Holds when Δ max-prob > 0, Δ log-prob > 0, Δ entropy < 0, Δ unique answers < 0 and Δ pass@kmax <= 0 (mean
    over seeds; pass@k only where logged)."""
    d_maxp, d_logp = _deltas(rl_runs, "eval/max_prob"), _deltas(rl_runs, "eval/logp")
    d_ent, d_uniq = _deltas(rl_runs, "eval/entropy"), _deltas(rl_runs, "eval/unique_answers")
    pk_before, pk_after = [], []
    for r in rl_runs:
        curves = [x["eval/pass_at_k_curve"] for x in r.records if "eval/pass_at_k_curve" in x]
        if curves:
            kmax = max(parse_curve(curves[0])[0])
            pk_before.append(_pass_at(curves[0], kmax))
            pk_after.append(_pass_at(curves[-1], kmax))
    d_pk = [b - a for a, b in zip(pk_before, pk_after)]
    holds = None
    if d_maxp:
        holds = (mean_std(d_maxp)[0] > 0 and mean_std(d_logp)[0] > 0 and mean_std(d_ent)[0] < 0
                 and mean_std(d_uniq)[0] < 0 and (not d_pk or mean_std(d_pk)[0] <= 0))
    return ClaimResult(
        2, "During RL, on held-out prompts, max-probability and log-prob of sampled tokens rise; entropy, distinct "
           "answers and pass@k at large k fall.",
        f"RL start→end: Δ max-prob {fmt_mean_std(d_maxp)}, Δ log-prob {fmt_mean_std(d_logp)}, Δ entropy "
        f"{fmt_mean_std(d_ent)}, Δ unique answers {fmt_mean_std(d_uniq, 1)}, Δ pass@kmax {fmt_mean_std(d_pk)} "
        f"(pass@kmax {fmt_mean_std(pk_before)} → {fmt_mean_std(pk_after)})", holds,
        "pass@k at the largest k is 1 before and after RL here: every prompt has many correct answers, so that part "
        "of the claim cannot show on this task; the diversity loss shows in the unique answers"
        if pk_before and min(pk_before) == 1.0 else "")


# ------------------------------------------------------------------------------------------------- claims 3, 4
CLAIM3_MIN_FRACTION = 0.9  # of probe contexts with s > 0 where argmax Δz_R = y_u, and where Δ log π(y_u) > 0


def claim3_prop2(one_step) -> ClaimResult:
    """Claim 3 (Proposition 2) from the one-step experiment's "prop2" numbers."""
    p2 = one_step.get("prop2", {})
    frac_arg = p2.get("frac_argmax_dzR_is_y_given_s_positive")
    frac_up = p2.get("frac_logp_y_up_given_s_positive")
    holds = None if frac_arg is None or frac_up is None else bool(
        frac_arg >= CLAIM3_MIN_FRACTION and frac_up >= CLAIM3_MIN_FRACTION)
    return ClaimResult(
        3, "One step with A > 0 on (c_u, y_u) raises log π(y_u | c_o) at unrelated probes with s > 0; argmax of Δz_R "
           "is y_u.",
        f"among probe contexts with s > 0 ({fmt_number(p2.get('frac_s_positive'))} of all): argmax Δz_R = y_u in "
        f"{fmt_number(frac_arg)}, Δ log π(y_u|c_o) > 0 after the real step in {fmt_number(frac_up)}; over all probes "
        f"{fmt_number(p2.get('frac_argmax_dzR_is_y'))} and {fmt_number(p2.get('frac_logp_y_up'))}",
        holds, f"threshold used: both fractions >= {CLAIM3_MIN_FRACTION:g}")


CLAIM4_MAX_REL_ERROR = 0.05  # ‖Δz_pred − Δz_real‖/‖Δz_real‖


def claim4_first_order(one_step) -> ClaimResult:
    """Claim 4 from the one-step experiment: the first-order prediction R + G against the real Δz. Not measured
    when the step was zero (every group tied, so all advantages were 0)."""
    moved = (one_step.get("dz_norm") or 0) > 0
    rel = one_step.get("rel_error")
    return ClaimResult(
        4, f"The first-order prediction R + G matches the real Δz for small η (relative error < "
           f"{CLAIM4_MAX_REL_ERROR:.0%}).",
        f"relative error ‖Δz_pred − Δz_real‖/‖Δz_real‖ = {fmt_number(rel, 4)} at lr {one_step.get('lr')} "
        f"(Δ log π: {fmt_number(one_step.get('rel_error_dlogp'), 4)}); R share of Δz "
        f"{fmt_number(one_step.get('share_representation'))}",
        None if rel is None or not moved else rel < CLAIM4_MAX_REL_ERROR,
        "" if moved else "the sampled groups all had equal rewards, so the step was zero and nothing was tested")


# ------------------------------------------------------------------------------------------------- claim 5
CLAIM5_START_RECORDS = 5  # RL's start reward: the mean over its first records
CLAIM5_THRESHOLD_FRACTION = 0.5  # the reward threshold: this far from RL's start to its end ("halfway")
CLAIM5_WINDOW = 5  # moving-average window (steps) for reaching the threshold
CLAIM5_MAX_STAGE1_GAIN = 0.5  # 'slightly': stage 1's Δ eval reward below this fraction of RL's whole-run gain
_NEVER = 10 ** 9  # steps-to-threshold of a run that never reached it


def _steps_to(run, threshold, key="reward", window=CLAIM5_WINDOW):
    """Full-RL steps until the moving average (window) of `key` first reaches threshold (None if never)."""
    recs = [r for r in run.records if r.get("stage") == "rl" and key in r]
    vals = np.asarray([r[key] for r in recs], np.float64)
    for i in range(len(vals)):
        if vals[max(0, i - window + 1):i + 1].mean() >= threshold:
            return i + 1
    return None


def _stage1_gains(cf_runs):
    """Eval reward at the start of stage 2 minus at the start of stage 1, per CF-RL run."""
    gains = []
    for r in cf_runs:
        recs = [x for x in r.records if "eval/reward" in x]
        s1 = [x for x in recs if x.get("stage") == "stage1"]
        s2 = [x for x in recs if x.get("stage") == "rl"]
        if s1 and s2:
            gains.append(s2[0]["eval/reward"] - s1[0]["eval/reward"])
    return gains


def claim5_cf_rl_speed(rl_runs, cf_runs) -> ClaimResult:
    """Claim 5: CF-RL's stage 1 moves the reward little; its stage 2 reaches a reward threshold in fewer full-RL
    steps than RL."""
    s1_gain = _stage1_gains(cf_runs)
    rl_gain = _deltas(rl_runs, "eval/reward")
    finals = _finals(rl_runs, "reward")
    starts = [np.mean([x["reward"] for x in r.records[:CLAIM5_START_RECORDS] if "reward" in x]) for r in rl_runs]
    holds, thr = None, None
    n_rl, n_cf = [], []
    if finals and starts:
        thr = float(np.mean(starts) + CLAIM5_THRESHOLD_FRACTION * (np.mean(finals) - np.mean(starts)))
        n_rl = [_steps_to(r, thr) for r in rl_runs]
        n_cf = [_steps_to(r, thr) for r in cf_runs]
        m_rl = np.mean([x if x is not None else _NEVER for x in n_rl])
        m_cf = np.mean([x if x is not None else _NEVER for x in n_cf])
        holds = bool(s1_gain) and abs(mean_std(s1_gain)[0]) < CLAIM5_MAX_STAGE1_GAIN * max(
            abs(mean_std(rl_gain)[0]), 1e-9) and m_cf < m_rl
    s1_steps = [r.config.get("head_steps") for r in cf_runs]
    return ClaimResult(
        5, "CF-RL: stage 1 alone raises reward only slightly; stage 2 reaches a reward threshold in fewer steps than "
           "RL from the same start.",
        f"stage-1 Δ eval reward {fmt_mean_std(s1_gain)} (RL's whole-run Δ eval reward {fmt_mean_std(rl_gain)}); "
        f"full-RL steps to train reward {thr if thr is None else round(thr, 3)} (halfway from RL's start to its end, "
        f"{CLAIM5_WINDOW}-step moving average): RL {n_rl}, CF-RL stage 2 {n_cf}; stage-1 cost {s1_steps} head-only "
        "steps", holds, "'slightly' read as: less than half of RL's whole-run gain")


# ------------------------------------------------------------------------------------------------- claim 6
CLAIM6_MIN_GAP = 0.02  # the share means must differ by more than this (and than the sum of their stds)


def _first_share(runs, stage):
    """‖Δz_G‖/‖Δz‖ at the first logged step of `stage`, per run."""
    v = []
    for r in runs:
        recs = [x for x in r.records if x.get("stage") == stage and "dz_share/gradient" in x]
        if recs:
            v.append(recs[0]["dz_share/gradient"])
    return v


def claim6_gradient_share(rl_runs, cf_runs) -> ClaimResult:
    """Claim 6: the gradient share at the start of CF-RL's stage 2 differs from RL's at step 0."""
    g_rl, g_cf = _first_share(rl_runs, "rl"), _first_share(cf_runs, "rl")
    holds = None
    if g_rl and g_cf:
        m1, s1, _ = mean_std(g_rl)
        m2, s2, _ = mean_std(g_cf)
        holds = abs(m2 - m1) > max(s1 + s2, CLAIM6_MIN_GAP)
    return ClaimResult(
        6, "After stage 1 the gradient component's share ‖Δz_G‖/‖Δz‖ at the start of stage 2 differs from plain RL "
           "at step 0.", f"share of Δz_G at the first full-RL step: RL {fmt_mean_std(g_rl)}, CF-RL "
                         f"{fmt_mean_std(g_cf)}", holds,
        f"'differs' read as: the means are further apart than the sum of their stds (and than {CLAIM6_MIN_GAP:g})")


# ------------------------------------------------------------------------------------------------- claim 7
CLAIM7_TOLERANCE_STDS = 1.0  # tolerance: this many stds of RL's seeds


def claim7_confidence(rl_runs, cf_runs) -> ClaimResult:
    """Claim 7: CF-RL's final eval max-prob is at least RL's and its final eval entropy at most RL's (within the
    tolerance)."""
    mp_rl, mp_cf = _finals(rl_runs, "eval/max_prob"), _finals(cf_runs, "eval/max_prob")
    en_rl, en_cf = _finals(rl_runs, "eval/entropy"), _finals(cf_runs, "eval/entropy")
    holds = None
    if mp_rl and mp_cf:
        tol = CLAIM7_TOLERANCE_STDS
        holds = (mean_std(mp_cf)[0] >= mean_std(mp_rl)[0] - tol * mean_std(mp_rl)[1]
                 and mean_std(en_cf)[0] <= mean_std(en_rl)[0] + tol * mean_std(en_rl)[1])
    return ClaimResult(
        7, "CF-RL raises confidence at least as much as RL.",
        f"final eval max-prob RL {fmt_mean_std(mp_rl)}, CF-RL {fmt_mean_std(mp_cf)}; final eval entropy RL "
        f"{fmt_mean_std(en_rl)}, CF-RL {fmt_mean_std(en_cf)}", holds,
        "'at least as much' read with one std of RL's seeds as tolerance")


# ------------------------------------------------------------------------------------------------- claim 8
def _head_growth(runs):
    """‖W‖_F at the start of stage 2 over ‖W‖_F at the first logged step, per run."""
    v = []
    for r in runs:
        recs = [x for x in r.records if "head_norm" in x]
        s2 = [x for x in recs if x.get("stage") == "rl"]
        if recs and s2:
            v.append(s2[0]["head_norm"] / recs[0]["head_norm"])
    return v


def claim8_head_norm(rl_runs, cf_runs, lp_runs) -> ClaimResult:
    """Claim 8: LP (LP-FT's stage 1) grows ‖W‖_F more than CF-RL's stage 1, and LP-FT's final feature change is
    below RL's while CF-RL's is not below LP-FT's."""
    hg_lp, hg_cf = _head_growth(lp_runs), _head_growth(cf_runs)
    fc_rl, fc_cf = _finals(rl_runs, "feature_change"), _finals(cf_runs, "feature_change")
    fc_lp = _finals(lp_runs, "feature_change")
    holds = None
    if hg_lp and hg_cf and fc_rl and fc_lp and fc_cf:
        holds = (mean_std(hg_lp)[0] > mean_std(hg_cf)[0] and mean_std(fc_lp)[0] < mean_std(fc_rl)[0]
                 and mean_std(fc_cf)[0] >= mean_std(fc_lp)[0])
    return ClaimResult(
        8, "Versus LP-FT: LP inflates ‖W‖_F and reduces later feature change; CF-RL stage 1 does not.",
        f"‖W‖_F after stage 1 / before: LP-FT {fmt_mean_std(hg_lp, 4)}, CF-RL {fmt_mean_std(hg_cf, 4)}; final "
        f"feature change ‖h_T − h_0‖: RL {fmt_mean_std(fc_rl)}, CF-RL {fmt_mean_std(fc_cf)}, LP-FT "
        f"{fmt_mean_std(fc_lp)}", holds)


def _run_claims(rl_runs, cf_runs, lp_runs) -> list[ClaimResult]:
    """The claims measured on training runs (2, 5, 6, 7, 8)."""
    return [claim2_confidence_diversity(rl_runs), claim5_cf_rl_speed(rl_runs, cf_runs),
            claim6_gradient_share(rl_runs, cf_runs), claim7_confidence(rl_runs, cf_runs),
            claim8_head_norm(rl_runs, cf_runs, lp_runs)]


def robust_verdict(holds_mean, holds_per_seed) -> str:
    """The verdict over seeds: "supported" / "not supported" when the mean over seeds and every seed agree,
    "mixed" when they disagree, "not measured" when nothing was measured. One measurement (a claim on the base
    model, or one seed) is its own verdict."""
    measured = [h for h in holds_per_seed if h is not None]
    if holds_mean is None and not measured:
        return VERDICTS[None]
    votes = set(measured) | ({holds_mean} if holds_mean is not None else set())
    return VERDICTS[votes.pop()] if len(votes) == 1 else "mixed"


def claims(runs_root, features, one_step) -> list[dict]:
    """The eight claims of spec §5 on a reproduction's outputs: the training runs under `runs_root`, the feature
    analysis's result (its "stats") and the one-step experiment's result. Each a dict(n, claim, numbers, holds,
    verdict, note) (`ClaimResult.as_dict`) plus `per_seed` (the run-based claims 2 and 5-8 judged on each seed's
    runs alone: seed, holds, verdict, numbers; empty for the claims measured once on the base model),
    `verdict_mean` (the verdict on the mean over seeds) and `verdict` the robust verdict (`robust_verdict`:
    "mixed" when the seeds disagree with each other or with the mean)."""
    R = load_runs(runs_root)
    rl_runs, cf_runs, lp_runs = R.get("rl", []), R.get("cf-rl", []), R.get("lp-ft", [])
    by_n = {c.n: c for c in [claim1_features(features["stats"]), claim3_prop2(one_step),
                              claim4_first_order(one_step), *_run_claims(rl_runs, cf_runs, lp_runs)]}
    seeds = sorted({r.seed for r in rl_runs + cf_runs + lp_runs if r.seed is not None})
    per_seed = {n: [] for n in by_n}
    if len(seeds) > 1:
        for seed in seeds:
            pick = [[r for r in runs if r.seed == seed] for runs in (rl_runs, cf_runs, lp_runs)]
            for c in _run_claims(*pick):
                per_seed[c.n].append(dict(seed=seed, holds=c.holds, verdict=c.verdict, numbers=c.numbers))
    out = []
    for n in sorted(by_n):
        d = by_n[n].as_dict()
        d.update(verdict_mean=d["verdict"], per_seed=per_seed[n],
                 verdict=robust_verdict(d["holds"], [p["holds"] for p in per_seed[n]]))
        out.append(d)
    return out
