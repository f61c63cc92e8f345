"""Reward models: sequence classifiers in the Hugging Face layout (``GPT2ForSequenceClassification``,
``GPTNeoXForSequenceClassification``, ``LlamaForSequenceClassification``, ``Qwen2ForSequenceClassification``).

The backbone is ntkdyn's decoder (:func:`ntkdyn.models.transformer.features`, read through the one layout table of
:mod:`ntkdyn.models.hf`); the head is ``score.weight`` (num_labels, d) applied to h at the last non-pad token, as
transformers pools: the rightmost token whose id is not ``pad_token_id`` (config.json), or the last token when the
config has no pad id. Sequences are right-padded, batched and scored by one jit-compiled function.

    rm = load_reward_model("runs/my-rm")                  # a directory saved by save_pretrained (+ tokenizer)
    rm.score(prompts, completions)                        # (N,) float32: label 0 at the last token
    reward_set = RewardSet([rm.as_reward_function()])     # TRL's signature, named after the directory

Prompt + completion are rendered as TRL's GRPOTrainer renders them for a reward model: conversational prompts
(lists of {"role", "content"}) with the reward model's chat template (``apply_chat_template`` of the whole
conversation, no generation prompt; plain concatenation of the contents when the tokenizer has no template),
standard prompts as ``prompt + completion``; tokens without added special tokens.
"""
from __future__ import annotations

import json
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import hf
from .config import CheckpointError, ModelConfig, read_config
from .tokenizer import load_tokenizer
from .transformer import features, graphdef_for

__all__ = ["RewardModel", "load_reward_model", "split_classifier_state"]

_HEAD_NAMES = {"gpt2": None, "gpt_neox": "embed_out.weight", "llama": "lm_head.weight"}


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _pooled_logits(graphdef, cfg: ModelConfig, params, score_w, ids, last):
    """Classifier logits (B, num_labels): score_w (num_labels, d) applied to h at position last[b] of row b."""
    h = features(graphdef, cfg, params, ids)[0]  # (B, T, d)
    pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # (B, d)
    return pooled @ score_w.T.astype(pooled.dtype)


def split_classifier_state(cfg: ModelConfig, state: dict, source: str = "checkpoint", dtype=np.float32):
    """(backbone params {"backbone", "head"}, score weight (num_labels, d)) from a classifier's HF tensors.

    The backbone goes through :func:`ntkdyn.models.hf.from_hf_state`; an untied family's LM head, which a
    classifier does not have, is filled with zeros (it is never applied; GPT-2 keeps its tied table, the input
    embedding)."""
    state = dict(state)
    score = state.pop("score.weight", None)
    if score is None:
        raise CheckpointError(f"{source}: no 'score.weight' tensor; expected a sequence classifier "
                              "(GPT2/GPTNeoX/Llama/Qwen2ForSequenceClassification)")
    if "score.bias" in state:
        raise CheckpointError(f"{source}: 'score.bias' is not supported (the sequence classifiers of these "
                              "families have a bias-free score head)")
    score = np.asarray(score, np.float32)
    if score.ndim != 2 or score.shape[1] != cfg.d_model:
        raise CheckpointError(f"{source}: tensor 'score.weight' has shape {score.shape}, expected "
                              f"(num_labels, {cfg.d_model})")
    head = _HEAD_NAMES[cfg.family]
    if head is not None and not cfg.tie_word_embeddings and head not in state:
        state[head] = np.zeros((cfg.vocab_size, cfg.d_model), np.float32)
    params = hf.from_hf_state(cfg, state, source=source, dtype=dtype)
    return params, jnp.asarray(score, dtype)


