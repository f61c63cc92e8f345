"""Tests for ntkdyn.ntk.methods.structured and structured_probes (and the Taps of models/transformer.py): exact eNTK
blocks from structured derivatives, in float64, against an independent brute-force jax.jacrev of the logits (one
context at a time, V = 41 cotangents) and against the Jacobian method; the probe estimates against the Jacobian
method's.

Tiny random models of every family: GPT-2 (tied, learned positions, biases), GPT-NeoX parallel and sequential
(partial rotary, biases), Llama with GQA (untied and tied), Qwen2 (qkv bias), Qwen3 (q/k norms, a sliding layer),
Gemma 3 (tied, √d embedding scale, (1 + w) norms, four norms per block, q/k norms, sliding and global layers). Chunks of 5 cotangents (d = 16: four
chunks, the last one padded) and blocks of 4 contexts (6 contexts: two blocks, padded) make every loop run several
times. The mesh test runs the method on 4 forced CPU devices in a subprocess, against one device.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import ntk
from ntkdyn.models.transformer import EMBED, Taps, apply_head, features, graphdef_for, init_params

V, D = 41, 16
TOL = 1e-10
IDS = np.array([[5, 9, 5, 11, 9], [3, 9, 7, 3, 12]], np.int32)  # repeated tokens exercise the table terms
CTX = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 3]], np.int32)
IDS_B = np.array([[7, 9, 5, 2, 11, 4, 8]], np.int32)  # rectangular kernels: b contexts in another array
CTX_B = np.array([[0, 6], [0, 2], [0, 4]], np.int32)
SMALL_S = np.array([3, 9, 40, 11])  # |S| <= d: the rows of W_S are the cotangents
LARGE_S = np.arange(20, 1, -1)  # |S| > d: M first, then W_S M W_Sᵀ
FORCE = dict(chunk=5, batch_size=4)

FAMILIES = {
    "gpt2": dict(family="gpt2", tie_word_embeddings=True, qkv_bias=True, out_bias=True, activation="gelu_new"),
    "neox_parallel": dict(family="gpt_neox", n_heads=2, n_kv_heads=2, qkv_bias=True, out_bias=True,
                          rotary_pct=0.25, parallel_residual=True),
    "neox_sequential": dict(family="gpt_neox", n_heads=2, n_kv_heads=2, qkv_bias=True, out_bias=True,
                            rotary_pct=0.5),
    "llama_gqa": dict(family="llama", n_kv_heads=2, activation="silu"),
    "llama_tied": dict(family="llama", tie_word_embeddings=True, activation="silu"),
    "qwen2": dict(family="llama", n_kv_heads=2, qkv_bias=True, activation="silu"),
    "qwen3": dict(family="llama", model_type="qwen3", n_kv_heads=2, head_dim=8, qk_norm=True, activation="silu",
                  sliding_window=3, layer_types=("full_attention", "sliding_attention")),
    "gemma3": dict(family="gemma3", model_type="gemma3_text", n_kv_heads=2, head_dim=8, qk_norm=True,
                   tie_word_embeddings=True, activation="gelu_pytorch_tanh", query_pre_attn_scalar=6.0,
                   sliding_window=2, layer_types=("sliding_attention", "full_attention"), rope_theta=1e6,
                   rope_local_theta=1e4),
}


@pytest.fixture(scope="module", autouse=True)
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _rel(x, ref):
    x, ref = np.asarray(x), np.asarray(ref)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    return float(np.abs(x - ref).max() / np.abs(ref).max())


@functools.lru_cache(maxsize=None)
def _model(name):
    """A tiny model with float64 parameters drawn on the host: weights N(0, 0.15²), norm scales near 1, biases."""
    kw = dict(vocab_size=V, d_model=D, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=24, max_positions=32)
    cfg = nd.ModelConfig(**{**kw, **FAMILIES[name]})
    graphdef, params = init_params(cfg, 0)
    rng = np.random.default_rng(sorted(FAMILIES).index(name))

    def draw(path, x):
        key = path[-1].key
        if key == "scale":
            return 1.0 + 0.1 * rng.standard_normal(x.shape)
        return (0.1 if key == "bias" else 0.15) * rng.standard_normal(x.shape)

    params = jax.tree_util.tree_map_with_path(draw, params)
    if "b" not in params["head"] and name == "neox_sequential":
        params["head"]["b"] = 0.1 * rng.standard_normal(V)  # a head bias: s = h·h' + 1
    return cfg, graphdef_for(cfg), params


# ----------------------------------------------------------------------------------------------- references
@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "untied"))
def _jac(graphdef, cfg, untied, theta, ids, row, pos):
    """∂z(c)/∂θ (V, P) of one context by jax.jacrev (V = 41 cotangents); untied: the table cloned (input copy
    'table_in' separate from the head)."""

    def z(th):
        inner = {"backbone": th["backbone"], "head": {"W": th["table_in"]} if untied else th["head"]}
        return apply_head(th["head"], features(graphdef, cfg, inner, ids[row][None])[0][0])[pos]

    J = jax.jacrev(z)(theta)
    return jnp.concatenate([j.reshape(cfg.vocab_size, -1) for j in jax.tree.leaves(J)], axis=1)


@functools.lru_cache(maxsize=None)
def _reference(name, untied=False):
    """Θ (N, N, V, V) on (IDS, CTX) and Θ (Na, Nb, V, V) between CTX[:5] and (IDS_B, CTX_B), brute force."""
    cfg, graphdef, params = _model(name)
    theta = {**params, "table_in": params["head"]["W"]} if untied else params
    Ja = np.stack([_jac(graphdef, cfg, untied, theta, IDS, r, p) for r, p in CTX])
    Jb = np.stack([_jac(graphdef, cfg, untied, theta, IDS_B, r, p) for r, p in CTX_B])
    return np.einsum("avp,bwp->abvw", Ja, Ja), np.einsum("avp,bwp->abvw", Ja[:5], Jb)


def _total(k):
    t = k.representation[:, :, None, None] * np.eye(V) + np.asarray(k.gradient)
    return t if k.cross is None else t + np.asarray(k.cross)


def _kernel(name, output="full", rect=False, **kw):
    """decompose(method="structured") with small chunks and blocks (FORCE, unless overridden)."""
    cfg, graphdef, params = _model(name)
    lm = nd.LM(cfg, params, graphdef=graphdef)
    b = (IDS_B, CTX_B) if rect else ()
    return ntk.decompose(lm, IDS, CTX[:5] if rect else CTX, *b, params=params, output=output, method="structured",
                         **{**FORCE, **kw})


# ----------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", list(FAMILIES))
def test_full_kernel_matches_bruteforce(name):
    cfg = _model(name)[0]
    ref, ref_rect = _reference(name)
    k = _kernel(name)
    assert k.gradient.dtype == jnp.float64 and k.gradient.shape == (6, 6, V, V)
    assert k.plan.detail.n_chunks == 4 and k.plan.detail.blocks_a == 2 and k.plan.sweeps > k.plan.detail.n_chunks
    assert _rel(_total(k), ref) < TOL
    assert (k.cross is not None) == cfg.tie_word_embeddings
    kr = _kernel(name, rect=True)
    assert kr.gradient.shape == (5, 3, V, V) and _rel(_total(kr), ref_rect) < TOL
    if cfg.tie_word_embeddings:  # the untied view: same G, no X, equal to the cloned-table brute force
        ku = _kernel(name, untied=True)
        assert ku.cross is None
        assert _rel(_total(ku), _reference(name, untied=True)[0]) < TOL
        np.testing.assert_allclose(ku.gradient, k.gradient, rtol=0, atol=TOL * np.abs(ref).max())


# the output forms and the Jacobian method are family-agnostic code around the per-family derivatives that
# test_full_kernel_matches_bruteforce checks on every family: a tied head with biases and learned positions (gpt2),
# an untied one with biases and partial rotary (neox_parallel), GQA (llama_gqa) and the scaled tied embedding with
# four norms per block (gemma3) cover their branches
FORMS = ["gpt2", "neox_parallel", "llama_gqa", "gemma3"]


@pytest.mark.parametrize("name", FORMS)
def test_trace_subset_hidden_match_full_and_decompose(name):
    cfg, graphdef, params = _model(name)
    lm = nd.LM(cfg, params, graphdef=graphdef)
    full = _kernel(name)
    G, X = np.asarray(full.gradient), full.cross
    for out, kw, take in (("trace", {}, lambda K: np.trace(K, axis1=2, axis2=3)),
                          ("subset", dict(tokens=SMALL_S), lambda K: K[:, :, SMALL_S][:, :, :, SMALL_S]),
                          ("subset", dict(tokens=LARGE_S), lambda K: K[:, :, LARGE_S][:, :, :, LARGE_S])):
        k = _kernel(name, out, **kw)
        assert _rel(k.gradient, take(G)) < TOL
        ref = ntk.decompose(lm, IDS, CTX, params=params, output=out, **kw)
        assert _rel(k.gradient, ref.gradient) < TOL
        np.testing.assert_allclose(k.representation, ref.representation, rtol=1e-12)
        if X is None:
            assert k.cross is None and ref.cross is None
        else:
            assert _rel(k.cross, take(np.asarray(X))) < TOL and _rel(k.cross, ref.cross) < TOL
    assert _kernel(name, "subset", tokens=SMALL_S).plan.detail.basis == "subset"
    assert _kernel(name, "subset", tokens=LARGE_S).plan.detail.basis == "identity"
    M = _kernel(name, "hidden")
    assert M.cross is None and M.gradient.shape == (6, 6, D, D)
    W = np.asarray(params["head"]["W"])
    assert _rel(np.einsum("vk,abkl,wl->abvw", W, M.gradient, W), G) < TOL
    assert _rel(M.gradient, ntk.hidden_kernel(lm, IDS, CTX, params=params)) < TOL


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_rectangular_trace_and_budget_plans(name):
    """Rectangular traces (for a tied head, the cross rows W[id_t] follow L's rows in the last chunks, on both
    sides); plans chosen by the memory budget alone give the same numbers."""
    _, ref_rect = _reference(name)
    k = _kernel(name, "trace", rect=True)
    full = _kernel(name, rect=True)
    assert _rel(k.gradient, np.trace(np.asarray(full.gradient), axis1=2, axis2=3)) < TOL
    if full.cross is not None:
        # 16 rows of L, then W[id_t] for t < max(5, 7)
        assert k.plan.detail.cross_rows == 7 and k.plan.detail.n_chunks == 5
        assert _rel(k.cross, np.trace(np.asarray(full.cross), axis1=2, axis2=3)) < TOL
    np.testing.assert_allclose(np.trace(_total(full), axis1=2, axis2=3), np.trace(ref_rect, axis1=2, axis2=3),
                               rtol=TOL)
    for budget in (1 << 30, 600_000):
        kb = _kernel(name, "trace", chunk=None, batch_size=None, memory_budget=budget)
        if budget < 1 << 20:
            assert kb.plan.sweeps > 1 and kb.plan.predicted_bytes <= budget
        else:
            assert kb.plan.sweeps == 1 and kb.plan.detail.n_chunks == 1 and kb.plan.detail.blocks_a == 1
        assert _rel(kb.gradient, _kernel(name, "trace").gradient) < TOL


# ----------------------------------------------------------------------------------------------- through decompose
@pytest.mark.parametrize("name", FORMS)
def test_decompose_forced_structured_matches_jacobian_and_bruteforce(name):
    """ntk.decompose(method="structured") with small chunks and blocks (every loop runs several times) equals the
    brute force and the Jacobian method, square, rectangular, untied; the plan says what ran."""
    cfg, graphdef, params = _model(name)
    lm = nd.LM(cfg, params, graphdef=graphdef)
    ref, ref_rect = _reference(name)
    force = dict(method="structured", chunk=5, batch_size=4)
    ks = ntk.decompose(lm, IDS, CTX, params=params, **force)
    assert ks.plan.method == "structured" and ks.plan.chunk == 5 and ks.plan.sweeps > ks.plan.detail.n_chunks > 1
    assert ks.gradient.dtype == jnp.float64 and _rel(_total(ks), ref) < TOL
    kj = ntk.decompose(lm, IDS, CTX, params=params, method="jacobian", batch_size=4)
    assert kj.plan.method == "jacobian" and kj.plan.chunk == 4
    assert _rel(ks.gradient, kj.gradient) < TOL and (ks.cross is None) == (kj.cross is None)
    if ks.cross is not None:
        assert _rel(ks.cross, kj.cross) < TOL
    kr = ntk.decompose(lm, IDS, CTX[:5], IDS_B, CTX_B, params=params, output="trace", **force)
    np.testing.assert_allclose(kr.total(), np.trace(ref_rect, axis1=2, axis2=3), rtol=TOL)
    M = ntk.hidden_kernel(lm, IDS, CTX, params=params, **force)
    assert _rel(M, ntk.hidden_kernel(lm, IDS, CTX, params=params, method="jacobian")) < TOL
    if cfg.tie_word_embeddings:
        ku = ntk.decompose(lm, IDS, CTX, params=params, untied=True, **force)
        assert ku.cross is None and _rel(_total(ku), _reference(name, untied=True)[0]) < TOL


@pytest.mark.parametrize("name", ["gpt2", "llama_tied", "neox_parallel"])
def test_structured_hutchinson_equals_jacobian_hutchinson(name):
    """Same probes (seed): the structured estimator (VJPs kept as Dense cotangents, JVPs through the taps) gives
    the Jacobian estimator's numbers, standard errors included, with probes and b contexts chunked."""
    cfg, graphdef, params = _model(name)
    lm = nd.LM(cfg, params, graphdef=graphdef)
    kw = dict(params=params, output="hutchinson", num_probes=7, seed=2)
    kj = ntk.decompose(lm, IDS, CTX[:5], IDS_B, CTX_B, method="jacobian", **kw)
    ks = ntk.decompose(lm, IDS, CTX[:5], IDS_B, CTX_B, method="structured", chunk=3, batch_size=2, **kw)
    assert ks.plan.method == "structured" and ks.plan.sweeps == 2 * 3 and kj.plan.method == "jacobian"
    # s = h(a)·h(b) now comes out of the structured programs (b blocks of 2, the last one padded): lm.features'
    assert ks.representation.shape == (5, len(CTX_B)) and _rel(ks.representation, kj.representation) < TOL
    for est_s, est_j in ((ks.gradient, kj.gradient), (ks.cross, kj.cross)):
        if est_j is None:
            assert est_s is None
            continue
        for f in ("trace", "trace_se", "fro2", "fro2_se"):
            assert _rel(getattr(est_s, f), getattr(est_j, f)) < TOL, f


