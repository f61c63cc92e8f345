"""ModelConfig: one frozen description of a decoder, read from and written to Hugging Face config.json.

Two config.json dialects are read: the classic one of published checkpoints (Pythia's `rotary_pct`,
`rotary_emb_base`, top-level `rope_theta`, Gemma 3's `rope_local_base_freq`, `torch_dtype`) and the transformers-5
one (`rope_parameters` with `partial_rotary_factor` / `rope_theta`, per layer type for Gemma 3, `dtype`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# model_type in config.json -> our family
FAMILIES = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "llama": "llama", "qwen2": "llama", "qwen3": "llama",
            "gemma3_text": "gemma3", "gemma2": "gemma3"}
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' names of the two attention kinds

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

    family: str  # "gpt2" | "gpt_neox" | "llama" | "gemma3"
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
    qk_norm: bool = False  # RMSNorm of every head's q and k (over head_dim) before RoPE (Qwen3, Gemma 3)
    sliding_window: int | None = None  # a sliding layer's query sees itself and the window − 1 key slots before it
    layer_types: tuple = ()  # per layer "full_attention" | "sliding_attention"; () = all full
    rope_local_theta: float | None = None  # RoPE base of the sliding layers (Gemma 3); None: rope_theta
    query_pre_attn_scalar: float | None = None  # attention scores are q·k / sqrt(this); None: head_dim
    attn_logit_softcapping: float | None = None  # c: attention scores s -> c·tanh(s / c) before the mask
    final_logit_softcapping: float | None = None  # c: logits z -> c·tanh(z / c) (a nonlinear head)

    def __post_init__(self):
        if self.family not in ("gpt2", "gpt_neox", "llama", "gemma3"):
            raise CheckpointError(f"unknown family {self.family!r}; expected one of gpt2, gpt_neox, llama, gemma3")
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
        self._check_attention_kinds()

    def _check_attention_kinds(self):
        """layer_types (a tuple, one known kind per layer), the window, the optional positive numbers."""
        types = self.layer_types
        if isinstance(types, str) or not isinstance(types, (list, tuple)):
            raise CheckpointError(f"ModelConfig.layer_types={types!r}: expected a list of {LAYER_TYPES}")
        object.__setattr__(self, "layer_types", tuple(types))
        bad = sorted({t for t in self.layer_types if t not in LAYER_TYPES}, key=str)
        if bad:
            raise CheckpointError(f"ModelConfig.layer_types holds {bad}; expected each of {LAYER_TYPES}")
        if self.layer_types and len(self.layer_types) != self.n_layers:
            raise CheckpointError(f"ModelConfig.layer_types has {len(self.layer_types)} entries for "
                                  f"n_layers={self.n_layers}")
        if self.sliding_window is not None:
            _check_int("ModelConfig.sliding_window", self.sliding_window, 1)
        elif "sliding_attention" in self.layer_types:
            raise CheckpointError("ModelConfig.layer_types has sliding_attention layers but sliding_window is None")
        for name in ("rope_local_theta", "query_pre_attn_scalar", "attn_logit_softcapping",
                     "final_logit_softcapping"):
            v = getattr(self, name)
            if v is not None and _check_number(f"ModelConfig.{name}", v) <= 0:
                raise CheckpointError(f"ModelConfig.{name}={v!r}: expected a positive number or None")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct) if self.family != "gpt2" else 0

    def layer_window(self, i: int) -> int | None:
        """The sliding window of layer i, or None for a full-attention layer."""
        sliding = bool(self.layer_types) and self.layer_types[i] == "sliding_attention"
        return self.sliding_window if sliding else None

    def layer_rope_theta(self, i: int) -> float:
        """The RoPE base of layer i (Gemma 3's sliding layers have their own)."""
        local = self.layer_window(i) is not None and self.rope_local_theta is not None
        return self.rope_local_theta if local else self.rope_theta

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
        nh = need("num_attention_heads")
        shape = dict(vocab_size=need("vocab_size"), d_model=need("hidden_size"), n_layers=need("num_hidden_layers"),
                     n_heads=nh, n_kv_heads=d.get("num_key_value_heads") or nh, d_ff=need("intermediate_size"),
                     max_positions=need("max_position_embeddings"), rotary_pct=1.0, out_bias=False)
        if fam == "gemma3":
            return cls(family=fam, **shape, **_gemma_keys(d, mt, source, shape["n_layers"]), **common)
        # llama / qwen2 / qwen3
        if rope.get("rope_type", "default") not in ("default", None):
            raise CheckpointError(f"{source}: rope_type {rope.get('rope_type')!r} is not supported; expected 'default'")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        qkv_bias = bool(d.get("attention_bias", False)) or mt == "qwen2"
        if mt == "llama" and d.get("mlp_bias"):
            raise CheckpointError(f"{source}: mlp_bias=true is not supported")
        window, types = _qwen_sliding(d, shape["n_layers"]) if mt in ("qwen2", "qwen3") else (None, ())
        return cls(family=fam, **shape, norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", False)), qkv_bias=qkv_bias,
                   activation=d.get("hidden_act", "silu"),
                   head_dim=d.get("head_dim") or (128 if mt == "qwen3" else 0), qk_norm=mt == "qwen3",
                   sliding_window=window, layer_types=types, **common)

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
            base.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                        num_key_value_heads=c.n_kv_heads, intermediate_size=c.d_ff,
                        max_position_embeddings=c.max_positions, rms_norm_eps=c.norm_eps, head_dim=c.head_dim)
            types = list(c.layer_types) or ["full_attention"] * c.n_layers
            if c.family == "gemma3":
                base.update(hidden_activation=c.activation, query_pre_attn_scalar=c.query_pre_attn_scalar or c.head_dim,
                            sliding_window=c.sliding_window, layer_types=types, attention_bias=False,
                            attn_logit_softcapping=c.attn_logit_softcapping,
                            final_logit_softcapping=c.final_logit_softcapping, rope_theta=c.rope_theta)
                if c.model_type == "gemma2":
                    base.update(architectures=["Gemma2ForCausalLM"],
                                rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta))
                    return base
                if c.attn_logit_softcapping is not None:
                    raise CheckpointError("a gemma3_text config.json cannot carry attn_logit_softcapping: "
                                          "transformers' Gemma 3 does not apply it")
                local = c.rope_local_theta if c.rope_local_theta is not None else c.rope_theta
                base.update(architectures=["Gemma3ForCausalLM"], rope_local_base_freq=local,
                            rope_parameters={"full_attention": dict(rope_type="default", rope_theta=c.rope_theta),
                                             "sliding_attention": dict(rope_type="default", rope_theta=local)})
                return base
            arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}.get(c.model_type, "LlamaForCausalLM")
            base.update(architectures=[arch], hidden_act=c.activation, rope_theta=c.rope_theta,
                        rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta))
            if c.model_type == "llama":
                base.update(attention_bias=c.qkv_bias, mlp_bias=False)
            else:  # Qwen2/Qwen3: the sliding layers, spelled for transformers' __post_init__ and older readers
                sliding = "sliding_attention" in types
                base.update(use_sliding_window=sliding, sliding_window=c.sliding_window if sliding else None,
                            max_window_layers=types.index("sliding_attention") if sliding else c.n_layers,
                            layer_types=types)
                if c.model_type == "qwen3":
                    base.update(attention_bias=c.qkv_bias)
        return base


