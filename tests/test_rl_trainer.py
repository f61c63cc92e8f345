"""ntkdyn.rl.trainer: parameter groups over whole runs (CF-RL stage 1, LP-FT stage 1), reward rises, metrics keys
and files, exact resume, failure handling, and the data-parallel mesh against one device (subprocess, 4 forced
CPU devices)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from rl_helpers import SMALL, assert_records_close, base_dir, easy_reward, leaves_equal, strip_timing  # noqa: F401 (fixture)

import ntkdyn as nd
from ntkdyn import memory
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


def test_a_lane_of_a_batched_run_equals_its_lone_run(run_a, tmp_path):
    """train_batch: three seeds as one program; each run directory equals (to rounding) its lone run (run_a is
    seed 1's), final weights included; a batch killed mid-run resumes to the uninterrupted batch's records."""
    from ntkdyn.rl import train_batch

    cfg, out_a, _ = run_a
    cfgs = [cfg.replace(seed=s, out=str(tmp_path / f"lane{s}")) for s in (0, 1, 2)]
    summaries = train_batch(cfgs, progress=False, reward_fn=easy_reward)
    assert [s["seed"] for s in summaries] == [0, 1, 2] and all(s["lanes"] == 3 for s in summaries)
    assert cfg.seed == 1
    assert_records_close(read_metrics(out_a), read_metrics(cfgs[1].out), rtol=1e-4, atol=1e-7)  # lanes: vmapped
    # the final models in function space (Adam turns rounding-level gradient differences of parameters whose
    # gradient is ~0 into lr-sized steps, so single weights near 0 may differ by ~0.1 lr; the logits do not)
    a, b = nd.load(os.path.join(out_a, "final")), nd.load(os.path.join(cfgs[1].out, "final"))
    ids = np.array([[1] + a.tokenizer.encode("sum 47:12+35"), [1] + a.tokenizer.encode("sum 81:40+41")])
    za, zb = np.asarray(a.logits(ids)), np.asarray(b.logits(ids))
    assert np.abs(za - zb).max() <= 1e-3 * np.abs(za).max()
    assert read_metrics(cfgs[0].out)[1]["entropy"] != read_metrics(cfgs[2].out)[1]["entropy"]  # the seeds differ
    # the lanes evaluated all at once (eval_lanes=0) instead of one after the other (the default): the same runs
    together = [c.replace(out=str(tmp_path / f"together{c.seed}"), eval_lanes=0) for c in cfgs]
    train_batch(together, progress=False, reward_fn=easy_reward)
    for c, t in zip(cfgs, together):
        assert_records_close(read_metrics(c.out), read_metrics(t.out), rtol=1e-4, atol=1e-7)

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


def test_lanes_map_in_chunks_equals_the_vmap():
    """Lanes.map(chunk=k): the lanes k at a time inside one jit (jax.lax.map), shared arguments (in_axes None)
    included, equal to the vmap over all lanes; a chunk that does not divide the lanes works; chunk < 1 is an
    error."""
    from ntkdyn.rl.lanes import Lanes

    def f(w, x, scale):
        return {"y": jax.numpy.tanh(x @ w) * scale, "n": jax.numpy.sum(w ** 2)}

    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(5, 4, 3)).astype(np.float32), rng.normal(size=(5, 6, 4)).astype(np.float32)
    lanes = Lanes(5)
    full = lanes.map(f, in_axes=(0, 0, None))(w, x, np.float32(2.0))
    for chunk in (1, 2, 5, 9):
        got = lanes.map(f, in_axes=(0, 0, None), chunk=chunk)(w, x, np.float32(2.0))
        for k in full:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(full[k]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="chunk=0"):
        lanes.map(f, in_axes=(0, 0, None), chunk=0)
    with pytest.raises(ConfigError, match="eval_lanes"):
        RLConfig(out="x", eval_lanes=-1)


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


# ============================================================================= meshes (data parallel, FSDP)


# One subprocess on 4 forced CPU devices: the same small run on one device and on the meshes data=4, fsdp=4 and
# data=2,fsdp=2, and a run on data=2,fsdp=2 stopped after its first step and resumed (on fsdp=4). SGD: Adam's first
# steps are lr * sign(g), which turns the float rounding of a reordered reduction into a whole lr on a near-zero
# gradient; SGD compares the arithmetic itself.
MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from ntkdyn.rl import RLConfig, train
    assert len(jax.devices()) == 4, jax.devices()
    d, root = json.loads(sys.argv[1]), sys.argv[2]
    easy = lambda p, t: 1.0 if t.startswith("1") else 0.0
    cfg = RLConfig.from_dict(d)
    summ = {"one": train(cfg.replace(out=root + "/one"), progress=False, reward_fn=easy)}
    for spec in ("data=4", "fsdp=4", "data=2,fsdp=2"):
        summ[spec] = train(cfg.replace(out=root + "/" + spec, mesh=spec), progress=False, reward_fn=easy)
    def stop(rec):
        if rec["step"] == 1:
            raise KeyboardInterrupt
    try:
        train(cfg.replace(out=root + "/resumed", mesh="data=2,fsdp=2"), progress=False, reward_fn=easy, callback=stop)
    except KeyboardInterrupt:
        pass
    summ["resumed"] = train(cfg.replace(out=root + "/resumed", mesh="fsdp=4", resume=True), progress=False,
                            reward_fn=easy)
    json.dump(summ, open(root + "/summaries.json", "w"))
""")


