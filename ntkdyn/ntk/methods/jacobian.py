"""The Jacobian method: exact kernels from J_h(c), the Jacobian of the features h(c) ∈ R^d of a context, built by d
reverse passes (one jax.vjp of h(c), vmapped over the d cotangents and over a chunk of contexts) and contracted
over the parameters (spec §1): M = J_h J_hᵀ, G = W M Wᵀ, G_S = W_S M W_Sᵀ, and for the trace
tr G = ⟨WᵀW, M⟩_F = ⟨L J_h(c), L J_h(c')⟩ with LᵀL = WᵀW (the rows of L as the cotangents: N² d P instead of
N² d² P). Every reverse pass writes a weight gradient, so a context's J_h costs d·P floats: work is chunked over
contexts and, if one context's J_h exceeds the memory budget, over parameter leaves (groups: one backward sweep each).
On a Mesh each chunk's contexts are spread over the devices.

The input-embedding tables are never differentiated as V×d leaves: h is differentiated w.r.t. the looked-up input
vectors x_t = E[ids_t] (+ P[t] for GPT-2), J_x(c) ∈ R^{d×T×d}, and the table rows are recovered from the lookup:
the table part of M is Σ_{t,s} Q(c,c')[t,s] J_x(c)[:, t] J_x(c')[:, s]ᵀ (Q: shared.q), and for a tied head the same
J_x gives the cross term X(c, c') = B(c, c') + B(c', c)ᵀ, B(c, c')[v, w] = Σ_{t: ids_t = w} (W J_x(c)[:, t] h(c'))_v.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ...models.transformer import features
from ..kernel import Kernel, KernelPlan
from ..shared import (assemble, auto_mesh, cat, dense_sizes, finish_rep, gram_factor, place_params, q, schedule,
                      seconds as _seconds, sharded, side, tokens_kept, walk)

__all__ = ["NAME", "OUTPUTS", "plan", "run", "Split", "split_params", "h_at", "Placed", "Sizing", "sizing",
           "make_plan", "pow2", "slot_q"]

NAME = "jacobian"
OUTPUTS = ("full", "trace", "subset", "hidden")


# ----------------------------------------------------------------------------------------------- J_h
@dataclasses.dataclass
class Split:
    """params split for this method: ψ without the lookup tables, the input table E, GPT-2's positional table P
    (constants here: their part of J_h goes through J_x), the head W (and b)."""

    psi: dict
    E: jax.Array
    P: Any
    W: jax.Array
    has_bias: bool
    dtype: Any


def split_params(cfg, params) -> Split:
    """The Split of a params pytree {"backbone", "head"} of a model of config `cfg` (abstract parameters work)."""
    bb = dict(params["backbone"])
    if cfg.tie_word_embeddings:
        E = params["head"]["W"]
    else:
        E = bb.pop("embed")["embedding"]
    P = bb.pop("pos")["embedding"] if "pos" in bb else None
    dtype = jnp.result_type(*jax.tree.leaves(params))
    return Split(bb, E, P, params["head"]["W"], "b" in params["head"], dtype)


def h_at(graphdef, cfg, psi, x, ptab, p):
    """h(c) ∈ R^d of the context whose looked-up input vectors are x (T, d) at position p (pure in psi, x)."""
    bb = dict(psi)
    if ptab is not None:
        bb["pos"] = {"embedding": ptab}
    if cfg.tie_word_embeddings:
        params = {"backbone": bb, "head": {"W": x}}
    else:
        bb["embed"] = {"embedding": x}
        params = {"backbone": bb, "head": {}}
    slots = jnp.arange(x.shape[0], dtype=jnp.int32)[None]  # row t of x is token slot t
    h = features(graphdef, cfg, params, slots)[0][0]
    return jax.lax.dynamic_index_in_dim(h, p, 0, keepdims=False)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "group", "with_x"))
def jac_chunk(graphdef, cfg, group, with_x, psi, E, ptab, rows, pos, U):
    """U J_h for a chunk of contexts, one reverse pass per row of the cotangent matrix U (r × d: the identity
    gives J_h itself): Jp (n, r, P_group) over the leaves `group` of psi (flattened, concatenated), Jx (n, r, T, d)
    over the input vectors (or None), h (n, d)."""
    leaves, treedef = jax.tree.flatten(psi)
    r = U.shape[0]

    def one(row, p):
        x = E[row]

        def f(diff, x):
            ls = list(leaves)
            for i, v in zip(group, diff):
                ls[i] = v
            return h_at(graphdef, cfg, treedef.unflatten(ls), x, ptab, p)

        diff = [leaves[i] for i in group]
        if with_x:
            h, vjp = jax.vjp(f, diff, x)
            Jd, Jx = jax.vmap(vjp)(U)
        else:
            h, vjp = jax.vjp(lambda diff: f(diff, x), diff)
            (Jd,), Jx = jax.vmap(vjp)(U), None
        Jp = (jnp.concatenate([j.reshape(r, -1) for j in Jd], axis=1) if group
              else jnp.zeros((r, 0), h.dtype))
        return Jp, Jx, h

    return jax.vmap(one)(rows, pos)


class Placed:
    """The split parameters of one model placed on the mesh (if any: shared.place_params, replicated or sharded over
    an "fsdp" axis), and context arrays placed with their leading axis spread over its devices."""

    def __init__(self, req):
        self.graphdef, self.cfg = req.graphdef, req.cfg
        self.mesh = None if req.mesh is None else auto_mesh(req.mesh)
        self.sp = split_params(req.cfg, req.params)
        self.psi, self.E, self.P = (place_params(self.mesh, x) for x in (self.sp.psi, self.sp.E, self.sp.P))
        self.positions = self.sp.P is not None  # a learned position table: Q adds [t = s]

    def put(self, a):
        """Context-axis arrays: spread over the mesh's devices (or left to the default device)."""
        return jnp.asarray(a) if self.mesh is None else sharded(self.mesh, a)

    def jac(self, S, lo, hi, group, with_x, compute, U):
        """U J_h of the (padded) contexts lo..hi-1 of a Side, chunk by chunk: (Jp, Jx, h, ids)."""
        outs = []
        for s in range(lo, hi, compute):
            outs.append(jac_chunk(self.graphdef, self.cfg, group, with_x, self.psi, self.E, self.P,
                                  self.put(S.ids[s:s + compute]), self.put(S.pos[s:s + compute]), U))
        Jp, Jx, h = (cat([o[i] for o in outs]) if outs[0][i] is not None else None for i in range(3))
        return Jp, Jx, h, self.put(S.ids[lo:hi])


