"""A user's prompts as a task: ``--dataset PATH`` (JSONL, JSON, CSV, Parquet, or a directory written by
🤗 ``datasets``' ``save_to_disk``), read offline with the ``datasets`` library (never from the Hub).

The dataset has a ``prompt`` column -- a string (standard) or a list of ``{"role", "content"}`` messages
(conversational), as TRL's GRPOTrainer expects -- and any other columns, which are passed to the reward functions
by name. For SFT (and the LP stage of LP-FT) a ``completion`` column holds the reference answers (a string, or a list
of assistant messages). Held-out prompts come from an eval dataset (``eval_path``), from a saved DatasetDict's
``"test"`` split, or from a seeded ``eval_fraction`` of the rows.

    task = DatasetTask("prompts.jsonl", eval_fraction=0.1, seed=0, reward_funcs=[my_reward])
    rows = task.rows("train", 8, seed=step)            # [{"prompt": ..., "answer": ...}, ...]
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .base import Task, check_split, prompt_key
from .rewards import RewardSet, completion_text, is_conversational

__all__ = ["DatasetTask", "load_rows", "FORMATS"]

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _read(path: str):
    """A ``datasets.Dataset`` (or DatasetDict) read from ``path``; errors name the file."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never reach the Hub
    import datasets

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such dataset file or directory")
    quiet = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.utils.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its builders log a failed file before raising
    try:
        return _read_quietly(datasets, path)
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not quiet:
            datasets.utils.enable_progress_bars()


def _read_quietly(datasets, path: str):
    try:
        if os.path.isdir(path):
            return datasets.load_from_disk(path, keep_in_memory=True)
        fmt = FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt is None:
            raise ValueError(f"{path}: unknown dataset format; expected one of {sorted(FORMATS)} or a directory "
                             "saved by datasets' save_to_disk")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: the dataset is empty (0 rows)")
        reader = {"json": datasets.Dataset.from_json, "csv": datasets.Dataset.from_csv,
                  "parquet": datasets.Dataset.from_parquet}[fmt]
        with tempfile.TemporaryDirectory(prefix="ntkdyn-dataset-") as cache:  # leave no builder cache behind
            return reader(path, keep_in_memory=True, cache_dir=cache)
    except Exception as e:  # pyarrow / datasets raise their own types for corrupt files
        if str(e).startswith(path):
            raise
        if "corresponds to no data" in str(e):  # datasets' builders refuse a file without rows
            raise ValueError(f"{path}: the dataset is empty (0 rows)") from None
        if fmt == "json":
            where = _json_error(path)
            if where:
                raise ValueError(f"{path}:{where}") from None
        raise ValueError(f"{path}: cannot read the dataset ({type(e).__name__}: {_cause(e)})") from None


def _cause(e: BaseException) -> str:
    """The innermost message of an exception chain (datasets wraps the reader's error in a generic one)."""
    while (e.__cause__ or e.__context__) is not None and str(e).startswith("An error occurred"):
        e = e.__cause__ or e.__context__
    return f"{e}" if isinstance(e, BaseException) else str(e)


