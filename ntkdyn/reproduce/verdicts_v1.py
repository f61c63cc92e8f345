"""The earlier readings (v1) of claims 1, 2, 6 and 8: how ntkdyn judged them before the spec's claim list was revised.
docs/claims.md keeps them, unchanged, beside the revised definitions ("do not change a definition after seeing its
result — if you must, keep both and say so"); summary.md reports them in a table of their own."""
from __future__ import annotations

from ..plots.runs import parse_curve
from .claim_base import ClaimResult, deltas, first_in_stage, fmt_mean_std, mean_std, pass_at
from .claim_base import finals
from .verdicts_runs import head_growth

__all__ = ["claim1_v1", "claim2_v1", "claim6_v1", "claim8_v1", "CLAIM1_MIN_COS_PROMPTS",
           "CLAIM1_MIN_COS_POSITIONS", "CLAIM1_MAX_S_CV", "CLAIM6_MIN_GAP"]

CLAIM1_MIN_COS_PROMPTS = 0.5  # mean pairwise cos of h across prompts (last prompt position)
CLAIM1_MIN_COS_POSITIONS = 0.3  # ... across positions of the same sequence
CLAIM1_MAX_S_CV = 0.5  # std/|mean| of s = h·h'


def claim1_v1(stats) -> ClaimResult:
    """Claim 1 (v1): prompts and positions similar and s varying little, all three together."""
    holds = (stats["cos_prompts_last"] > CLAIM1_MIN_COS_PROMPTS and stats["cos_positions"] > CLAIM1_MIN_COS_POSITIONS
             and stats["s_cv"] < CLAIM1_MAX_S_CV)
    return ClaimResult(
        "1 (v1)", "Features of different prompts (and positions) are highly similar, and s varies little.",
        f"mean pairwise cos of h across prompts {stats['cos_prompts_last']:.3f} (last prompt position), "
        f"{stats['cos_prompts_mean']:.3f} (mean over positions); across positions {stats['cos_positions']:.3f}; s "
        f"std/|mean| {stats['s_cv']:.3f}", holds,
        f"thresholds used: cos across prompts > {CLAIM1_MIN_COS_PROMPTS:g}, across positions > "
        f"{CLAIM1_MIN_COS_POSITIONS:g}, std/|mean| of s < {CLAIM1_MAX_S_CV:g}")


def claim2_v1(rl_runs) -> ClaimResult:
    """Claim 2 (v1): confidence up and diversity down together: Δ max-prob > 0, Δ log-prob > 0, Δ entropy < 0,
    Δ unique answers < 0 and Δ pass@kmax ≤ 0 with kmax = eval_samples (mean over seeds; pass@k where logged)."""
    d_maxp, d_logp = deltas(rl_runs, "eval/max_prob"), deltas(rl_runs, "eval/logp")
    d_ent, d_uniq = deltas(rl_runs, "eval/entropy"), deltas(rl_runs, "eval/unique_answers")
    pk_before, pk_after = [], []
    for r in rl_runs:
        curves = [x["eval/pass_at_k_curve"] for x in r.records if "eval/pass_at_k_curve" in x]
        if curves:
            kmax = max(parse_curve(curves[0])[0])
            pk_before.append(pass_at(curves[0], kmax))
            pk_after.append(pass_at(curves[-1], kmax))
    d_pk = [b - a for a, b in zip(pk_before, pk_after)]
    holds = None
    if d_maxp:
        holds = (mean_std(d_maxp)[0] > 0 and mean_std(d_logp)[0] > 0 and mean_std(d_ent)[0] < 0
                 and mean_std(d_uniq)[0] < 0 and (not d_pk or mean_std(d_pk)[0] <= 0))
    return ClaimResult(
        "2 (v1)", "During RL, on held-out prompts, max-probability and log-prob of sampled tokens rise; entropy, "
                  "distinct answers and pass@k at large k fall.",
        f"RL start→end: Δ max-prob {fmt_mean_std(d_maxp)}, Δ log-prob {fmt_mean_std(d_logp)}, Δ entropy "
        f"{fmt_mean_std(d_ent)}, Δ unique answers {fmt_mean_std(d_uniq, 1)}, Δ pass@kmax {fmt_mean_std(d_pk)} "
        f"(pass@kmax {fmt_mean_std(pk_before)} → {fmt_mean_std(pk_after)})", holds,
        "pass@k at the largest k is 1 before and after RL here: every prompt has many correct answers, so that part "
        "of the claim cannot show on this task; the diversity loss shows in the unique answers"
        if pk_before and min(pk_before) == 1.0 else "")


CLAIM6_MIN_GAP = 0.02  # the share means must differ by more than this (and than the sum of their stds)


def claim6_v1(rl_runs, cf_runs) -> ClaimResult:
    """Claim 6 (v1): the gradient share ‖Δz_G‖/‖Δz‖ at the start of CF-RL's stage 2 differs from RL's at step 0."""
    g_rl, g_cf = first_in_stage(rl_runs, "dz_share/gradient"), first_in_stage(cf_runs, "dz_share/gradient")
    holds = None
    if g_rl and g_cf:
        (m1, s1, _), (m2, s2, _) = mean_std(g_rl), mean_std(g_cf)
        holds = abs(m2 - m1) > max(s1 + s2, CLAIM6_MIN_GAP)
    return ClaimResult(
        "6 (v1)", "After stage 1 the gradient component's share ‖Δz_G‖/‖Δz‖ at the start of stage 2 differs from "
                  "plain RL at step 0.",
        f"share of Δz_G at the first full-RL step: RL {fmt_mean_std(g_rl)}, CF-RL {fmt_mean_std(g_cf)}", holds,
        f"'differs' read as: the means are further apart than the sum of their stds (and than {CLAIM6_MIN_GAP:g})")


def claim8_v1(rl_runs, cf_runs, lp_runs) -> ClaimResult:
    """Claim 8 (v1): LP grows ‖W‖_F more than CF-RL's stage 1, LP-FT's final feature change is below RL's and
    CF-RL's is not below LP-FT's."""
    hg_lp, hg_cf = head_growth(lp_runs), head_growth(cf_runs)
    fc_rl, fc_cf, fc_lp = (finals(r, "feature_change") for r in (rl_runs, cf_runs, lp_runs))
    holds = None
    if hg_lp and hg_cf and fc_rl and fc_lp and fc_cf:
        holds = (mean_std(hg_lp)[0] > mean_std(hg_cf)[0] and mean_std(fc_lp)[0] < mean_std(fc_rl)[0]
                 and mean_std(fc_cf)[0] >= mean_std(fc_lp)[0])
    return ClaimResult(
        "8 (v1)", "Versus LP-FT: LP inflates ‖W‖_F and reduces later feature change; CF-RL stage 1 does not.",
        f"‖W‖_F after stage 1 / before: LP-FT {fmt_mean_std(hg_lp, 4)}, CF-RL {fmt_mean_std(hg_cf, 4)}; final "
        f"feature change ‖h_T − h_0‖: RL {fmt_mean_std(fc_rl)}, CF-RL {fmt_mean_std(fc_cf)}, LP-FT "
        f"{fmt_mean_std(fc_lp)}", holds)
