"""What every kernel method shares, one copy each: the padded sides and the one token-bucketing rule, the lookup
tables' Gram matrix Q, the factor L of WᵀW, the probes and the Hutchinson formulas (tied X included), the finishing
steps, the one scheduler over (a unit, b unit) pairs, mesh placement and the rough seconds model of k.plan.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = ["Side", "tokens_kept", "side", "q", "gram_factor", "rademacher", "g_estimates", "tied_x_estimates",
           "finish_rep", "finish_probes", "cat", "assemble", "swap_pairs", "schedule", "walk", "sharded",
           "auto_mesh", "devices", "place_params", "dense_sizes", "seconds"]


# ----------------------------------------------------------------------------------------------- sides
class Side(NamedTuple):
    """One side (a or b) as a method computes it: the context rows truncated to T tokens (`tokens_kept`) and their
    analysed positions, padded by repeating the last context; n the real contexts."""

    ids: np.ndarray  # (n_pad, T) int32
    pos: np.ndarray  # (n_pad,) int32
    n: int


def tokens_kept(ids, pos) -> int:
    """T kept of a side's rows: the longest analysed prefix (exact by causality: later tokens cannot change h at an
    analysed position), rounded up to a multiple of 8 so that nearby lengths share a compiled program."""
    return int(min(np.shape(ids)[1], -(-(int(np.max(pos)) + 1) // 8) * 8))


def side(ctx, n_pad: int, T: int | None = None) -> Side:
    """The Side of contexts `ctx` (ids, rows, pos) padded to n_pad contexts, rows truncated to T (default
    `tokens_kept`)."""
    ids, rows, pos = ctx
    n = len(rows)
    T = tokens_kept(ids, pos) if T is None else T
    idx = np.concatenate([np.arange(n), np.full(n_pad - n, n - 1)]).astype(np.int64)
    return Side(np.ascontiguousarray(np.asarray(ids)[np.asarray(rows)[idx], :T], np.int32),
                np.asarray(pos)[idx].astype(np.int32), n)


# ----------------------------------------------------------------------------------------------- algebra
def q(ids_a, ids_b, dtype, pos_a=None, pos_b=None):
    """Q[..., t, s] = [id_t = id'_s] (+ [pos_t = pos'_s] for a learned position table): the Gram matrix of the
    lookups, i.e. of one-hot inputs. ids_a (..., Ta) and ids_b (..., Tb) broadcast against each other (as do the
    positions)."""
    Q = (ids_a[..., :, None] == ids_b[..., None, :]).astype(dtype)
    if pos_a is not None:
        Q = Q + (pos_a[..., :, None] == pos_b[..., None, :]).astype(dtype)
    return Q


@jax.jit
def gram_factor(W):
    """L with LᵀL = WᵀW: W itself when V <= d, else the symmetric square root (eigh; tiny negative eigenvalues
    clipped). tr G = ⟨WᵀW, M⟩_F = Σ_k ⟨L_k J_h(c), L_k J_h(c')⟩."""
    if W.shape[0] <= W.shape[1]:
        return W
    lam, U = jnp.linalg.eigh(W.T @ W)
    return (U * jnp.sqrt(jnp.clip(lam, 0.0))) @ U.T


@partial(jax.jit, static_argnames=("seed", "num_probes"))
def rademacher(W, seed, num_probes):
    """The Rademacher probes v (np, V) of `seed` and U = v W (np, d), i.e. the rows Wᵀ v: every estimator uses these."""
    probes = jax.random.rademacher(jax.random.key(seed), (num_probes, W.shape[0]), dtype=W.dtype)
    return probes, probes @ W


def g_estimates(U, C, y):
    """Per probe, from y = J_h(a) J_h(b)ᵀ Wᵀ v (np, d): vᵀ G v = (Wᵀ v)·y and ‖G v‖² = yᵀ (WᵀW) y (C = WᵀW)."""
    return [jnp.sum(U * y, -1), jnp.einsum("pk,kl,pl->p", y, C, y)]


def tied_x_estimates(U, C, W, yx, probes_b, sv, ids_b):
    """Per probe, vᵀ X v and ‖X v‖² of the tied cross term, X v = W J_x(a) (v[ids_a] ⊗ h(b)) + Σ_s e_{ids_b[s]} sv_s,
    from yx = J_x(a)(v[ids_a] ⊗ h(b)) (np, d), sv_s = g_x(b)_s · h(a) (np, Tb) (g_x(b): the input-row part of
    J_h(b)ᵀ Wᵀ v), probes_b = v[ids_b] (np, Tb)."""
    trx = jnp.sum(U * yx, -1) + jnp.sum(probes_b * sv, -1)
    frx = (jnp.einsum("pk,kl,pl->p", yx, C, yx) + 2 * jnp.sum((yx @ W[ids_b].T) * sv, -1)
           + jnp.einsum("ps,st,pt->p", sv, q(ids_b, ids_b, sv.dtype), sv))
    return [trx, frx]


@partial(jax.jit, static_argnames=("na", "nb", "bias"))
def finish_rep(ha, hb, na, nb, bias):
    """s = h(c)·h(c') (+1 with a head bias) for the unpadded contexts."""
    return ha[:na] @ hb[:nb].T + (1.0 if bias else 0.0)


@partial(jax.jit, static_argnames=("na", "nb"))
def finish_probes(est, na, nb):
    """Mean over the probes (last axis) and its standard error, unpadded: (na, nb, k) each."""
    est = est[:na, :nb]
    return est.mean(-1), est.std(-1, ddof=1) / jnp.sqrt(est.shape[-1])


def cat(parts, axis=0):
    """Concatenate a list of arrays (the one array itself when there is one)."""
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def swap_pairs(x):
    """K(b, a) from K(a, b) for a block: transpose the context axes, and the matrix axes when present."""
    x = jnp.swapaxes(x, 0, 1)
    return jnp.swapaxes(x, 2, 3) if x.ndim == 4 else x


def assemble(blocks, sym, transpose=swap_pairs):
    """One array from a dict {(i, j): block}; the lower triangle is `transpose` of the upper when symmetric."""
    n_i = 1 + max(i for i, _ in blocks)
    n_j = 1 + max(j for _, j in blocks)
    if sym:
        n_i = n_j = max(n_i, n_j)
    rows = [cat([blocks[(i, j)] if (i, j) in blocks else transpose(blocks[(j, i)]) for j in range(n_j)], axis=1)
            for i in range(n_i)]
    return cat(rows)


# ----------------------------------------------------------------------------------------------- the scheduler
def schedule(blocks_a, blocks_b, n_chunks, sym, mode):
    """[(ua, ub)]: the pairs of units (block, chunk) to visit, a-major. A chunk is a set of cotangent rows
    (structured) or a parameter group (Jacobian); "trace" pairs share the chunk, "matrix" pairs every chunk with
    every chunk; symmetric kernels visit ub >= ua only (the rest is the transpose)."""
    pairs = []
    for ua in [(i, k) for i in range(blocks_a) for k in range(n_chunks)]:
        for j in range(blocks_b):
            for l in ([ua[1]] if mode == "trace" else range(n_chunks)):
                if not sym or (j, l) >= ua:
                    pairs.append((ua, (j, l)))
    return pairs


def walk(pairs, sym, cache_b, sweep_a, sweep_b, visit):
    """Run a schedule: sweep_a / sweep_b (unit) -> the unit's computed state, visit(ua, ub, SA, SB). One a state is
    held while its pairs are visited (the previous one is freed first); b states are kept when `cache_b` (a
    symmetric kernel's units are all b units), else recomputed. Returns the number of units computed (a dry run
    with cheap sweep functions counts the work of a plan)."""
    kept, count = {}, [0]

    def get(name, unit, fn):
        if (name, unit) in kept:
            return kept[(name, unit)]
        count[0] += 1
        S = fn(unit)
        if cache_b and name == "b":
            kept[(name, unit)] = S
        return S

    cur, SA = None, None
    for ua, ub in pairs:
        if ua != cur:
            SA = None  # free the previous a state before computing the next (one held, as the plans count)
            cur, SA = ua, get("b" if sym else "a", ua, sweep_a)
        visit(ua, ub, SA, SA if (sym and ub == ua) else get("b", ub, sweep_b))
    return count[0]


# ----------------------------------------------------------------------------------------------- meshes
def sharded(mesh, a):
    """An array with its leading (context) axis spread over all of the mesh's devices."""
    from jax.sharding import NamedSharding, PartitionSpec
    return jax.device_put(jnp.asarray(a), NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names))))


