"""The decomposed empirical NTK of a causal LM's next-token logits (paper/spec.md §1).

    Θ(c, c') = ∂z(c)/∂θ ∂z(c')/∂θᵀ = R + G (+ X for a tied head),
    R(c, c') = (h(c)·h(c') [+1 with a head bias]) I_V                         representation component
    G(c, c') = W M(c, c') Wᵀ,  M(c, c') = J_h(c) J_h(c')ᵀ ∈ R^{d×d}          gradient component
    X(c, c') = B(c, c') + B(c', c)ᵀ,  B(c, c') = W J_h^E(c) (I_V ⊗ h(c'))      tied cross term

A context c is a (row, position) pair into a token array: the prefix ids[row, :pos+1], whose next-token logits
z(c) = lm.logits(ids)[row, pos] are analysed.

Fast path (never a V×P Jacobian). R needs only h (one forward pass). J_h(c) (d × P_ψ) is built from d
reverse-mode passes per context (one jax.vjp of h(c), vmapped over the d cotangents and over a chunk of
contexts), then M = J_h J_hᵀ is one contraction over the parameters and G = W M Wᵀ, G_S = W_S M W_Sᵀ. For the
trace, tr G = ⟨WᵀW, M⟩_F = ⟨L J_h(c), L J_h(c')⟩ with LᵀL = WᵀW: the reverse passes take the rows of L as
cotangents and the kernel is one Gram matrix (N² d P instead of N² d² P). Work is chunked over contexts (and, if
one context's J_h is too large, over parameter leaves) within a memory budget; a Mesh spreads each chunk's
contexts over its devices.

The input-embedding tables are never differentiated as V×d leaves: h is differentiated w.r.t. the looked-up
input vectors x_t = E[ids_t] (+ P[t] for GPT-2), J_x(c) ∈ R^{d×T×d}, and the table rows are recovered from the
lookup: ∂h/∂E_v = Σ_{t: ids_t = v} ∂h/∂x_t, ∂h/∂P_p = ∂h/∂x_p. Hence the table part of M is
Σ_{t,s} Q(c,c')[t,s] J_x(c)[:, t] J_x(c')[:, s]ᵀ with Q[t,s] = [ids_t = ids'_s] (+ [t = s] for GPT-2's
positions), and for a tied head the same J_x gives the cross term X without V×d×d objects.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .models.transformer import apply_head, features

__all__ = ["Kernel", "HutchinsonEstimate", "decompose", "representation", "hidden_kernel",
           "full_kernel_bruteforce", "contexts_from_mask", "OUTPUTS"]

OUTPUTS = ("full", "trace", "subset", "hidden", "hutchinson")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of Jacobian blocks held at once (J_h chunks of contexts)


# ----------------------------------------------------------------------------------------------- results
class HutchinsonEstimate(NamedTuple):
    """Probe estimates (Na, Nb) of tr K and ‖K‖_F² with their standard errors (std over probes / √n)."""

    trace: jax.Array
    trace_se: jax.Array
    fro2: jax.Array
    fro2_se: jax.Array
    num_probes: int


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The eNTK split Θ = R ⊗ I + G (+ X).

    representation: (Na, Nb) scalars s = h(c)·h(c') (+1 with a head bias); R = s ⊗ I_V.
    gradient: G = W M Wᵀ; (Na, Nb, V, V) "full", (Na, Nb) "trace", (Na, Nb, |S|, |S|) "subset",
              M itself (Na, Nb, d, d) for "hidden", a HutchinsonEstimate for "hutchinson".
    cross: the tied-embedding cross term X in the same form as `gradient` (a HutchinsonEstimate of tr X, ‖X‖_F²
           for "hutchinson"); None for an untied head, for untied=True, and for "hidden"."""

    representation: jax.Array
    gradient: Any
    cross: Any
    output: str
    vocab_size: int
    tokens: Any = None

    def total(self):
        """Θ = R ⊗ I + G (+ X) for output "full" / "subset" ((Na, Nb, n, n)) or its trace for "trace"."""
        if self.output not in ("full", "subset", "trace"):
            raise ValueError(f"Kernel.total() needs output 'full', 'subset' or 'trace'; this kernel has "
                             f"output={self.output!r}")
        return _total(self.representation, self.gradient, self.cross, self.vocab_size)


