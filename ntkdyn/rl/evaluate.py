"""What the trainer measures of a policy besides the step's own metrics and its trackers (rl/trackers): the held-out
evaluation (pass@k, diversity, confidence) and the probe metrics (head norm, feature change).

The evaluation samples with the run's sharded sampler, keyed by (seed, EVAL_ID, global step), and scores the
samples with ntkdyn.evaluation (the same scoring as sft.evaluate, one correctness threshold: CORRECT). Both serve
every lane of a batched run at once (rl/lanes.py).
"""
from __future__ import annotations

from ..evaluation import canonical_answers, sample_stats
from .recipes import EVAL_ID
from .rollout import lane_keys, prompt_batch, rewards, rollout
from .step import confidence, probe
from .sharding import to_host

__all__ = ["evaluate", "probe_metrics"]


def evaluate(ctxs, lanes, params, step: int) -> list[dict]:
    """The eval/ metrics of every lane's `params`: eval_samples completions per held-out prompt at
    eval_temperature. Returns one dict per lane. The lanes run RLConfig.eval_lanes at a time (Lanes.map's chunk:
    the memory of that many lanes' sampler and confidence pass; 0: all at once)."""
    ctx, k = ctxs[0], ctxs[0].c.eval_samples
    chunk = ctx.c.eval_lanes or None
    flats = [[p for p in x.eval_prompts for _ in range(k)] for x in ctxs]
    ids, pmask = prompt_batch(ctx, lanes, flats)
    gen = rollout(ctx, lanes, params, ids, pmask, lane_keys(ctxs, lanes, EVAL_ID, step), ctx.c.eval_temperature,
                  group=k, chunk=chunk)
    conf_of = lanes.map(confidence, dict(chunk=ctx.loss_spec.logit_chunk, shared_prompts=k, **ctx.gd), chunk=chunk)
    conf = to_host(conf_of(params, ids, pmask, gen.tokens, gen.mask))
    tokens, mask = to_host((gen.tokens, gen.mask))
    return [_eval_record(x, flats[i], lanes.take(tokens, i), lanes.take(mask, i), lanes.take(conf, i), step, k)
            for i, x in enumerate(ctxs)]


def _eval_record(ctx, flat, tokens, mask, conf, step, k) -> dict:
    texts, _, r, _ = rewards(ctx, ctx.eval_rows, tokens, mask, f"evaluation at step {step}", group_size=k)
    st = sample_stats(texts, r, k, canonical_answers(ctx.task, flat, texts))  # answers as task.canonical reads them
    curve = st["pass_at_k_curve"]
    return {
        "eval/reward": st["reward"],
        "eval/pass@1": curve[0],
        "eval/pass@k": curve[-1],  # k = eval_samples
        f"eval/pass@{k}": curve[-1],
        "eval/pass_at_k_curve": curve,
        "eval/unique_answers": st["unique_answers"],
        "eval/unique_correct": st["unique_correct"],
        "eval/distinct_2": st["distinct_2"],
        "eval/entropy": float(conf["entropy"]), "eval/max_prob": float(conf["max_prob"]),
        "eval/logp": float(conf["logp"]),
    }


def probe_metrics(ctx, lanes, params) -> list[dict]:
    """head_norm ‖W‖ and feature_change of the probe features since the start, one dict per lane (the probe set
    and the starting model are the same for every lane)."""
    out = to_host(lanes.map(probe, ctx.gd, in_axes=(0, None, None, None))(
        params, ctx.probe_ids_dev, ctx.probe_mask_dev, ctx.h0))
    return [{k: float(v) for k, v in lanes.take(out, i).items()} for i in range(lanes.n)]
