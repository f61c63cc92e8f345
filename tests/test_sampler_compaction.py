"""The sampler's decode loop drops finished rows (sampling.sample's compact): once no more than half of its rows
are live it continues with half as many. Checked against the loop that runs every row to the end, on every
family (a sliding-window Gemma 3 among them), sampled (every row keeps its own draws) and greedy, with top-k and
top-p, shared prompts, and under vmap (the trainer's lanes)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_packing import MODELS
from ntkdyn.models.sampling import compaction_sizes, sample

STOPS = np.arange(3, 97, 3, dtype=np.int32)  # a third of the tiny vocabulary: most rows stop within a few tokens


def _prompts(rng, P=4, G=4, Tp=5, V=97):
    ids = np.repeat(rng.integers(3, V, (P, Tp)).astype(np.int32), G, axis=0)
    mask = np.ones_like(ids)
    mask[:G, :2] = 0  # the first prompt left-padded
    return jnp.asarray(ids), jnp.asarray(mask)


def _gen(lm, ids, mask, key, compact, **kw):
    kw = {"max_new_tokens": 12, "temperature": 1.0, "stop_token": STOPS, "shared_prompts": 4, **kw}
    return sample(lm.graphdef, lm.config, lm.params, ids, mask, key, compact=compact, **kw)


def _assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    for k in ("logp", "logp_model"):
        np.testing.assert_allclose(np.asarray(getattr(a, k)), np.asarray(getattr(b, k)), rtol=1e-5, atol=1e-6)


def test_compaction_sizes():
    assert compaction_sizes(32) == [32, 16]
    assert compaction_sizes(16) == [16, 8]
    assert compaction_sizes(12) == [12] and compaction_sizes(8) == [8] and compaction_sizes(1) == [1]
    assert compaction_sizes(64, levels=3) == [64, 32, 16, 8]
    assert compaction_sizes(24, levels=2, least=2) == [24, 12, 6]


@pytest.mark.parametrize("family", list(MODELS))
def test_compacted_decode_equals_the_full_loop(family):
    lm = MODELS[family]()
    ids, mask = _prompts(np.random.default_rng(0))
    runs = [({}, 1), ({"top_k": 20, "top_p": 0.9}, 3), ({"temperature": 0.0, "greedy": True}, 2)]
    for kw, seed in runs:
        full, compact = (_gen(lm, ids, mask, jax.random.key(seed), c, **kw) for c in (False, True))
        _assert_same(compact, full)
        live = np.asarray(full.mask).sum(0)
        if not kw.get("greedy"):  # (a tiny random model's greedy rows all repeat one token: no row stops early)
            # the compacted loop did run: a step with 1 to 8 live rows of 16 and a later one
            assert np.any((live[:-1] > 0) & (live[:-1] <= 8) & (live[1:] > 0)), live


def test_compacted_decode_under_vmap_equals_each_lane():
    lm = MODELS["llama"]()
    ids, mask = _prompts(np.random.default_rng(1))
    keys = jax.random.split(jax.random.key(7), 2)
    lanes = jax.vmap(lambda k: _gen(lm, ids, mask, k, True))(keys)
    for i in range(2):
        one = _gen(lm, ids, mask, keys[i], False)
        _assert_same(jax.tree.map(lambda x: x[i], lanes), one)
