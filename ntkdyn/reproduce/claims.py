"""The one table of claims (`TABLE`) and `claims`, which judges every entry of it on a reproduction's outputs.

Each entry is a `Claim`: id ("7"), version ("v3", "v2", "v1"), the claim's text, its measure (a function of the
reproduction's `Inputs`), the effect definition, threshold and side (v3; docs/claims.md, "Version 3") and its rule:
  "t95"       (v3) the effect per seed (paired by seed where two recipes share it) or per item (prompts, probes,
              updates) of a claim measured once on the base model, a 95 % t interval and ntkdyn.stats' verdict;
  "all-seeds" (v2) the claim's test on the mean over seeds and on every seed alone (ClaimResult; "mixed" when they
              disagree): the reading docs/claims.md fixed before v3;
  "mean"      (v1) the test on the mean (the readings before the spec's revision), judged as v2 judges.
The v2 / v1 measure functions live in earlier.py; the v3 measures are here; the pieces both use (pass@k of a
policy, steps to a reward, stage-1 gains, head growth) are in claim_base.py. Runs are read through plots.runs.load_runs (rl/rundir.read_run underneath).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import numpy as np

from .. import stats as S
from ..plots.runs import load_runs
from .claim_base import (CLAIM5_MIN_RISE, CLAIM5_START_RECORDS, CLAIM5_THRESHOLD_FRACTION, PASSK_SATURATED, VERDICTS,
                         first_in_stage, first_last, head_growth, passk_at, robust_verdict, stage1_gains, steps_to)
from .earlier import (claim1_features, claim1_v1, claim1x_positions, claim2_confidence, claim2_v1, claim2x_diversity,
                      claim3_prop2, claim4_first_order, claim5_cf_rl_speed, claim6_gradient_component, claim6_v1,
                      claim7_confidence, claim8_lp_ft, claim8_v1, claim_n1_ntk_drift)

__all__ = ["Claim", "Inputs", "Measured", "TABLE", "ORDER", "ORDER_V2", "ORDER_V1", "claims", "label"]


class Inputs(NamedTuple):
    """What the claims read: the runs of each recipe (plots.runs.Run lists), the feature analysis's result
    ("stats", and "items": per-prompt / per-sequence values), the one-step result and the pass@k result (None:
    not measured)."""

    rl: list
    cf: list
    lp: list
    features: dict
    one_step: dict
    passk: dict | None


class Measured(NamedTuple):
    """A v3 measure's result: its effects (ntkdyn.stats.Effect, a conjunction), extra numbers, and `cannot` (the
    reason the setting cannot show the claim) or `missing` (why nothing was measured)."""

    effects: list
    numbers: str = ""
    cannot: str = ""
    missing: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One row of the claims' table (see the module docstring). `effects`: the v3 effect definitions as
    (name, threshold, side) — stated here once; the measure computes the values in this order."""

    id: str
    version: str
    text: str
    measure: Callable
    rule: str
    effects: tuple = ()
    unit: str = "seeds"


# ------------------------------------------------------------------------------------------------- helpers
def _by_seed(runs) -> dict:
    return {r.seed: r for r in runs if r.seed is not None}


def _paired(a_runs, b_runs, f) -> list:
    """f(a, b) for every seed that both recipes ran (None where f cannot tell), in seed order."""
    a, b = _by_seed(a_runs), _by_seed(b_runs)
    return [f(a[s], b[s]) for s in sorted(set(a) & set(b), key=str)]


def _one(run, key, stage=None, which=1):
    return first_last(run, key, stage)[which]


def _delta(run, key):
    a, b = first_last(run, key)
    return None if a is None else b - a


def _effects(c: Claim, *values) -> list:
    return [S.effect(name, v, thr, side, c.unit) for (name, thr, side), v in zip(c.effects, values)]


def _sub(a, b):
    return None if a is None or b is None else a - b


# ------------------------------------------------------------------------------------------------- v3 measures
def _m1(c, i: Inputs) -> Measured:
    v = (i.features.get("items") or {}).get("cos_prompts_last")
    if not v:
        return Measured([], missing="no per-prompt cosines (a reproduction made before v3): rerun it")
    return Measured(_effects(c, v))


def _m1x(c, i: Inputs) -> Measured:
    v = (i.features.get("items") or {}).get("cos_positions")
    if not v:
        return Measured([], missing="no per-sequence cosines (a reproduction made before v3): rerun it")
    return Measured(_effects(c, v), f"s std/|mean| {i.features['stats'].get('s_cv', float('nan')):.3f} (reported)")


