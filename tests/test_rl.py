"""ntkdyn.rl: objectives against hand values, parameter groups, the trainer (reward rises, exact resume, failure
handling, bad config), the CLI, and the data-parallel mesh against one device (subprocess, 4 forced CPU devices).

One tiny SFT'd base model (module scope) and one batch shape (4 prompts x 4 samples, 8 new tokens; evaluation 4 x 4)
keep the jit compilations shared between the tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn.rl import TIMING_KEYS, ConfigError, RLConfig, TrainingError, read_metrics, train
from ntkdyn.rl import objectives as O

# the shared small shape and settings (num_iterations=2 and beta>0 exercise the clipped ratio and the KL path)
SMALL = dict(task="sum", group_size=4, prompts_per_step=4, max_new_tokens=8, eval_prompts=4, eval_samples=4,
             eval_every=3, probe_every=2, probe_prompts=4, checkpoint_every=0, lr=3e-3, num_iterations=2, beta=0.01)


def easy_reward(prompt, text):
    """An easy, learnable reward on "sum" completions: the answer starts with the digit 1 (~15% under the base)."""
    return 1.0 if text.startswith("1") else 0.0


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from ntkdyn import sft

    d = str(tmp_path_factory.mktemp("rl") / "base")
    sft.train("sum", d, size="tiny", steps=150, progress=False, eval_prompts=0)
    return d


@pytest.fixture(scope="module")
def run_a(base_dir, tmp_path_factory):
    """An uninterrupted CF-RL run (2 head-only steps, then 4 full RL steps) with checkpoints every 3 steps."""
    out = str(tmp_path_factory.mktemp("rl") / "run_a")
    cfg = RLConfig(recipe="cf-rl", model=base_dir, out=out, steps=4, head_steps=2, seed=1,
                   **dict(SMALL, checkpoint_every=3))
    summary = train(cfg, progress=False, reward_fn=easy_reward)
    return cfg, out, summary


# ============================================================================= objectives (hand values)


def test_advantages_hand_values():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    a, _ = O.advantages(r, "grpo")
    std = np.sqrt(4 * 0.25 / 3)  # Bessel-corrected std of [1,0,0,1]
    np.testing.assert_allclose(a[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(a[3], (r[3] - 0.25) / (np.std(r[3], ddof=1) + 1e-4), rtol=1e-6)
    a, _ = O.advantages(r, "dr_grpo")
    np.testing.assert_allclose(a[0], [0.5, -0.5, -0.5, 0.5], rtol=1e-6)
    a, _ = O.advantages(r, "rloo")
    np.testing.assert_allclose(a[0], [1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(a[3], [-1 / 3, -1 / 3, -1 / 3, 1.0], rtol=1e-6)
    for kind in ("grpo", "dr_grpo", "rloo"):  # zero-variance groups: exactly 0 (0.1 x 4 does not average to 0.1)
        a, _ = O.advantages(r, kind)
        assert np.all(np.isfinite(a))
        assert np.array_equal(np.asarray(a[1:3]), np.zeros((2, 4), np.float32)), kind
    a, b = O.advantages(r, "reinforce", baseline=0.2, decay=0.9)
    np.testing.assert_allclose(a, r - 0.2, rtol=1e-6)
    np.testing.assert_allclose(b, 0.9 * 0.2 + 0.1 * r.mean(), rtol=1e-6)
    a, b = O.advantages(r, "reinforce", baseline=None, decay=0.9)  # unset baseline: the batch mean
    np.testing.assert_allclose(a, r - r.mean(), rtol=1e-6, atol=1e-7)
    a, _ = jax.jit(lambda r: O.advantages(r, "grpo"))(np.ones((2, 8)))  # jit-able, all-constant batch
    assert np.array_equal(np.asarray(a), np.zeros((2, 8), np.float32))


def test_aggregation_hand_values():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = jnp.array([[1, 1, 1], [1, 0, 0]])
    assert float(O.aggregate(x, m, "token_mean")) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert float(O.aggregate(x, m, "seq_mean_token_mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(O.aggregate(x, jnp.zeros_like(m), "token_mean")) == 0.0


def test_on_policy_loss_is_minus_J_and_its_gradient():
    logp = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]]))
    m = jnp.array([[1, 1, 0], [1, 1, 1]])
    adv = jnp.array([2.0, -1.0])
    loss, aux = O.pg_loss(logp, None, adv, m, loss_agg="seq_mean_token_mean")
    # ratio = 1: loss = -(1/B) Σ_b A_b (1/|y_b|) Σ_l 1
    assert float(loss) == pytest.approx(-(2.0 + -1.0) / 2)
    g = jax.grad(lambda lp: O.pg_loss(lp, None, adv, m)[0])(logp)
    want = -np.array([[2 / 2, 2 / 2, 0], [-1 / 3, -1 / 3, -1 / 3]]) / 2  # -w_bl A_b, w = 1/(B |y_b|)
    np.testing.assert_allclose(g, want, rtol=1e-6)
    assert float(aux["clip_ratio"]) == 0.0


def test_ppo_clipping_hand_example():
    old = jnp.zeros((1, 4))
    logp = jnp.log(jnp.array([[1.5, 1.5, 0.5, 1.1]]))
    m = jnp.ones((1, 4))
    # per token with eps = 0.2: A=+1, ρ=1.5 -> −min(1.5, 1.2) = −1.2 (clipped)
    loss, aux = O.pg_loss(logp[:, :1], old[:, :1], jnp.array([1.0]), m[:, :1], clip_eps=0.2)
    assert float(loss) == pytest.approx(-1.2) and float(aux["clip_ratio"]) == 1.0
    # A=−1, ρ=1.5 -> −min(−1.5, −1.2) = 1.5 (not clipped: the objective is pessimistic)
    loss, aux = O.pg_loss(logp[:, 1:2], old[:, 1:2], jnp.array([-1.0]), m[:, :1], clip_eps=0.2)
    assert float(loss) == pytest.approx(1.5) and float(aux["clip_ratio"]) == 0.0
    # A=−1, ρ=0.5 -> −min(−0.5, −0.8) = 0.8 (clipped)
    loss, aux = O.pg_loss(logp[:, 2:3], old[:, 2:3], jnp.array([-1.0]), m[:, :1], clip_eps=0.2)
    assert float(loss) == pytest.approx(0.8) and float(aux["clip_ratio"]) == 1.0
    # the clipped tokens get no gradient, the others −A ρ
    g = jax.grad(lambda lp: O.pg_loss(lp, old, jnp.array([1.0]), m, clip_eps=0.2, loss_agg="token_mean")[0])(logp)
    np.testing.assert_allclose(g, [[0.0, 0.0, -0.5 / 4, -1.1 / 4]], rtol=1e-5)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_zero_when_policy_equals_reference(estimator):
    rng = np.random.default_rng(0)
    logp = jnp.asarray(np.log(rng.uniform(0.05, 1.0, (3, 5))), jnp.float32)
    m = jnp.asarray(rng.integers(0, 2, (3, 5)))
    adv = jnp.array([1.0, -0.5, 0.2])
    assert np.array_equal(np.asarray(O.kl_penalty(logp, logp, estimator)), np.zeros((3, 5), np.float32))
    f = lambda lp, beta: O.pg_loss(lp, None, adv, m, logp_ref=logp, beta=beta, kl_estimator=estimator)
    (l0, a0), (l1, a1) = f(logp, 0.0), f(logp, 0.5)
    assert float(a1["kl"]) == 0.0 and float(l0) == float(l1)
    if estimator == "k3":  # k3's gradient vanishes at π = π_ref (k1's per-sample gradient does not, only its mean)
        g0 = jax.grad(lambda lp: f(lp, 0.0)[0])(logp)
        g1 = jax.grad(lambda lp: f(lp, 0.5)[0])(logp)
        assert np.array_equal(np.asarray(g0), np.asarray(g1))
    # away from the reference: k1 = Δ, k3 = e^{-Δ} + Δ - 1 >= 0
    d = O.kl_penalty(logp + 0.3, logp, estimator)
    want = 0.3 if estimator == "k1" else np.exp(-0.3) + 0.3 - 1
    np.testing.assert_allclose(d, np.full((3, 5), want), rtol=1e-5)


def test_completion_logp_matches_sampler(base_dir):
    lm = nd.load(base_dir)
    tok = lm.tokenizer
    g = lm.generate([[tok.bos_id] + tok.encode(p) for p in ["sum 47:", "sum 20:", "sum 93:"]], 8, seed=3)
    from ntkdyn.models.lm import pad_left

    ids, mask = pad_left([[tok.bos_id] + tok.encode(p) for p in ["sum 47:", "sum 20:", "sum 93:"]])
    f = jax.jit(lambda p, i, m, c: O.completion_logp(lm.graphdef, lm.config, p, i, m, c))
    st = f(lm.params, jnp.asarray(ids), jnp.asarray(mask), g.tokens)
    m = np.asarray(g.mask) == 1
    np.testing.assert_allclose(np.asarray(st["logp"])[m], np.asarray(g.logp_model)[m], atol=1e-5)


# ============================================================================= parameter groups


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


def test_group_backbone_keeps_head_and_group_head_keeps_backbone(base_dir):
    from ntkdyn.rl.trainer import _canonical_graphdef, _LossSpec, _OptSpec, _opt_init, _rl_update

    lm = nd.load(base_dir)
    tok = lm.tokenizer
    lm.graphdef = _canonical_graphdef(lm.config, lm.graphdef)  # share the trainer's compiled programs
    gd = dict(graphdef=lm.graphdef, cfg=lm.config)
    ids, mask = nd.models.pad_left([[tok.bos_id] + tok.encode(p) for p in ["sum 47:", "sum 31:"] * 8])
    g = lm.generate(ids, 8, prompt_mask=mask, seed=0)
    batch = dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.asarray(mask), completion=g.tokens, mask=g.mask,
                 adv=jnp.asarray(np.tile([1.0, -1.0, 0.5, -0.5], 4), jnp.float32))
    ls = _LossSpec(1.0, 0.2, "seq_mean_token_mean", 0.01, "k3")
    zeros = jnp.zeros(g.tokens.shape, jnp.float32)
    for group, frozen, trained in (("backbone", "head", "backbone"), ("head", "backbone", "head")):
        spec = _OptSpec("adam", 3e-3, group, 1.0, 0.0)
        p, st = lm.params, _opt_init(lm.params, spec=spec)
        for it in range(2):
            p, st, m, _ = _rl_update(p, st, batch, zeros, jnp.asarray(it == 0), g.logp_model, spec=spec, ls=ls, **gd)
        assert leaves_equal(lm.params[frozen], p[frozen]), group
        assert not leaves_equal(lm.params[trained], p[trained]), group
        assert set(k for k in m if k.startswith("grad_norm/")) == {f"grad_norm/{trained}"}
    tx = O.make_optimizer("sgd", 0.1, "head")  # the plain optax route: set_to_zero on the frozen leaves
    grads = jax.tree.map(jnp.ones_like, lm.params)
    upd, _ = tx.update(grads, tx.init(lm.params), lm.params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(upd["backbone"]))
    assert all(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(upd["head"]))


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


def test_bad_config_rejected_before_work(tmp_path):
    with pytest.raises(ConfigError, match=r"lr=-1.*finite number > 0"):
        RLConfig(out="x", lr=-1)
    with pytest.raises(ConfigError, match=r"advantage='ppo'.*grpo"):
        RLConfig(out="x", advantage="ppo")
    with pytest.raises(ConfigError, match=r"group_size=1"):
        RLConfig(out="x", group_size=1)
    with pytest.raises(ConfigError, match=r"task='nope'"):
        RLConfig(out="x", task="nope")
    with pytest.raises(ConfigError, match=r"steps=2.5"):
        RLConfig(out="x", steps=2.5)
    with pytest.raises(ConfigError, match=r"out=None"):
        RLConfig()
    with pytest.raises(ConfigError, match=r"unknown key.*learning_rate"):
        RLConfig.from_dict({"out": "x", "learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="head_steps.*head_epochs"):
        RLConfig(out="x", recipe="cf-rl", head_steps=2, head_epochs=1.0)
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        train(RLConfig(model=str(tmp_path / "missing"), out=str(out)), progress=False)
    assert not out.exists()  # nothing was written
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"out": "x", "stepz": 3}))
    with pytest.raises(ConfigError, match=r"cfg.json: unknown key.*stepz"):
        RLConfig.from_json(str(p))


def test_cli(base_dir, tmp_path, capsys):
    from ntkdyn.cli import main

    out = str(tmp_path / "cli")
    flags = ["--model", base_dir, "--task", "sum", "--group-size", "4", "--prompts-per-step", "4",
             "--max-new-tokens", "8", "--eval-prompts", "4", "--eval-samples", "4", "--probe-prompts", "4",
             "--lr", "3e-3", "--num-iterations", "2", "--beta", "0.01", "--no-progress"]
    assert main(["rl", "--recipe", "cf-rl", "--steps", "1", "--head-steps", "1", "--out", out] + flags) == 0
    assert "final model" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]
    assert main(["rl", "--out", out, "--resume", "--no-progress"]) == 0  # a finished run: nothing to do
    assert main(["rl", "--out", str(tmp_path / "bad"), "--lr", "-2", "--model", base_dir]) == 2
    assert "lr=-2" in capsys.readouterr().err


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
