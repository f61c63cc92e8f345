"""Exact eNTK blocks by structured derivatives: M, G, tr G, G_S and the tied cross term X (paper/spec.md §1),
without ever forming a weight gradient.

A dense layer y_t = x_t W (+ b) that reads u_t (T × n) and receives output cotangents δ_t (T × m) has the weight
gradient Σ_t u_t δ_tᵀ, so for contexts c, c' and cotangents r, r' on h(c), h(c'):

    ⟨∂_W h(c)ᵀ r, ∂_W h(c')ᵀ r'⟩ = Σ_{t,s} (u_t·u'_s)(δ_{r,t}·δ'_{r',s})           two T×T Gram matrices

The δ of every Dense comes from ONE backward pass through the activations: the VJP with respect to zero taps at
the Dense outputs (models/transformer.Taps), not the weights. An embedding lookup is a dense layer on one-hot
inputs: its part is Σ_{t,s} [id_t = id'_s] (δx_t·δx'_s), δx the cotangent of the looked-up rows; GPT-2's learned
position table adds [pos_t = pos'_s]. The other parameters (norm scales/biases, Dense biases) are small and are
differentiated directly. With cotangents the rows of a basis C (n_C × d), K_C(c, c') = C M(c, c') Cᵀ:

    hidden, full: C = I_d -> M, G = W M Wᵀ;   subset: C = W_S (|S| <= d) -> G_S, else W_S M W_Sᵀ;
    trace: only r = r' pairs with C = L, LᵀL = WᵀW -> tr G = ⟨WᵀW, M⟩_F = Σ_k ⟨L_k J_h(c), L_k J_h(c')⟩.

Tied head (W = E): G holds the input-lookup path of the table (the [id_t = id'_s] term), as ntk.decompose does,
and X(c, c') = B(c, c') + B(c', c)ᵀ, B(c, c')[v, w] = Σ_{t: id_t = w} (W J_x(c)[:, t] h(c'))_v, where
C J_x(c)[:, t] h(c') = δx(c; C)_t·h(c') comes from the same sweeps; tr X needs δx(c; W[id_t])_t, one extra sweep
of T cotangents per context. untied=True is the view with the table cloned into a separate head: same G, no X.

Cost per cotangent: one backward through the activations. Memory: sweeps are chunked over cotangents (and, if
needed, blocked over contexts) so that the held δ stay within `memory_budget`; `make_plan` shows the schedule.
"""
from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ..models.transformer import EMBED, Taps, features
from .structured_plan import DEFAULT_MEMORY_BUDGET, MIN_CHUNK, OUTPUTS, Plan, make_plan, schedule, setup, walk

__all__ = ["Plan", "StructuredKernel", "make_plan", "structured_kernel", "OUTPUTS", "DEFAULT_MEMORY_BUDGET",
           "MIN_CHUNK"]


class StructuredKernel(NamedTuple):
    """representation s (Na, Nb) (R = s·I_V); gradient G / tr G / G_S / M; cross X (tied) or None; the plan."""

    representation: jax.Array
    gradient: jax.Array
    cross: Any
    plan: Plan


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
def _split(backbone):
    """(big, small): Dense kernels and lookup tables (never differentiated) and everything else, nested dicts."""
    flat = traverse_util.flatten_dict(backbone)
    big = {k: v for k, v in flat.items() if k[-1] in ("kernel", "embedding")}
    small = {k: v for k, v in flat.items() if k[-1] not in ("kernel", "embedding")}
    return traverse_util.unflatten_dict(big), traverse_util.unflatten_dict(small)