# ----------------------------------------------------------------------------------------------- blocks
def slot_q(ida, idb, positions, dtype):
    """shared.q of token rows that start at position 0 (the rows of a Side), whose positions are their slots."""
    if not positions:
        return q(ida, idb, dtype)
    return q(ida, idb, dtype, jnp.arange(ida.shape[-1]), jnp.arange(idb.shape[-1]))


def x_part(Jxa, ida, Jxb, idb, positions):
    """Σ_{t,s} Q[t,s] J_x(a)[:, t] J_x(b)[:, s]ᵀ -> (na, nb, d, d): the input-table part of M, one a at a time."""

    def per_a(args):
        jx, ia = args  # (d, Ta, d), (Ta,)
        Z = jnp.einsum("bts,blsj->btlj", slot_q(ia[None], idb, positions, jx.dtype), Jxb)
        return jnp.einsum("ktj,btlj->bkl", jx, Z)

    return jax.lax.map(per_a, (Jxa, ida))


@partial(jax.jit, static_argnames=("positions",))
def m_block(Ja, Jxa, ida, Jb, Jxb, idb, positions):
    """M(a, b) = J_h(a) J_h(b)ᵀ over this group's parameters: (na, nb, d, d)."""
    M = jnp.einsum("akp,blp->abkl", Ja, Jb)
    if Jxa is not None:
        M = M + x_part(Jxa, ida, Jxb, idb, positions)
    return M


@partial(jax.jit, static_argnames=("positions", "mode"))
def trace_block(W, Ja, Jxa, ida, Jb, Jxb, idb, positions, mode):
    """tr G(a, b) = ⟨WᵀW, M(a, b)⟩_F over this group's parameters: (na, nb).
    mode "m" (small blocks): M by one GEMM, contracted with C = WᵀW. "factored": Ja, Jb (and Jx) are L J_h with
    LᵀL = WᵀW, so tr G = ⟨L J_h(a), L J_h(b)⟩, one GEMM of N² d P instead of N² d² P. "factored_p": only the
    parameter part is factored, J_x is raw (tied heads need it for the cross term)."""
    C = W.T @ W
    na, nb = Ja.shape[0], Jb.shape[0]
    if mode == "m":
        t = jnp.einsum("kl,abkl->ab", C, jnp.einsum("akp,blp->abkl", Ja, Jb))
    else:
        t = Ja.reshape(na, -1) @ Jb.reshape(nb, -1).T
    if Jxa is not None:
        Fxa = Jxa if mode == "factored" else jnp.einsum("kl,altj->aktj", C, Jxa)
        Sx = jnp.einsum("aktj,bksj->abts", Fxa, Jxb)
        t = t + jnp.sum(Sx * slot_q(ida[:, None], idb[None], positions, Sx.dtype), axis=(-2, -1))
    return t


