"""The structured method: exact eNTK blocks (M, G, tr G, G_S and the tied cross term X; spec §1) from structured
derivatives, without ever forming a weight gradient.

A dense layer y_t = x_t W (+ b) that reads u_t (T × n) and receives output cotangents δ_t (T × m) has the weight
gradient Σ_t u_t δ_tᵀ, so for contexts c, c' and cotangents r, r' on h(c), h(c'):

    ⟨∂_W h(c)ᵀ r, ∂_W h(c')ᵀ r'⟩ = Σ_{t,s} (u_t·u'_s)(δ_{r,t}·δ'_{r',s})           two T×T Gram matrices

The δ of every Dense comes from ONE backward pass through the activations: the VJP with respect to zero taps at
the Dense outputs (models/transformer.Taps), not the weights. An embedding lookup is a dense layer on one-hot
inputs: its part is Σ_{t,s} Q[t, s] (δx_t·δx'_s) (shared.q), δx the cotangent of the looked-up rows. The other
parameters (norm scales/biases, Dense biases) are small and are differentiated directly. With cotangents the rows of
a basis C (n_C × d), K_C(c, c') = C M(c, c') Cᵀ:

    hidden, full: C = I_d -> M, G = W M Wᵀ;   subset: C = W_S (|S| <= d) -> G_S, else W_S M W_Sᵀ;
    trace: only r = r' pairs with C = L, LᵀL = WᵀW -> tr G = ⟨WᵀW, M⟩_F = Σ_k ⟨L_k J_h(c), L_k J_h(c')⟩.

Tied head (W = E): G holds the input-lookup path of the table, and X(c, c') = B(c, c') + B(c', c)ᵀ,
B(c, c')[v, w] = Σ_{t: id_t = w} (W J_x(c)[:, t] h(c'))_v, where C J_x(c)[:, t] h(c') = δx(c; C)_t·h(c') comes from
the same sweeps; tr X needs δx(c; W[id_t])_t, one extra sweep of T cotangents per context. untied=True is the view
with the table cloned into a separate head: same G, no X.

Schedule. A unit is one sweep: a block of contexts × a chunk of cotangent rows. "trace" pairs units of the same chunk
(only r = r' cotangent pairs enter tr G); "matrix" (M, G, G_S) pairs every chunk with every chunk; a symmetric kernel
visits the pairs ub >= ua only (shared.schedule, shared.walk). The chunk is the largest that fits the memory budget
with all contexts in one block; below MIN_CHUNK cotangents the contexts are blocked instead. Cost per cotangent: one
backward through the activations.

Mesh (request.mesh). Every sweep's contexts (its leading context axis: token rows, positions, cotangent rows) are
spread over all the mesh's devices (shared.sharded), the block rounded up to a multiple of the device count (padded
by repeating the last context, as on one device); the parameters are replicated, or sharded over an "fsdp" axis
(shared.place_params). The same jitted programs then run under GSPMD, which inserts the gathers the Gram matrices
of two sweeps need: the schedule, the sums and the results are those of one device. Per device a sweep takes 1/D
of its one-device bytes, and a Gram matrix of two sweeps gathers the b sweep whole (XLA's memory_analysis, default
model, 16 contexts, trace, D = 4: sweep 61 MB per device against 243 MB on one, Gram 290 MB against 556 MB), so
k.plan.predicted_bytes_per_device is predicted_bytes / D plus the gathered rest of one b sweep (250 MB there).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ...models.transformer import EMBED, Taps, features
from ..kernel import Kernel, KernelPlan
from ..shared import (auto_mesh, dense_sizes, devices, finish_rep, gram_factor, place_params, q, schedule,
                      seconds, sharded, side, tokens_kept, walk)

__all__ = ["NAME", "OUTPUTS", "MIN_CHUNK", "Plan", "Sweep", "plan", "run", "split_backbone", "dense_kinds",
           "model_params", "sweep"]

NAME = "structured"
OUTPUTS = ("full", "trace", "subset", "hidden")
MIN_CHUNK = 16  # fewer cotangents per sweep than this: block the contexts instead


class Sweep(NamedTuple):
    """One backward sweep over n contexts with r cotangents each (L: layers of a kind; kinds: "attn.q", ...)."""

    u: dict  # kind -> (L, n, T, n_in): inputs of the Dense layers
    du: dict  # kind -> (L, n, r, T, m): cotangents of the Dense outputs
    dx: jax.Array  # (n, r, T, d): cotangents of the looked-up embedding rows
    ds: jax.Array  # (n, r, P_small): gradients of the small parameters (norms, biases)
    ids: jax.Array  # (n, T)
    positions: jax.Array  # (n, T)
    h: jax.Array  # (n, d): h(c) at the analysed positions (the sweep's primal output)


# ----------------------------------------------------------------------------------------------- model split
def split_backbone(backbone):
    """(big, small): Dense kernels and lookup tables (never differentiated) and everything else, nested dicts."""
    flat = traverse_util.flatten_dict(backbone)
    big = {k: v for k, v in flat.items() if k[-1] in ("kernel", "embedding")}
    small = {k: v for k, v in flat.items() if k[-1] not in ("kernel", "embedding")}
    return traverse_util.unflatten_dict(big), traverse_util.unflatten_dict(small)


def dense_kinds(big):
    """{kind: [Dense paths in layer order]}, kind = the path inside a block, e.g. "attn.q"."""
    kinds = {}
    for path in sorted((p[:-1] for p in traverse_util.flatten_dict(big) if p[-1] == "kernel"),
                       key=lambda p: (p[2:], p[1])):
        if path[0] != "layers":
            raise ValueError(f"unexpected Dense outside the layers at {path}")
        kinds.setdefault(".".join(path[2:]), []).append(path)
    return kinds


def model_params(big, small, table):
    """The params pytree {"backbone", "head"} from the split backbone and the tied table (None: untied)."""
    bb = traverse_util.unflatten_dict({**traverse_util.flatten_dict(big), **traverse_util.flatten_dict(small)})
    return {"backbone": bb, "head": {} if table is None else {"W": table}}


def zero_taps(big, kinds, T, d, dtype):
    """Zero values (1, T, m) for the tap of every Dense output and (1, T, d) for the looked-up rows (EMBED)."""
    kernels = traverse_util.flatten_dict(big)
    zeros = {p: jnp.zeros((1, T, kernels[p + ("kernel",)].shape[1]), dtype) for ps in kinds.values() for p in ps}
    zeros[EMBED] = jnp.zeros((1, T, d), dtype)
    return zeros


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def sweep(graphdef, cfg, big, small, table, ids, pos, cot):
    """Dense inputs u and, for every context's cotangents cot (n, r, d) on h(c), the cotangents δ of every Dense
    output and of the looked-up rows, and the small parameters' gradients: one backward through the activations."""
    kinds = dense_kinds(big)
    dtype = jnp.result_type(*jax.tree.leaves(small), table if table is not None else jnp.float32, jnp.float32)
    zeros = zero_taps(big, kinds, ids.shape[1], cfg.d_model, dtype)

    def h_at(small, values, ids_T, p):
        taps = Taps(values)
        h = features(graphdef, cfg, model_params(big, small, table), ids_T[None], taps=taps)[0][0]
        return jax.lax.dynamic_index_in_dim(h, p, 0, keepdims=False), (taps.inputs_BxTxN, taps.positions_BxT[0])

    def one(ids_T, p, cot_RxD):
        h, vjp, (u, positions) = jax.vjp(lambda s, v: h_at(s, v, ids_T, p), small, zeros, has_aux=True)
        ds, dv = jax.vmap(vjp)(cot_RxD)
        r = cot_RxD.shape[0]
        u_k = {k: jnp.stack([u[p][0] for p in ps]) for k, ps in kinds.items()}
        du_k = {k: jnp.stack([dv[p][:, 0] for p in ps]) for k, ps in kinds.items()}
        ds = jnp.concatenate([g.reshape(r, -1) for g in jax.tree.leaves(ds)] or [jnp.zeros((r, 0), dtype)], -1)
        return u_k, du_k, dv[EMBED][:, 0], ds, ids_T, positions, h

    return Sweep(*jax.vmap(one, out_axes=(1, 1, 0, 0, 0, 0, 0))(ids, pos, cot))


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _h(graphdef, cfg, params, ids, pos):
    """h(c) (n, d) of the contexts (rows ids, analysed positions pos): one forward pass."""
    return features(graphdef, cfg, params, ids)[0][jnp.arange(ids.shape[0]), pos]