@partial(jax.jit, static_argnames=("V",))
def _total(s, G, X, V):
    if G.ndim == 2:  # traces: tr(s I_V) = V s
        t = V * s + G
    else:
        t = s[:, :, None, None] * jnp.eye(G.shape[-1], dtype=G.dtype) + G
    return t if X is None else t + X


# ----------------------------------------------------------------------------------------------- contexts
def contexts_from_mask(mask) -> np.ndarray:
    """(row, position) pairs (N, 2) of the nonzero entries of a (B, T) mask, row-major: e.g. every position whose
    next-token prediction belongs to a teacher-forced completion."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (batch, time); got shape {m.shape}")
    return np.argwhere(m != 0).astype(np.int32)


def _check_ids(lm, ids, name):
    if isinstance(ids, jax.core.Tracer):
        raise ValueError(f"{name} must be a concrete array of token ids, not a traced value")
    a = np.asarray(ids)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, time) array of token ids; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids; got dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); expected at least one row and one token")
    V = lm.config.vocab_size
    if a.min() < 0 or a.max() >= V:
        bad = sorted(set(a[(a < 0) | (a >= V)].tolist()))[:5]
        raise ValueError(f"{name} holds token id(s) {bad} outside the vocabulary [0, {V})")
    if a.shape[1] > lm.config.max_positions:
        raise ValueError(f"{name} rows have {a.shape[1]} tokens, more than the model's "
                         f"max_positions={lm.config.max_positions}")
    return a.astype(np.int32)


def _contexts(lm, ids, pos, ids_name, pos_name):
    """-> ids (B, T) int32, rows (N,), positions (N,) after validation."""
    ids = _check_ids(lm, ids, ids_name)
    B, T = ids.shape
    p = np.asarray(pos)
    if p.size and not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"{pos_name} must hold integer positions; got dtype {p.dtype}")
    p = p.astype(np.int64)
    if p.ndim == 1:
        if p.shape[0] != B:
            raise ValueError(f"{pos_name} has {p.shape[0]} positions but {ids_name} has {B} rows; give one "
                             f"position per row, shape ({B},), or (row, position) pairs of shape (N, 2)")
        rows = np.arange(B)
    elif p.ndim == 2 and p.shape[1] == 2:
        rows, p = p[:, 0], p[:, 1]
        if rows.size and (rows.min() < 0 or rows.max() >= B):
            bad = sorted(set(rows[(rows < 0) | (rows >= B)].tolist()))[:5]
            raise ValueError(f"{pos_name} (row, position) pairs name row(s) {bad} outside [0, {B}) "
                             f"({ids_name} has {B} rows)")
    else:
        raise ValueError(f"{pos_name} must have shape (N,) (one position per row of {ids_name}) or (N, 2) "
                         f"((row, position) pairs); got shape {p.shape}")
    if p.size == 0:
        raise ValueError(f"{pos_name} names no context; expected at least one")
    if p.min() < 0 or p.max() >= T:
        bad = sorted(set(p[(p < 0) | (p >= T)].tolist()))[:5]
        raise ValueError(f"{pos_name} holds position(s) {bad} outside [0, {T}) ({ids_name} rows have {T} tokens)")
    return ids, rows.astype(np.int32), p.astype(np.int32)


# ----------------------------------------------------------------------------------------------- model split
@dataclasses.dataclass
class _Split:
    """params split for the fast path: ψ without the lookup tables, the input table E, GPT-2's positional
    table P (constants here: their part of J_h goes through J_x), the head W (and b)."""

    psi: dict
    E: jax.Array
    P: Any
    W: jax.Array
    has_bias: bool
    dtype: Any


def _split(lm, params):
    cfg = lm.config
    bb = dict(params["backbone"])
    if cfg.tie_word_embeddings:
        E = params["head"]["W"]
    else:
        E = bb.pop("embed")["embedding"]
    P = bb.pop("pos")["embedding"] if "pos" in bb else None
    dtype = jnp.result_type(*jax.tree.leaves(params))
    return _Split(bb, E, P, params["head"]["W"], "b" in params["head"], dtype)


def _h_at(graphdef, cfg, psi, x, ptab, p):
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


# ----------------------------------------------------------------------------------------------- Jacobians
@partial(jax.jit, static_argnames=("graphdef", "cfg", "group", "with_x"))
def _jac_chunk(graphdef, cfg, group, with_x, psi, E, ptab, rows, pos, U):
    """U J_h for a chunk of contexts, one reverse pass per row of the cotangent matrix U (d × d: the identity
    gives J_h itself): Jp (n, d, P_group) over the leaves `group` of psi (flattened, concatenated), Jx (n, d, T, d)
    over the input vectors (or None), h (n, d)."""
    leaves, treedef = jax.tree.flatten(psi)
    d = cfg.d_model

    def one(row, p):
        x = E[row]

        def f(diff, x):
            ls = list(leaves)
            for i, v in zip(group, diff):
                ls[i] = v
            return _h_at(graphdef, cfg, treedef.unflatten(ls), x, ptab, p)

        diff = [leaves[i] for i in group]
        if with_x:
            h, vjp = jax.vjp(f, diff, x)
            Jd, Jx = jax.vmap(vjp)(U)
        else:
            h, vjp = jax.vjp(lambda diff: f(diff, x), diff)
            (Jd,), Jx = jax.vmap(vjp)(U), None
        Jp = (jnp.concatenate([j.reshape(d, -1) for j in Jd], axis=1) if group
              else jnp.zeros((d, 0), h.dtype))
        return Jp, Jx, h

    return jax.vmap(one)(rows, pos)


def _q(ida, idb, pos_eye, dtype):
    """Q(c, c')[t, s] = [ids_t = ids'_s] (+ [t = s] for learned positions): (..., Ta, Tb)."""
    Q = (ida[..., :, None] == idb[..., None, :]).astype(dtype)
    if pos_eye:
        Q = Q + jnp.eye(ida.shape[-1], idb.shape[-1], dtype=dtype)
    return Q


def _x_part(Jxa, ida, Jxb, idb, pos_eye):
    """Σ_{t,s} Q[t,s] J_x(a)[:, t] J_x(b)[:, s]ᵀ -> (na, nb, d, d): the input-table part of M, one a at a time."""

    def per_a(args):
        jx, ia = args  # (d, Ta, d), (Ta,)
        Q = _q(ia[None], idb, pos_eye, jx.dtype)  # (nb, Ta, Tb)
        Z = jnp.einsum("bts,blsj->btlj", Q, Jxb)
        return jnp.einsum("ktj,btlj->bkl", jx, Z)

    return jax.lax.map(per_a, (Jxa, ida))


@partial(jax.jit, static_argnames=("pos_eye",))
def _m_block(Ja, Jxa, ida, Jb, Jxb, idb, pos_eye):
    """M(a, b) = J_h(a) J_h(b)ᵀ over this group's parameters: (na, nb, d, d)."""
    M = jnp.einsum("akp,blp->abkl", Ja, Jb)
    if Jxa is not None:
        M = M + _x_part(Jxa, ida, Jxb, idb, pos_eye)
    return M


