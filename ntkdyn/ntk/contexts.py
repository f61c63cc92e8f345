"""Contexts: the (row, position) pairs into a token array whose next-token logits are analysed. The one place where
positions are validated (ntk.decompose and dynamics.probe_index both call `context_index`).

A context c = (row, pos) is the prefix ids[row, :pos+1]; its logits z(c) = lm.logits(ids)[row, pos]. Positions come
as (N,) (one per row) or as (N, 2) (row, position) pairs, e.g. from `contexts_from_mask`.
"""
from __future__ import annotations

import numpy as np

from ..models.lm import check_ids

__all__ = ["contexts_from_mask", "context_index", "contexts", "kernel_contexts"]


def contexts_from_mask(mask) -> np.ndarray:
    """(row, position) pairs (N, 2) of the nonzero entries of a (B, T) mask, row-major: e.g. every position whose
    next-token prediction belongs to a teacher-forced completion."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (batch, time); got shape {m.shape}")
    return np.argwhere(m != 0).astype(np.int32)


def _bad(x, lo, hi):
    """Up to five distinct values of x outside [lo, hi), for error messages."""
    return sorted(set(x[(x < lo) | (x >= hi)].tolist()))[:5]


def context_index(ids, pos, ids_name: str = "ids", pos_name: str = "pos", *, allow_empty: bool = False):
    """(rows, positions): int32 numpy arrays (N,) of the contexts that `pos` names in the token rows `ids` (B, T).

    pos: (B,) one position per row (row i at position pos[i]) or (N, 2) (row, position) pairs. A ValueError names
    the argument and the offending values otherwise; no context at all is refused unless `allow_empty`."""
    shape = np.shape(ids)
    if len(shape) != 2:
        raise ValueError(f"{ids_name} must be 2-D (rows, time); got shape {shape}")
    B, T = shape
    p = np.asarray(pos)
    if p.size and not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"{pos_name} must hold integer positions; got dtype {p.dtype}")
    p = p.astype(np.int64)
    if p.ndim == 1:
        if p.shape[0] != B:
            raise ValueError(f"{pos_name} has {p.shape[0]} positions but {ids_name} has {B} rows; give one "
                             f"position per row, shape ({B},), or (row, position) pairs of shape (N, 2)")
        rows = np.arange(B)
    elif p.ndim == 2 and p.shape[1] == 2:
        rows, p = p[:, 0], p[:, 1]
        if rows.size and (rows.min() < 0 or rows.max() >= B):
            raise ValueError(f"{pos_name} (row, position) pairs name row(s) {_bad(rows, 0, B)} outside [0, {B}) "
                             f"({ids_name} has {B} rows)")
    else:
        raise ValueError(f"{pos_name} must have shape (N,) (one position per row of {ids_name}) or (N, 2) "
                         f"((row, position) pairs); got shape {p.shape}")
    if p.size == 0 and not allow_empty:
        raise ValueError(f"{pos_name} names no context; expected at least one")
    if p.size and (p.min() < 0 or p.max() >= T):
        raise ValueError(f"{pos_name} holds position(s) {_bad(p, 0, T)} outside [0, {T}) (positions must lie "
                         f"inside the {T} tokens of the {ids_name} rows)")
    return rows.astype(np.int32), p.astype(np.int32)


def contexts(cfg, ids, pos, ids_name: str, pos_name: str):
    """Validated contexts for a model of config `cfg`: (ids (B, T) int32 numpy, rows (N,), positions (N,))."""
    ids = np.asarray(check_ids(cfg, ids, ids_name, allow_traced=False))
    rows, p = context_index(ids, pos, ids_name, pos_name)
    return ids, rows, p


def kernel_contexts(cfg, ids_a, pos_a, ids_b=None, pos_b=None):
    """The a and b sides of a kernel, each (ids, rows, positions), and whether it is symmetric (b = a).
    ids_b/pos_b default to a's; pos_b alone names contexts in ids_a's rows."""
    a = contexts(cfg, ids_a, pos_a, "ids_a", "pos_a")
    sym = ids_b is None and pos_b is None
    if sym:
        b = a
    elif pos_b is None:
        raise ValueError("pos_b is required when ids_b is given (the positions of the b contexts)")
    elif ids_b is None:
        b = contexts(cfg, ids_a, pos_b, "ids_a", "pos_b")
    else:
        b = contexts(cfg, ids_b, pos_b, "ids_b", "pos_b")
    return a, b, sym
