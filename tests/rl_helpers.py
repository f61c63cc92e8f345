"""Shared pieces of the ntkdyn.rl tests: one tiny SFT'd base model (built once per session, whichever test module
asks first) and one batch shape (4 prompts x 4 samples, 8 new tokens; evaluation 4 x 4), so the jit compilations
are shared between the tests."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from ntkdyn.rl import TIMING_KEYS

# the shared small shape and settings (num_iterations=2 and beta>0 exercise the clipped ratio and the KL path)
SMALL = dict(task="sum", group_size=4, prompts_per_step=4, max_new_tokens=8, eval_prompts=4, eval_samples=4,
             eval_every=3, probe_every=2, probe_prompts=4, checkpoint_every=0, lr=3e-3, num_iterations=2, beta=0.01)

_BUILT: dict = {}


def random_batch(rng, B=3, Tp=4, N=5, V=97):
    """A rollout batch in objectives' layout for update tests: B left-padded prompts of Tp random ids (the first
    padded by 2), B completions of N random ids (the second masked after 3 tokens), normal advantages."""
    prompt = rng.integers(3, V, (B, Tp)).astype(np.int32)
    pmask = np.ones((B, Tp), np.int32)
    pmask[0, :2] = 0  # a left-padded prompt
    completion = rng.integers(3, V, (B, N)).astype(np.int32)
    mask = np.ones((B, N), np.float32)
    mask[1, 3:] = 0
    return dict(prompt_ids=prompt, prompt_mask=pmask, completion=completion, mask=mask,
                adv=rng.normal(size=B).astype(np.float32))


def easy_reward(prompt, text):
    """An easy, learnable reward on "sum" completions: the answer starts with the digit 1 (~15% under the base)."""
    return 1.0 if text.startswith("1") else 0.0


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_records_close(a, b, rtol=1e-5, atol=1e-6):
    """Two runs' metrics records equal but for timing: floats and lists of numbers (pass@k curves) to rtol / atol
    (float rounding of two programs that compute the same step), everything else exactly."""
    a, b = strip_timing(a), strip_timing(b)
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b):
        assert x.keys() == y.keys(), (x["step"], sorted(set(x) ^ set(y)))
        for k, v in x.items():
            if isinstance(v, float) or (isinstance(v, list) and all(isinstance(e, (int, float)) for e in v)):
                np.testing.assert_allclose(y[k], v, rtol=rtol, atol=atol, err_msg=f"step {x['step']} {k}")
            else:
                assert y[k] == v, (x["step"], k)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny base model SFT'd on "sum" (built once per test session)."""
    from ntkdyn import sft

    if "base" not in _BUILT:
        d = str(tmp_path_factory.mktemp("rl") / "base")
        sft.train("sum", d, size="tiny", steps=150, progress=False, eval_prompts=0)
        _BUILT["base"] = d
    return _BUILT["base"]