def _m2(c, i: Inputs) -> Measured:
    if not i.rl:
        return Measured([], missing="no RL runs")
    return Measured(_effects(c, *([_delta(r, k) for r in i.rl] for k in ("eval/max_prob", "eval/logp",
                                                                         "eval/entropy"))))


def _m2x(c, i: Inputs) -> Measured:
    d_uniq = [_delta(r, "eval/unique_answers") for r in i.rl]
    pk = i.passk
    if not pk or "rl" not in pk.get("policies", {}) or "base" not in pk["policies"]:
        return Measured([], missing="no pass@k curves were measured")
    kmax = max(pk["ks"])
    base, rl = passk_at(pk, "base", kmax)[0], passk_at(pk, "rl", kmax)
    extra = f"pass@{kmax} base {base:.3f}; task {pk.get('task')}, {pk.get('prompts')} prompts × {kmax} samples"
    if min([base] + rl) >= PASSK_SATURATED:
        return Measured([], extra, cannot=f"pass@{kmax} is ≥ {PASSK_SATURATED} for the base and every RL policy: "
                                          "no room to lose coverage at this k")
    return Measured(_effects(c, d_uniq, [x - base for x in rl]), extra)


def _m3(c, i: Inputs) -> Measured:
    samples = (i.one_step.get("prop2") or {}).get("samples") or []
    arg, up = [], []
    for p in samples:
        pos = np.asarray(p["s"]) > 0
        if pos.any():
            arg.append(float(np.asarray(p["argmax_is_y"])[pos].mean()))
            up.append(float(np.asarray(p["logp_y_up"])[pos].mean()))
    if not arg:
        return Measured([], missing="no single-sample update with a probe at s > 0")
    return Measured(_effects(c, arg, up), f"{len(samples) - len(arg)} update(s) without a probe at s > 0 left out"
                    if len(arg) < len(samples) else "")


def _m4(c, i: Inputs) -> Measured:
    rel = (i.one_step.get("per_probe") or {}).get("rel_error")
    if rel is None:
        return Measured([], missing="no one-step result")
    if not (i.one_step.get("dz_norm") or 0) > 0:
        return Measured([], cannot="the sampled groups all had equal rewards, so the step was zero")
    return Measured(_effects(c, rel), f"lr {i.one_step.get('lr')}")


def _full_rl_steps(run):
    return int(run.config.get("steps") or sum(1 for r in run.records if r.get("stage") == "rl" and "reward" in r))


def _m5(c, i: Inputs) -> Measured:
    if not i.rl or not i.cf:
        return Measured([], missing="needs RL and CF-RL runs")

    def start_end(r):
        rew = [x["reward"] for x in r.records[:CLAIM5_START_RECORDS] if "reward" in x]
        return (float(np.mean(rew)) if rew else None), _one(r, "reward")

    rises = [e - s for s, e in map(start_end, i.rl) if s is not None and e is not None]
    if not rises:
        return Measured([], missing="RL logged no train reward")
    if np.mean(rises) < CLAIM5_MIN_RISE:
        return Measured([], cannot=f"RL's train reward rose by {np.mean(rises):.3f} < {CLAIM5_MIN_RISE:g}: no "
                                   "threshold to reach")

    def speed(rl, cf):
        s, e = start_end(rl)
        if s is None or e is None:
            return None
        thr = s + CLAIM5_THRESHOLD_FRACTION * (e - s)
        n_rl, n_cf = steps_to(rl, thr), steps_to(cf, thr)
        return (n_rl or _full_rl_steps(rl) + 1) - (n_cf or _full_rl_steps(cf) + 1)

    def slight(rl, cf):
        g1, g = stage1_gains([cf]), _delta(rl, "eval/reward")
        return None if not g1 or g is None else 0.5 * abs(g) - abs(g1[0])

    return Measured(_effects(c, _paired(i.rl, i.cf, speed), _paired(i.rl, i.cf, slight)))


def _m6(c, i: Inputs) -> Measured:
    def first(run, key):
        v = first_in_stage([run], key)
        return v[0] if v and np.isfinite(v[0]) else None

    def ratio(rl, cf):
        a, b = first(rl, "claim6/trG_answer"), first(cf, "claim6/trG_answer")
        return None if a is None or b is None or a == 0 else abs(b / a - 1.0)

    def zero(run):  # the first full-RL batch had every advantage 0: cos(Δz_G, D) undefined (NaN)
        v = first_in_stage([run], "claim6/align_G")
        return bool(v) and not np.isfinite(v[0])

    def diff(key):
        return lambda rl, cf: None if zero(rl) or zero(cf) else _sub(first(cf, key), first(rl, key))

    a, b, g = (_paired(i.rl, i.cf, f) for f in (ratio, diff("claim6/align_G"), diff("claim6/gain_G")))
    if not any(x is not None for x in a):
        return Measured([], missing="the runs log no claim6/ keys (RLConfig.claim6)")
    left = sorted({r.seed for r in i.rl + i.cf if zero(r)}, key=str)
    if not any(x is not None for x in b):
        return Measured([], cannot="every first full-RL step had all advantages 0 (D = 0)")
    return Measured(_effects(c, a, b, g), f"seeds left out of (b), (c) (a zero first update): {left}" if left else "")


