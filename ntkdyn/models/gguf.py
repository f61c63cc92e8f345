"""GGUF in: a llama.cpp checkpoint (Llama / Qwen2 / Qwen3 with a byte-level BPE tokenizer, Gemma 3 / Gemma 2 with
a SentencePiece-style one) read with the `gguf` package, dequantized to float32 and written as a Hugging Face model
directory.

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "out/smollm2")   # config.json, model.safetensors,
                                                                      # tokenizer files, generation_config.json
    cfg, params, tok = read_gguf("model.gguf")                        # the same, in memory

What llama.cpp changed on the way in is undone here: tensor names (`blk.N.attn_q.weight` ->
`model.layers.N.self_attn.q_proj.weight`; Gemma's `ffn_norm` is its pre-feed-forward norm), the row order of
Llama's Q and K projections (llama.cpp rotates interleaved pairs, transformers rotates halves, so its converter
permuted the rows of each head), Gemma's norm weights (llama.cpp stores the 1 + w its norms multiply by) and the
tokenizer (rebuilt from `tokenizer.ggml.*` with the `tokenizers` library, as transformers' GGUF converter builds
it). What a Gemma 3 file does not carry comes from transformers' and llama.cpp's Gemma 3 defaults: every sixth
layer global, the others sliding, and the sliding layers' RoPE base 10,000. The weights then go through
`hf.from_hf_state` and `hf.write_model_dir`, so one layout table serves safetensors and GGUF.

The header is read first (`header`, a few hundred microseconds even for a 262,144-token vocabulary): a file of an
unsupported architecture or tokenizer is refused before its vocabulary is parsed.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from ..io import atomic_dir, check_writable_dir, write_json
from . import hf
from .config import CheckpointError, ModelConfig
from .tokenizer import HFTokenizer

FORMAT = 1  # version of the converted layout (gguf_source.json "format"); bump to reconvert cached models

# general.architecture -> (config.json model_type, Q/K rows permuted by llama.cpp's converter)
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False),
                 "gemma3": ("gemma3_text", False), "gemma2": ("gemma2", False)}
GEMMA = ("gemma3", "gemma2")  # (1 + w) norms, four norms per block, SentencePiece-style vocabulary
# tokenizer.ggml.model -> the architectures whose vocabulary of that kind is read
TOKENIZER_MODELS = {"gpt2": ("llama", "qwen2", "qwen3"), "llama": GEMMA}
# quantisation types read (all dequantized to float32 by gguf.quants.dequantize)
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA_BLOCK_NAMES = {**_BLOCK_NAMES, "ffn_norm": "pre_feedforward_layernorm",
                      "post_attention_norm": "post_attention_layernorm",
                      "post_ffw_norm": "post_feedforward_layernorm"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# tokenizer.ggml.pre -> how text is split before BPE (llama.cpp's per-family regexes, llama-vocab.cpp)
_GPT2_SPLIT = None  # the GPT-2 regex that ByteLevel(use_regex=True) applies itself
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# name -> (split regex or None for GPT-2's, digits split one by one first, ignore_merges)
PRE_TOKENIZERS = {
    "default": (_GPT2_SPLIT, False, False), "gpt2": (_GPT2_SPLIT, False, False), "gpt-2": (_GPT2_SPLIT, False, False),
    "smollm": (_GPT2_SPLIT, True, False), "starcoder": (_GPT2_SPLIT, True, False),
    "refact": (_GPT2_SPLIT, True, False),
    "llama3": (_LLAMA3_SPLIT, False, True), "llama-v3": (_LLAMA3_SPLIT, False, True),
    "llama-bpe": (_LLAMA3_SPLIT, False, True), "smaug-bpe": (_LLAMA3_SPLIT, False, True),
    "qwen2": (_QWEN2_SPLIT, False, False), "deepseek-r1-qwen": (_QWEN2_SPLIT, False, False),
}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values
_END_OF_TURN = "<end_of_turn>"  # Gemma's end of a chat turn: an end-of-generation id (as llama.cpp treats it)
GEMMA3_SLIDING_PATTERN = 6  # every sixth Gemma 3 layer is global (transformers' and llama.cpp's default)
GEMMA3_LOCAL_ROPE_THETA = 10_000.0  # the sliding layers' RoPE base (not in the file)


# ---------------------------------------------------------------------------------------------- reading
# GGUF metadata value types -> struct format of a scalar (8: string, 9: array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def header(path: str) -> dict:
    """{key: value} of every scalar and string metadata entry of a GGUF file, read from its header alone: arrays
    (the vocabulary, its scores and types, the merges) are stepped over without being decoded, so this takes well
    under a second whatever the vocabulary. CheckpointError naming the file when it is missing or not GGUF."""
    import mmap

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; expected a .gguf checkpoint")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _read_header(buf)
    except (struct.error, ValueError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _read_header(buf) -> dict:
    at = 0

    def unpack(fmt):
        nonlocal at
        (v,) = struct.unpack_from("<" + fmt, buf, at)
        at += struct.calcsize("<" + fmt)
        return v

    def string(skip=False):
        nonlocal at
        n = unpack("Q")
        if at + n > len(buf):
            raise ValueError("the file ends inside its header")
        at += n
        return None if skip else bytes(buf[at - n:at]).decode("utf-8")

    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("no GGUF magic number")
    at = 4
    version = unpack("I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}; expected 2 or 3")
    _, n_kv = unpack("Q"), unpack("Q")
    out = {}
    for _ in range(n_kv):
        key, vtype = string(), unpack("I")
        if vtype == 8:
            out[key] = string()
        elif vtype in _SCALARS:
            out[key] = unpack(_SCALARS[vtype])
        elif vtype == 9:
            itype, count = unpack("I"), unpack("Q")
            if itype == 8:  # strings: step over each (length, bytes)
                for _ in range(count):
                    string(skip=True)
            elif itype in _SCALARS:
                at += count * struct.calcsize("<" + _SCALARS[itype])
            else:
                raise ValueError(f"metadata {key!r}: array of type {itype}")
        else:
            raise ValueError(f"metadata {key!r}: unknown value type {vtype}")
    return out


def check_supported(meta: dict, source: str = "gguf") -> str:
    """The architecture of a GGUF file's metadata (its header is enough) when ntkdyn reads it: CheckpointError
    naming the architecture, tokenizer model or pre-tokenizer otherwise."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture {arch!r} is not supported; expected one of "
                              f"{sorted(ARCHITECTURES)}")
    model = meta.get("tokenizer.ggml.model")
    if model is not None and arch not in TOKENIZER_MODELS.get(model, ()):
        kinds = [m for m, archs in TOKENIZER_MODELS.items() if arch in archs]
        raise CheckpointError(f"{source}: tokenizer model {model!r} is not supported for architecture {arch!r}; "
                              f"expected {kinds[0]!r} ({'byte-level BPE' if kinds[0] == 'gpt2' else 'SentencePiece'})")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model == "gpt2" and pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; expected "
                              f"one of {sorted(PRE_TOKENIZERS)}")
    return arch


