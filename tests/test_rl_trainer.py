"""ntkdyn.rl.trainer: parameter groups over whole runs (CF-RL stage 1, LP-FT stage 1), reward rises, metrics keys
and files, exact resume, failure handling, and the data-parallel mesh against one device (subprocess, 4 forced
CPU devices)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from rl_helpers import SMALL, base_dir, easy_reward, leaves_equal, strip_timing  # noqa: F401 (fixture)

import ntkdyn as nd
from ntkdyn.rl import ConfigError, RLConfig, TrainingError, read_metrics, train


@pytest.fixture(scope="module")
def run_a(base_dir, tmp_path_factory):
    """An uninterrupted CF-RL run (2 head-only steps, then 4 full RL steps) with checkpoints every 3 steps."""
    out = str(tmp_path_factory.mktemp("rl") / "run_a")
    cfg = RLConfig(recipe="cf-rl", model=base_dir, out=out, steps=4, head_steps=2, seed=1,
                   **dict(SMALL, checkpoint_every=3))
    summary = train(cfg, progress=False, reward_fn=easy_reward)
    return cfg, out, summary


def test_cf_rl_stage1_keeps_backbone_bit_identical(base_dir, tmp_path):
    out = str(tmp_path / "cf")
    summary = train(RLConfig(recipe="cf-rl", model=base_dir, out=out, steps=0, head_steps=2, **SMALL),
                    progress=False, reward_fn=easy_reward)
    base, final = nd.load(base_dir), nd.load(os.path.join(out, "final"))
    assert leaves_equal(base.params["backbone"], final.params["backbone"])
    assert not leaves_equal(base.params["head"], final.params["head"])
    recs = read_metrics(out)
    assert [r["stage"] for r in recs] == ["stage1"] * 3 and recs[-1]["step"] == 2
    assert all(r["feature_change"] == 0.0 for r in recs)
    assert all("grad_norm/backbone" not in r for r in recs) and recs[1]["dz_share/gradient"] == 0.0
    assert summary["cost"]["stage1"]["steps"] == 2 and summary["cost"]["stage1"]["generated_tokens"] > 0


def test_lp_ft_stage1_fits_head_by_cross_entropy(base_dir, tmp_path):
    out = str(tmp_path / "lp")
    train(RLConfig(recipe="lp-ft", model=base_dir, out=out, steps=1, head_steps=3, **SMALL), progress=False,
          reward_fn=easy_reward)
    recs = read_metrics(out)
    assert [r["stage"] for r in recs] == ["stage1"] * 4 + ["rl"]
    s1 = recs[1:4]
    assert all("reward" not in r and 0 < r["loss"] < 10 and r["grad_norm/head"] > 0 for r in s1)
    assert s1[-1]["head_norm"] != recs[0]["head_norm"] and s1[-1]["feature_change"] == 0.0
    base, mid = nd.load(base_dir), nd.load(os.path.join(out, "final"))
    assert not leaves_equal(base.params["head"], mid.params["head"])
    assert "reward" in recs[-1] and recs[-1]["feature_change"] > 0.0


# ============================================================================= the trainer


def test_reward_rises_on_easy_task(base_dir, tmp_path):
    out = str(tmp_path / "rl")
    summary = train(RLConfig(recipe="rl", model=base_dir, out=out, steps=20, **dict(SMALL, eval_every=0)),
                    progress=False, reward_fn=easy_reward)
    rew = [r["reward"] for r in read_metrics(out) if "reward" in r]
    assert np.mean(rew[-5:]) > np.mean(rew[:3]) + 0.25, rew
    assert summary["final_eval"]["eval/reward"] > summary["first_eval"]["eval/reward"] + 0.25
    assert summary["final_eval"]["eval/max_prob"] > summary["first_eval"]["eval/max_prob"]  # confidence rises


def test_metrics_keys_and_files(run_a):
    cfg, out, summary = run_a
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == list(range(7))
    assert [r["stage"] for r in recs] == ["stage1"] * 3 + ["rl"] * 4
    assert [r["stage_step"] for r in recs] == [0, 1, 2, 1, 2, 3, 4]
    step_keys = {"step", "stage", "stage_step", "reward", "reward_std", "frac_reward_zero_std", "entropy", "kl",
                 "clip_ratio", "max_prob", "logp", "loss", "grad_norm/head", "head_norm", "feature_change",
                 "step_time", "tokens_per_s"}
    for r in recs[1:]:
        assert step_keys <= set(r), step_keys - set(r)
    assert all("grad_norm/backbone" in r for r in recs[3:])
    eval_keys = {"eval/reward", "eval/pass@1", "eval/pass@4", "eval/pass_at_k_curve", "eval/unique_answers",
                 "eval/unique_correct", "eval/distinct_2", "eval/entropy", "eval/max_prob", "eval/logp"}
    evaluated = [r["step"] for r in recs if "eval/reward" in r]
    assert evaluated == [0, 2, 3, 6]  # start, end of stage 1, every 3 steps, end
    assert all(eval_keys <= set(r) for r in recs if "eval/reward" in r)
    assert len(recs[0]["eval/pass_at_k_curve"]) == 3  # k = 1, 2, 4
    probed = [r["step"] for r in recs if "dz_share/gradient" in r]
    assert probed == [1, 2, 3, 4, 6]  # each stage's first step and every 2 stage steps
    assert all(0 < r["clip_ratio"] <= 1 or r["clip_ratio"] == 0 for r in recs[1:])
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["config"] == cfg.to_dict()
    assert summary["cost"]["stage1"]["steps"] == 2 and summary["cost"]["rl"]["steps"] == 4
    final = nd.load(os.path.join(out, "final"))
    assert final.tokenizer is not None
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"))
    ids = np.array([[1] + final.tokenizer.encode("sum 47:")])
    with torch.no_grad():
        z = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(z, np.asarray(final.logits(ids)), atol=1e-4)


def test_resume_reproduces_uninterrupted_run(run_a, tmp_path):
    cfg, out_a, _ = run_a
    out_b = str(tmp_path / "run_b")

    class Killed(Exception):
        pass

    def kill_at_5(rec):
        if rec["step"] == 5:
            raise Killed  # after the checkpoint of step 3 and the metrics lines of steps 4 and 5

    with pytest.raises(Killed):
        train(cfg.replace(out=out_b), progress=False, reward_fn=easy_reward, callback=kill_at_5)
    assert read_metrics(out_b)[-1]["step"] == 5
    with open(os.path.join(out_b, "checkpoint", "state.json")) as f:
        assert json.load(f)["step"] == 3
    with pytest.raises(ConfigError, match="resume=True"):
        train(cfg.replace(out=out_b), progress=False, reward_fn=easy_reward)
    train(cfg.replace(out=out_b, resume=True), progress=False, reward_fn=easy_reward)
    assert strip_timing(read_metrics(out_b)) == strip_timing(read_metrics(out_a))
    a, b = nd.load(os.path.join(out_a, "final")), nd.load(os.path.join(out_b, "final"))
    assert leaves_equal(a.params, b.params)
    with pytest.raises(ConfigError, match="different config"):
        train(cfg.replace(out=out_b, resume=True, lr=1e-2), progress=False)


def _close_records(a, b, rtol):
    """Two runs' records equal but for timing, floats to rtol (lanes are vmapped: rounding may differ)."""
    assert len(a) == len(b)
    for x, y in zip(strip_timing(a), strip_timing(b)):
        assert x.keys() == y.keys()
        for k, v in x.items():
            if isinstance(v, float):
                np.testing.assert_allclose(y[k], v, rtol=rtol, atol=1e-7, err_msg=f"step {x['step']} {k}")
            elif not isinstance(v, list):
                assert y[k] == v, (x["step"], k)


