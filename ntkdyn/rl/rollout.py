"""One training step on the host side: the step's train prompts, rollouts (the jit KV-cache sampler), rewards,
advantages, then the jitted update (step.rl_update / step.lp_update); returns the step's metrics. A step serves
every lane of a batched run at once (rl/lanes.py: one context per lane, the device work once for all of them).

Data: prompt ids are `encode_prompt` ([bos] + prompt, or the chat template's rendering: RLConfig.chat_template)
LEFT-padded to the run's fixed length Tp; a step's batch is P prompts × G samples, prompt-major (row b = p·G + g).
A completion ends at the first of the model's EOS ids (ctx.eos). `rewards` is the one place completions are scored.
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..evaluation import score, split_completions
from ..models.padding import pad_left
from ..models.quantize import int8_graphdef, int8_params_jit
from ..models.sampling import sample
from ..examples import make_examples
from ..models.tokenizer import encode_prompt, pad_id_of
from ..tasks.rewards import RewardError
from . import checkpoint, packing
from .config import TrainingError
from .context import reference_answer
from .step import group_advantages, micro_batches, ref_logp, step_key
from .sharding import to_host

__all__ = ["stage_rows", "prompt_batch", "rollout", "lane_keys", "rewards", "dry_run", "rl_step", "lp_step",
           "update_length", "UPDATE_BUCKET"]


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


def prompt_batch(ctx, lanes, prompts):
    """(ids, mask) of the prompts (a list per lane), left-padded to Tp, with a lane axis when there are several
    lanes, and placed along the mesh's data axis."""
    enc = [pad_left([encode_prompt(ctx.tok, p, chat=ctx.c.chat_template) for p in ps], pad_id_of(ctx.tok), ctx.Tp)
           for ps in prompts]
    ids, mask = (enc[0][k] if lanes.n == 1 else np.stack([e[k] for e in enc]) for k in (0, 1))
    return ctx.sh.batch(ids, lanes=lanes.n > 1), ctx.sh.batch(mask, lanes=lanes.n > 1)


def _sample_lane(params, ids, mask, key, temperature, stop, *, graphdef, cfg, max_new_tokens, pad_id, group,
                 compact):
    return sample(graphdef, cfg, params, ids, mask, key, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_k=None, top_p=1.0, stop_token=stop, pad_id=pad_id, greedy=False, shared_prompts=group,
                  compact=compact)


def rollout(ctx, lanes, params, ids, mask, keys, temperature, group: int = 1, chunk: int | None = None,
            weights: str = "float32"):
    """Sample c.max_new_tokens tokens per row (stopping at any EOS id) from the policy `params` of every lane;
    rows in consecutive groups of `group` share a prompt, prefilled once; on one device the decode drops finished
    rows (sampling.sample's compact). chunk: the lanes this many at a time (Lanes.map; None: all at once).
    weights: what the sampler reads ("int8": RLConfig.sample_weights)."""
    graphdef = ctx.lm.graphdef
    if weights == "int8":  # quantized by a program of its own, once per rollout (inside the sampler's program
        # XLA:CPU fused the conversion into the decode loop and redid it at every token: 2x slower than float32)
        graphdef, params = int8_graphdef(ctx.cfg), lanes.map(int8_params_jit)(params)
    fn = lanes.map(_sample_lane, dict(graphdef=graphdef, cfg=ctx.cfg, max_new_tokens=int(ctx.c.max_new_tokens),
                                      pad_id=ctx.pad, group=int(group),
                                      compact=ctx.sh.size == 1), in_axes=(0, 0, 0, 0, None, None), chunk=chunk)
    return fn(params, ids, mask, keys, float(temperature), np.asarray(ctx.eos or (-1,), np.int32))


def lane_keys(ctxs, lanes, stage_id: int, step: int):
    """The PRNG key of (stage id, step) of every lane's run, replicated over the mesh."""
    return ctxs[0].sh.replicate(lanes.stack([step_key(x.key, step, stage_id=stage_id) for x in ctxs]))


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

    comps = split_completions(ctx.tok, tokens, mask, ctx.eos)
    texts, finished = comps.texts, comps.finished
    try:
        out = score(ctx.reward_set, rows, comps, group_size, ctx.c.score_truncated)
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


def dry_run(ctxs, lanes) -> None:
    """Score one real batch per lane before new runs write anything: the first stage's first train rows,
    group_size samples each from the starting model (ctx.base_params) with the run's sampler and the rollout
    temperature (the first RL step's draw), through the run's reward functions. TrainingError naming the function
    that fails or gives no value at all (see `rewards`); nothing is written."""
    ctx = ctxs[0]
    stage, G = ctx.stages[0], ctx.c.group_size
    rows = [stage_rows(x, stage, 1) for x in ctxs]
    ids, pmask = prompt_batch(ctx, lanes, [[r["prompt"] for r in rw for _ in range(G)] for rw in rows])
    gen = rollout(ctx, lanes, lanes.stack([ctx.base_params] * lanes.n), ids, pmask,
                  lane_keys(ctxs, lanes, stage.stage_id, 1), ctx.c.temperature, group=G)
    tokens, mask = to_host((gen.tokens, gen.mask))
    for i, x in enumerate(ctxs):
        rewards(x, rows[i], lanes.take(tokens, i), lanes.take(mask, i),
                "dry run of the reward functions on a sample batch of the starting model", group_size=G,
                stopped=f"nothing was written to {x.out}")


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


