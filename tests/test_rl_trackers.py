"""ntkdyn.rl.trackers (the dz share, the eNTK drift, claim 6's measures): the context choice and the answer tokens
by hand, claim 6's alignment and gains against a brute-force float64 computation on tiny models (explicit logits per
unpadded sequence and the linearisation), and the trainer's records: keys at the right steps, no drift when the
params do not change, and a resumed run keeping K0."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import SMALL, base_dir, easy_reward, strip_timing  # noqa: F401 (fixture)

import hf_models
import ntkdyn as nd
from ntkdyn.rl import RLConfig, read_metrics, train, train_batch
from ntkdyn.rl import trackers
from ntkdyn.rl.trackers import claim6, drift

DRIFT = [f"ntk/{m}_{z}" for m in ("align", "change") for z in ("R", "G", "K")] + ["ntk/trace_G", "ntk/trace_R"]
CLAIM6 = ["claim6/trG_answer", "claim6/align_G", "claim6/align_R", "claim6/gain_G", "claim6/gain_R", "claim6/gain"]


def test_drift_contexts_round_robin():
    pos = np.array([[0, 5], [0, 6], [0, 7], [1, 3], [2, 9], [2, 10]], np.int32)[[5, 2, 0, 3, 1, 4]]  # shuffled
    np.testing.assert_array_equal(drift.drift_contexts(pos, 4), [[0, 5], [1, 3], [2, 9], [0, 6]])
    np.testing.assert_array_equal(drift.drift_contexts(pos, 100), [[0, 5], [1, 3], [2, 9], [0, 6], [2, 10],
                                                                      [0, 7]])


def test_trackers_follow_the_config():
    probes = trackers.Probes(np.zeros((2, 6), np.int32), np.ones((2, 6), np.float32), np.array([[0, 3], [1, 4]]))
    names = lambda **kw: [t.name for t in trackers.from_config(_small(out="x", **kw), None, probes, "x")]  # noqa: E731
    assert names(probe_every=0) == [] and names(probe_every=5) == ["dz_share"]
    assert names(probe_every=5, claim6=True, ntk_every=2) == ["dz_share", "claim6", "ntk_drift"]  # record order


def test_answer_tokens():
    ids = np.array([[1, 4, 7, 8, 2, 0], [1, 5, 8, 9, 2, 0]])
    pos = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3]])  # predict 7, 8, 2 and 9, 2
    np.testing.assert_array_equal(claim6.answer_tokens(ids, pos), [2, 7, 8, 9])


# ----------------------------------------------------------------------------- claim 6 vs brute force


def _rl_batch(rng, V, B=4, Tp=5, N=4):
    """A rollout batch as rl_update sees it: left-padded prompts (lengths 2..5), completions with a mask up to EOS."""
    lens = [5, 3, 2, 4][:B]
    pids, pmask = np.zeros((B, Tp), np.int32), np.zeros((B, Tp), np.int32)
    for b, n in enumerate(lens):
        pids[b, Tp - n:] = rng.randint(3, V, n)
        pmask[b, Tp - n:] = 1
    comp = rng.randint(3, V, (B, N)).astype(np.int32)
    mask = np.ones((B, N), np.int32)
    mask[1, 2:] = 0  # a completion of 2 tokens (then padding)
    comp[1, 2:] = 0
    mask[3, 3:] = 0
    comp[3, 3:] = 0
    adv = np.array([1.0, -0.5, 0.8, -1.3])[:B]
    return dict(prompt_ids=pids, prompt_mask=pmask, completion=comp, mask=mask, adv=adv)


def _brute(lm, before, after, batch, rows, T):
    """Float64, one unpadded sequence at a time: z, Δz_R = ΔW h + Δb, Δz_G = W · JVP(h; δ) by jax.jvp, D explicit."""
    delta = jax.tree.map(jnp.subtract, after, before)
    W0 = before["head"]["W"]
    Ds, Gs, Rs = [], [], []
    for b in rows:
        real = batch["prompt_ids"][b][batch["prompt_mask"][b] == 1]
        seq = np.concatenate([real, batch["completion"][b]])[None]
        h, dh = jax.jvp(lambda p: lm.features(seq, p)[0], (before,), (delta,))
        z = np.asarray(h @ W0.T + before["head"].get("b", 0.0))
        dz_R = np.asarray(h @ delta["head"]["W"].T + delta["head"].get("b", 0.0))
        dz_G = np.asarray(dh @ W0.T)
        for l in np.flatnonzero(batch["mask"][b]):
            t = len(real) - 1 + l
            y = batch["completion"][b, l]
            pi = np.exp(z[t] / T - np.max(z[t] / T))
            pi /= pi.sum()
            Ds.append(batch["adv"][b] * (np.eye(len(pi))[y] - pi))
            Gs.append(dz_G[t])
            Rs.append(dz_R[t])
    D, G, R = np.array(Ds), np.array(Gs), np.array(Rs)
    cos = lambda a: np.sum(a * D) / np.linalg.norm(a) / np.linalg.norm(D)  # noqa: E731
    gain = lambda a: np.sum(a * D) / T / len(rows)  # noqa: E731
    return {"claim6/align_G": cos(G), "claim6/align_R": cos(R), "claim6/gain_G": gain(G), "claim6/gain_R": gain(R),
            "claim6/gain": gain(G + R)}


@pytest.mark.parametrize("name,rollouts,chunk_rows", [("llama_gqa", 0, 4), ("llama_tied", 3, 2)])
def test_claim6_update_measures_vs_bruteforce(tmp_path, monkeypatch, name, rollouts, chunk_rows):
    """llama_gqa: untied with a head bias, all rollouts in one chunk; llama_tied: a tied head, a fixed subset of 3
    rollouts in chunks of 2 rows (the last one padded)."""
    lm = nd.load(hf_models.build(name, str(tmp_path))[0])
    rng = np.random.RandomState(0)
    before = jax.tree.map(jnp.asarray, lm.params)
    if name == "llama_gqa":
        before["head"]["b"] = jnp.asarray(rng.normal(0, 0.5, lm.config.vocab_size), jnp.float32)
    after = jax.tree.map(lambda x: x + 1e-2 * jnp.asarray(rng.normal(size=x.shape), x.dtype), before)
    batch = _rl_batch(rng, lm.config.vocab_size)
    T = 0.7
    N, V = batch["completion"].shape[1], lm.config.vocab_size
    monkeypatch.setattr(claim6, "CHUNK_BYTES", 8 * 4 * N * V * chunk_rows)
    rows = claim6.measured_rows(rollouts, 5, 4)
    got = claim6.update_measures(lm, before, after, batch, temperature=T, rows=rows)
    assert len(rows) == (rollouts or 4)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), t)  # noqa: E731
        want = _brute(lm, f64(before), f64(after), batch, rows, T)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=2e-4, atol=1e-7, err_msg=k)
    assert abs(want["claim6/align_G"]) > 1e-3 and abs(want["claim6/gain_R"]) > 1e-6  # not trivially zero


# ----------------------------------------------------------------------------- the trainer's records


def _small(**kw):
    return RLConfig(**{**SMALL, "eval_every": 0, "probe_every": 0, "num_iterations": 1, "beta": 0.0, **kw})


def test_cf_rl_logs_drift_and_claim6_and_resume_keeps_K0(base_dir, tmp_path):
    cfg = _small(recipe="cf-rl", model=base_dir, out=str(tmp_path / "a"), steps=3, head_steps=2, seed=2,
                 checkpoint_every=2, ntk_every=2, ntk_contexts=3, claim6=True)
    train(cfg, progress=False, reward_fn=easy_reward)
    recs = read_metrics(cfg.out)
    assert [r["step"] for r in recs if "ntk/align_G" in r] == [0, 2, 4, 5]  # start, every 2 steps, the last step
    assert [r["step"] for r in recs if "claim6/gain" in r] == [3]  # the first step of the stage "rl"
    assert all(set(DRIFT) <= set(r) for r in recs if "ntk/align_G" in r)
    assert set(CLAIM6) <= set(recs[3]) and recs[3]["stage"] == "rl" and recs[3]["stage_step"] == 1
    r0, r2 = recs[0], recs[2]
    assert r0["ntk/change_G"] == 0.0 and r0["ntk/change_R"] == 0.0 and r0["ntk/change_K"] == 0.0
    np.testing.assert_allclose([r0[f"ntk/align_{z}"] for z in "RGK"], 1.0, rtol=1e-6)
    # stage 1 trains the head only: h, hence R = V s, is bit-identical; G = W M Wᵀ moves with W
    assert r2["ntk/change_R"] == 0.0 and r2["ntk/trace_R"] == r0["ntk/trace_R"] and r2["ntk/change_G"] > 0
    assert recs[5]["ntk/change_R"] > 0  # stage 2 moves the features
    assert recs[3]["claim6/trG_answer"] > 0
    np.testing.assert_allclose(recs[3]["claim6/gain"], recs[3]["claim6/gain_G"] + recs[3]["claim6/gain_R"])
    with np.load(os.path.join(cfg.out, drift.NTK0_FILE)) as f:
        assert f["G"].shape == (3, 3) and f["contexts"].shape == (3, 2)
        k0 = {k: f[k] for k in f.files}

    out_b = str(tmp_path / "b")

    def kill_at_4(rec):
        if rec["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg.replace(out=out_b), progress=False, reward_fn=easy_reward, callback=kill_at_4)
    path = os.path.join(out_b, drift.NTK0_FILE)
    before = os.stat(path).st_mtime_ns
    train(cfg.replace(out=out_b, resume=True), progress=False, reward_fn=easy_reward)
    assert os.stat(path).st_mtime_ns == before  # read back, not rewritten
    with np.load(path) as f:
        assert all(np.array_equal(f[k], v) for k, v in k0.items())
    assert strip_timing(read_metrics(out_b)) == strip_timing(recs)


def test_no_drift_when_params_do_not_change(base_dir, tmp_path):
    """A constant reward (truncated completions scored too): every advantage is 0, so Adam's update is 0 and the kernels stay K0 (change 0,
    alignment 1); claim 6's D is 0 (alignments undefined: NaN, gains 0)."""
    cfg = _small(recipe="rl", model=base_dir, out=str(tmp_path / "c"), steps=2, seed=0, ntk_every=1,
                 ntk_contexts=2, claim6=True, ntk_method="hutchinson", ntk_probes=4, score_truncated=True)
    train(cfg, progress=False, reward_fn=lambda p, t: 1.0)
    recs = read_metrics(cfg.out)
    assert [r["step"] for r in recs if "ntk/change_G" in r] == [0, 1, 2]
    for r in recs:
        assert [r[f"ntk/change_{z}"] for z in "RGK"] == [0.0, 0.0, 0.0]
        np.testing.assert_allclose([r[f"ntk/align_{z}"] for z in "RGK"], 1.0, rtol=1e-6)
    assert [r["step"] for r in recs if "claim6/gain" in r] == [1]
    assert recs[1]["claim6/gain_G"] == 0.0 and recs[1]["claim6/gain_R"] == 0.0
    assert np.isnan(recs[1]["claim6/align_G"])


def test_lanes_share_the_starting_kernels(base_dir, tmp_path, monkeypatch):
    """Two lanes start from the same params: the drift's K0 is computed once (memo of the start) and written to
    both run directories; the later kernels are each lane's own."""
    calls = []
    real = drift.Drift._kernels
    monkeypatch.setattr(drift.Drift, "_kernels", lambda self, p: calls.append(self.out) or real(self, p))
    cfgs = [_small(recipe="rl", model=base_dir, out=str(tmp_path / f"s{s}"), steps=1, seed=s, ntk_every=1,
                   ntk_contexts=2) for s in (0, 1)]
    train_batch(cfgs, progress=False, reward_fn=easy_reward)
    assert calls == [cfgs[0].out, cfgs[0].out, cfgs[1].out]  # K0 once, then one K_1 per lane
    k0 = [np.load(os.path.join(c.out, drift.NTK0_FILE)) for c in cfgs]
    assert all(np.array_equal(k0[0][z], k0[1][z]) for z in ("R", "G", "K"))
    recs = [read_metrics(c.out) for c in cfgs]
    assert recs[0][0]["ntk/align_K"] == recs[1][0]["ntk/align_K"] == 1.0
