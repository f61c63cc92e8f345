"""reproduce/claims.py, the v3 rows: each claim's effect values per seed (paired) or per item, computed by hand from
hand-made records, and the verdicts the rule gives them (a clear effect, a zero effect with noise, a reversed one)."""
import numpy as np
import pytest

from ntkdyn import stats
from ntkdyn.plots import Run
from ntkdyn.reproduce.claims import ORDER, TABLE, claims

STATS = {"cos_prompts_last": 0.9, "cos_prompts_mean": 0.8, "cos_positions": 0.5, "s_mean": 10.0, "s_cv": 0.2,
         "effective_rank_frac": 0.1}


def _run(recipe, seed, records, **config):
    return Run(config={"recipe": recipe, "seed": seed, **config}, records=records)


def _eval(recipe, seed, first, last):
    """A run with two eval lines: `first` and `last` dicts of eval/ keys."""
    return _run(recipe, seed, [dict(step=0, stage="rl", **first), dict(step=1, stage="rl", **last)])


def _judge(runs, features=None, one=None, passk=None):
    out = claims(runs, features or {"stats": STATS}, one or {}, passk)
    return {c["n"]: c for c in out}


def test_table_rows():
    assert ORDER == ("1", "1x", "2", "2x", "3", "4", "5", "6", "7", "8", "N1")
    for c in TABLE:
        assert c.version in ("v1", "v2", "v3") and c.rule == {"v3": "t95", "v2": "all-seeds", "v1": "mean"}[c.version]
        if c.version == "v3":
            assert c.effects and all(side in ("above", "below") for _, _, side in c.effects)


@pytest.mark.parametrize("shift, verdict", [(0.1, "supported"), (None, "inconclusive"), (-0.1, "not supported")])
def test_claim7_paired_by_seed(shift, verdict):
    rng = np.random.default_rng(1)
    rl_mp = rng.uniform(0.5, 0.9, 10)  # seeds differ a lot; the pairing removes that spread
    noise = rng.normal(0, 0.01, 10)
    d = noise - noise.mean() - 0.02 if shift is None else shift + noise  # None: exactly on the margin −0.02
    rl = [_eval("rl", s, {"eval/max_prob": 0.3, "eval/entropy": 1.0}, {"eval/max_prob": rl_mp[s],
                                                                        "eval/entropy": 0.5}) for s in range(10)]
    cf = [_eval("cf-rl", s, {"eval/max_prob": 0.3, "eval/entropy": 1.0}, {"eval/max_prob": rl_mp[s] + d[s],
                                                                           "eval/entropy": 0.4}) for s in range(10)]
    c = _judge({"rl": rl, "cf-rl": cf})["7"]
    mp, ent = c["effects"]
    assert mp["values"] == pytest.approx(list(d)) and mp["n"] == 10 and mp["threshold"] == -0.02
    assert ent["values"] == pytest.approx([-0.1] * 10) and ent["verdict"] == "supported"
    assert mp["verdict"] == verdict and c["verdict"] == verdict
    if verdict == "inconclusive":
        assert c["needed"] is None  # the mean sits on the threshold: no number of seeds decides it
    else:
        assert c["needed"] is None and c["n_items"] == 10


def test_claim2_per_seed_deltas_and_seeds_needed():
    d = [0.02, -0.01, 0.03, 0.0, 0.01]
    rl = [_eval("rl", s, {"eval/max_prob": 0.5, "eval/logp": -1.0, "eval/entropy": 1.0},
                {"eval/max_prob": 0.5 + d[s], "eval/logp": -0.5, "eval/entropy": 0.8}) for s in range(5)]
    c = _judge({"rl": rl})["2"]
    mp, lp, en = c["effects"]
    assert mp["values"] == pytest.approx(d) and lp["verdict"] == en["verdict"] == "supported"
    assert c["verdict"] == "inconclusive" and c["needed"] == stats.items_needed(np.mean(d), np.std(d, ddof=1), 0.0)
    assert c["needed"] > 5 and "seeds" == c["unit"]


def _speed_run(recipe, seed, rewards, s1=None):
    recs = [dict(step=k, stage="rl", reward=r) for k, r in enumerate(rewards)]
    recs[0]["eval/reward"], recs[-1]["eval/reward"] = 0.0, 1.0
    if s1 is not None:  # stage-1 eval reward start, then stage 2's first eval
        recs = [dict(step=0, stage="stage1", **{"eval/reward": s1[0]})] + recs
        recs[1]["eval/reward"] = s1[1]
    return _run(recipe, seed, recs, steps=len(rewards))


def test_claim5_steps_to_halfway_paired():
    slow = [0.0] * 5 + [1.0] * 10  # 5-record start 0, end 1: halfway 0.5, reached at the 8th step (ma of 5)
    fast = [1.0] * 15  # reached at step 1
    rl = [_speed_run("rl", s, slow) for s in range(3)]
    cf = [_speed_run("cf-rl", s, fast, s1=(0.0, 0.1 * s)) for s in range(3)]
    c = _judge({"rl": rl, "cf-rl": cf})["5"]
    speed, slight = c["effects"]
    assert speed["values"] == [7.0, 7.0, 7.0] and speed["verdict"] == "supported"
    assert slight["values"] == pytest.approx([0.5, 0.4, 0.3]) and c["verdict"] == "supported"
    never = [_speed_run("cf-rl", s, [0.0] * 15, s1=(0.0, 0.0)) for s in range(3)]  # never: its steps + 1 = 16
    assert _judge({"rl": rl, "cf-rl": never})["5"]["effects"][0]["values"] == [-8.0] * 3
    flat = [_speed_run("rl", s, [0.5] * 15) for s in range(3)]
    c = _judge({"rl": flat, "cf-rl": cf})["5"]
    assert c["verdict"] == stats.CANNOT and "rose by 0.000" in c["note"]


def _c6(recipe, seed, tr, align, gain):
    return _run(recipe, seed, [dict(step=0, stage="rl", **{"claim6/trG_answer": tr, "claim6/align_G": align,
                                                           "claim6/gain_G": gain})])


def test_claim6_paired_and_zero_updates_left_out():
    rl = [_c6("rl", s, 2.0, 0.1, 0.01) for s in range(3)]
    cf = [_c6("cf-rl", 0, 3.0, float("nan"), 0.0)] + [_c6("cf-rl", s, 3.0 + s / 10, 0.2, 0.02 + s / 100)
                                                        for s in (1, 2)]
    c = _judge({"rl": rl, "cf-rl": cf})["6"]
    a, b, g = c["effects"]
    assert a["values"] == pytest.approx([0.5, 0.55, 0.6]) and a["verdict"] == "supported"
    assert b["values"] == pytest.approx([0.1, 0.1]) and g["values"] == pytest.approx([0.02, 0.03])
    assert "left out of (b), (c) (a zero first update): [0]" in c["numbers"]


def _head(recipe, seed, g, fc):
    return _run(recipe, seed, [dict(step=0, stage="stage1", head_norm=1.0),
                               dict(step=1, stage="rl", head_norm=g, feature_change=fc)])


def test_claim8_four_paired_effects():
    rl = [_run("rl", s, [dict(step=0, stage="rl", feature_change=10.0 + s)]) for s in range(3)]
    lp = [_head("lp-ft", s, 1.10, 8.0 + s) for s in range(3)]
    cf = [_head("cf-rl", s, 1.01 + 0.01 * s, 10.0 + s * 1.1) for s in range(3)]
    a, b, c_, d = _judge({"rl": rl, "cf-rl": cf, "lp-ft": lp})["8"]["effects"]
    assert a["values"] == pytest.approx([0.09, 0.08, 0.07]) and b["values"] == pytest.approx([0.04, 0.03, 0.02])
    assert c_["values"] == pytest.approx([-2.0] * 3) and c_["verdict"] == "supported"
    assert d["values"] == pytest.approx([0.0, 0.1 / 11, 0.2 / 12])


