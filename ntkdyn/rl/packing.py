"""Packed completions for the update (RLConfig.pack): the plan that lays a rollout batch's completions
end to end into fewer rows, so that the update's forward and backward passes skip the padding after each EOS.

A step's rollouts are B = P·G rows of up to N completion tokens (objectives.completion_logp): row b's first
token is predicted from its prompt's last feature, and its tokens y_0 .. y_{L_b−2} are the inputs that predict
y_1 .. y_{L_b−1} (L_b = the row's mask count, EOS included). Padded, those inputs fill B × (N − 1) slots; packed,
row b's L_b − 1 inputs form one *segment*, and segments are placed first-fit-decreasing into R rows of W = N − 1
slots with at most MAX_SEGMENTS segments per row, R rounded up to a multiple of `rows_multiple`. Every packed
token attends to its own prompt (each packed row carries the keys of its segments' prompts) and to the earlier
tokens of its own segment, at its own positions: the same contexts as the padded pass, so the log-probs, and the
loss and gradients built on them, are equal up to float rounding (tests/test_packing.py).

The plan is host-side numpy built from the rollout mask (which the step already holds for the rewards); its
arrays enter the jitted update as part of the batch. R is data-dependent, so each distinct (R, W) compiles once
(JAX's persistent cache keeps them for later runs). A compile of SmolLM2's update takes ~17 s on a 2-core CPU,
more than packing saves per step, so the trainer rounds R up to a multiple of a quarter of the batch
(`rows_multiple`): at most three packed shapes per update length (a plan that saves no quarter runs padded). With
micro-batches (RLConfig.micro_batches) each micro-batch of whole groups is packed on its own (its plan's indices
local to it, every plan with one R, rounded to a quarter of the micro-batch: rl/rollout._packing).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["MAX_SEGMENTS", "ROWS_MULTIPLE", "Packing", "needed_rows", "rows_multiple", "pack", "pack_lanes"]

MAX_SEGMENTS = 4  # segments (hence prompts' keys) per packed row
ROWS_MULTIPLE = 2  # the plan's default rounding of the packed rows, and the trainer's least (rows_multiple)


def rows_multiple(batch_rows: int, devices: int = 1) -> int:
    """The trainer's rounding of the packed rows of one plan over `batch_rows` rows (the batch, or one
    micro-batch): a quarter of them (rounded up), at least ROWS_MULTIPLE, and a multiple of the devices the rows
    are split over."""
    return math.lcm(max(ROWS_MULTIPLE, -(-int(batch_rows) // 4)), int(devices))


class Packing(NamedTuple):
    """Where each completion input sits in the packed rows (int32 numpy arrays; a lane axis in front for
    several lanes):

      rows   (R, K)  the rollout row b of segment slot i of packed row r, −1 where unused (K = MAX_SEGMENTS)
      src    (R, W)  the flat index b·N + j into the completion (B, N) of the input token at each slot (y_j of row
                     b, which predicts y_{j+1}); 0 on padding slots
      seg    (R, W)  the segment slot i (0 .. K−1) of the token at each slot; −1 on padding slots
      unpack (B, N)  for each (row b, token l) of the padded layout, the index of its statistics in the flat
                     array [the B first tokens; the R·W packed slots]: b for l = 0, B + r·W + s for l >= 1 and
                     l < L_b, b again where the mask is 0 (a finite value the mask then drops)
    """

    rows: np.ndarray
    src: np.ndarray
    seg: np.ndarray
    unpack: np.ndarray


def _segments(mask) -> np.ndarray:
    """The segment length L_b − 1 of every row (0 for a row of one token or none)."""
    return np.maximum(np.sum(np.asarray(mask) != 0, axis=-1) - 1, 0)


def _bins(lengths, W: int, K: int) -> list[list[int]]:
    """First-fit decreasing: the rows of positive segment length in bins of at most W slots and K segments
    (ties broken by row index, so the plan is a function of the lengths alone)."""
    order = sorted((b for b in range(len(lengths)) if lengths[b] > 0), key=lambda b: (-lengths[b], b))
    bins, free = [], []
    for b in order:
        for i, bn in enumerate(bins):
            if free[i] >= lengths[b] and len(bn) < K:
                bn.append(b)
                free[i] -= lengths[b]
                break
        else:
            bins.append([b])
            free.append(W - lengths[b])
    return bins


def needed_rows(mask, rows_multiple: int = ROWS_MULTIPLE, max_segments: int = MAX_SEGMENTS) -> int:
    """The packed rows R of a rollout mask (B, N): the first-fit-decreasing bins, rounded up to a multiple of
    rows_multiple (at least one multiple)."""
    mask = np.asarray(mask)
    return _rounded(len(_bins(_segments(mask), mask.shape[-1] - 1, max_segments)), rows_multiple)


def _rounded(n: int, multiple: int) -> int:
    """n rows rounded up to a multiple of `multiple`, at least one multiple."""
    return max(1, -(-n // multiple)) * multiple


def pack(mask, R: int | None = None, rows_multiple: int = ROWS_MULTIPLE,
         max_segments: int = MAX_SEGMENTS) -> Packing:
    """The packing of a rollout mask (B, N) (1 on the generated tokens, EOS included, left-aligned) into R rows of
    N − 1 slots (R: needed_rows by default; a larger R pads with empty rows, as lanes need a common R).
    ValueError when N < 2 (nothing to pack), when the mask is not left-aligned, or when R is too small."""
    mask, L, bins = _checked_bins(mask, max_segments)
    return _layout(mask, L, bins, _rounded(len(bins), rows_multiple) if R is None else int(R), max_segments)


def _checked_bins(mask, max_segments: int):
    """(the mask as bool, each row's length L, the first-fit-decreasing bins) of a rollout mask (B, N); ValueError
    when N < 2 or the mask is not left-aligned."""
    mask = np.asarray(mask) != 0
    if mask.ndim != 2 or mask.shape[1] < 2:
        raise ValueError(f"packing needs a rollout mask (rows, tokens) with at least 2 tokens; got shape "
                         f"{mask.shape}")
    N = mask.shape[1]
    L = mask.sum(1)
    if not np.array_equal(mask, np.arange(N)[None, :] < L[:, None]):
        raise ValueError("packing needs each row's mask to be 1 on its first L tokens and 0 after them (a "
                         "completion up to and including its EOS); got a mask with gaps")
    return mask, L, _bins(_segments(mask), N - 1, int(max_segments))


def _layout(mask, L, bins, R: int, max_segments: int) -> Packing:
    """The Packing of `bins` (of the checked mask with row lengths L) in R rows; ValueError when R is too small."""
    B, N = mask.shape
    W, K = N - 1, int(max_segments)
    if R < len(bins):
        raise ValueError(f"packing into {R} rows: the completions need {len(bins)} rows of {W} slots")
    rows = np.full((R, K), -1, np.int32)
    src = np.zeros((R, W), np.int32)
    seg = np.full((R, W), -1, np.int32)
    unpack = np.repeat(np.arange(B, dtype=np.int32)[:, None], N, axis=1)
    for r, bn in enumerate(bins):
        s = 0
        for i, b in enumerate(bn):
            n = int(L[b]) - 1
            rows[r, i] = b
            src[r, s:s + n] = b * N + np.arange(n)
            seg[r, s:s + n] = i
            unpack[b, 1:n + 1] = B + r * W + s + np.arange(n)
            s += n
    return Packing(rows, src, seg, unpack)


def pack_lanes(masks, rows_multiple: int = ROWS_MULTIPLE, max_segments: int = MAX_SEGMENTS) -> Packing:
    """The plans of several lanes' masks (n, B, N) with one R (the largest any lane needs), stacked on a lane
    axis."""
    checked = [_checked_bins(m, max_segments) for m in masks]  # the bins once per lane
    R = max(_rounded(len(bins), rows_multiple) for _, _, bins in checked)
    return Packing(*(np.stack(a) for a in zip(*(_layout(*c, R, max_segments) for c in checked))))