# ----------------------------------------------------------------------------------------------- Gram blocks
def _q(A, B, pos_eq, dtype):
    """Q[a, b, t, s] of two sweeps (shared.q; [pos_t = pos'_s] added for a learned position table)."""
    if not pos_eq:
        return q(A.ids[:, None], B.ids[None], dtype)
    return q(A.ids[:, None], B.ids[None], dtype, A.positions[:, None], B.positions[None])


@partial(jax.jit, static_argnames=("pos_eq", "n"))
def _gram_trace(A, B, pos_eq, n):
    """Σ_k ⟨g(a; C_k), g(b; C_k)⟩ (na, nb) over the first n rows k of the same cotangent chunk on both sides
    (the rows after them are the cross-term rows, different for every context)."""
    cut = (lambda x, axis: x) if n == A.dx.shape[1] else (lambda x, axis: jax.lax.slice_in_dim(x, 0, n, axis=axis))
    tot = jnp.einsum("akp,bkp->ab", cut(A.ds, 1), cut(B.ds, 1))
    for kind in A.u:
        U = jnp.einsum("Latn,Lbsn->Labts", A.u[kind], B.u[kind])
        P = jnp.einsum("Lakti,Lbksi->Labts", cut(A.du[kind], 2), cut(B.du[kind], 2))
        tot = tot + jnp.einsum("Labts,Labts->ab", U, P)
    P = jnp.einsum("aktj,bksj->abts", cut(A.dx, 1), cut(B.dx, 1))
    return tot + jnp.einsum("abts,abts->ab", _q(A, B, pos_eq, P.dtype), P)


