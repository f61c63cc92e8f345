"""ntkdyn.analyze: on an ntkdyn run trained with save_every, the analysis repeats the trainer's own logged metrics
(held-out evaluation, probe metrics, eNTK drift) at the snapshot steps; the same checkpoints in TRL's layout give
the same lines; the Δz split against the model's own logits; the error cases, with nothing written."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_models
import ntkdyn as nd
from ntkdyn.analyze import AnalyzeConfig, analyze, change_metrics, discover, split_change
from ntkdyn.cli import main
from ntkdyn.rl import RLConfig, read_metrics, train
from ntkdyn.rl.config import ConfigError

SMALL = dict(task="sum", group_size=4, prompts_per_step=4, max_new_tokens=8, eval_prompts=4, eval_samples=4,
             probe_prompts=4, checkpoint_every=0, lr=3e-3, probe_every=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A CF-RL run of the embedded default model: 2 head steps, 2 RL steps, snapshots, evaluation and eNTK drift
    every 2 steps (so at every snapshot)."""
    out = str(tmp_path_factory.mktemp("analyze") / "run")
    train(RLConfig(recipe="cf-rl", head_steps=2, steps=2, eval_every=2, save_every=2, ntk_every=2, ntk_contexts=3,
                   out=out, **SMALL), progress=False)
    return out


def _by_step(path):
    return {r["step"]: r for r in read_metrics(path)}