class RewardModel:
    """A sequence classifier: ``score(prompts, completions)`` -> (N,) label-0 logits, ``logits`` -> (N, L)."""

    def __init__(self, config: ModelConfig, params, score_w, tokenizer=None, name: str = "reward_model",
                 graphdef=None):
        self.config, self.params, self.score_w, self.tokenizer, self.name = config, params, score_w, tokenizer, name
        self.graphdef = graphdef if graphdef is not None else graphdef_for(config)

    def __repr__(self) -> str:
        return f"RewardModel(name={self.name!r}, family={self.config.family!r}, num_labels={self.num_labels})"

    @property
    def num_labels(self) -> int:
        return int(self.score_w.shape[0])

    # ------------------------------------------------------------------ text -> ids
    def render(self, prompt, completion) -> str:
        """The text the reward model reads for one (prompt, completion) (see the module docstring)."""
        if _is_chat(prompt):
            reply = completion if _is_chat(completion) else [{"role": "assistant", "content": _text(completion)}]
            messages = [dict(m) for m in list(prompt) + list(reply)]
            tok = self.tokenizer
            if callable(getattr(tok, "apply_chat_template", None)) and getattr(tok, "chat_template", True):
                return tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
            return "".join(str(m.get("content", "")) for m in messages)
        return str(prompt) + _text(completion)

    def encode(self, prompts, completions) -> list[list[int]]:
        """Token ids (no special tokens added) of each rendered prompt + completion."""
        if self.tokenizer is None:
            raise ValueError(f"reward model {self.name!r} has no tokenizer; score_ids takes token ids directly")
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return [list(self.tokenizer.encode(self.render(p, c))) for p, c in zip(prompts, completions)]

    # ------------------------------------------------------------------ scoring
    def logits_ids(self, seqs, batch_size: int = 32) -> np.ndarray:
        """(N, num_labels) float32 logits of token-id sequences, pooled at the last non-pad token."""
        cfg = self.config
        seqs = [list(map(int, s)) for s in seqs]
        for i, s in enumerate(seqs):
            if not s:
                raise ValueError(f"reward model {self.name!r}: sample {i} has no tokens")
            if len(s) > cfg.max_positions:
                raise ValueError(f"reward model {self.name!r}: sample {i} has {len(s)} tokens, more than "
                                 f"max_positions={cfg.max_positions}")
            if min(s) < 0 or max(s) >= cfg.vocab_size:
                raise ValueError(f"reward model {self.name!r}: sample {i} holds token ids outside [0, "
                                 f"{cfg.vocab_size})")
        out = np.zeros((len(seqs), self.num_labels), np.float32)
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start: start + batch_size]
            ids, last = _right_pad(chunk, cfg, batch_size if len(seqs) > batch_size else len(chunk))
            z = _pooled_logits(self.graphdef, cfg, self.params, self.score_w, jnp.asarray(ids), jnp.asarray(last))
            out[start: start + len(chunk)] = np.asarray(z)[: len(chunk)]
        return out

    def logits(self, prompts, completions, batch_size: int = 32) -> np.ndarray:
        """(N, num_labels) float32 classifier logits of prompt + completion."""
        return self.logits_ids(self.encode(list(prompts), list(completions)), batch_size)

    def score(self, prompts, completions, batch_size: int = 32) -> np.ndarray:
        """(N,) float32: the label-0 logit (the reward) of each prompt + completion (TRL: ``logits[:, 0]``)."""
        return self.logits(prompts, completions, batch_size)[:, 0]

    def as_reward_function(self, batch_size: int = 32):
        """This model as a reward function in TRL's signature, named after the model (its directory name)."""

        def reward(prompts, completions, completion_ids=None, **columns):
            return [float(v) for v in self.score(prompts, completions, batch_size)]

        reward.__name__ = reward.__qualname__ = self.name
        reward.__doc__ = f"Reward model {self.name!r} (label-0 logit at the last non-pad token)"
        return reward


def _right_pad(seqs, cfg: ModelConfig, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (rows, T), last (rows,)): right-padded with the pad id (0 without one), T rounded up to a multiple of
    32 (capped at max_positions) so that few shapes compile; last = transformers' pooling index."""
    longest = max(len(s) for s in seqs)
    T = min(cfg.max_positions, -(-longest // 32) * 32)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    ids = np.full((rows, T), pad, np.int32)
    last = np.zeros((rows,), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        if cfg.pad_token_id is None:
            last[i] = len(s) - 1
        else:  # the rightmost non-pad token (0 when every token is the pad id), as transformers pools
            keep = np.nonzero(ids[i] != cfg.pad_token_id)[0]
            last[i] = keep[-1] if keep.size else 0
    return ids, last


def _is_chat(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], dict) and "role" in x[0]


def _text(completion) -> str:
    if isinstance(completion, str):
        return completion
    if _is_chat(completion) or (isinstance(completion, (list, tuple)) and completion):
        return str(completion[-1].get("content", ""))
    raise ValueError(f"a completion must be a string or a list of messages; got {type(completion).__name__}")


def load_reward_model(name_or_dir: str, dtype=jnp.float32) -> RewardModel:
    """Open a Hugging Face sequence-classifier directory (config.json + safetensors [+ tokenizer]); a name
    that is not a directory goes through :func:`ntkdyn.models.known.resolve`. Errors name the file/tensor."""
    path = os.fspath(name_or_dir)
    if not os.path.isdir(path):
        from .known import resolve

        path = resolve(path)
    cfg = read_config(path)
    with open(os.path.join(path, "config.json")) as f:
        archs = json.load(f).get("architectures") or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise CheckpointError(f"{path}: architectures {archs} is not a sequence classifier; expected "
                              "GPT2/GPTNeoX/Llama/Qwen2ForSequenceClassification")
    params, score_w = split_classifier_state(cfg, hf.read_weights(path), source=path, dtype=dtype)
    name = os.path.basename(os.path.normpath(path))
    return RewardModel(cfg, params, score_w, load_tokenizer(path), name)