# ----------------------------------------------------------------------------------------------- taps, plans
def test_taps_default_path_unchanged_and_weight_gradients():
    """Zero taps change no number; the VJP w.r.t. the taps gives δ with Σ_t u_t δ_tᵀ = the kernel gradient."""
    cfg, graphdef, params = _model("qwen2")
    ids = jnp.asarray(IDS)
    h = features(graphdef, cfg, params, ids)[0]
    rec = Taps()
    np.testing.assert_array_equal(features(graphdef, cfg, params, ids, taps=rec)[0], h)
    shapes = {k: v.shape for k, v in rec.inputs_BxTxN.items()}
    assert shapes[("layers", 1, "mlp", "down")] == (2, 5, 24) and rec.ids_BxT.shape == (2, 5)
    zeros = {k: jnp.zeros(v.shape[:2] + (params["backbone"]["layers"][k[1]][k[2]][k[3]]["kernel"].shape[1],))
             for k, v in rec.inputs_BxTxN.items()}
    zeros[EMBED] = jnp.zeros((2, 5, D))
    np.testing.assert_array_equal(features(graphdef, cfg, params, ids, taps=Taps(zeros))[0], h)

    def f(kernel, values):
        p = jax.tree.map(lambda x: x, params)
        p["backbone"]["layers"][0]["attn"]["k"]["kernel"] = kernel
        taps = Taps(values)
        return jnp.sum(features(graphdef, cfg, p, ids, taps=taps)[0][:, 3] ** 2), taps.inputs_BxTxN

    kernel = params["backbone"]["layers"][0]["attn"]["k"]["kernel"]
    (gk, gv), u = jax.grad(f, argnums=(0, 1), has_aux=True)(kernel, zeros)
    key = ("layers", 0, "attn", "k")
    np.testing.assert_allclose(np.einsum("btn,btm->nm", u[key], gv[key]), gk, rtol=1e-12, atol=1e-14)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown output"):
        _kernel("llama_gqa", output="hutch")
    with pytest.raises(ValueError, match="tokens"):
        _kernel("llama_gqa", output="subset")
    with pytest.raises(ValueError, match="chunk"):
        _kernel("llama_gqa", chunk=0)
    with pytest.raises(ValueError, match="batch_size"):
        _kernel("llama_gqa", batch_size=True)