@partial(jax.jit, static_argnames=("pos_eye", "mode"))
def _trace_block(W, Ja, Jxa, ida, Jb, Jxb, idb, pos_eye, mode):
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
        t = t + jnp.sum(Sx * _q(ida[:, None], idb[None], pos_eye, Sx.dtype), axis=(-2, -1))
    return t


@jax.jit
def _factor(W):
    """L (d×d) with LᵀL = WᵀW (symmetric square root via eigh; tiny negative eigenvalues clipped)."""
    lam, U = jnp.linalg.eigh(W.T @ W)
    return (U * jnp.sqrt(jnp.clip(lam, 0.0))) @ U.T


@jax.jit
def _apply_factor(L, J):
    Jp, Jx, h, ids = J
    return jnp.matmul(L, Jp), Jx, h, ids


@partial(jax.jit, static_argnames=("mode",))
def _cross_block(W, S, Jxa, ida, ha, Jxb, idb, hb, mode):
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


# ----------------------------------------------------------------------------------------------- planning
def _pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _bucket(n, T):
    """Rows are truncated to the longest analysed prefix (exact by causality), rounded up to limit recompiles."""
    return min(T, max(8, _pow2(n)))


def _plan(n_ctx, d, T, leaf_sizes, itemsize, budget, batch_size, width, n_dev):
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
    compute = batch_size or max(1, min(int(budget // (2 * (per(S_max) + inter))), _pow2(n_ctx)))
    if compute < n_ctx and not batch_size:  # balance the chunks (little padding)
        compute = -(-n_ctx // -(-n_ctx // compute))
    compute = -(-compute // n_dev) * n_dev
    n_pad = -(-n_ctx // compute) * compute
    # one block partition for all groups (their M contributions are summed block by block)
    k = n_pad // compute if n_pad * per(S_max) <= budget else max(1, int(budget // (2 * per(S_max) * compute)))
    return compute, [(g, wx, k) for g, wx, _ in groups]


# ----------------------------------------------------------------------------------------------- engine
class _Side:
    """One side (a or b) of the kernel: the row of every context (truncated to Tc tokens) and its position,
    padded (by repeating the last context) to n_pad contexts."""

    def __init__(self, ids, rows, pos, Tc, n_pad):
        self.n = len(rows)
        idx = np.concatenate([np.arange(self.n), np.full(n_pad - self.n, self.n - 1)]).astype(np.int64)
        self.ctx_ids = np.ascontiguousarray(ids[rows[idx]][:, :Tc])
        self.pos = pos[idx]
        self.n_pad = n_pad


def _sharded(mesh, a):
    from jax.sharding import NamedSharding, PartitionSpec
    return jax.device_put(jnp.asarray(a), NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names))))


def _auto_mesh(mesh):
    """The same devices and axes with Auto axis types: the compiler places the per-chunk work (a mesh from
    jax.make_mesh has Explicit axes, under which gathers with sharded indices need explicit out_sharding)."""
    from jax.sharding import AxisType, Mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _replicate(mesh, tree):
    if mesh is None or tree is None:
        return tree
    from jax.sharding import NamedSharding, PartitionSpec
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _cat(parts, axis=0):
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


class _Engine:
    def __init__(self, lm, params, mesh):
        self.cfg, self.graphdef = lm.config, lm.graphdef
        self.mesh = mesh = None if mesh is None else _auto_mesh(mesh)
        self.sp = _split(lm, params)
        self.psi = _replicate(mesh, self.sp.psi)
        self.E = _replicate(mesh, self.sp.E)
        self.P = _replicate(mesh, self.sp.P)
        self.pos_eye = self.sp.P is not None
        self.U = jnp.eye(self.cfg.d_model, dtype=self.sp.dtype)  # cotangents: rows of U J_h are computed

    def put(self, a):
        """Context-axis arrays: spread over the mesh's devices (or left to the default device)."""
        return jnp.asarray(a) if self.mesh is None else _sharded(self.mesh, a)

    def jac(self, side, lo, hi, group, with_x, compute):
        """U J_h of the (padded) contexts lo..hi-1 of a side, chunk by chunk: (Jp, Jx, h, ids)."""
        outs = []
        for s in range(lo, hi, compute):
            rows, pos = self.put(side.ctx_ids[s:s + compute]), self.put(side.pos[s:s + compute])
            outs.append(_jac_chunk(self.graphdef, self.cfg, group, with_x, self.psi, self.E, self.P, rows, pos,
                                   self.U))
        Jp, Jx, h = (_cat([o[i] for o in outs]) if outs[0][i] is not None else None for i in range(3))
        return Jp, Jx, h, self.put(side.ctx_ids[lo:hi])


def _loop(eng, A, B, sym, compute, plan, visit, post=None):
    """visit(with_x, i, j, JA, JB) for every (a-block, b-block) of every parameter group (j >= i when symmetric),
    JA/JB = post(J) when given. Returns the features h of the a and b contexts (from the group that carries the
    input vectors)."""
    jac = (lambda *a: post(eng.jac(*a))) if post is not None else eng.jac
    hA, hB = {}, {}
    for group, with_x, k in plan:
        bs = k * compute
        a_blocks = [(s, min(s + bs, A.n_pad)) for s in range(0, A.n_pad, bs)]
        b_blocks = a_blocks if sym else [(s, min(s + bs, B.n_pad)) for s in range(0, B.n_pad, bs)]
        keep_b = len(b_blocks) == 1  # (with several b-blocks they are recomputed: the memory bound)
        cache = {}
        for i, (lo, hi) in enumerate(a_blocks):
            JA = jac(A, lo, hi, group, with_x, compute)
            if with_x:
                hA[i] = JA[2]
            for j in (range(i, len(b_blocks)) if sym else range(len(b_blocks))):
                if sym and i == j:
                    JB = JA
                elif j in cache:
                    JB = cache[j]
                else:
                    JB = jac(B, *b_blocks[j], group, with_x, compute)
                    if keep_b:
                        cache[j] = JB
                if with_x:
                    hB[j] = JB[2]
                visit(with_x, i, j, JA, JB)
    hA = _cat([hA[i] for i in sorted(hA)])
    return hA, (hA if sym else _cat([hB[j] for j in sorted(hB)]))


def _assemble(blocks, sym, transpose):
    """One array from a dict {(i, j): block}; the lower triangle is `transpose` of the upper when symmetric."""
    n_i = 1 + max(i for i, _ in blocks)
    n_j = 1 + max(j for _, j in blocks)
    if sym:
        n_i = n_j = max(n_i, n_j)
    rows = [_cat([blocks[(i, j)] if (i, j) in blocks else transpose(blocks[(j, i)]) for j in range(n_j)], axis=1)
            for i in range(n_i)]
    return _cat(rows)


@partial(jax.jit, static_argnames=("na", "nb", "bias"))
def _finish_rep(ha, hb, na, nb, bias):
    """s = h(c)·h(c') (+1 with a head bias) for the unpadded contexts."""
    return ha[:na] @ hb[:nb].T + (1.0 if bias else 0.0)


@partial(jax.jit, static_argnames=("na", "nb", "output"))
def _finish_grad(M, W, S, na, nb, output):
    """Unpad; "full"/"subset": G_S = W_S M W_Sᵀ (spec §1) per pair."""
    M = M[:na, :nb]
    if output in ("full", "subset"):
        WS = W if S is None else W[S]
        return jnp.einsum("abvl,wl->abvw", jnp.einsum("vk,abkl->abvl", WS, M), WS)
    return M


def _swap_pairs(x):
    """K(b, a) from K(a, b) for a block: transpose the context axes, and the matrix axes when present."""
    x = jnp.swapaxes(x, 0, 1)
    return jnp.swapaxes(x, 2, 3) if x.ndim == 4 else x


# ----------------------------------------------------------------------------------------------- public API
def _prepare(lm, ids_a, pos_a, ids_b, pos_b, params):
    params = lm.params if params is None else params
    if not (isinstance(params, dict) and "backbone" in params and "head" in params):
        raise ValueError("params must be a pytree with the two top-level keys 'backbone' and 'head' "
                         "(like lm.params)")
    ida, ra, pa = _contexts(lm, ids_a, pos_a, "ids_a", "pos_a")
    sym = ids_b is None and pos_b is None
    if sym:
        idb, rb, pb = ida, ra, pa
    elif pos_b is None:
        raise ValueError("pos_b is required when ids_b is given (the positions of the b contexts)")
    elif ids_b is None:
        idb, rb, pb = _contexts(lm, ids_a, pos_b, "ids_a", "pos_b")
    else:
        idb, rb, pb = _contexts(lm, ids_b, pos_b, "ids_b", "pos_b")
    return params, (ida, ra, pa), (idb, rb, pb), sym


def representation(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, params=None):
    """s(c, c') = h(c)·h(c') (+1 when the head has a bias): R = s ⊗ I_V, (Na, Nb). One forward pass per side."""
    params, a, b, sym = _prepare(lm, ids_a, pos_a, ids_b, pos_b, params)
    return _representation(lm, params, a, b, sym)[0]


def _representation(lm, params, a, b, sym):
    """s from one forward pass (lm.features, compiled once per ids shape) per side."""
    ha = lm.features(a[0], params)[a[1], a[2]]
    hb = ha if sym else lm.features(b[0], params)[b[1], b[2]]
    return _finish_rep(ha, hb, len(a[1]), len(b[1]), "b" in params["head"]), ha, hb


def hidden_kernel(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, params=None, batch_size=None, mesh=None,
                  memory_budget=None):
    """M(c, c') = J_h(c) J_h(c')ᵀ, (Na, Nb, d, d); J_h over ψ (and, tied, the input use of the shared table)."""
    return decompose(lm, ids_a, pos_a, ids_b, pos_b, output="hidden", params=params, batch_size=batch_size,
                     mesh=mesh, memory_budget=memory_budget).gradient


def decompose(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, output: str = "full", tokens=None, params=None,
              batch_size: int | None = None, mesh=None, num_probes: int = 64, seed: int = 0,
              untied: bool = False, memory_budget: int | None = None) -> Kernel:
    """The eNTK of the next-token logits between contexts a and b, split into R, G (and X for a tied head).

    ids_a: (B, T) int token rows; pos_a: (B,) one analysed position per row, or (N, 2) (row, position) pairs
    (see `contexts_from_mask`). ids_b/pos_b default to a's (symmetric kernel); pos_b alone reuses ids_a's rows.
    output: "full" (Na, Nb, V, V) | "trace" (Na, Nb) exact | "subset" (Na, Nb, |S|, |S|) with tokens=S |
            "hidden" M (Na, Nb, d, d) | "hutchinson" estimates of tr G and ‖G‖_F² from `num_probes`
            Rademacher probes (G v = W J_h(c) [J_h(c')ᵀ Wᵀ v]: one VJP and one JVP per probe).
    untied: report the view where the tied table is cloned into a separate output head (Θ = R + G, cross None).
    batch_size: contexts per vmapped Jacobian chunk (default: from `memory_budget`, bytes of Jacobian blocks
    held at once, 1 GiB by default). mesh: a jax.sharding.Mesh; every chunk's contexts are spread over all its
    devices. Float64 parameters (with jax x64 enabled) give a float64 kernel.
    """
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; expected one of {', '.join(OUTPUTS)}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer (contexts per chunk); got {batch_size!r}")
    if memory_budget is not None and (not isinstance(memory_budget, (int, np.integer)) or memory_budget < 1):
        raise ValueError(f"memory_budget must be a positive number of bytes; got {memory_budget!r}")
    if output == "hutchinson" and (isinstance(num_probes, bool) or not isinstance(num_probes, (int, np.integer))
                                   or num_probes < 2):
        raise ValueError(f"num_probes must be an integer >= 2 for output='hutchinson'; got {num_probes!r}")
    V, d = lm.config.vocab_size, lm.config.d_model
    S = None
    if output == "subset":
        if tokens is None:
            raise ValueError("output='subset' needs tokens=S, a 1-D array of token ids")
        S = np.asarray(tokens)
        if S.ndim != 1 or S.size == 0 or not np.issubdtype(S.dtype, np.integer):
            raise ValueError(f"tokens must be a non-empty 1-D array of integer token ids; got shape {S.shape} "
                             f"dtype {S.dtype}")
        if S.min() < 0 or S.max() >= V:
            bad = sorted(set(S[(S < 0) | (S >= V)].tolist()))[:5]
            raise ValueError(f"tokens holds id(s) {bad} outside the vocabulary [0, {V})")
        S = jnp.asarray(S, jnp.int32)
    elif tokens is not None:
        raise ValueError(f"tokens is only used with output='subset'; got output={output!r}")
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}")

    params, a, b, sym = _prepare(lm, ids_a, pos_a, ids_b, pos_b, params)
    tied = lm.config.tie_word_embeddings and not untied
    eng = _Engine(lm, params, mesh)
    W = eng.sp.W
    bias = eng.sp.has_bias
    Ta, Tb = _bucket(a[2].max() + 1, a[0].shape[1]), _bucket(b[2].max() + 1, b[0].shape[1])
    itemsize = jnp.dtype(eng.sp.dtype).itemsize
    leaf_sizes = [int(x.size) for x in jax.tree.leaves(eng.sp.psi)]
    width = max(lm.config.d_ff, 3 * d, lm.config.n_heads * max(Ta, Tb))
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    n_dev = 1 if mesh is None else mesh.devices.size
    na, nb = len(a[1]), len(b[1])

    if output == "hutchinson":
        return _hutchinson(lm, params, eng, a, b, sym, Ta, Tb, tied, num_probes, seed, budget, batch_size, itemsize,
                           leaf_sizes, width, n_dev)

    n_ctx = max(na, nb)
    compute, plan = _plan(n_ctx if sym else na + nb, d, max(Ta, Tb), leaf_sizes, itemsize, budget, batch_size,
                          width, n_dev)
    compute = min(compute, _pow2(n_ctx) if n_dev == 1 else -(-_pow2(n_ctx) // n_dev) * n_dev)
    pad = lambda n: -(-n // compute) * compute  # noqa: E731
    A = _Side(*a, Ta, pad(na))
    B = A if sym else _Side(*b, Tb, pad(nb))
    want_cross = tied and output != "hidden"
    Sx = jnp.arange(V, dtype=jnp.int32) if output == "full" else S
    acc, cross = {}, {}

    bs = plan[0][2] * compute
    mode, post = "m", None
    if output == "trace" and bs * bs > 4 * bs:  # large blocks: tr G = ⟨L J_h(a), L J_h(b)⟩ (see _trace_block)
        if tied:  # the cross term needs the raw J_x: factor the parameter part after the fact
            mode, post = "factored_p", partial(_apply_factor, _factor(W))
        else:  # reverse passes with the rows of L as cotangents give L J_h directly
            mode, eng.U = "factored", _factor(W)

    def visit(with_x, i, j, JA, JB):
        (Jpa, Jxa, h_a, ida), (Jpb, Jxb, h_b, idb) = JA, JB
        if output == "trace":
            blk = _trace_block(W, Jpa, Jxa, ida, Jpb, Jxb, idb, eng.pos_eye, mode)
        else:
            blk = _m_block(Jpa, Jxa, ida, Jpb, Jxb, idb, eng.pos_eye)
        acc[(i, j)] = blk if (i, j) not in acc else acc[(i, j)] + blk
        if want_cross and with_x:
            cross[(i, j)] = _cross_block(W, Sx, Jxa, ida, h_a, Jxb, idb, h_b,
                                         "trace" if output == "trace" else "matrix")

    hA, hB = _loop(eng, A, B, sym, compute, plan, visit, post)
    s = _finish_rep(hA, hB, na, nb, bias)
    G = _finish_grad(_assemble(acc, sym, _swap_pairs), W, S, na, nb, output)
    X = _finish_grad(_assemble(cross, sym, _swap_pairs), W, S, na, nb, "hidden") if want_cross else None
    return Kernel(representation=s, gradient=G, cross=X, output=output, vocab_size=V, tokens=S)


# ----------------------------------------------------------------------------------------------- Hutchinson
@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _probe_vjp(graphdef, cfg, psi, E, ptab, rows, pos, U):
    """g(c') = J_h(c')ᵀ u for every probe u = Wᵀ v: (ψ leaves (n, np, ...), input part (n, np, T, d))."""

    def one(row, p):
        x = E[row]
        _, vjp = jax.vjp(lambda psi, x: _h_at(graphdef, cfg, psi, x, ptab, p), psi, x)
        return jax.vmap(vjp)(U)

    return jax.vmap(one)(rows, pos)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "pos_eye", "tied"))
def _probe_jvp(graphdef, cfg, psi, E, ptab, rows_a, pos_a, ha, gpsi, gx, idb, hb, U, probes, W, pos_eye, tied):
    """Per (a, b, probe): vᵀ G v and ‖G v‖² with G v = W J_h(a) g(b) (one JVP), and the same for the tied X."""
    C = W.T @ W

    def one(row, p, h_a):
        x = E[row]
        f = lambda psi, x: _h_at(graphdef, cfg, psi, x, ptab, p)  # noqa: E731
        jv = lambda tpsi, tx: jax.jvp(f, (psi, x), (tpsi, tx))[1]  # noqa: E731
        jvx = lambda tx: jax.jvp(lambda x: f(psi, x), (x,), (tx,))[1]  # noqa: E731

        def per_b(gp, gxb, ib, h_b):
            Q = _q(row, ib, pos_eye, gxb.dtype)  # (Ta, Tb): the table tangent g(b) as seen by a's lookup
            y = jax.vmap(jv)(gp, jnp.einsum("ts,psj->ptj", Q, gxb))  # (np, d) = J_h(a) g(b)
            out = [jnp.sum(U * y, -1), jnp.einsum("pk,kl,pl->p", y, C, y)]
            if tied:
                # X v = W J_x(a) (v[ids_a] ⊗ h(b)) + Σ_s e_{ids_b[s]} (g_x(b)[s]·h(a))
                yx = jax.vmap(jvx)(probes[:, row][:, :, None] * h_b[None, None, :])  # (np, d)
                sv = jnp.einsum("psj,j->ps", gxb, h_a)  # (np, Tb)
                trx = jnp.sum(U * yx, -1) + jnp.sum(probes[:, ib] * sv, -1)
                frx = (jnp.einsum("pk,kl,pl->p", yx, C, yx) + 2 * jnp.sum((yx @ W[ib].T) * sv, -1)
                       + jnp.einsum("ps,st,pt->p", sv, _q(ib, ib, False, sv.dtype), sv))
                out += [trx, frx]
            return jnp.stack(out)  # (k, np)

        return jax.vmap(per_b)(gpsi, gx, idb, hb)

    return jax.vmap(one)(rows_a, pos_a, ha)  # (na, nb, k, np)


@partial(jax.jit, static_argnames=("na", "nb"))
def _finish_probes(est, na, nb):
    est = est[:na, :nb]
    return est.mean(-1), est.std(-1, ddof=1) / jnp.sqrt(est.shape[-1])


def _hutchinson(lm, params, eng, a, b, sym, Ta, Tb, tied, num_probes, seed, budget, batch_size, itemsize, leaf_sizes,
                width, n_dev):
    d, V = eng.cfg.d_model, eng.cfg.vocab_size
    W = eng.sp.W
    s, ha, hb = _representation(lm, params, a, b, sym)
    probes = jax.random.rademacher(jax.random.key(seed), (num_probes, V), dtype=eng.sp.dtype)
    U = probes @ W  # (np, d): Wᵀ v
    T = max(Ta, Tb)
    na, nb = len(a[1]), len(b[1])
    per_b = num_probes * (sum(leaf_sizes) + T * d) * itemsize  # one b context's probe VJPs
    cb = batch_size or max(1, min(_pow2(nb), int(budget // (2 * per_b))))
    ca = batch_size or max(1, min(_pow2(na), int(budget // (num_probes * cb * d * T * 4 * width * itemsize + 1))))
    ca = -(-ca // n_dev) * n_dev
    A = _Side(*a, Ta, -(-na // ca) * ca)
    B = _Side(*b, Tb, -(-nb // cb) * cb)
    hA = jnp.concatenate([ha, jnp.repeat(ha[-1:], A.n_pad - na, 0)]) if A.n_pad > na else ha
    hB = jnp.concatenate([hb, jnp.repeat(hb[-1:], B.n_pad - nb, 0)]) if B.n_pad > nb else hb
    rows_out = []
    for sa in range(0, A.n_pad, ca):
        cols = []
        for sb in range(0, B.n_pad, cb):
            rows_b, pos_b = jnp.asarray(B.ctx_ids[sb:sb + cb]), jnp.asarray(B.pos[sb:sb + cb])
            gpsi, gx = _probe_vjp(eng.graphdef, eng.cfg, eng.psi, eng.E, eng.P, rows_b, pos_b, U)
            cols.append(_probe_jvp(eng.graphdef, eng.cfg, eng.psi, eng.E, eng.P, eng.put(A.ctx_ids[sa:sa + ca]),
                                   eng.put(A.pos[sa:sa + ca]), eng.put(hA[sa:sa + ca]), gpsi, gx, rows_b,
                                   hB[sb:sb + cb], U, probes, W, eng.pos_eye, tied))
        rows_out.append(_cat(cols, axis=1))
    mean, se = _finish_probes(_cat(rows_out), na, nb)
    G = HutchinsonEstimate(mean[..., 0], se[..., 0], mean[..., 1], se[..., 1], num_probes)
    X = HutchinsonEstimate(mean[..., 2], se[..., 2], mean[..., 3], se[..., 3], num_probes) if tied else None
    return Kernel(representation=s, gradient=G, cross=X, output="hutchinson", vocab_size=V)


# ----------------------------------------------------------------------------------------------- reference
def full_kernel_bruteforce(lm, ids, pos_pairs, params=None, *, untied: bool = False):
    """Reference Θ (N, N, V, V): jax.jacrev of the logits at the contexts w.r.t. the whole params pytree,
    contracted over all parameters. With untied=True a tied table is cloned into a separate output head
    (its input use and its head use differentiated as two parameters). Small models only (N×V×P Jacobians)."""
    params = lm.params if params is None else params
    ids, rows, pos = _contexts(lm, ids, pos_pairs, "ids", "pos_pairs")
    untied = bool(untied and lm.config.tie_word_embeddings)
    return _bruteforce(lm.graphdef, lm.config, untied, params, jnp.asarray(ids), jnp.asarray(rows),
                       jnp.asarray(pos))


@partial(jax.jit, static_argnames=("graphdef", "cfg", "untied"))
def _bruteforce(graphdef, cfg, untied, params, ids, rows, pos):
    if untied:
        theta = {"backbone": params["backbone"], "head": params["head"], "table_in": params["head"]["W"]}

        def z(th):
            h = features(graphdef, cfg, {"backbone": th["backbone"], "head": {"W": th["table_in"]}}, ids)[0]
            return apply_head(th["head"], h)[rows, pos]
    else:
        theta = params

        def z(th):
            return apply_head(th["head"], features(graphdef, cfg, th, ids)[0])[rows, pos]

    J = jax.jacrev(z)(theta)
    N, V = rows.shape[0], cfg.vocab_size
    J = jnp.concatenate([j.reshape(N, V, -1) for j in jax.tree.leaves(J)], axis=-1)  # (N, V, P)
    return jnp.einsum("avp,bwp->abvw", J, J)