def test_a_lane_of_a_batched_run_equals_its_lone_run(run_a, tmp_path):
    """train_batch: three seeds as one program; each run directory equals (to rounding) its lone run (run_a is
    seed 1's), final weights included; a batch killed mid-run resumes to the uninterrupted batch's records."""
    from ntkdyn.rl import train_batch

    cfg, out_a, _ = run_a
    cfgs = [cfg.replace(seed=s, out=str(tmp_path / f"lane{s}")) for s in (0, 1, 2)]
    summaries = train_batch(cfgs, progress=False, reward_fn=easy_reward)
    assert [s["seed"] for s in summaries] == [0, 1, 2] and all(s["lanes"] == 3 for s in summaries)
    assert cfg.seed == 1
    _close_records(read_metrics(out_a), read_metrics(cfgs[1].out), rtol=1e-4)
    # the final models in function space (Adam turns rounding-level gradient differences of parameters whose
    # gradient is ~0 into lr-sized steps, so single weights near 0 may differ by ~0.1 lr; the logits do not)
    a, b = nd.load(os.path.join(out_a, "final")), nd.load(os.path.join(cfgs[1].out, "final"))
    ids = np.array([[1] + a.tokenizer.encode("sum 47:12+35"), [1] + a.tokenizer.encode("sum 81:40+41")])
    za, zb = np.asarray(a.logits(ids)), np.asarray(b.logits(ids))
    assert np.abs(za - zb).max() <= 1e-3 * np.abs(za).max()
    assert read_metrics(cfgs[0].out)[1]["entropy"] != read_metrics(cfgs[2].out)[1]["entropy"]  # the seeds differ

    killed = [c.replace(out=str(tmp_path / f"k{c.seed}")) for c in cfgs]

    def kill_at_5(rec):
        if rec["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_batch(killed, progress=False, reward_fn=easy_reward, callback=kill_at_5)
    train_batch([c.replace(resume=True) for c in killed], progress=False, reward_fn=easy_reward)
    for c, k in zip(cfgs, killed):
        assert strip_timing(read_metrics(k.out)) == strip_timing(read_metrics(c.out))
    with pytest.raises(ConfigError, match="differ only in"):
        train_batch([cfgs[0], cfgs[1].replace(lr=1e-2)], progress=False)
    with pytest.raises(ConfigError, match="share the run directory"):
        train_batch([cfgs[0], cfgs[1].replace(out=cfgs[0].out)], progress=False)


def test_nonfinite_reward_stops_and_keeps_checkpoint(base_dir, tmp_path):
    out = str(tmp_path / "nan")
    state = {"bad": False}

    def reward(prompt, text):
        return float("nan") if state["bad"] else easy_reward(prompt, text)

    def arm(rec):
        if rec["step"] == 2:
            state["bad"] = True

    with pytest.raises(TrainingError, match=r"step 3 .*non-finite reward") as e:
        train(RLConfig(recipe="rl", model=base_dir, out=out, steps=5, **dict(SMALL, checkpoint_every=1)),
              progress=False, reward_fn=reward, callback=arm)
    assert "step 2" in str(e.value)  # names the kept checkpoint
    with open(os.path.join(out, "checkpoint", "state.json")) as f:
        assert json.load(f)["step"] == 2
    assert nd.load(os.path.join(out, "checkpoint", "model")).config.vocab_size > 0
    assert read_metrics(out)[-1]["step"] == 2


# ============================================================================= data parallel


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from ntkdyn.rl import RLConfig, train
    assert len(jax.devices()) == 4, jax.devices()
    cfg = RLConfig.from_dict(json.loads(sys.argv[1]))
    easy = lambda p, t: 1.0 if t.startswith("1") else 0.0
    train(cfg, mesh=Mesh(np.array(jax.devices()), ("data",)), progress=False, reward_fn=easy)
""")


def test_mesh_of_four_devices_equals_one_device(run_a, tmp_path):
    cfg, out_a, _ = run_a
    out = str(tmp_path / "mesh")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    d = cfg.replace(out=out, checkpoint_every=0, probe_every=0).to_dict()  # (no dz_share: fewer compilations)
    p = subprocess.run([sys.executable, "-c", MESH_SCRIPT, json.dumps(d)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["mesh_devices"] == 4
    ra, rb = strip_timing(read_metrics(out_a)), strip_timing(read_metrics(out))
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert set(y) == {k for k in x if not k.startswith("dz_share/")}
        for k in y:
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=1e-3, abs=1e-4), (x["step"], k)
            else:
                assert np.allclose(x[k], y[k], rtol=1e-3, atol=1e-4) if isinstance(x[k], list) else x[k] == y[k]