def _kinds(big):
    """{kind: [Dense paths in layer order]}, kind = the path inside a block, e.g. "attn.q"."""
    kinds = {}
    for path in sorted((p[:-1] for p in traverse_util.flatten_dict(big) if p[-1] == "kernel"),
                       key=lambda p: (p[2:], p[1])):
        if path[0] != "layers":
            raise ValueError(f"unexpected Dense outside the layers at {path}")
        kinds.setdefault(".".join(path[2:]), []).append(path)
    return kinds


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _sweep(graphdef, cfg, big, small, table, ids, pos, cot):
    """Dense inputs u and, for every context's cotangents cot (n, r, d) on h(c), the cotangents δ of every Dense
    output and of the looked-up rows, and the small parameters' gradients: one backward through the activations."""
    kinds = _kinds(big)
    kernels = traverse_util.flatten_dict(big)
    dtype = jnp.result_type(*jax.tree.leaves(small), table if table is not None else jnp.float32, jnp.float32)
    T, d = ids.shape[1], cfg.d_model
    zeros = {p: jnp.zeros((1, T, kernels[p + ("kernel",)].shape[1]), dtype) for ps in kinds.values() for p in ps}
    zeros[EMBED] = jnp.zeros((1, T, d), dtype)

    def h_at(small, values, ids_T, p):
        bb = traverse_util.unflatten_dict({**traverse_util.flatten_dict(big), **traverse_util.flatten_dict(small)})
        taps = Taps(values)
        params = {"backbone": bb, "head": {} if table is None else {"W": table}}
        h = features(graphdef, cfg, params, ids_T[None], taps=taps)[0][0]
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
    """Q[a, b, t, s] = [id_t = id'_s] (+ [pos_t = pos'_s] for learned positions): the lookup tables' Gram."""
    Q = (A.ids[:, None, :, None] == B.ids[None, :, None, :]).astype(dtype)
    if pos_eq:
        Q = Q + (A.positions[:, None, :, None] == B.positions[None, :, None, :]).astype(dtype)
    return Q


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
    """The cotangent rows C: I_d, W_S, or L with LᵀL = WᵀW (W itself when V <= d, else a symmetric square root)."""
    if basis == "identity":
        return jnp.eye(W.shape[1], dtype=W.dtype)
    if basis == "subset":
        return W[S]
    if W.shape[0] <= W.shape[1]:
        return W
    lam, U = jnp.linalg.eigh(W.T @ W)
    return (U * jnp.sqrt(jnp.clip(lam, 0.0))) @ U.T


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


def structured_kernel(graphdef, cfg, params, ids_a, rows_a, pos_a, ids_b=None, rows_b=None, pos_b=None, *,
                      output="trace", tokens=None, untied=False, memory_budget=None, chunk=None,
                      block=None) -> StructuredKernel:
    """The eNTK split of the next-token logits between contexts a and b, exact, from structured derivatives.

    ids_*: (B, T) int32 token rows; rows_*, pos_*: (N,) the row and the analysed position of every context
    (validated by the caller). ids_b None: the symmetric kernel of a with itself. output: "trace" tr G (Na, Nb),
    "hidden" M (Na, Nb, d, d), "full" G (Na, Nb, V, V), "subset" G_S (Na, Nb, |S|, |S|) with tokens=S.
    cross: X for a tied head in the same form (None for "hidden", untied heads and untied=True).
    memory_budget: bytes of sweep outputs held at once (1 GiB by default); chunk / block force the cotangents
    and contexts per sweep. The result's plan tells what was run."""
    job = setup(cfg, params, ids_a, rows_a, pos_a, ids_b, rows_b, pos_b, output, tokens, untied, memory_budget,
                chunk, block)
    A, B, plan = job.A, job.B, job.plan
    W = params["head"]["W"]
    S = None if tokens is None else jnp.asarray(tokens, jnp.int32)
    big, small = _split(params["backbone"])
    table = W if cfg.tie_word_embeddings else None
    run = partial(_sweep, graphdef, cfg, big, small, table)
    h_a = _h(graphdef, cfg, params, A.ids, A.pos)
    h_b = h_a if job.sym else _h(graphdef, cfg, params, B.ids, B.pos)
    na, nb = A.n, B.n
    s = h_a[:na] @ h_b[:nb].T + (1.0 if "b" in params["head"] else 0.0)
    C = _basis(W, S, job.basis)
    C = jnp.concatenate([C, jnp.zeros((plan.n_chunks * plan.chunk - C.shape[0], C.shape[1]), C.dtype)])
    K, Z, Y = _run_pairs(job, run, C, W, h_a, h_b, "pos" in params["backbone"])
    n = plan.n_cotangents
    G = _finish_g(jnp.asarray(K[:na, :nb] if job.mode == "trace" else K[:na, :nb, :n, :n]), W, S, output, job.basis)
    X = None
    if job.want_x and job.mode == "trace":  # tr X = Z(a)·h(b) + Z(b)·h(a)
        X = Z["a"][:na] @ h_b[:nb].T + (Z["b"][:nb] @ h_a[:na].T).T
    elif job.want_x:
        X = _finish_x(jnp.asarray(Y["a"][:na, :nb, :n]), jnp.asarray(Y["b"][:nb, :na, :n]), jnp.asarray(A.ids[:na]),
                      jnp.asarray(B.ids[:nb]), W, jnp.arange(W.shape[0], dtype=jnp.int32) if S is None else S,
                      job.basis)
    return StructuredKernel(s, G, X, plan)


