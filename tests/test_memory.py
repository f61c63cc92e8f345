"""ntkdyn.memory (`ntkdyn plan-memory`; issue #23): the predicted bytes of the jitted RL update against XLA's own
accounting of the compiled program (memory_analysis: arguments + outputs − donated + temporaries) on the embedded
default model, within 25 %; parameter counts of the Pythia presets against the published totals; the kernel plan
is ntk.plan's bytes plus the parameters and the result; the command line."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn import memory
from ntkdyn.cli import main
from ntkdyn.default import default_model_dir
from ntkdyn.models.config import read_config
from ntkdyn.models.lm import LM
from ntkdyn.models.transformer import abstract_params, graphdef_for
from ntkdyn.ntk import plan
from ntkdyn.ntk.contexts import contexts_from_mask
from ntkdyn.optim import make_optimizer
from ntkdyn.rl.step import LossSpec, confidence, rl_update


def _measured(cfg, B, Tp, N, G, chunk, remat=False, micro=1):
    """XLA's bytes of the compiled rl_update (abstract inputs: nothing allocated)."""
    params = abstract_params(cfg)
    tx = make_optimizer("adam", 1e-3, "all", max_grad_norm=1.0)
    S = jax.ShapeDtypeStruct
    batch = dict(prompt_ids=S((B, Tp), jnp.int32), prompt_mask=S((B, Tp), jnp.int32),
                 completion=S((B, N), jnp.int32), mask=S((B, N), jnp.float32), adv=S((B,), jnp.float32))
    ls = LossSpec(1.0, 0.2, "seq_mean_token_mean", 0.0, "k3", remat, G, chunk, micro)
    m = rl_update.lower(params, jax.eval_shape(tx.init, params), batch, S((B, N), jnp.float32), S((), bool), None,
                        graphdef=graphdef_for(cfg), cfg=cfg, tx=tx, ls=ls, group="all").compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


@pytest.mark.parametrize("G,chunk,remat,micro", [(4, 0, False, 1), (1, 64, False, 1), (4, 64, True, 1),
                                                 (4, 0, False, 4)])
def test_update_prediction_within_25_percent_of_compiled_default_model(G, chunk, remat, micro):
    cfg = read_config(default_model_dir())
    B, Tp, N = 16, 8, 8
    pred = memory.update_bytes(cfg, batch=B, prompt_len=Tp, new_tokens=N, group_size=G, chunk=chunk, remat=remat,
                               backend=jax.default_backend(), micro_batches=micro)["total"]
    got = _measured(cfg, B, Tp, N, G, chunk, remat, micro)
    assert abs(pred - got) <= 0.25 * got, (pred, got)


@pytest.mark.parametrize("chunk", [0, 64])
def test_scoring_prediction_within_25_percent_of_compiled_default_model(chunk):
    cfg = read_config(default_model_dir())
    E, Tp, N = 64, 8, 8
    S = jax.ShapeDtypeStruct
    m = confidence.lower(abstract_params(cfg), S((E, Tp), jnp.int32), S((E, Tp), jnp.int32), S((E, N), jnp.int32),
                         S((E, N), jnp.float32), graphdef=graphdef_for(cfg), cfg=cfg,
                         chunk=chunk).compile().memory_analysis()
    got = m.argument_size_in_bytes + m.temp_size_in_bytes
    pred = memory.scoring_bytes(cfg, rows=E, prompt_len=Tp, new_tokens=N, chunk=chunk)
    assert abs(pred - got) <= 0.25 * got, (pred, got)


def test_pythia_presets_have_the_published_parameter_counts():
    # EleutherAI/pythia README: non-embedding parameters + the untied input and output tables (2 V d)
    published = {"pythia-410m": 302_311_424 + 2 * 50304 * 1024, "pythia-1b": 805_736_448 + 2 * 50304 * 2048,
                 "pythia-2.8b": 2_517_652_480 + 2 * 50304 * 2560, "pythia-6.9b": 6_444_163_072 + 2 * 50432 * 4096}
    for name, n in published.items():
        assert memory.n_params(memory.PYTHIA[name]) == n, name


def test_rl_step_plan_parts_and_phases():
    cfg = memory.PYTHIA["pythia-410m"]
    P = memory.n_params(cfg)
    p = memory.rl_step(cfg, batch=8, prompt_len=16, new_tokens=16, eval_rows=8, group_size=4)
    assert p.parts["params"] == p.parts["start_params"] == 4 * P and p.parts["optimizer"] == 8 * P
    # the KV cache of 8 rows × 32 slots, keys and values of every layer, float32
    assert p.parts["rollout/sampler"] >= 2 * 24 * 8 * 32 * 1024 * 4
    assert p.peak == max(p.phases.values()) == p.phases[p.phase]
    # chunking bounds the head: chunk 16 of 128 tokens holds 1/8 of the full logits' bytes
    full = memory.rl_step(cfg, batch=8, prompt_len=16, new_tokens=16, group_size=4, chunk=0)
    assert full.parts["update/head"] == 8 * memory.rl_step(
        cfg, batch=8, prompt_len=16, new_tokens=16, group_size=4, chunk=16).parts["update/head"]
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        memory.rl_step(cfg, batch=0, prompt_len=16, new_tokens=16)


