"""A jit-compiled KV-cache sampler: prefill once, then one lax.scan step per new token (no Python per token).

Prompts are left-padded (B, Tp) with a 0/1 mask; each row's positions count its real tokens only, so a row's
continuation does not depend on how much padding it got. A row stops at the first of the stop ids (S,) it samples
(every EOS / end-of-turn id of the model: `jnp.isin` inside the scan, so one compiled program per shape).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .transformer import features, head_logits, prefill


class Generation(NamedTuple):
    tokens: jax.Array  # (B, N) int32 sampled tokens (pad_id after the stop token)
    logp: jax.Array  # (B, N) log-prob of each token under the sampling distribution (temperature, top-k/p)
    logp_model: jax.Array  # (B, N) log-prob under the model itself (temperature 1, no truncation)
    mask: jax.Array  # (B, N) 1 for generated tokens up to and including the stop token


def first_argmax(x):
    """jnp.argmax(x, -1), the same indices (the first maximum; the first NaN when there is one), as two plain
    reductions: XLA:CPU runs argmax's (value, index) reduction one element at a time and fuses whatever feeds it
    into that loop (issue 28: 42 ms against 17 ms per categorical draw of 32 × 49,152 logits on one core)."""
    nan = jnp.isnan(x)  # (XLA:CPU's max reduction does not reliably propagate a NaN)
    m = jnp.max(jnp.where(nan, -jnp.inf, x), -1, keepdims=True)
    hit = jnp.where(jnp.any(nan, -1, keepdims=True), nan, x == m)
    return jnp.min(jnp.where(hit, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), -1)


def categorical(key, z):
    """jax.random.categorical(key, z, axis=-1), the same draws: the first argmax of Gumbel(key) noise + z, taken
    by first_argmax."""
    return first_argmax(jax.random.gumbel(key, z.shape, z.dtype) + z)


def process_logits(z, temperature, top_k, top_p):
    """Logits of the sampling distribution: temperature, then top-k, then nucleus (top-p) truncation."""
    z = z.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    neg = jnp.finfo(jnp.float32).min
    if top_k is not None and top_k > 0:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, neg, z)
    if top_p is not None and top_p < 1.0:
        zs = jnp.sort(z, axis=-1)[..., ::-1]
        ps = jax.nn.softmax(zs, -1)
        cum = jnp.cumsum(ps, -1)
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        keep = (cum - ps) < top_p
        cutoff = jnp.min(jnp.where(keep, zs, jnp.inf), -1, keepdims=True)
        z = jnp.where(z < cutoff, neg, z)
    return z


def compaction_sizes(B: int, levels: int = 1, least: int = 8) -> list[int]:
    """The row counts the decode loop runs at when it drops finished rows: B, then halvings of it while they are
    whole numbers of at least `least` rows, at most `levels` of them ([32, 16] for B = 32; [B] for B < 16: a
    decode step streams every weight once whatever its rows, so halving few rows saves little and costs a
    compiled loop more)."""
    sizes = [int(B)]
    while len(sizes) <= levels and sizes[-1] % 2 == 0 and sizes[-1] // 2 >= least:
        sizes.append(sizes[-1] // 2)
    return sizes


@partial(jax.jit, static_argnames=("graphdef", "cfg", "max_new_tokens", "top_k", "top_p", "greedy",
                                   "shared_prompts", "compact"))
def sample(graphdef, cfg, params, prompt_ids, prompt_mask, key, *, max_new_tokens, temperature=1.0, top_k=None,
           top_p=1.0, stop_token=-1, pad_id=0, greedy=False, shared_prompts=1, compact=True):
    """stop_token: (S,) int32 stop ids (a scalar works too); a row is done after sampling any of them.
    shared_prompts = G > 1: rows come in consecutive groups of G with the same prompt (P prompts × G samples; the
    caller guarantees it), and each prompt is prefilled once (transformer.prefill); the samples equal the plain
    prefill's up to float rounding of the logits.
    compact: the decode loop drops finished rows: once no more than half of the rows it runs are still live, it
    gathers them (their caches, logits, positions) into a loop of half as many rows (compaction_sizes), whose
    products stream the same weights for fewer rows. Every row keeps its own draws (the noise of the full B rows,
    taken at its index), so the tokens are those of the uncompacted loop up to float rounding of the logits.
    False: B rows to the end (a sharded batch keeps its layout: rl/rollout passes False on several devices)."""
    B, Tp = prompt_ids.shape
    N = max_new_tokens
    stop_S = jnp.atleast_1d(jnp.asarray(stop_token, jnp.int32))  # (S,)
    prompt_mask = prompt_mask.astype(bool)
    valid = jnp.concatenate([prompt_mask, jnp.ones((B, N), bool)], 1)
    pos_prompt = jnp.maximum(jnp.cumsum(prompt_mask, 1) - 1, 0).astype(jnp.int32)
    h_last, caches = prefill(graphdef, cfg, params, prompt_ids, pos_prompt, valid, Tp + N, group=shared_prompts)
    w_t = params["head"]["W"].T  # once, outside the loop (transformer.apply_head)
    z0 = head_logits(cfg, params["head"], h_last, w_t)
    next_pos = pos_prompt[:, -1] + 1

    def step(carry, i):  # carry: (caches, z, pos, done, key, valid, idx) of the rows idx (the loop's R rows)
        caches, z, pos, done, key, valid, idx = carry
        key, sub = jax.random.split(key)
        zp = process_logits(z, temperature, top_k, top_p)
        if greedy:
            tok = first_argmax(zp)
        elif z.shape[0] == B:
            tok = categorical(sub, zp)
        else:  # the rows' own draws: the noise jax.random.categorical gives the full batch, at their indices
            tok = first_argmax(jax.random.gumbel(sub, (B, zp.shape[-1]), zp.dtype)[idx] + zp)
        tok = tok.astype(jnp.int32)
        lp = jnp.take_along_axis(jax.nn.log_softmax(zp, -1), tok[:, None], 1)[:, 0]
        lpm = jnp.take_along_axis(jax.nn.log_softmax(z.astype(jnp.float32), -1), tok[:, None], 1)[:, 0]
        live = ~done
        tok_out = jnp.where(live, tok, pad_id)
        done = done | jnp.isin(tok, stop_S)
        h, caches = features(graphdef, cfg, params, tok_out[:, None], positions=pos[:, None], key_valid=valid,
                             caches=caches, start=Tp + i)
        znew = head_logits(cfg, params["head"], h[:, 0], w_t)
        return (caches, znew, pos + 1, done, key, valid, idx), (tok_out, jnp.where(live, lp, 0.0),
                                                                jnp.where(live, lpm, 0.0), live.astype(jnp.int32))

    # while loops that end as soon as every row is done (or, but for the last, when few enough rows are live for
    # the next, smaller one): the steps skipped, and the dropped rows' later steps, would only write padding (token
    # pad_id, log-probs 0, mask 0), which the output buffers already hold, so the result equals a full scan's
    def run(state, rows, next_rows):
        def cond(state):
            i, carry, _ = state
            go = (i < N) & ~jnp.all(carry[3])
            return go if next_rows is None else go & (jnp.sum(~carry[3]) > next_rows)

        def body(state):
            i, carry, outs = state
            carry, new = step(carry, i)
            if rows == B:
                return i + 1, carry, tuple(o.at[:, i].set(n) for o, n in zip(outs, new))
            return i + 1, carry, tuple(o.at[carry[6], i].set(n) for o, n in zip(outs, new))

        return jax.lax.while_loop(cond, body, state)

    carry = (caches, z0, next_pos, jnp.zeros((B,), bool), key, valid, jnp.arange(B, dtype=jnp.int32))
    shapes = jax.eval_shape(step, carry, jnp.int32(0))[1]  # the per-step outputs' dtypes
    outs = tuple(jnp.full((B, N), pad_id if k == 0 else 0, o.dtype) for k, o in enumerate(shapes))
    state = (jnp.int32(0), carry, outs)
    sizes = compaction_sizes(B) if compact else [B]
    for rows, next_rows in zip(sizes, sizes[1:] + [None]):
        state = run(state, rows, next_rows)
        if next_rows is not None:  # the live rows first (a stable order), then done ones to fill next_rows
            i, (caches, z, pos, done, key, valid, idx), outs = state
            sel = jnp.argsort(done, stable=True)[:next_rows]
            caches = [tuple(x[sel] for x in c) for c in caches]
            state = (i, (caches, z[sel], pos[sel], done[sel], key, valid[sel], idx[sel]), outs)
    toks, lp, lpm, mask = state[2]
    return Generation(toks, lp, lpm, mask)