@jax.jit
def apply_factor(L, J):
    """(L Jp, Jx, h, ids) from a Jacobian block (Jp, Jx, h, ids): the parameter part factored after the fact."""
    Jp, Jx, h, ids = J
    return jnp.matmul(L, Jp), Jx, h, ids


@partial(jax.jit, static_argnames=("mode",))
def cross_block(W, S, Jxa, ida, ha, Jxb, idb, hb, mode):
    """Tied cross term X(a, b) = B(a, b) + B(b, a)ᵀ with B(c, c')[v, w] = Σ_{t: ids_t = w} (W J_x(c)[:, t] h(c'))_v.
    mode "trace": (na, nb); "matrix": (na, nb, n, n) over the tokens S (all of them for "full")."""
    if mode == "trace":
        Za = jnp.einsum("atk,aktj->atj", W[ida], Jxa)
        Zb = jnp.einsum("btk,bktj->btj", W[idb], Jxb)
        return jnp.einsum("atj,bj->ab", Za, hb) + jnp.einsum("btj,aj->ab", Zb, ha)
    WS = W[S]
    Oa = (ida[..., None] == S).astype(W.dtype)  # (na, Ta, n) one-hot restricted to S
    Ob = (idb[..., None] == S).astype(W.dtype)
    Yab = jnp.einsum("aktj,bj->abkt", Jxa, hb)
    Yba = jnp.einsum("bktj,aj->abkt", Jxb, ha)
    Bab = jnp.einsum("vk,abkt,atw->abvw", WS, Yab, Oa)
    Bba = jnp.einsum("wk,abkt,btv->abvw", WS, Yba, Ob)  # B(b, a)ᵀ
    return Bab + Bba


@partial(jax.jit, static_argnames=("na", "nb", "output"))
def finish_grad(M, W, S, na, nb, output):
    """Unpad; "full"/"subset": G_S = W_S M W_Sᵀ (spec §1) per pair."""
    M = M[:na, :nb]
    if output in ("full", "subset"):
        WS = W if S is None else W[S]
        return jnp.einsum("abvl,wl->abvw", jnp.einsum("vk,abkl->abvl", WS, M), WS)
    return M


# ----------------------------------------------------------------------------------------------- plan
def pow2(n):
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


class Sizing(NamedTuple):
    """What this method's plan needs to know about a request."""

    Ta: int  # tokens kept per a row (shared.tokens_kept)
    Tb: int  # tokens kept per b row
    itemsize: int  # bytes per float of the parameters
    leaf_sizes: list  # sizes of the ψ leaves
    width: int  # widest activation per token (d_ff, 3d, heads·T): the backward's cotangent memory
    budget: int  # bytes of Jacobian blocks held at once
    batch_size: int | None  # contexts per chunk given by the user (None: from the budget)
    n_dev: int  # devices a chunk is spread over


def sizing(req) -> Sizing:
    """The Sizing of a request (abstract parameters work)."""
    cfg, split = req.cfg, split_params(req.cfg, req.params)
    Ta = tokens_kept(req.a.ids, req.a.pos)
    Tb = Ta if req.sym else tokens_kept(req.b.ids, req.b.pos)
    return Sizing(Ta=Ta, Tb=Tb, itemsize=jnp.dtype(split.dtype).itemsize,
                  leaf_sizes=[int(x.size) for x in jax.tree.leaves(split.psi)],
                  width=max(cfg.d_ff, 3 * cfg.d_model, cfg.n_heads * max(Ta, Tb)), budget=req.memory_budget,
                  batch_size=req.batch_size, n_dev=1 if req.mesh is None else req.mesh.devices.size)


