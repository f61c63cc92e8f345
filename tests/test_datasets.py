"""A user's dataset as a task (ntkdyn.tasks.datasets): formats, splits, columns to rewards, SFT pairs, errors."""
import json

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from ntkdyn import tasks  # noqa: E402
from ntkdyn.tasks import DatasetTask, RewardError  # noqa: E402

ROWS = [{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1), "level": a % 3,
         "completion": f"{2 * a + 1}"} for a in range(20)]
CHAT_ROWS = [{"prompt": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": f"Name a multiple of {k}."}], "k": k} for k in range(2, 12)]
REWARD_FILE = """
CALLS = []

def correct(prompts, completions, completion_ids, answer, level, **kwargs):
    CALLS.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids, answer=answer,
                      level=level, extra=sorted(kwargs)))
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def multiple_of_k(completions, k, **kwargs):
    out = []
    for c, kk in zip(completions, k):
        text = c[0]["content"].strip()
        out.append(1.0 if text.isdigit() and int(text) % kk == 0 else 0.0)
    return out
"""


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def reward_file(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text(REWARD_FILE)
    return str(f)


def test_jsonl_rows_splits_and_columns(tmp_path, reward_file):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    task = tasks.resolve(path, rewards=[f"{reward_file}:correct"], eval_fraction=0.25, seed=1)
    assert isinstance(task, DatasetTask) and task.name == "train" and not task.chat and len(task) == 20
    train, test = task.split_prompts("train"), task.split_prompts("test")
    assert len(test) == 5 and len(train) == 15 and set(train).isdisjoint(test)
    assert sorted(train + test) == sorted(r["prompt"] for r in ROWS)
    again = tasks.resolve(path, rewards=[f"{reward_file}:correct"], eval_fraction=0.25, seed=1)
    assert again.split_prompts("test") == test  # deterministic in the seed
    assert tasks.resolve(path, eval_fraction=0.25, seed=2).split_prompts("test") != test
    rows = task.rows("train", 4, seed=0)
    assert rows == task.rows("train", 4, seed=0) and all(r["prompt"] in train for r in rows)
    assert set(rows[0]) == {"prompt", "answer", "level", "completion"}
    assert task.columns(rows[0]["prompt"])["answer"] == rows[0]["answer"]
    assert all(task.split_of(p) == "test" for p in test)
    assert len(task.rows("test", 12, seed=0)) == 12  # more than the split: with replacement
    # the reward function, loaded by spec, receives the dataset's columns by name (TRL's call)
    rs = tasks.reward_set(task)
    texts = [r["answer"] if i % 2 == 0 else "wrong" for i, r in enumerate(rows)]
    cols = {k: [r[k] for r in rows] for k in ("answer", "level")}
    out = rs([r["prompt"] for r in rows], texts, [[1, 2]] * 4, **cols)
    assert out.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    call = rs.funcs[0].__globals__["CALLS"][-1]
    assert call["prompts"] == [r["prompt"] for r in rows] and call["completions"] == texts
    assert call["completion_ids"] == [[1, 2]] * 4 and call["answer"] == cols["answer"]
    assert call["level"] == cols["level"] and call["extra"] == []
    assert task.reward(rows[0]["prompt"], rows[0]["answer"]) == 1.0
    assert task.reference(rows[0]["prompt"]) == rows[0]["completion"]
    prompts, completions = task.sft_pairs("train")
    assert len(prompts) == 15 and completions[0] == task.columns(prompts[0])["completion"]


def test_parquet_conversational_with_eval_dataset(tmp_path, reward_file):
    path = str(tmp_path / "chat.parquet")
    datasets.Dataset.from_list(CHAT_ROWS[:7]).to_parquet(path)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", CHAT_ROWS[7:])
    task = tasks.resolve(path, eval_dataset=eval_path, rewards=[f"{reward_file}:multiple_of_k"])
    assert task.chat and task.split_prompts("test") == [r["prompt"] for r in CHAT_ROWS[7:]]
    assert task.split_prompts("train") == [r["prompt"] for r in CHAT_ROWS[:7]]
    rows = task.rows("train", 3, seed=0)
    out = tasks.reward_set(task)([r["prompt"] for r in rows], ["12", "7", "x"], None, k=[r["k"] for r in rows])
    expected = [1.0 if t.isdigit() and int(t) % r["k"] == 0 else 0.0 for t, r in zip(["12", "7", "x"], rows)]
    assert out.rewards.tolist() == expected
    with pytest.raises(ValueError, match="no 'completion' column for SFT; columns found: \\['prompt', 'k'\\]"):
        task.sft_pairs()
    with pytest.raises(ValueError, match="has no reward function"):
        tasks.resolve(path).reward_funcs()


def test_csv_and_saved_directory(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,answer\nsum 47:,12+35\nsum 20:,1+19\nsum 33:,3+30\n")
    task = tasks.resolve(str(csv), eval_fraction=0.3)
    assert len(task.split_prompts("test")) == 1 and task.columns("sum 47:") == {"answer": "12+35"}
    saved = str(tmp_path / "saved")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:10]),
                          "test": datasets.Dataset.from_list(ROWS[10:12])}).save_to_disk(saved)
    task = tasks.resolve(saved)
    assert task.split_prompts("test") == [r["prompt"] for r in ROWS[10:12]] and len(task) == 12
    single = str(tmp_path / "single")
    datasets.Dataset.from_list(ROWS[:4]).save_to_disk(single)
    assert len(tasks.resolve(single)) == 4


