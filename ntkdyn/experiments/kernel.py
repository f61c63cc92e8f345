"""A picture of the empirical NTK K = R + G (spec §2) for a handful of contexts of a base model: the last prompt
position and the first completion position of a few held-out prompts, R = s·I as the scalars s and G restricted to
the answer tokens (digits, '+', EOS). `kernel_analysis` writes FIG (`fig_kernel.png` / `.pdf`) and returns s and the
trace ratio tr R / tr G.
"""
from __future__ import annotations

import os

import numpy as np

from ..ntk import decompose
from ..plots.analysis import plot_kernel
from .features import sample_contexts

__all__ = ["kernel_analysis", "ANSWER_CHARS"]

ANSWER_CHARS = "0123456789+"  # the token subset of G (with EOS)


LABEL_CHARS = 24  # a context's axis label: at most this many characters of its prompt


def short_label(prompt, max_chars: int = LABEL_CHARS) -> str:
    """A figure label for a prompt: its text (a chat prompt's last user message), whitespace collapsed, cut to
    `max_chars` with an ellipsis."""
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    text = " ".join(str(prompt).split())
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"


def _context_pairs(tok, prompts, ids, pmask, cmask):
    """(row, position) of the last prompt position of each prompt and, when the completion has two tokens or
    more, of its first completion position; with a short label per context (the text it continues)."""
    pairs, labels = [], []
    for b, p in enumerate(prompts):
        last = int(pmask[b].sum()) - 1
        pairs.append((b, last))
        labels.append(short_label(p))
        if cmask[b, last + 1] and cmask[b, last + 2]:
            pairs.append((b, last + 1))
            labels.append(f"{short_label(p)} → {tok.decode([int(ids[b, last + 1])])!r}")
    return pairs, labels


def kernel_analysis(lm, task, out_dir, *, n_prompts=3, seed=0, max_new_tokens=12):
    """A picture of R (= s·I) and G for a handful of contexts: the last prompt position and the first completion
    position of a few test prompts, G restricted to the answer tokens (digits, '+', EOS)."""
    tok = lm.tokenizer
    prompts, ids, pmask, cmask = sample_contexts(lm, task, n_prompts, seed + 1, max_new_tokens)
    pairs, labels = _context_pairs(tok, prompts, ids, pmask, cmask)
    token_ids = [tok.encode(c)[0] for c in ANSWER_CHARS] + [tok.eos_id]
    k = decompose(lm, ids, np.asarray(pairs), output="subset", tokens=token_ids)
    tr = decompose(lm, ids, np.asarray(pairs), output="trace")
    V = lm.config.vocab_size
    files = plot_kernel(np.asarray(k.representation), np.asarray(k.gradient), os.path.join(out_dir, "fig_kernel"),
                        labels=labels, tokens=list(ANSWER_CHARS) + ["<eos>"], normalize=True)
    s = np.asarray(k.representation)
    trg = np.asarray(tr.gradient)
    # tr R = V·s per context pair (R = s·I_V)
    return {"n_contexts": len(pairs), "labels": labels, "s": s.tolist(),
            "trace_R_over_trace_G_diag": float(np.mean(V * np.diag(s) / np.diag(trg))),
            "trace_R_over_trace_G_offdiag": float(np.mean((V * s / trg)[~np.eye(len(pairs), dtype=bool)])),
            "files": files}
