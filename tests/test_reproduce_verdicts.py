"""ntkdyn.reproduce.earlier (the v2 / v1 measures): each claim's verdict on hand-made run records and result dicts, at and around its
named thresholds, and the record layout of `claims`."""
import math

import pytest
from run_logs import write_runs

from ntkdyn.plots import Run
from ntkdyn.reproduce import claim_base as B
from ntkdyn.reproduce import earlier as C
from ntkdyn.reproduce import earlier as V1

STATS = {"cos_prompts_last": 0.9, "cos_prompts_mean": 0.8, "cos_positions": 0.5, "s_mean": 10.0, "s_cv": 0.2,
         "effective_rank_frac": 0.1}


def _run(recipe, records, **config):
    return Run(config={"recipe": recipe, **config}, records=records)


def test_numbers_formatting():
    assert B.mean_std([1.0, None, float("nan"), 3.0]) == (2.0, 1.0, 2)
    assert math.isnan(B.mean_std([])[0]) and B.mean_std([])[2] == 0
    assert B.fmt_mean_std([1.0, 3.0]) == "2.000 ± 1.000"
    assert B.fmt_mean_std([0.5], 1) == "0.5"
    assert B.fmt_mean_std([]) == "n/a"
    assert B.fmt_number(0.12345, 4) == "0.1235" and B.fmt_number(None) == "n/a"
    assert B.fmt_number(float("inf")) == "n/a"


def test_claim1_thresholds():
    c = C.claim1_features(STATS)
    assert c.holds is True and c.verdict == "supported" and c.n == "1"
    assert "0.900 (last prompt position)" in c.numbers
    assert f"> {C.CLAIM1_MIN_COS_PROMPTS:g}" in c.note
    assert C.claim1_features({**STATS, "cos_prompts_last": C.CLAIM1_MIN_COS_PROMPTS}).holds is False  # strict
    # the positions and the spread of s are claim 1x's, not claim 1's
    assert C.claim1_features({**STATS, "cos_positions": 0.0, "s_cv": 9.0}).holds is True
    x = C.claim1x_positions(STATS)
    assert x.holds is True and x.n == "1x" and "s std/|mean| 0.200" in x.numbers
    for key, bad in (("cos_positions", C.CLAIM1X_MIN_COS_POSITIONS), ("s_cv", C.CLAIM1X_MAX_S_CV)):
        assert C.claim1x_positions({**STATS, key: bad}).holds is False, key


def test_claim1_v1_all_three_together():
    assert V1.claim1_v1(STATS).holds is True and V1.claim1_v1(STATS).n == "1 (v1)"
    for key, bad in (("cos_prompts_last", V1.CLAIM1_MIN_COS_PROMPTS), ("cos_positions", V1.CLAIM1_MIN_COS_POSITIONS),
                     ("s_cv", V1.CLAIM1_MAX_S_CV)):
        assert V1.claim1_v1({**STATS, key: bad}).holds is False, key


def _conf_run(d, seed=0):  # eval values at the first and last eval of one RL run; d = +1 confident, -1 the opposite
    recs = [{"stage": "rl", "eval/max_prob": 0.3 + 0.1 * d * i, "eval/logp": -1.0 + 0.1 * d * i,
             "eval/entropy": 2.0 - 0.1 * d * i, "eval/unique_answers": 5 - d * i,
             "eval/pass_at_k_curve": [[1, 0.5], [8, 1.0]]} for i in range(2)]
    return _run("rl", recs, seed=seed)


def test_claim2_confidence_up():
    c = C.claim2_confidence([_conf_run(1), _conf_run(1)])
    assert c.holds is True and c.n == "2" and "Δ max-prob 0.100 ± 0.000" in c.numbers
    assert C.claim2_confidence([_conf_run(-1)]).holds is False
    assert C.claim2_confidence([]).holds is None


def test_claim2_v1_confidence_and_diversity():
    c = V1.claim2_v1([_conf_run(1), _conf_run(1)])
    assert c.holds is True and "pass@k at the largest k is 1" in c.note  # pass@kmax was 1 before RL
    assert V1.claim2_v1([_conf_run(-1)]).holds is False and V1.claim2_v1([]).holds is None