def _pair_gram(U, dA, dB):
    """Σ_{t,s} U[a,b,t,s] (dA[a,k,t]·dB[b,l,s]) -> (na, nb, ra, rb); the U-weighted b-side first (no r² T² term)."""
    return jnp.einsum("akti,ablti->abkl", dA, jnp.einsum("abts,blsi->ablti", U, dB))


@partial(jax.jit, static_argnames=("pos_eq",))
def _gram_matrix(A, B, pos_eq):
    """⟨g(a; C_k), g(b; C_l)⟩ (na, nb, ra, rb) for every pair of cotangents of the two chunks (layers scanned)."""
    K = jnp.einsum("akp,blp->abkl", A.ds, B.ds)
    for kind in A.u:
        def layer(K, xs):
            ua, ub, da, db = xs
            return K + _pair_gram(jnp.einsum("atn,bsn->abts", ua, ub), da, db), None

        K = jax.lax.scan(layer, K, (A.u[kind], B.u[kind], A.du[kind], B.du[kind]))[0]
    return K + _pair_gram(_q(A, B, pos_eq, K.dtype), A.dx, B.dx)


@jax.jit
def _cross_y(A, h_b):
    """Y[a, b, k, t] = δx(a; C_k)_t · h(b): C J_x(a)[:, t] h(b) for every b."""
    return jnp.einsum("aktj,bj->abkt", A.dx, h_b)


@jax.jit
def _cross_z(A, onehot):
    """Σ_j δx(a; W[id_{t_j}])_{t_j} (n, d), with onehot[j, t] = [t = t_j] for this chunk's cotangent rows j."""
    return jnp.einsum("aktj,kt->aj", A.dx, onehot)


# ----------------------------------------------------------------------------------------------- basis, finish
@partial(jax.jit, static_argnames=("basis",))
def _basis(W, S, basis):
    """The cotangent rows C: I_d, W_S, or L with LᵀL = WᵀW (shared.gram_factor)."""
    if basis == "identity":
        return jnp.eye(W.shape[1], dtype=W.dtype)
    if basis == "subset":
        return W[S]
    return gram_factor(W)


@partial(jax.jit, static_argnames=("output", "basis"))
def _finish_g(K, W, S, output, basis):
    """G = W M Wᵀ ("full"), G_S = W_S M W_Sᵀ ("subset" from M), else K as it is (M, G_S, tr G)."""
    if output == "full" or (output == "subset" and basis == "identity"):
        WS = W if S is None else W[S]
        return jnp.einsum("vk,abkl,wl->abvw", WS, K, WS)
    return K


