"""Tests for ntkdyn.ntk.contexts: (row, position) contexts from a mask and the one position validation (used by
ntk.decompose and dynamics.probe_index; decompose's messages are checked in test_ntk_api.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ntkdyn.dynamics import probe_index
from ntkdyn.ntk import contexts_from_mask
from ntkdyn.ntk.contexts import context_index


def test_contexts_from_mask():
    m = np.array([[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(contexts_from_mask(m), [[0, 1], [0, 2], [1, 0]])


def test_errors_of_contexts_from_mask():
    with pytest.raises(ValueError, match=r"mask must be 2-D"):
        contexts_from_mask(np.ones(3))


def test_context_index_forms():
    ids = np.zeros((3, 5), np.int32)
    rows, pos = context_index(ids, [4, 0, 2])  # one position per row
    assert rows.dtype == np.int32 and pos.dtype == np.int32
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_array_equal(pos, [4, 0, 2])
    rows, pos = context_index(ids, [[2, 1], [0, 3]])  # (row, position) pairs
    np.testing.assert_array_equal(rows, [2, 0])
    np.testing.assert_array_equal(pos, [1, 3])
    with pytest.raises(ValueError, match=r"p names no context"):
        context_index(ids, np.zeros((0, 2), np.int32), "ids", "p")
    assert context_index(ids, np.zeros((0, 2), np.int32), allow_empty=True)[0].shape == (0,)


def test_probe_index_uses_the_same_validation():
    ids = np.zeros((2, 4), np.int32)
    rows, pos = probe_index(ids, np.array([[1, 3], [0, 0]]))
    assert rows.dtype == np.int32 and pos.dtype == np.int32
    np.testing.assert_array_equal(rows, [1, 0])
    np.testing.assert_array_equal(pos, [3, 0])
    with pytest.raises(ValueError, match=r"probe_pos holds position\(s\) \[4\] outside \[0, 4\)"):
        probe_index(ids, np.array([[1, 4]]))
    with pytest.raises(ValueError, match=r"probe_pos \(row, position\) pairs name row\(s\) \[2\]"):
        probe_index(ids, np.array([[2, 0]]))
    with pytest.raises(ValueError, match=r"probe_ids must be 2-D"):
        probe_index(np.zeros(4, np.int32), np.array([0]))
