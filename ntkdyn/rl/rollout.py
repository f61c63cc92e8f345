"""One training step on the host side: the step's train prompts, rollouts (the jit KV-cache sampler), rewards,
advantages, then the jitted update (step.rl_update / step.lp_update); returns the step's metrics.

Data: prompt ids are `encode_prompt` ([bos] + prompt, or the chat template's rendering: RLConfig.chat_template)
LEFT-padded to the run's fixed length Tp; a step's batch is P prompts × G samples, prompt-major (row b = p·G + g).
A completion ends at the first of the model's EOS ids (ctx.eos). `rewards` is the one place completions are scored.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..evaluation import decode_completions
from ..models.padding import pad_left
from ..models.sampling import sample
from ..examples import make_examples
from ..models.tokenizer import encode_prompt, pad_id_of
from ..tasks.rewards import RewardError
from . import checkpoint
from .config import TrainingError
from .context import reference_answer
from .step import group_advantages, ref_logp, step_key

__all__ = ["stage_rows", "prompt_batch", "rollout", "rewards", "dry_run", "rl_step", "lp_step"]


@functools.lru_cache(maxsize=64)
def _permutation(seed: int, stage_id: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, stage_id, epoch]).permutation(n)


def stage_row_indices(seed: int, stage_id: int, stage_step: int, P: int, N: int) -> list[int]:
    """Indices into a train pool of N rows of the P rows of a stage step (1-based): epochs over the pool, each a
    permutation keyed by (seed, stage_id, epoch)."""
    out = []
    for i in range((stage_step - 1) * P, stage_step * P):
        epoch, pos = divmod(i, N)
        out.append(int(_permutation(seed, stage_id, epoch, N)[pos]))
    return out


def stage_rows(ctx, stage, stage_step: int) -> list[dict]:
    """P train rows {"prompt": ..., **columns} for this stage step (stage_row_indices)."""
    idx = stage_row_indices(ctx.c.seed, stage.stage_id, stage_step, ctx.c.prompts_per_step, len(ctx.train_pool))
    return [ctx.train_pool[i] for i in idx]


def prompt_batch(ctx, prompts):
    """(ids, mask) of the prompts, left-padded to Tp and placed along the mesh's data axis."""
    ids, mask = pad_left([encode_prompt(ctx.tok, p, chat=ctx.c.chat_template) for p in prompts], pad_id_of(ctx.tok),
                         ctx.Tp)
    return ctx.sh.batch(ids), ctx.sh.batch(mask)


def rollout(ctx, params, ids, mask, key, temperature, group: int = 1):
    """Sample c.max_new_tokens tokens per row (stopping at any EOS id) from the policy `params`; rows in
    consecutive groups of `group` share a prompt, prefilled once."""
    return sample(ctx.lm.graphdef, ctx.cfg, params, ids, mask, key, max_new_tokens=int(ctx.c.max_new_tokens),
                  temperature=float(temperature), top_k=None, top_p=1.0,
                  stop_token=jnp.asarray(ctx.eos or (-1,), jnp.int32), pad_id=ctx.pad,
                  greedy=False, shared_prompts=int(group))


def rewards(ctx, rows, tokens, mask, where: str, group_size: int = 1, stopped: str | None = None):
    """(texts, finished, rewards float64, metrics) of sampled completions: ctx.reward_set (the run's reward
    functions in TRL's signature, weighted) of `group_size` completions per row {"prompt": ..., **columns}
    (prompt-major), a truncated completion (no EOS) scoring 0 unless RLConfig.score_truncated. A reward NaN
    means no function scored it (TRL's None). TrainingError naming the function when one fails (raises, wrong
    length, non-number), when no function gives a value (None / NaN) for any completion of the batch and, for the
    legacy reward_fn, on a non-finite reward; the message ends with `stopped` (default: the run stopped and which
    checkpoint is kept). The one place the trainer calls a reward (rollouts and evaluation)."""
    def fail(msg):
        return TrainingError(f"{where}: {msg}; {stopped or f'the run stopped and {checkpoint.note(ctx.out)}'}")

    texts, finished = decode_completions(ctx.tok, tokens, mask, ctx.eos)
    ids = [row[m.astype(bool)][: _end(row[m.astype(bool)], ctx.eos)].tolist()
           for row, m in zip(np.asarray(tokens), np.asarray(mask))]
    try:
        out = ctx.reward_set.score_rows(rows, texts, ids, group_size=group_size,
                                        finished=None if ctx.c.score_truncated else finished)
    except (RewardError, ValueError) as e:
        raise fail(e) from None
    r = out.rewards
    bad = np.flatnonzero(~np.isfinite(r)) if ctx.reward_fn is not None else np.flatnonzero(np.isinf(r))
    if bad.size:
        i = int(bad[0])
        raise fail(f"non-finite reward {r[i]} for prompt {rows[i // group_size]['prompt']!r} and completion "
                   f"{texts[i]!r}")
    if out.unscored.size and out.unscored.all():
        names = ", ".join(repr(n) for n in ctx.reward_set.names)
        raise fail(f"no reward function gave a value for any of the {len(texts)} completions: {names} returned "
                   f"None or NaN for every one (e.g. completion {texts[0]!r}); expected a float for at least some "
                   "completions")
    return texts, finished, r, out.metrics