def test_plan_for_smollm2_shape_without_parameters():
    """A plan from abstract parameters (nothing allocated): SmolLM2-135M's shape, 2 contexts of 6 tokens."""
    from ntkdyn.models.transformer import abstract_params
    from ntkdyn.ntk.methods.structured import MIN_CHUNK

    cfg = nd.ModelConfig(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_ff=1536, max_positions=2048, tie_word_embeddings=True)
    lm = nd.LM(cfg, abstract_params(cfg))
    ids = np.arange(12, dtype=np.int32).reshape(2, 6)
    kp = ntk.plan(lm, ids, np.array([5, 5]), output="trace")
    p = kp.detail
    assert kp.method == "structured" and kp.passes == p.sweeps * p.block * p.chunk
    assert p.mode == "trace" and p.basis == "factor" and p.n_cotangents == 576 and p.tokens_a == 6
    assert p.blocks_a == 1 and p.sweeps == p.n_chunks and p.cross_rows == 6  # tr X: rows W[id_t] after L's
    assert p.n_chunks * p.chunk >= 576 + 6 > (p.n_chunks - 1) * p.chunk
    assert p.predicted_bytes <= p.memory_budget == ntk.DEFAULT_MEMORY_BUDGET and p.chunk >= MIN_CHUNK
    big = ntk.plan(lm, ids, np.array([5, 5]), output="trace", memory_budget=4 << 30).detail
    assert big.chunk > p.chunk and big.sweeps < p.sweeps and big.predicted_bytes <= 4 << 30
    # many contexts and a small budget: contexts are blocked before the chunk drops below MIN_CHUNK
    many = ntk.plan(lm, np.zeros((64, 6), np.int32), np.full(64, 5), output="trace", memory_budget=1 << 30).detail
    assert many.blocks_a > 1 and many.chunk >= MIN_CHUNK and many.predicted_bytes <= 1 << 30
    sub = ntk.plan(lm, ids, np.array([5, 5]), output="subset", tokens=np.arange(5)).detail
    assert sub.basis == "subset" and sub.n_cotangents == 5 and sub.cross_rows == 0


