"""The reference kernel every fast path is tested against: Θ = J Jᵀ with J the Jacobian of the logits at the
contexts w.r.t. the whole params pytree (small models only: N×V×P Jacobians).

J is pulled back in blocks of at most 64 cotangents (a sequential `lax.map` over vmapped VJPs), never in one vmap
over all N·V outputs: jaxlib 0.10.2 miscompiles a vmapped VJP through a norm once the batch reaches about 127 on
CPU, and the reference must not share that failure mode (README: known issues)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ..models.transformer import apply_head, features
from .contexts import contexts

__all__ = ["full_kernel_bruteforce"]


def full_kernel_bruteforce(lm, ids, pos_pairs, params=None, *, untied: bool = False):
    """Reference Θ (N, N, V, V): jax.jacrev of the logits at the contexts w.r.t. the whole params pytree,
    contracted over all parameters. With untied=True a tied table is cloned into a separate output head
    (its input use and its head use differentiated as two parameters). Small models only (N×V×P Jacobians)."""
    params = lm.params if params is None else params
    ids, rows, pos = contexts(lm.config, ids, pos_pairs, "ids", "pos_pairs")
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

    out, vjp = jax.vjp(z, theta)
    N, V = rows.shape[0], cfg.vocab_size
    n, blk = N * V, _BLOCK
    basis = jnp.eye(n, dtype=out.dtype)
    basis = jnp.pad(basis, ((0, -n % blk), (0, 0))).reshape(-1, blk, N, V)  # (n_blocks, blk, N, V)
    rows_J = jax.lax.map(lambda u: jax.vmap(vjp)(u)[0], basis)  # leaves (n_blocks, blk, *leaf)
    J = jnp.concatenate([j.reshape(-1, j[0, 0].size)[:n].reshape(N, V, -1) for j in jax.tree.leaves(rows_J)],
                        axis=-1)  # (N, V, P)
    return jnp.einsum("avp,bwp->abvw", J, J)


_BLOCK = 64  # cotangents per vmapped VJP (below the ~127 where jaxlib 0.10.2 miscompiles)
