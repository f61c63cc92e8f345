"""ntkdyn.rl.cli: `ntkdyn rl` runs, resumes a finished run, and reports bad flags with exit status 2."""
from __future__ import annotations

from rl_helpers import base_dir  # noqa: F401 (fixture)

from ntkdyn.rl import read_metrics


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


def _tiny_classifier(root):
    """A tiny random GPT-2 sequence classifier with the character tokenizer, and the same model as a causal LM."""
    import os

    import torch
    import transformers

    from hf_models import SPECS, randomize
    from ntkdyn.models.tokenizer import CharTokenizer

    cfg = transformers.GPT2Config(bos_token_id=1, eos_token_id=2, pad_token_id=0, num_labels=1, **SPECS["gpt2"][1])
    torch.manual_seed(0)
    rm_dir, lm_dir = os.path.join(root, "rm"), os.path.join(root, "lm")
    randomize(transformers.GPT2ForSequenceClassification(cfg).eval()).save_pretrained(rm_dir)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(lm_dir)
    CharTokenizer().save(rm_dir)
    return rm_dir, lm_dir


def test_reward_model_flag(base_dir, tmp_path, capsys):
    import argparse

    from ntkdyn.cli import main
    from ntkdyn.models.classifier import load_reward_model
    from ntkdyn.rl.cli import add_arguments, config_from_args

    rm_dir, lm_dir = _tiny_classifier(str(tmp_path))
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--reward-model", rm_dir, "--reward", "sum", "--reward-weights", "1.0", "0.5",
                         "--out", str(tmp_path / "x")])
    cfg = config_from_args(args)  # --reward functions first, then the reward models: the weights' order
    assert cfg.rewards == ["sum", "reward-model:" + rm_dir] and cfg.reward_weights == [1.0, 0.5]
    out = str(tmp_path / "run")
    flags = ["--model", base_dir, "--task", "sum", "--group-size", "4", "--prompts-per-step", "4",
             "--max-new-tokens", "8", "--eval-prompts", "4", "--eval-samples", "4", "--probe-prompts", "4",
             "--probe-every", "0", "--eval-every", "0", "--no-progress"]
    assert main(["rl", "--steps", "1", "--out", out, "--reward", "sum", "--reward-model", rm_dir,
                 "--reward-weights", "1.0", "0.5"] + flags) == 0
    rec = read_metrics(out)[1]
    assert rec["rewards/rm/mean"] != 0.0 and "rewards/sum/mean" in rec
    # the logged reward is the weighted sum of the two functions' means (a mean of sums = the sum of means)
    assert abs(rec["reward"] - (rec["rewards/sum/mean"] + 0.5 * rec["rewards/rm/mean"])) < 1e-5
    assert load_reward_model(rm_dir).score(["sum 1:"], ["1+0"]).shape == (1,)
    capsys.readouterr()
    for bad, says in [(lm_dir, "not a sequence classifier"), (str(tmp_path / "nope"), "known name")]:
        assert main(["rl", "--steps", "1", "--out", str(tmp_path / "bad"), "--reward-model", bad] + flags) == 2
        err = capsys.readouterr().err
        assert "reward model" in err and says in err, err


def test_rl_on_a_chat_dataset_with_a_tiny_chat_model(tmp_path):
    """End to end on a dataset whose prompts are chat messages: a tiny random Llama whose tokenizer has a chat
    template (written as GGUF, converted), a JSONL of message-list prompts with an `answer` column, one RL step and
    the evaluation. The reward function receives what TRL passes for conversational data: the prompts as message
    lists, each completion as [{"role": "assistant", "content": text}], completion_ids and the columns by name."""
    import json

    import gguf_models as gm
    from ntkdyn.models.known import gguf_dir
    from ntkdyn.models.tokenizer import encode_prompt, load_tokenizer
    from ntkdyn.rl import RLConfig, train

    path = str(tmp_path / "chat.gguf")
    gm.write_llama(path)
    model = gguf_dir(path, cache_dir=str(tmp_path / "cache"), quiet=True)
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{a} + 1?"}],
             "answer": str(a + 1)} for a in range(12)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []

    def exact(prompts, completions, completion_ids, answer, **kwargs):
        seen.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids, answer=answer))
        return [1.0 if c[0]["content"].strip() == a else 0.0 for c, a in zip(completions, answer)]

    out = str(tmp_path / "run")
    train(RLConfig(model=model, task=str(data), eval_fraction=0.25, steps=1, group_size=2, prompts_per_step=2,
                   max_new_tokens=4, eval_prompts=2, eval_samples=2, probe_prompts=2, probe_every=0,
                   score_truncated=True, out=out), progress=False, reward_funcs=[exact])
    step = seen[0]  # the first call scores the step-0 evaluation, the next one the RL step
    for call in seen:
        assert len(call["prompts"]) == len(call["completions"]) == len(call["completion_ids"]) == len(call["answer"])
        for p, c, ids, a in zip(call["prompts"], call["completions"], call["completion_ids"], call["answer"]):
            row = next(r for r in rows if r["prompt"] == p)  # a message list of the dataset, as it was written
            assert a == row["answer"] and c[0]["role"] == "assistant" and len(c) == 1
            assert isinstance(c[0]["content"], str) and all(isinstance(i, int) for i in ids) and 1 <= len(ids) <= 4
    assert len(step["prompts"]) == 4 and step["prompts"][0] == step["prompts"][1]  # a prompt's group: consecutive
    tok = load_tokenizer(model)
    ids = encode_prompt(tok, rows[0]["prompt"])  # through the chat template (decoded without its special markers)
    assert tok.decode(ids) == "system\nBe brief.\nuser\n0 + 1?\nassistant\n"
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == [0, 1] and "rewards/exact/mean" in recs[1] and "eval/reward" in recs[0]
