"""Shared cases of the ntkdyn.ntk tests (tests/test_ntk_*.py): the contexts, the tiny models, and the expensive
per-family kernels, computed once per session in a small thread pool (XLA compilation releases the GIL) and
shared by the test modules that compare against them.

A test module starts the jobs it needs from a module-scoped fixture (`start`), inside the `x64` fixture, and waits
for every job it started before that fixture restores the x64 flag (`finish`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest

import hf_models
import ntkdyn as nd
from ntkdyn import ntk

FAMILIES = list(hf_models.SPECS)
TIED = [f for f in FAMILIES if hf_models.SPECS[f][1].get("tie_word_embeddings", f == "gpt2")]
RTOL = 1e-9
# contexts: every position of row 0 (a teacher-forced sequence) and one context of row 1, as (row, pos) pairs
IDS = np.array([[5, 9, 5, 11, 9], [3, 9, 7, 3, 12]], np.int32)  # repeated tokens exercise the table terms
CTX = np.concatenate([ntk.contexts_from_mask(np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])), [[1, 3]]])
SUBSET = np.array([3, 9, 40, 96])


def rel(x, ref):
    """max |x − ref| / max |ref|."""
    x, ref = np.asarray(x), np.asarray(ref)
    return float(np.abs(x - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def f64(lm):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), lm.params)  # on the host: no compilation


def tiny(family="gpt2", tied=True, d=16, **config):
    """A small model with random parameters drawn on the host (no compilation); `config`: ModelConfig fields
    that replace the small defaults."""
    from ntkdyn.models.transformer import abstract_params
    cfg = nd.ModelConfig(**{**dict(family=family, vocab_size=hf_models.V, d_model=d, n_layers=2, n_heads=2,
                                   n_kv_heads=2, d_ff=2 * d, max_positions=32, tie_word_embeddings=tied,
                                   qkv_bias=True, out_bias=True, activation="gelu_new"), **config})
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda a: (rng.normal(0.0, 0.2, a.shape) + (a.ndim == 1)).astype(np.float32),
                          abstract_params(cfg))
    return nd.LM(cfg, params)


def family_job(path):
    """Everything the per-family tests compare, computed once (numpy arrays)."""
    lm = nd.load(path)
    params = f64(lm)
    out = {"tied": lm.config.tie_word_embeddings, "bias": "b" in params["head"], "lm": lm, "params": params}
    out["ref"] = np.asarray(ntk.full_kernel_bruteforce(lm, IDS, CTX, params))
    h = np.asarray(lm.features(IDS, params))[CTX[:, 0], CTX[:, 1]]
    out["hh"] = h @ h.T
    out["W"] = np.asarray(params["head"]["W"])
    k = ntk.decompose(lm, IDS, CTX, params=params)
    out["full"] = {f: (None if getattr(k, f) is None else np.asarray(getattr(k, f)))
                   for f in ("representation", "gradient", "cross")}
    out["full"]["total"] = np.asarray(k.total())
    out["dtype"] = (k.representation.dtype, k.gradient.dtype)
    kt = ntk.decompose(lm, IDS, CTX, params=params, output="trace")
    out["trace"] = (np.asarray(kt.gradient), None if kt.cross is None else np.asarray(kt.cross),
                    np.asarray(kt.total()))
    ks = ntk.decompose(lm, IDS, CTX, params=params, output="subset", tokens=SUBSET)
    out["subset"] = (np.asarray(ks.gradient), None if ks.cross is None else np.asarray(ks.cross),
                     np.asarray(ks.total()))
    out["hidden"] = np.asarray(ntk.hidden_kernel(lm, IDS, CTX, params=params))
    # rectangular: a = first 5 contexts (ids_a), b = last 3 given through a second token array
    ids_b = IDS.copy()
    kr = ntk.decompose(lm, IDS, CTX[:5], ids_b, CTX[3:], params=params)
    out["rect"] = np.asarray(kr.total())
    out["rep_fn"] = np.asarray(ntk.representation(lm, IDS, CTX[:5], ids_b, CTX[3:], params=params))
    if out["tied"]:
        out["ref_untied"] = np.asarray(ntk.full_kernel_bruteforce(lm, IDS, CTX, params, untied=True))
        ku = ntk.decompose(lm, IDS, CTX, params=params, untied=True)
        out["untied"] = (np.asarray(ku.total()), ku.cross)
    return out


_POOL: ThreadPoolExecutor | None = None
_FUTURES: dict = {}
_PATHS: dict = {}


def start(tmp_path_factory, families=FAMILIES, jobs=None) -> dict:
    """Submit the jobs not running yet: the per-family kernels of `families` and `jobs` (name -> fn(gpt2 future),
    extra jobs built on the GPT-2 family's result). Returns {name: result-getter} for all of them."""
    global _POOL
    jobs = jobs or {}
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2)
    families = list(families) + (["gpt2"] if jobs and "gpt2" not in families else [])
    for name in families:  # the families first: the extra jobs wait on them (FIFO queue, no deadlock)
        if name not in _PATHS:
            _PATHS[name] = hf_models.build(name, str(tmp_path_factory.mktemp(f"ntk_{name}")))[0]
        if name not in _FUTURES:
            _FUTURES[name] = _POOL.submit(family_job, _PATHS[name])
    for name, fn in jobs.items():
        if name not in _FUTURES:
            _FUTURES[name] = _POOL.submit(fn, _FUTURES["gpt2"])
    return {name: _FUTURES[name].result for name in [*families, *jobs]}


def finish() -> None:
    """Wait for every submitted job (so none runs after the x64 flag is restored)."""
    for f in list(_FUTURES.values()):
        f.exception()