# ----------------------------------------------------------------------------------------------- mesh
MESH = textwrap.dedent("""
    import time, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import ntkdyn as nd
    from ntkdyn import ntk
    from ntkdyn.models.transformer import abstract_params
    assert len(jax.devices()) == 4, jax.devices()
    cfg = nd.ModelConfig(family="gpt2", vocab_size=41, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=32,
                         max_positions=32, tie_word_embeddings=True, qkv_bias=True, out_bias=True,
                         activation="gelu_new")
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.2, a.shape) + (a.ndim == 1), abstract_params(cfg))
    lm = nd.LM(cfg, params)
    ids = np.array([[5, 9, 5, 11, 9, 4], [3, 9, 7, 3, 12, 5]], np.int32)
    ctx = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [0, 5], [1, 3]], np.int32)  # 6 contexts: blocks padded to 8
    ctx4 = jax.make_mesh((4,), ("ctx",))
    fsdp = jax.make_mesh((2, 2), ("data", "fsdp"))
    cases = [("trace", fsdp, {}), ("full", ctx4, dict(chunk=8)),  # full: two cotangent chunks, the cross arrays
             ("hutchinson", fsdp, dict(num_probes=2))]
    worst, t0 = 0.0, time.time()
    for output, mesh, kw in cases:
        one = ntk.decompose(lm, ids, ctx, output=output, **kw)
        many = ntk.decompose(lm, ids, ctx, output=output, mesh=mesh, **kw)
        p = many.plan
        assert p.method == "structured" and p.devices == 4 and one.plan.devices == 1, p
        if output == "hutchinson":  # the b contexts split, nothing gathered
            assert p.predicted_bytes_per_device == -(-p.predicted_bytes // 4), p
        else:  # a quarter of everything, plus the rest of the b sweep gathered for the Gram matrices
            assert p.predicted_bytes // 4 < p.predicted_bytes_per_device <= p.predicted_bytes, p
        if output != "hutchinson":
            assert p.detail.block % 4 == 0 and p.detail.devices == 4, p.detail
        for x, y in zip(jax.tree.leaves((one.representation, one.gradient, one.cross)),
                        jax.tree.leaves((many.representation, many.gradient, many.cross))):
            if np.ndim(x) == 0:  # num_probes
                assert x == y, (x, y)
                continue
            x, y = np.asarray(x), np.asarray(y)
            assert x.shape == y.shape and x.dtype == y.dtype == np.float64, (x.shape, y.shape, y.dtype)
            worst = max(worst, float(np.abs(x - y).max() / np.abs(x).max()))
        print(output, dict(zip(mesh.axis_names, mesh.devices.shape)), "worst so far", worst,
              f"{time.time() - t0:.1f} s", flush=True)
    from ntkdyn.rl.trackers import Probes
    from ntkdyn.rl.trackers.drift import Drift, trace_kernels
    drift = Drift(lm, Probes(ids, np.ones(ids.shape, np.float32), ctx), "unused", every=1, n_contexts=6,
                  method="exact", num_probes=2, mesh=fsdp)  # the drift tracker of a run on this mesh
    K1, Km = trace_kernels(lm, ids, drift.contexts, params), drift._kernels(params)
    assert drift.mesh is fsdp and K1.keys() == Km.keys()
    worst = max([worst] + [float(np.abs(Km[z] - K1[z]).max() / np.abs(K1[z]).max()) for z in K1])
    kernel = next(l for l in jax.tree.leaves(lm.params["backbone"]) if l.ndim == 2)
    placed = ntk.shared.place_params(fsdp, kernel)
    assert placed.sharding.spec[int(np.argmax(kernel.shape))] == "fsdp", placed.sharding
    print("max rel diff mesh vs one device", worst)
    assert worst < 1e-10, worst
    print("OK")
""")


MESH_TEST = "test_structured_on_a_mesh_of_four_devices_equals_one_device"


@pytest.fixture(scope="module", autouse=True)
def mesh_run(request):
    """The mesh subprocess, started when the module starts (only if its test is selected) so that it runs beside the
    module's other tests; its test waits for it."""
    if not any(item.name == MESH_TEST for item in request.session.items):
        yield None
        return
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", MESH], env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_structured_on_a_mesh_of_four_devices_equals_one_device(mesh_run):
    """The structured method on 4 forced CPU devices (a subprocess): tr G and tr X on a data×fsdp mesh (parameters
    sharded over fsdp), full G and X in two cotangent chunks on a 1-axis mesh, the Hutchinson estimates, and the
    drift tracker's kernels on the run's mesh, each equal to one device's (float64); the plans report 4 devices and
    the bytes per device."""
    out = mesh_run.communicate(timeout=600)[0]
    print(out)
    assert mesh_run.returncode == 0 and "OK" in out, out
