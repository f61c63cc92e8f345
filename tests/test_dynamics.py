"""ntkdyn.dynamics: the one-step prediction (spec §2) against the real step, its R/G(/X) split against hand-computed
kernels, the cheap `split_update` route, Adam, the KL term, and the kernel route through ntkdyn.ntk.

Everything runs in float64 (jax.enable_x64) so that the prediction error measured is the O(η²) term, not roundoff.
"""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ntkdyn as nd
from ntkdyn import dynamics

import hf_models

# every family (gpt2, gpt_neox, llama), tied heads in two of them (gpt2, llama_tied) and, through llama_gqa, a head
# bias; neox_sequential / qwen2 differ only inside the blocks (already covered by test_models) and are left out to
# keep the compile time of this module down (add them here to run every test on them too)
MODELS = ["gpt2", "neox_parallel", "llama_gqa", "llama_tied"]
B, T = 4, 12  # training batch
LR = 1e-2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_dyn")
    return {name: hf_models.build(name, str(root))[0] for name in MODELS}


@pytest.fixture(scope="module")
def refs(built):
    """Per model, computed once in float64: params (llama_gqa gets a head bias, so z = W h + b is covered), the
    batch, and features/logits of the batch and the probe rows."""
    cache = {}

    def get(name):
        if name not in cache:
            with jax.enable_x64(True):
                lm = nd.load(built[name])
                params = _f64(lm.params)
                if name == "llama_gqa":
                    params["head"]["b"] = jnp.asarray(np.random.RandomState(3).normal(0, 0.5, lm.config.vocab_size))
                lm = lm.replace(params)
                ids, mask, adv, pids, ppos = _batch()
                h_ids, h_probe = (np.asarray(lm.features(x)) for x in (ids, pids))
                z_ids, z_probe = (np.asarray(lm.head(jnp.asarray(h))) for h in (h_ids, h_probe))
                cache[name] = dict(lm=lm, path=built[name], params=params, batch=(ids, mask, adv, pids, ppos),
                                   h_ids=h_ids, h_probe=h_probe,
                                   z_ids=z_ids, h_o=h_probe[ppos[:, 0], ppos[:, 1]],
                                   z_o=z_probe[ppos[:, 0], ppos[:, 1]])
        return cache[name]

    return get


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _batch(seed=0):
    """A synthetic RL batch: prompts of 6 tokens, completions of 3..6 tokens (right-padded), group advantages, and
    probe contexts in other rows, incl. several positions per row via (row, position) pairs."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, hf_models.V, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.int32)
    mask[:, 6:] = 1
    mask[1, 9:] = 0  # a shorter completion
    ids[1, 9:] = 0
    adv = np.array([1.0, -0.5, 0.7, -1.2])
    probe_ids = rng.randint(3, hf_models.V, (B, T)).astype(np.int32)  # same shape as ids: shared compiles
    probe_pos = np.array([[0, 9], [1, 4], [2, 7], [0, 3], [3, 11], [1, 0]], np.int32)
    return ids, mask, adv, probe_ids, probe_pos


def _assert_trees_close(a, b, **kw):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def _check_gradient(J, params, grad, eps=1e-5, seed=0):
    """⟨grad, δ⟩ = (J(θ + εδ) − J(θ − εδ)) / 2ε for a random direction δ (float64; error O(ε²)). numpy arithmetic on
    the leaves, so no eager jax op is compiled per leaf shape."""
    rng = np.random.RandomState(seed)
    params = jax.tree.map(np.asarray, params)
    delta = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
    fd = (J(jax.tree.map(lambda p, d: p + eps * d, params, delta))
          - J(jax.tree.map(lambda p, d: p - eps * d, params, delta))) / (2 * eps)
    dot = sum(float(np.vdot(np.asarray(g), d)) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(delta)))
    assert np.isclose(dot, fd, rtol=1e-6, atol=1e-12), (dot, fd)


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _hand_objective(lm, ids, mask, adv, ref_params=None, beta=0.0):
    """J(params) written directly with lm.logits (independent of dynamics.py)."""
    m = np.asarray(mask, np.float64)[:, 1:]
    w = m / np.maximum(m.sum(1, keepdims=True), 1) / ids.shape[0]

    def logp_of(params):  # lm.features (compiled once per model) and the head, not a new jit
        z = np.asarray(lm.head(lm.features(ids, params), params))[:, :-1]
        return np.asarray(jax.nn.log_softmax(z, -1))

    def J(params):
        logp = logp_of(params)
        tok = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
        val = np.sum(w * adv[:, None] * tok)
        if ref_params is not None:
            ref = logp_of(ref_params)
            val = val - beta * np.sum(w * np.sum(np.exp(logp) * (logp - ref), -1))
        return float(val)

    return J


def _hand_g(z, h, ids, mask, adv):
    """Logit gradients g_u = w_u A_b (e_y − π(c_u)) at the trained contexts (N, V), with their features (N, d),
    from the batch logits z (B, T, V) and features h (B, T, d)."""
    m = np.asarray(mask)[:, 1:]
    cnt = np.maximum(m.sum(1), 1)
    gs, hs = [], []
    for b, t in zip(*np.nonzero(m)):
        p = np.exp(z[b, t] - z[b, t].max())
        p /= p.sum()
        e = np.zeros_like(p)
        e[ids[b, t + 1]] = 1
        gs.append(adv[b] / (ids.shape[0] * cnt[b]) * (e - p))
        hs.append(h[b, t])
    return np.array(gs), np.array(hs)


# ----------------------------------------------------------------------------- SGD: prediction, split, cheap route


@pytest.mark.parametrize("name", MODELS)
def test_sgd_prediction_split_and_cheap_route(refs, name, x64):
    ref = refs(name)
    lm, params = ref["lm"], ref["params"]
    ids, mask, adv, pids, ppos = ref["batch"]
    tied, bias = lm.config.tie_word_embeddings, "b" in params["head"]
    r = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=LR)  # params default to lm.params
    P, V = len(ppos), lm.config.vocab_size
    assert r.dz_predicted.shape == (P, V) and r.dz_actual.shape == (P, V)
    assert r.dz_predicted.dtype == jnp.float64

    # the step is θ + η ∇J: check ⟨∇J, δ⟩ against central differences of an independent objective
    J = _hand_objective(lm, ids, mask, adv)
    assert np.isclose(r.objective, J(params), rtol=1e-10)
    _check_gradient(J, params, jax.tree.map(lambda u: np.asarray(u) / LR, r.update))
    np.testing.assert_allclose(r.z, ref["z_o"], rtol=1e-10, atol=1e-12)

    # first order: small relative error that shrinks ~linearly with η
    assert r.rel_error < 0.05, r.rel_error
    r4 = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=LR / 4)
    assert 2.5 < r.rel_error / r4.rel_error < 6.0, (r.rel_error, r4.rel_error)

    # exact split: R + G (+ X) = predicted
    assert (r.dz_cross is not None) == tied
    total = r.dz_representation + r.dz_gradient + (r.dz_cross if tied else 0.0)
    np.testing.assert_allclose(total, r.dz_predicted, rtol=1e-10, atol=1e-13)

    # Δz_R = η Σ_u s(c_o, c_u) g_u, s = h_o·h_u (+1 with a bias), with s and g computed by hand
    g, hu = _hand_g(ref["z_ids"], ref["h_ids"], ids, mask, adv)
    s = ref["h_o"] @ hu.T + (1.0 if bias else 0.0)
    np.testing.assert_allclose(r.s, s, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.g, g, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(r.dz_representation, LR * s @ g, rtol=1e-9, atol=1e-13)

    # derived quantities
    logp0 = jax.nn.log_softmax(r.z, -1)
    pi = np.exp(logp0)
    np.testing.assert_allclose(r.dlogp_predicted, r.dz_predicted - (pi * r.dz_predicted).sum(-1, keepdims=True),
                               atol=1e-13)
    np.testing.assert_allclose(r.dlogp_actual, jax.nn.log_softmax(r.z + r.dz_actual, -1) - logp0, atol=1e-12)
    assert np.linalg.norm(r.dlogp_predicted - r.dlogp_actual) < 0.05 * np.linalg.norm(r.dlogp_actual)
    assert np.linalg.norm(r.dH_predicted - r.dH_actual) < 0.1 * np.linalg.norm(r.dH_actual)

    # the cheap route on the same real update; its dz_actual is an independent forward at θ⁺
    su = dynamics.split_update(lm, params, r.params_after, pids, ppos)
    assert set(su) == {"dz_representation", "dz_gradient", "dz_total_first_order", "dz_actual"}
    np.testing.assert_allclose(su["dz_actual"], r.dz_actual, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(su["dz_total_first_order"], r.dz_predicted, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(su["dz_representation"] + su["dz_gradient"], su["dz_total_first_order"], atol=1e-13)
    if not tied:
        np.testing.assert_allclose(su["dz_representation"], r.dz_representation, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(su["dz_gradient"], r.dz_gradient, rtol=1e-9, atol=1e-12)
    else:
        # parameter-group convention: the whole ΔW is read as a head in R. ΔW = η (v_head + v_in) with
        # v_head = Σ_u g_u h_uᵀ, so R_cheap = R_kernel + (η v_in) h_o
        v_in = np.asarray(r.update["head"]["W"]) / LR - g.T @ hu
        np.testing.assert_allclose(su["dz_representation"], r.dz_representation + LR * ref["h_o"] @ v_in.T,
                                   rtol=1e-9, atol=1e-13)


def test_split_update_float32_and_validation(refs):
    """The trainer calls split_update on float32 params after any update (here a random one), positions (P,)."""
    ref = refs("neox_parallel")
    lm = nd.load(ref["path"])  # float32 params
    ids, mask, adv, pids, _ = ref["batch"]
    rng = np.random.RandomState(4)
    delta = jax.tree.map(lambda x: (1e-3 * rng.normal(size=x.shape)).astype(np.float32), lm.params)
    after = jax.tree.map(lambda p, d: np.asarray(p) + d, lm.params, delta)
    pos = np.array([9, 4, 7, 11], np.int32)
    su = dynamics.split_update(lm, lm.params, after, pids, pos)
    assert su["dz_gradient"].shape == (4, lm.config.vocab_size) and su["dz_gradient"].dtype == jnp.float32
    ho = ref["h_probe"][np.arange(4), pos]  # float64 reference features
    np.testing.assert_allclose(su["dz_representation"], ho @ delta["head"]["W"].T, rtol=1e-3, atol=1e-5)
    rel = np.linalg.norm(su["dz_total_first_order"] - su["dz_actual"]) / np.linalg.norm(su["dz_actual"])
    assert rel < 0.05
    with pytest.raises(ValueError, match="probe_pos"):
        dynamics.split_update(lm, lm.params, after, pids, np.array([1, 2], np.int32))
    with pytest.raises(ValueError, match="positions must lie"):
        dynamics.split_update(lm, lm.params, after, pids, np.array([[0, 99]], np.int32))
    with pytest.raises(ValueError, match="completion_mask"):
        bad = mask.copy()
        bad[:, 0] = 1
        dynamics.one_step(lm, ids, bad, adv, pids, pos, lr=1e-3)
    with pytest.raises(ValueError, match="advantages"):
        dynamics.one_step(lm, ids, mask, adv[:2], pids, pos, lr=1e-3)
    with pytest.raises(ValueError, match="optimizer"):
        dynamics.one_step(lm, ids, mask, adv, pids, pos, lr=1e-3, optimizer="rmsprop")
    with pytest.raises(ValueError, match="ref_params"):
        dynamics.one_step(lm, ids, mask, adv, pids, pos, lr=1e-3, beta=0.1)


# ----------------------------------------------------------------------------- Adam


@pytest.mark.parametrize("name", MODELS)
def test_adam_prediction_vs_real_step(refs, name, x64):
    ref = refs(name)
    lm, params = ref["lm"], ref["params"]
    ids, mask, adv, pids, ppos = ref["batch"]
    lr = 1e-4
    r = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=lr, optimizer="adam")
    # the real Adam step by hand with optax, on −∇J (the gradient that the SGD route checks against differences)
    def neg_grad(p):
        return jax.tree.map(lambda u: -u / LR, dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=LR,
                                                                 params=p).update)

    tx = optax.adam(lr)
    upd, state = tx.update(neg_grad(params), tx.init(params), params)
    _assert_trees_close(r.update, upd, rtol=1e-7, atol=1e-11)
    assert r.rel_error < 0.05, r.rel_error
    total = r.dz_representation + r.dz_gradient + (0.0 if r.dz_cross is None else r.dz_cross)
    np.testing.assert_allclose(total, r.dz_predicted, rtol=1e-9, atol=1e-12)
    su = dynamics.split_update(lm, params, r.params_after, pids, ppos)  # independent forward at θ⁺
    np.testing.assert_allclose(su["dz_actual"], r.dz_actual, rtol=1e-9, atol=1e-12)
    # a second step continues from the returned optimizer state (momentum)
    after = optax.apply_updates(params, upd)
    r2 = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=lr, optimizer="adam", opt_state=r.opt_state,
                           params=r.params_after)
    upd2, _ = tx.update(neg_grad(after), state, after)
    _assert_trees_close(r2.update, upd2, rtol=1e-7, atol=1e-11)
    assert r2.rel_error < 0.05


# ----------------------------------------------------------------------------- KL to a reference


@pytest.mark.parametrize("name", ["gpt2", "neox_parallel"])
def test_kl_term(refs, name, x64):
    ref = refs(name)
    lm, params = ref["lm"], ref["params"]
    ids, mask, adv, pids, ppos = ref["batch"]
    r0 = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=LR)
    # with π_ref = π the KL gradient vanishes: β > 0 changes nothing
    rs = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=LR, ref_params=params, beta=0.7)
    assert abs(rs.kl) < 1e-12
    np.testing.assert_allclose(rs.dz_predicted, r0.dz_predicted, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(rs.dz_actual, r0.dz_actual, rtol=1e-9, atol=1e-14)
    # another reference: g = g_pg − β w π ⊙ (log π − log π_ref − KL·1) (spec §2)
    rng = np.random.RandomState(5)
    ref_params = jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.normal(size=x.shape)), params)
    beta = 0.7
    rk = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=LR, ref_params=ref_params, beta=beta)
    g_pg, _ = _hand_g(ref["z_ids"], ref["h_ids"], ids, mask, adv)
    lp = np.asarray(jax.nn.log_softmax(ref["z_ids"], -1))
    lq = np.asarray(jax.nn.log_softmax(lm.head(lm.features(ids, ref_params), ref_params), -1))
    m = np.asarray(mask)[:, 1:]
    cnt = np.maximum(m.sum(1), 1)
    g_kl = []
    for b, t in zip(*np.nonzero(m)):
        p = np.exp(lp[b, t])
        kl = np.sum(p * (lp[b, t] - lq[b, t]))
        g_kl.append(-beta / (B * cnt[b]) * p * (lp[b, t] - lq[b, t] - kl))
    np.testing.assert_allclose(rk.g, g_pg + np.array(g_kl), rtol=1e-8, atol=1e-14)
    J = _hand_objective(lm, ids, mask, adv, ref_params=ref_params, beta=beta)
    assert np.isclose(rk.objective, J(params), rtol=1e-10)
    assert rk.kl > 0 and rk.rel_error < 0.05


# ----------------------------------------------------------------------------- kernel route


@pytest.mark.skipif(importlib.util.find_spec("ntkdyn.ntk") is None, reason="ntkdyn.ntk not available")
@pytest.mark.parametrize("name", ["gpt2"])  # tied: R, G and the cross term X (one model: decompose compiles slowly)
def test_kernel_route_equals_jvp_route(refs, name, x64):
    """η Σ_u (s ⊗ I + G (+ X))(c_o, c_u) g_u from ntk.decompose(output="full") equals the JVP-route split."""
    from ntkdyn import ntk

    ref = refs(name)
    lm = ref["lm"]
    ids, mask, adv, pids, ppos = ref["batch"]
    r = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=LR)
    k = ntk.decompose(lm, pids, ppos, ids, r.contexts, output="full")
    g = np.asarray(r.g)
    np.testing.assert_allclose(k.representation, r.s, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(LR * np.einsum("ou,uk->ok", k.representation, g), r.dz_representation,
                               rtol=1e-8, atol=1e-13)
    np.testing.assert_allclose(LR * np.einsum("oukl,ul->ok", k.gradient, g), r.dz_gradient, rtol=1e-7, atol=1e-12)
    if lm.config.tie_word_embeddings:
        np.testing.assert_allclose(LR * np.einsum("oukl,ul->ok", k.cross, g), r.dz_cross, rtol=1e-7, atol=1e-12)
    else:
        assert k.cross is None and r.dz_cross is None
    np.testing.assert_allclose(LR * np.einsum("oukl,ul->ok", k.total(), g), r.dz_predicted, rtol=1e-7, atol=1e-12)
