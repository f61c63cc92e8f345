"""ntkdyn.rl with a user's prompts and rewards: a JSONL dataset through `ntkdyn rl --dataset` with a reward function
file given on the CLI (it receives the dataset's columns, as TRL passes them), two weighted reward functions from
Python (the logged reward is the weighted sum, rewards/<name>/mean|std logged), a reward function returning the
wrong number of values and a dataset without a `prompt` column (clear errors naming them). The embedded default
model, 1 step, a 2 x 2 batch."""
from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest

from ntkdyn.rl import ConfigError, RLConfig, TrainingError, read_metrics, train

TINY = dict(group_size=2, prompts_per_step=2, max_new_tokens=6, eval_prompts=2, eval_samples=2, probe_prompts=2,
            eval_every=0, probe_every=0, checkpoint_every=0, steps=1, lr=1e-3)
FLAGS = ["--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "6", "--eval-prompts", "2",
         "--eval-samples", "2", "--probe-prompts", "2", "--eval-every", "0", "--probe-every", "0",
         "--checkpoint-every", "0", "--steps", "1", "--no-progress"]


def _dataset(tmp_path, rows=None, name="prompts.jsonl"):
    rows = rows or [{"prompt": f"sum {n}:", "target": n, "tag": f"t{n}"} for n in range(10, 20)]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


REWARD_FILE = '''
    import json, os

    def digits(prompts, completions, completion_ids, target, tag, **kwargs):
        """1 per digit in the completion; records what it received."""
        with open(os.environ["NTKDYN_TEST_LOG"], "a") as f:
            f.write(json.dumps(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                    target=target, tag=tag, extra=sorted(kwargs))) + "\\n")
        return [float(sum(ch.isdigit() for ch in c)) for c in completions]
'''


def test_dataset_and_reward_file_on_the_cli(tmp_path, monkeypatch, capsys):
    from ntkdyn.cli import main

    data = _dataset(tmp_path)
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(REWARD_FILE))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("NTKDYN_TEST_LOG", str(log))
    out = str(tmp_path / "run")
    rc = main(["rl", "--dataset", data, "--eval-fraction", "0.2", "--reward", f"{tmp_path}/my_rewards.py:digits",
               "--out", out] + FLAGS)
    assert rc == 0, capsys.readouterr().err
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # the dry run before anything is written, the step-0 evaluation, the step's rollouts, the final evaluation
    assert len(calls) == 4
    assert calls[0]["completions"] == calls[2]["completions"]  # the dry run scores the first step's own draw
    rows = {f"sum {n}:": (n, f"t{n}") for n in range(10, 20)}
    for call in calls:
        n = len(call["prompts"])
        assert n == 4 and len(call["completions"]) == n and len(call["completion_ids"]) == n
        assert all(isinstance(c, str) for c in call["completions"])  # standard (non-chat) data: strings
        assert all(isinstance(ids, list) and all(isinstance(i, int) for i in ids) for ids in call["completion_ids"])
        assert call["prompts"][0] == call["prompts"][1] and call["prompts"][2] == call["prompts"][3]  # G = 2
        for p, t, g in zip(call["prompts"], call["target"], call["tag"]):
            assert rows[p] == (t, g)  # the dataset's columns, row-aligned with the prompts
    recs = read_metrics(out)
    step = recs[1]
    assert step["reward"] == pytest.approx(step["rewards/digits/mean"])
    assert "rewards/digits/std" in step
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)["config"]
    assert cfg["task"] == data and cfg["rewards"] == [f"{tmp_path}/my_rewards.py:digits"]


def test_two_weighted_reward_functions(tmp_path):
    def one(prompts, completions, completion_ids, **kw):
        return [1.0] * len(prompts)

    def length(completions, **kw):
        return [float(len(c)) for c in completions]

    cfg = RLConfig(task=_dataset(tmp_path), out=str(tmp_path / "run"), reward_weights=[2.0, 0.5],
                   score_truncated=True, **TINY)
    train(cfg, progress=False, reward_funcs=[one, length])
    rec = read_metrics(cfg.out)[1]
    assert rec["rewards/one/mean"] == 1.0 and rec["rewards/one/std"] == 0.0
    assert rec["reward"] == pytest.approx(2.0 * rec["rewards/one/mean"] + 0.5 * rec["rewards/length/mean"])
    assert "rewards/length/std" in rec


def test_wrong_length_reward_names_the_function(tmp_path):
    def three_values(prompts, completions, **kw):
        return [0.0, 1.0, 0.0]

    cfg = RLConfig(task=_dataset(tmp_path), out=str(tmp_path / "run"), eval_fraction=0.2, **TINY)
    with pytest.raises(TrainingError, match=r"three_values.*3 values for 4 completions"):
        train(cfg, progress=False, reward_funcs=[three_values])


def test_missing_prompt_column_and_bad_reward_flags(tmp_path, capsys):
    from ntkdyn.cli import main

    data = _dataset(tmp_path, rows=[{"question": "sum 12:"}, {"question": "sum 13:"}], name="noprompt.jsonl")
    assert main(["rl", "--dataset", data, "--reward", "sum", "--out", str(tmp_path / "a")] + FLAGS) == 2
    err = capsys.readouterr().err
    assert "no 'prompt' column" in err and "question" in err
    good = _dataset(tmp_path)
    assert main(["rl", "--dataset", good, "--out", str(tmp_path / "b")] + FLAGS) == 2  # a dataset brings no reward
    assert "no reward function" in capsys.readouterr().err
    assert main(["rl", "--dataset", good, "--reward", "sum", "--reward-weights", "1", "2",
                 "--out", str(tmp_path / "c")] + FLAGS) == 2
    assert "reward_weights" in capsys.readouterr().err
    assert main(["rl", "--dataset", good, "--reward", "nomodule_xyz:f", "--out", str(tmp_path / "d")] + FLAGS) == 2
    assert "nomodule_xyz" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="RLConfig.task"):
        RLConfig(task=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "e"))


def test_character_task_logs_its_reward_function(tmp_path):
    """The built-in task's reward goes through the same reward set: rewards/sum/mean equals the logged reward."""
    cfg = RLConfig(task="sum", out=str(tmp_path / "run"), **TINY)
    train(cfg, progress=False)
    rec = read_metrics(cfg.out)[1]
    assert rec["rewards/sum/mean"] == rec["reward"] and np.isfinite(rec["rewards/sum/std"])