def test_bad_datasets(tmp_path):
    no_prompt = write_jsonl(tmp_path / "noprompt.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"noprompt.jsonl: no 'prompt' column; columns found: \['question', "
                                         r"'answer'\]"):
        tasks.resolve(no_prompt)
    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"prompt": []}).to_parquet(str(empty))
    with pytest.raises(ValueError, match="empty.parquet: the dataset is empty"):
        tasks.resolve(str(empty))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="garbage.parquet: cannot read the dataset"):
        tasks.resolve(str(garbage))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON \(Expecting value at column 12\)"):
        tasks.resolve(str(bad_json))
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "ok"}, {"prompt": "fine"}, {"prompt": 7}])
    with pytest.raises(ValueError, match="wrong.jsonl: cannot read|wrong.jsonl: row 2: 'prompt' must be"):
        tasks.resolve(wrong)
    ints = write_jsonl(tmp_path / "ints.jsonl", [{"prompt": 1}, {"prompt": 2}])
    with pytest.raises(ValueError, match=r"ints.jsonl: row 0: 'prompt' must be a string or a list of "
                                         r"\{'role', 'content'\} messages; got int"):
        tasks.resolve(ints)
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "a"}, {"prompt": ""}])
    with pytest.raises(ValueError, match="blank.jsonl: row 1: 'prompt' is an empty string"):
        tasks.resolve(blank)
    badmsg = write_jsonl(tmp_path / "badmsg.jsonl", [{"prompt": [{"role": "user", "text": "hi"}]}] * 2)
    with pytest.raises(ValueError, match="badmsg.jsonl: row 0: 'prompt': message 0 must have"):
        tasks.resolve(str(badmsg))
    with pytest.raises(FileNotFoundError, match="nothing.jsonl: no such dataset"):
        DatasetTask(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "data.txt").write_text("prompt\nhi\n")
    with pytest.raises(ValueError, match="data.txt: unknown dataset format"):
        tasks.resolve(str(tmp_path / "data.txt"))
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "only"}])
    with pytest.raises(ValueError, match="at least 2 are needed"):
        tasks.resolve(one)
    with pytest.raises(ValueError, match="unknown task 'nope.jsonl'"):
        tasks.resolve("nope.jsonl")
    ok = write_jsonl(tmp_path / "ok.jsonl", ROWS)
    with pytest.raises(RewardError, match="does not exist"):
        tasks.resolve(ok, rewards=["missing.py:f"])
    with pytest.raises(ValueError, match="eval_fraction"):
        tasks.resolve(ok, eval_fraction=1.5)
    assert np.isfinite(tasks.resolve(ok, rewards=[lambda completions, **kw: [0.0] * len(completions)])
                       .reward("What is 0 + 1?", "1"))
