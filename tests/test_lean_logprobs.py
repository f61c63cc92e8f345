"""Chunked head log-probs (logprobs.head_stats, RLConfig.logit_chunk; issue #23): on tiny Hugging Face models of
every family, the chunked path's log-probs, entropy and max-probability, and the gradients of a loss built from
them, equal a reference computed from the full (B, N, V) logits with jax.nn.log_softmax (to 1e-5 in float32);
the chunked path really runs a rematerialised loop; a fixed-seed tiny RL run (updates, reference log-probs,
evaluation) is unchanged."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import assert_records_close, random_batch

import hf_models
import ntkdyn as nd
from ntkdyn.models.logprobs import head_stats
from ntkdyn.models.transformer import features, head_logits
from ntkdyn.rl import RLConfig, read_metrics, train
from ntkdyn.rl import objectives as O
from ntkdyn.rl.config import ConfigError
from ntkdyn.rl.step import LossSpec

FAMILIES = hf_models.EVERY_FAMILY
T = 0.7  # a rollout temperature != 1: "logp" and "logp_model" differ


def _reference(lm, params, b):
    """The statistics from the full logits, written out here: z (B, N, V) of the completion contexts."""
    B, Tp = b["prompt_ids"].shape
    ids = np.concatenate([b["prompt_ids"], b["completion"]], 1)[:, :-1]
    valid = np.concatenate([b["prompt_mask"].astype(bool), np.ones((B, ids.shape[1] - Tp), bool)], 1)
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    h = features(lm.graphdef, lm.config, params, ids, positions=pos, key_valid=valid)[0][:, Tp - 1:]
    z = head_logits(lm.config, params["head"], h)
    lsm, lsm_t = jax.nn.log_softmax(z, -1), jax.nn.log_softmax(z / T, -1)
    y = b["completion"][..., None]
    p = jnp.exp(lsm)
    return {"logp": jnp.take_along_axis(lsm_t, y, -1)[..., 0], "logp_model": jnp.take_along_axis(lsm, y, -1)[..., 0],
            "entropy": -jnp.sum(p * lsm, -1), "max_prob": jnp.max(p, -1)}


def _loss(st, b):
    m, a = b["mask"], b["adv"][:, None]
    return (jnp.sum(st["logp"] * m * a) + 0.3 * jnp.sum(st["logp_model"] * m) + 0.2 * jnp.sum(st["entropy"] * m)
            + 0.5 * jnp.sum(st["max_prob"] * m))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return hf_models.loaded(str(tmp_path_factory.mktemp("lean")), FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_stats_and_gradients_equal_full_logits(models, family):
    lm = models[family]
    b = random_batch(np.random.default_rng(0))  # B·N = 15 tokens: 4 chunks of 4, the last one padded

    def ours(params, chunk):
        st = O.completion_logp(lm.graphdef, lm.config, params, b["prompt_ids"], b["prompt_mask"], b["completion"],
                               temperature=T, chunk=chunk)
        return _loss(st, b), st

    ref_fn = lambda params: (_loss(s := _reference(lm, params, b), b), s)  # noqa: E731
    both = jax.jit(lambda p: (jax.value_and_grad(ref_fn, has_aux=True)(p),
                              jax.value_and_grad(ours, has_aux=True)(p, 4)))  # one compilation per family
    ((v_ref, st_ref), g_ref), ((v, st), g) = both(lm.params)
    # relative to the largest gradient entry: some leaves (a key bias) have a zero gradient, pure rounding noise
    scale = max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(g_ref))
    np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
    for k in st_ref:
        np.testing.assert_allclose(np.asarray(st[k]), np.asarray(st_ref[k]), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{family} {k}")
    for (path, a), c in zip(jax.tree_util.tree_leaves_with_path(g_ref), jax.tree.leaves(g)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=f"{family} grad {jax.tree_util.keystr(path)}")


def test_chunked_path_is_a_rematerialised_loop():
    """chunk < tokens: a loop over chunks whose body is rematerialised (the (n, V) logits are never stored); chunk
    0 or >= tokens: the plain full-logits pass."""
    cfg = nd.ModelConfig(family="llama", vocab_size=97, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32,
                         max_positions=32)
    head = {"W": jnp.ones((97, 16))}
    h, y = jnp.ones((3, 5, 16)), jnp.zeros((3, 5), jnp.int32)

    def jaxpr(chunk):
        return str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(head_stats(cfg, {"W": w}, h, y, chunk=chunk)["logp"])))(
            head["W"]))

    assert "scan" in jaxpr(4) and ("remat" in jaxpr(4) or "checkpoint" in jaxpr(4))
    assert "scan" not in jaxpr(0) and "scan" not in jaxpr(15)
    with pytest.raises(ValueError, match="chunk must be an integer >= 0"):
        head_stats(cfg, head, h, y, chunk=-1)


def test_fixed_seed_rl_run_unchanged_by_chunking(tmp_path):
    """A tiny RL run of the default model (beta > 0: the reference log-probs too) with the head in chunks of 5
    tokens has the metrics of the run with the full logits, to float rounding."""
    kw = dict(task="sum", group_size=2, prompts_per_step=2, max_new_tokens=6, eval_prompts=2, eval_samples=2,
              eval_every=0, probe_every=0, checkpoint_every=0, lr=3e-3, beta=0.01, steps=2, seed=3)
    recs = []
    for chunk in (0, 5):
        out = str(tmp_path / f"c{chunk}")
        train(RLConfig(out=out, logit_chunk=chunk, **kw), progress=False)
        recs.append(read_metrics(out))
    a, b = recs
    assert len(a) >= 2
    assert_records_close(a, b)


def test_logit_chunk_config_and_option():
    with pytest.raises(ConfigError, match="logit_chunk"):
        RLConfig(out="x", logit_chunk=-1)
    assert LossSpec.of(RLConfig(out="x", logit_chunk=64)).logit_chunk == 64
