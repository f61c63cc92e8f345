"""Tests for ntkdyn.ntk.kernel: Kernel.total() (its values against brute force are checked in test_ntk_api.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ntkdyn import ntk


def test_total_of_parts():
    s = np.array([[2.0]])
    G = np.arange(4.0).reshape(1, 1, 2, 2)
    k = ntk.Kernel(representation=s, gradient=G, cross=None, output="full", vocab_size=2)
    np.testing.assert_allclose(k.total(), [[[[2.0, 1.0], [2.0, 5.0]]]])
    kt = ntk.Kernel(representation=s, gradient=np.array([[3.0]]), cross=np.array([[1.0]]), output="trace",
                    vocab_size=5)
    np.testing.assert_allclose(kt.total(), [[5 * 2.0 + 3.0 + 1.0]])


def test_total_needs_a_matrix_or_trace_output():
    k = ntk.Kernel(representation=np.zeros((1, 1)), gradient=np.zeros((1, 1, 2, 2)), cross=None, output="hidden",
                   vocab_size=97)
    with pytest.raises(ValueError, match=r"Kernel.total\(\) needs output 'full', 'subset' or 'trace'"):
        k.total()