def _json_error(path: str) -> str | None:
    """"<line>: <what is wrong>" for the first line of a JSON Lines file (or the position in a JSON document) that
    does not parse as a JSON object; None when the file parses."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        return f" not UTF-8 text (byte {e.start}: {e.reason})"
    try:  # one JSON document (an array of objects, or datasets' {"data": [...]} form)?
        json.loads(text)
        return None
    except json.JSONDecodeError as e:
        whole = e
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == 1 and line.lstrip().startswith(("[", "{")) and whole.lineno > 1:
                break  # a JSON document over several lines: its own error position below
            return f"{i}: not valid JSON ({e.msg} at column {e.colno}): {line[:80]!r}"
        if not isinstance(rec, dict):
            return f"{i}: a JSON {type(rec).__name__}, expected one object per line (JSON Lines): {line[:80]!r}"
    else:
        return None
    return f"{whole.lineno}: not valid JSON ({whole.msg} at line {whole.lineno} column {whole.colno})"


def load_rows(path: str, split: str | None = None, need_completion: bool = False) -> list[dict]:
    """The rows of a dataset file or saved directory as dicts, checked: a ``prompt`` column (and ``completion``
    when ``need_completion``), at least one row, every prompt a non-empty string or a list of messages. A saved
    DatasetDict gives its ``split`` (default ``"train"``)."""
    import datasets

    data = _read(path)
    if isinstance(data, datasets.DatasetDict):
        split = split or "train"
        if split not in data:
            raise ValueError(f"{path}: has splits {sorted(data)}, no {split!r}")
        data = data[split]
    columns = list(data.column_names)
    for need in ("prompt",) + (("completion",) if need_completion else ()):
        if need not in columns:
            raise ValueError(f"{path}: no {need!r} column; columns found: {columns}")
    if len(data) == 0:
        raise ValueError(f"{path}: the dataset is empty (0 rows)")
    rows = data.to_list()
    for i, row in enumerate(rows):
        row["prompt"] = _check_prompt(row["prompt"], f"{path}: row {i}: 'prompt'")
        if need_completion:
            _check_completion(row["completion"], f"{path}: row {i}: 'completion'")
    return rows


def _check_prompt(prompt, where: str):
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError(f"{where} is an empty string")
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        messages = [{k: v for k, v in m.items() if v is not None} for m in prompt]  # arrow fills absent keys
        for j, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: message {j} must have a string 'role' and 'content'; got {m!r}")
        return messages
    raise ValueError(f"{where} must be a string or a list of {{'role', 'content'}} messages; got "
                     f"{type(prompt).__name__} {str(prompt)[:80]!r}")


def _check_completion(completion, where: str) -> None:
    if completion_text(completion) is None:
        raise ValueError(f"{where} must be a string or a list of messages with a 'content'; got "
                         f"{type(completion).__name__} {str(completion)[:80]!r}")


class DatasetTask(Task):
    """The rows of a dataset as a task.

    Splits: ``"train"`` is the dataset (less the held-out rows), ``"test"`` is ``eval_path`` when given, else the
    ``"test"`` split of a saved DatasetDict, else ``eval_fraction`` of the rows (at least one, at most all but one)
    drawn with ``seed``. Rewards: ``reward_funcs`` / ``reward_weights`` (callables in TRL's signature or
    ``module:function`` specs); a dataset brings no reward of its own. Answer sets are not enumerable
    (``correct_answers`` is None); references come from a ``completion`` column when there is one.
    """

    binary = False

    def __init__(self, path: str, eval_path: str | None = None, eval_fraction: float = 0.1, seed: int = 0,
                 reward_funcs=None, reward_weights=None, name: str | None = None):
        if not 0.0 < float(eval_fraction) < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1); got {eval_fraction!r}")
        self.path, self.eval_path = os.fspath(path), eval_path
        self.name = name or os.path.splitext(os.path.basename(os.path.normpath(self.path)))[0]
        self.description = f"dataset {self.path}"
        rows = load_rows(self.path)
        if eval_path is not None:
            self._splits = {"train": rows, "test": load_rows(os.fspath(eval_path))}
        elif os.path.isdir(self.path) and _has_split(self.path, "test"):
            self._splits = {"train": rows, "test": load_rows(self.path, "test")}
        else:
            if len(rows) < 2:
                raise ValueError(f"{self.path}: {len(rows)} row; at least 2 are needed to hold some out for "
                                 "evaluation (or pass an eval dataset)")
            order = np.random.default_rng(seed).permutation(len(rows))
            n_test = min(len(rows) - 1, max(1, int(round(eval_fraction * len(rows)))))
            test = set(order[:n_test].tolist())
            self._splits = {"train": [r for i, r in enumerate(rows) if i not in test],
                            "test": [r for i, r in enumerate(rows) if i in test]}
        self.chat = is_conversational(rows[0]["prompt"])
        self.columns_found = [c for c in rows[0] if c != "prompt"]
        self._train_keys = {prompt_key(r["prompt"]) for r in self._splits["train"]}
        self._by_key = {}
        for split in ("test", "train"):  # train wins for a prompt in both
            self._by_key.update({prompt_key(r["prompt"]): r for r in self._splits[split]})
        self._rewards = RewardSet(reward_funcs, reward_weights) if reward_funcs else None

    def __len__(self) -> int:
        return sum(len(v) for v in self._splits.values())

    # ----- prompts ----------------------------------------------------------------------------------------------
    def split_of(self, prompt) -> str:
        return "train" if prompt_key(prompt) in self._train_keys else "test"

    def split_rows(self, split: str) -> list[dict]:
        """Every row of ``split`` (copies)."""
        check_split(split)
        return [dict(r) for r in self._splits[split]]

    def split_prompts(self, split: str) -> list:
        return [r["prompt"] for r in self.split_rows(split)]

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """``n`` rows of ``split`` drawn with ``seed`` (distinct when the split has ``n``, else with replacement)."""
        check_split(split)
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        pool = self._splits[split]
        idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=n > len(pool))
        return [dict(pool[i]) for i in idx]

    def prompts(self, split: str, n: int, seed: int = 0) -> list:
        return [r["prompt"] for r in self.rows(split, n, seed)]

    def columns(self, prompt) -> dict:
        row = self._by_key.get(prompt_key(prompt))
        return {} if row is None else {k: v for k, v in row.items() if k != "prompt"}

    # ----- rewards and references ----------------------------------------------------------------------------
    def reward_funcs(self) -> list:
        if self._rewards is None:
            raise ValueError(f"dataset task {self.name!r} has no reward function; pass reward functions (TRL "
                             "signature, e.g. --reward my_rewards.py:correct)")
        return list(self._rewards.funcs)

    def reward_weights(self) -> list[float] | None:
        return None if self._rewards is None else self._rewards.weights.tolist()

    def reward(self, prompt, completion) -> float:
        """The weighted reward of one completion (the dataset's columns for ``prompt`` passed by name)."""
        self.reward_funcs()
        out = self._rewards([prompt], [completion], None, **{k: [v] for k, v in self.columns(prompt).items()})
        return float(out.rewards[0])

    def parse(self, prompt) -> tuple:
        return (prompt,)

    def correct_answers(self, prompt) -> None:
        return None

    def reference(self, prompt, seed: int = 0) -> str | None:
        """The ``completion`` column of the prompt's row (its text), or None."""
        return completion_text(self.columns(prompt).get("completion"))

    def sample_answer(self, prompt, rng: np.random.Generator, correct: bool) -> str:
        ref = self.reference(prompt)
        if not correct or ref is None:
            raise ValueError(f"dataset task {self.name!r} can only give the reference answer of its 'completion' "
                             "column" + ("" if ref is not None else f"; {self.path} has none for this prompt"))
        return ref

    def well_formed(self, completion, prompt=None) -> bool:
        text = completion_text(completion)
        return text is not None and bool(text.strip())

    def canonical(self, prompt, completion) -> str | None:
        text = completion_text(completion)
        return None if text is None else text.strip()

    def sft_pairs(self, split: str = "train") -> tuple[list, list]:
        """(prompts, completions) of ``split`` for supervised training; ValueError when there is no
        ``completion`` column."""
        rows = self.split_rows(split)
        if "completion" not in rows[0]:
            raise ValueError(f"{self.path}: no 'completion' column for SFT; columns found: "
                             f"{['prompt'] + self.columns_found}")
        for i, r in enumerate(rows):
            _check_completion(r["completion"], f"{self.path}: {split} row {i}: 'completion'")
        return [r["prompt"] for r in rows], [r["completion"] for r in rows]


def _has_split(path: str, split: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) and os.path.isdir(os.path.join(path, split))
