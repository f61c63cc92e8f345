"""Tiny random Hugging Face models built offline with transformers + torch (seeded), saved for nd.load."""
from __future__ import annotations

import os

import torch
import transformers

V = 97
GEMMA3 = dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=48, max_position_embeddings=64, query_pre_attn_scalar=24,
              sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
              tie_word_embeddings=True)

SPECS = {
    "gpt2": ("GPT2Config", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "neox_parallel": ("GPTNeoXConfig", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64,
                                            max_position_embeddings=64, rotary_pct=0.25,
                                            use_parallel_residual=True, tie_word_embeddings=False)),
    "neox_sequential": ("GPTNeoXConfig", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64,
                                              max_position_embeddings=64, rotary_pct=0.5,
                                              use_parallel_residual=False, tie_word_embeddings=False)),
    "llama_gqa": ("LlamaConfig", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                      tie_word_embeddings=False)),
    "llama_tied": ("LlamaConfig", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=4, intermediate_size=48, max_position_embeddings=64,
                                       tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                  tie_word_embeddings=False)),
    # q/k norms, head_dim 16 != 32 / 4, and a sliding window of 4 on layer 1 (layers from max_window_layers on)
    "qwen3": ("Qwen3Config", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, intermediate_size=48, max_position_embeddings=64,
                                  use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                  tie_word_embeddings=False)),
    # √d embedding, (1 + w) norms, four norms per block, q/k norms, query_pre_attn_scalar 24 != head_dim 16,
    # sliding layers (window 4, local RoPE base) around a global one; tied
    "gemma3": ("Gemma3TextConfig", GEMMA3),
}
# Soft-capping of the logits (a nonlinear head, outside the R/G kernels' scope): Gemma 2 caps the attention scores
# too (transformers' Gemma 3 does not)
SOFTCAP = {"gemma3_softcap": ("Gemma3TextConfig", dict(GEMMA3, final_logit_softcapping=3.0)),
           "gemma2": ("Gemma2Config", dict({k: v for k, v in GEMMA3.items() if k != "layer_types"},
                                           attn_logit_softcapping=5.0, final_logit_softcapping=3.0))}
ARCH = {"GPT2Config": "GPT2LMHeadModel", "GPTNeoXConfig": "GPTNeoXForCausalLM", "LlamaConfig": "LlamaForCausalLM",
        "Qwen2Config": "Qwen2ForCausalLM", "Qwen3Config": "Qwen3ForCausalLM", "Gemma3TextConfig": "Gemma3ForCausalLM",
        "Gemma2Config": "Gemma2ForCausalLM"}


# one tiny model per family (Gemma 3 with a soft-capped head: the nonlinear head_logits too), tied and untied heads
EVERY_FAMILY = ["gpt2", "neox_parallel", "llama_gqa", "qwen3", "gemma3_softcap"]


def loaded(root: str, names=EVERY_FAMILY) -> dict:
    """{name: the ntkdyn LM of build(name, root)} for every name."""
    import ntkdyn as nd

    return {n: nd.load(build(n, root)[0]) for n in names}


def build(name: str, root: str, seed: int = 0):
    """Build, randomise (larger init so logits are not flat) and save one tiny model; returns (dir, torch model)."""
    cfg_cls, kw = {**SPECS, **SOFTCAP}[name]
    cfg = getattr(transformers, cfg_cls)(bos_token_id=1, eos_token_id=2, pad_token_id=0, **kw)
    torch.manual_seed(seed)  # before construction: the draws below continue the same random stream
    model = randomize(getattr(transformers, ARCH[cfg_cls])(cfg).eval())
    path = os.path.join(root, name)
    model.save_pretrained(path)
    return path, model


def randomize(model):
    """Re-draw a torch model's weights from torch's current random stream (seed it before building the model):
    normal(0, 0.15) matrices so logits are not flat, norm scales near 1 and biases near 0. Returns the model."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim >= 1 and "norm" not in n and "ln" not in n:
                p.normal_(0.0, 0.15)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if n.endswith("weight") else 0.1 * torch.randn_like(p))
    return model