UPDATE_BUCKET = 8  # the update's completion axis is cut to a multiple of this many tokens (update_length)


def update_length(mask, max_new_tokens: int, bucket: int = UPDATE_BUCKET) -> int:
    """The completion length the update runs at: the longest completion of the batch (`mask` (..., N), 1 on the
    generated tokens, every lane) rounded up to a multiple of `bucket`, at least `bucket`, at most
    max_new_tokens. The columns cut off are padding of every row (mask 0), which no loss, metric or gradient
    sees, so the update equals the full-length one up to float rounding; there are at most
    ceil(max_new_tokens / bucket) shapes, each compiled once."""
    longest = int(np.max(np.sum(np.asarray(mask) != 0, axis=-1), initial=0))
    return int(min(max_new_tokens, max(bucket, -(-longest // bucket) * bucket)))


def _packing(ctx, lanes, mask):
    """The update's packing.Packing of the rollout mask (every lane: one row count), placed like the batch; None
    when packing saves no rows (or the update has fewer than 2 tokens), and the padded update runs. With
    micro-batches (RLConfig.micro_batches = M > 1) one plan per micro-batch (step.micro_batches' rows, its indices
    local to the micro-batch), stacked on an axis of M after the lane axis, every plan with one row count."""
    m = np.asarray(mask) if lanes.n > 1 else np.asarray(mask)[None]
    if m.shape[-1] < 2:
        return None
    n, B, N = m.shape
    M = ctx.loss_spec.micro_batches
    if M > 1:
        m = np.asarray(micro_batches(jnp.asarray(m).swapaxes(0, 1), M, ctx.c.group_size)).transpose(2, 0, 1, 3)
    m = m.reshape(n * M, B // M, N)
    pk = packing.pack_lanes(m, rows_multiple=packing.rows_multiple(B // M, ctx.sh.size))
    if pk.rows.shape[1] >= B // M:
        return None
    lead = (n,) if M == 1 else (n, M)
    pk = [a.reshape(*lead, *a.shape[1:]) for a in pk]
    return packing.Packing(*(ctx.sh.batch(a if lanes.n > 1 else a[0], lanes=lanes.n > 1, micro=M > 1) for a in pk))


class _Phases:
    """Wall-clock seconds of the phases of rl_step into `out` (a dict, summed per phase), each phase's device
    work finished (block_until_ready) before its clock stops; None: no timing and no extra synchronisation."""

    def __init__(self, out):
        self.out, self.t = out, None

    def start(self):
        if self.out is not None:
            self.t = time.perf_counter()

    def done(self, name, *arrays):
        if self.out is not None:
            jax.block_until_ready(arrays)
            now = time.perf_counter()
            self.out[name] = self.out.get(name, 0.0) + now - self.t
            self.t = now


def rl_step(ctxs, lanes, stage, stage_step, step, update, params, opt_state, baselines, phases: dict | None = None):
    """One RL step of every lane: rollouts of P prompts × G samples, rewards r, advantages A, `num_iterations`
    updates (the first on-policy, later ones PPO-clipped against it) over the completions cut to
    `update_length` (the padding columns no completion reaches dropped) and, with RLConfig.pack, packed into
    fewer rows (rl/packing.py; the KL term's reference log-probs too). Returns (params, opt_state, baselines,
    [metrics per lane], (params after the first iteration, the rollout batch)): the last two for the trackers.
    phases: a dict that receives the seconds of "prompts", "sample", "transfer", "reward", "ref_logp", "update"
    and "metrics" (benchmarks/real_bench.py --only profile); None (the trainer) times nothing."""
    ctx = ctxs[0]
    c, G, P = ctx.c, ctx.c.group_size, ctx.c.prompts_per_step
    clock = _Phases(phases)
    clock.start()
    rows = [stage_rows(x, stage, stage_step) for x in ctxs]
    ids, pmask = prompt_batch(ctx, lanes, [[r["prompt"] for r in rw for _ in range(G)] for rw in rows])
    clock.done("prompts", ids, pmask)
    gen = rollout(ctx, lanes, params, ids, pmask, lane_keys(ctxs, lanes, stage.stage_id, stage_step), c.temperature,
                  group=G, weights=c.sample_weights)
    clock.done("sample", gen)
    tokens, mask = to_host((gen.tokens, gen.mask))
    n_up = update_length(mask, int(c.max_new_tokens), UPDATE_BUCKET)
    lanes_axis = lanes.n > 1
    completion, cmask = (ctx.sh.batch(a[..., :n_up], lanes=lanes_axis) for a in (tokens, mask))
    pk = _packing(ctx, lanes, mask[..., :n_up]) if c.pack else None
    clock.done("transfer", completion, cmask, pk)
    where = f"step {step} ({stage.name} step {stage_step})"
    scored, advs, new_baselines = [], [], []
    for i, x in enumerate(ctxs):
        _, finished, r, reward_metrics = rewards(x, rows[i], lanes.take(tokens, i), lanes.take(mask, i), where,
                                                 group_size=G)
        adv, b = _advantages(x, r.reshape(P, G), baselines[i])
        scored.append((finished, r, reward_metrics))
        advs.append(adv.reshape(-1))
        new_baselines.append(np.float32(b))
    batch = {"prompt_ids": ids, "prompt_mask": pmask, "completion": completion, "mask": cmask,
             "adv": ctx.sh.batch(np.stack([np.asarray(a) for a in advs]) if lanes_axis else np.asarray(advs[0]),
                                 lanes=lanes_axis), **({} if pk is None else {"packing": pk})}
    clock.done("reward", batch["adv"])
    logp_ref = None
    if c.beta > 0:  # π_ref: the starting model, the same for every lane
        kw = dict(temperature=float(c.temperature), chunk=ctx.loss_spec.logit_chunk, shared_prompts=G,
                  compute_dtype=ctx.loss_spec.compute_dtype, **ctx.gd)
        logp_ref = lanes.map(ref_logp, kw, in_axes=(None, 0, 0, 0, 0))(
            ctx.base_params, ids, pmask, completion, pk)
        clock.done("ref_logp", logp_ref)
    logp_old, ms = ctx.sh.batch(np.zeros(completion.shape, np.float32), lanes=lanes_axis), []
    for it in range(c.num_iterations):  # iteration 0 is on-policy; later ones reuse the batch (PPO ratio)
        params, opt_state, m, logp = update(params, opt_state, batch, logp_old, np.asarray(it == 0), logp_ref)
        if it == 0:
            logp_old, first_after = logp, params
        ms.append(m)
    clock.done("update", params, opt_state, ms)
    ms = to_host(ms)
    outs = []
    for i, (x, (finished, r, reward_metrics)) in enumerate(zip(ctxs, scored)):
        m_i = [lanes.take(m, i) for m in ms]
        outs.append(_rl_metrics(x, r.reshape(P, G), finished, lanes.take(mask, i), reward_metrics, m_i, where,
                                new_baselines[i]))
    clock.done("metrics")
    return params, opt_state, new_baselines, outs, (first_after, batch)


def _rl_metrics(ctx, r_PxG, finished, mask, reward_metrics, ms, where, baseline) -> dict:
    """One lane's record of an RL step: TRL's reward and completion metrics, the policy's confidence at the batch
    (first iteration), the losses (means over the iterations) and the generated tokens."""
    first, r = ms[0], r_PxG.reshape(-1)
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
    if ctx.c.advantage == "reinforce":
        out["baseline"] = float(baseline)
    out["_generated_tokens"] = int(mask.sum())
    return out


def lp_step(ctxs, lanes, stage, stage_step, step, update, params, opt_state):
    """One LP step of every lane: cross-entropy on a correct reference answer (task.sample_answer, or a dataset's
    `completion`) per rollout slot, through the head only. Returns (params, opt_state, [metrics per lane])."""
    ctx = ctxs[0]
    where = f"step {step} ({stage.name} step {stage_step})"
    data = []
    for x in ctxs:
        prompts = [r["prompt"] for r in stage_rows(x, stage, stage_step)]
        rng = np.random.default_rng([x.c.seed, stage.stage_id, stage_step])
        flat = [p for p in prompts for _ in range(x.c.group_size)]
        answers = [reference_answer(x.task, p, rng) for p in flat]
        try:
            data.append(make_examples(x.task, x.tok, flat, answers, length=x.T_lp, chat=x.c.chat_template))
        except ValueError as e:  # a reference longer than the shape derived at the start
            raise TrainingError(f"{where}: {e}; the run stopped and {checkpoint.note(x.out)}") from None
    ids, mask = (data[0][k] if lanes.n == 1 else np.stack([d[k] for d in data]) for k in (0, 1))
    params, opt_state, m = update(params, opt_state, ctx.sh.batch(ids, lanes=lanes.n > 1),
                                  ctx.sh.batch(mask, lanes=lanes.n > 1))
    m = to_host(m)
    outs = []
    for i, x in enumerate(ctxs):
        m_i = {k: float(v) for k, v in lanes.take(m, i).items()}
        for k, v in m_i.items():
            if not math.isfinite(v):
                raise TrainingError(f"{where}: non-finite {k} {v}; the run stopped and {checkpoint.note(x.out)}")
        outs.append(m_i)
    return params, opt_state, outs
