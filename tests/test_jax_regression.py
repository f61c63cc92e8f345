"""Regression guard for a CPU miscompile in jaxlib 0.10.2: `jax.vmap` of a VJP through RMSNorm/LayerNorm feeding a
matmul returns wrong rows once the vmapped batch reaches about 127 cotangents (0.10.0 and 0.10.1 are correct).
pyproject.toml pins jax/jaxlib below 0.10.2; these tests fail loudly if an upgrade brings the bug back.

The references here never vmap a VJP: they pull back one cotangent at a time in a Python loop, so they do not share
the failure mode they guard against."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkdyn as nd


def _rms(x, s):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5) * s


def _one_at_a_time(vjp, basis):
    """Row i of the Jacobian by its own VJP call (no vmap)."""
    one = jax.jit(lambda u: vjp(u)[0])
    return [one(basis[i]) for i in range(basis.shape[0])]


def test_vmap_of_vjp_through_rmsnorm_matches_single_vjps():
    """The issue's minimal reproduction: X (3, 11, 64), W (97, 64), s (64,); 128 cotangents of the last position."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    P = {"X": jax.random.normal(k1, (3, 11, 64)), "W": 0.2 * jax.random.normal(k2, (97, 64)),
         "s": 1.0 + 0.1 * jax.random.normal(k3, (64,))}
    f = lambda p: (_rms(p["X"], p["s"]) @ p["W"].T)[:, -1]  # noqa: E731
    out, vjp = jax.vjp(jax.jit(f), P)
    basis = jnp.eye(out.size, dtype=out.dtype)[:128].reshape((128,) + out.shape)
    batched = jax.vmap(vjp)(basis)[0]
    single = _one_at_a_time(vjp, basis)
    for i in (0, 63, 126, 127):
        for name in ("X", "W", "s"):
            np.testing.assert_allclose(np.asarray(batched[name][i]), np.asarray(single[i][name]),
                                       rtol=1e-4, atol=1e-5, err_msg=f"row {i}, {name} (jax {jax.__version__})")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_jacrev_of_logits_matches_one_context_at_a_time(family):
    """jax.jacrev of lm.logits over 3 contexts x V = 131 outputs (393 cotangents) against per-row VJPs."""
    kw = dict(family=family, vocab_size=131, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2 if family == "llama"
              else 4, d_ff=64, max_positions=32, tie_word_embeddings=family == "gpt2")
    lm = nd.LM.init(nd.ModelConfig(**kw), seed=1)
    ids = np.random.RandomState(0).randint(0, 131, (3, 7)).astype(np.int32)
    rows, pos = np.arange(3), np.array([6, 3, 5])
    f = lambda p: lm.logits(ids, params=p)[rows, pos]  # noqa: E731  (3, V)
    jac = jax.jacrev(f)(lm.params)
    out, vjp = jax.vjp(f, lm.params)
    basis = jnp.eye(out.size, dtype=out.dtype).reshape((out.size,) + out.shape)
    for i in (0, 126, 127, 130, 200, 392):
        c, v = divmod(i, out.shape[1])
        ref = vjp(basis[i])[0]
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[c, v], jac)), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                                       err_msg=f"cotangent {i} (context {c}, token {v}), jax {jax.__version__}")
