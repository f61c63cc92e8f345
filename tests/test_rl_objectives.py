"""ntkdyn.rl.objectives: advantages, aggregation, the clipped policy-gradient loss and KL estimators against hand
values; teacher-forced log-probs against the sampler's."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import base_dir  # noqa: F401 (fixture)

import ntkdyn as nd
from ntkdyn.models.padding import pad_left
from ntkdyn.models.tokenizer import encode_prompt
from ntkdyn.rl import objectives as O


def test_advantages_hand_values():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    a, _ = O.advantages(r, "grpo")
    std = np.sqrt(4 * 0.25 / 3)  # Bessel-corrected std of [1,0,0,1]
    np.testing.assert_allclose(a[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(a[3], (r[3] - 0.25) / (np.std(r[3], ddof=1) + 1e-4), rtol=1e-6)
    a, _ = O.advantages(r, "dr_grpo")
    np.testing.assert_allclose(a[0], [0.5, -0.5, -0.5, 0.5], rtol=1e-6)
    a, _ = O.advantages(r, "rloo")
    np.testing.assert_allclose(a[0], [1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(a[3], [-1 / 3, -1 / 3, -1 / 3, 1.0], rtol=1e-6)
    for kind in ("grpo", "dr_grpo", "rloo"):  # zero-variance groups: exactly 0 (0.1 x 4 does not average to 0.1)
        a, _ = O.advantages(r, kind)
        assert np.all(np.isfinite(a))
        assert np.array_equal(np.asarray(a[1:3]), np.zeros((2, 4), np.float32)), kind
    a, b = O.advantages(r, "reinforce", baseline=0.2, decay=0.9)
    np.testing.assert_allclose(a, r - 0.2, rtol=1e-6)
    np.testing.assert_allclose(b, 0.9 * 0.2 + 0.1 * r.mean(), rtol=1e-6)
    a, b = O.advantages(r, "reinforce", baseline=None, decay=0.9)  # unset baseline: the batch mean
    np.testing.assert_allclose(a, r - r.mean(), rtol=1e-6, atol=1e-7)
    a, _ = jax.jit(lambda r: O.advantages(r, "grpo"))(np.ones((2, 8)))  # jit-able, all-constant batch
    assert np.array_equal(np.asarray(a), np.zeros((2, 8), np.float32))


def test_aggregation_hand_values():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = jnp.array([[1, 1, 1], [1, 0, 0]])
    assert float(O.aggregate(x, m, "token_mean")) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert float(O.aggregate(x, m, "seq_mean_token_mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(O.aggregate(x, jnp.zeros_like(m), "token_mean")) == 0.0


def test_on_policy_loss_is_minus_J_and_its_gradient():
    logp = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]]))
    m = jnp.array([[1, 1, 0], [1, 1, 1]])
    adv = jnp.array([2.0, -1.0])
    loss, aux = O.pg_loss(logp, None, adv, m, loss_agg="seq_mean_token_mean")
    # ratio = 1: loss = -(1/B) Σ_b A_b (1/|y_b|) Σ_l 1
    assert float(loss) == pytest.approx(-(2.0 + -1.0) / 2)
    g = jax.grad(lambda lp: O.pg_loss(lp, None, adv, m)[0])(logp)
    want = -np.array([[2 / 2, 2 / 2, 0], [-1 / 3, -1 / 3, -1 / 3]]) / 2  # -w_bl A_b, w = 1/(B |y_b|)
    np.testing.assert_allclose(g, want, rtol=1e-6)
    assert float(aux["clip_ratio"]) == 0.0


def test_ppo_clipping_hand_example():
    old = jnp.zeros((1, 4))
    logp = jnp.log(jnp.array([[1.5, 1.5, 0.5, 1.1]]))
    m = jnp.ones((1, 4))
    # per token with eps = 0.2: A=+1, ρ=1.5 -> −min(1.5, 1.2) = −1.2 (clipped)
    loss, aux = O.pg_loss(logp[:, :1], old[:, :1], jnp.array([1.0]), m[:, :1], clip_eps=0.2)
    assert float(loss) == pytest.approx(-1.2) and float(aux["clip_ratio"]) == 1.0
    # A=−1, ρ=1.5 -> −min(−1.5, −1.2) = 1.5 (not clipped: the objective is pessimistic)
    loss, aux = O.pg_loss(logp[:, 1:2], old[:, 1:2], jnp.array([-1.0]), m[:, :1], clip_eps=0.2)
    assert float(loss) == pytest.approx(1.5) and float(aux["clip_ratio"]) == 0.0
    # A=−1, ρ=0.5 -> −min(−0.5, −0.8) = 0.8 (clipped)
    loss, aux = O.pg_loss(logp[:, 2:3], old[:, 2:3], jnp.array([-1.0]), m[:, :1], clip_eps=0.2)
    assert float(loss) == pytest.approx(0.8) and float(aux["clip_ratio"]) == 1.0
    # the clipped tokens get no gradient, the others −A ρ
    g = jax.grad(lambda lp: O.pg_loss(lp, old, jnp.array([1.0]), m, clip_eps=0.2, loss_agg="token_mean")[0])(logp)
    np.testing.assert_allclose(g, [[0.0, 0.0, -0.5 / 4, -1.1 / 4]], rtol=1e-5)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_zero_when_policy_equals_reference(estimator):
    rng = np.random.default_rng(0)
    logp = jnp.asarray(np.log(rng.uniform(0.05, 1.0, (3, 5))), jnp.float32)
    m = jnp.asarray(rng.integers(0, 2, (3, 5)))
    adv = jnp.array([1.0, -0.5, 0.2])
    assert np.array_equal(np.asarray(O.kl_penalty(logp, logp, estimator)), np.zeros((3, 5), np.float32))
    f = lambda lp, beta: O.pg_loss(lp, None, adv, m, logp_ref=logp, beta=beta, kl_estimator=estimator)
    (l0, a0), (l1, a1) = f(logp, 0.0), f(logp, 0.5)
    assert float(a1["kl"]) == 0.0 and float(l0) == float(l1)
    if estimator == "k3":  # k3's gradient vanishes at π = π_ref (k1's per-sample gradient does not, only its mean)
        g0 = jax.grad(lambda lp: f(lp, 0.0)[0])(logp)
        g1 = jax.grad(lambda lp: f(lp, 0.5)[0])(logp)
        assert np.array_equal(np.asarray(g0), np.asarray(g1))
    # away from the reference: k1 = Δ, k3 = e^{-Δ} + Δ - 1 >= 0
    d = O.kl_penalty(logp + 0.3, logp, estimator)
    want = 0.3 if estimator == "k1" else np.exp(-0.3) + 0.3 - 1
    np.testing.assert_allclose(d, np.full((3, 5), want), rtol=1e-5)


def test_completion_logp_matches_sampler(base_dir):
    lm = nd.load(base_dir)
    tok = lm.tokenizer
    prompts = [encode_prompt(tok, p) for p in ["sum 47:", "sum 20:", "sum 93:"]]
    g = lm.generate(prompts, 8, seed=3)
    ids, mask = pad_left(prompts)
    f = jax.jit(lambda p, i, m, c: O.completion_logp(lm.graphdef, lm.config, p, i, m, c))
    st = f(lm.params, jnp.asarray(ids), jnp.asarray(mask), g.tokens)
    m = np.asarray(g.mask) == 1
    np.testing.assert_allclose(np.asarray(st["logp"])[m], np.asarray(g.logp_model)[m], atol=1e-5)
