"""The chunked sweep over contexts: padded sides (`Side`), Jacobian blocks of chunks of contexts on the model's
split parameters (`Engine`), the loop over (a-block, b-block) pairs of every parameter group (`loop`), and the
assembly of the kernel from its blocks (`assemble`)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .jacobians import jac_chunk, split_params
from .plan import auto_mesh, replicate, sharded

__all__ = ["Side", "Engine", "loop", "assemble", "cat"]


def cat(parts, axis=0):
    """Concatenate a list of arrays (the one array itself when there is one)."""
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


class Side:
    """One side (a or b) of the kernel: the row of every context (truncated to Tc tokens) and its position,
    padded (by repeating the last context) to n_pad contexts."""

    def __init__(self, ids, rows, pos, Tc, n_pad):
        self.n = len(rows)
        idx = np.concatenate([np.arange(self.n), np.full(n_pad - self.n, self.n - 1)]).astype(np.int64)
        self.ctx_ids = np.ascontiguousarray(ids[rows[idx]][:, :Tc])
        self.pos = pos[idx]
        self.n_pad = n_pad


class Engine:
    """The split parameters of one model (replicated over the mesh, if any) and the Jacobian blocks of chunks of
    contexts on them. U: the cotangents (rows of U J_h are computed; the identity by default)."""

    def __init__(self, graphdef, cfg, params, mesh):
        self.cfg, self.graphdef = cfg, graphdef
        self.mesh = mesh = None if mesh is None else auto_mesh(mesh)
        self.sp = split_params(cfg, params)
        self.psi = replicate(mesh, self.sp.psi)
        self.E = replicate(mesh, self.sp.E)
        self.P = replicate(mesh, self.sp.P)
        self.pos_eye = self.sp.P is not None
        self.U = jnp.eye(self.cfg.d_model, dtype=self.sp.dtype)  # cotangents: rows of U J_h are computed

    def put(self, a):
        """Context-axis arrays: spread over the mesh's devices (or left to the default device)."""
        return jnp.asarray(a) if self.mesh is None else sharded(self.mesh, a)

    def jac(self, side, lo, hi, group, with_x, compute):
        """U J_h of the (padded) contexts lo..hi-1 of a side, chunk by chunk: (Jp, Jx, h, ids)."""
        outs = []
        for s in range(lo, hi, compute):
            rows, pos = self.put(side.ctx_ids[s:s + compute]), self.put(side.pos[s:s + compute])
            outs.append(jac_chunk(self.graphdef, self.cfg, group, with_x, self.psi, self.E, self.P, rows, pos,
                                  self.U))
        Jp, Jx, h = (cat([o[i] for o in outs]) if outs[0][i] is not None else None for i in range(3))
        return Jp, Jx, h, self.put(side.ctx_ids[lo:hi])


def loop(eng, A, B, sym, compute, plan, visit, post=None):
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
    hA = cat([hA[i] for i in sorted(hA)])
    return hA, (hA if sym else cat([hB[j] for j in sorted(hB)]))


def assemble(blocks, sym, transpose):
    """One array from a dict {(i, j): block}; the lower triangle is `transpose` of the upper when symmetric."""
    n_i = 1 + max(i for i, _ in blocks)
    n_j = 1 + max(j for _, j in blocks)
    if sym:
        n_i = n_j = max(n_i, n_j)
    rows = [cat([blocks[(i, j)] if (i, j) in blocks else transpose(blocks[(j, i)]) for j in range(n_j)], axis=1)
            for i in range(n_i)]
    return cat(rows)
