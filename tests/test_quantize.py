"""int8 weights for sampling (models/quantize.py; issue #23): the per-column weight quantization and the two-level
activation quantization against their error bounds in float64; on tiny Hugging Face models of every family the
int8 model's next-token distributions against float32's (KL and argmax), lm.generate(weights="int8") and RL
rollouts with RLConfig.sample_weights="int8"."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import SMALL, assert_records_close, base_dir, easy_reward  # noqa: F401 (fixture)

import hf_models
from ntkdyn.models.quantize import int8_matmul, int8_weights, quantize_columns
from ntkdyn.models.transformer import features, head_logits

FAMILIES = hf_models.EVERY_FAMILY


def test_quantize_columns_within_half_a_step():
    w = np.random.default_rng(0).normal(0, 0.1, (40, 24)).astype(np.float32)
    w[:, 3] = 0.0  # a zero column keeps scale 1 and q 0
    w[7, 5] = 3.0  # an outlier sets its column's step
    q, s = quantize_columns(w)
    q, s = np.asarray(q), np.asarray(s)
    assert q.dtype == np.int8 and s.shape == (24,) and np.abs(q).max() <= 127
    assert s[3] == 1.0 and not q[:, 3].any()
    err = np.abs(q.astype(np.float64) * s - w)
    assert np.all(err <= s / 2 * (1 + 1e-6))
    assert s[5] == pytest.approx(3.0 / 127)


def test_int8_matmul_against_float64():
    """y = x @ (q · s) up to the activations' two-level rounding: x ≈ t1 x1 + t2 x2 with |x − t1 x1 − t2 x2| ≤ t2/2,
    t2 ≤ t1 / 254 (the residual of a rounding to t1 is at most t1/2); so |y − x @ (q s)| ≤ t2/2 · Σ_k |q_kj| s_j."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (5, 40)).astype(np.float32)
    x[:, 11] *= 50.0  # an outlier channel, as real models have
    x[2] = 0.0  # a zero row
    q, s = quantize_columns(rng.normal(0, 0.1, (40, 24)).astype(np.float32))
    y = np.asarray(int8_matmul(jnp.asarray(x), q, s), np.float64)
    wq = np.asarray(q, np.float64) * np.asarray(s, np.float64)
    ref = x.astype(np.float64) @ wq
    t2 = np.abs(x).max(1, keepdims=True) / 127 / 254
    bound = t2 / 2 * (np.abs(np.asarray(q, np.float64)).sum(0) * np.asarray(s)) + 1e-5 * np.abs(ref)
    assert np.all(np.abs(y - ref) <= bound + 1e-6)
    assert not y[2].any()
    # one level would be ~127x coarser: the second level is what keeps outlier channels from swamping the rest
    assert np.abs(y - ref).max() < 0.05 * (np.abs(x).max(1, keepdims=True) / 127 / 2 * np.abs(wq).sum(0)).max()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return hf_models.loaded(str(tmp_path_factory.mktemp("quantize")), FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_model_distributions_close_to_float32(models, family):
    lm = models[family]
    cfg = lm.config
    ids = jnp.asarray(np.random.default_rng(2).integers(3, cfg.vocab_size, (4, 12)), jnp.int32)
    qgraphdef, qparams = int8_weights(cfg, lm.params)
    leaves = jax.tree.leaves(qparams["backbone"])
    assert any(x.dtype == jnp.int8 for x in leaves) and qparams["head"]["Wq"].dtype == jnp.int8
    lp32 = jax.nn.log_softmax(lm.logits(ids), -1)
    lp8 = jax.nn.log_softmax(head_logits(cfg, qparams["head"], features(qgraphdef, cfg, qparams, ids)[0]), -1)
    kl = np.asarray(jnp.sum(jnp.exp(lp32) * (lp32 - lp8), -1))
    assert kl.mean() < 2e-3 and kl.max() < 2e-2, (kl.mean(), kl.max())
    assert np.mean(np.asarray(lp32.argmax(-1) == lp8.argmax(-1))) >= 0.9


@pytest.mark.parametrize("family", ["llama_gqa", "gemma3_softcap"])
def test_generate_with_int8_weights(models, family):
    lm = models[family]
    prompts = [[1, 5, 9, 4], [1, 7, 3, 3], [1, 5, 9, 4], [1, 7, 3, 3]]
    g = lm.generate(prompts, 6, temperature=0, stop_token=-1, weights="int8")
    ref = lm.generate(prompts, 6, temperature=0, stop_token=-1)
    assert g.tokens.shape == ref.tokens.shape == (4, 6) and np.asarray(g.mask).all()
    assert np.asarray(g.tokens).max() < lm.config.vocab_size
    # greedy: the first token differs only where float32's top two logits nearly tie
    z = np.asarray(lm.logits(jnp.asarray(prompts, jnp.int32))[:, -1], np.float64)
    first, first32 = np.asarray(g.tokens)[:, 0], np.asarray(ref.tokens)[:, 0]
    gap = z[np.arange(4), first32] - z[np.arange(4), first]
    assert np.all(gap >= 0) and np.all(gap <= 0.02 * (z.max(1) - z.min(1))), gap
    assert lm.int8_weights() is lm.int8_weights()  # converted once per params
    with pytest.raises(ValueError, match="weights='bf16'.*float32.*int8"):
        lm.generate(prompts, 2, weights="bf16")


def test_rl_rollouts_with_int8_weights(base_dir, tmp_path):
    """RLConfig.sample_weights="int8": the rollouts sample from the int8 weights (quantized inside the rollout's
    program), the update learns in float32; a lane of a batched run equals its lone run, and the evaluation (float32
    sampler) starts where the float32 run's does."""
    from ntkdyn.rl import RLConfig, read_metrics, train, train_batch

    kw = dict(recipe="rl", model=base_dir, steps=2, **dict(SMALL, eval_every=2, probe_every=0, num_iterations=1))
    train(RLConfig(out=str(tmp_path / "f32"), seed=1, **kw), progress=False, reward_fn=easy_reward)
    train(RLConfig(out=str(tmp_path / "lone"), seed=1, sample_weights="int8", **kw), progress=False,
          reward_fn=easy_reward)
    train_batch([RLConfig(out=str(tmp_path / f"lane{s}"), seed=s, sample_weights="int8", **kw) for s in (0, 1)],
                progress=False, reward_fn=easy_reward)
    f32, lone, lane = (read_metrics(str(tmp_path / d)) for d in ("f32", "lone", "lane1"))
    assert_records_close(lone, lane)
    assert all(np.isfinite(r["loss"]) for r in lone[1:])
    assert lone[0]["eval/reward"] == f32[0]["eval/reward"]  # step 0: the same float32 evaluation
