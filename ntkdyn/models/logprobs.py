"""Teacher-forced log-probabilities: the only place where logits become log π(token | context).

    logp = token_logp(z, targets)                      # log softmax(z / T)[target], any leading shape
    logp = next_token_logp(graphdef, cfg, params, ids) # (B, T-1): log π(ids[:, t] | ids[:, <t]) for right-padded ids
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import ModelConfig
from .transformer import features, head_logits

__all__ = ["log_softmax", "gather", "token_logp", "next_token_logp"]


def log_softmax(z, temperature: float = 1.0):
    """log π_T(· | c) = log_softmax(z / T) over the last axis, in float32 (float64 stays float64)."""
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    return jax.nn.log_softmax(z if temperature == 1.0 else z / temperature, axis=-1)


def gather(logp, targets):
    """logp[..., targets]: (..., V) log-probs and (...) int targets -> (...)."""
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def token_logp(z, targets, temperature: float = 1.0):
    """log π_T(target | c) from logits z (..., V) and targets (...)."""
    return gather(log_softmax(z, temperature), targets)


def next_token_logp(graphdef, cfg: ModelConfig, params, ids):
    """(B, T-1) log π(ids[b, t] | ids[b, <t]) for t = 1..T-1 in one forward pass over ids[:, :-1] (rows start at
    column 0; right padding only affects the positions after it). Pure in params."""
    h = features(graphdef, cfg, params, ids[:, :-1])[0]
    return token_logp(head_logits(cfg, params["head"], h), ids[:, 1:])