def make_plan(n_ctx, d, T, leaf_sizes, itemsize, budget, batch_size, width, n_dev):
    """Parameter groups and chunk sizes that keep the Jacobian blocks within `budget` bytes.

    A context's J_h over a group of S inputs is d·S floats. Contexts are computed in chunks of `compute`
    (vmapped; padded to a fixed size so each group compiles once) and held in store blocks of `k` chunks; two
    blocks (an a-block and a b-block) are held at once, so the b-blocks are recomputed per a-block only when
    all contexts do not fit. If one context's whole J_h does not fit, the parameter leaves are split into
    groups (each group is one more backward sweep). Returns (compute, [(leaf indices, with_x, k), ...])."""
    x_size = T * d
    per = lambda S: d * S * itemsize  # noqa: E731
    total = sum(leaf_sizes) + x_size
    if 2 * per(total) <= budget or not leaf_sizes:
        groups = [(tuple(range(len(leaf_sizes))), True, total)]
    else:
        cap = max(1, budget // (2 * d * itemsize))
        groups, cur, cur_size, with_x = [], [], x_size, True
        for i, s in enumerate(leaf_sizes):
            if cur_size and cur_size + s > cap:
                groups.append((tuple(cur), with_x, cur_size))
                cur, cur_size, with_x = [], 0, False
            cur.append(i)
            cur_size += s
        groups.append((tuple(cur), with_x, cur_size))
    S_max = max(S for _, _, S in groups)
    # activation cotangents alive during the vmapped backward: ~ d · T · (a few widths) per context
    inter = d * T * 4 * width * itemsize
    compute = batch_size or max(1, min(int(budget // (2 * (per(S_max) + inter))), pow2(n_ctx)))
    if compute < n_ctx and not batch_size:  # balance the chunks (little padding)
        compute = -(-n_ctx // -(-n_ctx // compute))
    compute = -(-compute // n_dev) * n_dev
    n_pad = -(-n_ctx // compute) * compute
    # one block partition for all groups (their M contributions are summed block by block)
    k = n_pad // compute if n_pad * per(S_max) <= budget else max(1, int(budget // (2 * per(S_max) * compute)))
    return compute, [(g, wx, k) for g, wx, _ in groups]


class Plan(NamedTuple):
    """The schedule of one Jacobian-method computation."""

    sizing: Sizing
    compute: int  # contexts per vmapped chunk
    groups: list  # [(ψ leaf indices, with_x, k)]: one backward sweep per group, blocks of k chunks
    blocks_a: int
    blocks_b: int
    cache_b: bool  # the one b-block is computed once per group (else recomputed for every a-block)
    units: int  # Jacobian blocks computed (walk's count over the schedule)
    pairs: int  # block pairs contracted


def _trace_mode(output, block, tied):
    """How trace blocks of `block` contexts are contracted (trace_block): "factored" when the head is untied or not
    reported tied (the rows of L are the reverse passes' cotangents, which gives L J_h at no extra cost: d P per pair
    instead of d² P); "factored_p" for the tied cross term on large blocks (the parameter part factored after the
    fact, d² P per context, since X needs the raw J_x); "m" otherwise (M contracted with WᵀW)."""
    if output == "trace" and not tied:
        return "factored"
    if output == "trace" and block * block > 4 * block:
        return "factored_p"
    return "m"


def plan(req) -> KernelPlan:
    """The plan of `run` for a request (exact outputs; abstract parameters work)."""
    sz, d = sizing(req), req.cfg.d_model
    na, nb, sym = req.na, req.nb, req.sym
    n_ctx = max(na, nb)
    compute, groups = make_plan(n_ctx if sym else na + nb, d, max(sz.Ta, sz.Tb), sz.leaf_sizes, sz.itemsize,
                                sz.budget, sz.batch_size, sz.width, sz.n_dev)
    compute = min(compute, pow2(n_ctx) if sz.n_dev == 1 else -(-pow2(n_ctx) // sz.n_dev) * sz.n_dev)
    bs = groups[0][2] * compute
    pad = lambda n: -(-n // compute) * compute  # noqa: E731
    blocks_a, blocks_b = -(-pad(na) // bs), -(-pad(nb) // bs)
    cache_b = blocks_b == 1 and len(groups) == 1
    pairs = schedule(blocks_a, blocks_b, len(groups), sym, "trace")
    units = walk(pairs, sym, cache_b, lambda u: None, lambda u: None, lambda *a: None)
    jp = Plan(sz, compute, groups, blocks_a, blocks_b, cache_b, units, len(pairs))
    S_max = max(sum(sz.leaf_sizes[i] for i in g) for g, _, _ in groups)
    held = 2 * max(k for _, _, k in groups) * compute * d * (S_max + max(sz.Ta, sz.Tb) * d) * sz.itemsize
    sweeps = len(groups) * (1 if sym else 2) * pad(n_ctx) // compute
    # per device: 1/n_dev of the a block, the b block gathered whole for the contraction (as the structured sweeps)
    per_device = held / 2 / sz.n_dev + held / 2
    return KernelPlan(NAME, "", sweeps * compute * d, sweeps, compute, len(groups), int(held), sz.budget,
                      {NAME: _cost(req, jp)}, jp, sz.n_dev, int(per_device))


def _cost(req, jp: Plan) -> float:
    """Rough seconds (diagnostic): per group, every computed block costs d backward passes through the activations
    (2 T P_D each) and the group's weight gradients (2 T P_g), d·P_g floats written and read; every contracted block
    pair costs d·P_g (factored trace) or d²·P_g (M with WᵀW) per context pair."""
    sz, cfg = jp.sizing, req.cfg
    P_D = dense_sizes(req.params)[0]
    d, T, item = cfg.d_model, max(sz.Ta, sz.Tb), sz.itemsize
    bs = jp.groups[0][2] * jp.compute
    factored = _trace_mode(req.output, bs, req.tied) != "m"
    flops = nbytes = 0.0
    for group, _, _ in jp.groups:
        P_g = sum(sz.leaf_sizes[i] for i in group)
        ctx = jp.units / len(jp.groups) * bs
        flops += ctx * d * 2 * T * (P_D + min(P_g, P_D))
        nbytes += 2 * ctx * d * P_g * item
        flops += 2 * jp.pairs / len(jp.groups) * bs * bs * d * P_g * (1 if factored else d)
        if factored and req.tied:
            flops += 2 * ctx * d * d * P_g
    return _seconds("jacobian", flops, nbytes, cfg.n_layers)


# ----------------------------------------------------------------------------------------------- run
def run(req, kp: KernelPlan) -> Kernel:
    """The exact kernel ("full", "trace", "subset", "hidden"): Jacobian blocks of chunks of contexts, contracted
    block pair by block pair over the plan's schedule (spec §1)."""
    jp: Plan = kp.detail
    pl = Placed(req)
    V, W, bias, output, S = req.cfg.vocab_size, pl.sp.W, pl.sp.has_bias, req.output, req.tokens
    na, nb, sym, compute = req.na, req.nb, req.sym, jp.compute
    pad = lambda n: -(-n // compute) * compute  # noqa: E731
    A = side(req.a, pad(na), jp.sizing.Ta)
    B = A if sym else side(req.b, pad(nb), jp.sizing.Tb)
    bs = jp.groups[0][2] * compute
    want_cross = req.tied and output != "hidden"
    Sx = jnp.arange(V, dtype=jnp.int32) if output == "full" else S
    mode = _trace_mode(output, bs, req.tied) if output == "trace" else "m"
    L = gram_factor(W) if mode != "m" else None
    U = L if mode == "factored" else jnp.eye(req.cfg.d_model, dtype=pl.sp.dtype)  # the reverse passes' cotangents
    acc, cross, hA, hB = {}, {}, {}, {}

    def compute_unit(Sd):
        def f(unit):
            i, g = unit
            group, with_x, _ = jp.groups[g]
            J = pl.jac(Sd, i * bs, min((i + 1) * bs, len(Sd.pos)), group, with_x, compute, U)
            return apply_factor(L, J) if mode == "factored_p" else J
        return f

    def visit(ua, ub, JA, JB):
        (i, g), j = ua, ub[0]
        with_x = jp.groups[g][1]
        (Jpa, Jxa, h_a, ida), (Jpb, Jxb, h_b, idb) = JA, JB
        if with_x:
            hA[i], hB[j] = h_a, h_b
        if output == "trace":
            blk = trace_block(W, Jpa, Jxa, ida, Jpb, Jxb, idb, pl.positions, mode)
        else:
            blk = m_block(Jpa, Jxa, ida, Jpb, Jxb, idb, pl.positions)
        acc[(i, j)] = blk if (i, j) not in acc else acc[(i, j)] + blk
        if want_cross and with_x:
            cross[(i, j)] = cross_block(W, Sx, Jxa, ida, h_a, Jxb, idb, h_b, "trace" if output == "trace" else "matrix")

    walk(schedule(jp.blocks_a, jp.blocks_b, len(jp.groups), sym, "trace"), sym, jp.cache_b, compute_unit(A),
         compute_unit(B), visit)
    hA_all = cat([hA[i] for i in sorted(hA)])
    s = finish_rep(hA_all, hA_all if sym else cat([hB[j] for j in sorted(hB)]), na, nb, bias)
    G = finish_grad(assemble(acc, sym), W, S, na, nb, output)
    X = finish_grad(assemble(cross, sym), W, S, na, nb, "hidden") if want_cross else None
    return Kernel(representation=s, gradient=G, cross=X, output=output, vocab_size=V, tokens=S)
