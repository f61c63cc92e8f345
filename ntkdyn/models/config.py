"""ModelConfig: one frozen description of a decoder, read from and written to Hugging Face config.json.

Two config.json dialects are read: the classic one of published checkpoints (Pythia's `rotary_pct`,
`rotary_emb_base`, top-level `rope_theta`, `torch_dtype`) and the transformers-5 one (`rope_parameters` with
`partial_rotary_factor` / `rope_theta`, `dtype`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# model_type in config.json -> our family
FAMILIES = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "llama": "llama", "qwen2": "llama"}

# integer fields and their smallest allowed value (head_dim 0 means d_model // n_heads)
_POSITIVE_INTS = {"vocab_size": 1, "d_model": 1, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1, "d_ff": 1,
                  "max_positions": 1, "head_dim": 0}


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"{name}={v!r}: expected an integer >= {lo}, got {type(v).__name__}")
    if v < lo:
        raise CheckpointError(f"{name}={v!r}: expected an integer >= {lo}")
    return v


def _check_number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise CheckpointError(f"{name}={v!r}: expected a finite number")
    return v


class CheckpointError(ValueError):
    """A checkpoint directory or config that cannot be read as asked."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a causal decoder. `family` selects the block; `model_type` is kept for saving."""

    family: str  # "gpt2" | "gpt_neox" | "llama"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_positions: int
    model_type: str = ""
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rotary_pct: float = 1.0  # share of head_dim that is rotated (NeoX partial rotary)
    parallel_residual: bool = False  # NeoX: x + attn(ln1 x) + mlp(ln2 x)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # attention projections carry a bias (GPT-2, NeoX, Qwen2)
    out_bias: bool = False  # attention output / MLP projections carry a bias (GPT-2, NeoX)
    activation: str = "gelu"  # "gelu" (erf), "gelu_new" (tanh), "silu"
    head_dim: int = 0  # 0: d_model // n_heads
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"  # dtype the checkpoint was stored in

    def __post_init__(self):
        if self.family not in ("gpt2", "gpt_neox", "llama"):
            raise CheckpointError(f"unknown family {self.family!r}; expected one of gpt2, gpt_neox, llama")
        for name, lo in _POSITIVE_INTS.items():
            _check_int(f"ModelConfig.{name}", getattr(self, name), lo)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None:
                _check_int(f"ModelConfig.{name}", v, 0)
        for name in ("norm_eps", "rope_theta", "rotary_pct"):
            _check_number(f"ModelConfig.{name}", getattr(self, name))
        if not 0 <= self.rotary_pct <= 1:
            raise CheckpointError(f"ModelConfig.rotary_pct={self.rotary_pct!r}: expected a number in [0, 1]")
        if self.head_dim == 0:
            if self.d_model % self.n_heads:
                raise CheckpointError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if not self.model_type:
            object.__setattr__(self, "model_type", self.family)
        if self.n_heads % self.n_kv_heads:
            raise CheckpointError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct) if self.family != "gpt2" else 0

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ Hugging Face config.json
    @classmethod
    def from_hf(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: expected a JSON object of config keys; got {type(d).__name__}")
        _check_hf_values(d, source)
        mt = d.get("model_type")
        if mt not in FAMILIES:
            raise CheckpointError(
                f"{source}: unknown model_type {mt!r}; expected one of {sorted(FAMILIES)}")
        fam = FAMILIES[mt]

        def need(*keys):
            for k in keys:
                if k in d and d[k] is not None:
                    return d[k]
            raise CheckpointError(f"{source}: missing key {keys[0]!r} for model_type {mt!r}")

        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        eos = d.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        common = dict(model_type=mt, bos_token_id=d.get("bos_token_id"), eos_token_id=eos,
                      pad_token_id=d.get("pad_token_id"),
                      dtype=str(d.get("dtype") or d.get("torch_dtype") or "float32"))
        if fam == "gpt2":
            n_embd = need("n_embd", "hidden_size")
            act = d.get("activation_function", "gelu_new")
            return cls(family=fam, vocab_size=need("vocab_size"), d_model=n_embd, n_layers=need("n_layer"),
                       n_heads=need("n_head"), n_kv_heads=need("n_head"),
                       d_ff=d.get("n_inner") or 4 * n_embd, max_positions=need("n_positions", "n_ctx"),
                       norm_eps=d.get("layer_norm_epsilon", 1e-5), tie_word_embeddings=True,
                       qkv_bias=True, out_bias=True, activation=act, **common)
        if fam == "gpt_neox":
            theta = rope.get("rope_theta", d.get("rope_theta", d.get("rotary_emb_base", 10000.0)))
            pct = rope.get("partial_rotary_factor", d.get("rotary_pct", d.get("partial_rotary_factor", 0.25)))
            bias = d.get("attention_bias", True)
            return cls(family=fam, vocab_size=need("vocab_size"), d_model=need("hidden_size"),
                       n_layers=need("num_hidden_layers"), n_heads=need("num_attention_heads"),
                       n_kv_heads=need("num_attention_heads"), d_ff=need("intermediate_size"),
                       max_positions=need("max_position_embeddings"), norm_eps=d.get("layer_norm_eps", 1e-5),
                       rope_theta=float(theta), rotary_pct=float(pct),
                       parallel_residual=bool(d.get("use_parallel_residual", True)),
                       tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                       qkv_bias=bias, out_bias=bias, activation=d.get("hidden_act", "gelu"), **common)
        # llama / qwen2
        if rope.get("rope_type", "default") not in ("default", None):
            raise CheckpointError(f"{source}: rope_type {rope.get('rope_type')!r} is not supported; expected 'default'")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        nh = need("num_attention_heads")
        qkv_bias = bool(d.get("attention_bias", False)) or mt == "qwen2"
        if mt == "llama" and d.get("mlp_bias"):
            raise CheckpointError(f"{source}: mlp_bias=true is not supported")
        return cls(family=fam, vocab_size=need("vocab_size"), d_model=need("hidden_size"),
                   n_layers=need("num_hidden_layers"), n_heads=nh,
                   n_kv_heads=d.get("num_key_value_heads") or nh, d_ff=need("intermediate_size"),
                   max_positions=need("max_position_embeddings"), norm_eps=d.get("rms_norm_eps", 1e-6),
                   rope_theta=float(theta), rotary_pct=1.0,
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", mt == "llama" and False)),
                   qkv_bias=qkv_bias, out_bias=False, activation=d.get("hidden_act", "silu"),
                   head_dim=d.get("head_dim") or 0, **common)

    def to_hf(self) -> dict[str, Any]:
        """config.json in the transformers-5 dialect (also readable by older transformers for these keys)."""
        c = self
        base = dict(model_type=c.model_type, vocab_size=c.vocab_size, bos_token_id=c.bos_token_id,
                    eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, dtype="float32",
                    tie_word_embeddings=c.tie_word_embeddings)
        if c.family == "gpt2":
            base.update(architectures=["GPT2LMHeadModel"], n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
                        n_inner=c.d_ff, n_positions=c.max_positions, layer_norm_epsilon=c.norm_eps,
                        activation_function=c.activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        elif c.family == "gpt_neox":
            base.update(architectures=["GPTNeoXForCausalLM"], hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                        num_attention_heads=c.n_heads, intermediate_size=c.d_ff,
                        max_position_embeddings=c.max_positions, layer_norm_eps=c.norm_eps,
                        use_parallel_residual=c.parallel_residual, attention_bias=c.qkv_bias, hidden_act=c.activation,
                        rope_theta=c.rope_theta, rotary_pct=c.rotary_pct, rotary_emb_base=c.rope_theta,
                        rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta,
                                             partial_rotary_factor=c.rotary_pct),
                        attention_dropout=0.0, hidden_dropout=0.0)
        else:
            arch = "Qwen2ForCausalLM" if c.model_type == "qwen2" else "LlamaForCausalLM"
            base.update(architectures=[arch], hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, intermediate_size=c.d_ff,
                        max_position_embeddings=c.max_positions, rms_norm_eps=c.norm_eps, hidden_act=c.activation,
                        head_dim=c.head_dim, rope_theta=c.rope_theta,
                        rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta))
            if c.model_type == "llama":
                base.update(attention_bias=c.qkv_bias, mlp_bias=False)
        return base


