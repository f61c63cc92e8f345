"""Padding token sequences into rectangular batches: the only copies in ntkdyn.

Left padding is for prompts that a sampler continues (every row ends at the same column); right padding is for
teacher-forced sequences (every row starts at column 0).
"""
from __future__ import annotations

import numpy as np

__all__ = ["pad_left", "pad_right"]


def _rows(seqs, fn: str) -> list[list[int]]:
    if isinstance(seqs, (str, bytes)):
        raise TypeError(f"{fn}: expected a list of token-id lists; got a {type(seqs).__name__}")
    rows = [list(map(int, s)) for s in seqs]
    if not rows:
        raise ValueError(f"{fn}: no sequences; expected at least one token-id list")
    return rows


def _width(rows, length, fn):
    T = max(len(r) for r in rows)
    if length is None:
        return T
    if length < T:
        raise ValueError(f"{fn}: length={length} is shorter than the longest sequence ({T} tokens)")
    return int(length)


def pad_left(seqs, pad_id: int = 0, length: int | None = None):
    """Left-pad token lists to (B, T) int32 ids and a (B, T) int32 0/1 mask (1 on real tokens). T is the longest
    sequence, or `length`. A 2-D array is taken as already padded (mask all ones)."""
    if hasattr(seqs, "ndim") and getattr(seqs, "ndim") == 2:
        a = np.asarray(seqs)
        return a, np.ones(a.shape, np.int32)
    rows = _rows(seqs, "pad_left")
    T = _width(rows, length, "pad_left")
    ids = np.full((len(rows), T), pad_id, np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for i, s in enumerate(rows):
        if s:
            ids[i, T - len(s):] = s
            mask[i, T - len(s):] = 1
    return ids, mask


def pad_right(seqs, pad_id: int = 0, length: int | None = None):
    """Right-pad token lists to (B, T) int32 ids and a (B, T) int32 0/1 mask (1 on real tokens). T is the longest
    sequence, or `length`."""
    rows = _rows(seqs, "pad_right")
    T = _width(rows, length, "pad_right")
    ids = np.full((len(rows), T), pad_id, np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for i, s in enumerate(rows):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask
