"""J_h(c): the Jacobian of the features h(c) ∈ R^d of one context, by d reverse-mode passes (spec §1).

The parameters are split for the fast path (`split_params`): ψ without the lookup tables, the input table E, GPT-2's
positional table P, the head W (and b). h is differentiated w.r.t. ψ and the looked-up input vectors
x_t = E[ids_t] (+ P[t] for GPT-2), never w.r.t. a V×d table: J_x(c) ∈ R^{d×T×d} (`jac_chunk`).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ..models.transformer import features

__all__ = ["Split", "split_params", "h_at", "jac_chunk"]


@dataclasses.dataclass
class Split:
    """params split for the fast path: ψ without the lookup tables, the input table E, GPT-2's positional
    table P (constants here: their part of J_h goes through J_x), the head W (and b)."""

    psi: dict
    E: jax.Array
    P: Any
    W: jax.Array
    has_bias: bool
    dtype: Any


def split_params(cfg, params) -> Split:
    """The Split of a params pytree {"backbone", "head"} of a model of config `cfg`."""
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
            return h_at(graphdef, cfg, treedef.unflatten(ls), x, ptab, p)

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
