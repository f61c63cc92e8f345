"""Tests for ntkdyn.metrics against hand-computed or independent references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from ntkdyn import metrics as M


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- confidence


def test_token_entropy_vs_scipy():
    logits = _rng().normal(size=(3, 4, 11)) * 3
    ours = np.asarray(M.token_entropy(jnp.asarray(logits, jnp.float32)))
    ref = scipy.stats.entropy(scipy.special.softmax(logits, axis=-1), axis=-1)
    assert ours.shape == (3, 4)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_token_entropy_edge_cases():
    # uniform -> log V ; one-hot-ish with -inf entries -> finite, no NaN
    np.testing.assert_allclose(M.token_entropy(jnp.zeros(8)), np.log(8), rtol=1e-6)
    logits = jnp.array([0.0, 0.0, -jnp.inf, -jnp.inf])
    np.testing.assert_allclose(M.token_entropy(logits), np.log(2), rtol=1e-6)
    assert np.isfinite(M.token_entropy(jnp.array([1e4, 0.0, -1e4])))


def test_mean_max_prob_hand():
    # softmax([log 1, log 3]) = [.25, .75];  softmax([0,0,0,0]) max = .25
    logits = jnp.array([[[0.0, np.log(3.0), -jnp.inf, -jnp.inf], [0.0, 0.0, 0.0, 0.0]]])
    mask = jnp.array([[1, 1]])
    np.testing.assert_allclose(M.mean_max_prob(logits, mask), (0.75 + 0.25) / 2, rtol=1e-6)
    np.testing.assert_allclose(M.mean_max_prob(logits, jnp.array([[1, 0]])), 0.75, rtol=1e-6)


def test_masked_means():
    logits = jnp.asarray(_rng(1).normal(size=(2, 3, 5)), jnp.float32)
    mask = jnp.array([[1, 0, 1], [0, 0, 1]])
    H = np.asarray(M.token_entropy(logits))
    np.testing.assert_allclose(M.mean_entropy(logits, mask), H[np.asarray(mask) == 1].mean(), rtol=1e-6)
    logp = jnp.array([[-1.0, jnp.nan, -3.0], [jnp.inf, 7.0, -2.0]])  # masked-out junk ignored
    np.testing.assert_allclose(M.mean_logp(logp, mask), -2.0, rtol=1e-6)


def test_masked_means_empty_mask_is_zero():
    logits = jnp.asarray(_rng(2).normal(size=(2, 3, 5)), jnp.float32)
    empty = jnp.zeros((2, 3))
    for val in (
        M.mean_entropy(logits, empty),
        M.mean_max_prob(logits, empty),
        M.mean_logp(jnp.full((2, 3), jnp.nan), empty),
        M.masked_mean(jnp.ones((2, 3)), empty),
    ):
        assert float(val) == 0.0


# ----------------------------------------------------------------------------- diversity


def test_distinct_n_chars_hand():
    # "abab": ab, ba, ab ; "abc": ab, bc  -> distinct {ab, ba, bc} = 3 of 5
    assert M.distinct_n(["abab", "abc"], 2) == pytest.approx(3 / 5)
    # unigrams of "aab": a, a, b -> 2/3
    assert M.distinct_n(["aab"], 1) == pytest.approx(2 / 3)


def test_distinct_n_tokens_hand():
    texts = ["the cat sat", "the cat ran"]
    # bigrams: (the,cat),(cat,sat),(the,cat),(cat,ran) -> 3 distinct of 4
    assert M.distinct_n(texts, 2, tokens=True) == pytest.approx(3 / 4)
    assert M.distinct_n(texts, 1, tokens=True) == pytest.approx(4 / 6)


def test_distinct_n_empty():
    assert M.distinct_n([], 2) == 0.0
    assert M.distinct_n(["a", ""], 2) == 0.0
    assert M.distinct_n(["one two"], 3, tokens=True) == 0.0


def test_unique_answers_and_correct():
    texts = ["42", "41", "42", "7", "7", "x"]
    rewards = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5]
    assert M.unique_answers(texts) == 4
    assert M.unique_answers([]) == 0
    assert M.unique_correct(texts, rewards) == 2  # "42", "7"
    assert M.unique_correct(texts, rewards, threshold=0.5) == 3  # + "x"
    assert M.unique_correct(texts, [0.0] * 6) == 0
    assert isinstance(M.unique_correct(texts, rewards), int)
    with pytest.raises(ValueError):
        M.unique_correct(texts, rewards[:-1])


def _pass_at_k_comb(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_vs_comb():
    for n in range(1, 21):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                assert M.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_comb(n, c, k), abs=1e-12)
    # large n where the product form matters
    for n, c, k in [(200, 3, 10), (1000, 1, 100), (512, 256, 64)]:
        assert M.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_comb(n, c, k), rel=1e-10)


def test_pass_at_k_edge_cases():
    assert M.pass_at_k(10, 0, 5) == 0.0
    assert M.pass_at_k(10, 10, 1) == 1.0
    assert M.pass_at_k(10, 8, 3) == 1.0  # n - c < k
    assert M.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert M.pass_at_k(5, 2, 5) == 1.0
    with pytest.raises(ValueError):
        M.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        M.pass_at_k(np.array([8, 4]), np.array([1, 1]), 5)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 5, 1)


def test_pass_at_k_vectorised():
    n = np.array([10, 10, 20, 5])
    c = np.array([0, 3, 7, 5])
    out = M.pass_at_k(n, c, 4)
    assert isinstance(out, np.ndarray) and out.shape == (4,)
    np.testing.assert_allclose(out, [_pass_at_k_comb(a, b, 4) for a, b in zip(n, c)], atol=1e-12)
    out2 = M.pass_at_k(10, np.arange(11)[:, None], np.array([1, 2, 5]))
    assert out2.shape == (11, 3)
    assert out2[4, 2] == pytest.approx(_pass_at_k_comb(10, 4, 5))
    assert isinstance(M.pass_at_k(10, 3, 2), float)


def test_pass_at_k_curve():
    correct = np.array(
        [
            [1, 0, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 0, 0],
        ],
        dtype=bool,
    )
    ks = [1, 2, 4]
    curve = M.pass_at_k_curve(correct, ks)
    ref = [np.mean([_pass_at_k_comb(4, c, k) for c in (1, 2, 0)]) for k in ks]
    np.testing.assert_allclose(curve, ref, atol=1e-12)
    np.testing.assert_allclose(curve, [(0.25 + 0.5 + 0) / 3, (0.5 + 5 / 6 + 0) / 3, 2 / 3])
    with pytest.raises(ValueError):
        M.pass_at_k_curve(correct, [5])


# ----------------------------------------------------------------------------- features


def test_cosine_orthogonal_and_identical():
    np.testing.assert_allclose(M.pairwise_cosine(jnp.eye(4)), 0.0, atol=1e-7)
    h = jnp.tile(jnp.array([[1.0, 2.0, -3.0]]), (5, 1)) * jnp.arange(1.0, 6.0)[:, None]
    np.testing.assert_allclose(M.pairwise_cosine(h), 1.0, rtol=1e-6)
    np.testing.assert_allclose(M.pairwise_cosine(jnp.array([[1.0, 0.0], [-2.0, 0.0]])), -1.0, rtol=1e-6)
    C = M.cosine_matrix(jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(C, [[1, s, 0], [s, 1, 0], [0, 0, 0]], atol=1e-6)
    # single row / masked down to one row -> 0
    assert float(M.pairwise_cosine(jnp.ones((1, 3)))) == 0.0
    assert float(M.pairwise_cosine(jnp.eye(3) + 1, mask=jnp.array([0, 1, 0]))) == 0.0


def test_pairwise_cosine_vs_numpy():
    h = _rng(3).normal(size=(6, 4))
    hn = h / np.linalg.norm(h, axis=1, keepdims=True)
    ref = np.mean([hn[i] @ hn[j] for i, j in itertools.combinations(range(6), 2)])
    np.testing.assert_allclose(M.pairwise_cosine(jnp.asarray(h, jnp.float32)), ref, rtol=1e-5, atol=1e-6)
    mask = np.array([1, 0, 1, 1, 0, 1])
    idx = np.flatnonzero(mask)
    ref_m = np.mean([hn[i] @ hn[j] for i, j in itertools.combinations(idx, 2)])
    np.testing.assert_allclose(M.pairwise_cosine(jnp.asarray(h, jnp.float32), mask), ref_m, rtol=1e-5, atol=1e-6)


def _hand_tensor():
    e1, e2, e3 = np.eye(3)
    # seq 0: positions e1, e2, (pad: 5*e3) ; seq 1: positions e1, e1 + e2, (pad: -e1)
    h = np.stack([np.stack([e1, e2, 5 * e3]), np.stack([e1, e1 + e2, -e1])]).astype(np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    return h, mask


def test_feature_similarity_hand():
    h, mask = _hand_tensor()
    out = M.feature_similarity(jnp.asarray(h), jnp.asarray(mask))
    s = 1 / np.sqrt(2)
    # mean features: f0 = (.5, .5, 0), f1 = (1, .5, 0) -> cos = .75 / (s * sqrt(1.25))
    np.testing.assert_allclose(out["cos_across_prompts"], 0.75 / (s * np.sqrt(1.25)), rtol=1e-6)
    # within seq 0: cos(e1, e2) = 0 ; within seq 1: cos(e1, e1+e2) = s -> mean s/2
    np.testing.assert_allclose(out["cos_across_positions"], s / 2, rtol=1e-6)
    # contexts a=e1, b=e2, c=e1, d=e1+e2: pairs ab 0, ac 1, ad 1, bc 0, bd 1, cd 1
    vals = np.array([0, 1, 1, 0, 1, 1.0])
    np.testing.assert_allclose(out["s_mean"], vals.mean(), rtol=1e-6)
    np.testing.assert_allclose(out["s_std"], vals.std(), rtol=1e-6)
    np.testing.assert_allclose(out["s_cv"], vals.std() / vals.mean(), rtol=1e-6)
    # "last" prompt feature: f0 = e2, f1 = e1 + e2 -> cos = s
    out_last = M.feature_similarity(jnp.asarray(h), jnp.asarray(mask), prompt_feature="last")
    np.testing.assert_allclose(out_last["cos_across_prompts"], s, rtol=1e-6)


def test_feature_similarity_vs_bruteforce():
    rng = _rng(4)
    B, T, d = 3, 5, 4
    h = rng.normal(size=(B, T, d)) + 0.5
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    out = M.feature_similarity(jnp.asarray(h, jnp.float32), jnp.asarray(mask))
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    f = [h[b][mask[b] == 1].mean(0) for b in range(B)]
    ref_p = np.mean([cos(f[i], f[j]) for i, j in itertools.combinations(range(B), 2)])
    per_seq = []
    for b in range(B):
        idx = np.flatnonzero(mask[b])
        if len(idx) >= 2:
            per_seq.append(np.mean([cos(h[b, i], h[b, j]) for i, j in itertools.combinations(idx, 2)]))
    ctx = [h[b, t] for b in range(B) for t in range(T) if mask[b, t]]
    svals = np.array([ctx[i] @ ctx[j] for i, j in itertools.combinations(range(len(ctx)), 2)])
    np.testing.assert_allclose(out["cos_across_prompts"], ref_p, rtol=1e-5)
    np.testing.assert_allclose(out["cos_across_positions"], np.mean(per_seq), rtol=1e-5)
    np.testing.assert_allclose(out["s_mean"], svals.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["s_std"], svals.std(), rtol=1e-4)
    np.testing.assert_allclose(out["s_cv"], svals.std() / abs(svals.mean()), rtol=1e-4)


def test_feature_similarity_empty_mask():
    out = M.feature_similarity(jnp.ones((2, 3, 4)), jnp.zeros((2, 3)))
    for key, val in out.items():
        assert float(val) == 0.0, key


def test_effective_rank():
    np.testing.assert_allclose(M.effective_rank(jnp.eye(5)), 5.0, rtol=1e-5)
    np.testing.assert_allclose(M.effective_rank(jnp.eye(4, 7)), 4.0, rtol=1e-5)
    u = _rng(5).normal(size=(6, 1))
    v = _rng(6).normal(size=(1, 3))
    np.testing.assert_allclose(M.effective_rank(jnp.asarray(u @ v, jnp.float32)), 1.0, rtol=1e-4)
    # diag(3, 1): p = (.75, .25)
    p = np.array([0.75, 0.25])
    np.testing.assert_allclose(M.effective_rank(jnp.diag(jnp.array([3.0, 1.0]))), np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    assert float(M.effective_rank(jnp.zeros((3, 2)))) == 0.0


# ----------------------------------------------------------------------------- kernel / training


def test_kernel_norms():
    rng = _rng(7)
    Na, Nb, V = 3, 2, 5
    s = rng.normal(size=(Na, Nb))
    G = rng.normal(size=(Na, V, Nb, V))
    R_full = np.einsum("ab,uv->aubv", s, np.eye(V))  # R = s ⊗ I_V
    out = M.kernel_norms(jnp.asarray(s), jnp.asarray(G), vocab_size=V)
    np.testing.assert_allclose(out["R"], np.linalg.norm(R_full), rtol=1e-5)
    np.testing.assert_allclose(out["G"], np.sqrt((G**2).sum()), rtol=1e-5)
    out_full = M.kernel_norms(jnp.asarray(R_full), jnp.asarray(G))
    np.testing.assert_allclose(out_full["R"], np.linalg.norm(R_full), rtol=1e-5)


def test_dz_share():
    # hand example: Δz_G = (3, 0), Δz_R = (0, 4) -> Δz = (3, 4), ‖Δz‖ = 5
    out = M.dz_share(jnp.array([3.0, 0.0]), jnp.array([0.0, 4.0]))
    np.testing.assert_allclose(out["gradient"], 0.6, rtol=1e-6)
    np.testing.assert_allclose(out["representation"], 0.8, rtol=1e-6)
    # orthogonal parts: squares sum to 1 ; parallel same-sign parts: shares sum to 1
    rng = _rng(8)
    a = rng.normal(size=(4, 6))
    b = rng.normal(size=(4, 6))
    b -= (a * b).sum() / (a * a).sum() * a
    o = M.dz_share(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(o["gradient"] ** 2 + o["representation"] ** 2, 1.0, rtol=1e-5)
    p = M.dz_share(jnp.asarray(a, jnp.float32), jnp.asarray(2.5 * a, jnp.float32))
    np.testing.assert_allclose(p["gradient"] + p["representation"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(p["gradient"], 1 / 3.5, rtol=1e-5)
    z = M.dz_share(jnp.ones(3), -jnp.ones(3))
    assert float(z["gradient"]) == 0.0 and float(z["representation"]) == 0.0


def test_kernel_alignment_hand():
    # K1 = [[1, 0], [0, 1]], K2 = [[1, 1], [1, 1]]: <K1,K2> = 2, |K1| = sqrt 2, |K2| = 2 -> 2 / (2 sqrt 2)
    K1, K2 = jnp.eye(2), jnp.ones((2, 2))
    np.testing.assert_allclose(M.kernel_alignment(K1, K2), 1 / math.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(M.kernel_alignment(K2, K2), 1.0, rtol=1e-6)
    np.testing.assert_allclose(M.kernel_alignment(3.0 * K2, K2), 1.0, rtol=1e-6)  # scale-free
    np.testing.assert_allclose(M.kernel_alignment(-K2, K2), -1.0, rtol=1e-6)
    # [[2, 1], [1, 3]] vs [[1, 0], [0, 2]]: <.,.> = 2 + 6 = 8, norms sqrt 15 and sqrt 5
    A, B = jnp.array([[2.0, 1.0], [1.0, 3.0]]), jnp.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(M.kernel_alignment(A, B), 8 / math.sqrt(75), rtol=1e-6)
    assert float(M.kernel_alignment(jnp.zeros((2, 2)), B)) == 0.0  # no NaN
    with pytest.raises(ValueError, match="same shape"):
        M.kernel_alignment(jnp.eye(2), jnp.eye(3))


def test_kernel_change_hand():
    # K0 = [[3, 0], [0, 4]]: ‖K0‖_F = 5
    K0 = jnp.array([[3.0, 0.0], [0.0, 4.0]])
    K1 = jnp.array([[3.0, 2.0], [2.0, 5.0]])  # K1 − K0 = [[0, 2], [2, 1]]: norm 3
    np.testing.assert_allclose(M.kernel_change(K1, K0), 3 / 5, rtol=1e-6)
    assert float(M.kernel_change(K0, K0)) == 0.0
    np.testing.assert_allclose(M.kernel_change(2 * K0, K0), 1.0, rtol=1e-6)
    assert float(M.kernel_change(K0, jnp.zeros((2, 2)))) == 0.0  # K0 = 0: 0, never NaN
    with pytest.raises(ValueError, match="same shape"):
        M.kernel_change(jnp.eye(2), jnp.eye(3))


def test_head_norm():
    W = jnp.array([[1.0, 2.0], [2.0, 4.0]])
    np.testing.assert_allclose(M.head_norm(W), 5.0, rtol=1e-6)


def test_feature_change():
    h0 = jnp.array([[[3.0, 4.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]])
    ht = h0 + jnp.array([[[0.0, 1.0], [2.0, 0.0]], [[3.0, 4.0], [1.0, 0.0]]])
    # ‖Δh‖ = 1, 2, 5, 1 ; ‖h0‖ = 5, 1, 2, 0
    np.testing.assert_allclose(M.feature_change(ht, h0), (1 + 2 + 5 + 1) / 4, rtol=1e-6)
    mask = jnp.array([[1, 0], [1, 1]])
    np.testing.assert_allclose(M.feature_change(ht, h0, mask), (1 + 5 + 1) / 3, rtol=1e-6)
    # relative: contexts with h0 = 0 excluded
    np.testing.assert_allclose(M.feature_change(ht, h0, relative=True), (0.2 + 2 + 2.5) / 3, rtol=1e-6)
    np.testing.assert_allclose(M.feature_change(ht, h0, mask, relative=True), (0.2 + 2.5) / 2, rtol=1e-6)
    assert float(M.feature_change(ht, h0, jnp.zeros((2, 2)))) == 0.0


def test_first_order_entropy_change_vs_finite_difference():
    with jax.enable_x64(True):
        rng = _rng(9)
        logits = jnp.asarray(rng.normal(size=(3, 4, 7)) * 2, jnp.float64)
        dz = jnp.asarray(rng.normal(size=(3, 4, 7)), jnp.float64)
        eps = 1e-6
        fd = (M.token_entropy(logits + eps * dz) - M.token_entropy(logits - eps * dz)) / (2 * eps)
        ours = M.first_order_entropy_change(logits, dz)
        assert ours.dtype == jnp.float64 and ours.shape == (3, 4)
        np.testing.assert_allclose(ours, fd, rtol=1e-7, atol=1e-9)
        # autodiff cross-check
        g = jax.grad(lambda z: M.token_entropy(z).sum())(logits)
        np.testing.assert_allclose(ours, (g * dz).sum(-1), rtol=1e-10, atol=1e-12)
        # shifting all logits by a constant does not change H
        np.testing.assert_allclose(M.first_order_entropy_change(logits, jnp.ones_like(dz)), 0.0, atol=1e-12)


# ----------------------------------------------------------------------------- jit


def test_numeric_functions_jit():
    rng = _rng(10)
    logits = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
    mask = jnp.array([[1, 0, 1], [1, 1, 0]])
    h_BxTxd = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    h_Nxd = h_BxTxd.reshape(6, 4)
    calls = [
        (M.token_entropy, (logits,), {}),
        (M.mean_entropy, (logits, mask), {}),
        (M.mean_max_prob, (logits, mask), {}),
        (M.mean_logp, (logits[..., 0], mask), {}),
        (M.masked_mean, (logits[..., 0], mask), {}),
        (M.cosine_matrix, (h_Nxd,), {}),
        (M.pairwise_cosine, (h_Nxd,), {}),
        (M.effective_rank, (h_Nxd,), {}),
        (M.head_norm, (h_Nxd,), {}),
        (M.dz_share, (logits, 2 * logits), {}),
        (M.first_order_entropy_change, (logits, logits), {}),
        (M.feature_change, (h_BxTxd, 0.5 * h_BxTxd, mask), {}),
        (M.feature_change, (h_BxTxd, 0.5 * h_BxTxd, mask), {"relative": True}),
        (M.feature_similarity, (h_BxTxd, mask), {}),
        (M.feature_similarity, (h_BxTxd, mask), {"prompt_feature": "last"}),
        (M.kernel_norms, (h_Nxd, logits), {"vocab_size": 5}),
    ]
    for fn, args, kwargs in calls:
        eager = fn(*args, **kwargs)
        jitted = jax.jit(fn, static_argnames=tuple(kwargs))(*args, **kwargs)
        for e, j in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
            np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=1e-5, atol=1e-6, err_msg=fn.__name__)
            assert np.all(np.isfinite(np.asarray(j))), fn.__name__
