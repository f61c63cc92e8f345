"""Rematerialised layers (transformer.Backbone(remat=True), RLConfig.remat): the same values and gradients as the
plain pass, on every family (tied and untied), and one RL update with remat equals the update without it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_cases import tiny
from rl_helpers import random_batch
from ntkdyn.models.transformer import features
from ntkdyn.rl import objectives as O
from ntkdyn.rl.step import LossSpec, opt_init, rl_update
from ntkdyn.optim import make_optimizer

CASES = [("gpt2", True), ("gpt_neox", False), ("llama", True), ("llama", False)]



@pytest.mark.parametrize("family,tied", CASES)
def test_remat_same_values_and_gradients(family, tied):
    lm = tiny(family, tied)
    b = random_batch(np.random.default_rng(0))

    def loss(params, remat):
        st = O.completion_logp(lm.graphdef, lm.config, params, b["prompt_ids"], b["prompt_mask"], b["completion"],
                               remat=remat)
        return jnp.sum(st["logp"] * b["mask"] * b["adv"][:, None]) + jnp.sum(st["entropy"] * b["mask"])

    n_layers = lm.config.n_layers
    assert str(jax.make_jaxpr(lambda p: loss(p, True))(lm.params)).count("remat") == n_layers  # really remat'd
    assert "remat" not in str(jax.make_jaxpr(lambda p: loss(p, False))(lm.params))
    v0, g0 = jax.value_and_grad(loss)(lm.params, False)
    v1, g1 = jax.value_and_grad(loss)(lm.params, True)
    assert np.isclose(float(v0), float(v1), rtol=1e-6)
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert np.allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6 * float(np.abs(a).max() + 1e-12))


def test_remat_rl_update_equals_plain_update():
    lm = tiny("llama", True)
    b = random_batch(np.random.default_rng(1))
    tx = make_optimizer("sgd", 1e-2)  # Adam would turn float rounding of near-zero gradients into ±lr
    outs = []
    for remat in (False, True):
        ls = LossSpec(1.0, 0.2, "seq_mean_token_mean", 0.0, "k3", remat)
        new, _, m, _ = rl_update(lm.params, opt_init(lm.params, tx=tx), b, jnp.zeros_like(b["mask"]), True, None,
                                 graphdef=lm.graphdef, cfg=lm.config, tx=tx, ls=ls, group="all")
        outs.append((new, float(m["loss"])))
    assert np.isclose(outs[0][1], outs[1][1], rtol=1e-6)
    for a, c in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
        assert np.allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)


def test_remat_refuses_caches_and_taps():
    lm = tiny("gpt2", True)
    ids = np.array([[5, 6, 7]], np.int32)
    from ntkdyn.models.transformer import Taps
    with pytest.raises(ValueError, match="remat=True"):
        features(lm.graphdef, lm.config, lm.params, ids, taps=Taps(), remat=True)
