"""Tests for ntkdyn.ntk: the fast decomposed eNTK against the brute-force jax.jacrev kernel, in float64.

Every family of tests/hf_models.SPECS (tiny random Hugging Face models) is checked: Θ = R⊗I + G (+ X) equals
the brute-force kernel, the untied view equals the brute-force kernel of the model with a cloned head, and the
trace / subset / hidden / rectangular / (row, position)-pair forms agree with the full one. The per-family work is
dominated by XLA compilation, so it runs in a small thread pool (compilation releases the GIL) started once for
the module; each test waits for its family's result.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
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


def _rel(x, ref):
    x, ref = np.asarray(x), np.asarray(ref)
    return float(np.abs(x - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", autouse=True)
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _f64(lm):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), lm.params)  # on the host: no compilation


def _family_job(path):
    """Everything the per-family tests compare, computed once (numpy arrays)."""
    lm = nd.load(path)
    params = _f64(lm)
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


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("ntk_models")
    return {name: hf_models.build(name, str(root))[0] for name in FAMILIES}


@pytest.fixture(scope="module")
def results(model_paths):
    """All heavy work, started at once: the 4-device subprocess, and a 2-thread pool for the per-family jobs,
    the Hutchinson job and the chunking job. Tests wait for the result they check."""
    proc = _start_sharded()
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(_family_job, model_paths[name]) for name in FAMILIES}
    # these reuse the GPT-2 job's model object (jit caches are keyed on it) and its exact kernels
    futures["hutchinson"] = pool.submit(_hutchinson_job, futures["gpt2"])
    futures["chunking"] = pool.submit(_chunking_job, futures["gpt2"])
    out = {name: f.result for name, f in futures.items()}
    out["sharded"] = lambda: proc.communicate(timeout=600)[0], proc
    yield out
    pool.shutdown(wait=True, cancel_futures=True)
    if proc.poll() is None:
        proc.kill()


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
    assert _rel(full["total"], ref) < RTOL
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
    assert _rel(total, r["ref_untied"]) < RTOL
    # the same G in both views: tied Θ − X = untied Θ
    assert _rel(r["full"]["total"] - r["full"]["cross"], total) < RTOL


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
    assert _rel(r["rect"], r["full"]["total"][:5, 3:]) < RTOL
    np.testing.assert_allclose(r["rep_fn"], r["full"]["representation"][:5, 3:], rtol=1e-12)


# ----------------------------------------------------------------------------------------------- Hutchinson
def _hutchinson_job(gpt2):
    r = gpt2.result()  # GPT-2: tied (cross term) and learned positions
    k = ntk.decompose(r["lm"], IDS, CTX, params=r["params"], output="hutchinson", num_probes=256, seed=1)
    return r["full"], k


def test_hutchinson_within_standard_errors(results):
    """Probe estimates of tr G, ‖G‖_F² (and of the tied X) agree with the exact values within 3 standard errors.
    (Deterministic: fixed seed. The probes are shared by all pairs, so the pairs' errors are correlated.)"""
    exact, k = results["hutchinson"]()
    assert k.output == "hutchinson" and k.gradient.num_probes == 256
    assert k.gradient.trace.shape == (len(CTX), len(CTX))
    np.testing.assert_allclose(k.representation, exact["representation"], rtol=1e-12)
    for est, K in ((k.gradient, exact["gradient"]), (k.cross, exact["cross"])):
        for val, se, ref in ((est.trace, est.trace_se, np.trace(K, axis1=2, axis2=3)),
                             (est.fro2, est.fro2_se, np.sum(np.asarray(K) ** 2, axis=(2, 3)))):
            val, se = np.asarray(val), np.asarray(se)
            assert np.all(se > 0)
            assert np.all(np.abs(val - ref) <= 3 * se), (np.abs(val - ref) / se)


# ----------------------------------------------------------------------------------------------- chunking, memory
def _tiny(family="gpt2", tied=True, d=16):
    """A small model with random parameters drawn on the host (no compilation)."""
    from ntkdyn.models.transformer import abstract_params
    cfg = nd.ModelConfig(family=family, vocab_size=hf_models.V, d_model=d, n_layers=2, n_heads=2, n_kv_heads=2,
                         d_ff=2 * d, max_positions=32, tie_word_embeddings=tied, qkv_bias=True, out_bias=True,
                         activation="gelu_new")
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda a: (rng.normal(0.0, 0.2, a.shape) + (a.ndim == 1)).astype(np.float32),
                          abstract_params(cfg))
    return nd.LM(cfg, params)


def _chunking_job(gpt2):
    r = gpt2.result()
    lm, params = r["lm"], r["params"]
    leaves = [int(x.size) for x in jax.tree.leaves(ntk._split(lm, params).psi)]
    d, T = lm.config.d_model, 5
    budget = 2 * d * (sum(leaves) + T * d) * 8 - 1  # one context's J_h (d × P float64) does not fit twice
    plan = ntk._plan(len(CTX), d, T, leaves, 8, budget, None, lm.config.d_ff, 1)  # as decompose plans it
    small = ntk.decompose(lm, IDS, CTX, params=params, output="trace", memory_budget=budget)
    chunked = ntk.decompose(lm, IDS, CTX, params=params, output="trace", batch_size=2)
    return r["trace"], plan, small, chunked


