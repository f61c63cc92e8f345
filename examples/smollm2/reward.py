"""Reward function of the SmolLM2 worked example, in TRL's signature.

The dataset's columns arrive by name (here ``answer``); one float per completion, or None where the reward does not
apply. Completions are strings for plain-text prompts and lists of messages for chat prompts, as in TRL.
"""
import re

_INT = re.compile(r"-?\d+")


def reward(prompts, completions, completion_ids, answer, **columns):
    """1.0 when the last integer of the completion is the answer, else 0.0."""
    out = []
    for completion, want in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        found = _INT.findall(text.replace(",", ""))
        out.append(1.0 if found and int(found[-1]) == int(want) else 0.0)
    return out
