"""Optimizers: the one place an optax optimizer is built (SFT, the LP stage of LP-FT, RL), and the parameter groups.

    tx = make_optimizer("adam", 3e-4, "head", max_grad_norm=1.0)   # updates params["head"] only

The params pytree has two top-level keys, "backbone" (ψ) and "head" (W, b); a group names the keys an optimizer
trains. `make_optimizer` is cached: the same arguments give the very same optimizer object, so jitted steps that
take it as a static argument compile once per setting.
"""
from __future__ import annotations

import functools

import jax
import optax

__all__ = ["GROUPS", "OPTIMIZERS", "trainable_keys", "group_labels", "make_optimizer", "matrices_only"]

GROUPS = ("all", "head", "backbone")
OPTIMIZERS = ("adam", "adamw", "sgd")


def trainable_keys(group: str) -> tuple[str, ...]:
    """Top-level parameter keys a group trains: "all" -> (backbone, head); "head" -> (head,) (the classifier W,
    b); "backbone" -> (backbone,) (ψ)."""
    if group == "all":
        return ("backbone", "head")
    if group in ("head", "backbone"):
        return (group,)
    raise ValueError(f"unknown parameter group {group!r}; expected one of {GROUPS}")


def group_labels(params, group: str):
    """optax.multi_transform labels: "train" on the group's leaves, "frozen" elsewhere."""
    keys = trainable_keys(group)
    return {k: jax.tree.map(lambda _: "train" if k in keys else "frozen", v) for k, v in params.items()}


def matrices_only(params):
    """Weight-decay mask: decay the matrices, not the biases and norm scales."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


@functools.lru_cache(maxsize=64)
def make_optimizer(name: str = "adam", lr=1e-4, group: str | None = "all", *, max_grad_norm: float | None = 1.0,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   decay_mask=None):
    """The optax optimizer `name` ("adam", "adamw", "sgd") with learning rate `lr` (a number or an optax
    schedule), global-norm clipping of the gradients at `max_grad_norm` first (None or 0: no clipping), and, for
    adamw, `weight_decay` on the leaves `decay_mask` selects (None: all).

    group: None updates every leaf; "all" / "head" / "backbone" wraps it in optax.multi_transform with
    set_to_zero() on the other leaves (their optimizer state is empty, the clipping norm covers the group only)."""
    if name == "adam":
        base = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        base = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    elif name == "sgd":
        base = optax.sgd(lr)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if max_grad_norm:
        base = optax.chain(optax.clip_by_global_norm(max_grad_norm), base)
    if group is None:
        return base
    trainable_keys(group)  # validates
    return optax.multi_transform({"train": base, "frozen": optax.set_to_zero()},
                                 lambda params: group_labels(params, group))
