"""Tests for ntkdyn.ntk.shared: the one scheduler (schedules, unit counts, caching), the token-bucketing rule, Q and
the factor of WᵀW (the methods' numbers are checked in tests/test_ntk_structured.py and tests/test_ntk_jacobian.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ntkdyn.ntk import shared


def _count(blocks_a, blocks_b, n_chunks, sym, mode, cache_b):
    """Units computed and visited pairs of a schedule, with the states each visit got."""
    pairs = shared.schedule(blocks_a, blocks_b, n_chunks, sym, mode)
    seen = []
    n = shared.walk(pairs, sym, cache_b, lambda u: ("a", u), lambda u: ("b", u),
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
    for ua, ub, SA, SB in seen:  # each visit gets the states of its own units
        assert SA[1] == ua and SB[1] == ub


def test_caching_b_units_counts():
    # symmetric matrix kernel, one block, 4 chunks: 4 sweeps when kept, 4 + 6 when recomputed
    assert _count(1, 1, 4, True, "matrix", cache_b=True)[0] == 4
    assert _count(1, 1, 4, True, "matrix", cache_b=False)[0] == 10
    # symmetric trace, one block: one sweep per chunk serves both sides
    assert _count(1, 1, 9, True, "trace", cache_b=False)[0] == 9
    # rectangular trace, one block per side: a and b sweep per chunk
    assert _count(1, 1, 9, False, "trace", cache_b=False)[0] == 18


def test_tokens_kept_is_the_longest_analysed_prefix_rounded_to_8():
    ids = np.zeros((2, 30), np.int32)
    assert shared.tokens_kept(ids, [0, 3]) == 8 and shared.tokens_kept(ids, [8]) == 16
    assert shared.tokens_kept(ids, [29]) == 30 and shared.tokens_kept(ids[:, :6], [5]) == 6
    s = shared.side((ids, np.array([1, 0]), np.array([3, 9])), 4)
    assert s.ids.shape == (4, 16) and s.pos.tolist() == [3, 9, 9, 9] and s.n == 2


def test_q_and_gram_factor():
    ids_a, ids_b = np.array([5, 9, 5]), np.array([9, 5])
    np.testing.assert_array_equal(shared.q(ids_a, ids_b, np.float32), [[0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(shared.q(ids_a, ids_b, np.float32, np.arange(3), np.arange(2)),
                                  [[1, 1], [1, 1], [0, 1]])
    rng = np.random.default_rng(0)
    for V, d in ((40, 8), (5, 8)):  # V > d: the symmetric square root; V <= d: W itself
        W = rng.normal(size=(V, d))
        L = np.asarray(shared.gram_factor(W))
        np.testing.assert_allclose(L.T @ L, W.T @ W, rtol=1e-4, atol=1e-4)
        assert L.shape == ((d, d) if V > d else (V, d))