def dry_run(ctx) -> None:
    """Score one real batch before a new run writes anything: the first stage's first train rows, group_size
    samples each from the starting model (ctx.base_params) with the run's sampler and the rollout temperature (the
    first RL step's draw), through the run's reward functions. TrainingError naming the function that fails or
    gives no value at all (see `rewards`); nothing is written."""
    stage, G = ctx.stages[0], ctx.c.group_size
    rows = stage_rows(ctx, stage, 1)
    ids, pmask = prompt_batch(ctx, [r["prompt"] for r in rows for _ in range(G)])
    key = ctx.sh.replicate(step_key(ctx.key, 1, stage_id=stage.stage_id))
    gen = rollout(ctx, ctx.base_params, ids, pmask, key, ctx.c.temperature, group=G)
    tokens, mask = jax.device_get((gen.tokens, gen.mask))
    rewards(ctx, rows, tokens, mask, "dry run of the reward functions on a sample batch of the starting model",
            group_size=G, stopped=f"nothing was written to {ctx.out}")


def _end(row, eos) -> int:
    """Length of a completion up to and including its first EOS id (TRL's completion_ids)."""
    hit = np.flatnonzero(np.isin(row, np.asarray(eos or (-1,))))
    return int(hit[0]) + 1 if hit.size else len(row)


def _advantages(ctx, r_PxG, baseline):
    """Advantages A (P, G) of rewards r (P, G) and the new REINFORCE baseline. A completion no function scored
    (NaN) enters the baseline as its group's mean of the scored ones and gets advantage 0."""
    c = ctx.c
    scored = ~np.isnan(r_PxG)
    if not scored.all():  # the group's mean of the scored ones (0 for a group with none)
        n = scored.sum(1, keepdims=True)
        fill = np.where(scored, r_PxG, 0.0).sum(1, keepdims=True) / np.maximum(n, 1)
        r_PxG = np.where(scored, r_PxG, fill)
    adv, new_baseline = group_advantages(jnp.asarray(r_PxG, jnp.float32), jnp.float32(baseline),
                                         kind=c.advantage, decay=float(c.baseline_decay))
    if not scored.all():
        adv = adv * jnp.asarray(scored, adv.dtype)
    return adv, new_baseline


def _check_finite(ctx, ms: list[dict], where: str) -> dict:
    """Means over the iterations of the loss, clip ratio, KL and gradient norms (TrainingError if non-finite)."""
    first, rec = ms[0], {}
    for k in ("loss", "clip_ratio", "kl") + tuple(k for k in first if k.startswith("grad_norm/")):
        if k in first:
            vals = np.asarray([m[k] for m in ms], np.float64)
            if not np.all(np.isfinite(vals)):
                raise TrainingError(f"{where}: non-finite {k} {vals.tolist()}; the run stopped and "
                                    f"{checkpoint.note(ctx.out)}")
            rec[k] = float(vals.mean())
    return rec


