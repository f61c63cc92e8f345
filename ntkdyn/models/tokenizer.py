"""Character-level tokenizer shared by all synthetic tasks.

Every task prompt and answer is written with the characters of :data:`CHARSET`.
The vocabulary is the three special tokens followed by one token per character::

    <pad> = 0, <bos> = 1, <eos> = 2, then CHARSET[i] = 3 + i

:class:`CharTokenizer` is built on a ``tokenizers.Tokenizer`` (a ``WordLevel``
model over single characters, a pre-tokenizer that isolates every character and
a ``Fuse`` decoder that joins tokens without spaces). :meth:`CharTokenizer.save`
writes a directory that ``transformers.PreTrainedTokenizerFast.from_pretrained``
and ``transformers.AutoTokenizer.from_pretrained`` open and that encodes/decodes
identically. No post-processor is installed, so the Hugging Face tokenizer adds
no special tokens either: BOS/EOS are added explicitly by the caller (see
:func:`encode_batch`).

:class:`HFTokenizer` exposes the same small interface for an arbitrary
``tokenizer.json`` (real checkpoints), and :func:`load_tokenizer` picks the right
class for a saved directory.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

__all__ = [
    "CHARSET",
    "SPECIAL_TOKENS",
    "PAD_TOKEN",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "CharTokenizer",
    "HFTokenizer",
    "load_tokenizer",
    "encode_batch",
]

#: Every character a task prompt or answer may contain (order fixes the ids).
CHARSET = " 0123456789abcdefghijklmnopqrstuvwxyz+-*=:,.?[]()"

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<bos>", "<eos>"
#: Special tokens, in id order (ids 0, 1, 2).
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

_TOKENIZER_FILE = "tokenizer.json"
_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_MAP_FILE = "special_tokens_map.json"
_MARKER = "ntkdyn_char"


class CharTokenizer:
    """Character-level tokenizer: one token per character of ``charset``.

    Args:
        charset: the allowed characters (distinct, none of them a special
            token). Defaults to :data:`CHARSET`.

    Attributes:
        charset, vocab_size, pad_id (0), bos_id (1), eos_id (2),
        tokenizer (the underlying ``tokenizers.Tokenizer``).
    """

    def __init__(self, charset: str = CHARSET):
        if len(set(charset)) != len(charset):
            raise ValueError("charset contains duplicate characters")
        self.charset = charset
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for ch in charset:
            vocab[ch] = len(vocab)
        self._char_to_id = {ch: vocab[ch] for ch in charset}

        tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
        )
        self.tokenizer = tok
        self.vocab_size = len(vocab)
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, charset={self.charset!r})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (one per character, no special tokens added).

        Raises:
            ValueError: if ``text`` holds characters outside ``charset``; the
                message names them and lists the allowed set.
        """
        bad = sorted({ch for ch in text if ch not in self._char_to_id})
        if bad:
            raise ValueError(
                f"CharTokenizer cannot encode character(s) {bad!r} in {text!r}; "
                f"allowed characters: {self.charset!r}"
            )
        return [self._char_to_id[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: special tokens are skipped (decoding does not stop at
        EOS) and ids outside the vocabulary are ignored."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and
        ``special_tokens_map.json`` to ``directory`` (created if needed)."""
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save(os.path.join(directory, _TOKENIZER_FILE))
        special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "clean_up_tokenization_spaces": False,
            "padding_side": "left",
            "model_input_names": ["input_ids", "attention_mask"],
            _MARKER: True,
            "ntkdyn_charset": self.charset,
        }
        with open(os.path.join(directory, _CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(directory, _SPECIAL_MAP_FILE), "w") as f:
            json.dump(special, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> "CharTokenizer":
        """Rebuild the tokenizer saved by :meth:`save` in ``directory``."""
        config = _read_json(os.path.join(directory, _CONFIG_FILE))
        if not config.get(_MARKER):
            raise ValueError(f"{directory} does not hold an ntkdyn CharTokenizer")
        return cls(config.get("ntkdyn_charset", CHARSET))


class HFTokenizer:
    """Pass-through wrapper around a ``tokenizers.Tokenizer`` from ``tokenizer.json``.

    Offers the :class:`CharTokenizer` interface for real checkpoints. Special
    token ids come from ``tokenizer_config.json`` / ``special_tokens_map.json``
    when present and are ``None`` otherwise.
    """

    def __init__(self, directory: str):
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, _TOKENIZER_FILE))
        config = {}
        for name in (_SPECIAL_MAP_FILE, _CONFIG_FILE):  # config wins over the map
            path = os.path.join(directory, name)
            if os.path.exists(path):
                config.update(_read_json(path))
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.pad_id = self._token_id(config.get("pad_token"))
        self.bos_id = self._token_id(config.get("bos_token"))
        self.eos_id = self._token_id(config.get("eos_token"))

    def _token_id(self, token) -> int | None:
        if isinstance(token, dict):  # serialized AddedToken
            token = token.get("content")
        if not isinstance(token, str):
            return None
        return self.tokenizer.token_to_id(token)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, skipping special tokens."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(directory: str) -> CharTokenizer | HFTokenizer | None:
    """Tokenizer saved in ``directory``.

    Returns a :class:`CharTokenizer` when ``tokenizer_config.json`` carries the
    ``"ntkdyn_char": true`` marker, an :class:`HFTokenizer` for any other
    ``tokenizer.json``, and ``None`` when there is no ``tokenizer.json``.
    """
    if not os.path.exists(os.path.join(directory, _TOKENIZER_FILE)):
        return None
    config_path = os.path.join(directory, _CONFIG_FILE)
    if os.path.exists(config_path) and _read_json(config_path).get(_MARKER):
        return CharTokenizer.load(directory)
    return HFTokenizer(directory)


def encode_batch(
    tokenizer, texts: Sequence[str], add_bos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Encode prompts into one LEFT-padded int32 batch.

    Args:
        tokenizer: a :class:`CharTokenizer` or :class:`HFTokenizer`.
        texts: the prompts.
        add_bos: prepend ``tokenizer.bos_id`` to every row (skipped when the
            tokenizer has no BOS token).

    Returns:
        ``(ids, lengths)``: ``ids`` of shape ``(B, T)`` with ``T`` the longest
        encoded text, each row right-aligned and padded on the left with
        ``pad_id`` (``eos_id`` if there is no pad token, else 0); ``lengths``
        (int32, shape ``(B,)``) the number of real tokens per row (BOS included).
    """
    prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    rows = [prefix + list(tokenizer.encode(t)) for t in texts]
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    width = int(lengths.max()) if len(rows) else 0
    pad = tokenizer.pad_id
    if pad is None:
        pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    ids = np.full((len(rows), width), pad, dtype=np.int32)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = row
    return ids, lengths


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