def _m7(c, i: Inputs) -> Measured:
    if not i.rl or not i.cf:
        return Measured([], missing="needs RL and CF-RL runs")
    return Measured(_effects(c, *(_paired(i.rl, i.cf, lambda rl, cf, k=k: _sub(_one(cf, k), _one(rl, k)))
                                  for k in ("eval/max_prob", "eval/entropy"))))


def _m8(c, i: Inputs) -> Measured:
    if not (i.rl and i.cf and i.lp):
        return Measured([], missing="needs RL, CF-RL and LP-FT runs")

    def growth(r):
        g = head_growth([r])
        return g[0] if g else None

    def fc(r):
        return _one(r, "feature_change")

    a = _paired(i.lp, i.cf, lambda lp, cf: _sub(growth(lp), growth(cf)))
    b = _paired(i.lp, i.cf, lambda lp, cf: None if growth(lp) is None or growth(cf) is None
                else 0.5 * (growth(lp) - 1) - (growth(cf) - 1))
    cc = _paired(i.lp, i.rl, lambda lp, rl: _sub(fc(lp), fc(rl)))
    d = _paired(i.cf, i.rl, lambda cf, rl: None if fc(cf) is None or not fc(rl) else fc(cf) / fc(rl) - 1)
    return Measured(_effects(c, a, b, cc, d))


def _mn1(c, i: Inputs) -> Measured:
    v = [_one(r, "ntk/align_K") for r in i.rl]
    if not any(x is not None for x in v):
        return Measured([], missing="not tracked (ntk_every = 0)")
    return Measured(_effects(c, v))


# ------------------------------------------------------------------------------------------------- the table
TABLE = (
    # ---- v3 (docs/claims.md "Version 3"): effects with 95 % t intervals
    Claim("1", "v3", "[A, P Table 1] Features of different prompts are highly similar (limited variability of feature "
          "representations).", _m1, "t95", (("mean cos of a prompt's h with the others'", 0.5, "above"),), "prompts"),
    Claim("1x", "v3", "[N] … also across positions of one sequence.", _m1x, "t95",
          (("mean pairwise cos of h across a sequence's positions", 0.3, "above"),), "sequences"),
    Claim("2", "v3", "[A] RL raises confidence: on held-out prompts max-probability and log-prob of sampled tokens "
          "rise, entropy falls.", _m2, "t95",
          (("Δ eval max-prob (RL)", 0.0, "above"), ("Δ eval log-prob (RL)", 0.0, "above"),
           ("Δ eval entropy (RL)", 0.0, "below"))),
    Claim("2x", "v3", "[N] … with a loss of diversity: fewer distinct answers, and pass@k at large k (256) below the "
          "base model's on a single-answer task.", _m2x, "t95",
          (("Δ unique answers per prompt (RL)", 0.0, "below"), ("pass@kmax RL − base", 0.0, "below"))),
    Claim("3", "v3", "[P Prop. 2] One step with A > 0 on (c_u, y_u) raises log π(y_u | c_o) at unrelated probes "
          "with s > 0; argmax of Δz_R is y_u.", _m3, "t95",
          (("fraction with argmax Δz_R = y_u (s > 0)", 0.9, "above"),
           ("fraction with Δ log π(y_u) > 0 (s > 0)", 0.9, "above")), "updates"),
    Claim("4", "v3", "[N] The first-order prediction R + G matches the real Δz for small η (relative error < 5%).",
          _m4, "t95", (("‖Δz_pred − Δz_real‖/‖Δz_real‖ per probe", 0.05, "below"),), "probes"),
    Claim("5", "v3", "[A, P §5.3] CF-RL: stage 1 alone raises reward only slightly; stage 2 reaches a reward "
          "threshold in fewer steps than RL from the same start.", _m5, "t95",
          (("steps to halfway reward RL − CF-RL", 0.0, "above"),
           ("½|RL Δ eval reward| − |CF-RL stage-1 Δ eval reward|", 0.0, "above"))),
    Claim("6", "v3", "[A] Shaping the classifier (stage 1) directly affects the gradient component: at the first "
          "full-RL step G on the answer tokens has changed, and Δz_G is better aligned with, and gains more along, "
          "the reward-improving direction than in plain RL.", _m6, "t95",
          (("|tr G_S CF-RL / RL − 1|", 0.05, "above"), ("cos(Δz_G, D) CF-RL − RL", 0.02, "above"),
           ("gain through Δz_G CF-RL − RL", 0.0, "above"))),
    Claim("7", "v3", "[A] CF-RL raises confidence at least as much as RL.", _m7, "t95",
          (("final eval max-prob CF-RL − RL", -0.02, "above"), ("final eval entropy CF-RL − RL", 0.05, "below"))),
    Claim("8", "v3", "[A, P §5.4] Versus LP-FT: LP inflates ‖W‖_F and reduces later feature change; CF-RL's stage "
          "1 does not inflate ‖W‖_F and CF-RL's feature change is not smaller than RL's.", _m8, "t95",
          (("‖W‖_F growth LP-FT − CF-RL", 0.0, "above"), ("½(LP-FT growth − 1) − (CF-RL growth − 1)", 0.0, "above"),
           ("final feature change LP-FT − RL", 0.0, "below"), ("final feature change CF-RL / RL − 1", -0.05,
                                                                "above"))),
    Claim("N1", "v3", "[N] The eNTK (trace kernel on fixed probe contexts) stays stable during RL.", _mn1, "t95",
          (("final alignment of K with step 0 (RL)", 0.9, "above"),)),
    # ---- v2: the rules before v3 (mean and every seed)
    Claim("1", "v2", "", lambda i: claim1_features(i.features["stats"]), "all-seeds"),
    Claim("1x", "v2", "", lambda i: claim1x_positions(i.features["stats"]), "all-seeds"),
    Claim("2", "v2", "", lambda i: claim2_confidence(i.rl), "all-seeds"),
    Claim("2x", "v2", "", lambda i: claim2x_diversity(i.rl, i.passk), "all-seeds"),
    Claim("3", "v2", "", lambda i: claim3_prop2(i.one_step), "all-seeds"),
    Claim("4", "v2", "", lambda i: claim4_first_order(i.one_step), "all-seeds"),
    Claim("5", "v2", "", lambda i: claim5_cf_rl_speed(i.rl, i.cf), "all-seeds"),
    Claim("6", "v2", "", lambda i: claim6_gradient_component(i.rl, i.cf), "all-seeds"),
    Claim("7", "v2", "", lambda i: claim7_confidence(i.rl, i.cf), "all-seeds"),
    Claim("8", "v2", "", lambda i: claim8_lp_ft(i.rl, i.cf, i.lp), "all-seeds"),
    Claim("N1", "v2", "", lambda i: claim_n1_ntk_drift(i.rl, i.cf, i.lp), "all-seeds"),
    # ---- v1: before the spec's revision
    Claim("1", "v1", "", lambda i: claim1_v1(i.features["stats"]), "mean"),
    Claim("2", "v1", "", lambda i: claim2_v1(i.rl), "mean"),
    Claim("6", "v1", "", lambda i: claim6_v1(i.rl, i.cf), "mean"),
    Claim("8", "v1", "", lambda i: claim8_v1(i.rl, i.cf, i.lp), "mean"),
)
_BASE = {"1", "1x", "3", "4"}  # measured once on the base model: no per-seed reading


def label(c: Claim) -> str:
    """The claim's label in summary.md: "7" (v3), "7 (v2)", "7 (v1)"."""
    return c.id if c.version == "v3" else f"{c.id} ({c.version})"


ORDER = tuple(label(c) for c in TABLE if c.version == "v3")
ORDER_V2 = tuple(label(c) for c in TABLE if c.version == "v2")
ORDER_V1 = tuple(label(c) for c in TABLE if c.version == "v1")


# ------------------------------------------------------------------------------------------------- judging
def _fmt(x, digits=3):
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}" if abs(x) >= 1e3 else f"{x:.{digits}f}"


def effect_text(e: dict) -> str:
    """One effect as "name: mean [lo, hi] (n unit; claim: > thr)"."""
    side = ">" if e["side"] == "above" else "<"
    return (f"{e['name']}: {_fmt(e['mean'])} [{_fmt(e['lo'])}, {_fmt(e['hi'])}] (n = {e['n']} {e['unit']}; "
            f"claim {side} {e['threshold']:g}; {e['verdict']})")


RULED = (S.SUPPORTED, S.NOT_SUPPORTED, S.INCONCLUSIVE)  # the verdicts of the interval rule (a rerun can predict)


def _judge_v3(c: Claim, i: Inputs) -> dict:
    m = c.measure(c, i)
    effects = [e.as_dict() for e in m.effects]
    if m.cannot:
        verdict, note = S.CANNOT, m.cannot
    elif not effects:
        verdict, note = VERDICTS[None], m.missing
    else:
        verdict, note = S.combine(e["verdict"] for e in effects), ""
    needed = [e["needed"] for e in effects if e["verdict"] == S.INCONCLUSIVE]
    numbers = "; ".join([effect_text(e) for e in effects] + ([m.numbers] if m.numbers else []))
    rerun = S.combine_rerun(e["rerun"] for e in effects) if verdict in RULED else None
    return dict(n=label(c), id=c.id, version=c.version, claim=c.text, numbers=numbers or "n/a", verdict=verdict,
                note=note, effects=effects, n_items=min((e["n"] for e in effects), default=0), unit=c.unit,
                needed=(None if verdict != S.INCONCLUSIVE or None in needed else max(needed, default=None)),
                rerun=rerun, same_on_rerun=None if rerun is None else rerun[verdict], earlier=False)


def _passk_of_seed(passk, seed):
    """The pass@k result restricted to one RL seed's policies (the base kept)."""
    if not passk:
        return None
    pol = {}
    for lab, p in passk["policies"].items():
        keep = [k for k, s in enumerate(p["seeds"]) if lab == "base" or s == seed]
        pol[lab] = dict(seeds=[p["seeds"][k] for k in keep], curves=[p["curves"][k] for k in keep])
    return dict(passk, policies=pol, crossing=None)  # the crossings are the mean curves'; a seed's own is not kept


def _judge_earlier(c: Claim, i: Inputs, seeds) -> dict:
    res = c.measure(i)
    d = res.as_dict()
    d["n"] = label(c)
    per_seed = []
    if len(seeds) > 1 and c.id not in _BASE:
        for seed in seeds:
            pick = Inputs(*([r for r in g if r.seed == seed] for g in (i.rl, i.cf, i.lp)), i.features, i.one_step,
                          _passk_of_seed(i.passk, seed))
            r = c.measure(pick)
            per_seed.append(dict(seed=seed, holds=r.holds, verdict=r.verdict, numbers=r.numbers))
    d.update(claim=res.claim, id=c.id, version=c.version, verdict_mean=d["verdict"], per_seed=per_seed,
             earlier=True, verdict=robust_verdict(d["holds"], [p["holds"] for p in per_seed], fallback=d["verdict"]))
    return d


def claims(runs_root, features, one_step, passk=None) -> list[dict]:
    """Every entry of TABLE on a reproduction's outputs (the v3 claims in ORDER, then the earlier readings v2 and
    v1): the training runs under `runs_root`, the feature analysis's result ("stats"; "items" for v3), the
    one-step result and the pass@k result ({"ks", "policies": {label: {"seeds", "curves"}}, "task", "prompts",
    "crossing"}; None: not measured).

    A v3 record: n, id, version, claim, numbers, verdict (supported / not supported / inconclusive / cannot show on
    this setting / not measured), note, effects (ntkdyn.stats.Effect dicts: name, values, threshold, side, unit,
    mean, lo, hi, s, n, verdict, needed, rerun), n_items, unit, needed (items that would decide an inconclusive claim
    at the observed effects; None otherwise), rerun (each verdict's probability in an independent rerun of the same
    size, stats.combine_rerun of the effects'; None for cannot show / not measured), same_on_rerun (rerun[verdict]),
    earlier=False. An earlier reading (v2, v1): ClaimResult.as_dict plus
    id, version, per_seed (each seed's runs judged alone), verdict_mean, verdict (robust_verdict), earlier=True."""
    R = load_runs(runs_root)
    i = Inputs(R.get("rl", []), R.get("cf-rl", []), R.get("lp-ft", []), features, one_step or {}, passk)
    seeds = sorted({r.seed for g in (i.rl, i.cf, i.lp) for r in g if r.seed is not None}, key=str)
    texts = {c.id: c.text for c in TABLE if c.version == "v3"}
    out = []
    for c in TABLE:
        if c.version == "v3":
            out.append(_judge_v3(c, i))
        else:
            d = _judge_earlier(c, i, seeds)
            d["claim"] = d["claim"] or texts.get(c.id, "")
            out.append(d)
    return out