@partial(jax.jit, static_argnames=("basis",))
def _finish_x(Yab, Yba, ida, idb, W, S, basis):
    """X = B(a, b) + B(b, a)ᵀ over the tokens S: B(a, b)[v, w] = Σ_t (C' Y(a, b))[v, t] [id_a,t = S_w]."""
    Oa = (ida[..., None] == S).astype(W.dtype)  # (na, Ta, |S|)
    Ob = (idb[..., None] == S).astype(W.dtype)
    if basis == "identity":  # Y is in the d coordinates: map to the vocabulary rows S
        Yab, Yba = jnp.einsum("vk,abkt->abvt", W[S], Yab), jnp.einsum("vk,bakt->bavt", W[S], Yba)
    return jnp.einsum("abvt,atw->abvw", Yab, Oa) + jnp.einsum("bawt,btv->abvw", Yba, Ob)


# ----------------------------------------------------------------------------------------------- plan
class Plan(NamedTuple):
    """The schedule of one structured-kernel computation (`plan`)."""

    mode: str  # "trace" (pairs r = r' of cotangents) or "matrix" (all pairs: K_C = C M Cᵀ)
    basis: str  # "identity" (C = I_d), "subset" (C = W_S), "factor" (C = L with LᵀL = WᵀW)
    n_cotangents: int  # rows of C
    cross_rows: int  # tr X of a tied head: rows W[id_t] (t < T) per context after C's rows (0 when not needed)
    chunk: int  # cotangent rows per sweep (of the n_cotangents + cross_rows)
    n_chunks: int
    block: int  # contexts per sweep
    blocks_a: int
    blocks_b: int
    tokens_a: int  # T of the a rows (shared.tokens_kept)
    tokens_b: int
    cache_b: bool  # b sweeps computed once and kept (else recomputed for each a sweep)
    sweeps: int  # backward sweeps (each: `block` contexts × `chunk` cotangent rows)
    predicted_bytes: int  # peak of held sweeps and Gram temporaries (model parameters not counted)
    memory_budget: int
    devices: int  # of the mesh the contexts are spread over (1: one device); block is a multiple of it


class _Sizes(NamedTuple):
    d: int
    sum_m: int  # Σ output widths of the Dense layers (δ per token per cotangent)
    sum_n: int  # Σ input widths (u per token)
    small: int  # small parameters (norms, biases): gradients taken directly
    m_max: int
    n_layers: int
    n_heads: int


def _sizes(cfg, params):
    flat = traverse_util.flatten_dict(params["backbone"])
    small = sum(int(np.prod(v.shape)) for p, v in flat.items() if p[-1] not in ("kernel", "embedding"))
    _, sum_m, sum_n = dense_sizes(params)
    m_max = max(v.shape[1] for p, v in flat.items() if p[-1] == "kernel")
    return _Sizes(cfg.d_model, sum_m, sum_n, small, m_max, cfg.n_layers, cfg.n_heads)


def _unit_bytes(sz, n, r, T, item):
    """A held sweep of n contexts × r cotangents: δ outputs (×4: the vmapped backward's buffers, their stacking
    per kind and the Gram einsums' relayouts, as measured by VmHWM on SmolLM2, benchmarks/RESULTS.md), the Dense
    inputs and forward residuals (×2), attention probabilities."""
    per_cot = T * (sz.sum_m + sz.d) + sz.small
    return item * n * (4 * r * per_cot + 2 * T * (sz.sum_n + sz.sum_m) + sz.n_layers * sz.n_heads * T * T)


def _sweep_bytes(sz, n, r, T, item):
    """The arrays a sweep returns (Sweep: u, δ, δx, small gradients) for n contexts × r cotangents."""
    return item * n * (r * (T * (sz.sum_m + sz.d) + sz.small) + T * sz.sum_n)


def _gram_bytes(sz, mode, na, nb, r, Ta, Tb, item):
    if mode == "trace":  # U and P for one kind with all its layers
        return item * 2 * sz.n_layers * na * nb * Ta * Tb
    return item * 2 * (na * nb * r * Ta * max(sz.m_max, sz.d) + na * nb * r * r)


