"""Claim 1 (spec §5): how similar the features h of different prompts and positions are, on a base model.

Held-out prompts are continued with one sampled completion each (`sample_contexts`, also the contexts of the
kernel picture); the features h of every prompt and completion position give the mean pairwise cosines across
prompts and across positions, the spread of s = h·h', and the effective rank of h. `feature_analysis` writes the
histograms and table as FIG (`fig_features.png` / `.pdf`) and returns the numbers.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from ..metrics import cosine_matrix, effective_rank, feature_similarity
from ..models.padding import pad_right
from ..models.tokenizer import encode_prompt
from ..plots.analysis import plot_feature_similarity

__all__ = ["sample_contexts", "feature_analysis", "feature_table", "FEATURE_LABELS"]

# the numbers of the analysis (keys of its "stats") -> their row labels in the table (the paper's Table 1 analogue)
FEATURE_LABELS = {
    "cos_prompts_last": "cos, prompts (last prompt token)",
    "cos_prompts_mean": "cos, prompts (mean over tokens)",
    "cos_positions": "cos, positions (same sequence)",
    "s_mean": "s = h·h' mean",
    "s_cv": "s = h·h' std/|mean|",
    "effective_rank_frac": "effective rank of h / d",
}


def sample_contexts(lm, task, n_prompts, seed, max_new_tokens):
    """Test prompts with one sampled completion each: (prompts, ids (B, T) right-padded with the tokenizer's pad
    id, prompt mask (B, T), completion mask (B, T)); the masks are int32 0/1."""
    tok = lm.tokenizer
    prompts = task.prompts("test", n_prompts, seed)
    rows = [encode_prompt(tok, p) for p in prompts]
    g = lm.generate(rows, max_new_tokens, temperature=1.0, seed=seed)
    toks, mask = np.asarray(g.tokens), np.asarray(g.mask)
    seqs = [r + toks[i, :mask[i].sum()].tolist() for i, r in enumerate(rows)]
    ids, allmask = pad_right(seqs, tok.pad_id)
    _, pmask = pad_right(rows, tok.pad_id, length=ids.shape[1])
    return prompts, ids, pmask, allmask - pmask


def feature_table(stats: dict) -> dict:
    """The table rows {label: value} of the stats (in FEATURE_LABELS order)."""
    return {FEATURE_LABELS[k]: stats[k] for k in FEATURE_LABELS}


def _cosine_values(h, pmask, allmask):
    """The distributions behind the means: pairwise cosines of the last prompt position across prompts, and of
    the positions within each sequence (upper triangles, one array per sequence)."""
    last_pos = pmask.sum(1) - 1
    h_last = h[jnp.arange(h.shape[0]), last_pos]
    cos_prompts = np.asarray(cosine_matrix(h_last))[np.triu_indices(len(last_pos), 1)]
    cos_pos = []
    for b in range(h.shape[0]):
        idx = np.nonzero(allmask[b])[0]
        c = np.asarray(cosine_matrix(h[b, idx]))
        cos_pos.append(c[np.triu_indices(len(idx), 1)])
    return cos_prompts, cos_pos


def _per_item(h, pmask, cos_pos) -> dict:
    """The items of claims 1 and 1x (docs/claims.md v3): per prompt, the mean cosine of its last-prompt-position
    h with every other prompt's (their mean is the mean pairwise cosine); per sequence, the mean pairwise cosine
    across its positions (sequences with fewer than 2 positions left out)."""
    last_pos = pmask.sum(1) - 1
    c = np.asarray(cosine_matrix(h[jnp.arange(h.shape[0]), last_pos]), np.float64)
    n = len(c)
    rows = (c.sum(1) - np.diag(c)) / max(n - 1, 1)
    return {"cos_prompts_last": rows.tolist() if n > 1 else [],
            "cos_positions": [float(v.mean()) for v in cos_pos if len(v)]}


def feature_analysis(lm, task, out_dir, *, n_prompts=32, seed=0, max_new_tokens=12):
    """Claim 1: how similar the features h of different prompts and positions are (base model). Returns
    {"table": {label: value}, "n_contexts", "n_prompts", "files", "stats": {FEATURE_LABELS key: value},
    "items": per-prompt / per-sequence cosines (`_per_item`)}."""
    _, ids, pmask, cmask = sample_contexts(lm, task, n_prompts, seed, max_new_tokens)
    h = lm.features(ids)
    allmask = pmask + cmask
    mean_stats = feature_similarity(h, allmask)
    last = feature_similarity(h, pmask, prompt_feature="last")
    cos_prompts, cos_pos_seq = _cosine_values(h, pmask, allmask)
    cos_pos = np.concatenate(cos_pos_seq)
    flat = np.asarray(h)[allmask.astype(bool)]
    stats = {
        "cos_prompts_last": float(last["cos_across_prompts"]),
        "cos_prompts_mean": float(mean_stats["cos_across_prompts"]),
        "cos_positions": float(mean_stats["cos_across_positions"]),
        "s_mean": float(mean_stats["s_mean"]),
        "s_cv": float(mean_stats["s_cv"]),
        "effective_rank_frac": float(effective_rank(jnp.asarray(flat))) / lm.config.d_model,
    }
    table = feature_table(stats)
    files = plot_feature_similarity(cos_prompts, cos_pos, os.path.join(out_dir, "fig_features"), table=table)
    return {"table": table, "n_contexts": int(allmask.sum()), "n_prompts": int(ids.shape[0]), "files": files,
            "stats": stats, "items": _per_item(h, pmask, cos_pos_seq)}