def _passk(base, rl, ks=(1, 256)):
    """A pass@k result with curves [pass@1, pass@256] for the base and one RL curve per seed."""
    return {"ks": list(ks), "task": "plus", "prompts": 4, "crossing": {"rl": 16},
            "policies": {"base": {"seeds": [None], "curves": [list(base)]},
                         "rl": {"seeds": list(range(len(rl))), "curves": [list(c) for c in rl]}}}


def test_claim2x_pass_at_256_below_base():
    runs = [_conf_run(1, 0), _conf_run(1, 1)]  # unique answers fall by 1
    c = C.claim2x_diversity(runs, _passk([0.2, 0.9], [[0.5, 0.7], [0.6, 0.8]]))
    assert c.holds is True and c.n == "2x"
    assert "pass@256 base 0.900, RL 0.750 ± 0.050" in c.numbers
    assert "(task plus, 4 prompts × 256 samples; the mean RL curve falls below the base's at k = 16)" in c.numbers
    # within one std of the RL seeds below the base: not enough
    assert C.claim2x_diversity(runs, _passk([0.2, 0.9], [[0.5, 0.8], [0.6, 1.0]])).holds is False
    assert C.claim2x_diversity([_conf_run(-1)], _passk([0.2, 0.9], [[0.5, 0.7]])).holds is False  # answers rose
    sat = C.claim2x_diversity(runs, _passk([0.2, 1.0], [[0.5, 0.9995], [0.6, 1.0]]))
    assert sat.holds is None and sat.verdict == B.CANNOT and "no room" in sat.note
    none = C.claim2x_diversity(runs, None)
    assert none.holds is None and none.verdict == "not measured" and "no pass@k" in none.note


def test_claims3_4_from_one_step():
    p2 = {"frac_s_positive": 0.8, "frac_argmax_dzR_is_y": 0.8, "frac_logp_y_up": 0.9,
          "frac_argmax_dzR_is_y_given_s_positive": C.CLAIM3_MIN_FRACTION, "frac_logp_y_up_given_s_positive": 1.0}
    assert C.claim3_prop2({"prop2": p2}).holds is True  # >= is inclusive
    assert C.claim3_prop2({"prop2": {**p2, "frac_logp_y_up_given_s_positive": 0.5}}).holds is False
    assert C.claim3_prop2({}).holds is None
    one = {"dz_norm": 1.0, "rel_error": 0.01, "rel_error_dlogp": 0.02, "lr": 0.003, "share_representation": 0.4}
    c = C.claim4_first_order(one)
    assert c.holds is True and c.note == "" and "= 0.0100 at lr 0.003" in c.numbers
    assert "relative error < 5%" in c.claim
    assert C.claim4_first_order({**one, "rel_error": C.CLAIM4_MAX_REL_ERROR}).holds is False
    zero = C.claim4_first_order({**one, "dz_norm": 0.0})
    assert zero.holds is None and zero.verdict == B.CANNOT and "step was zero" in zero.note
    assert C.claim4_first_order({}).verdict == "not measured"


def test_claims_5_to_8_on_synthetic_runs(tmp_path):
    from ntkdyn.plots import load_runs

    R = load_runs(write_runs(tmp_path))
    rl, cf, lp = R["rl"], R["cf-rl"], R["lp-ft"]
    c5 = C.claim5_cf_rl_speed(rl, cf)
    # stage 1 gains as much eval reward as RL's whole run here (verdicts compared: holds may be a numpy bool)
    assert c5.verdict == "not supported"
    assert "stage-1 cost [4, 4] head-only steps" in c5.numbers
    c6 = V1.claim6_v1(rl, cf)
    assert c6.holds is False and "RL 0.600 ± 0.000, CF-RL 0.600 ± 0.000" in c6.numbers
    assert V1.claim6_v1(rl, []).holds is None
    assert C.claim6_gradient_component(rl, cf).holds is None  # the synthetic runs log no claim6/ keys
    assert C.claim7_confidence(rl, cf).holds is True  # the same curves: "at least as much" within one std
    # the synthetic lp-ft head norm falls back at the stage boundary (10.5 -> 10.2): no inflation, not supported
    c8 = V1.claim8_v1(rl, cf, lp)
    assert c8.holds is False and c8.note == "" and "LP-FT 0.045 ± 0.000" in c8.numbers
    assert V1.claim8_v1(rl, cf, []).holds is None and C.claim8_lp_ft(rl, cf, []).holds is None
    assert C.claim_n1_ntk_drift(rl, cf, lp).holds is None  # no ntk/ keys: not tracked


