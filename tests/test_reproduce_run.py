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
    assert all(c["verdict"] in ("supported", "not supported", "not measured", "mixed", "cannot show on this setting")
               for c in meta["claims"])
    by_n = {c["n"]: c for c in meta["claims"]}
    # the new measures reach the verdicts: claim 6 from the claim6/ keys, N1 from the drift, 2x from pass@k
    assert "tr G_S on the answer tokens: RL n/a" not in by_n["6"]["numbers"], by_n["6"]
    assert "n/a" not in by_n["N1"]["numbers"], by_n["N1"]
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
    assert set(reproduce.PROFILES) == {"full", "quick", "tiny", "real", "real-tiny"}
    required = {"seeds", "steps", "head_steps", "prompts_per_step", "group_size", "eval_every", "eval_prompts",
                "eval_samples", "probe_every", "lr", "head_lr", "feature_prompts"}
    optional = {"base", "model", "task", "rl", "one_step", "second", "passk", "budget", "kernel_prompts", "ntk_seeds"}
    for name, p in reproduce.PROFILES.items():
        assert required <= set(p) and set(p) - required <= optional, name
    from ntkdyn.rl import RLConfig  # every profile's RL fields are RLConfig's
    for p in reproduce.PROFILES.values():
        RLConfig(out="x", **p.get("rl", {}))
