"""The jit-compiled pieces of a training step, and their static specs.

Every function here takes arrays and pytrees plus hashable static arguments only: the model's graphdef and
ModelConfig, the optax optimizer (`stage_optimizer`: one cached object per setting), the LossSpec. Runs with the
same shapes and settings in one process therefore share the compiled programs.

    tx = stage_optimizer(config, stage)                 # RLConfig.lr -> Stage.lr -> make_optimizer -> optax
    params, opt_state, metrics, logp = rl_update(params, opt_state, batch, logp_old, on_policy, logp_ref,
                                                 graphdef=..., cfg=..., tx=tx, ls=LossSpec.of(config))
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .. import metrics as M
from ..models.logprobs import DEFAULT_CHUNK
from ..models.transformer import cast_params, features
from ..optim import make_optimizer, trainable_keys
from ..sft import sequence_ce
from . import objectives as O

__all__ = ["LossSpec", "stage_optimizer", "opt_init", "rl_update", "micro_batches", "merge_micro_batches",
           "lp_update", "ref_logp", "confidence", "group_advantages", "probe", "step_key"]


class LossSpec(NamedTuple):
    """The static settings of the clipped policy-gradient loss (objectives.pg_loss)."""

    temperature: float
    clip_eps: float
    loss_agg: str
    beta: float
    kl_estimator: str
    remat: bool = False  # each layer rematerialised in the backward pass (RLConfig.remat)
    shared_prompts: int = 1  # rows in consecutive groups of this many share a prompt, which runs once (G)
    logit_chunk: int = DEFAULT_CHUNK  # tokens per head chunk (RLConfig.logit_chunk; logprobs.head_stats)
    micro_batches: int = 1  # the update's rows in this many micro-batches, gradients summed (RLConfig.micro_batches)
    compute_dtype: str = "float32"  # the loss's forward/backward passes (RLConfig.dtype; transformer.cast_params)

    @classmethod
    def of(cls, c) -> "LossSpec":
        return cls(float(c.temperature), float(c.clip_eps), c.loss_agg, float(c.beta), c.kl_estimator,
                   bool(getattr(c, "remat", False)), int(c.group_size),
                   int(getattr(c, "logit_chunk", DEFAULT_CHUNK)), int(getattr(c, "micro_batches", 1)),
                   str(getattr(c, "dtype", "float32")))


def stage_optimizer(c, stage):
    """The optimizer of a stage: c.optimizer at stage.lr on stage.group's parameters (the other group frozen)."""
    return make_optimizer(c.optimizer, stage.lr, stage.group, max_grad_norm=float(c.max_grad_norm) or None,
                          weight_decay=float(c.weight_decay))


@partial(jax.jit, static_argnames=("tx",))
def opt_init(params, *, tx):
    return tx.init(params)


