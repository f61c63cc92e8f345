"""The reference kernel every fast path is tested against: Θ = J Jᵀ with J = jax.jacrev of the logits at the
contexts w.r.t. the whole params pytree (small models only: N×V×P Jacobians)."""
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

    J = jax.jacrev(z)(theta)
    N, V = rows.shape[0], cfg.vocab_size
    J = jnp.concatenate([j.reshape(N, V, -1) for j in jax.tree.leaves(J)], axis=-1)  # (N, V, P)
    return jnp.einsum("avp,bwp->abvw", J, J)