def auto_mesh(mesh):
    """The same devices and axes with Auto axis types: the compiler places the per-chunk work (a mesh from
    jax.make_mesh has Explicit axes, under which gathers with sharded indices need explicit out_sharding)."""
    from jax.sharding import AxisType, Mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def devices(mesh) -> int:
    """The number of devices of a mesh (1 without one)."""
    return 1 if mesh is None else int(mesh.devices.size)


def place_params(mesh, tree):
    """Parameters on a mesh (unchanged without one) by ntkdyn.placement's rule: a mesh with an "fsdp" axis of F > 1
    devices splits every leaf of two or more axes along its largest axis divisible by F (the others, and 1-D
    leaves, replicated); any other mesh replicates them. Contexts are spread over all devices (`sharded`), so the
    compiler gathers a split leaf where a computation needs it whole."""
    if mesh is None or tree is None:
        return tree
    from jax.sharding import NamedSharding

    from ..placement import param_spec
    return jax.device_put(tree, jax.tree.map(lambda x: NamedSharding(mesh, param_spec(mesh, np.shape(x))), tree))


# ----------------------------------------------------------------------------------------------- seconds (diagnostic)
FLOPS = 3e10  # effective float operations per second of the vmapped passes (2 CPU cores, fitted to measurements)
BANDWIDTH = 3e9  # bytes per second of weight gradients written and read back
# seconds of compilation per 2 layers (at least 2), per program kind (first call minus warm call)
COMPILE = {"jacobian": 1.0, "structured": 1.25, "jacobian_probes": 1.85, "structured_probes": 1.8}


def dense_sizes(params):
    """(P_D, Σm, Σn) of the backbone's Dense kernels: their parameters, summed output widths and input widths."""
    ks = [v.shape for p, v in traverse_util.flatten_dict(params["backbone"]).items() if p[-1] == "kernel"]
    return sum(int(np.prod(s)) for s in ks), sum(s[1] for s in ks), sum(s[0] for s in ks)


def seconds(kind, flops, nbytes, n_layers) -> float:
    """The rough seconds estimate of k.plan.predicted_seconds (diagnostic): flops / FLOPS + bytes / BANDWIDTH + the
    compilation of `kind`'s programs."""
    return round(flops / FLOPS + nbytes / BANDWIDTH + COMPILE[kind] * max(1.0, n_layers / 2), 3)
