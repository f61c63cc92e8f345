"""Tests for ntkdyn.ntk.bruteforce (the reference itself is what test_ntk_api.py compares every fast path with)."""
from __future__ import annotations

import numpy as np
import pytest

import ntk_cases
from ntkdyn import ntk


def test_bruteforce_validates_its_contexts():
    tiny = ntk_cases.tiny(d=16)
    with pytest.raises(ValueError, match=r"pos_pairs holds position\(s\) \[6\]"):
        ntk.full_kernel_bruteforce(tiny, np.zeros((1, 6), np.int32), [[0, 6]])
