"""Tests for ntkdyn.models.tokenizer: the character tokenizer, and HFTokenizer against transformers (the real
SmolLM2-135M-Instruct tokenizer from the persistent cache, chat templates, saving, corrupt files)."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ntkdyn import tasks
from ntkdyn.models.config import CheckpointError
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


# ---------------------------------------------------------------------------------------------- HFTokenizer
VARIED = ["The capital of France is", "Hello, world! How's it going?", "naïve café – Straße, Ελληνικά, 日本語のテキスト",
          "emoji 😀🎉 👩‍👩‍👧 🇫🇷", "def f(x):\n    return {'a': x**2}  # comment\n\n\tpass\r\n",
          "   leading and trailing   ", "\n\n\n", "a\u00a0b\u200bc", "numbers 12345 3.14159 2024-01-01 1e-5",
          "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", "<repo_name>x<file_sep>", "", " ", "  ", "\t"]
CHAT = [{"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy? 🇮🇹"}]


@pytest.fixture(scope="module")
def smollm2_tokenizers(smollm2):
    """(ours from the converted directory, transformers' from the original GGUF, transformers' of the directory)."""
    ours = load_tokenizer(smollm2["dir"])
    ref = AutoTokenizer.from_pretrained(smollm2["gguf_dir"], gguf_file=smollm2["gguf_file"])
    return ours, ref, AutoTokenizer.from_pretrained(smollm2["dir"])


def test_smollm2_ids_match_transformers(smollm2_tokenizers):
    ours, ref, same_dir = smollm2_tokenizers
    assert isinstance(ours, HFTokenizer)
    for text in VARIED:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False) == same_dir.encode(text, add_special_tokens=False), \
            text
        assert ours.decode(ids) == same_dir.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == same_dir.decode(ids), text
    assert ours.encode("<|im_start|>") == [1] and (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)


def test_smollm2_chat_template_matches_transformers(smollm2_tokenizers):
    ours, ref, same_dir = smollm2_tokenizers
    ids = ours.apply_chat_template(CHAT, add_generation_prompt=True)
    assert ids == list(ref.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert ids == list(same_dir.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)["input_ids"])
    text = ours.apply_chat_template(CHAT, tokenize=False)
    assert text == ref.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "You are a helpful AI assistant named SmolLM" in text
    no_prompt = ours.apply_chat_template(CHAT, add_generation_prompt=False)
    assert no_prompt == ids[:len(no_prompt)] and len(no_prompt) < len(ids)


def test_hf_tokenizer_save_opens_in_transformers(smollm2_tokenizers, tmp_path):
    ours = smollm2_tokenizers[0]
    ours.save(str(tmp_path))
    back, theirs = load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(str(tmp_path))
    for text in VARIED[:6]:
        assert back.encode(text) == ours.encode(text) == theirs.encode(text, add_special_tokens=False)
    assert back.chat_template == ours.chat_template == theirs.chat_template
    assert back.apply_chat_template(CHAT) == list(theirs.apply_chat_template(CHAT, add_generation_prompt=True)
                                                  ["input_ids"])
    assert json.load(open(tmp_path / "special_tokens_map.json"))["eos_token"] == "<|im_end|>"
    # a chat task's prompt on a tokenizer without a template (auto): the plain text of the contents, encoded as
    # transformers encodes that text
    from ntkdyn.models.tokenizer import encode_prompt
    os.makedirs(tmp_path / "bare")
    ours.tokenizer.save(str(tmp_path / "bare" / "tokenizer.json"))
    bare, theirs_bare = load_tokenizer(str(tmp_path / "bare")), AutoTokenizer.from_pretrained(str(tmp_path / "bare"))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    assert bare.chat_template is None
    assert encode_prompt(bare, msgs) == list(theirs_bare("Be brief.\n\nWhat is 2 + 3?")["input_ids"])


def test_hf_tokenizer_files(tok, tmp_path):
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    bare = load_tokenizer(str(tmp_path))
    assert bare.chat_template is None and bare.eos_ids == []
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "a"}])
    # the template file of transformers 5, generation_config.json's EOS list, template helpers
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ bos_token + m['content'] }}{% endfor %}{% if add_generation_prompt %}="
        "{% endif %}{% if strftime_now('%Y') | length != 4 %}{{ raise_exception('bad year') }}{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    t = load_tokenizer(str(tmp_path))
    assert t.eos_ids == [0, 2] and t.eos_id == 2
    assert t.apply_chat_template([{"role": "user", "content": "ab"}], tokenize=False) == "<bos>ab="
    assert t.apply_chat_template([{"role": "user", "content": "ab"}]) == [1] + tok.encode("ab=")
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('no system role') }}")
    with pytest.raises(Exception, match="no system role"):
        load_tokenizer(str(tmp_path)).apply_chat_template([{"role": "user", "content": "a"}])


def test_corrupt_tokenizer_files_raise_naming_the_file(tok, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json: not a readable tokenizer.json"):
        load_tokenizer(str(tmp_path))
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_tokenizer(str(tmp_path))


def test_encode_prompt_chat_switch_and_bos_rules(tok, tmp_path):
    from ntkdyn.models.tokenizer import chat_enabled, encode_prompt, eos_ids_of

    # the character tokenizer: [bos] + prompt, no template (chat=True is an error, messages too)
    assert encode_prompt(tok, "sum 4:") == encode_prompt(tok, "sum 4:", chat=False) == [1] + tok.encode("sum 4:")
    assert encode_prompt(tok, "sum 4:", add_bos=False) == tok.encode("sum 4:")
    with pytest.raises(ValueError, match="has none"):
        encode_prompt(tok, "sum 4:", chat=True)
    # no template, auto: system and user messages are plain text (blank line between), other roles an error
    # (the character vocabulary has no newline: the joined text is refused by the tokenizer, naming it)
    msgs = [{"role": "system", "content": "sum"}, {"role": "user", "content": "4:"}]
    with pytest.raises(ValueError, match=r"cannot encode character\(s\) \['\\n'\]"):
        encode_prompt(tok, msgs)
    with pytest.raises(ValueError, match="no chat template.*other roles need one"):
        encode_prompt(tok, msgs + [{"role": "assistant", "content": "1"}])
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(tok, msgs, chat=False)
    with pytest.raises(TypeError, match="chat must be None"):
        chat_enabled(tok, "yes")
    assert eos_ids_of(tok) == (2,)
    # an HF tokenizer without a template: tokenizer.json's post-processor, as transformers; without one,
    # add_bos_token (transformers 5 then adds nothing; transformers 4 and llama.cpp add BOS)
    from tokenizers import Tokenizer, processors

    cfg = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    for flag, post, want in ((None, False, []), (False, False, []), (True, False, [1]), (False, True, [1])):
        raw = Tokenizer.from_str(tok.tokenizer.to_str())
        if post:
            raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
        raw.save(str(tmp_path / "tokenizer.json"))
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(
            cfg if flag is None else dict(cfg, add_bos_token=flag)))
        t, theirs = load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(str(tmp_path))
        assert encode_prompt(t, "ab") == want + tok.encode("ab")
        assert encode_prompt(t, "ab", add_bos=False) == tok.encode("ab")
        if not (flag and not post):
            assert encode_prompt(t, "ab") == list(theirs("ab")["input_ids"])
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(cfg, add_bos_token=True)))
    # with a template: a string is one user turn; messages are rendered as they are; the template writes BOS
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ bos_token + m['role'][0] + m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}={% endif %}")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    t = load_tokenizer(str(tmp_path))
    assert encode_prompt(t, "ab") == [1] + tok.encode("uab=") == encode_prompt(t, "ab", add_bos=False)
    msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": "ab"}]
    assert encode_prompt(t, msgs) == [1] + tok.encode("sx") + [1] + tok.encode("uab=")
    assert encode_prompt(t, "ab", chat=False) == [1] + tok.encode("ab")
    assert eos_ids_of(t) == (2, 0) and eos_ids_of(t, SimpleNamespace(eos_token_id=7)) == (7, 2, 0)
    with pytest.raises(TypeError, match="message 0"):
        encode_prompt(t, [{"role": "user"}])
    ids, lengths = encode_batch(t, ["a", "ab"], chat=False)
    assert lengths.tolist() == [2, 3] and ids[0].tolist() == [0, 1] + tok.encode("a")