def _unit_cotangents(C, W, side, blk, r, n_cot, x_rows, unit):
    """Cotangent rows (blk, r, d) of a unit: rows k*r..(k+1)*r of [C; W[id_t] for t < T (cross rows); 0], and
    onehot (r, T) with onehot[j, t] = 1 where row j is the cross row of position t."""
    i, k = unit
    ids = side.ids[i * blk:(i + 1) * blk]
    rows = jnp.broadcast_to(C[k * r:(k + 1) * r], (blk, r, C.shape[1]))
    t = np.arange(k * r, (k + 1) * r) - n_cot
    onehot = (t[:, None] == np.arange(ids.shape[1])[None, :]) & (t[:, None] < x_rows)
    if onehot.any():
        cross = W[jnp.asarray(ids[:, np.clip(t, 0, ids.shape[1] - 1)])] * jnp.asarray(onehot.any(1), W.dtype)[:, None]
        rows = rows + cross
    return rows, jnp.asarray(onehot, W.dtype), onehot.any()


def _run_pairs(job, run, C, W, h_a, h_b, pos_eq):
    """Walk the plan's unit pairs. Returns K (host: tr G, or K_C = C M Cᵀ), Z {"a", "b"} (n_pad, d) with
    Z(c) = Σ_t δx(c; W[id_t])_t for tr X (trace mode), Y {"a", "b"} the cross arrays C J_x(c)[:, t] h(c') of the
    matrix mode (None when X is not wanted)."""
    A, B, p, sym = job.A, job.B, job.plan, job.sym
    blk, r, nc, n_cot = p.block, p.chunk, C.shape[0], p.n_cotangents
    dt = np.dtype(h_a.dtype)
    K = np.zeros((len(A.pos), len(B.pos)) + (() if job.mode == "trace" else (nc, nc)), dt)
    Z = {"a": np.zeros((len(A.pos), W.shape[1]), dt)}
    Z["b"] = Z["a"] if sym else np.zeros((len(B.pos), W.shape[1]), dt)
    want_y = job.want_x and job.mode == "matrix"
    Y = {"a": np.zeros((len(A.pos), len(B.pos), nc, A.ids.shape[1]), dt) if want_y else None}
    Y["b"] = Y["a"] if sym or not want_y else np.zeros((len(B.pos), len(A.pos), nc, B.ids.shape[1]), dt)
    seen = set()

    def sweep(side, name):
        def f(unit):
            rows, onehot, has_x = _unit_cotangents(C, W, side, blk, r, n_cot, p.cross_rows, unit)
            S = run(side.ids[unit[0] * blk:(unit[0] + 1) * blk], side.pos[unit[0] * blk:(unit[0] + 1) * blk], rows)
            if has_x and (name, unit) not in seen:  # once per unit, also when the unit is swept again
                seen.add((name, unit))
                Z[name][unit[0] * blk:(unit[0] + 1) * blk] += np.asarray(_cross_z(S, onehot))
            return S
        return f

    def visit(ua, ub, SA, SB):
        ia, ib = slice(ua[0] * blk, (ua[0] + 1) * blk), slice(ub[0] * blk, (ub[0] + 1) * blk)
        if job.mode == "trace":
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
        for name, unit, ix, kx, S, h in (("ya", ua, ia, ka, SA, h_b), ("yb", ub, ib, kb, SB, h_a)):
            if want_y and (name, unit) not in seen and (name == "ya" or not sym):
                seen.add((name, unit))
                Y[name[1]][ix, :, kx] = np.asarray(_cross_y(S, h))

    pairs = schedule(p.blocks_a, p.blocks_b, p.n_chunks, sym, job.mode)
    walk(pairs, sym, p.cache_b, sweep(A, "a"), sweep(B, "a" if sym else "b"), visit)
    return K, Z, Y