def test_claim2x_per_seed_against_the_base_and_saturation():
    rl = [_eval("rl", s, {"eval/unique_answers": 6.0}, {"eval/unique_answers": 3.0 + 0.1 * s}) for s in range(3)]
    passk = {"ks": [1, 256], "task": "plus", "prompts": 4,
             "policies": {"base": {"seeds": [None], "curves": [[0.2, 1.0]]},
                          "rl": {"seeds": [0, 1, 2], "curves": [[0.3, 0.9], [0.3, 0.8], [0.3, 0.85]]}}}
    c = _judge({"rl": rl}, passk=passk)["2x"]
    u, p = c["effects"]
    assert u["values"] == pytest.approx([-3.0, -2.9, -2.8]) and p["values"] == pytest.approx([-0.1, -0.2, -0.15])
    assert c["verdict"] == "supported"
    sat = dict(passk, policies=dict(passk["policies"], rl={"seeds": [0], "curves": [[0.3, 1.0]]}))
    assert _judge({"rl": rl}, passk=sat)["2x"]["verdict"] == stats.CANNOT
    assert _judge({"rl": rl})["2x"]["verdict"] == "not measured"


def test_base_model_claims_over_items():
    feats = {"stats": STATS, "items": {"cos_prompts_last": [0.9, 0.95, 0.92, 0.97], "cos_positions": [0.2, 0.5]}}
    one = {"dz_norm": 1.0, "lr": 0.003, "per_probe": {"rel_error": [0.01, 0.02, 0.015, 0.012]},
           "prop2": {"samples": [dict(s=[1.0, -1.0, 2.0], argmax_is_y=[True, False, True], logp_y_up=[True, True, False]),
                                 dict(s=[-1.0, -2.0], argmax_is_y=[True, True], logp_y_up=[True, True]),
                                 dict(s=[1.0, 1.0], argmax_is_y=[True, True], logp_y_up=[True, True])]}}
    out = _judge({}, feats, one)
    c1 = out["1"]["effects"][0]
    assert c1["values"] == [0.9, 0.95, 0.92, 0.97] and c1["unit"] == "prompts" and out["1"]["verdict"] == "supported"
    assert out["1x"]["verdict"] == "inconclusive" and out["1x"]["unit"] == "sequences"
    arg, up = out["3"]["effects"]
    assert arg["values"] == [1.0, 1.0] and up["values"] == [0.5, 1.0]  # the update with no s > 0 probe left out
    assert "1 update(s) without a probe at s > 0 left out" in out["3"]["numbers"]
    assert out["4"]["verdict"] == "supported" and out["4"]["effects"][0]["n"] == 4
    assert _judge({}, feats, dict(one, dz_norm=0.0))["4"]["verdict"] == stats.CANNOT
    old = _judge({}, {"stats": STATS}, one)["1"]  # a reproduction made before v3: no items
    assert old["verdict"] == "not measured" and "before v3" in old["note"]


def test_n1_per_rl_seed():
    rl = [_run("rl", s, [dict(step=0, stage="rl", **{"ntk/align_K": 1.0}), dict(step=5, stage="rl",
                                                                               **{"ntk/align_K": a})])
          for s, a in enumerate([0.95, 0.96, 0.97])]
    c = _judge({"rl": rl})["N1"]
    assert c["effects"][0]["values"] == [0.95, 0.96, 0.97] and c["verdict"] == "supported"
    assert _judge({"rl": [_eval("rl", 0, {}, {})]})["N1"]["verdict"] == "not measured"
    assert _judge({})["7"]["verdict"] == "not measured" and _judge({})["7"]["effects"] == []
