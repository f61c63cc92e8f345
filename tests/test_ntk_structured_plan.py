"""Tests for ntkdyn.ntk.structured_plan: schedules, sweep counts and memory plans (no kernel is computed here; the
numbers of every plan are checked in tests/test_structured.py)."""
from __future__ import annotations

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn.ntk import structured_plan as sp
from ntkdyn.models.transformer import abstract_params

SMOLLM2 = nd.ModelConfig(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_ff=1536, max_positions=2048, tie_word_embeddings=True)


def _count(blocks_a, blocks_b, n_chunks, sym, mode, cache_b):
    """Sweeps and visited pairs of a schedule, with the pair coverage it implies."""
    pairs = sp.schedule(blocks_a, blocks_b, n_chunks, sym, mode)
    seen = []
    n = sp.walk(pairs, sym, cache_b, lambda u: ("a", u), lambda u: ("b", u),
                lambda ua, ub, SA, SB: seen.append((ua, ub, SA, SB)))
    return n, seen


@pytest.mark.parametrize("mode", ["trace", "matrix"])
@pytest.mark.parametrize("sym", [True, False])
def test_schedule_covers_every_pair_once(mode, sym):
    n, seen = _count(3, 3 if sym else 2, 4, sym, mode, cache_b=False)
    got = {(ua, ub) for ua, ub, _, _ in seen}
    assert len(got) == len(seen)  # no pair twice
    full = set()
    for ua, ub in got:
        full.add((ua, ub))
        if sym:
            full.add((ub, ua))  # the transpose of a symmetric kernel's block
    units_a = [(i, k) for i in range(3) for k in range(4)]
    units_b = [(j, k) for j in range(3 if sym else 2) for k in range(4)]
    want = {(ua, ub) for ua in units_a for ub in units_b if mode == "matrix" or ua[1] == ub[1]}
    assert full == want
    for ua, ub, SA, SB in seen:  # each visit gets the sweeps of its own units
        assert SA[1] == ua and SB[1] == ub


def test_caching_b_sweeps_counts():
    # symmetric matrix kernel, one block, 4 chunks: 4 sweeps when kept, 4 + 6 when recomputed
    assert _count(1, 1, 4, True, "matrix", cache_b=True)[0] == 4
    assert _count(1, 1, 4, True, "matrix", cache_b=False)[0] == 10
    # symmetric trace, one block: one sweep per chunk serves both sides
    assert _count(1, 1, 9, True, "trace", cache_b=False)[0] == 9
    # rectangular trace, one block per side: a and b sweep per chunk
    assert _count(1, 1, 9, False, "trace", cache_b=False)[0] == 18


def test_plan_for_smollm2_shape_without_parameters():
    """A plan from abstract parameters (nothing allocated): SmolLM2-135M's shape, 2 contexts of 6 tokens."""
    ids = np.arange(12, dtype=np.int32).reshape(2, 6)
    params = abstract_params(SMOLLM2)
    p = sp.make_plan(SMOLLM2, params, ids, np.array([0, 1]), np.array([5, 5]))
    assert p.mode == "trace" and p.basis == "factor" and p.n_cotangents == 576 and p.tokens_a == 6
    assert p.blocks_a == 1 and p.sweeps == p.n_chunks and p.cross_rows == 6  # tr X: rows W[id_t] after L's
    assert p.n_chunks * p.chunk >= 576 + 6 > (p.n_chunks - 1) * p.chunk
    assert p.predicted_bytes <= p.memory_budget == sp.DEFAULT_MEMORY_BUDGET and p.chunk >= sp.MIN_CHUNK
    big = sp.make_plan(SMOLLM2, params, ids, np.array([0, 1]), np.array([5, 5]), memory_budget=4 << 30)
    assert big.chunk > p.chunk and big.sweeps < p.sweeps and big.predicted_bytes <= 4 << 30
    # many contexts and a small budget: contexts are blocked before the chunk drops below MIN_CHUNK
    ids = np.zeros((64, 6), np.int32)
    many = sp.make_plan(SMOLLM2, params, ids, np.arange(64), np.full(64, 5), memory_budget=1 << 30)
    assert many.blocks_a > 1 and many.chunk >= sp.MIN_CHUNK and many.predicted_bytes <= 1 << 30
    sub = sp.make_plan(SMOLLM2, params, ids[:2], np.arange(2), np.full(2, 5), output="subset",
                       tokens=np.arange(5))
    assert sub.basis == "subset" and sub.n_cotangents == 5 and sub.cross_rows == 0


def test_bad_options():
    ids = np.zeros((2, 6), np.int32)
    args = (SMOLLM2, abstract_params(SMOLLM2), ids, np.arange(2), np.full(2, 5))
    with pytest.raises(ValueError, match="memory_budget"):
        sp.make_plan(*args, memory_budget=0)
    with pytest.raises(ValueError, match="block"):
        sp.make_plan(*args, block=True)
    with pytest.raises(ValueError, match="tokens"):
        sp.make_plan(*args, output="trace", tokens=np.arange(3))
