"""RLConfig.dtype = "bfloat16": the update's forward and backward passes with bfloat16 matmul operands
(transformer.cast_params), float32 master weights, gradients and optimizer state. Against the float32 update on a
tiny model of every family: log-probs within 0.05 nats, the parameter update within 3 % (relative norm) and
aligned to cosine 0.999 (measured: 0.005-0.035 nats, 0.5-1.4 %, cosine >= 0.9999). A run in bfloat16 samples its
first batch exactly as the float32 run does (the sampler stays float32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_cases import tiny
from rl_helpers import SMALL, base_dir, easy_reward, random_batch  # noqa: F401 (fixture)

from ntkdyn.models.transformer import cast_params
from ntkdyn.optim import make_optimizer
from ntkdyn.rl import ConfigError, RLConfig, read_metrics, train
from ntkdyn.rl.step import LossSpec, opt_init, rl_update


def test_cast_params():
    p = {"w": jnp.ones((2, 3)), "i": jnp.arange(3)}
    assert cast_params(p, "float32") is p
    q = cast_params(p, "bfloat16")
    assert q["w"].dtype == jnp.bfloat16 and q["i"].dtype == p["i"].dtype
    with pytest.raises(ValueError, match="compute dtype 'float16'; expected one of"):
        cast_params(p, "float16")
    with pytest.raises(ConfigError, match=r"RLConfig.dtype='int8': expected one of \['float32', 'bfloat16'\]"):
        RLConfig(out="x", dtype="int8")


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "gemma3"])
def test_bfloat16_update_against_float32(family):
    lm = tiny(family, family == "gpt2")
    b = random_batch(np.random.default_rng(0), B=4, Tp=5, N=6, V=lm.config.vocab_size)
    tx = make_optimizer("sgd", 1.0)
    out = {}
    for dt in ("float32", "bfloat16"):
        ls = LossSpec(1.0, 0.2, "token_mean", 0.0, "k3", compute_dtype=dt)
        new, st, m, lp = rl_update(lm.params, opt_init(lm.params, tx=tx), b, jnp.zeros((4, 6)), np.asarray(True), None,
                                   graphdef=lm.graphdef, cfg=lm.config, tx=tx, ls=ls, group="all")
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new)), dt  # master weights stay float32
        step = np.concatenate([(np.asarray(a) - np.asarray(c)).ravel()
                               for a, c in zip(jax.tree.leaves(lm.params), jax.tree.leaves(new))])
        out[dt] = (np.asarray(lp), step, float(m["loss"]))
    (lp32, s32, _), (lp16, s16, loss16) = out["float32"], out["bfloat16"]
    assert np.isfinite(loss16) and lp16.dtype == np.float32
    assert np.abs(lp16 - lp32).max() < 0.05
    assert np.linalg.norm(s16 - s32) / np.linalg.norm(s32) < 0.03
    assert s16 @ s32 / np.linalg.norm(s16) / np.linalg.norm(s32) > 0.999


def test_bfloat16_run_samples_in_float32(base_dir, tmp_path):
    """Two steps with a KL term (the reference log-probs in bfloat16 too): the first batch's rollouts and rewards
    are the float32 run's exactly; the loss and the KL close to them."""
    recs = {}
    for dt in ("float32", "bfloat16"):
        out = str(tmp_path / dt)
        train(RLConfig(recipe="rl", model=base_dir, out=out, steps=2, dtype=dt,
                       **dict(SMALL, eval_every=0, probe_every=0, num_iterations=1)), progress=False,
              reward_fn=easy_reward)
        recs[dt] = read_metrics(out)
    a, b = recs["float32"][1], recs["bfloat16"][1]
    assert a["reward"] == b["reward"] and a["completions/mean_length"] == b["completions/mean_length"]
    assert abs(a["loss"] - b["loss"]) < 0.05 and abs(a["kl"] - b["kl"]) < 0.01
    assert all(np.isfinite(r["loss"]) for r in recs["bfloat16"][1:])