# config.json keys that must be positive integers when present (any dialect), and the finite numbers
_HF_INTS = ("vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
            "num_key_value_heads", "intermediate_size", "n_inner", "max_position_embeddings", "n_positions", "n_ctx",
            "head_dim")
_HF_NUMBERS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "rotary_pct",
               "rotary_emb_base", "partial_rotary_factor")


def _check_hf_values(d: dict, source: str) -> None:
    """Types and ranges of the architecture keys of a config.json, each error naming the key."""
    for k in _HF_INTS:
        if d.get(k) is not None:
            _check_int(f"{source}: {k}", d[k], 1)
    for k in _HF_NUMBERS:
        if d.get(k) is not None:
            _check_number(f"{source}: {k}", d[k])
    hidden, heads = d.get("hidden_size", d.get("n_embd")), d.get("num_attention_heads", d.get("n_head"))
    if hidden and heads and not d.get("head_dim") and hidden % heads:
        raise CheckpointError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")


def read_config(path: str) -> ModelConfig:
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        raise CheckpointError(f"{path}: no config.json; expected a Hugging Face model directory "
                              "(config.json + *.safetensors)")
    try:
        with open(f) as fh:
            d = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e}); expected a JSON object of config keys") from None
    return ModelConfig.from_hf(d, source=f)