def _apply_group(tx, params, opt_state, g, keys):
    """Apply the gradients g (a dict over the trained `keys`): the other top-level keys get zero gradients and are
    returned as the very same arrays (bit-identical)."""
    grads = {k: g[k] if k in keys else jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
    updates, opt_state = tx.update(grads, opt_state, params)
    stepped = optax.apply_updates(params, updates)
    return {k: stepped[k] if k in keys else v for k, v in params.items()}, opt_state


def micro_batches(tree, n: int, G: int):
    """Rows (B, ...) of every leaf as (n, B / n, ...): micro-batch j holds the groups j, j + n, j + 2n, ... of G
    consecutive rows (whole groups, so a shared prompt stays in one micro-batch; a batch sharded over its rows keeps
    every micro-batch spread over the devices). `merge_micro_batches` is its inverse. ValueError when the B / G
    groups do not divide into n parts."""
    def split(x):
        B = x.shape[0]
        if B % G or (B // G) % n:
            raise ValueError(f"micro_batches={n}: the update's {B} rows in groups of {G} do not split into {n} "
                             "micro-batches of whole groups; expected a divisor of the number of groups (the prompts "
                             "per step)")
        P = B // G
        return jnp.swapaxes(x.reshape(P // n, n, G, *x.shape[1:]), 0, 1).reshape(n, B // n, *x.shape[1:])
    return jax.tree.map(split, tree)


def merge_micro_batches(tree, G: int):
    """The inverse of `micro_batches`: leaves (n, B / n, ...) back to the batch's row order (B, ...)."""
    def merge(x):
        n, R = x.shape[:2]
        return jnp.swapaxes(x.reshape(n, R // G, G, *x.shape[2:]), 0, 1).reshape(n * R, *x.shape[2:])
    return jax.tree.map(merge, tree)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "tx", "ls", "group"), donate_argnames=("opt_state",))
def rl_update(params, opt_state, batch, logp_old, on_policy, logp_ref, *, graphdef, cfg, tx, ls: LossSpec,
              group: str):
    """One gradient step of the clipped policy-gradient loss on a rollout batch, for the parameter group `group`
    only (the other group's arrays are returned untouched, bit-identical). on_policy (a traced bool, so both
    cases share one compiled program): π_old = stop_gradient(π), ratio exactly 1; else π_old = logp_old.
    opt_state is donated: its buffers become the new state's (one optimizer state in memory, not two), so the
    caller must use the returned state and never the one passed in. params are not donated by this jit; the
    trainer's own jit of it (lanes.Lanes.map) donates them too when nothing reads them after the step (the first
    step's are the reference model's; trackers read some steps' starting params).
    ls.micro_batches = M > 1: the rows run in M micro-batches of whole groups (`micro_batches`), one after the
    other (lax.scan), each micro-batch's loss taking the whole batch's denominators (objectives.aggregate's norm),
    so their gradients sum to the whole batch's: the same step up to float rounding, with the activations of
    B / M rows alive at once instead of B (the gradients accumulate in the loop's carry: XLA's accounting on
    SmolLM2 shows no second gradient-sized buffer).
    batch["packing"] (optional; RLConfig.pack): a rl/packing.pack of the batch's mask, or with micro-batches one
    plan per micro-batch stacked on a leading axis of M (rl/rollout._packing); the loss's passes then run over the
    packed completions (objectives.completion_logp): the same step up to float rounding."""
    keys = trainable_keys(group)
    pg = partial(O.pg_loss, clip_eps=ls.clip_eps, loss_agg=ls.loss_agg, beta=ls.beta, kl_estimator=ls.kl_estimator)

    def loss_fn(train_p, frozen_p, rows, norm=None):
        p = cast_params({**frozen_p, **train_p}, ls.compute_dtype)  # float32: p itself
        st = O.completion_logp(graphdef, cfg, p, rows["prompt_ids"], rows["prompt_mask"], rows["completion"],
                               temperature=ls.temperature, remat=ls.remat, shared_prompts=ls.shared_prompts,
                               chunk=ls.logit_chunk, packing=rows.get("packing"))
        old = jnp.where(on_policy, jax.lax.stop_gradient(st["logp"]), rows["logp_old"])
        loss, aux = pg(st["logp"], old, rows["adv"], rows["mask"], logp_ref=rows.get("logp_ref"), norm=norm)
        return loss, (aux, st)

    train_p = {k: params[k] for k in keys}
    frozen_p = {k: v for k, v in params.items() if k not in keys}
    rows = {**batch, "logp_old": logp_old, **({} if logp_ref is None else {"logp_ref": logp_ref})}
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if ls.micro_batches == 1:
        (loss, (aux, st)), g = grad_fn(train_p, frozen_p, rows)
    else:
        G = max(ls.shared_prompts, 1)
        norm = (jnp.sum(batch["mask"].astype(jnp.float32)), batch["mask"].shape[0])

        def one(acc, mb):
            (_, (_, st_mb)), g_mb = grad_fn(train_p, frozen_p, mb, norm)
            return jax.tree.map(jnp.add, acc, g_mb), st_mb

        plans = {} if "packing" not in rows else {"packing": rows.pop("packing")}  # already one per micro-batch
        g, st = jax.lax.scan(one, jax.tree.map(jnp.zeros_like, train_p),
                             {**micro_batches(rows, ls.micro_batches, G), **plans})
        st = merge_micro_batches(st, G)
        loss, aux = pg(st["logp"], jnp.where(on_policy, st["logp"], logp_old), batch["adv"], batch["mask"],
                       logp_ref=logp_ref)
    new, opt_state = _apply_group(tx, params, opt_state, g, keys)
    m = batch["mask"]
    out = {"loss": loss, "clip_ratio": aux["clip_ratio"], "entropy": M.masked_mean(st["entropy"], m),
           "max_prob": M.masked_mean(st["max_prob"], m), "logp": M.masked_mean(st["logp_model"], m)}
    if logp_ref is not None:
        out["kl"] = aux["kl"]
    for k in keys:
        out[f"grad_norm/{k}"] = O.global_norm(g[k])
    return new, opt_state, out, st["logp"]


@partial(jax.jit, static_argnames=("graphdef", "cfg", "tx"), donate_argnames=("opt_state",))
def lp_update(params, opt_state, ids, mask, *, graphdef, cfg, tx):
    """The linear probe (LP stage of LP-FT): cross-entropy (sft.sequence_ce) on reference answers through the
    head only; the backbone ψ is returned bit-identical. opt_state is donated (as in rl_update)."""
    loss, g_head = jax.value_and_grad(
        lambda head: sequence_ce(graphdef, cfg, {"backbone": params["backbone"], "head": head}, ids, mask))(
        params["head"])
    new, opt_state = _apply_group(tx, params, opt_state, {"head": g_head}, ("head",))
    return new, opt_state, {"loss": loss, "grad_norm/head": O.global_norm(g_head)}


@partial(jax.jit, static_argnames=("graphdef", "cfg", "temperature", "chunk", "shared_prompts", "compute_dtype"))
def ref_logp(params, ids, pmask, completion, packing=None, *, graphdef, cfg, temperature, chunk=DEFAULT_CHUNK,
             shared_prompts=1, compute_dtype="float32"):
    """log π_ref of the completion tokens (π_ref: the starting model) at the rollout temperature (the head in
    chunks of `chunk` tokens; rows in consecutive groups of `shared_prompts` share a prompt, which runs once;
    packing: the batch's rl/packing plan, its plans per micro-batch (a leading axis of M: rl/rollout._packing),
    or None: objectives.completion_logp), computed in the update's compute dtype (transformer.cast_params)."""
    params = cast_params(params, compute_dtype)

    def logp(ids, pmask, completion, packing):
        return O.completion_logp(graphdef, cfg, params, ids, pmask, completion, temperature=temperature,
                                 with_model_stats=False, chunk=chunk, shared_prompts=shared_prompts,
                                 packing=packing)["logp"]

    if packing is None or packing.rows.ndim == 2:
        return logp(ids, pmask, completion, packing)
    # a plan per micro-batch (rl/rollout._packing): the micro-batches one after the other, as rl_update runs them
    # (the same passes, so π_ref = π bit for bit where the parameters are equal)
    G = max(int(shared_prompts), 1)
    mb = micro_batches((ids, pmask, completion), packing.rows.shape[0], G)
    return merge_micro_batches(jax.lax.map(lambda x: logp(*x), (*mb, packing)), G)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "chunk", "shared_prompts"))
def confidence(params, ids, pmask, completion, mask, *, graphdef, cfg, chunk=DEFAULT_CHUNK, shared_prompts=1):
    """Mean entropy, max-probability and sampled-token log-prob of the model at the completion tokens (the head
    in chunks of `chunk` tokens; rows in consecutive groups of `shared_prompts` share a prompt, which runs once)."""
    st = O.completion_logp(graphdef, cfg, params, ids, pmask, completion, chunk=chunk,
                           shared_prompts=shared_prompts)
    return {"entropy": M.masked_mean(st["entropy"], mask), "max_prob": M.masked_mean(st["max_prob"], mask),
            "logp": M.masked_mean(st["logp_model"], mask)}


@partial(jax.jit, static_argnames=("kind", "decay"))
def group_advantages(r, b, *, kind, decay):
    """objectives.advantages of rewards r (P, G) with the running baseline b (REINFORCE)."""
    return O.advantages(r, kind, baseline=b, decay=decay)


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def probe(params, ids, mask, h0, *, graphdef, cfg):
    """‖W‖ of the head and the change of the probe features h since the start (h0)."""
    h = features(graphdef, cfg, params, ids)[0]
    return {"head_norm": M.head_norm(params["head"]["W"]), "feature_change": M.feature_change(h, h0, mask)}


@partial(jax.jit, static_argnames=("stage_id",))
def step_key(key, step, *, stage_id):
    """The PRNG key of (stage id, step): fold_in(fold_in(key, stage_id), step)."""
    return jax.random.fold_in(jax.random.fold_in(key, stage_id), step)