def open_gguf(path: str):
    """A gguf.GGUFReader of `path` (CheckpointError naming the file when it is missing or not a GGUF file)."""
    import gguf

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file; expected a .gguf checkpoint")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct errors/OSError on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def metadata(reader) -> dict:
    """{key: value} of every metadata field (strings, numbers, lists)."""
    out = {}
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            out[key] = field.contents()
    return out


def gguf_config(meta: dict, tensor_names, source: str = "gguf") -> ModelConfig:
    """ModelConfig from the `{arch}.*` and `tokenizer.ggml.*` metadata (CheckpointError naming what is missing or
    unsupported)."""
    arch = check_supported(meta, source)

    def need(key):
        if f"{arch}.{key}" not in meta:
            raise CheckpointError(f"{source}: missing metadata key {arch}.{key!s}")
        return meta[f"{arch}.{key}"]

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise CheckpointError(f"{source}: RoPE scaling ({scaling!r}, rope_freqs) is not supported")
    d, nh = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", d // nh))
    if int(meta.get(f"{arch}.rope.dimension_count", head_dim)) != head_dim:
        raise CheckpointError(f"{source}: partial rotary ({arch}.rope.dimension_count != head_dim) is not supported")
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or []) or None
    if vocab is None:
        raise CheckpointError(f"{source}: no vocabulary size ({arch}.vocab_size or tokenizer.ggml.tokens)")
    tok = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    theta = meta.get(f"{arch}.rope.freq_base", 10000.0)
    n_layers = int(need("block_count"))
    common = dict(
        model_type=ARCHITECTURES[arch][0], vocab_size=int(vocab), d_model=d, n_layers=n_layers, n_heads=nh,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", nh)), d_ff=int(need("feed_forward_length")),
        max_positions=int(need("context_length")), norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
        rope_theta=_f32(theta), tie_word_embeddings="output.weight" not in tensor_names,
        head_dim=head_dim if head_dim != d // nh else 0, qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        bos_token_id=tok["bos"], eos_token_id=tok["eos"], pad_token_id=tok["padding"])
    if arch in GEMMA:
        pattern = GEMMA3_SLIDING_PATTERN if arch == "gemma3" else 2
        caps = {k: _f32(meta[f"{arch}.{k}"]) if meta.get(f"{arch}.{k}") else None
                for k in ("attn_logit_softcapping", "final_logit_softcapping")}
        return ModelConfig(
            family="gemma3", **common, activation="gelu_pytorch_tanh", sliding_window=int(need("attention.sliding_window")),
            layer_types=["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)],
            rope_local_theta=GEMMA3_LOCAL_ROPE_THETA if arch == "gemma3" else None, query_pre_attn_scalar=head_dim,
            **caps)
    return ModelConfig(family="llama", **common, qkv_bias="blk.0.attn_q.bias" in tensor_names, activation="silu")


def _f32(v) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(v)))


