"""RLConfig.micro_batches: the update's rows in micro-batches of whole groups whose gradients sum into one step.
On a tiny model of every family the micro-batched update equals the one-batch update (loss, metrics, log-probs,
new params) for both loss aggregations, with the KL term and off-policy; a batched two-seed run (lanes: the scan
inside the vmap) with micro-batches writes the records of the same run without; the split and merge of the rows
are inverse and keep groups whole; the config rejects a micro_batches that does not divide the prompts."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_cases import tiny
from rl_helpers import SMALL, assert_records_close, base_dir, easy_reward  # noqa: F401 (fixture)

from ntkdyn.optim import make_optimizer
from ntkdyn.rl import ConfigError, RLConfig, read_metrics, train_batch
from ntkdyn.rl.step import LossSpec, merge_micro_batches, micro_batches, opt_init, rl_update


def _batch(rng, P=4, G=2, Tp=5, N=4, V=97):
    prompt = np.repeat(rng.integers(3, V, (P, Tp)).astype(np.int32), G, axis=0)
    pmask = np.ones((P * G, Tp), np.int32)
    pmask[:G, :2] = 0  # left padding in the first group
    mask = np.ones((P * G, N), np.float32)
    mask[1, 2:] = 0
    mask[5, 1:] = 0
    return dict(prompt_ids=prompt, prompt_mask=pmask, completion=rng.integers(3, V, (P * G, N)).astype(np.int32),
                mask=mask, adv=rng.normal(size=P * G).astype(np.float32))


def _update(lm, b, n, agg, beta, on_policy, logp_old, logp_ref):
    tx = make_optimizer("sgd", 1e-1)  # Adam would turn float rounding of near-zero gradients into ±lr
    ls = LossSpec(1.0, 0.2, agg, beta, "k3", False, 2, 8, n)
    return rl_update(lm.params, opt_init(lm.params, tx=tx), b, logp_old, np.asarray(on_policy), logp_ref,
                     graphdef=lm.graphdef, cfg=lm.config, tx=tx, ls=ls, group="all")


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "gemma3"])
def test_micro_batched_update_equals_one_batch(family):
    """4 micro-batches of one group each against one batch: on-policy with seq_mean_token_mean, then a PPO
    iteration (π_old a little off the current policy) with token_mean and the KL against a reference."""
    lm = tiny(family, family == "gpt2")
    rng = np.random.default_rng(0)
    b = _batch(rng)
    noise = rng.normal(0, 0.3, b["mask"].shape).astype(np.float32)
    logp = None
    for agg, beta, on_policy in (("seq_mean_token_mean", 0.0, True), ("token_mean", 0.1, False)):
        old = jnp.zeros_like(b["mask"]) if on_policy else logp + noise
        ref_lp = None if on_policy else logp - noise
        one = _update(lm, b, 1, agg, beta, on_policy, old, ref_lp)
        logp = one[3]
        new, _, m, lp = _update(lm, b, 4, agg, beta, on_policy, old, ref_lp)
        np.testing.assert_allclose(np.asarray(lp), np.asarray(one[3]), rtol=1e-5, atol=1e-6)
        assert set(m) == set(one[2]) and ("kl" in m) == (not on_policy)
        for k in m:
            np.testing.assert_allclose(float(m[k]), float(one[2][k]), rtol=1e-5, atol=1e-6, err_msg=k)
        assert float(m["loss"]) != 0.0
        for x, y in zip(jax.tree.leaves(one[0]), jax.tree.leaves(new)):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_batched_run_with_micro_batches_equals_the_run_without(base_dir, tmp_path):
    cfg = RLConfig(recipe="rl", model=base_dir, out="x", steps=2, **dict(SMALL, eval_every=0, probe_every=0))
    recs = {}
    for n in (1, 2):
        runs = [cfg.replace(seed=s, out=str(tmp_path / f"m{n}-s{s}"), micro_batches=n) for s in (1, 2)]
        train_batch(runs, progress=False, reward_fn=easy_reward)
        recs[n] = [read_metrics(c.out) for c in runs]
    for a, b in zip(recs[1], recs[2]):
        assert len(a) == 3
        assert_records_close(a, b)


def test_split_keeps_groups_whole_and_merge_inverts_it():
    x = np.arange(12 * 3).reshape(12, 3)  # 6 groups of 2 rows
    parts = np.asarray(micro_batches(x, 3, 2))
    assert parts.shape == (3, 4, 3)
    # micro-batch j holds the groups j and j + 3, each whole
    np.testing.assert_array_equal(parts[1][:, 0], [6, 9, 24, 27])
    np.testing.assert_array_equal(np.asarray(merge_micro_batches(parts, 2)), x)
    with pytest.raises(ValueError, match="micro_batches=4: the update's 12 rows in groups of 2 do not split"):
        micro_batches(x, 4, 2)


def test_config_checks_micro_batches():
    assert RLConfig(out="x", prompts_per_step=4, micro_batches=2).micro_batches == 2
    with pytest.raises(ConfigError, match=r"RLConfig.micro_batches=3: expected a divisor of prompts_per_step=4"):
        RLConfig(out="x", prompts_per_step=4, micro_batches=3)
    with pytest.raises(ConfigError, match=r"RLConfig.micro_batches=0: expected an integer >= 1"):
        RLConfig(out="x", micro_batches=0)
