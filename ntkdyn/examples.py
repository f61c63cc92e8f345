"""Teacher-forcing examples and rollout prompts: the one place a (prompt, answer) pair becomes token ids.

A sequence is ``encode_prompt(prompt) + encode(answer) + [eos]`` (ntkdyn.models.tokenizer.encode_prompt: ``[bos] +
encode(prompt)`` for the character tokenizer, the chat template's user turn and generation prompt for a chat
model, whose answer + end-of-turn token is then the assistant turn). SFT (ntkdyn.sft), the LP stage and the probe
set of the RL trainer (ntkdyn.rl) and the one-step experiment build their ids here.

    ids, loss_mask = make_examples(task, tok, ["sum 47:"], ["12+35"])   # right-padded; loss on answer + EOS
    heads = prompt_ids(tok, ["sum 47:"])                                # rollout prompts (lm.generate left-pads)
"""
from __future__ import annotations

import numpy as np

from .models.padding import pad_right
from .models.tokenizer import encode_prompt, eos_ids_of, pad_id_of

__all__ = ["prompt_ids", "end_of_answer", "make_examples"]


def prompt_ids(tokenizer, prompts, chat: bool | None = None) -> list[list[int]]:
    """The RL rollout prompts: ``encode_prompt(tokenizer, prompt, chat=chat)`` for every prompt (``[bos] +
    encode(prompt)`` without a chat template; lists of different lengths: ``lm.generate`` left-pads them)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    return [encode_prompt(tokenizer, p, chat=chat) for p in prompts]


def end_of_answer(tokenizer) -> int:
    """The id that closes an answer: the tokenizer's EOS token (a chat model's end-of-turn, e.g. <|im_end|>)."""
    if tokenizer.eos_id is not None:
        return int(tokenizer.eos_id)
    ids = eos_ids_of(tokenizer)
    if not ids:
        raise ValueError(f"the tokenizer {tokenizer!r} has no EOS token to end an answer with")
    return ids[0]


def make_examples(task, tokenizer, prompts, answers, length: int | None = None, *, chat: bool | None = None,
                  real_mask: bool = False):
    """Teacher-forcing batch of ``encode_prompt(prompt) + encode(answer) + [eos]`` sequences (``[bos] + prompt +
    answer + [eos]`` without a chat template; with one, the answer and EOS are the assistant turn).

    Returns ``(ids, loss_mask)``: ``ids`` (B, T) int32 RIGHT-padded with ``pad_id_of(tokenizer)``, and
    ``loss_mask`` (B, T) float32, 1 exactly on the answer tokens and the EOS (the prediction targets); with
    ``real_mask`` also (B, T) float32, 1 on every real token (the pad id may equal the EOS id). ``T`` is the
    longest sequence, or ``length`` when given (a fixed shape avoids recompiling a jitted step).
    """
    prompts, answers = list(prompts), list(answers)
    if len(prompts) != len(answers):
        raise ValueError(f"make_examples: {len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        raise ValueError("make_examples: no examples")
    if task is not None:
        for p in prompts[:1]:
            task.parse(p)  # a prompt of another task is a caller bug: fail early and clearly
    pad = pad_id_of(tokenizer)
    heads = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]
    eos = end_of_answer(tokenizer)
    rows = [h + list(tokenizer.encode(a)) + [eos] for h, a in zip(heads, answers)]
    T = max(len(r) for r in rows)
    if length is not None and length < T:
        raise ValueError(f"make_examples: length={length} is shorter than the longest sequence ({T} tokens)")
    ids, real = pad_right(rows, pad, length)
    mask = real.astype(np.float32)
    for i, h in enumerate(heads):
        mask[i, : len(h)] = 0.0  # BOS and the prompt are context, not targets
    return (ids, mask, real.astype(np.float32)) if real_mask else (ids, mask)
