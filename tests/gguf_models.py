"""Tiny random GGUF files written offline with the `gguf` package (seeded), the way llama.cpp's converter writes them:
Llama / Qwen2 / Qwen3 with Q/K rows permuted per head (Llama), 2-D weights quantized and a byte-level BPE vocabulary;
Gemma 3 / Gemma 2 with norms stored as 1 + w and a SentencePiece-style vocabulary without merges."""
from __future__ import annotations

import json

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The capital of France is Paris.", "def f(x):\n    return x ** 2\n", "hello world, hello there!",
          "naïve café 12345 — emoji 😀", "   spaces\tand\ttabs\n\n", "the quick brown fox jumps over the lazy dog"]

# K-quant blocks: (bytes per block, byte offsets of the fp16 super-block scales d/dmin)
_K_BLOCKS = {Q.Q2_K: (84, (80, 82)), Q.Q3_K: (110, (108,)), Q.Q4_K: (144, (0, 2)), Q.Q5_K: (176, (0, 2)),
             Q.Q6_K: (210, (208,))}


def tiny_bpe(vocab_size: int = 320):
    """(tokens, token_types, merges) of a byte-level BPE trained on CORPUS; ids 0-2 are control tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, types, merges


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter order of Q/K rows: each head's halves (2, hd/2) become interleaved pairs (hd/2, 2)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _writer(path, arch, d, d_ff, n_layers, n_heads, n_kv):
    """A GGUFWriter with the shape metadata every architecture has (context length 128)."""
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    return w


def random_kquant(shape, qtype, rng) -> np.ndarray:
    """Random bytes of a K-quant tensor (gguf-py cannot quantize these) with fp16 scales chosen so that the
    dequantized values have a standard deviation of about 0.05."""
    rows, cols = shape
    nbytes, offsets = _K_BLOCKS[qtype]
    raw = rng.integers(0, 256, (rows, cols // 256, nbytes), dtype=np.uint8)

    def set_scales(scale):
        d = (scale * rng.uniform(0.5, 1.5, raw.shape[:2])).astype(np.float16)
        for off in offsets:
            raw[..., off:off + 2] = d[..., None].view(np.uint8).reshape(*d.shape, 2)

    set_scales(1.0)
    std = quants.dequantize(raw.reshape(rows, -1), qtype).std()
    set_scales(0.05 / std)
    return raw.reshape(rows, -1)


def encode(w: np.ndarray, qtype, rng):
    """(data, raw_dtype) to hand to GGUFWriter.add_tensor for a float32 2-D weight stored as `qtype`."""
    if qtype == Q.F32:
        return w.astype(np.float32), None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    if qtype in _K_BLOCKS:
        return random_kquant(w.shape, qtype, rng), qtype
    return quants.quantize(w.astype(np.float32), qtype), qtype


def write_llama(path: str, *, arch: str = "llama", qtype=Q.F32, tied: bool = True, d: int = 64, d_ff: int = 128,
                n_layers: int = 2, n_heads: int = 4, n_kv: int = 2, seed: int = 0, pre: str = "smollm",
                bpe=None, extra=None) -> dict:
    """Write a random Llama/Qwen2/Qwen3 GGUF at `path`; returns {hf_name: float32 weight before quantisation} in the
    Hugging Face layout (for F32 files exactly what a converter must recover). `extra(writer)` adds metadata."""
    tokens, types, merges = bpe or tiny_bpe()
    V, hd = len(tokens), d // n_heads
    rng = np.random.default_rng(seed)
    w = _writer(path, arch, d, d_ff, n_layers, n_heads, n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    if extra is not None:
        extra(w)
    hf = {}

    def mat(gname, hname, shape, perm_heads=None):
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        data, raw = encode(permute(x, perm_heads) if perm_heads else x, qtype, rng)
        w.add_tensor(gname, data, raw_dtype=raw)
        hf[hname] = x

    def vec(gname, hname, n, base=1.0):
        x = (base + 0.1 * rng.standard_normal(n)).astype(np.float32)
        w.add_tensor(gname, x)
        hf[hname] = x

    mat("token_embd.weight", "model.embed_tokens.weight", (V, d))
    perm = arch == "llama"
    for i in range(n_layers):
        p, b = f"model.layers.{i}", f"blk.{i}"
        vec(f"{b}.attn_norm.weight", f"{p}.input_layernorm.weight", d)
        mat(f"{b}.attn_q.weight", f"{p}.self_attn.q_proj.weight", (n_heads * hd, d), n_heads if perm else None)
        mat(f"{b}.attn_k.weight", f"{p}.self_attn.k_proj.weight", (n_kv * hd, d), n_kv if perm else None)
        mat(f"{b}.attn_v.weight", f"{p}.self_attn.v_proj.weight", (n_kv * hd, d))
        if arch == "qwen2":
            for n, rows in (("q", n_heads * hd), ("k", n_kv * hd), ("v", n_kv * hd)):
                vec(f"{b}.attn_{n}.bias", f"{p}.self_attn.{n}_proj.bias", rows, base=0.0)
        if arch == "qwen3":  # per-head q/k RMSNorms
            vec(f"{b}.attn_q_norm.weight", f"{p}.self_attn.q_norm.weight", hd)
            vec(f"{b}.attn_k_norm.weight", f"{p}.self_attn.k_norm.weight", hd)
        mat(f"{b}.attn_output.weight", f"{p}.self_attn.o_proj.weight", (d, n_heads * hd))
        vec(f"{b}.ffn_norm.weight", f"{p}.post_attention_layernorm.weight", d)
        mat(f"{b}.ffn_gate.weight", f"{p}.mlp.gate_proj.weight", (d_ff, d))
        mat(f"{b}.ffn_up.weight", f"{p}.mlp.up_proj.weight", (d_ff, d))
        mat(f"{b}.ffn_down.weight", f"{p}.mlp.down_proj.weight", (d, d_ff))
    vec("output_norm.weight", "model.norm.weight", d)
    if not tied:
        mat("output.weight", "lm_head.weight", (V, d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


# ---------------------------------------------------------------------------------------------- Gemma 3
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
# the quantisation of each tensor kind in the real gemma-3-270m Q4_K_M file (norms are F32)
GEMMA_MIX = {"token_embd": Q.Q8_0, "attn_q": Q.Q5_0, "attn_k": Q.Q5_0, "attn_v": Q.Q8_0, "attn_output": Q.Q4_K,
             "ffn_gate": Q.Q5_0, "ffn_up": Q.Q5_0, "ffn_down": Q.Q6_K}


def tiny_sentencepiece(vocab_size: int = 400):
    """(tokens, token_types, scores) of a Gemma-style vocabulary as llama.cpp stores it: control tokens, the 256
    byte-fallback tokens <0x00>..<0xFF> (type 6), pieces spelled with "▁" learned on CORPUS in merge order (the
    file order is the merge order), whitespace-only pieces stored with real spaces, one user-defined token."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=GEMMA_SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS * 4 + ["    indented  twice   thrice"] * 4, trainer)
    pieces = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if t not in GEMMA_SPECIALS]
    pieces = [" " * len(t) if not t.strip("\u2581") else t for t in pieces]
    tokens = GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["[multimodal]"]
    types = [3] * len(GEMMA_SPECIALS) + [6] * 256 + [1] * len(pieces) + [4]
    return tokens, types, [-float(i) for i in range(len(tokens))]