def test_meshes_equal_one_device_and_resume_exactly(base_dir, tmp_path):
    """data only, fsdp only and both equal the one-device run to 1e-5 in every metric and weight; FSDP holds 1/F of
    the parameters per device; a run on a mesh resumed (on another mesh) from its checkpoint equals the
    uninterrupted run."""
    cfg = RLConfig(recipe="rl", model=base_dir, out=str(tmp_path / "x"), steps=2, seed=1, optimizer="sgd",
                   **dict(SMALL, lr=0.05, eval_every=0, probe_every=0, num_iterations=1, beta=0.0,
                            checkpoint_every=1))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", MESH_SCRIPT, json.dumps(cfg.to_dict()), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(tmp_path / "summaries.json") as f:
        summ = json.load(f)
    one = strip_timing(read_metrics(str(tmp_path / "one")))
    w_one = nd.load(str(tmp_path / "one" / "final")).params
    total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(w_one))
    assert summ["one"]["param_bytes_per_device"] == total and summ["one"]["mesh"] is None
    for name in ("data=4", "fsdp=4", "data=2,fsdp=2", "resumed"):
        with open(tmp_path / name / "config.json") as f:
            assert json.load(f)["mesh_devices"] == 4
        got = strip_timing(read_metrics(str(tmp_path / name)))
        assert [r["step"] for r in got] == [r["step"] for r in one] == [0, 1, 2]
        for x, y in zip(one, got):
            assert set(x) == set(y)
            for k in x:
                if isinstance(x[k], float):
                    assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-5), (name, x["step"], k)
                elif isinstance(x[k], list):
                    assert np.allclose(x[k], y[k], rtol=1e-5, atol=1e-5), (name, x["step"], k)
                else:
                    assert x[k] == y[k], (name, x["step"], k)
        w = nd.load(str(tmp_path / name / "final")).params
        for a, b in zip(jax.tree.leaves(w_one), jax.tree.leaves(w)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5, err_msg=name)
    assert summ["data=4"]["param_bytes_per_device"] == total  # data parallel: replicated
    for name, F in (("fsdp=4", 4), ("data=2,fsdp=2", 2), ("resumed", 4)):
        b = summ[name]["param_bytes_per_device"]  # the arrays the run held, as the memory plan predicts them
        assert b == 4 * memory.params_per_device(nd.load(base_dir).config, F) < 1.1 * total / F, (name, b, total)
    # the resumed run is the uninterrupted one: exactly for the steps before the stop, to float rounding after
    assert strip_timing(read_metrics(str(tmp_path / "resumed")))[:2] == strip_timing(
        read_metrics(str(tmp_path / "data=2,fsdp=2")))[:2]