def _head_run(recipe, norms, change, seed=0):  # head_norm at the first step and at the start of stage 2; change
    return _run(recipe, [{"stage": "stage1", "head_norm": norms[0]},
                         {"stage": "rl", "head_norm": norms[1], "feature_change": change}], seed=seed)


def test_claim8_v1_lp_inflates_head():
    rl = [_head_run("rl", (10.0, 10.0), 1.0)]
    good = V1.claim8_v1(rl, [_head_run("cf-rl", (10.0, 10.1), 1.0)], [_head_run("lp-ft", (10.0, 15.0), 0.5)])
    assert good.holds is True and "LP-FT 1.5000, CF-RL 1.0100" in good.numbers
    bad = V1.claim8_v1(rl, [_head_run("cf-rl", (10.0, 10.1), 0.4)], [_head_run("lp-ft", (10.0, 15.0), 0.5)])
    assert bad.holds is False  # CF-RL's features moved less than LP-FT's


def test_claim8_revised_thresholds():
    rl = [_head_run("rl", (10.0, 10.0), 1.0, 0), _head_run("rl", (10.0, 10.0), 1.2, 1)]  # RL change 1.1 ± 0.1
    lp = [_head_run("lp-ft", (10.0, 15.0), 0.5)]  # LP grows ‖W‖ by 50 %, its features move less than RL's
    assert C.claim8_lp_ft(rl, [_head_run("cf-rl", (10.0, 10.1), 1.0)], lp).holds is True  # 1.0 >= 1.1 - 0.1
    assert C.claim8_lp_ft(rl, [_head_run("cf-rl", (10.0, 10.1), 0.9)], lp).holds is False  # smaller than RL's
    # CF-RL's stage 1 grows ‖W‖ by 25 % = half of LP's 50 %: that is inflating (the share must stay below 0.5)
    assert C.claim8_lp_ft(rl, [_head_run("cf-rl", (10.0, 12.5), 1.1)], lp).holds is False
    assert C.claim8_lp_ft(rl, [_head_run("cf-rl", (10.0, 12.4), 1.1)], lp).holds is True


def _c6_run(recipe, tr, align, gain, seed=0):
    first = {"stage": "rl", "claim6/trG_answer": tr, "claim6/align_G": align, "claim6/gain_G": gain,
             "claim6/align_R": 0.1}
    return _run(recipe, ([{"stage": "stage1"}] if recipe != "rl" else []) + [first, {"stage": "rl"}], seed=seed)


def test_claim6_three_measures():
    rl = [_c6_run("rl", 2.0, 0.30, 0.010, 0), _c6_run("rl", 2.0, 0.32, 0.012, 1)]  # align .31±.01, gain .011±.001
    cf = [_c6_run("cf-rl", 2.5, 0.40, 0.020, 0), _c6_run("cf-rl", 2.5, 0.42, 0.022, 1)]
    c = C.claim6_gradient_component(rl, cf)
    assert c.holds is True and c.n == "6" and "6a holds, 6b holds, 6c holds" in c.numbers
    assert "(a) tr G_S on the answer tokens: RL 2.0000 ± 0.0000, CF-RL 2.5000 ± 0.0000" in c.numbers
    same_g = [_c6_run("cf-rl", 2.08, 0.40, 0.020, s) for s in (0, 1)]  # tr G_S within 5 %: 6a fails
    assert C.claim6_gradient_component(rl, same_g).holds is False
    close = [_c6_run("cf-rl", 2.5, 0.325, 0.020, s) for s in (0, 1)]  # +0.015: not above 0.02
    assert "6b fails" in C.claim6_gradient_component(rl, close).numbers
    less_gain = [_c6_run("cf-rl", 2.5, 0.40, 0.011, s) for s in (0, 1)]
    assert "6c fails" in C.claim6_gradient_component(rl, less_gain).numbers
    assert C.claim6_gradient_component(rl, []).holds is None
    tied = [_c6_run("cf-rl", 2.5, float("nan"), 0.0, s) for s in (0, 1)]  # all advantages 0: no direction
    assert C.claim6_gradient_component(rl, tied).verdict == B.CANNOT


