"""Tests for ntkdyn.ntk.method: the choice between the Jacobian and the structured method (numbers of both are
checked in tests/test_ntk_structured.py and tests/test_ntk_plan.py). Plans only: abstract parameters, nothing run."""
from __future__ import annotations

import numpy as np

import ntkdyn as nd
from ntkdyn.models.transformer import abstract_params
from ntkdyn.ntk import method as mt
from ntkdyn.ntk.jacobians import split_params
from ntkdyn.ntk.plan import exact_plan, probe_chunks, sizing
from ntkdyn.ntk.structured_plan import make_plan
from ntkdyn.ntk.structured_probes import probe_sizes

SMOLLM2 = nd.ModelConfig(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_ff=1536, max_positions=2048, tie_word_embeddings=True)
TINY = nd.ModelConfig(family="llama", vocab_size=97, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=32,
                      max_positions=32)


def _choose(cfg, output="trace", method="auto", n=2, budget=None, mesh=None):
    params = abstract_params(cfg)
    ids = np.arange(6 * n, dtype=np.int32).reshape(n, 6) % cfg.vocab_size
    a = (ids, np.arange(n, dtype=np.int32), np.full(n, 5, np.int32))
    sz = sizing(cfg, split_params(cfg, params), a, a, budget, None, None)
    jac = exact_plan(sz, cfg.d_model, n, n, True)
    splan = lambda: make_plan(cfg, params, *a, output=output, memory_budget=budget)  # noqa: E731
    return mt.choose_exact(method, cfg, params, sz, jac, splan, n, n, True, output, mesh, False), sz, params


def test_real_model_takes_the_structured_method():
    """SmolLM2: one context's J_h (d × P) is ~300 GB, so the Jacobian plan would split the parameters into groups;
    auto takes structured derivatives, predicted far faster, within the budget."""
    for output in ("trace", "hidden"):
        kp, _, _ = _choose(SMOLLM2, output)
        assert kp.method == "structured" and "groups" in kp.reason, kp
        assert kp.predicted_seconds["structured"] * 4 < kp.predicted_seconds["jacobian"]
        assert kp.predicted_bytes <= kp.memory_budget and kp.parameter_groups == 1
    forced, _, _ = _choose(SMOLLM2, "trace", method="jacobian")
    assert forced.method == "jacobian" and forced.parameter_groups > 100 and forced.reason.startswith("forced")
    # a mesh keeps the Jacobian method (the structured one runs on one device)
    assert _choose(SMOLLM2, mesh=object())[0].method == "jacobian"


def test_tiny_model_keeps_the_jacobian_method():
    """Tiny models: compilation dominates and the Jacobian path compiles less: auto keeps it (one group)."""
    for output in ("trace", "full", "hidden"):
        kp, _, _ = _choose(TINY, output)
        assert kp.method == "jacobian" and kp.parameter_groups == 1 and kp.reason == "predicted faster"
        assert kp.sweeps >= 1 and kp.passes == kp.sweeps * kp.chunk * TINY.d_model


def test_probe_plans():
    kp, sz, params = _choose(SMOLLM2)
    sizes = probe_sizes(SMOLLM2, params, 8, 1, 16, sz.budget)
    assert sizes == (1, 16)  # one b context, all 16 probes in one sweep within 1 GiB
    hp = mt.choose_probes("auto", SMOLLM2, params, sz, 1, 1, 16, None, sizes, probe_chunks(sz, 576, 1, 1, 16))
    assert hp.method == "structured" and hp.passes == 32 and hp.sweeps == 1 and hp.predicted_bytes <= sz.budget
    _, sz_t, params_t = _choose(TINY)
    tp = mt.choose_probes("auto", TINY, params_t, sz_t, 2, 2, 8, None, (2, 8), probe_chunks(sz_t, 16, 2, 2, 8))
    # the probes' two programs compile in about the same time on either path (benchmarks/planner_bench.py: tiny
    # 3.0 s Jacobian vs 2.6 s structured, idle), and the structured passes write no weight gradients
    assert tp.method == "structured" and tp.reason == "predicted faster"
    jp = mt.choose_probes("jacobian", TINY, params_t, sz_t, 2, 2, 8, None, (2, 8), probe_chunks(sz_t, 16, 2, 2, 8))
    assert jp.method == "jacobian" and jp.reason.startswith("forced")


def test_jacobian_blocks_count_the_recomputed_b_blocks():
    """engine.loop's work: with several b-blocks every a-block recomputes them (hand-counted)."""
    assert mt.jacobian_blocks(8, 8, 1, True) == (8 + 28, 36)  # 8 a-blocks; b-blocks j > i recomputed
    assert mt.jacobian_blocks(8, 8, 8, True) == (1, 1)
    assert mt.jacobian_blocks(2, 3, 1, False) == (2 + 2 * 3, 6)
    assert mt.jacobian_blocks(4, 2, 2, False) == (2 + 1, 2)  # one b-block: kept


def test_default_model_takes_the_structured_method():
    """The embedded default model (0.8M parameters, d 128): one context's J_h is 413 MB, so 8 contexts do not fit
    in one block and the Jacobian path recomputes the b-blocks (measured on the idle CPU, first call: 17.9 s
    against 2.8 s structured; 2 contexts 3.9 s against 2.5 s; benchmarks/planner_bench.py): auto takes
    structured derivatives, by a wide predicted margin for 8 contexts."""
    from ntkdyn.default import default_model_dir

    cfg = nd.load(default_model_dir(progress=False)).config
    kp8, _, _ = _choose(cfg, "trace", n=8)
    assert kp8.method == "structured" and kp8.reason == "predicted faster", kp8
    assert kp8.predicted_seconds["jacobian"] > 3 * kp8.predicted_seconds["structured"]
    for output in ("trace", "full", "hidden"):
        assert _choose(cfg, output, n=4)[0].method == "structured"
