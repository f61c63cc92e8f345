"""Tests for ntkdyn.ntk.api (decompose, representation, hidden_kernel): the fast decomposed eNTK against the
brute-force jax.jacrev kernel, in float64.

Two families of tests/hf_models.SPECS (tiny random Hugging Face models loaded from their directories) are checked
through the public API with its default method: GPT-2 (tied head, biases, learned positions) and Llama with GQA
(untied). Every family's arithmetic is checked in tests/test_ntk_structured.py (the default method, forced into small
chunks, and the Jacobian method, each against the brute force); here the point is the API around it. Θ = R⊗I + G
(+ X) equals the brute-force kernel, the untied view equals the brute-force kernel of the model with a cloned head, and the
trace / subset / hidden / rectangular / (row, position)-pair forms agree with the full one. The per-family work is
dominated by XLA compilation, so it runs in a small thread pool (tests/ntk_cases.py) started once for the module;
each test waits for its family's result.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import hf_models
import ntk_cases
from ntk_cases import CTX, IDS, RTOL, SUBSET, TIED, rel, x64  # noqa: F401 (x64: a fixture)
import ntkdyn as nd
from ntkdyn import ntk

FAMILIES = ["gpt2", "llama_gqa"]
TIED = [f for f in FAMILIES if f in TIED]


@pytest.fixture(scope="module")
def results(x64, tmp_path_factory):  # noqa: F811
    yield ntk_cases.start(tmp_path_factory, FAMILIES)
    ntk_cases.finish()


# ----------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("family", FAMILIES)
def test_full_kernel_matches_bruteforce(results, family):
    r = results[family]()
    ref, full = r["ref"], r["full"]
    assert r["dtype"] == (jnp.float64, jnp.float64)
    N, V = len(CTX), hf_models.V
    assert full["gradient"].shape == (N, N, V, V) and full["representation"].shape == (N, N)
    # R = (h·h' [+1]) ⊗ I from the features alone
    np.testing.assert_allclose(full["representation"], r["hh"] + (1.0 if r["bias"] else 0.0), rtol=1e-12)
    # Θ = R⊗I + G (+ X) against jacrev of the logits w.r.t. the whole params pytree
    assert rel(full["total"], ref) < RTOL
    if r["tied"]:
        assert full["cross"] is not None and full["cross"].shape == (N, N, V, V)
        assert np.abs(full["cross"]).max() > 1e-3 * np.abs(ref).max()  # the cross term is really there
        # X is nonzero only in the columns of the tokens present in context c (and rows of c')
        absent = np.setdiff1d(np.arange(V), IDS.ravel())
        assert np.abs(full["cross"][:, :, absent][:, :, :, absent]).max() == 0.0
        np.testing.assert_allclose(full["cross"], np.swapaxes(np.swapaxes(full["cross"], 0, 1), 2, 3),
                                   atol=1e-12 * np.abs(ref).max())  # X(c, c') = X(c', c)ᵀ
    else:
        assert full["cross"] is None


@pytest.mark.parametrize("family", TIED)
def test_untied_view_matches_cloned_head_bruteforce(results, family):
    r = results[family]()
    total, cross = r["untied"]
    assert cross is None
    assert rel(total, r["ref_untied"]) < RTOL
    # the same G in both views: tied Θ − X = untied Θ
    assert rel(r["full"]["total"] - r["full"]["cross"], total) < RTOL


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_subset_hidden_consistent_with_full(results, family):
    r = results[family]()
    G, X = r["full"]["gradient"], r["full"]["cross"]
    trG, trX, trT = r["trace"]
    assert trG.shape == (len(CTX), len(CTX))
    np.testing.assert_allclose(trG, np.trace(G, axis1=2, axis2=3), rtol=RTOL, atol=RTOL * np.abs(trG).max())
    np.testing.assert_allclose(trT, np.trace(r["ref"], axis1=2, axis2=3), rtol=RTOL)
    if X is not None:
        np.testing.assert_allclose(trX, np.trace(X, axis1=2, axis2=3), atol=RTOL * np.abs(trT).max())
    GS, XS, TS = r["subset"]
    sub = np.ix_(range(len(CTX)), range(len(CTX)), SUBSET, SUBSET)
    assert GS.shape == (len(CTX), len(CTX), len(SUBSET), len(SUBSET))
    np.testing.assert_allclose(GS, G[sub], atol=RTOL * np.abs(G).max())
    np.testing.assert_allclose(TS, r["ref"][sub], atol=RTOL * np.abs(r["ref"]).max())
    if X is not None:
        np.testing.assert_allclose(XS, X[sub], atol=RTOL * np.abs(G).max())
    M, W = r["hidden"], r["W"]
    d = W.shape[1]
    assert M.shape == (len(CTX), len(CTX), d, d)
    np.testing.assert_allclose(np.einsum("vk,abkl,wl->abvw", W, M, W), G, atol=RTOL * np.abs(G).max())
    np.testing.assert_allclose(M, np.swapaxes(np.swapaxes(M, 0, 1), 2, 3), atol=RTOL * np.abs(M).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_rectangular_kernel(results, family):
    r = results[family]()
    assert r["rect"].shape[:2] == (5, 3)
    assert rel(r["rect"], r["full"]["total"][:5, 3:]) < RTOL
    np.testing.assert_allclose(r["rep_fn"], r["full"]["representation"][:5, 3:], rtol=1e-12)


# ----------------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def tiny():
    return ntk_cases.tiny(d=16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(pos_a=[6, 0]), r"pos_a holds position\(s\) \[6\] outside \[0, 6\)"),
    (dict(pos_a=[-1, 0]), r"pos_a holds position\(s\) \[-1\] outside"),
    (dict(pos_a=[1, 2, 3]), r"pos_a has 3 positions but ids_a has 2 rows"),
    (dict(pos_a=[[0, 1], [2, 1]]), r"pos_a \(row, position\) pairs name row\(s\) \[2\] outside \[0, 2\)"),
    (dict(pos_a=[[0, 1], [1, 7]]), r"pos_a holds position\(s\) \[7\]"),
    (dict(pos_a=np.zeros((2, 3), int)), r"pos_a must have shape \(N,\).*or \(N, 2\)"),
    (dict(pos_a=[0.5, 1.0]), r"pos_a must hold integer positions"),
    (dict(ids_a=np.zeros((2, 6), np.float32)), r"ids_a must hold integer token ids"),
    (dict(ids_a=np.zeros((6,), np.int32)), r"ids_a must be a 2-D"),
    (dict(ids_a=np.full((2, 6), 97)), r"ids_a holds token id\(s\) \[97\] out of vocabulary \[0, 97\)"),
    (dict(ids_a=np.zeros((2, 40), np.int32)), r"longer than the model's max_positions=32"),
    (dict(ids_b=np.zeros((1, 6), np.int32)), r"pos_b is required when ids_b is given"),
    (dict(ids_b=np.zeros((1, 6), np.int32), pos_b=[1, 2]), r"pos_b has 2 positions but ids_b has 1 rows"),
    (dict(pos_b=[[0, 9]]), r"pos_b holds position\(s\) \[9\]"),
    (dict(output="diagonal"), r"unknown output 'diagonal'; expected one of full, trace, subset, hidden, hutchinson"),
    (dict(output="subset"), r"output='subset' needs tokens=S"),
    (dict(output="subset", tokens=[1, 97]), r"tokens holds id\(s\) \[97\] outside the vocabulary \[0, 97\)"),
    (dict(output="subset", tokens=[[1, 2]]), r"tokens must be a non-empty 1-D array of integer token ids"),
    (dict(output="subset", tokens=[]), r"tokens must be a non-empty 1-D array"),
    (dict(output="trace", tokens=[1]), r"tokens is only used with output='subset'"),
    (dict(batch_size=0), r"batch_size must be a positive integer"),
    (dict(output="hutchinson", num_probes=1), r"num_probes must be an integer >= 2"),
    (dict(mesh="cpu"), r"mesh must be a jax.sharding.Mesh or None"),
    (dict(method="exact"), r"unknown method 'exact'; expected one of auto, jacobian, structured"),
    (dict(chunk=0), r"chunk must be a positive integer"),
    (dict(chunk=4, method="jacobian"), r"chunk= is an option of method='structured'"),
    (dict(method="structured", mesh=object()), r"mesh must be a jax.sharding.Mesh or None; got object"),
])
def test_errors(tiny, kwargs, message):
    args = dict(ids_a=np.zeros((2, 6), np.int32), pos_a=[5, 5])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ntk.decompose(tiny, args.pop("ids_a"), args.pop("pos_a"), args.pop("ids_b", None), args.pop("pos_b", None),
                      **args)


def test_soft_capped_logits_are_refused(tmp_path):
    """Final-logit soft-capping (Gemma-2-style) makes the head nonlinear: the eNTK split and the one-step split
    refuse such a model with a message naming the setting."""
    from ntkdyn import dynamics

    lm = nd.load(hf_models.build("gemma3_softcap", str(tmp_path))[0])
    ids = np.array([[3, 4, 5]], np.int32)
    with pytest.raises(ValueError, match="final_logit_softcapping=3.0"):
        ntk.decompose(lm, ids, [2])
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        dynamics.split_update(lm, lm.params, lm.params, ids, [2])