def _choose(sz, mode, na, nb, sym, n_cot, Ta, Tb, item, budget, chunk, block, n_dev=1):
    """(block, chunk, held bytes): the largest cotangent chunk that fits with all contexts in one block; below
    MIN_CHUNK cotangents, smaller context blocks first. A forced chunk or block is taken as given. Blocks are
    rounded up to a multiple of n_dev (the devices a sweep's contexts are spread over)."""
    N = max(na, nb)
    up = lambda n: -(-n // n_dev) * n_dev  # noqa: E731

    def held(blk, r):
        a, b = min(blk, up(na)), min(blk, up(nb))
        single = sym and blk >= na and (mode == "trace" or r >= n_cot)  # one sweep serves both sides
        T = max(Ta, Tb)
        return (_unit_bytes(sz, a, r, T, item) + (0 if single else _unit_bytes(sz, b, r, T, item))
                + _gram_bytes(sz, mode, a, b, r, Ta, Tb, item))

    blocks = [up(block)] if block else sorted({up(-(-N // k)) for k in range(1, N + 1)}, reverse=True)
    chunks = [chunk] if chunk else sorted({-(-n_cot // k) for k in range(1, n_cot + 1)}, reverse=True)
    for blk in blocks:
        for r in chunks:
            if r < min(MIN_CHUNK, n_cot) and blk != blocks[-1]:
                break
            if held(blk, r) <= budget:
                return blk, r, held(blk, r)
    return blocks[-1], chunks[-1], held(blocks[-1], chunks[-1])


def plan(req) -> KernelPlan:
    """Choose (block, chunk), count the sweeps and the bytes held: the plan `run` follows (abstract parameters
    work). req.batch_size forces the contexts per sweep (block; rounded up to a multiple of the mesh's devices),
    req.chunk the cotangent rows per sweep. predicted_bytes is the total held (what one device holds without a
    mesh); on a mesh KernelPlan.predicted_bytes_per_device is one device's share (module docstring)."""
    cfg, params, output, sym = req.cfg, req.params, req.output, req.sym
    V, d = params["head"]["W"].shape
    mode = "trace" if output == "trace" else "matrix"
    basis = {"trace": "factor", "subset": "subset" if req.tokens is not None and len(req.tokens) <= d
             else "identity"}.get(output, "identity")
    n_cot = {"factor": min(V, d), "subset": 0 if req.tokens is None else len(req.tokens), "identity": d}[basis]
    na, nb = req.na, req.nb
    Ta = tokens_kept(req.a.ids, req.a.pos)
    Tb = Ta if sym else tokens_kept(req.b.ids, req.b.pos)
    want_x = req.tied and output != "hidden"
    x_rows = max(Ta, Tb) if want_x and mode == "trace" else 0
    sz, item, budget = _sizes(cfg, params), req.itemsize, req.memory_budget
    n_dev = devices(req.mesh)
    blk, r, held = _choose(sz, mode, na, nb, sym, n_cot + x_rows, Ta, Tb, item, budget, req.chunk, req.batch_size,
                           n_dev)
    n_chunks, blocks_a, blocks_b = -(-(n_cot + x_rows) // r), -(-na // blk), -(-nb // blk)
    pairs = schedule(blocks_a, blocks_b, n_chunks, sym, mode)
    n_b_units = (blocks_a if sym else blocks_b) * n_chunks
    reused = len(pairs) > len({ub for _, ub in pairs})
    kept = n_b_units * _unit_bytes(sz, min(blk, nb), r, max(Ta, Tb), item)
    cache_b = reused and held + kept <= budget
    sweeps = walk(pairs, sym, cache_b, lambda u: None, lambda u: None, lambda *a: None)
    p = Plan(mode, basis, n_cot, x_rows, r, n_chunks, blk, blocks_a, blocks_b, Ta, Tb, cache_b, sweeps,
             int(held + (kept if cache_b else 0)), int(budget), n_dev)
    # per device: 1/n_dev of every held sweep and Gram temporary, plus the rest of the b sweep of a pair, which the
    # compiler gathers for the Gram matrices (measured with memory_analysis on the default model: module docstring)
    b_sweep = _sweep_bytes(sz, min(blk, -(-nb // n_dev) * n_dev), r, max(Ta, Tb), item)
    per_device = p.predicted_bytes / n_dev + b_sweep * (1 - 1 / n_dev)
    return KernelPlan(NAME, "", sweeps * blk * r, sweeps, r, 1, p.predicted_bytes, p.memory_budget,
                      {NAME: _cost(req, p)}, p, n_dev, int(per_device))


def _cost(req, p: Plan) -> float:
    """Rough seconds (diagnostic): per sweep of b contexts × r cotangents, b (1 + r) 2 T P_D flops and the δ written
    (b r T Σm floats); the Gram matrices of the visited pairs (na nb Ta Tb (Σn + r Σm), plus r² T Σm per pair for
    matrices)."""
    P_D, sum_m, sum_n = dense_sizes(req.params)
    na, nb = req.na, req.nb
    b, r, T = p.block, p.chunk, max(p.tokens_a, p.tokens_b)
    flops = p.sweeps * b * (1 + r) * 2 * T * P_D
    pairs = p.sweeps if p.mode == "trace" else p.sweeps * p.n_chunks
    per_pair = min(b, na) * min(b, nb) * p.tokens_a * p.tokens_b * (sum_n + r * sum_m)
    if p.mode == "matrix":
        per_pair += min(b, na) * min(b, nb) * r * r * T * sum_m
    flops += 2 * pairs * per_pair
    return seconds("structured", flops, 2 * p.sweeps * b * r * T * sum_m * req.itemsize, req.cfg.n_layers)


# ----------------------------------------------------------------------------------------------- run
def run(req, kp: KernelPlan) -> Kernel:
    """The exact kernel of the request ("trace" tr G (Na, Nb), "hidden" M (Na, Nb, d, d), "full" G (Na, Nb, V, V),
    "subset" G_S (Na, Nb, |S|, |S|)), with s and, for a tied head, X in the same form. On a mesh every sweep's
    contexts are spread over its devices (module docstring)."""
    p: Plan = kp.detail
    cfg, sym, output = req.cfg, req.sym, req.output
    mesh = None if req.mesh is None else auto_mesh(req.mesh)
    put = jnp.asarray if mesh is None else partial(sharded, mesh)
    params = place_params(mesh, req.params)
    A = side(req.a, p.blocks_a * p.block, p.tokens_a)
    B = A if sym else side(req.b, p.blocks_b * p.block, p.tokens_b)
    W, S = params["head"]["W"], req.tokens
    big, small = split_backbone(params["backbone"])
    table = W if cfg.tie_word_embeddings else None
    h_a = _h(req.graphdef, cfg, params, put(A.ids), put(A.pos))
    h_b = h_a if sym else _h(req.graphdef, cfg, params, put(B.ids), put(B.pos))
    na, nb = A.n, B.n
    s = finish_rep(h_a, h_b, na, nb, req.has_bias)
    C = _basis(W, S, p.basis)
    C = jnp.concatenate([C, jnp.zeros((p.n_chunks * p.chunk - C.shape[0], C.shape[1]), C.dtype)])
    run_sweep = partial(sweep, req.graphdef, cfg, big, small, table)
    K, Z, Y = _run_pairs(req, p, A, B, lambda ids, pos, rows: run_sweep(put(ids), put(pos), put(rows)), C, W, h_a,
                         h_b, "pos" in params["backbone"])
    n = p.n_cotangents
    G = _finish_g(jnp.asarray(K[:na, :nb] if p.mode == "trace" else K[:na, :nb, :n, :n]), W, S, output, p.basis)
    X = None
    want_x = req.tied and output != "hidden"
    if want_x and p.mode == "trace":  # tr X = Z(a)·h(b) + Z(b)·h(a)
        X = Z["a"][:na] @ h_b[:nb].T + (Z["b"][:nb] @ h_a[:na].T).T
    elif want_x:
        X = _finish_x(jnp.asarray(Y["a"][:na, :nb, :n]), jnp.asarray(Y["b"][:nb, :na, :n]), jnp.asarray(A.ids[:na]),
                      jnp.asarray(B.ids[:nb]), W, jnp.arange(W.shape[0], dtype=jnp.int32) if S is None else S,
                      p.basis)
    return Kernel(representation=s, gradient=G, cross=X, output=output, vocab_size=cfg.vocab_size, tokens=S)


def _unit_cotangents(C, W, sd, blk, r, n_cot, x_rows, unit):
    """Cotangent rows (blk, r, d) of a unit: rows k*r..(k+1)*r of [C; W[id_t] for t < T (cross rows); 0], and
    onehot (r, T) with onehot[j, t] = 1 where row j is the cross row of position t."""
    i, k = unit
    ids = sd.ids[i * blk:(i + 1) * blk]
    rows = jnp.broadcast_to(C[k * r:(k + 1) * r], (blk, r, C.shape[1]))
    t = np.arange(k * r, (k + 1) * r) - n_cot
    onehot = (t[:, None] == np.arange(ids.shape[1])[None, :]) & (t[:, None] < x_rows)
    if onehot.any():
        cross = W[jnp.asarray(ids[:, np.clip(t, 0, ids.shape[1] - 1)])] * jnp.asarray(onehot.any(1), W.dtype)[:, None]
        rows = rows + cross
    return rows, jnp.asarray(onehot, W.dtype), onehot.any()


def _run_pairs(req, p: Plan, A, B, run_sweep, C, W, h_a, h_b, pos_eq):
    """Walk the plan's unit pairs. Returns K (host: tr G, or K_C = C M Cᵀ), Z {"a", "b"} (n_pad, d) with
    Z(c) = Σ_t δx(c; W[id_t])_t for tr X (trace mode), Y {"a", "b"} the cross arrays C J_x(c)[:, t] h(c') of the
    matrix mode (None when X is not wanted)."""
    sym = req.sym
    blk, r, nc, n_cot = p.block, p.chunk, C.shape[0], p.n_cotangents
    dt = np.dtype(h_a.dtype)
    K = np.zeros((len(A.pos), len(B.pos)) + (() if p.mode == "trace" else (nc, nc)), dt)
    Z = {"a": np.zeros((len(A.pos), W.shape[1]), dt)}
    Z["b"] = Z["a"] if sym else np.zeros((len(B.pos), W.shape[1]), dt)
    want_y = req.tied and req.output != "hidden" and p.mode == "matrix"
    Y = {"a": np.zeros((len(A.pos), len(B.pos), nc, A.ids.shape[1]), dt) if want_y else None}
    Y["b"] = Y["a"] if sym or not want_y else np.zeros((len(B.pos), len(A.pos), nc, B.ids.shape[1]), dt)
    seen = set()

    def sweep_of(Sd, name):
        def f(unit):
            rows, onehot, has_x = _unit_cotangents(C, W, Sd, blk, r, n_cot, p.cross_rows, unit)
            out = run_sweep(Sd.ids[unit[0] * blk:(unit[0] + 1) * blk], Sd.pos[unit[0] * blk:(unit[0] + 1) * blk], rows)
            if has_x and (name, unit) not in seen:  # once per unit, also when the unit is swept again
                seen.add((name, unit))
                Z[name][unit[0] * blk:(unit[0] + 1) * blk] += np.asarray(_cross_z(out, onehot))
            return out
        return f

    def visit(ua, ub, SA, SB):
        ia, ib = slice(ua[0] * blk, (ua[0] + 1) * blk), slice(ub[0] * blk, (ub[0] + 1) * blk)
        if p.mode == "trace":
            n = min(r, n_cot - ua[1] * r)
            t = np.asarray(_gram_trace(SA, SB, pos_eq, n)) if n > 0 else 0.0
            K[ia, ib] += t
            if sym and ub != ua:
                K[ib, ia] += np.transpose(t)
            return
        ka, kb = slice(ua[1] * r, (ua[1] + 1) * r), slice(ub[1] * r, (ub[1] + 1) * r)
        m = np.asarray(_gram_matrix(SA, SB, pos_eq))
        K[ia, ib, ka, kb] = m
        if sym and ub != ua:
            K[ib, ia, kb, ka] = m.transpose(1, 0, 3, 2)
        for name, unit, ix, kx, Sw, h in (("ya", ua, ia, ka, SA, h_b), ("yb", ub, ib, kb, SB, h_a)):
            if want_y and (name, unit) not in seen and (name == "ya" or not sym):
                seen.add((name, unit))
                Y[name[1]][ix, :, kx] = np.asarray(_cross_y(Sw, h))

    pairs = schedule(p.blocks_a, p.blocks_b, p.n_chunks, sym, p.mode)
    walk(pairs, sym, p.cache_b, sweep_of(A, "a"), sweep_of(B, "a" if sym else "b"), visit)
    return K, Z, Y