def test_analysis_repeats_the_trainers_metrics(run, tmp_path):
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["step-2", "step-4"]
    out = str(tmp_path / "a")
    summary = analyze([run], out=out, progress=False)
    got, want = _by_step(out), _by_step(run)
    assert sorted(got) == [0, 2, 4] and summary["analysed_now"] == [0, 2, 4]
    for step, rec in got.items():
        keys = [k for k in want[step] if k.startswith(("eval/", "ntk/")) or k in ("head_norm", "feature_change",
                                                                                  "stage", "stage_step")]
        assert len([k for k in keys if k.startswith("eval/")]) >= 10 and len([k for k in keys if "ntk/" in k]) == 8
        assert {k: rec[k] for k in keys} == {k: want[step][k] for k in keys}, step  # bit-identical
    assert got[2]["stage"] == "stage1" and got[4]["stage"] == "rl" and got[4]["stage_step"] == 2
    # stage 1 trains the head only: the features do not move, the logit change is the head part alone
    assert got[2]["feature_change"] == 0.0 and got[2]["feature_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert got[2]["dz/backbone"] == 0.0 and got[2]["dz/cross"] == 0.0 and got[2]["dz/head_frac"] == pytest.approx(1)
    assert got[4]["dz/backbone"] > 0 and got[4]["feature_change"] > 0
    fr = [got[4][f"dz/{k}_frac"] for k in ("head", "backbone", "cross")]
    assert sum(fr) == pytest.approx(1.0, abs=1e-9)
    # a rerun analyses nothing again; the figures are drawn from the run directory
    before = open(os.path.join(out, "metrics.jsonl")).read()
    again = analyze([run], out=out, progress=False, figures=True)
    assert again["analysed_now"] == [] and open(os.path.join(out, "metrics.jsonl")).read() == before
    assert any(f.endswith("fig_ntk_drift.png") for f in again["figures"])
    assert all(os.path.isfile(f) for f in again["figures"])
    # other settings in the same directory: refused, nothing changed
    with pytest.raises(ConfigError, match="other settings.*pass_k"):
        analyze([run], out=out, progress=False, pass_k=2)
    assert open(os.path.join(out, "metrics.jsonl")).read() == before


def _trl_layout(run, root, state=(True, False)):
    """The run's snapshots as TRL saves them: checkpoint-N/ with trainer_state.json (or without one)."""
    os.makedirs(root)
    for n, with_state in zip((2, 4), state):
        d = os.path.join(root, f"checkpoint-{n}")
        shutil.copytree(os.path.join(run, "snapshots", f"step-{n}"), d)
        if with_state:
            with open(os.path.join(d, "trainer_state.json"), "w") as f:
                json.dump({"global_step": n, "log_history": []}, f)
    return root


def test_trl_layout_gives_the_same_lines(run, tmp_path, capsys):
    trl = _trl_layout(run, str(tmp_path / "trl"))
    base = json.load(open(os.path.join(run, "config.json")))["model_dir"]
    out = str(tmp_path / "b")
    code = main(["analyze", trl, "--base", base, "--task", "sum", "--pass-k", "4", "--eval-prompts", "4",
                 "--max-new-tokens", "8", "--probe-prompts", "4", "--ntk-contexts", "3", "--out", out])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "checkpoint-4: no trainer_state.json; its step is taken from the directory name (4)" in err
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert any("checkpoint-4" in n for n in cfg["notes"])
    got, want = _by_step(out), _by_step(run)
    assert sorted(got) == [0, 2, 4]
    for step in got:
        keys = [k for k in want[step] if k.startswith(("eval/", "ntk/")) or k in ("head_norm", "feature_change")]
        assert {k: got[step][k] for k in keys} == {k: want[step][k] for k in keys}, step


# ----------------------------------------------------------------------------- the Δz split


@pytest.mark.parametrize("name", ["default", "gpt2"])  # untied (the embedded model, a head bias added) and tied
def test_split_sums_to_the_real_change(name, tmp_path):
    from ntkdyn.default import default_model_dir

    lm = nd.load(default_model_dir(task="sum") if name == "default" else hf_models.build(name, str(tmp_path))[0])
    rng = np.random.RandomState(0)
    p0 = jax.tree.map(jnp.asarray, lm.params)
    if not lm.config.tie_word_embeddings:
        p0["head"]["b"] = jnp.asarray(rng.normal(0, 0.3, lm.config.vocab_size), jnp.float32)
    p1 = jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.normal(size=x.shape), x.dtype), p0)
    ids = rng.randint(3, lm.config.vocab_size, (3, 9)).astype(np.int32)
    pos = np.array([[0, 2], [0, 8], [1, 5], [2, 0], [2, 7]], np.int32)
    parts = split_change(lm, p0, p1, ids, pos)
    rows, t = pos[:, 0], pos[:, 1]
    z = lambda p: np.asarray(lm.logits(ids, params=p), np.float64)[rows, t]  # noqa: E731  the model's own logits
    real = z(p1) - z(p0)
    np.testing.assert_allclose(parts["dz"], real, atol=2e-5 * np.abs(real).max())
    np.testing.assert_allclose(parts["head"] + parts["backbone"] + parts["cross"], parts["dz"], rtol=1e-12,
                               atol=1e-12)
    assert np.abs(parts["cross"]).max() > 1e-4 * np.abs(real).max()  # a finite change has a cross term
    if not lm.config.tie_word_embeddings:  # each part is a change of the model's logits with one group moved
        head_only = z({"backbone": p0["backbone"], "head": p1["head"]}) - z(p0)
        backbone_only = z({"backbone": p1["backbone"], "head": p0["head"]}) - z(p0)
        np.testing.assert_allclose(parts["head"], head_only, atol=2e-5 * np.abs(real).max())
        np.testing.assert_allclose(parts["backbone"], backbone_only, atol=2e-5 * np.abs(real).max())
    m = change_metrics(parts)
    assert m["dz/actual"] == pytest.approx(np.linalg.norm(real), rel=1e-5)
    assert m["dz/head_frac"] + m["dz/backbone_frac"] + m["dz/cross_frac"] == pytest.approx(1.0, abs=1e-12)
    # the linearized prediction is first order: its relative error shrinks like the step (~10x for a 10x smaller)
    m1, m2 = (change_metrics(split_change(lm, p0, jax.tree.map(lambda a, b: a + e * (b - a), p0, p1), ids, pos))
              for e in (1e-2, 1e-3))
    assert m2["dz/linear_error"] < 0.2 * m1["dz/linear_error"] and m2["dz/linear_cosine"] > 0.999


# ----------------------------------------------------------------------------- errors: nothing written


def test_errors_write_nothing(run, tmp_path):
    out = str(tmp_path / "never")
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(ConfigError, match="no checkpoints in this directory"):
        analyze([empty], out=out, progress=False)
    norun = str(tmp_path / "norun")  # an ntkdyn run without snapshots
    os.makedirs(norun)
    for f in ("config.json", "metrics.jsonl"):
        shutil.copy(os.path.join(run, f), norun)
    with pytest.raises(ConfigError, match="without model snapshots.*--save-every"):
        analyze([norun], out=out, progress=False)
    for key, value, what in (("vocab_size", 999, "vocab_size"), ("num_hidden_layers", 1, "n_layers")):
        trl = _trl_layout(run, str(tmp_path / f"trl-{key}"), state=(True, True))
        path = os.path.join(trl, "checkpoint-4", "config.json")
        cfg = json.load(open(path))
        cfg[key] = value
        json.dump(cfg, open(path, "w"))
        base = json.load(open(os.path.join(run, "config.json")))["model_dir"]
        with pytest.raises(ConfigError, match=f"checkpoint-4 \\(step 4\\): another architecture or vocabulary.*{what}"):
            analyze([trl], out=out, base=base, progress=False)
    with pytest.raises(ConfigError, match="two models at step 2"):
        discover([os.path.join(run, "snapshots", "step-2")] * 2)
    with pytest.raises(ConfigError, match="unknown analyze option"):
        analyze([run], out=out, progress=False, stepz=3)
    with pytest.raises(ConfigError, match="AnalyzeConfig.pass_k=0"):
        analyze([run], out=out, progress=False, pass_k=0)
    with pytest.raises(ConfigError, match="AnalyzeConfig.inputs"):
        AnalyzeConfig(inputs=[], out=out)
    assert not os.path.exists(out)


