"""ntkdyn.reproduce.pipeline: `ntkdyn reproduce` end to end on the tiny profile (a tiny SFT base model, a handful
of RL steps): every figure (PNG and PDF) and every claim line of summary.md is written."""
import json
import os
import subprocess
import sys

from ntkdyn import reproduce


def test_reproduce_tiny_end_to_end(tmp_path):
    out, figs = tmp_path / "run", tmp_path / "figs"
    env = dict(os.environ, NTKDYN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "ntkdyn.cli", "reproduce", "--profile", "tiny", "--out", str(out),
                           "--figures", str(figs), "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in reproduce.FIGURES + ("fig_one_step_split",):
        for ext in ("png", "pdf"):
            f = figs / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    summary = (figs / "summary.md").read_text()
    for n in reproduce.CLAIMS:
        assert f"\n| {n} | " in summary and f"## Claim {n}: " in summary, n
    assert "n/a → n/a" not in summary
    meta = json.loads((out / "reproduce.json").read_text())
    assert [c["n"] for c in meta["claims"]] == list(reproduce.CLAIMS)
    assert all(c["verdict"] in ("supported", "not supported", "not measured", "mixed", "cannot show on this setting",
                                "inconclusive") for c in meta["claims"])
    by_n = {c["n"]: c for c in meta["claims"]}
    # the new measures reach the verdicts: claim 6 from the claim6/ keys, N1 from the drift, 2x from pass@k
    assert "tr G_S on the answer tokens: RL n/a" not in by_n["6 (v2)"]["numbers"], by_n["6 (v2)"]
    assert "n/a" not in by_n["N1 (v2)"]["numbers"], by_n["N1 (v2)"]
    # v3: the base-model claims carry items (prompts, updates); one seed gives n = 1 and no interval
    assert by_n["1"]["effects"][0]["n"] == 6 and by_n["3"]["effects"][0]["unit"] == "updates"
    assert by_n["N1"]["effects"][0]["n"] == 1 and by_n["N1"]["verdict"] == "inconclusive"
    assert json.loads((figs / "claims.json").read_text()) == meta["claims"]
    assert meta["pass_at_k"]["ks"] == list(range(1, 17))
    # the training runs are durable: final models open, and the printed file list names every figure
    for recipe in ("rl", "cf-rl", "lp-ft"):
        assert (out / "runs" / f"{recipe}-seed0" / "final" / "config.json").is_file()
    assert "summary.md" in proc.stdout
    # --rejudge runs nothing and writes the same verdicts back (the same verdict code judged the same outputs)
    (figs / "summary.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "ntkdyn.cli", "reproduce", "--rejudge", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (figs / "summary.md").read_text() == summary
    again = json.loads((out / "reproduce.json").read_text())
    assert [c["verdict"] for c in again["claims"]] == [c["verdict"] for c in meta["claims"]]


def test_same_config(tmp_path):
    from ntkdyn.reproduce.pipeline import _same_config

    cfg = dict(recipe="rl", steps=4, seed=0)
    assert not _same_config(str(tmp_path), cfg)  # no config.json
    (tmp_path / "config.json").write_text(json.dumps({"config": dict(cfg, lr=1e-3), "n_params": 5}))
    assert _same_config(str(tmp_path), cfg)  # the RLConfig fields nested under "config"
    assert not _same_config(str(tmp_path), dict(cfg, steps=5))
    (tmp_path / "config.json").write_text("[1, 2]")
    assert not _same_config(str(tmp_path), cfg)


def test_profiles():
    assert set(reproduce.PROFILES) == {"full", "quick", "tiny", "real", "real-tiny", "gpu"}
    P = reproduce.PROFILES  # issue #22's numbers: the default ≥ 10 seeds; real ≥ 5 seeds, ≥ 16 × 16 evaluations
    assert len(P["full"]["seeds"]) >= 10 and len(P["real"]["seeds"]) >= 5 and len(P["gpu"]["seeds"]) >= 10
    for name in ("real", "gpu"):
        assert P[name]["eval_prompts"] >= 16 and P[name]["eval_samples"] >= 16, name
    required = {"seeds", "steps", "head_steps", "prompts_per_step", "group_size", "eval_every", "eval_prompts",
                "eval_samples", "probe_every", "lr", "head_lr", "feature_prompts"}
    optional = {"base", "model", "task", "rl", "one_step", "second", "passk", "budget", "kernel_prompts", "ntk_seeds",
                "ntk_recipes", "max_lanes"}
    for name, p in reproduce.PROFILES.items():
        assert required <= set(p) and set(p) - required <= optional, name
    from ntkdyn.rl import RLConfig  # every profile's RL fields are RLConfig's
    for p in reproduce.PROFILES.values():
        RLConfig(out="x", **p.get("rl", {}))


def test_rl_runs_batches(tmp_path, monkeypatch):
    """The seeds of a recipe train as programs of at most max_lanes lanes; the drift's seeds (ntk_seeds, of the
    recipes in ntk_recipes) form batches of their own; the other runs track no drift."""
    import ntkdyn.rl
    from ntkdyn.reproduce.pipeline import _rl_runs
    from ntkdyn.tasks import resolve

    batches = []
    monkeypatch.setattr(ntkdyn.rl, "train_batch", lambda cfgs, progress: batches.append(
        (cfgs[0].recipe, [c.seed for c in cfgs], {c.ntk_every for c in cfgs})))
    prof = dict(reproduce.PROFILES["real"], seeds=tuple(range(7)), ntk_seeds=(0, 1), ntk_recipes=("rl",), max_lanes=3)
    dirs = _rl_runs("base", resolve("add"), str(tmp_path), prof, False, [], recipes=("rl", "cf-rl"))
    assert batches == [("rl", [0, 1], {20}), ("rl", [2, 3, 4], {0}), ("rl", [5, 6], {0}),
                       ("cf-rl", [0, 1, 2], {0}), ("cf-rl", [3, 4, 5], {0}), ("cf-rl", [6], {0})]
    assert [len(v) for v in dirs.values()] == [7, 7]


def test_perturb_reruns_in_a_child_with_the_xla_flag(tmp_path, monkeypatch):
    """_perturbed: the same reproduction's command line into OUT/perturbed, XLA_FLAGS extended (not replaced) by
    PERTURB_FLAG in the child's environment only; its claims read back from its reproduce.json."""
    from ntkdyn.reproduce import pipeline

    seen = {}

    def fake_run(cmd, env, check):
        seen.update(cmd=cmd, env=env)
        pout = tmp_path / "perturbed"
        pout.mkdir()
        (pout / "reproduce.json").write_text(json.dumps({"claims": [{"n": "7", "verdict": "supported"}],
                                                         "meta": {"runs_reused": [3, 5]}}))

    monkeypatch.setattr(pipeline.subprocess, "run", fake_run)
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
    claims, meta = pipeline._perturbed(str(tmp_path), profile="quick", model=None, task="sum", seeds=[0, 1],
                                       progress=False)
    assert seen["cmd"][1:] == ["-m", "ntkdyn.cli", "reproduce", "--out", str(tmp_path / "perturbed"), "--figures",
                               str(tmp_path / "perturbed" / "figures"), "--profile", "quick", "--task", "sum",
                               "--seeds", "0", "1", "--no-progress"]
    assert seen["env"]["XLA_FLAGS"] == "--xla_foo=1 --xla_cpu_max_isa=AVX2" and os.environ["XLA_FLAGS"] == "--xla_foo=1"
    assert claims == [{"n": "7", "verdict": "supported"}] and meta["out"] == str(tmp_path / "perturbed")
    assert meta["runs_reused"] == [3, 5]  # the child's own count, stated beside its minutes


def test_release_memory_reports_the_peak_since_its_previous_call():
    """The per-program memory line of the reproduction log: the peak resident set between two calls (VmHWM, reset
    through /proc/self/clear_refs), not the process's lifetime peak."""
    import numpy as np
    import pytest

    from ntkdyn.reproduce.pipeline import _release_memory

    rss0, _ = _release_memory()
    if rss0 is None or not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("no /proc (not Linux)")
    x = np.ones(400_000_000 // 8)  # 0.4 GB, touched
    del x
    rss1, peak1 = _release_memory()
    assert peak1 is not None and peak1 >= rss0 + 0.38, (rss0, peak1)
    _, peak2 = _release_memory()  # nothing as large since the previous call
    assert peak2 < peak1 - 0.3, (peak1, peak2)