def test_claim_n1_drift():
    def run(recipe, align):
        return _run(recipe, [{"stage": "rl", "ntk/align_K": 1.0, "ntk/align_R": 1.0, "ntk/align_G": 1.0,
                              "ntk/change_K": 0.0},
                             {"stage": "rl", "ntk/align_K": align, "ntk/align_R": 0.99, "ntk/align_G": align,
                              "ntk/change_K": 0.2}])
    assert C.claim_n1_ntk_drift([run("rl", 0.95), run("rl", 0.9)], [], []).holds is True
    d = C.claim_n1_ntk_drift([run("rl", 0.95), run("rl", 0.89)], [run("cf-rl", 0.5)], [])
    assert d.holds is False and "CF-RL: final alignment K 0.500" in d.numbers


def test_claim5_cannot_show_without_a_rise():
    flat = _run("rl", [{"stage": "rl", "reward": 0.2, "eval/reward": 0.2} for _ in range(10)])
    cf = _run("cf-rl", [{"stage": "stage1", "eval/reward": 0.2}] + [{"stage": "rl", "reward": 0.2,
                                                                     "eval/reward": 0.2}] * 10, head_steps=1)
    c = C.claim5_cf_rl_speed([flat], [cf])
    assert c.holds is None and c.verdict == B.CANNOT and "rose by 0.000" in c.note


def test_claim5_faster_stage2():
    def rl_run(recipe, rewards, s1=(0.0, 0.0)):
        recs = [{"stage": "stage1", "eval/reward": s1[0]}] if recipe == "cf-rl" else []
        recs += [{"stage": "rl", "reward": r, **({"eval/reward": r} if i in (0, len(rewards) - 1) else {})}
                 for i, r in enumerate(rewards)]
        if recipe == "cf-rl":
            recs[1]["eval/reward"] = s1[1]
        return _run(recipe, recs, head_steps=2)

    slow = rl_run("rl", [0.0] * 5 + [1.0] * 10)
    fast = rl_run("cf-rl", [1.0] * 15, s1=(0.0, 0.1))
    c = C.claim5_cf_rl_speed([slow], [fast])
    assert c.verdict == "supported" and "RL [8], CF-RL stage 2 [1]" in c.numbers
    not_slight = C.claim5_cf_rl_speed([slow], [rl_run("cf-rl", [1.0] * 15, s1=(0.0, 0.9))])
    assert not_slight.verdict == "not supported"


def test_claims_records(tmp_path):
    """The earlier readings (v2, v1) as rows of reproduce/claims.py's table: judged on the mean and per seed."""
    from ntkdyn.reproduce.claims import ORDER, ORDER_V1, ORDER_V2, claims

    one = {"prop2": {}, "lr": 0.003}
    out = claims(write_runs(tmp_path), {"stats": STATS, "table": {}}, one)
    assert [c["n"] for c in out] == list(ORDER + ORDER_V2 + ORDER_V1)
    earlier = [c for c in out if c["earlier"]]
    assert [c["n"] for c in earlier] == list(ORDER_V2 + ORDER_V1)
    for c in earlier:
        assert list(c) == ["n", "claim", "numbers", "holds", "verdict", "note", "id", "version", "verdict_mean",
                           "per_seed", "earlier"]
        seeds = [p["seed"] for p in c["per_seed"]]
        # the run-based claims are judged per seed too (2 seeds in the synthetic runs); the others once
        assert seeds == ([] if c["id"] in ("1", "1x", "3", "4") else [0, 1])
        assert c["verdict"] == B.robust_verdict(c["holds"], [p["holds"] for p in c["per_seed"]],
                                                fallback=c["verdict_mean"])
    by_n = {c["n"]: c for c in out}
    # claim 6 v1: seed 0 and seed 1 have the same share curves, so each seed alone is "not supported" as the mean is
    assert [p["verdict"] for p in by_n["6 (v1)"]["per_seed"]] == ["not supported", "not supported"]
    assert by_n["6 (v1)"]["verdict"] == "not supported"
    assert "RL 0.600, CF-RL 0.600" in by_n["6 (v1)"]["per_seed"][0]["numbers"]  # one seed: the value alone
    assert by_n["2 (v2)"]["claim"].startswith("[A] RL raises confidence")
    empty = claims(tmp_path / "nothing", {"stats": STATS}, one)
    assert {c["verdict"] for c in empty if c["id"] not in ("1", "1x")} == {"not measured"}


