"""The plan of a structured-kernel computation (ntkdyn/ntk/structured.py): how many cotangents per backward sweep
(chunk), how many contexts per sweep (block), which pairs of sweeps are visited and whether b sweeps are kept,
and the predicted bytes held, all from the parameter shapes (abstract parameters work) and the context sets.

A unit is one sweep: a block of contexts × a chunk of cotangent rows. "trace" pairs units of the same chunk (only
r = r' cotangent pairs enter tr G); "matrix" (M, G, G_S) pairs every chunk with every chunk. A symmetric kernel
visits the pairs ub >= ua only. The chunk is the largest that fits `memory_budget` with all contexts in one block;
below MIN_CHUNK cotangents the contexts are blocked instead.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = ["Plan", "Job", "Side", "make_plan", "setup", "schedule", "walk", "OUTPUTS", "DEFAULT_MEMORY_BUDGET",
           "MIN_CHUNK"]

OUTPUTS = ("trace", "hidden", "full", "subset")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of sweep outputs (δ) and Gram temporaries held at once
MIN_CHUNK = 16  # fewer cotangents per sweep than this: block the contexts instead


class Plan(NamedTuple):
    """The schedule of one structured-kernel computation (see `make_plan`)."""

    mode: str  # "trace" (pairs r = r' of cotangents) or "matrix" (all pairs: K_C = C M Cᵀ)
    basis: str  # "identity" (C = I_d), "subset" (C = W_S), "factor" (C = L with LᵀL = WᵀW)
    n_cotangents: int  # rows of C
    cross_rows: int  # tr X of a tied head: rows W[id_t] (t < T) per context after C's rows (0 when not needed)
    chunk: int  # cotangent rows per sweep (of the n_cotangents + cross_rows)
    n_chunks: int
    block: int  # contexts per sweep
    blocks_a: int
    blocks_b: int
    tokens_a: int  # T of the a rows (truncated to the longest analysed prefix: exact by causality)
    tokens_b: int
    cache_b: bool  # b sweeps computed once and kept (else recomputed for each a sweep)
    sweeps: int  # backward sweeps (each: `block` contexts × `chunk` cotangent rows)
    predicted_bytes: int  # peak of held sweeps and Gram temporaries (model parameters not counted)
    memory_budget: int


# ----------------------------------------------------------------------------------------------- planning
class Side(NamedTuple):
    """One side (a or b): the context rows truncated to T tokens and their analysed positions, padded (by
    repeating the last context) to whole blocks."""

    ids: np.ndarray  # (n_pad, T) int32
    pos: np.ndarray  # (n_pad,) int32
    n: int


def _tokens(ids, pos):
    """T of a side: the longest analysed prefix (exact by causality), rounded up to 8 to limit recompiles."""
    return int(min(ids.shape[1], -(-(int(np.max(pos)) + 1) // 8) * 8))


def _side(ids, rows, pos, n_pad):
    n = len(rows)
    idx = np.concatenate([np.arange(n), np.full(n_pad - n, n - 1)]).astype(np.int64)
    T = _tokens(ids, pos)
    return Side(np.ascontiguousarray(np.asarray(ids)[np.asarray(rows)[idx], :T], np.int32),
                 np.asarray(pos)[idx].astype(np.int32), n)


class _Sizes(NamedTuple):
    d: int
    sum_m: int  # Σ output widths of the Dense layers (δ per token per cotangent)
    sum_n: int  # Σ input widths (u per token)
    small: int  # small parameters (norms, biases): gradients taken directly
    m_max: int
    n_layers: int
    n_heads: int


def _sizes(cfg, backbone):
    flat = traverse_util.flatten_dict(backbone)
    ks = [v.shape for p, v in flat.items() if p[-1] == "kernel"]
    small = sum(int(np.prod(v.shape)) for p, v in flat.items() if p[-1] not in ("kernel", "embedding"))
    return _Sizes(cfg.d_model, sum(m for _, m in ks), sum(n for n, _ in ks), small, max(m for _, m in ks),
                  cfg.n_layers, cfg.n_heads)


def _unit_bytes(sz, n, r, T, item):
    """A held sweep of n contexts × r cotangents: δ outputs (×4: the vmapped backward's buffers, their stacking
    per kind and the Gram einsums' relayouts, as measured by VmHWM on SmolLM2, benchmarks/RESULTS.md), the Dense
    inputs and forward residuals (×2), attention probabilities."""
    per_cot = T * (sz.sum_m + sz.d) + sz.small
    return item * n * (4 * r * per_cot + 2 * T * (sz.sum_n + sz.sum_m) + sz.n_layers * sz.n_heads * T * T)


def _gram_bytes(sz, mode, na, nb, r, Ta, Tb, item):
    if mode == "trace":  # U and P for one kind with all its layers
        return item * 2 * sz.n_layers * na * nb * Ta * Tb
    return item * 2 * (na * nb * r * Ta * max(sz.m_max, sz.d) + na * nb * r * r)


def schedule(blocks_a, blocks_b, n_chunks, sym, mode):
    """[(ua, ub)]: the pairs of units (block, chunk) to visit, a-major. Trace pairs share the chunk; symmetric
    kernels visit ub >= ua only (the rest is the transpose)."""
    pairs = []
    for ua in [(i, k) for i in range(blocks_a) for k in range(n_chunks)]:
        for j in range(blocks_b):
            for l in ([ua[1]] if mode == "trace" else range(n_chunks)):
                if not sym or (j, l) >= ua:
                    pairs.append((ua, (j, l)))
    return pairs


def walk(pairs, sym, cache_b, sweep_a, sweep_b, visit):
    """Run the schedule: sweep_a / sweep_b (unit) -> Sweep, visit(ua, ub, SA, SB). The a sweep is held while its
    pairs are visited; b sweeps are kept when cache_b (a symmetric kernel's units are all b units), else recomputed.
    Returns the number of sweeps."""
    kept, count = {}, [0]

    def get(side, unit, fn):
        if (side, unit) in kept:
            return kept[(side, unit)]
        count[0] += 1
        S = fn(unit)
        if cache_b and side == "b":
            kept[(side, unit)] = S
        return S

    cur, SA = None, None
    for ua, ub in pairs:
        if ua != cur:
            SA = None  # free the previous a sweep before computing the next (one held, as the plan counts)
            cur, SA = ua, get("b" if sym else "a", ua, sweep_a)
        visit(ua, ub, SA, SA if (sym and ub == ua) else get("b", ub, sweep_b))
    return count[0]


def _choose(sz, mode, na, nb, sym, n_cot, Ta, Tb, item, budget, chunk, block):
    """(block, chunk, held bytes): the largest cotangent chunk that fits with all contexts in one block; below
    MIN_CHUNK cotangents, smaller context blocks first. A forced chunk or block is taken as given."""
    N = max(na, nb)

    def held(blk, r):
        a, b = min(blk, na), min(blk, nb)
        single = sym and blk >= na and (mode == "trace" or r >= n_cot)  # one sweep serves both sides
        T = max(Ta, Tb)
        return (_unit_bytes(sz, a, r, T, item) + (0 if single else _unit_bytes(sz, b, r, T, item))
                + _gram_bytes(sz, mode, a, b, r, Ta, Tb, item))

    blocks = [block] if block else sorted({-(-N // k) for k in range(1, N + 1)}, reverse=True)
    chunks = [chunk] if chunk else sorted({-(-n_cot // k) for k in range(1, n_cot + 1)}, reverse=True)
    for blk in blocks:
        for r in chunks:
            if r < min(MIN_CHUNK, n_cot) and blk != blocks[-1]:
                break
            if held(blk, r) <= budget:
                return blk, r, held(blk, r)
    return blocks[-1], chunks[-1], held(blocks[-1], chunks[-1])


# ----------------------------------------------------------------------------------------------- API
class Job(NamedTuple):
    """What structured_kernel runs: the two sides (B is A when symmetric), the mode and basis, and the plan."""

    A: Side
    B: Side
    sym: bool
    mode: str
    basis: str
    want_x: bool  # the tied cross term X is reported
    plan: Plan


def _positive(name, v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
        raise ValueError(f"{name} must be a positive integer or None; got {v!r}")


def setup(cfg, params, ids_a, rows_a, pos_a, ids_b, rows_b, pos_b, output, tokens, untied, memory_budget, chunk,
          block) -> Job:
    """Check the options, choose (block, chunk), count the sweeps and build the padded sides: the Job to run."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; expected one of {', '.join(OUTPUTS)}")
    if (output == "subset") != (tokens is not None):
        raise ValueError("tokens=S (a 1-D array of token ids) is needed with output='subset' and only there")
    for name, v in (("memory_budget", memory_budget), ("chunk", chunk), ("block", block)):
        _positive(name, v)
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    sym = ids_b is None
    V, d = params["head"]["W"].shape
    mode = "trace" if output == "trace" else "matrix"
    basis = {"trace": "factor", "subset": "subset" if tokens is not None and len(tokens) <= d else "identity"}.get(
        output, "identity")
    n_cot = {"factor": min(V, d), "subset": 0 if tokens is None else len(tokens), "identity": d}[basis]
    na, nb = len(rows_a), len(rows_a if sym else rows_b)
    Ta = _tokens(ids_a, pos_a)
    Tb = Ta if sym else _tokens(ids_b, pos_b)
    want_x = bool(cfg.tie_word_embeddings and not untied and output != "hidden")
    x_rows = max(Ta, Tb) if want_x and mode == "trace" else 0
    item = jnp.dtype(jnp.result_type(*jax.tree.leaves(params), jnp.float32)).itemsize
    sz = _sizes(cfg, params["backbone"])
    blk, r, held = _choose(sz, mode, na, nb, sym, n_cot + x_rows, Ta, Tb, item, budget, chunk, block)
    n_chunks, blocks_a, blocks_b = -(-(n_cot + x_rows) // r), -(-na // blk), -(-nb // blk)
    pairs = schedule(blocks_a, blocks_b, n_chunks, sym, mode)
    n_b_units = (blocks_a if sym else blocks_b) * n_chunks
    reused = len(pairs) > len({ub for _, ub in pairs})
    kept = n_b_units * _unit_bytes(sz, min(blk, nb), r, max(Ta, Tb), item)
    cache_b = reused and held + kept <= budget
    sweeps = walk(pairs, sym, cache_b, lambda u: None, lambda u: None, lambda *a: None)
    plan = Plan(mode, basis, n_cot, x_rows, r, n_chunks, blk, blocks_a, blocks_b, Ta, Tb, cache_b, sweeps,
                int(held + (kept if cache_b else 0)), int(budget))
    A = _side(ids_a, rows_a, pos_a, blocks_a * blk)
    B = A if sym else _side(ids_b, rows_b, pos_b, blocks_b * blk)
    return Job(A, B, sym, mode, basis, want_x, plan)


def make_plan(cfg, params, ids_a, rows_a, pos_a, ids_b=None, rows_b=None, pos_b=None, *, output="trace",
              tokens=None, untied=False, memory_budget=None, chunk=None, block=None) -> Plan:
    """The Plan `structured_kernel` would follow for these arguments (params may be jax.ShapeDtypeStructs)."""
    return setup(cfg, params, ids_a, rows_a, pos_a, ids_b, rows_b, pos_b, output, tokens, untied, memory_budget,
                 chunk, block).plan