def _gemma_keys(d: dict, mt: str, source: str, n_layers: int) -> dict:
    """The ModelConfig fields particular to a gemma3_text or gemma2 config.json, with transformers' defaults
    (Gemma3TextConfig, Gemma2Config). As transformers' Gemma3 attention does, a gemma3_text config's
    attn_logit_softcapping is not applied (Gemma 2 applies both cappings)."""
    g3 = mt == "gemma3_text"
    rp = d.get("rope_parameters") or {}
    full, local = (rp.get("full_attention") or {}, rp.get("sliding_attention") or {}) if g3 else (rp, {})
    for kind, r in (("full_attention", full), ("sliding_attention", local), ("rope_scaling", d.get("rope_scaling"))):
        if r and r.get("rope_type", r.get("type", "default")) not in ("default", None):
            raise CheckpointError(f"{source}: RoPE scaling of {kind} ({r}) is not supported; expected rope_type "
                                  "'default'")
    for key in ("use_bidirectional_attention", "attention_bias"):
        if d.get(key):
            raise CheckpointError(f"{source}: {key}=true is not supported for {mt}")
    types = d.get("layer_types")
    if types is None:  # transformers' rule: every `sliding_window_pattern`-th layer is global
        pattern = d.get("sliding_window_pattern", d.get("_sliding_window_pattern", 6)) if g3 else 2
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    theta = full.get("rope_theta", d.get("rope_theta", 1_000_000.0 if g3 else 10_000.0))
    return dict(norm_eps=d.get("rms_norm_eps", 1e-6), head_dim=d.get("head_dim", 256), rope_theta=float(theta),
                rope_local_theta=float(local.get("rope_theta", d.get("rope_local_base_freq", 10_000.0))) if g3
                else None, tie_word_embeddings=bool(d.get("tie_word_embeddings", True)), qkv_bias=False,
                activation=d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh", qk_norm=g3,
                sliding_window=d.get("sliding_window", 4096), layer_types=types,
                query_pre_attn_scalar=d.get("query_pre_attn_scalar", 256),
                attn_logit_softcapping=None if g3 else d.get("attn_logit_softcapping", 50.0),
                final_logit_softcapping=d.get("final_logit_softcapping", None if g3 else 30.0))


def _qwen_sliding(d: dict, n_layers: int):
    """(sliding_window, layer_types) of a Qwen2/Qwen3 config.json as transformers reads it: no window unless
    use_sliding_window; then layer_types when given, else the layers from max_window_layers on slide."""
    window = d.get("sliding_window") if d.get("use_sliding_window") else None
    if window is None:
        return None, ()
    first = d.get("max_window_layers", n_layers)
    types = d.get("layer_types") or ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    return window, types


# config.json keys that must be positive integers when present (any dialect), and the finite numbers
_HF_INTS = ("vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
            "num_key_value_heads", "intermediate_size", "n_inner", "max_position_embeddings", "n_positions", "n_ctx",
            "head_dim", "sliding_window")
_HF_NUMBERS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "rotary_pct",
               "rotary_emb_base", "partial_rotary_factor", "rope_local_base_freq", "query_pre_attn_scalar",
               "attn_logit_softcapping", "final_logit_softcapping")


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
