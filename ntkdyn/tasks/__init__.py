"""Synthetic verifiable-reward tasks (the character tokenizer they share lives in ntkdyn.models.tokenizer and is
re-exported here).

Quick start::

    from ntkdyn import tasks
    task = tasks.get(tasks.DEFAULT_TASK)          # "sum"
    prompts = task.prompts("train", 8, seed=0)    # e.g. ["sum 47:", ...]
    task.reward(prompts[0], "12+35")              # 1.0 or 0.0
    tok = tasks.CharTokenizer()
    ids, lengths = tasks.encode_batch(tok, prompts)  # left-padded int32
"""

from .tasks import (
    DEFAULT_TASK,
    MAX_COMPLETION_CHARS,
    SPLITS,
    MultipleTask,
    SumTask,
    Task,
    WordTask,
    get,
    names,
)
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
)

from .tasks import __all__ as _tasks_all
from ..models.tokenizer import __all__ as _tokenizer_all

# the submodules' public names, re-exported (one list each, kept where the names are defined)
__all__ = [*_tasks_all, "MAX_COMPLETION_CHARS", *_tokenizer_all]