def test_claims_pass_at_k_per_seed(tmp_path):
    from ntkdyn.reproduce.claims import claims

    passk = _passk([0.2, 0.9], [[0.5, 0.95], [0.6, 0.7]])  # seed 0's RL policy is above the base at k = 256
    out = {c["n"]: c for c in claims(write_runs(tmp_path), {"stats": STATS}, {"prop2": {}}, passk)}
    assert [p["verdict"] for p in out["2x (v2)"]["per_seed"]] == ["not supported", "supported"]
    assert out["2x (v2)"]["verdict"] == "mixed"
    assert "falls below" not in out["2x (v2)"]["per_seed"][0]["numbers"]  # the crossing is the mean curves' only


@pytest.mark.parametrize("mean, seeds, verdict", [
    (True, [True, True, True], "supported"), (False, [False, False], "not supported"),
    (True, [True, False, True], "mixed"), (False, [True, True], "mixed"), (None, [], "not measured"),
    (True, [], "supported"), (None, [None, True], "supported"), (None, [None, None], "not measured")])
def test_robust_verdict(mean, seeds, verdict):
    assert B.robust_verdict(mean, seeds) == verdict
    assert B.robust_verdict(None, [None], fallback=B.CANNOT) == B.CANNOT


def test_robustness_table():
    from ntkdyn.reproduce.pipeline import robustness_markdown

    def claim(n, verdict, per):
        return dict(n=n, claim=f"claim {n}", verdict=verdict, per_seed=[dict(verdict=v) for v in per])

    results = {0: [claim(1, "supported", []), claim(2, "mixed", ["supported", "not supported"])],
               5: [claim(1, "supported", []), claim(2, "supported", ["supported", "supported"])]}
    text = robustness_markdown(results, {0: 0.285, 5: None})
    assert "| base seed 0 (reward 0.285) | base seed 5 |" in text
    assert "| 2 | claim 2 | **mixed** (supported, not supported) | **supported** (supported, supported) |" in text
    assert "same on every base model: [1]" in text


@pytest.mark.parametrize("holds, verdict", [(True, "supported"), (False, "not supported"), (None, "not measured")])
def test_claim_result(holds, verdict):
    c = B.ClaimResult("3", "text", "numbers", holds)
    assert c.verdict == verdict and c.as_dict()["verdict"] == verdict and c.as_dict()["note"] == ""
    assert B.ClaimResult("3", "t", "n", holds, cannot=True).verdict == (B.CANNOT if holds is None else verdict)


def test_claim6_leaves_out_zero_updates():
    """A run whose first full-RL batch had every advantage 0 (align NaN, gain 0 by construction) is left out of
    (b) and (c) alike, and the numbers say so; the other runs decide."""
    rl = [_c6_run("rl", 2.0, 0.30, 0.010, 0), _c6_run("rl", 2.0, 0.32, 0.012, 1)]
    cf = [_c6_run("cf-rl", 2.5, float("nan"), 0.0, 0), _c6_run("cf-rl", 2.5, 0.40, 0.020, 1)]
    c = C.claim6_gradient_component(rl, cf)
    assert "CF-RL 0.0200" in c.numbers and "left out of (b) and (c)" in c.numbers and "1 CF-RL run(s)" in c.numbers
    assert "6c holds" in c.numbers  # 0.020 > 0.011 + 0.001; with the zero gain in, 0.010 ± 0.010 would fail
