"""The v2 readings of the claims measured on the base model (1, 1x, 3, 4; thresholds pre-registered in
docs/claims.md), the measure functions of their v2 rows in reproduce/claims.py's table (which judges every
version). The run-based v2 readings are in `verdicts_runs`, the v1 readings in `verdicts_v1`.

Each claim function reads structured inputs (run records, the feature analysis's "stats", the one-step
experiment's result dict, the pass@k result) and returns a `ClaimResult`. Numbers are mean ± std over seeds
(`fmt_mean_std`) unless one value is shown.
"""
from __future__ import annotations

from .claim_base import (CANNOT, VERDICTS, ClaimResult, fmt_mean_std, fmt_number, mean_std,  # noqa: F401
                         robust_verdict)
from .verdicts_runs import (claim2_confidence, claim2x_diversity, claim5_cf_rl_speed,  # noqa: F401 (re-exported)
                            claim6_gradient_component, claim7_confidence, claim8_lp_ft, claim_n1_ntk_drift)
from .verdicts_v1 import CLAIM1_MIN_COS_PROMPTS

__all__ = ["ClaimResult", "robust_verdict", "mean_std", "fmt_mean_std", "fmt_number", "claim1_features",
           "claim1x_positions", "claim3_prop2", "claim4_first_order", "claim2_confidence", "claim2x_diversity",
           "claim5_cf_rl_speed", "claim6_gradient_component", "claim7_confidence", "claim8_lp_ft", "claim_n1_ntk_drift",
           "CANNOT", "VERDICTS"]

# ------------------------------------------------------------------------------------------------- claim 1
CLAIM1X_MIN_COS_POSITIONS = 0.3  # mean pairwise cos of h across positions of the same sequence
CLAIM1X_MAX_S_CV = 0.5  # std/|mean| of s = h·h'


def claim1_features(stats) -> ClaimResult:
    """Claim 1 [A, P Table 1]: features of different prompts are highly similar (mean pairwise cosine of h at the
    last prompt position across held-out prompts)."""
    c = stats["cos_prompts_last"]
    return ClaimResult(
        "1", "[A, P Table 1] Features of different prompts are highly similar (limited variability of feature "
             "representations).",
        f"mean pairwise cos of h across prompts {c:.3f} (last prompt position), {stats['cos_prompts_mean']:.3f} "
        "(mean over positions)", c > CLAIM1_MIN_COS_PROMPTS,
        f"threshold used: cos across prompts > {CLAIM1_MIN_COS_PROMPTS:g}")


def claim1x_positions(stats) -> ClaimResult:
    """Claim 1x [N]: features of different positions of one sequence are similar too, and s = h·h' varies little."""
    c_pos, s_cv = stats["cos_positions"], stats["s_cv"]
    return ClaimResult(
        "1x", "[N] … also across positions of one sequence, and s = h·h' varies little.",
        f"mean pairwise cos of h across positions {c_pos:.3f}; s std/|mean| {s_cv:.3f}",
        c_pos > CLAIM1X_MIN_COS_POSITIONS and s_cv < CLAIM1X_MAX_S_CV,
        f"thresholds used: cos across positions > {CLAIM1X_MIN_COS_POSITIONS:g}, std/|mean| of s < "
        f"{CLAIM1X_MAX_S_CV:g}")


# ------------------------------------------------------------------------------------------------- claims 3, 4
CLAIM3_MIN_FRACTION = 0.9  # of probe contexts with s > 0 where argmax Δz_R = y_u, and where Δ log π(y_u) > 0


def claim3_prop2(one_step) -> ClaimResult:
    """Claim 3 [P Prop. 2] from the one-step experiment's "prop2" numbers."""
    p2 = one_step.get("prop2", {})
    frac_arg = p2.get("frac_argmax_dzR_is_y_given_s_positive")
    frac_up = p2.get("frac_logp_y_up_given_s_positive")
    holds = None if frac_arg is None or frac_up is None else bool(
        frac_arg >= CLAIM3_MIN_FRACTION and frac_up >= CLAIM3_MIN_FRACTION)
    return ClaimResult(
        "3", "[P Prop. 2] One step with A > 0 on (c_u, y_u) raises log π(y_u | c_o) at unrelated probes with s > 0; "
             "argmax of Δz_R is y_u.",
        f"among probe contexts with s > 0 ({fmt_number(p2.get('frac_s_positive'))} of all): argmax Δz_R = y_u in "
        f"{fmt_number(frac_arg)}, Δ log π(y_u|c_o) > 0 after the real step in {fmt_number(frac_up)}; over all probes "
        f"{fmt_number(p2.get('frac_argmax_dzR_is_y'))} and {fmt_number(p2.get('frac_logp_y_up'))}",
        holds, f"threshold used: both fractions >= {CLAIM3_MIN_FRACTION:g}")


CLAIM4_MAX_REL_ERROR = 0.05  # ‖Δz_pred − Δz_real‖/‖Δz_real‖


def claim4_first_order(one_step) -> ClaimResult:
    """Claim 4 [N] from the one-step experiment: the first-order prediction R + G against the real Δz. Cannot show
    when the step was zero (every group tied, so all advantages were 0)."""
    moved = (one_step.get("dz_norm") or 0) > 0
    rel = one_step.get("rel_error")
    return ClaimResult(
        "4", f"[N] The first-order prediction R + G matches the real Δz for small η (relative error < "
             f"{CLAIM4_MAX_REL_ERROR:.0%}).",
        f"relative error ‖Δz_pred − Δz_real‖/‖Δz_real‖ = {fmt_number(rel, 4)} at lr {one_step.get('lr')} "
        f"(Δ log π: {fmt_number(one_step.get('rel_error_dlogp'), 4)}); R share of Δz "
        f"{fmt_number(one_step.get('share_representation'))}",
        None if rel is None or not moved else rel < CLAIM4_MAX_REL_ERROR,
        "" if moved else "the sampled groups all had equal rewards, so the step was zero and nothing was tested",
        cannot=rel is not None and not moved)
