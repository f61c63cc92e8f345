"""What the trainer measures of a policy besides the step's own metrics and its trackers (rl/trackers): the held-out
evaluation (pass@k, diversity, confidence) and the probe metrics (head norm, feature change).

The evaluation samples with the run's sharded sampler, keyed by (seed, EVAL_ID, global step), and scores the
samples with ntkdyn.evaluation (the same scoring as sft.evaluate, one correctness threshold: CORRECT).
"""
from __future__ import annotations

import jax

from ..evaluation import canonical_answers, sample_stats
from .recipes import EVAL_ID
from .rollout import prompt_batch, rewards, rollout
from .step import confidence, probe, step_key

__all__ = ["evaluate", "probe_metrics"]


def evaluate(ctx, params, step: int) -> dict:
    """The eval/ metrics of `params`: eval_samples completions per held-out prompt at eval_temperature."""
    c, k = ctx.c, ctx.c.eval_samples
    flat = [p for p in ctx.eval_prompts for _ in range(k)]
    ids, pmask = prompt_batch(ctx, flat)
    key = ctx.sh.replicate(step_key(ctx.key, step, stage_id=EVAL_ID))
    gen = rollout(ctx, params, ids, pmask, key, c.eval_temperature, group=k)
    conf = jax.device_get(confidence(params, ids, pmask, gen.tokens, gen.mask, **ctx.gd))
    tokens, mask = jax.device_get((gen.tokens, gen.mask))
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


def probe_metrics(ctx, params) -> dict:
    """head_norm ‖W‖ and feature_change of the probe features since the start."""
    out = probe(params, ctx.probe_ids_dev, ctx.probe_mask_dev, ctx.h0, **ctx.gd)
    return {k: float(v) for k, v in jax.device_get(out).items()}
