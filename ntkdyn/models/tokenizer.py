"""Tokenizers: the character tokenizer of ntkdyn's synthetic tasks and real checkpoints' `tokenizer.json`.

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

:class:`HFTokenizer` exposes the same interface for a real checkpoint's
``tokenizer.json`` and adds what transformers' tokenizer offers for it: the
special tokens of ``tokenizer_config.json``, every EOS id (``generation_config.json``),
``apply_chat_template`` (rendered with jinja2 exactly as transformers renders it)
and ``save`` into a directory that transformers opens. Its ids equal
``transformers.AutoTokenizer`` of the same directory. :func:`load_tokenizer`
picks the right class for a saved directory.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ..io import read_json, write_json
from .chat_template import clean_up_spaces, compile_template
from .config import CheckpointError
from .padding import pad_left

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
    "encode_prompt",
    "chat_enabled",
    "CHAT_CHOICES",
    "eos_ids_of",
    "pad_id_of",
]

#: Every character a task prompt or answer may contain (order fixes the ids).
CHARSET = " 0123456789abcdefghijklmnopqrstuvwxyz+-*=:,.?[]()"

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<bos>", "<eos>"
#: Special tokens, in id order (ids 0, 1, 2).
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

_TOKENIZER_FILE = "tokenizer.json"
_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_MAP_FILE = "special_tokens_map.json"
_TEMPLATE_FILE = "chat_template.jinja"
_GENERATION_FILE = "generation_config.json"
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
        config = read_json(os.path.join(directory, _CONFIG_FILE), what=_CONFIG_FILE)
        if not config.get(_MARKER):
            raise ValueError(f"{directory} does not hold an ntkdyn CharTokenizer")
        tok = cls(config.get("ntkdyn_charset", CHARSET))
        path = os.path.join(directory, _TOKENIZER_FILE)
        try:  # the saved tokenizer.json must be the one this charset writes (transformers reads that file)
            saved = Tokenizer.from_file(path).get_vocab(with_added_tokens=True)
        except Exception as e:  # tokenizers raises its own Exception type for a corrupt file
            raise CheckpointError(f"{path}: cannot read the tokenizer ({e}); expected the tokenizer.json that "
                                  "ntkdyn's CharTokenizer.save writes") from None
        if saved != tok.tokenizer.get_vocab(with_added_tokens=True):
            raise CheckpointError(f"{path}: its vocabulary does not match the character set in {_CONFIG_FILE} "
                                  f"({len(saved)} vs {tok.vocab_size} tokens)")
        return tok


class HFTokenizer:
    """A real checkpoint's tokenizer: ``tokenizer.json`` plus ``tokenizer_config.json`` (special tokens, chat
    template), ``special_tokens_map.json`` and ``generation_config.json`` (every EOS id).

    ``encode`` / ``decode`` / ``apply_chat_template`` give the ids and text that
    ``transformers.AutoTokenizer.from_pretrained`` of the same directory gives (``encode`` adds no special tokens;
    ``decode`` skips them). Special token ids are ``None`` when the files do not name them.

    Attributes:
        tokenizer (``tokenizers.Tokenizer``), config (the tokenizer_config dict), vocab_size, bos_id, eos_id,
        pad_id, unk_id, eos_ids (all ids that end a generation), chat_template (str or None).
    """

    def __init__(self, directory: str):
        path = os.path.join(directory, _TOKENIZER_FILE)
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises its own Exception type for unreadable files
            raise CheckpointError(f"{path}: not a readable tokenizer.json ({e})") from None
        config = {}
        for name in (_SPECIAL_MAP_FILE, _CONFIG_FILE):  # config wins over the map
            p = os.path.join(directory, name)
            if os.path.exists(p):
                config.update(read_json(p, what=name))
        jinja = os.path.join(directory, _TEMPLATE_FILE)  # transformers 5 saves the template here
        if os.path.exists(jinja):
            with open(jinja, encoding="utf-8") as f:
                config["chat_template"] = f.read()
        gen = os.path.join(directory, _GENERATION_FILE)
        eos = read_json(gen, what=_GENERATION_FILE).get("eos_token_id") if os.path.exists(gen) else None
        self._setup(tok, config, eos)

    @classmethod
    def from_parts(cls, tokenizer: Tokenizer, config: dict, eos_ids: Sequence[int] | None = None) -> "HFTokenizer":
        """Build from an in-memory ``tokenizers.Tokenizer`` and a tokenizer_config dict (e.g. from a GGUF file)."""
        self = cls.__new__(cls)
        self._setup(tokenizer, dict(config), list(eos_ids) if eos_ids else None)
        return self

    def _setup(self, tok: Tokenizer, config: dict, eos_ids) -> None:
        self.tokenizer, self.config = tok, config
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.pad_id = self._token_id(config.get("pad_token"))
        self.bos_id = self._token_id(config.get("bos_token"))
        self.eos_id = self._token_id(config.get("eos_token"))
        self.unk_id = self._token_id(config.get("unk_token"))
        if isinstance(eos_ids, int):
            eos_ids = [eos_ids]
        ids = [int(i) for i in (eos_ids or [])]
        if self.eos_id is not None and self.eos_id not in ids:
            ids.insert(0, self.eos_id)
        self.eos_ids = ids
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        self.chat_template = template if isinstance(template, str) and template else None

    def _token_id(self, token) -> int | None:
        token = _token_text(token)
        return None if token is None else self.tokenizer.token_to_id(token)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (special-token text inside ``text`` still maps to its id)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (special tokens skipped by default), cleaned up as transformers does when the config asks."""
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_spaces(text) if self.config.get("clean_up_tokenization_spaces") else text

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                            tokenize: bool = True, **kwargs) -> list[int] | str:
        """Render ``messages`` ([{"role", "content"}, ...]) with the checkpoint's chat template, as transformers does
        (sandboxed jinja2, trim_blocks/lstrip_blocks, ``raise_exception``, ``strftime_now``, the special tokens as
        variables; ``kwargs`` are extra template variables). Returns the ids (no special tokens added: the template
        writes them) or, with ``tokenize=False``, the text."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json has no 'chat_template')")
        variables = {k: _token_text(self.config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        text = compile_template(self.chat_template).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
            **{k: v for k, v in variables.items() if v is not None}, **kwargs)
        return self.encode(text) if tokenize else text

    def save(self, directory: str) -> None:
        """Write tokenizer.json, tokenizer_config.json (special tokens, chat template) and special_tokens_map.json
        so that ``transformers.AutoTokenizer.from_pretrained(directory)`` opens it and tokenizes identically."""
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save(os.path.join(directory, _TOKENIZER_FILE))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **self.config}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                   if config.get(k) is not None}
        write_json(os.path.join(directory, _CONFIG_FILE), config)
        write_json(os.path.join(directory, _SPECIAL_MAP_FILE), special)


def _token_text(token) -> str | None:
    if isinstance(token, dict):  # serialized AddedToken
        token = token.get("content")
    return token if isinstance(token, str) else None


def load_tokenizer(directory: str) -> CharTokenizer | HFTokenizer | None:
    """Tokenizer saved in ``directory``.

    Returns a :class:`CharTokenizer` when ``tokenizer_config.json`` carries the
    ``"ntkdyn_char": true`` marker, an :class:`HFTokenizer` for any other
    ``tokenizer.json``, and ``None`` when there is no ``tokenizer.json``. A corrupt file raises an error naming it.
    """
    if not os.path.exists(os.path.join(directory, _TOKENIZER_FILE)):
        return None
    config_path = os.path.join(directory, _CONFIG_FILE)
    if os.path.exists(config_path) and read_json(config_path, what=_CONFIG_FILE).get(_MARKER):
        return CharTokenizer.load(directory)
    return HFTokenizer(directory)


#: the ``--chat-template`` choices of the commands -> the ``chat`` switch of :func:`encode_prompt`
CHAT_CHOICES = {"auto": None, "on": True, "off": False}


def chat_enabled(tokenizer, chat: bool | None = None) -> bool:
    """Whether prompts go through ``tokenizer``'s chat template: ``chat=None`` when it has one, ``True`` requires
    one (ValueError otherwise), ``False`` never."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat is None:
        return has
    if not isinstance(chat, bool):
        raise TypeError(f"chat must be None (auto), True or False; got {chat!r}")
    if chat and not has:
        raise ValueError(f"chat template requested (chat=True), but the tokenizer {tokenizer!r} has none "
                         "(tokenizer_config.json has no 'chat_template')")
    return chat


