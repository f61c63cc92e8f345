"""ntkdyn.experiments.features: the sampled contexts (padding, masks) and the feature table's labels."""
from types import SimpleNamespace

import numpy as np

from ntkdyn.experiments import features as F
from ntkdyn.models.tokenizer import CharTokenizer


class _FakeLM:
    """Samples fixed completions: row i gets i + 1 tokens 'a' (the mask marks them), padded to 4 columns."""

    def __init__(self):
        self.tokenizer = CharTokenizer()
        self.calls = []

    def generate(self, rows, max_new_tokens, temperature, seed):
        self.calls.append((rows, max_new_tokens, temperature, seed))
        a = self.tokenizer.encode("a")[0]
        tokens = np.full((len(rows), 4), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(rows), 4), np.int32)
        for i in range(len(rows)):
            tokens[i, :i + 1] = a
            mask[i, :i + 1] = 1
        return SimpleNamespace(tokens=tokens, mask=mask)


class _Task:
    def prompts(self, split, n, seed):
        assert split == "test"
        return ["1+2=", "10+20="][:n]


def test_sample_contexts():
    lm = _FakeLM()
    prompts, ids, pmask, cmask = F.sample_contexts(lm, _Task(), 2, seed=5, max_new_tokens=4)
    tok = lm.tokenizer
    assert prompts == ["1+2=", "10+20="]
    rows = [[tok.bos_id] + tok.encode(p) for p in prompts]
    assert lm.calls == [(rows, 4, 1.0, 5)]
    assert ids.dtype == pmask.dtype == cmask.dtype == np.int32
    assert ids.shape == (2, len(rows[1]) + 2)
    a = tok.encode("a")[0]
    for i, r in enumerate(rows):
        seq = r + [a] * (i + 1)
        np.testing.assert_array_equal(ids[i, :len(seq)], seq)
        assert (ids[i, len(seq):] == tok.pad_id).all()
        np.testing.assert_array_equal(np.nonzero(pmask[i])[0], np.arange(len(r)))
        np.testing.assert_array_equal(np.nonzero(cmask[i])[0], np.arange(len(r), len(seq)))


def test_feature_table_labels():
    stats = {k: float(i) for i, k in enumerate(F.FEATURE_LABELS)}
    table = F.feature_table(stats)
    assert list(table) == ["cos, prompts (last prompt token)", "cos, prompts (mean over tokens)",
                           "cos, positions (same sequence)", "s = h·h' mean", "s = h·h' std/|mean|",
                           "effective rank of h / d"]
    assert list(table.values()) == list(stats.values())
