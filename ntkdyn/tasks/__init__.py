"""Tasks: prompts, rewards, references and answer sets, from every source.

* character tasks (:mod:`.synthetic`: ``sum``, ``multiple``, ``word``; ``plus``, with a single answer) for ntkdyn's
  own character model;
* natural-language verifiable tasks for instruct models (:mod:`.natural`: ``add``, ``mul``, ``two-sum``,
  ``list-multiples``), prompts as chat messages;
* a user's dataset (:mod:`.datasets`: JSONL / CSV / Parquet / a saved ``datasets`` directory with a ``prompt``
  column);
* reward functions in TRL's signature, combined with weights (:mod:`.rewards`), reward models
  (:mod:`ntkdyn.models.classifier`).

Quick start::

    from ntkdyn import tasks
    task = tasks.get(tasks.DEFAULT_TASK)          # "sum"
    prompts = task.prompts("train", 8, seed=0)    # e.g. ["sum 47:", ...]
    task.reward(prompts[0], "12+35")              # 1.0 or 0.0
    tok = tasks.CharTokenizer()
    ids, lengths = tasks.encode_batch(tok, prompts)  # left-padded int32

    task = tasks.resolve("add")                   # or "two-sum", "list-multiples", or "data/prompts.jsonl"
    rows = task.rows("train", 8, seed=0)          # [{"prompt": [{"role": "user", ...}], "answer": "85"}, ...]
    rs = tasks.reward_set(task)                   # TRL-signature reward functions with weights
    out = rs(prompts, texts, completion_ids, answer=[...])   # out.rewards (N,), out.metrics {"rewards/add/mean": ..}
"""

from .base import MAX_COMPLETION_CHARS, prompt_key
from .synthetic import (
    DEFAULT_TASK,
    SPLITS,
    MultipleTask,
    SumTask,
    Task,
    WordTask,
    get,
    names,
)
from .natural import ArithmeticTask, ListMultiplesTask, NaturalTask, PairSumTask
from .datasets import DatasetTask, load_rows
from .rewards import (
    RewardError,
    RewardOutput,
    RewardSet,
    as_completions,
    completion_text,
    is_conversational,
    load_reward_function,
    reward_name,
    task_reward_function,
)
from .registry import all_names, resolve, reward_function, reward_set
from ..models.tokenizer import (
    BOS_TOKEN,
    CHARSET,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    CharTokenizer,
    HFTokenizer,
    encode_batch,
    encode_prompt,
    load_tokenizer,
    pad_id_of,
)

from .synthetic import __all__ as _synthetic_all
from ..models.tokenizer import __all__ as _tokenizer_all

# the submodules' public names, re-exported (one list each, kept where the names are defined)
__all__ = [*_synthetic_all, "MAX_COMPLETION_CHARS", *_tokenizer_all,
           "prompt_key", "NaturalTask", "ArithmeticTask", "PairSumTask", "ListMultiplesTask", "DatasetTask",
           "load_rows", "RewardError", "RewardOutput", "RewardSet", "as_completions", "completion_text",
           "is_conversational", "load_reward_function", "reward_name", "task_reward_function", "all_names",
           "resolve", "reward_function", "reward_set"]
