"""GGUF in: a llama.cpp checkpoint (Llama / Qwen2 architectures, byte-level BPE tokenizer) read with the `gguf`
package, dequantized to float32 and written as a Hugging Face model directory.

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "out/smollm2")   # config.json, model.safetensors,
                                                                      # tokenizer files, generation_config.json
    cfg, params, tok = read_gguf("model.gguf")                        # the same, in memory

What llama.cpp changed on the way in is undone here: tensor names (`blk.N.attn_q.weight` ->
`model.layers.N.self_attn.q_proj.weight`), the row order of Llama's Q and K projections (llama.cpp rotates
interleaved pairs, transformers rotates halves, so its converter permuted the rows of each head) and the
tokenizer (rebuilt from `tokenizer.ggml.*` with the `tokenizers` library). The weights then go through
`hf.from_hf_state` and `hf.write_model_dir`, so one layout table serves safetensors and GGUF.
"""
from __future__ import annotations

import os

import numpy as np

from ..io import atomic_dir, check_writable_dir, write_json
from . import hf
from .config import CheckpointError, ModelConfig
from .tokenizer import HFTokenizer

FORMAT = 1  # version of the converted layout (gguf_source.json "format"); bump to reconvert cached models

# general.architecture -> (config.json model_type, Q/K rows permuted by llama.cpp's converter)
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False)}
# quantisation types read (all dequantized to float32 by gguf.quants.dequantize)
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
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


# ---------------------------------------------------------------------------------------------- reading
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
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture {arch!r} is not supported; expected one of "
                              f"{sorted(ARCHITECTURES)}")

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
    return ModelConfig(
        family="llama", model_type=ARCHITECTURES[arch][0], vocab_size=int(vocab), d_model=d,
        n_layers=int(need("block_count")), n_heads=nh, n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", nh)),
        d_ff=int(need("feed_forward_length")), max_positions=int(need("context_length")),
        norm_eps=_f32(need("attention.layer_norm_rms_epsilon")), rope_theta=_f32(theta),
        tie_word_embeddings="output.weight" not in tensor_names, qkv_bias="blk.0.attn_q.bias" in tensor_names,
        activation="silu", head_dim=head_dim if head_dim != d // nh else 0,
        bos_token_id=tok["bos"], eos_token_id=tok["eos"], pad_token_id=tok["padding"])


def _f32(v) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(v)))


def hf_state(reader, cfg: ModelConfig, source: str = "gguf") -> dict:
    """{Hugging Face tensor name: float32 array} of every tensor, dequantized, with Llama's Q/K rows un-permuted."""
    from gguf import quants

    permuted = ARCHITECTURES[cfg.model_type][1]
    state = {}
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in QUANT_TYPES:
            raise CheckpointError(f"{source}: tensor {t.name!r} has quantisation type {qtype}, which is not "
                                  f"supported; supported types: {', '.join(QUANT_TYPES)}")
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32).reshape(
            [int(n) for n in reversed(t.shape)])
        name = _hf_name(t.name, source)
        if permuted and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = _unpermute(w, cfg.n_heads if ".q_proj" in name else cfg.n_kv_heads)
        state[name] = w
    return state


def _hf_name(name: str, source: str) -> str:
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise CheckpointError(f"{source}: tensor {name!r} is not part of a supported Llama/Qwen2 checkpoint")


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: within each head it stores the rows as (head_dim/2, 2) interleaved pairs,
    transformers as (2, head_dim/2) halves."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------- tokenizer
def gguf_tokenizer(meta: dict, source: str = "gguf") -> HFTokenizer:
    """The byte-level BPE tokenizer of `tokenizer.ggml.*`: vocabulary, merges, control tokens as special added
    tokens, user-defined tokens as added tokens, the family's pre-tokenizer, special ids and the chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(f"{source}: tokenizer model {model!r} is not supported; expected 'gpt2' "
                              "(byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; expected "
                              f"one of {sorted(PRE_TOKENIZERS)}")
    split, digits, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
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
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == _CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
                   if ty == _USER_DEFINED])
    return HFTokenizer.from_parts(tk, _tokenizer_config(meta, tokens), eos_ids(meta))


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


def eos_ids(meta: dict) -> list[int]:
    """Every id that ends a generation: EOS, end-of-turn (EOT) and end-of-message (EOM), in that order."""
    out = []
    for key in ("eos", "eot", "eom"):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and int(i) not in out:
            out.append(int(i))
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
    """(ModelConfig, params {"backbone", "head"} float32, HFTokenizer or None) of a GGUF checkpoint."""
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
    p.add_argument("file", help="a .gguf checkpoint (Llama / Qwen2, byte-level BPE tokenizer)")
    p.add_argument("out_dir", help="directory to write the Hugging Face model into (replaced whole)")


def run_convert_gguf(args) -> int:
    print(convert_gguf(args.file, args.out_dir))
    return 0
