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

from ..evaluation import completion_rewards, decode_completions
from ..models.padding import pad_left
from ..models.sampling import sample
from ..examples import make_examples
from ..models.tokenizer import encode_prompt, pad_id_of
from . import checkpoint
from .config import TrainingError
from .step import group_advantages, ref_logp, step_key

__all__ = ["stage_prompts", "prompt_batch", "rollout", "rewards", "rl_step", "lp_step"]


@functools.lru_cache(maxsize=64)
def _permutation(seed: int, stage_id: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, stage_id, epoch]).permutation(n)


def stage_prompts(ctx, stage, stage_step: int) -> list[str]:
    """P train prompts for this stage step: epochs over the pool, each a permutation keyed by (seed, stage,
    epoch)."""
    P, N = ctx.c.prompts_per_step, len(ctx.train_pool)
    out = []
    for i in range((stage_step - 1) * P, stage_step * P):
        epoch, pos = divmod(i, N)
        out.append(ctx.train_pool[_permutation(ctx.c.seed, stage.stage_id, epoch, N)[pos]])
    return out


def prompt_batch(ctx, prompts):
    """(ids, mask) of the prompts, left-padded to Tp and placed along the mesh's data axis."""
    ids, mask = pad_left([encode_prompt(ctx.tok, p, chat=ctx.c.chat_template) for p in prompts], pad_id_of(ctx.tok),
                         ctx.Tp)
    return ctx.sh.batch(ids), ctx.sh.batch(mask)


def rollout(ctx, params, ids, mask, key, temperature):
    """Sample c.max_new_tokens tokens per row (stopping at any EOS id) from the policy `params`."""
    return sample(ctx.lm.graphdef, ctx.cfg, params, ids, mask, key, max_new_tokens=int(ctx.c.max_new_tokens),
                  temperature=float(temperature), top_k=None, top_p=1.0,
                  stop_token=jnp.asarray(ctx.eos or (-1,), jnp.int32), pad_id=ctx.pad,
                  greedy=False)


def rewards(ctx, prompts, tokens, mask, where: str):
    """(texts, finished, rewards float64) of sampled completions; TrainingError on a non-finite reward. The one
    place the trainer calls a reward (rollouts and evaluation)."""
    texts, finished = decode_completions(ctx.tok, tokens, mask, ctx.eos)
    r = completion_rewards(ctx.task, prompts, texts, finished, reward_fn=ctx.reward_fn,
                           score_truncated=ctx.c.score_truncated)
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        i = int(bad[0])
        raise TrainingError(f"{where}: non-finite reward {r[i]} for prompt {prompts[i]!r} and completion "
                            f"{texts[i]!r}; the run stopped and {checkpoint.note(ctx.out)}")
    return texts, finished, r


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
    flat = [p for p in stage_prompts(ctx, stage, stage_step) for _ in range(G)]
    ids, pmask = prompt_batch(ctx, flat)
    key = ctx.sh.replicate(step_key(ctx.key, stage_step, stage_id=stage.stage_id))
    gen = rollout(ctx, params, ids, pmask, key, c.temperature)
    tokens, mask = jax.device_get((gen.tokens, gen.mask))
    where = f"step {step} ({stage.name} step {stage_step})"
    _, finished, r = rewards(ctx, flat, tokens, mask, where)
    r_PxG = r.reshape(P, G)
    adv, new_baseline = group_advantages(jnp.asarray(r_PxG, jnp.float32), jnp.float32(baseline),
                                         kind=c.advantage, decay=float(c.baseline_decay))
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
    out = {"reward": float(r.mean()),
           "reward_std": float(r.std(ddof=1)) if r.size > 1 else 0.0,  # as TRL: batch std
           "frac_reward_zero_std": float(zero_std.mean()),
           "completions/mean_length": float(mask.sum(1).mean()),
           "completions/clipped_ratio": float(1.0 - finished.mean()),
           "entropy": float(first["entropy"]), "max_prob": float(first["max_prob"]),
           "logp": float(first["logp"])}
    out.update(_check_finite(ctx, ms, where))
    if c.advantage == "reinforce":
        out["baseline"] = float(new_baseline)
    out["_generated_tokens"] = int(mask.sum())
    return params, opt_state, np.float32(new_baseline), out


def lp_step(ctx, stage, stage_step, step, update, params, opt_state):
    """One LP step: cross-entropy on a correct reference answer (task.sample_answer) per rollout slot, through
    the head only. Returns (params, opt_state, metrics)."""
    c = ctx.c
    prompts = stage_prompts(ctx, stage, stage_step)
    rng = np.random.default_rng([c.seed, stage.stage_id, stage_step])
    flat = [p for p in prompts for _ in range(c.group_size)]
    answers = [ctx.task.sample_answer(p, rng, correct=True) for p in flat]
    ids, mask = make_examples(ctx.task, ctx.tok, flat, answers, length=ctx.T_lp, chat=ctx.c.chat_template)
    params, opt_state, m = update(params, opt_state, ctx.sh.batch(ids), ctx.sh.batch(mask))
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    for k, v in m.items():
        if not math.isfinite(v):
            raise TrainingError(f"step {step} ({stage.name} step {stage_step}): non-finite {k} {v}; the run "
                                f"stopped and {checkpoint.note(ctx.out)}")
    return params, opt_state, m