def rl_step(ctx, stage, stage_step, step, update, params, opt_state, baseline):
    """One RL step: rollouts of P prompts × G samples, rewards r, advantages A, `num_iterations` updates (the
    first on-policy, later ones PPO-clipped against it). Returns (params, opt_state, baseline, metrics)."""
    c, G, P = ctx.c, ctx.c.group_size, ctx.c.prompts_per_step
    rows = stage_rows(ctx, stage, stage_step)
    flat = [r["prompt"] for r in rows for _ in range(G)]
    ids, pmask = prompt_batch(ctx, flat)
    key = ctx.sh.replicate(step_key(ctx.key, stage_step, stage_id=stage.stage_id))
    gen = rollout(ctx, params, ids, pmask, key, c.temperature, group=G)
    tokens, mask = jax.device_get((gen.tokens, gen.mask))
    where = f"step {step} ({stage.name} step {stage_step})"
    _, finished, r, reward_metrics = rewards(ctx, rows, tokens, mask, where, group_size=G)
    r_PxG = r.reshape(P, G)
    adv, new_baseline = _advantages(ctx, r_PxG, baseline)
    batch = {"prompt_ids": ids, "prompt_mask": pmask, "completion": gen.tokens, "mask": gen.mask,
             "adv": adv.reshape(-1)}
    logp_ref = (ref_logp(ctx.base_params, ids, pmask, gen.tokens, temperature=float(c.temperature), **ctx.gd)
                if c.beta > 0 else None)
    logp_old, ms = jnp.zeros(gen.tokens.shape, jnp.float32), []
    for it in range(c.num_iterations):  # iteration 0 is on-policy; later ones reuse the batch (PPO ratio)
        params, opt_state, m, logp = update(params, opt_state, batch, logp_old, jnp.asarray(it == 0), logp_ref)
        if it == 0:
            logp_old = logp
        ms.append(m)
    ms = jax.device_get(ms)
    first = ms[0]
    zero_std = np.all(r_PxG == r_PxG[:, :1], axis=1)
    if np.isnan(r).any():  # unscored completions (every function returned None) left out of the statistics
        r = r[~np.isnan(r)] if (~np.isnan(r)).any() else np.zeros(1)
    out = {"reward": float(r.mean()),  # the weighted sum of the reward functions, mean over the batch
           "reward_std": float(r.std(ddof=1)) if r.size > 1 else 0.0,  # as TRL: batch std
           "frac_reward_zero_std": float(zero_std.mean()),
           "completions/mean_length": float(mask.sum(1).mean()),
           "completions/clipped_ratio": float(1.0 - finished.mean()),
           "entropy": float(first["entropy"]), "max_prob": float(first["max_prob"]),
           "logp": float(first["logp"])}
    out.update(reward_metrics)  # rewards/<name>/mean|std per reward function (TRL's names)
    out.update(_check_finite(ctx, ms, where))
    if c.advantage == "reinforce":
        out["baseline"] = float(new_baseline)
    out["_generated_tokens"] = int(mask.sum())
    return params, opt_state, np.float32(new_baseline), out


def lp_step(ctx, stage, stage_step, step, update, params, opt_state):
    """One LP step: cross-entropy on a correct reference answer (task.sample_answer, or a dataset's `completion`)
    per rollout slot, through the head only. Returns (params, opt_state, metrics)."""
    c = ctx.c
    prompts = [r["prompt"] for r in stage_rows(ctx, stage, stage_step)]
    rng = np.random.default_rng([c.seed, stage.stage_id, stage_step])
    flat = [p for p in prompts for _ in range(c.group_size)]
    answers = [reference_answer(ctx.task, p, rng) for p in flat]
    try:
        ids, mask = make_examples(ctx.task, ctx.tok, flat, answers, length=ctx.T_lp, chat=ctx.c.chat_template)
    except ValueError as e:  # a reference longer than the shape derived at the start
        raise TrainingError(f"step {step} ({stage.name} step {stage_step}): {e}; the run stopped and "
                            f"{checkpoint.note(ctx.out)}") from None
    params, opt_state, m = update(params, opt_state, ctx.sh.batch(ids), ctx.sh.batch(mask))
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    for k, v in m.items():
        if not math.isfinite(v):
            raise TrainingError(f"step {step} ({stage.name} step {stage_step}): non-finite {k} {v}; the run "
                                f"stopped and {checkpoint.note(ctx.out)}")
    return params, opt_state, m
