"""Tests for ntkdyn.optim: one cached optimizer per setting, parameter groups, and the SFT optimizer equal to the
hand-written optax chain."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkdyn import optim, sft


def _params():
    rng = np.random.default_rng(0)
    return {"backbone": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                         "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
            "head": {"W": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}}


def test_make_optimizer_is_built_once_per_setting():
    a = optim.make_optimizer("adam", 1e-3, "head", max_grad_norm=1.0)
    assert a is optim.make_optimizer("adam", 1e-3, "head", max_grad_norm=1.0)
    assert a is not optim.make_optimizer("adam", 1e-3, "all", max_grad_norm=1.0)
    assert optim.trainable_keys("all") == ("backbone", "head")
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        optim.make_optimizer("lion")
    with pytest.raises(ValueError, match="unknown parameter group 'neck'"):
        optim.make_optimizer("adam", 1e-3, "neck")


def test_group_head_freezes_backbone():
    p = _params()
    tx = optim.make_optimizer("sgd", 0.1, "head")
    upd, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(upd["backbone"]))
    assert all(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(upd["head"]))


def test_sft_optimizer_equals_the_optax_chain():
    """sft's AdamW (warmup + cosine, clip 1, decay on matrices only) through make_optimizer, step by step equal to
    the chain written out with optax."""
    tx, schedule = sft._optimizer(20, 2e-3, 5, 0.01)
    mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    ref = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.01, mask=mask))
    p, q = _params(), _params()
    s, r = tx.init(p), ref.init(q)
    rng = np.random.default_rng(1)
    for _ in range(4):
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
        u, s = tx.update(g, s, p)
        v, r = ref.update(g, r, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)))
    assert sft._optimizer(20, 2e-3, 5, 0.01)[0] is tx  # cached: the jitted SFT step compiles once
