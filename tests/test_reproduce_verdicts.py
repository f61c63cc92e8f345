"""ntkdyn.reproduce.verdicts: each claim's verdict on hand-made run records and result dicts, at and around its
named thresholds, and the record layout of `claims`."""
import math

import pytest
from run_logs import write_runs

from ntkdyn.plots import Run
from ntkdyn.reproduce import verdicts as C

STATS = {"cos_prompts_last": 0.9, "cos_prompts_mean": 0.8, "cos_positions": 0.5, "s_mean": 10.0, "s_cv": 0.2,
         "effective_rank_frac": 0.1}


def _run(recipe, records, **config):
    return Run(config={"recipe": recipe, **config}, records=records)


def test_numbers_formatting():
    assert C.mean_std([1.0, None, float("nan"), 3.0]) == (2.0, 1.0, 2)
    assert math.isnan(C.mean_std([])[0]) and C.mean_std([])[2] == 0
    assert C.fmt_mean_std([1.0, 3.0]) == "2.000 ± 1.000"
    assert C.fmt_mean_std([0.5], 1) == "0.5"
    assert C.fmt_mean_std([]) == "n/a"
    assert C.fmt_number(0.12345, 4) == "0.1235" and C.fmt_number(None) == "n/a"
    assert C.fmt_number(float("inf")) == "n/a"


def test_claim1_thresholds():
    c = C.claim1_features(STATS)
    assert c.holds is True and c.verdict == "supported" and c.n == 1
    assert "0.900 (last prompt position)" in c.numbers and "s std/|mean| 0.200" in c.numbers
    assert f"> {C.CLAIM1_MIN_COS_PROMPTS:g}" in c.note
    for key, bad in (("cos_prompts_last", C.CLAIM1_MIN_COS_PROMPTS), ("cos_positions", C.CLAIM1_MIN_COS_POSITIONS),
                     ("s_cv", C.CLAIM1_MAX_S_CV)):
        assert C.claim1_features({**STATS, key: bad}).holds is False, key  # the thresholds are strict


def test_claim2_confidence_up_diversity_down():
    def run(d):  # eval values at the first and last eval of one RL run; d = +1 confident, -1 the opposite
        recs = [{"stage": "rl", "eval/max_prob": 0.3 + 0.1 * d * i, "eval/logp": -1.0 + 0.1 * d * i,
                 "eval/entropy": 2.0 - 0.1 * d * i, "eval/unique_answers": 5 - d * i,
                 "eval/pass_at_k_curve": [[1, 0.5], [8, 1.0]]} for i in range(2)]
        return _run("rl", recs)

    c = C.claim2_confidence_diversity([run(1), run(1)])
    assert c.holds is True and "Δ max-prob 0.100 ± 0.000" in c.numbers
    assert "pass@k at the largest k is 1" in c.note  # pass@kmax was 1 before RL
    assert C.claim2_confidence_diversity([run(-1)]).holds is False
    assert C.claim2_confidence_diversity([]).holds is None


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
    assert zero.holds is None and zero.verdict == "not measured" and "step was zero" in zero.note


def test_claims_5_to_8_on_synthetic_runs(tmp_path):
    from ntkdyn.plots import load_runs

    R = load_runs(write_runs(tmp_path))
    rl, cf, lp = R["rl"], R["cf-rl"], R["lp-ft"]
    c5 = C.claim5_cf_rl_speed(rl, cf)
    # stage 1 gains as much eval reward as RL's whole run here (verdicts compared: holds may be a numpy bool)
    assert c5.verdict == "not supported"
    assert "stage-1 cost [4, 4] head-only steps" in c5.numbers
    c6 = C.claim6_gradient_share(rl, cf)
    assert c6.holds is False and "RL 0.600 ± 0.000, CF-RL 0.600 ± 0.000" in c6.numbers
    assert C.claim6_gradient_share(rl, []).holds is None
    assert C.claim7_confidence(rl, cf).holds is True  # the same curves: "at least as much" within one std
    # the synthetic lp-ft head norm falls back at the stage boundary (10.5 -> 10.2): no inflation, not supported
    c8 = C.claim8_head_norm(rl, cf, lp)
    assert c8.holds is False and c8.note == "" and "LP-FT 0.045 ± 0.000" in c8.numbers
    assert C.claim8_head_norm(rl, cf, []).holds is None


def test_claim8_lp_inflates_head():
    def run(recipe, norms, change):  # head_norm at the first step and at the start of stage 2; final change
        return _run(recipe, [{"stage": "stage1", "head_norm": norms[0]},
                             {"stage": "rl", "head_norm": norms[1], "feature_change": change}])

    rl = [run("rl", (10.0, 10.0), 1.0)]
    good = C.claim8_head_norm(rl, [run("cf-rl", (10.0, 10.1), 1.0)], [run("lp-ft", (10.0, 15.0), 0.5)])
    assert good.holds is True and "LP-FT 1.5000, CF-RL 1.0100" in good.numbers
    bad = C.claim8_head_norm(rl, [run("cf-rl", (10.0, 10.1), 0.4)], [run("lp-ft", (10.0, 15.0), 0.5)])
    assert bad.holds is False  # CF-RL's features moved less than LP-FT's


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
    one = {"prop2": {}, "lr": 0.003}
    out = C.claims(write_runs(tmp_path), {"stats": STATS, "table": {}}, one)
    assert [c["n"] for c in out] == list(range(1, 9))
    for c in out:
        assert list(c) == ["n", "claim", "numbers", "holds", "verdict", "note", "verdict_mean", "per_seed"]
        assert c["verdict_mean"] == C.VERDICTS[c["holds"]]
        seeds = [p["seed"] for p in c["per_seed"]]
        # the run-based claims are judged per seed too (2 seeds in the synthetic runs); the others once
        assert seeds == ([0, 1] if c["n"] in (2, 5, 6, 7, 8) else [])
        assert c["verdict"] == C.robust_verdict(c["holds"], [p["holds"] for p in c["per_seed"]])
    by_n = {c["n"]: c for c in out}
    # claim 6: seed 0 and seed 1 have the same share curves, so each seed alone is "not supported" as the mean is
    assert [p["verdict"] for p in by_n[6]["per_seed"]] == ["not supported", "not supported"]
    assert by_n[6]["verdict"] == "not supported"
    assert "RL 0.600, CF-RL 0.600" in by_n[6]["per_seed"][0]["numbers"]  # one seed: the value alone
    empty = C.claims(tmp_path / "nothing", {"stats": STATS}, one)
    assert [c["verdict"] for c in empty][1:] == ["not measured"] * 7


@pytest.mark.parametrize("mean, seeds, verdict", [
    (True, [True, True, True], "supported"), (False, [False, False], "not supported"),
    (True, [True, False, True], "mixed"), (False, [True, True], "mixed"), (None, [], "not measured"),
    (True, [], "supported"), (None, [None, True], "supported"), (None, [None, None], "not measured")])
def test_robust_verdict(mean, seeds, verdict):
    assert C.robust_verdict(mean, seeds) == verdict


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
    c = C.ClaimResult(3, "text", "numbers", holds)
    assert c.verdict == verdict and c.as_dict()["verdict"] == verdict and c.as_dict()["note"] == ""
