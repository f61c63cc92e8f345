"""completion_logp(shared_prompts=G): each group's prompt runs once through a KV cache shared by its G completions.
Values and gradients equal the plain pass on every family (tied, untied, learned positions), with left padding,
and one RL update with it equals the update without it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_cases import tiny
from ntkdyn.optim import make_optimizer
from ntkdyn.rl import objectives as O
from ntkdyn.rl.step import LossSpec, opt_init, rl_update

CASES = [("gpt2", True), ("gpt_neox", False), ("llama", False)]  # tied with learned positions, untied, RoPE + GQA


def _grouped_batch(rng, P=2, G=3, Tp=5, N=4, V=97):
    prompt = np.repeat(rng.integers(3, V, (P, Tp)).astype(np.int32), G, axis=0)
    pmask = np.ones((P * G, Tp), np.int32)
    pmask[:G, :2] = 0  # the first prompt left-padded (the same in its whole group)
    completion = rng.integers(3, V, (P * G, N)).astype(np.int32)
    mask = np.ones((P * G, N), np.float32)
    mask[1, 2:] = 0
    return dict(prompt_ids=prompt, prompt_mask=pmask, completion=completion, mask=mask,
                adv=rng.normal(size=P * G).astype(np.float32))


@pytest.mark.parametrize("family,tied", CASES)
@pytest.mark.parametrize("N", [1, 4])
def test_shared_prompts_same_values_and_gradients(family, tied, N):
    lm = tiny(family, tied)
    b = _grouped_batch(np.random.default_rng(0), N=N)

    def run(params, G):
        st = O.completion_logp(lm.graphdef, lm.config, params, b["prompt_ids"], b["prompt_mask"], b["completion"],
                               shared_prompts=G)
        return jnp.sum(st["logp"] * b["mask"] * b["adv"][:, None]) + jnp.sum(st["entropy"] * b["mask"]), st

    (v1, st1), g1 = jax.value_and_grad(run, has_aux=True)(lm.params, 1)
    (v3, st3), g3 = jax.value_and_grad(run, has_aux=True)(lm.params, 3)
    for k in ("logp", "entropy", "max_prob"):
        np.testing.assert_allclose(np.asarray(st3[k]), np.asarray(st1[k]), rtol=2e-5, atol=2e-6)
    assert np.isclose(float(v1), float(v3), rtol=1e-5)
    scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g1))  # some leaves' gradients are ~0 (1e-8)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g3)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=2e-4, atol=1e-5 * scale)


def test_rl_update_with_shared_prompts_equals_plain():
    lm = tiny("llama", True)
    b = _grouped_batch(np.random.default_rng(1))
    tx = make_optimizer("sgd", 1e-2)  # Adam would turn float rounding of near-zero gradients into ±lr
    outs = []
    for G in (1, 3):
        ls = LossSpec(1.0, 0.2, "seq_mean_token_mean", 0.0, "k3", False, G)
        new, _, m, _ = rl_update(lm.params, opt_init(lm.params, tx=tx), b, jnp.zeros_like(b["mask"]), True, None,
                                 graphdef=lm.graphdef, cfg=lm.config, tx=tx, ls=ls, group="all")
        outs.append((new, float(m["loss"])))
    assert np.isclose(outs[0][1], outs[1][1], rtol=1e-5)
    for a, c in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family,tied", CASES)
def test_sampler_shared_prefill_equals_plain(family, tied):
    """sample(shared_prompts=G): each prompt prefilled once. Same draws (same key) and log-probs as the plain
    prefill, greedy and at temperature 1, with a left-padded group."""
    lm = tiny(family, tied)
    b = _grouped_batch(np.random.default_rng(2), P=2, G=3)
    for temperature in (0.0, 1.0):
        gens = [lm.generate(b["prompt_ids"], 6, prompt_mask=b["prompt_mask"], temperature=temperature, seed=4,
                            stop_token=-1, shared_prompts=G) for G in (1, 3)]
        np.testing.assert_array_equal(np.asarray(gens[1].tokens), np.asarray(gens[0].tokens))
        np.testing.assert_array_equal(np.asarray(gens[1].mask), np.asarray(gens[0].mask))
        for k in ("logp", "logp_model"):
            np.testing.assert_allclose(np.asarray(getattr(gens[1], k)), np.asarray(getattr(gens[0], k)),
                                       rtol=1e-5, atol=1e-5)
    # the shared prefill's log-probs equal teacher forcing's (the cache continues from the repeated prompt)
    st = O.completion_logp(lm.graphdef, lm.config, lm.params, b["prompt_ids"], b["prompt_mask"], gens[1].tokens)
    np.testing.assert_allclose(np.asarray(gens[1].logp_model), np.asarray(st["logp_model"]), rtol=1e-5, atol=1e-5)


def test_generate_checks_the_groups():
    lm = tiny("llama", True)
    b = _grouped_batch(np.random.default_rng(3), P=2, G=3)
    with pytest.raises(ValueError, match="must divide the number of prompt rows"):
        lm.generate(b["prompt_ids"], 2, prompt_mask=b["prompt_mask"], shared_prompts=4)
    with pytest.raises(ValueError, match=r"rows 0\.\.5 of prompt_ids are not one prompt repeated"):
        lm.generate(b["prompt_ids"], 2, prompt_mask=b["prompt_mask"], shared_prompts=6)
    mask = b["prompt_mask"].copy()
    mask[4, 0] = 0
    with pytest.raises(ValueError, match=r"rows 3\.\.5 of prompt_mask"):
        lm.generate(b["prompt_ids"], 2, prompt_mask=mask, shared_prompts=3)
    with pytest.raises(ValueError, match="integer >= 1"):
        lm.generate(b["prompt_ids"], 2, prompt_mask=b["prompt_mask"], shared_prompts=0)