def test_parameter_groups_context_blocks_and_chunks_are_exact(results):
    """A tiny memory budget splits the parameters into groups and the contexts into blocks that are recomputed;
    batch_size=2 computes a block in padded chunks: both equal the one-block run."""
    (trG, trX, total), (compute, plan), small, chunked = results["chunking"]()
    assert len(plan) == 2 and compute == 1 and all(k == 1 for _, _, k in plan)
    for k in (small, chunked):
        assert _rel(k.gradient, trG) < 1e-12 and _rel(k.cross, trX) < 1e-12 and _rel(k.total(), total) < 1e-12


def test_default_plan_bounds_memory_of_a_large_kernel():
    """256 contexts of a ~2M-parameter model: the Jacobian blocks held at once stay within the budget (1 GiB),
    far below 4 GB, while a single block of all contexts would need ~0.5 TB."""
    d, T, itemsize = 128, 64, 4
    leaves = ([d * d] * 4 + [4 * d * d] * 2 + [d] * 4) * 10  # 10 layers: ~2.0M parameters
    assert 1.9e6 < sum(leaves) < 2.1e6
    compute, plan = ntk._plan(256, d, T, leaves, itemsize, ntk.DEFAULT_MEMORY_BUDGET, None, 4 * d, 1)
    for group, with_x, k in plan:
        S = sum(leaves[i] for i in group) + (T * d if with_x else 0)
        held = 2 * k * compute * d * S * itemsize  # an a-block and a b-block of J_h
        inter = compute * d * T * 4 * 4 * d * itemsize  # activation cotangents of one vmapped chunk
        assert held + inter <= ntk.DEFAULT_MEMORY_BUDGET * 1.5 < 4e9


# ----------------------------------------------------------------------------------------------- sharding
SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import ntkdyn as nd
    from ntkdyn import ntk
    assert len(jax.devices()) == 4, jax.devices()
    cfg = nd.ModelConfig(family="gpt2", vocab_size=97, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=32,
                         max_positions=32, tie_word_embeddings=True, qkv_bias=True, out_bias=True,
                         activation="gelu_new")
    rng = np.random.default_rng(1)
    from ntkdyn.models.transformer import abstract_params
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.2, a.shape) + (a.ndim == 1), abstract_params(cfg))
    lm = nd.LM(cfg, params)
    ids = np.array([[5, 9, 5, 11, 9, 4], [3, 9, 7, 3, 12, 5]], np.int32)
    ctx = ntk.contexts_from_mask(np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 1]]))   # 8 contexts
    mesh = jax.make_mesh((4,), ("ctx",))
    worst = 0.0
    for out in ("full", "trace"):
        one = ntk.decompose(lm, ids, ctx, params=params, output=out)
        many = ntk.decompose(lm, ids, ctx, params=params, output=out, mesh=mesh)
        for x, y in zip(jax.tree.leaves((one.representation, one.gradient, one.cross)),
                        jax.tree.leaves((many.representation, many.gradient, many.cross))):
            x, y = np.asarray(x), np.asarray(y)
            worst = max(worst, float(np.abs(x - y).max() / np.abs(x).max()))
    print("max rel diff sharded vs single", worst)
    assert worst < 1e-10, worst
    print("OK")
""")


def _start_sharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-c", SHARDED], env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sharded_over_four_devices_equals_single_device(results):
    wait, proc = results["sharded"]
    out = wait()
    print(out)
    assert proc.returncode == 0, out
    assert "OK" in out


# ----------------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def tiny():
    return _tiny(d=16)


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
    (dict(ids_a=np.full((2, 6), 97)), r"ids_a holds token id\(s\) \[97\] outside the vocabulary \[0, 97\)"),
    (dict(ids_a=np.zeros((2, 40), np.int32)), r"more than the model's max_positions=32"),
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
])
def test_errors(tiny, kwargs, message):
    args = dict(ids_a=np.zeros((2, 6), np.int32), pos_a=[5, 5])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ntk.decompose(tiny, args.pop("ids_a"), args.pop("pos_a"), args.pop("ids_b", None), args.pop("pos_b", None),
                      **args)


def test_errors_of_helpers(tiny):
    with pytest.raises(ValueError, match=r"mask must be 2-D"):
        ntk.contexts_from_mask(np.ones(3))
    with pytest.raises(ValueError, match=r"pos_pairs holds position\(s\) \[6\]"):
        ntk.full_kernel_bruteforce(tiny, np.zeros((1, 6), np.int32), [[0, 6]])
    k = ntk.Kernel(representation=np.zeros((1, 1)), gradient=np.zeros((1, 1, 2, 2)), cross=None, output="hidden",
                   vocab_size=97)
    with pytest.raises(ValueError, match=r"Kernel.total\(\) needs output 'full', 'subset' or 'trace'"):
        k.total()


def test_contexts_from_mask():
    m = np.array([[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(ntk.contexts_from_mask(m), [[0, 1], [0, 2], [1, 0]])
