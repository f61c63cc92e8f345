"""The cost model: how many contexts to vmap per chunk, how many chunks to hold per block, and which parameter
leaves to differentiate together, so that the Jacobian blocks held at once stay within a memory budget; and the
helpers that spread a chunk's contexts over a Mesh's devices.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["DEFAULT_MEMORY_BUDGET", "Sizing", "sizing", "make_plan", "exact_plan", "probe_chunks", "pow2", "bucket",
           "sharded", "auto_mesh", "replicate"]

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of Jacobian blocks held at once (J_h chunks of contexts)


def pow2(n):
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def bucket(n, T):
    """Rows are truncated to the longest analysed prefix (exact by causality), rounded up to limit recompiles."""
    return min(T, max(8, pow2(n)))


class Sizing(NamedTuple):
    """What the cost model needs to know about a kernel request."""

    Ta: int  # tokens kept per a row (bucketed)
    Tb: int  # tokens kept per b row
    itemsize: int  # bytes per float of the parameters
    leaf_sizes: list  # sizes of the ψ leaves
    width: int  # widest activation per token (d_ff, 3d, heads·T): the backward's cotangent memory
    budget: int  # bytes of Jacobian blocks held at once
    batch_size: int | None  # contexts per chunk given by the user (None: from the budget)
    n_dev: int  # devices a chunk is spread over


def sizing(cfg, split, a, b, memory_budget, batch_size, mesh) -> Sizing:
    """The Sizing of a kernel between the contexts a and b ((ids, rows, positions) each) of a model `cfg` whose
    parameters are split as `split` (jacobians.Split)."""
    Ta, Tb = bucket(a[2].max() + 1, a[0].shape[1]), bucket(b[2].max() + 1, b[0].shape[1])
    return Sizing(Ta=Ta, Tb=Tb, itemsize=jnp.dtype(split.dtype).itemsize,
                  leaf_sizes=[int(x.size) for x in jax.tree.leaves(split.psi)],
                  width=max(cfg.d_ff, 3 * cfg.d_model, cfg.n_heads * max(Ta, Tb)),
                  budget=memory_budget or DEFAULT_MEMORY_BUDGET, batch_size=batch_size,
                  n_dev=1 if mesh is None else mesh.devices.size)


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


def exact_plan(sz: Sizing, d, na, nb, sym):
    """make_plan for the exact kernel between na and nb contexts (the b side is the a side when `sym`), with the
    chunk no larger than the contexts need. Returns (compute, plan)."""
    n_ctx = max(na, nb)
    compute, plan = make_plan(n_ctx if sym else na + nb, d, max(sz.Ta, sz.Tb), sz.leaf_sizes, sz.itemsize, sz.budget,
                              sz.batch_size, sz.width, sz.n_dev)
    compute = min(compute, pow2(n_ctx) if sz.n_dev == 1 else -(-pow2(n_ctx) // sz.n_dev) * sz.n_dev)
    return compute, plan


def probe_chunks(sz: Sizing, d, na, nb, num_probes):
    """Chunk sizes (ca, cb) of the a and b contexts of the Hutchinson estimator: a b chunk holds its contexts'
    probe VJPs (num_probes · (P + T d) floats each); an a chunk's JVPs run over all probes of a b chunk."""
    T = max(sz.Ta, sz.Tb)
    per_b = num_probes * (sum(sz.leaf_sizes) + T * d) * sz.itemsize  # one b context's probe VJPs
    cb = sz.batch_size or max(1, min(pow2(nb), int(sz.budget // (2 * per_b))))
    ca = sz.batch_size or max(1, min(pow2(na), int(sz.budget // (num_probes * cb * d * T * 4 * sz.width
                                                                   * sz.itemsize + 1))))
    ca = -(-ca // sz.n_dev) * sz.n_dev
    return ca, cb


# ----------------------------------------------------------------------------------------------- sharding
def sharded(mesh, a):
    """An array with its leading (context) axis spread over all of the mesh's devices."""
    from jax.sharding import NamedSharding, PartitionSpec
    return jax.device_put(jnp.asarray(a), NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names))))


def auto_mesh(mesh):
    """The same devices and axes with Auto axis types: the compiler places the per-chunk work (a mesh from
    jax.make_mesh has Explicit axes, under which gathers with sharded indices need explicit out_sharding)."""
    from jax.sharding import AxisType, Mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def replicate(mesh, tree):
    """A pytree copied onto every device of the mesh (unchanged without a mesh)."""
    if mesh is None or tree is None:
        return tree
    from jax.sharding import NamedSharding, PartitionSpec
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
