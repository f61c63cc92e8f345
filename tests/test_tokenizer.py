"""Tests for the character tokenizer in ntkdyn.models.tokenizer."""

import json
import os

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ntkdyn import tasks
from ntkdyn.tasks import (
    CHARSET,
    CharTokenizer,
    HFTokenizer,
    encode_batch,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


def _task_texts():
    rng = np.random.default_rng(0)
    texts = []
    for name in tasks.names():
        task = tasks.get(name)
        for split in tasks.SPLITS:
            for prompt in task.prompts(split, 30, seed=0):
                texts.append(prompt)
                for correct in (True, False):
                    answer = task.sample_answer(prompt, rng, correct)
                    texts.append(answer)
                    texts.append(prompt + answer)
    return texts


TEXTS = _task_texts() + [CHARSET, "  a  b ", " ", "", "sum 47:12+35"]


def test_vocab(tok):
    assert tok.pad_id == 0 and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.vocab_size == 3 + len(CHARSET)
    assert 40 <= tok.vocab_size <= 64
    assert len(set(CHARSET)) == len(CHARSET)
    assert tok.encode(CHARSET) == list(range(3, tok.vocab_size))


def test_round_trip_on_task_texts(tok):
    for text in TEXTS:
        ids = tok.encode(text)
        assert len(ids) == len(text)
        assert all(3 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


def test_decode_skips_special_tokens(tok):
    ids = [tok.bos_id] + tok.encode("sum 47:") + [tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "sum 47:"
    # Does not stop at EOS: everything non-special is kept.
    assert tok.decode(tok.encode("1+") + [tok.eos_id] + tok.encode(" 2")) == "1+ 2"
    assert tok.decode(np.array(tok.encode("a b"), dtype=np.int32)) == "a b"


def test_unknown_characters_raise(tok):
    with pytest.raises(ValueError) as err:
        tok.encode("sum 4Z!:")
    msg = str(err.value)
    assert "'Z'" in msg and "'!'" in msg
    assert CHARSET in msg
    for bad in ["☃", "\n", "A", "<pad>"]:
        with pytest.raises(ValueError):
            tok.encode(bad)


@pytest.mark.parametrize("loader", [PreTrainedTokenizerFast, AutoTokenizer])
def test_save_and_open_with_transformers(tok, tmp_path, loader):
    tok.save(str(tmp_path))
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        assert os.path.exists(tmp_path / f)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    hf = loader.from_pretrained(str(tmp_path))
    assert hf.pad_token_id == tok.pad_id
    assert hf.bos_token_id == tok.bos_id
    assert hf.eos_token_id == tok.eos_id
    assert len(hf) == tok.vocab_size
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.encode(text) == ids  # no post-processor: nothing is added
        assert hf.decode(ids, skip_special_tokens=True) == text
        wrapped = [tok.bos_id] + ids + [tok.eos_id, tok.pad_id]
        assert hf.decode(wrapped, skip_special_tokens=True) == tok.decode(wrapped)


def test_load_tokenizer(tok, tmp_path):
    assert load_tokenizer(str(tmp_path)) is None
    tok.save(str(tmp_path / "char"))
    loaded = load_tokenizer(str(tmp_path / "char"))
    assert isinstance(loaded, CharTokenizer)
    assert loaded.charset == tok.charset
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode("sum 47:") == tok.encode("sum 47:")


def test_custom_charset_is_saved(tmp_path):
    small = CharTokenizer("0123456789+")
    small.save(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    assert isinstance(loaded, CharTokenizer)
    assert loaded.charset == "0123456789+"
    assert loaded.vocab_size == 14


def test_hf_tokenizer_passthrough(tok, tmp_path):
    # A plain tokenizer.json without our marker is wrapped by HFTokenizer.
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    bare = load_tokenizer(str(tmp_path))
    assert isinstance(bare, HFTokenizer)
    assert bare.vocab_size == tok.vocab_size
    assert bare.pad_id is None and bare.bos_id is None and bare.eos_id is None
    assert bare.encode("sum 47:") == tok.encode("sum 47:")
    assert bare.decode([1] + tok.encode("a b") + [2]) == "a b"
    # With a (foreign) config the special tokens are picked up.
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<bos>"}, "eos_token": "<eos>"})
    )
    with_config = load_tokenizer(str(tmp_path))
    assert isinstance(with_config, HFTokenizer)
    assert (with_config.bos_id, with_config.eos_id, with_config.pad_id) == (1, 2, None)


def test_encode_batch_left_pads(tok):
    texts = ["sum 47:", "sum 5:", ""]
    ids, lengths = encode_batch(tok, texts)
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    assert ids.shape == (3, 8)
    assert lengths.tolist() == [8, 7, 1]
    assert ids[0].tolist() == [tok.bos_id] + tok.encode("sum 47:")
    assert ids[1].tolist() == [tok.pad_id, tok.bos_id] + tok.encode("sum 5:")
    assert ids[2].tolist() == [tok.pad_id] * 7 + [tok.bos_id]
    for row, n, text in zip(ids, lengths, texts):
        assert tok.decode(row[len(row) - n:]) == text

    no_bos, lengths = encode_batch(tok, texts, add_bos=False)
    assert no_bos.shape == (3, 7)
    assert lengths.tolist() == [7, 6, 0]
    assert no_bos[1].tolist() == [tok.pad_id] + tok.encode("sum 5:")

    empty, lengths = encode_batch(tok, [])
    assert empty.shape == (0, 0) and lengths.shape == (0,)