def write_gemma3(path: str, *, qtypes=None, d: int = 256, d_ff: int = 512, n_layers: int = 7, n_heads: int = 4,
                 n_kv: int = 1, head_dim: int = 256, window: int = 4, seed: int = 0, sp=None, arch: str = "gemma3",
                 caps=None) -> dict:
    """Write a random Gemma 3 (or, arch="gemma2", Gemma 2 with soft-capping `caps` = (attn, final)) GGUF at `path`
    as llama.cpp's converter writes it: norms stored as 1 + w, `ffn_norm` the pre-feed-forward norm, q/k norms,
    head_dim != d / heads, a sliding window, a SentencePiece-style vocabulary and no merges. qtypes: {tensor kind:
    quantisation} (default F32; GEMMA_MIX is the real file's). Returns {hf_name: float32 weight before
    quantisation} in the Hugging Face layout (w, not 1 + w; norm weights are multiples of 2⁻¹⁰, so 1 + w − 1 is
    exact)."""
    tokens, types, scores = sp or tiny_sentencepiece()
    V, qtypes = len(tokens), qtypes or {}
    rng = np.random.default_rng(seed)
    w = _writer(path, arch, d, d_ff, n_layers, n_heads, n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0 if arch == "gemma3" else 10_000.0)
    w.add_sliding_window(window)
    if caps is not None:
        w.add_attn_logit_softcapping(caps[0])
        w.add_final_logit_softcapping(caps[1])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    hf = {}

    def mat(kind, gname, hname, shape):
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        data, raw = encode(x, qtypes.get(kind, Q.F32), rng)
        w.add_tensor(gname, data, raw_dtype=raw)
        hf[hname] = x

    def norm(gname, hname, n):
        x = (np.round(0.3 * rng.standard_normal(n) * 1024) / 1024).astype(np.float32)
        w.add_tensor(gname, x + np.float32(1.0))  # llama.cpp stores the 1 + w the norm multiplies by
        hf[hname] = x

    mat("token_embd", "token_embd.weight", "model.embed_tokens.weight", (V, d))
    for i in range(n_layers):
        p, b = f"model.layers.{i}", f"blk.{i}"
        norm(f"{b}.attn_norm.weight", f"{p}.input_layernorm.weight", d)
        mat("attn_q", f"{b}.attn_q.weight", f"{p}.self_attn.q_proj.weight", (n_heads * head_dim, d))
        mat("attn_k", f"{b}.attn_k.weight", f"{p}.self_attn.k_proj.weight", (n_kv * head_dim, d))
        mat("attn_v", f"{b}.attn_v.weight", f"{p}.self_attn.v_proj.weight", (n_kv * head_dim, d))
        if arch == "gemma3":
            norm(f"{b}.attn_q_norm.weight", f"{p}.self_attn.q_norm.weight", head_dim)
            norm(f"{b}.attn_k_norm.weight", f"{p}.self_attn.k_norm.weight", head_dim)
        mat("attn_output", f"{b}.attn_output.weight", f"{p}.self_attn.o_proj.weight", (d, n_heads * head_dim))
        norm(f"{b}.post_attention_norm.weight", f"{p}.post_attention_layernorm.weight", d)
        norm(f"{b}.ffn_norm.weight", f"{p}.pre_feedforward_layernorm.weight", d)
        mat("ffn_gate", f"{b}.ffn_gate.weight", f"{p}.mlp.gate_proj.weight", (d_ff, d))
        mat("ffn_up", f"{b}.ffn_up.weight", f"{p}.mlp.up_proj.weight", (d_ff, d))
        mat("ffn_down", f"{b}.ffn_down.weight", f"{p}.mlp.down_proj.weight", (d, d_ff))
        norm(f"{b}.post_ffw_norm.weight", f"{p}.post_feedforward_layernorm.weight", d)
    norm("output_norm.weight", "model.norm.weight", d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf
