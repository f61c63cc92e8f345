"""Tests for ntkdyn.ntk.methods (the table of methods and the default choice) and the methods' plans. Plans only:
abstract parameters, nothing run (the numbers of every method are checked in tests/test_ntk_structured.py,
tests/test_ntk_jacobian.py and tests/test_ntk_api.py)."""
from __future__ import annotations

import numpy as np

import ntkdyn as nd
from ntkdyn import ntk
from ntkdyn.models.transformer import abstract_params
from ntkdyn.ntk import methods

SMOLLM2 = nd.ModelConfig(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_ff=1536, max_positions=2048, tie_word_embeddings=True)
TINY = nd.ModelConfig(family="llama", vocab_size=97, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=32,
                      max_positions=32)


def _plan(cfg, output="trace", method="auto", n=2, budget=None, mesh=None, **kw):
    params = abstract_params(cfg)
    ids = np.arange(6 * n, dtype=np.int32).reshape(n, 6) % cfg.vocab_size
    return ntk.plan(nd.LM(cfg, params), ids, np.full(n, 5), output=output, method=method, memory_budget=budget,
                    mesh=mesh, **kw)


def test_every_method_module_has_the_interface():
    for (name, kind), mod in methods.TABLE.items():
        assert mod.NAME == name and callable(mod.plan) and callable(mod.run)
        assert set(mod.OUTPUTS) == ({"hutchinson"} if kind == "probes" else {"full", "trace", "subset", "hidden"})
    assert set(ntk.METHODS) == {"auto"} | {name for name, _ in methods.TABLE}


def test_real_model_takes_the_structured_method():
    """SmolLM2: one context's J_h (d × P) is ~300 GB, so the Jacobian plan would split the parameters into groups;
    the default takes structured derivatives, predicted far faster, within the budget."""
    for output in ("trace", "hidden"):
        kp = _plan(SMOLLM2, output)
        assert kp.method == "structured" and kp.reason == "default", kp
        assert kp.predicted_seconds["structured"] * 4 < kp.predicted_seconds["jacobian"]
        assert kp.predicted_bytes <= kp.memory_budget and kp.parameter_groups == 1
    forced = _plan(SMOLLM2, "trace", method="jacobian")
    assert forced.method == "jacobian" and forced.parameter_groups > 100 and forced.reason.startswith("forced")


def test_a_mesh_keeps_the_structured_method():
    """With a mesh the default stays structured and the plan is the one-device plan, with the mesh's devices and the
    bytes per device reported (4 devices: tests/test_ntk_structured.py, in a subprocess)."""
    import jax

    mesh = jax.make_mesh((1,), ("ctx",))
    for output in ("trace", "hutchinson"):
        kp, one = _plan(SMOLLM2, output, mesh=mesh), _plan(SMOLLM2, output)
        assert kp.method == "structured" and kp.reason == "default" and set(kp.predicted_seconds) == {"jacobian",
                                                                                                     "structured"}
        assert kp.devices == 1 and kp.predicted_bytes_per_device == kp.predicted_bytes == one.predicted_bytes
        assert kp.sweeps == one.sweeps and kp.chunk == one.chunk


def test_tiny_model_plans():
    """The default is structured on every model; the Jacobian plan of a tiny model keeps one group, d passes per
    context chunk."""
    for output in ("trace", "full", "hidden"):
        assert _plan(TINY, output).method == "structured"
        kp = _plan(TINY, output, method="jacobian")
        assert kp.method == "jacobian" and kp.parameter_groups == 1 and kp.reason.startswith("forced")
        assert kp.sweeps >= 1 and kp.passes == kp.sweeps * kp.chunk * TINY.d_model


def test_probe_plans():
    hp = _plan(SMOLLM2, "hutchinson", n=1, num_probes=16)
    assert hp.detail == (1, 16)  # one b context, all 16 probes in one sweep within 1 GiB
    assert hp.method == "structured" and hp.passes == 32 and hp.sweeps == 1 and hp.predicted_bytes <= hp.memory_budget
    tp = _plan(TINY, "hutchinson", num_probes=8)
    assert tp.method == "structured" and tp.reason == "default"
    jp = _plan(TINY, "hutchinson", method="jacobian", num_probes=8)
    assert jp.method == "jacobian" and jp.reason.startswith("forced")


def test_default_model_takes_the_structured_method():
    """The embedded default model (0.8M parameters, d 128): one context's J_h is 413 MB, so 8 contexts do not fit
    in one block and the Jacobian path recomputes the b-blocks: predicted several times slower."""
    from ntkdyn.default import default_model_dir

    cfg = nd.load(default_model_dir(progress=False)).config
    kp8 = _plan(cfg, "trace", n=8)
    assert kp8.method == "structured", kp8
    assert kp8.predicted_seconds["jacobian"] > 3 * kp8.predicted_seconds["structured"]
    for output in ("trace", "full", "hidden"):
        assert _plan(cfg, output, n=4).method == "structured"
