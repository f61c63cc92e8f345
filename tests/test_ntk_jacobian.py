"""Tests for ntkdyn.ntk.methods.jacobian (its plan and its chunked sweep): parameter groups, context blocks and
padded chunks give the one-block kernel exactly (and the default method, structured, never splits the parameters);
the default plan bounds the memory of a large kernel; the schedule counts the recomputed blocks; a Mesh of four
(forced CPU) devices gives the single-device kernel."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import pytest

import ntk_cases
from ntk_cases import CTX, IDS, rel, x64  # noqa: F401 (x64: a fixture)
from ntkdyn import ntk
from ntkdyn.ntk.methods.jacobian import make_plan, split_params
from ntkdyn.ntk.request import DEFAULT_MEMORY_BUDGET
from ntkdyn.ntk.shared import schedule, walk


def _chunking_job(gpt2):
    r = gpt2.result()
    lm, params = r["lm"], r["params"]
    leaves = [int(x.size) for x in jax.tree.leaves(split_params(lm.config, params).psi)]
    d, T = lm.config.d_model, 5
    budget = 2 * d * (sum(leaves) + T * d) * 8 - 1  # one context's J_h (d × P float64) does not fit twice
    plan = make_plan(len(CTX), d, T, leaves, 8, budget, None, lm.config.d_ff, 1)  # as decompose plans it
    small = ntk.decompose(lm, IDS, CTX, params=params, output="trace", memory_budget=budget, method="jacobian")
    chunked = ntk.decompose(lm, IDS, CTX, params=params, output="trace", batch_size=2, method="jacobian")
    auto = ntk.decompose(lm, IDS, CTX, params=params, output="trace", memory_budget=budget)
    return r["trace"], plan, small, chunked, auto


@pytest.fixture(scope="module")
def results(x64, tmp_path_factory):  # noqa: F811
    proc = _start_sharded()
    out = ntk_cases.start(tmp_path_factory, ["gpt2"], {"chunking": _chunking_job})
    out["sharded"] = lambda: proc.communicate(timeout=600)[0], proc
    yield out
    ntk_cases.finish()
    if proc.poll() is None:
        proc.kill()


def test_parameter_groups_context_blocks_and_chunks_are_exact(results):
    """A tiny memory budget splits the parameters into groups and the contexts into blocks that are recomputed;
    batch_size=2 computes a block in padded chunks: both equal the one-block run."""
    (trG, trX, total), (compute, plan), small, chunked, auto = results["chunking"]()
    assert len(plan) == 2 and compute == 1 and all(k == 1 for _, _, k in plan)
    assert small.plan.method == "jacobian" and small.plan.parameter_groups == 2
    assert chunked.plan.method == "jacobian" and chunked.plan.chunk == 2 and chunked.plan.parameter_groups == 1
    # the default method never splits the parameters: structured derivatives (ntk/methods)
    assert auto.plan.method == "structured" and auto.plan.parameter_groups == 1
    for k in (small, chunked, auto):
        assert rel(k.gradient, trG) < 1e-12 and rel(k.cross, trX) < 1e-12 and rel(k.total(), total) < 1e-12


def test_default_plan_bounds_memory_of_a_large_kernel():
    """256 contexts of a ~2M-parameter model: the Jacobian blocks held at once stay within the budget (1 GiB),
    far below 4 GB, while a single block of all contexts would need ~0.5 TB."""
    d, T, itemsize = 128, 64, 4
    leaves = ([d * d] * 4 + [4 * d * d] * 2 + [d] * 4) * 10  # 10 layers: ~2.0M parameters
    assert 1.9e6 < sum(leaves) < 2.1e6
    compute, plan = make_plan(256, d, T, leaves, itemsize, DEFAULT_MEMORY_BUDGET, None, 4 * d, 1)
    for group, with_x, k in plan:
        S = sum(leaves[i] for i in group) + (T * d if with_x else 0)
        held = 2 * k * compute * d * S * itemsize  # an a-block and a b-block of J_h
        inter = compute * d * T * 4 * 4 * d * itemsize  # activation cotangents of one vmapped chunk
        assert held + inter <= DEFAULT_MEMORY_BUDGET * 1.5 < 4e9
    assert ntk.DEFAULT_MEMORY_BUDGET == DEFAULT_MEMORY_BUDGET  # the public name


def _blocks(n_a, n_b, sym, cache_b):
    """(Jacobian blocks computed, block pairs contracted) over the method's schedule (one parameter group)."""
    pairs = schedule(n_a, n_b, 1, sym, "trace")
    return walk(pairs, sym, cache_b, lambda u: None, lambda u: None, lambda *a: None), len(pairs)


def test_schedule_counts_the_recomputed_b_blocks():
    """With several b-blocks every a-block recomputes them; one b-block is kept (hand-counted)."""
    assert _blocks(8, 8, True, False) == (8 + 28, 36)  # 8 a-blocks; b-blocks j > i recomputed
    assert _blocks(1, 1, True, True) == (1, 1)
    assert _blocks(2, 3, False, False) == (2 + 2 * 3, 6)
    assert _blocks(2, 1, False, True) == (2 + 1, 2)  # one b-block: kept


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
    meshes = {"full": jax.make_mesh((4,), ("ctx",)), "trace": jax.make_mesh((2, 2), ("data", "fsdp"))}
    worst = 0.0
    for out, mesh in meshes.items():  # trace: the parameters sharded over fsdp (shared.place_params)
        one = ntk.decompose(lm, ids, ctx, params=params, output=out, method="jacobian")
        many = ntk.decompose(lm, ids, ctx, params=params, output=out, mesh=mesh, method="jacobian")
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