# ----------------------------------------------------------------------------- a real TRL run


def _length_reward(completions, **kwargs):
    """A reward in TRL's signature with spread within a group: the completion's length in characters."""
    return [float(len(c)) for c in completions]


def test_a_real_trl_grpo_run(tmp_path):
    """TRL's GRPOTrainer on a tiny Llama (CPU, 3 steps, a checkpoint every step), then analysed end to end: one line
    per checkpoint at TRL's global steps, the evaluation and eNTK metrics finite, the Δz split exact, and the
    analysed weights the ones TRL saved (the head's ‖W‖_F against the checkpoint's safetensors)."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from ntkdyn.models.tokenizer import CharTokenizer

    base, _ = hf_models.build("llama_gqa", str(tmp_path))  # untied head: lm_head.weight is W
    CharTokenizer().save(base)  # a real tokenizer.json that AutoTokenizer opens
    prompts = [f"sum {n}:" for n in (23, 47, 58, 91)]  # the built-in task's prompts (analysed with task="sum")
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), max_steps=3, save_steps=1, save_only_model=True,
                          per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
                          learning_rate=3e-2, use_cpu=True, bf16=False, report_to=[], logging_steps=1, seed=0,
                          dataloader_num_workers=0, disable_tqdm=True)
    trainer = trl.GRPOTrainer(model=base, reward_funcs=_length_reward, args=args,
                              train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
                              processing_class=AutoTokenizer.from_pretrained(base))
    trainer.train()
    trl_out = str(tmp_path / "trl")
    ckpts = sorted(n for n in os.listdir(trl_out) if n.startswith("checkpoint-"))
    trl_steps = sorted(json.load(open(os.path.join(trl_out, n, "trainer_state.json")))["global_step"] for n in ckpts)
    assert trl_steps == [1, 2, 3] and trainer.state.global_step == 3

    out = str(tmp_path / "analysis")
    summary = analyze([trl_out], out=out, base=base, task="sum", reward_funcs=[_length_reward], pass_k=2,
                      eval_prompts=2, max_new_tokens=6, probe_prompts=2, ntk_contexts=2, progress=False)
    got = _by_step(out)
    assert sorted(got) == [0] + trl_steps and summary["steps"] == [0] + trl_steps
    for step, rec in got.items():
        keys = [k for k in rec if k.startswith(("eval/", "ntk/"))]
        assert len([k for k in keys if k.startswith("eval/")]) >= 10 and len([k for k in keys if "ntk/" in k]) == 8
        assert all(np.isfinite(rec[k]) for k in keys if isinstance(rec[k], float)), step
        assert 0.0 <= rec["eval/reward"] <= 6.0  # lengths of at most 6 characters (one per token at most)
    for step in trl_steps:  # the model moved at every TRL step; the split of the real change is exact
        rec = got[step]
        assert rec["dz/steps"] == 1 and rec["dz/actual"] > 0 and rec["dz/backbone"] > 0
        assert rec["dz/head_frac"] + rec["dz/backbone_frac"] + rec["dz/cross_frac"] == pytest.approx(1.0, abs=1e-9)
        assert rec["feature_change"] > 0 and rec["head_norm"] != got[0]["head_norm"]
        W = load_file(os.path.join(trl_out, f"checkpoint-{step}", "model.safetensors"))["lm_head.weight"]
        assert rec["head_norm"] == pytest.approx(float(np.linalg.norm(W.astype(np.float64))), rel=1e-5)
    assert got[0]["ntk/change_K"] == pytest.approx(0.0, abs=1e-6) and got[3]["ntk/change_K"] > 0  # the eNTK drifted
