"""Packed completions (rl/packing.py, objectives.completion_logp(packing=...)): the plan against hand-made masks,
the packed statistics and their gradients against the padded pass on every family (learned positions, RoPE with
GQA, Gemma 3's sliding window), one RL update packed against padded, batched runs (two seeds as lanes, PPO
iterations, the KL term) and a run on a 4-device mesh against the padded runs, the trainer's row rounding, and the
config's checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_cases import tiny
from rl_helpers import SMALL, assert_records_close, base_dir, easy_reward  # noqa: F401 (fixture)
from ntkdyn.optim import make_optimizer
from ntkdyn.rl import ConfigError, RLConfig, objectives as O, packing, read_metrics, train_batch
from ntkdyn.rl.step import LossSpec, opt_init, rl_update


def _mask(lengths, N):
    return (np.arange(N)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def test_plan_places_every_input_once_and_unpacks_back():
    lengths = [8, 1, 3, 8, 2, 5, 0, 4]
    N, B = 8, len(lengths)
    pk = packing.pack(_mask(lengths, N), rows_multiple=1)
    W = N - 1
    # first-fit decreasing: 7, 7, then 4 + 3 (K = 4 segments), then 2 + 1 ... in W = 7 slots
    assert pk.rows.shape[1] == packing.MAX_SEGMENTS and pk.src.shape[1] == W
    assert pk.rows.shape[0] == 4  # 7 | 7 | 4 + 3 | 2 + 1 (segments 7, 7, 4, 3, 2, 1; rows of 1 and 0 tokens none)
    seen = {}
    for r in range(pk.src.shape[0]):
        for s in range(W):
            if pk.seg[r, s] >= 0:
                b = pk.rows[r, pk.seg[r, s]]
                assert pk.src[r, s] // N == b
                seen[(b, int(pk.src[r, s] % N))] = B + r * W + s
    assert set(seen) == {(b, j) for b, L in enumerate(lengths) for j in range(L - 1)}
    for b, L in enumerate(lengths):
        assert pk.unpack[b, 0] == b
        for j in range(1, N):
            assert pk.unpack[b, j] == (seen[(b, j - 1)] if j < L else b)
    # a segment's slots are consecutive and in order (its tokens' positions increase with the slot)
    for r in range(pk.src.shape[0]):
        for i in range(packing.MAX_SEGMENTS):
            slots = np.flatnonzero(pk.seg[r] == i)
            if slots.size:
                assert np.all(np.diff(slots) == 1) and np.all(np.diff(pk.src[r, slots]) == 1)


def test_plan_rounds_rows_and_checks_its_input():
    m = _mask([8, 8, 4, 3], 8)  # segments 7, 7, 3 + 2
    assert packing.needed_rows(m, rows_multiple=4) == 4 and packing.needed_rows(m, rows_multiple=1) == 3
    assert packing.pack(m).rows.shape[0] == 4 and packing.pack(m, R=6).rows.shape[0] == 6
    lanes = packing.pack_lanes(np.stack([m, _mask([2, 2, 2, 2], 8)]), rows_multiple=1)
    assert lanes.rows.shape == (2, 3, packing.MAX_SEGMENTS) and lanes.unpack.shape == (2, 4, 8)
    with pytest.raises(ValueError, match="need 3 rows"):
        packing.pack(m, R=2)
    with pytest.raises(ValueError, match="gaps"):
        packing.pack(np.array([[1, 0, 1, 0]], np.float32))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        packing.pack(np.ones((3, 1), np.float32))


def _gemma_sliding():
    return tiny("gemma3", True, n_kv_heads=1, head_dim=8, qk_norm=True, sliding_window=3,
                layer_types=("sliding_attention", "full_attention"), rope_local_theta=10000.0,
                query_pre_attn_scalar=8.0)


MODELS = {"gpt2": lambda: tiny("gpt2", True), "gpt_neox": lambda: tiny("gpt_neox", False),
          "llama": lambda: tiny("llama", False), "gemma3": _gemma_sliding}


def _batch(rng, lengths, P=3, G=2, Tp=5, N=6, V=97):
    prompt = np.repeat(rng.integers(3, V, (P, Tp)).astype(np.int32), G, axis=0)
    pmask = np.ones((P * G, Tp), np.int32)
    pmask[:G, :2] = 0  # the first prompt left-padded (the same in its whole group)
    pmask[G:2 * G, :1] = 0
    completion = rng.integers(3, V, (P * G, N)).astype(np.int32)
    mask = _mask(lengths, N)
    completion = np.where(mask > 0, completion, 0).astype(np.int32)  # the sampler's pad after EOS
    return dict(prompt_ids=prompt, prompt_mask=pmask, completion=completion, mask=mask,
                adv=rng.normal(size=P * G).astype(np.float32))


@pytest.mark.parametrize("family", list(MODELS))
def test_packed_stats_and_gradients_equal_the_padded_pass(family):
    lm = MODELS[family]()
    b = _batch(np.random.default_rng(0), [6, 2, 4, 1, 3, 5])
    pk = packing.Packing(*(jnp.asarray(a) for a in packing.pack(b["mask"], rows_multiple=1)))
    assert pk.rows.shape[0] < 6  # the plan does save rows here

    def run(params, pk, G):
        st = O.completion_logp(lm.graphdef, lm.config, params, b["prompt_ids"], b["prompt_mask"], b["completion"],
                               shared_prompts=G, packing=pk, chunk=4)
        return jnp.sum(st["logp"] * b["mask"] * b["adv"][:, None]) + jnp.sum(st["entropy"] * b["mask"]), st

    (v0, st0), g0 = jax.value_and_grad(run, has_aux=True)(lm.params, None, 1)
    (v1, st1), g1 = jax.value_and_grad(run, has_aux=True)(lm.params, pk, 2)
    m = b["mask"] > 0
    for k in ("logp", "logp_model", "entropy", "max_prob"):
        np.testing.assert_allclose(np.asarray(st1[k])[m], np.asarray(st0[k])[m], rtol=2e-5, atol=2e-6)
        assert np.all(np.isfinite(np.asarray(st1[k])))
    assert np.isclose(float(v0), float(v1), rtol=1e-5)
    scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g0))
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=2e-4, atol=1e-5 * scale)


def _micro_plans(mask, M, G):
    """rl/rollout._packing's plans of one lane's rollout mask in M micro-batches of groups of G (rows_multiple 1)."""
    from types import SimpleNamespace

    from ntkdyn.rl import rollout
    from ntkdyn.rl.lanes import Lanes

    ctx = SimpleNamespace(loss_spec=SimpleNamespace(micro_batches=M), c=SimpleNamespace(group_size=G),
                          sh=SimpleNamespace(size=1, batch=lambda a, **kw: jnp.asarray(a)))
    return rollout._packing(ctx, Lanes(1), mask)


@pytest.mark.parametrize("micro", [1, 2])
def test_packed_rl_update_equals_padded(micro):
    """One update packed against padded: in one batch, and in 2 micro-batches of two groups each (a plan per
    micro-batch, rl/rollout._packing's, 2 rows for 4: against the padded micro-batches)."""
    lm = tiny("llama", True)
    b = _batch(np.random.default_rng(1), [6, 1, 2, 6, 3, 4, 2, 2], P=4)
    tx = make_optimizer("sgd", 1e-2)
    ls = LossSpec(1.0, 0.2, "seq_mean_token_mean", 0.0, "k3", False, 2, micro_batches=micro)
    plan = packing.pack(b["mask"]) if micro == 1 else _micro_plans(b["mask"], micro, 2)
    assert plan.rows.shape[:-1] == ((4,) if micro == 1 else (micro, 2))
    outs = []
    for pk in (None, plan):
        batch = {**b, **({} if pk is None else {"packing": pk})}
        new, _, m, logp = rl_update(lm.params, opt_init(lm.params, tx=tx), batch, jnp.zeros_like(b["mask"]), True,
                                    None, graphdef=lm.graphdef, cfg=lm.config, tx=tx, ls=ls, group="all")
        outs.append((new, m, np.asarray(logp)))
    for k in ("loss", "entropy", "max_prob", "logp", "grad_norm/backbone", "grad_norm/head"):
        assert np.isclose(float(outs[0][1][k]), float(outs[1][1][k]), rtol=1e-5), k
    np.testing.assert_allclose(outs[1][2][b["mask"] > 0], outs[0][2][b["mask"] > 0], rtol=1e-5, atol=1e-6)
    for a, c in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_config_rejects_pack_with_remat():
    assert RLConfig(out="x", pack=True).pack is True
    assert RLConfig(out="x", pack=True, micro_batches=2, prompts_per_step=4).micro_batches == 2
    with pytest.raises(ConfigError, match=r"RLConfig.pack=True: .*remat"):
        RLConfig(out="x", pack=True, remat=True)
    with pytest.raises(ConfigError, match=r"RLConfig.pack='yes': expected True or False"):
        RLConfig(out="x", pack="yes")


@pytest.mark.parametrize("micro", [1, 2])
def test_batched_run_packed_equals_the_run_padded(base_dir, tmp_path, monkeypatch, micro):
    """Two seeds as lanes (one packed row count for both), two PPO iterations and the KL term's reference
    log-probs (ref_logp) packed: the records equal the padded runs' to float rounding; with 2 micro-batches, one
    plan per micro-batch (lanes × micro-batches × rows; ref_logp too) against the padded micro-batches
    (micro-batches against one batch: test_rl_micro_batches). The base model's
    "sum" completions take 4-8 tokens, so the update runs at 16 columns (its bucket raised) for packing to save
    rows."""
    from ntkdyn.rl import rollout

    used = []
    real = rollout._packing
    monkeypatch.setattr(rollout, "_packing", lambda *a: used.append(real(*a)) or used[-1])
    monkeypatch.setattr(rollout, "UPDATE_BUCKET", 16)
    cfg = RLConfig(recipe="rl", model=base_dir, out="x", steps=3,
                   **dict(SMALL, eval_every=0, probe_every=0, max_new_tokens=16))
    recs = {}
    for pack in (False, True):
        runs = [cfg.replace(seed=s, out=str(tmp_path / f"p{pack}-s{s}"), pack=pack, micro_batches=micro)
                for s in (1, 2)]
        train_batch(runs, progress=False, reward_fn=easy_reward)
        recs[pack] = [read_metrics(c.out) for c in runs]
    B = SMALL["prompts_per_step"] * SMALL["group_size"] // micro  # the rows of one plan
    assert len(used) == 3 and all(p is not None for p in used)
    assert all(p.rows.shape[:-2] == ((2, micro) if micro > 1 else (2,)) and p.rows.shape[-2] < B for p in used)
    for a, b in zip(recs[False], recs[True]):
        assert len(a) == 4
        # float rounding that compounds: the two programs round differently (other row counts, other matmul
        # blockings), seed 2's first update has a mean KL of ~42 nats (k3 = e^Δ - Δ - 1 amplifies the log-probs'
        # rounding) and Adam turns gradient rounding into parameter steps, so on a Zen 4 CPU the records differed by
        # 1.4e-5 relative at step 1 and up to 3.3e-4 (KL), 1.7e-4 (loss, ~0.02 from O(1) terms) at step 3, where the
        # Xeon's had stayed under 1e-5; a wrong plan or reference moves them by 1e-2 and more (docs/rl.md)
        assert_records_close(a, b, rtol=1e-3, atol=1e-5)


def test_trainer_rounds_packed_rows_to_quarters_of_the_batch():
    assert [packing.rows_multiple(B) for B in (4, 8, 16, 32, 64, 30)] == [2, 2, 4, 8, 16, 8]
    assert packing.rows_multiple(32, devices=3) == 24 and packing.rows_multiple(16, devices=8) == 8


MESH_SCRIPT = r"""
import json, sys
from ntkdyn.rl import RLConfig, rollout, train
rollout.UPDATE_BUCKET = 16
used = []
real = rollout._packing
rollout._packing = lambda *a: used.append(real(*a)) or used[-1]
cfg = RLConfig.from_dict(json.loads(sys.argv[1]))
train(cfg.replace(out=sys.argv[2] + "/padded"), progress=False)
train(cfg.replace(out=sys.argv[2] + "/packed", pack=True, mesh="data=4"), progress=False)
train(cfg.replace(out=sys.argv[2] + "/micro", pack=True, mesh="data=4", micro_batches=2), progress=False)
print("ROWS", json.dumps([None if p is None else list(p.rows.shape) for p in used]))
"""


def test_packed_run_on_a_mesh_equals_the_padded_run_on_one_device(base_dir, tmp_path):
    """The packed rows split over 4 devices (a multiple of them: rows_multiple), in one batch and in 2
    micro-batches (a plan per micro-batch, its rows split), against one device, padded."""
    import json
    import os
    import subprocess
    import sys

    cfg = RLConfig(recipe="rl", model=base_dir, out=str(tmp_path / "x"), steps=2, seed=3,
                   **dict(SMALL, eval_every=0, probe_every=0, max_new_tokens=16))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", MESH_SCRIPT, json.dumps(cfg.to_dict()), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads([x for x in p.stdout.splitlines() if x.startswith("ROWS ")][-1][5:])
    micro = [r for r in rows[2:] if r is not None]  # a plan that saves no rows runs padded
    assert len(rows) == 4 and all(r is not None and r[0] < 16 and r[0] % 4 == 0 for r in rows[:2]), rows
    assert micro and all(r[0] == 2 and r[1] < 8 and r[1] % 4 == 0 for r in micro), rows
    assert_records_close(read_metrics(str(tmp_path / "padded")), read_metrics(str(tmp_path / "packed")))
    assert_records_close(read_metrics(str(tmp_path / "padded")), read_metrics(str(tmp_path / "micro")))