def _check_messages(prompt) -> list[dict]:
    msgs = list(prompt)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"prompt message {i} must be a dict with string 'role' and 'content'; got {m!r}")
    if not msgs:
        raise ValueError("prompt is an empty list of chat messages")
    return msgs


def encode_prompt(tokenizer, prompt, add_bos: bool = True, chat: bool | None = None) -> list[int]:
    """The ids a model is prompted with; every rollout, evaluation and teacher-forced example starts with this.

    ``prompt``: a string or a list of chat messages (``{"role", "content"}``). With the chat template on (see
    :func:`chat_enabled`: ``chat=None`` means on when the tokenizer has one) a string becomes
    ``[{"role": "user", "content": prompt}]`` and the messages are rendered with ``add_generation_prompt=True``;
    the template writes its own BOS (``add_bos`` is not used). Without a template, messages of the roles
    ``system`` and ``user`` only are, with ``chat=None`` (auto), the plain text of their contents joined by a blank
    line (what a base model without a template is prompted with, e.g. a natural task on Gemma 3 270M); with
    ``chat=False``, or with other roles, they raise ValueError. A string prompt: a :class:`CharTokenizer` gives
    ``[bos] + encode(prompt)``; an :class:`HFTokenizer` adds what
    tokenizer.json's post-processor adds, as ``transformers.AutoTokenizer(prompt)`` does (transformers 5 ignores
    tokenizer_config's ``add_bos_token`` when there is a tokenizer.json), and, when there is no post-processor,
    BOS if ``add_bos_token`` is true (transformers 4's and llama.cpp's rule, e.g. a converted GGUF);
    ``add_bos=False``: no special tokens."""
    if chat_enabled(tokenizer, chat):
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _check_messages(prompt)
        return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    if isinstance(prompt, (list, tuple)) and chat is None:
        msgs = _check_messages(prompt)
        if all(m["role"] in ("system", "user") for m in msgs):
            prompt = "\n\n".join(m["content"] for m in msgs)
    if not isinstance(prompt, str):
        if isinstance(prompt, (list, tuple)):
            raise ValueError(f"prompt is a list of chat messages, but the tokenizer {tokenizer!r} has no chat "
                             "template (or it is turned off); expected a string prompt (without a template, "
                             "chat=None renders system and user messages as plain text; other roles need one)")
        raise TypeError(f"prompt must be a string or a list of chat messages; got {type(prompt).__name__}")
    if isinstance(tokenizer, HFTokenizer) and add_bos and tokenizer.tokenizer.post_processor is not None:
        return list(tokenizer.tokenizer.encode(prompt, add_special_tokens=True).ids)  # the post-processor's rule
    if isinstance(tokenizer, HFTokenizer):
        add_bos = add_bos and bool(tokenizer.config.get("add_bos_token", False))
    prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    return prefix + list(tokenizer.encode(prompt))