def hf_state(reader, cfg: ModelConfig, source: str = "gguf") -> dict:
    """{Hugging Face tensor name: float32 array} of every tensor, dequantized, with Llama's Q/K rows un-permuted and
    Gemma's stored norm weights 1 + w turned back into w."""
    from gguf import quants

    arch = next(a for a, (mt, _) in ARCHITECTURES.items() if mt == cfg.model_type)
    permuted, gemma = ARCHITECTURES[arch][1], arch in GEMMA
    state = {}
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in QUANT_TYPES:
            raise CheckpointError(f"{source}: tensor {t.name!r} has quantisation type {qtype}, which is not "
                                  f"supported; supported types: {', '.join(QUANT_TYPES)}")
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32).reshape(
            [int(n) for n in reversed(t.shape)])
        name = _hf_name(t.name, arch, source)
        if permuted and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = _unpermute(w, cfg.n_heads if ".q_proj" in name else cfg.n_kv_heads)
        if gemma and name.endswith("norm.weight"):
            w = w - np.float32(1.0)
        state[name] = w
    return state


def _hf_name(name: str, arch: str, source: str) -> str:
    parts = name.split(".")
    block = _GEMMA_BLOCK_NAMES if arch in GEMMA else _BLOCK_NAMES
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in block:
        return f"model.layers.{parts[1]}.{block[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise CheckpointError(f"{source}: tensor {name!r} is not part of a supported {arch} checkpoint")


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: within each head it stores the rows as (head_dim/2, 2) interleaved pairs,
    transformers as (2, head_dim/2) halves."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------- tokenizer
def gguf_tokenizer(meta: dict, source: str = "gguf") -> HFTokenizer:
    """The tokenizer of `tokenizer.ggml.*` as transformers' GGUF converter builds it: the vocabulary as a BPE model
    (byte-level for `gpt2`, SentencePiece-style for Gemma's `llama`), control tokens as special added tokens,
    user-defined tokens as added tokens, special ids, every end-of-generation id and the chat template."""
    from tokenizers import AddedToken

    check_supported(meta, source)
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if meta.get("tokenizer.ggml.model") == "llama":
        tk = _sentencepiece_bpe(tokens)
    else:
        tk = _byte_level_bpe(tokens, types, meta)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == _CONTROL])
    vocab = tk.get_vocab(with_added_tokens=False)  # Gemma's whitespace tokens are spelled with "▁" there
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
                   if ty == _USER_DEFINED and t in vocab])
    config = _tokenizer_config(meta, tokens)
    if meta.get("tokenizer.ggml.model") == "llama" and config["add_bos_token"] and "bos_token" in config:
        _add_bos_post_processor(tk, config["bos_token"], int(meta["tokenizer.ggml.bos_token_id"]))
    return HFTokenizer.from_parts(tk, config, eos_ids(meta, tokens))


def _byte_level_bpe(tokens: list, types: list, meta: dict):
    """GPT-2-style byte-level BPE: raw-text tokens respelled in the byte alphabet, the file's merges, the
    pre-tokenizer that `tokenizer.ggml.pre` names."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    split, digits, ignore_merges = PRE_TOKENIZERS[meta.get("tokenizer.ggml.pre", "default")]
    alphabet = set(_BYTE_CHARS.values())
    vocab = {}
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty not in (_CONTROL, _USER_DEFINED) and not set(tok) <= alphabet:  # spell raw text in the byte alphabet
            tok = "".join(_BYTE_CHARS[b] for b in tok.encode("utf-8"))
        vocab.setdefault(tok, i)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tk = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    if split is not None:
        steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    else:
        steps += [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    tk.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    return tk


def _sentencepiece_bpe(tokens: list):
    """Gemma's SentencePiece-style BPE as transformers' GemmaTokenizer holds it: spaces normalized to "▁", byte
    fallback (<0x..> tokens) for what the vocabulary lacks, and, since the file carries no merges, the merges its
    vocabulary implies, best first in file order (Gemma's scores do not follow its merge order). A whitespace-only
    token is stored with real spaces ("  ") and looked up as "▁▁", so it is respelled first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}  # a repeated spelling keeps its last id, as transformers does
    tk = Tokenizer(models.BPE(vocab, _implied_merges(vocab), fuse_unk=True, unk_token="<unk>", byte_fallback=True))
    tk.normalizer = normalizers.Replace(" ", "\u2581")
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tk


def _implied_merges(vocab: dict) -> list[tuple[str, str]]:
    """Every split of a token into two tokens of the vocabulary, as a merge, ordered as transformers'
    `generate_merges(vocab, {token: -id})` orders them: by the merged token's id, then the longer left piece first."""
    merges = []
    for token, i in vocab.items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        merges += [(i, -len(left), -len(right), left, right) for left, right in splits]
    merges.sort(key=lambda m: m[:3])
    return [(m[3], m[4]) for m in merges]


def _add_bos_post_processor(tk, bos: str, bos_id: int) -> None:
    """BOS before every encoded text (add_special_tokens=True), as transformers' tokenizer of a GGUF file whose
    `tokenizer.ggml.add_bos_token` is true adds it (and as the saved tokenizer.json then tells transformers to)."""
    from tokenizers import processors

    tk.post_processor = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                      special_tokens=[(bos, bos_id)])


def _tokenizer_config(meta: dict, tokens: list) -> dict:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
              "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False))}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and 0 <= int(i) < len(tokens):
            config[name] = tokens[int(i)]
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = str(meta["tokenizer.chat_template"])
    return config


def eos_ids(meta: dict, tokens: list | None = None) -> list[int]:
    """Every id that ends a generation: EOS, end-of-turn (EOT) and end-of-message (EOM), in that order, then for a
    Gemma vocabulary `<end_of_turn>` (its chat turns end there; llama.cpp stops at it too)."""
    out = []
    for key in ("eos", "eot", "eom"):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and int(i) not in out:
            out.append(int(i))
    if meta.get("general.architecture") in GEMMA and tokens is not None and _END_OF_TURN in tokens:
        i = tokens.index(_END_OF_TURN)
        out += [] if i in out else [i]
    return out


def _byte_chars() -> dict:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_CHARS = _byte_chars()


# ---------------------------------------------------------------------------------------------- API
def read_gguf(path: str, tokenizer: bool = True):
    """(ModelConfig, params {"backbone", "head"} float32, HFTokenizer or None) of a GGUF checkpoint. An unsupported
    architecture or tokenizer is refused from the header, before the vocabulary is parsed."""
    check_supported(header(path), path)
    reader = open_gguf(path)
    meta = metadata(reader)
    cfg = gguf_config(meta, {t.name for t in reader.tensors}, source=path)
    params = hf.from_hf_state(cfg, hf_state(reader, cfg, source=path), source=path)
    return cfg, params, gguf_tokenizer(meta, source=path) if tokenizer else None


def convert_gguf(gguf_path: str, out_dir: str) -> str:
    """Write the GGUF checkpoint `gguf_path` as a Hugging Face directory `out_dir` (config.json, model.safetensors
    float32, tokenizer.json, tokenizer_config.json with the chat template, special_tokens_map.json,
    generation_config.json with every EOS id, gguf_source.json), atomically. Returns `out_dir`."""
    out_dir = check_writable_dir(out_dir, "converted model directory")
    cfg, params, tok = read_gguf(gguf_path)
    with atomic_dir(out_dir, what="converted model directory") as tmp:
        hf.write_model_dir(tmp, cfg, params, tok)
        os.chmod(tmp, 0o755)  # write_model_dir's own temporary directory is private
        write_json(os.path.join(tmp, "gguf_source.json"),
                   {"file": os.path.abspath(gguf_path), "size": os.path.getsize(gguf_path),
                    "architecture": cfg.model_type, "format": FORMAT})
    return out_dir


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments_convert_gguf(p) -> None:
    """`ntkdyn convert-gguf FILE OUT_DIR`."""
    p.add_argument("file", help="a .gguf checkpoint (Llama / Qwen2 / Qwen3, Gemma 3 / Gemma 2)")
    p.add_argument("out_dir", help="directory to write the Hugging Face model into (replaced whole)")


def run_convert_gguf(args) -> int:
    print(convert_gguf(args.file, args.out_dir))
    return 0