def test_rl_step_plan_per_device_of_a_mesh():
    """Per device of a mesh: the parameter-sized parts / F (1-D leaves whole), the batch-sized parts / (D·F), the
    FSDP-gathered weights added; data=8 keeps the parameters whole. (The placement itself against real arrays:
    tests/test_rl_trainer.py::test_meshes_equal_one_device_and_resume_exactly.)"""
    cfg = memory.PYTHIA["pythia-1b"]
    P = memory.n_params(cfg)
    assert memory.params_per_device(cfg, 1) == P
    P8 = memory.params_per_device(cfg, 8)
    assert P / 8 <= P8 < 1.01 * P / 8  # 1-D leaves (norms, biases) are ~0.3 % of Pythia-1B
    kw = dict(batch=64, prompt_len=64, new_tokens=128, eval_rows=64, group_size=8, backend="gpu")
    one, dp, fsdp = (memory.rl_step(cfg, mesh=m, **kw) for m in (None, "data=8", "fsdp=8"))
    both = memory.rl_step(cfg, mesh={"data": 2, "fsdp": 4}, **kw)
    assert dp.parts["params"] == one.parts["params"] == 4 * P and "update/gathered" not in dp.parts
    assert fsdp.parts["params"] == fsdp.parts["start_params"] == 4 * P8 and fsdp.parts["optimizer"] == 8 * P8
    assert both.parts["params"] == 4 * memory.params_per_device(cfg, 4)
    for part in ("update/activations", "update/head", "rollout/sampler", "eval/scoring"):
        assert dp.parts[part] == fsdp.parts[part] == both.parts[part] == memory.rl_step(
            cfg, **dict(kw, batch=8, eval_rows=8, group_size=8)).parts[part], part
    Vd = cfg.vocab_size * cfg.d_model  # one layer and the head (or embedding) whole, less the 1/8 held anyway
    assert fsdp.parts["update/gathered"] == pytest.approx(4 * ((P - 2 * Vd) / cfg.n_layers + Vd) * 7 / 8, rel=1e-3)
    assert fsdp.peak < dp.peak < one.peak
    with pytest.raises(ValueError, match="mesh='data=0'"):
        memory.rl_step(cfg, mesh="data=0", **kw)


def test_kernel_plan_is_ntk_plan_plus_params_and_result():
    cfg = read_config(default_model_dir())
    lm = LM(cfg, abstract_params(cfg))
    mask = np.zeros((3, 10), np.int32)
    mask[:, -1] = 1
    ids, ctx = np.zeros((3, 10), np.int32), contexts_from_mask(mask)
    p = memory.kernel(lm, ids, ctx, output="full")
    kp = plan(lm, ids, ctx, output="full")
    V = cfg.vocab_size
    assert p.parts[f"method ({kp.method})"] == kp.predicted_bytes
    assert p.parts["result"] == 3 * 3 * (1 + V * V) * 4  # G (3, 3, V, V) and R (3, 3), float32; untied head
    assert p.parts["params"] == 4 * memory.n_params(cfg) and p.peak == sum(p.parts.values())


def test_plan_memory_cli(capsys):
    assert main(["plan-memory", "--prompt-len", "8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["peak"] == max(d["phases"].values()) and d["phase"] in d["phases"]
    assert main(["plan-memory", "--model", "pythia-2.8b", "--prompt-len", "256", "--max-new-tokens", "512"]) == 0
    assert "predicted peak" in capsys.readouterr().out
    assert main(["plan-memory", "--model", "pythia-1b"]) == 2
    assert "--prompt-len is required" in capsys.readouterr().err
    assert main(["plan-memory", "--prompts-per-step", "0", "--prompt-len", "8"]) == 2
    assert "--prompts-per-step must be an integer >= 1; got 0" in capsys.readouterr().err
    assert main(["plan-memory", "--prompt-len", "8", "--micro-batches", "3"]) == 2  # 8 prompts per step
    assert "--micro-batches 3 must divide --prompts-per-step 8" in capsys.readouterr().err
    assert main(["plan-memory", "--prompt-len", "8", "--micro-batches", "4", "--json"]) == 0
    four = json.loads(capsys.readouterr().out)
    assert main(["plan-memory", "--prompt-len", "8", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert four["parts"]["update/activations"] * 4 == pytest.approx(one["parts"]["update/activations"], rel=0.3)