def eos_ids_of(tokenizer, config=None) -> tuple[int, ...]:
    """Every id that ends a generation: the model config's ``eos_token_id`` (when ``config`` is given), then the
    tokenizer's ``eos_ids`` (an HFTokenizer: generation_config.json's EOS ids) or its ``eos_id``; no duplicates."""
    ids = []
    if config is not None and getattr(config, "eos_token_id", None) is not None:
        ids.append(int(config.eos_token_id))
    if tokenizer is not None:
        own = getattr(tokenizer, "eos_ids", None)
        ids += [int(i) for i in (own if own else [tokenizer.eos_id] if tokenizer.eos_id is not None else [])]
    return tuple(dict.fromkeys(ids))


def encode_batch(
    tokenizer, texts: Sequence[str], add_bos: bool = True, chat: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Encode prompts into one LEFT-padded int32 batch.

    Args:
        tokenizer: a :class:`CharTokenizer` or :class:`HFTokenizer`.
        texts: the prompts.
        add_bos: prepend ``tokenizer.bos_id`` to every row (skipped when the
            tokenizer has no BOS token).
        chat: the chat template switch of :func:`encode_prompt`.

    Returns:
        ``(ids, lengths)``: ``ids`` of shape ``(B, T)`` with ``T`` the longest
        encoded text, each row right-aligned and padded on the left with
        ``pad_id`` (``eos_id`` if there is no pad token, else 0); ``lengths``
        (int32, shape ``(B,)``) the number of real tokens per row (BOS included).
    """
    rows = [encode_prompt(tokenizer, t, add_bos, chat) for t in texts]
    if not rows:
        return np.zeros((0, 0), np.int32), np.zeros((0,), np.int32)
    ids, mask = pad_left(rows, pad_id_of(tokenizer))
    return ids, mask.sum(1).astype(np.int32)


def pad_id_of(tokenizer) -> int:
    """The id to pad with: the pad token, else EOS, else 0."""
    if tokenizer.pad_id is not None:
        return int(tokenizer.pad_id)
    return int(tokenizer.eos_id) if tokenizer.eos_id is not None else 0
