"""ntkdyn.experiments.kernel: which contexts the kernel picture takes."""
import numpy as np

from ntkdyn.experiments.kernel import ANSWER_CHARS, _context_pairs, short_label
from ntkdyn.models.tokenizer import CharTokenizer


def test_context_pairs():
    tok = CharTokenizer()
    # row 0: prompt of 3 tokens and a 2-token completion; row 1: prompt of 2 tokens and a 1-token completion
    ids = np.array([[1, 5, 6, 7, 8, 0], [1, 5, 9, 0, 0, 0]], np.int32)
    pmask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], np.int32)
    cmask = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]], np.int32)
    pairs, labels = _context_pairs(tok, ["p0", "p1"], ids, pmask, cmask)
    assert pairs == [(0, 2), (0, 3), (1, 1)]  # the first completion position only where 2+ tokens follow
    assert labels == ["p0", f"p0 → {tok.decode([7])!r}", "p1"]
    assert all(len(tok.encode(c)) == 1 for c in ANSWER_CHARS)


def test_short_label():
    """Axis labels stay short: a chat prompt is labelled by its last user message, long text is cut."""
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 4 + 7?\n Answer."}]
    assert short_label(chat) == "What is 4 + 7? Answer."
    assert short_label("x" * 40) == "x" * 23 + "…" and len(short_label("y" * 40, 10)) == 10
