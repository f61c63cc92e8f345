"""The pass@k experiment: curves against the closed form 1 - C(n-c, k) / C(n, k) of the recorded counts, greedy
sampling against an independent greedy decode, crossings against hand-computed cases, the trainer's held-out
prompts, the files written and the CLI's policy parsing."""
import argparse
import json
import math
import os

import numpy as np
import pytest

from ntkdyn import default, evaluation, tasks
from ntkdyn.experiments import pass_at_k as pk
from ntkdyn.models.lm import load
from ntkdyn.models.tokenizer import encode_prompt


def _closed_form(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_crossings_hand_computed():
    ref = [0.30, 0.60, 0.75, 0.90, 0.95]
    assert pk.crossings([0.50, 0.60, 0.70, 0.80, 0.99], ref) == [
        dict(k=3, direction="falls below"), dict(k=5, direction="rises above")]  # k=2 ties: not a crossing
    assert pk.crossings([0.2, 0.5, 0.7, 0.8, 0.9], ref) == []  # below everywhere
    assert pk.crossings(ref, ref) == []
    assert pk.crossings([0.1, 0.7], [0.2, 0.6]) == [dict(k=2, direction="rises above")]


def test_parse_policies(tmp_path):
    base = default.default_model_dir(task="plus")
    run = tmp_path / "rl_run"
    os.makedirs(run / "final")
    (run / "final" / "config.json").write_text(open(os.path.join(base, "config.json")).read())
    (run / "config.json").write_text('{"config": {"recipe": "rl"}}')  # the run's config, not a model's
    got = pk.parse_policies([f"base={base}", f"rl={run},{base}", f"rl={base}"])
    assert got == {"base": [base], "rl": [str(run), base, base]}
    assert pk._model_dir(str(run)) == str(run / "final")  # an RL run directory means its final model
    for bad in ("base", "=x", "base=", f"rl={tmp_path}"):
        with pytest.raises((ValueError, FileNotFoundError), match="--policy"):
            pk.parse_policies([bad])


def test_run_curves_match_closed_form_and_files(tmp_path):
    plus, summ = default.default_model_dir(task="plus"), default.default_model_dir()
    out = str(tmp_path / "pk")
    res = pk.run({"base": [plus, plus], "sum-model": [summ]}, "plus", out, samples=8, prompts=3, progress=False)
    task = tasks.get("plus")
    assert res["prompts"] == evaluation.held_out_prompts(task, 3, 0, "test")  # the trainer's evaluation prompts
    assert res["reference"] == "base" and set(res["crossings"]) == {"sum-model"}
    for label, p in res["policies"].items():
        assert len(p["curves"]) == p["n_seeds"] == len(p["runs"])
        for curve, r in zip(p["curves"], p["runs"]):
            expect = [np.mean([_closed_form(8, c, k) for c in r["n_correct"]]) for k in range(1, 9)]
            np.testing.assert_allclose(curve, expect, rtol=0, atol=1e-12)
            assert r["tokens"] > 0 and r["seconds"] >= 0
        np.testing.assert_allclose(p["mean"], np.mean(p["curves"], 0), atol=1e-12)
    # the same model twice, sampled with the same seed: identical seeds, zero spread
    b = res["policies"]["base"]
    assert b["curves"][0] == b["curves"][1] and max(b["std"]) == 0.0
    assert res["policies"]["base"]["mean"][0] > 0  # the plus model solves some held-out prompts
    on_disk = json.load(open(os.path.join(out, "pass_at_k.json")))
    assert on_disk["policies"]["base"]["mean"] == b["mean"]
    for ext in ("png", "pdf"):
        assert os.path.getsize(os.path.join(out, f"fig_pass_at_k.{ext}")) > 1000


def test_greedy_sampling_matches_an_independent_greedy_decode():
    """temperature 0: every sample of a prompt is the greedy answer, so pass@k is flat at the greedy accuracy."""
    lm = load(default.default_model_dir(task="plus"))
    task = tasks.get("plus")
    prompts = task.prompts("test", 4, seed=3)
    correct, info = pk.sample_correct(lm, task, prompts, 3, temperature=0.0, chunk=4)  # chunks cut across prompts
    greedy = []
    for p in prompts:  # one prompt at a time, no padding: an independent decode
        g = lm.generate([encode_prompt(lm.tokenizer, p)], 12, temperature=0.0)
        toks = np.asarray(g.tokens)[0][np.asarray(g.mask)[0].astype(bool)].tolist()
        eos = toks.index(lm.tokenizer.eos_id) if lm.tokenizer.eos_id in toks else None
        text = lm.tokenizer.decode(toks[:eos]) if eos is not None else None
        greedy.append(text is not None and task.reward(p, text) == 1.0)
    assert correct.shape == (4, 3)
    np.testing.assert_array_equal(correct, np.repeat(np.asarray(greedy)[:, None], 3, 1))
    assert info["reward"] == pytest.approx(np.mean(greedy))


def test_cli_default_policy_and_bad_input(tmp_path, capsys):
    """run_cli without --policy: the shipped base model of the task (the `ntkdyn pass-at-k` subcommand)."""
    parser = argparse.ArgumentParser()
    pk.add_arguments(parser)
    out = str(tmp_path / "cli")
    args = parser.parse_args(["--task", "plus", "--samples", "4", "--prompts", "2", "--out", out, "--no-plots"])
    assert pk.run_cli(args) == 0
    res = json.load(open(os.path.join(out, "pass_at_k.json")))
    assert res["policies"]["base"]["runs"][0]["dir"] == default.default_model_dir(task="plus")
    assert len(res["policies"]["base"]["mean"]) == 4 and res["crossings"] == {}
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(ValueError, match="samples and prompts"):
        pk.run({"base": [default.default_model_dir(task="plus")]}, "plus", out, samples=0)
    with pytest.raises(ValueError, match="at least one model"):
        pk.run({"base": []}, "plus", out)
