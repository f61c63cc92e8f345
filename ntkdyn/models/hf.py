"""Hugging Face checkpoints in and out: config.json + model.safetensors (or sharded with an index).

`to_hf_state` maps our pytree {"backbone", "head"} to HF tensor names and layouts (GPT-2 Conv1D weights are
(in, out); NeoX/Llama/Qwen/Gemma Linear weights are (out, in); NeoX's fused qkv is head-interleaved; Gemma's
norm weights are stored as w of (1 + w), as our Norm keeps them). The loader
reads the expected names and shapes from `to_hf_state` applied to abstract parameters, so one table serves
both directions.
"""
from __future__ import annotations

import json
import os
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ..io import atomic_dir
from .config import CheckpointError, ModelConfig
from .transformer import abstract_params

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# buffers some checkpoints carry that are not parameters
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", ".attention.bias",
                     ".attention.masked_bias")


# ---------------------------------------------------------------------------------------------- layouts
def _lin(p, transpose):
    """HF tensors of one projection from our Dense {kernel (in,out), bias}."""
    out = {"weight": p["kernel"].T if transpose else p["kernel"]}
    if "bias" in p:
        out["bias"] = p["bias"]
    return out


def _norm(p):
    return {"weight": p["scale"], **({"bias": p["bias"]} if "bias" in p else {})}


def to_hf_state(cfg: ModelConfig, params) -> dict:
    """{hf_name: array} for our params (jnp ops, so it also runs under jax.eval_shape)."""
    bb, head = params["backbone"], params["head"]
    out = {}

    def put(prefix, tensors):
        for k, v in tensors.items():
            out[f"{prefix}.{k}"] = v

    if cfg.family == "gpt2":
        put("transformer.wte", {"weight": head["W"]})
        put("transformer.wpe", {"weight": bb["pos"]["embedding"]})
        for i, L in bb["layers"].items():
            a, pre = L["attn"], f"transformer.h.{i}"
            put(f"{pre}.ln_1", _norm(L["ln1"]))
            put(f"{pre}.ln_2", _norm(L["ln2"]))
            put(f"{pre}.attn.c_attn", {"weight": jnp.concatenate([a[n]["kernel"] for n in "qkv"], 1),
                                       "bias": jnp.concatenate([a[n]["bias"] for n in "qkv"], 0)})
            put(f"{pre}.attn.c_proj", _lin(a["o"], False))
            put(f"{pre}.mlp.c_fc", _lin(L["mlp"]["up"], False))
            put(f"{pre}.mlp.c_proj", _lin(L["mlp"]["down"], False))
        put("transformer.ln_f", _norm(bb["ln_f"]))
        return out
    if cfg.family == "gpt_neox":
        H, hd, d = cfg.n_heads, cfg.head_dim, cfg.d_model
        put("gpt_neox.embed_in", {"weight": bb["embed"]["embedding"]})
        for i, L in bb["layers"].items():
            a, pre = L["attn"], f"gpt_neox.layers.{i}"
            put(f"{pre}.input_layernorm", _norm(L["ln1"]))
            put(f"{pre}.post_attention_layernorm", _norm(L["ln2"]))
            # fused qkv, output rows ordered (head, {q,k,v}, head_dim)
            w = jnp.stack([a[n]["kernel"].T.reshape(H, hd, d) for n in "qkv"], 1).reshape(3 * H * hd, d)
            fused = {"weight": w}
            if cfg.qkv_bias:
                fused["bias"] = jnp.stack([a[n]["bias"].reshape(H, hd) for n in "qkv"], 1).reshape(-1)
            put(f"{pre}.attention.query_key_value", fused)
            put(f"{pre}.attention.dense", _lin(a["o"], True))
            put(f"{pre}.mlp.dense_h_to_4h", _lin(L["mlp"]["up"], True))
            put(f"{pre}.mlp.dense_4h_to_h", _lin(L["mlp"]["down"], True))
        put("gpt_neox.final_layer_norm", _norm(bb["ln_f"]))
        if not cfg.tie_word_embeddings:
            put("embed_out", {"weight": head["W"]})
        return out
    # llama / qwen2 / qwen3 / gemma3
    put("model.embed_tokens", {"weight": head["W"] if cfg.tie_word_embeddings else bb["embed"]["embedding"]})
    for i, L in bb["layers"].items():
        a, pre = L["attn"], f"model.layers.{i}"
        put(f"{pre}.input_layernorm", _norm(L["ln1"]))
        if cfg.family == "gemma3":  # ln2 is the pre-feed-forward norm; the outputs have their own
            put(f"{pre}.post_attention_layernorm", _norm(L["post_attn"]))
            put(f"{pre}.pre_feedforward_layernorm", _norm(L["ln2"]))
            put(f"{pre}.post_feedforward_layernorm", _norm(L["post_mlp"]))
        else:
            put(f"{pre}.post_attention_layernorm", _norm(L["ln2"]))
        for n, hf in zip("qkvo", ("q_proj", "k_proj", "v_proj", "o_proj")):
            put(f"{pre}.self_attn.{hf}", _lin(a[n], True))
        if cfg.qk_norm:
            put(f"{pre}.self_attn.q_norm", _norm(a["q_norm"]))
            put(f"{pre}.self_attn.k_norm", _norm(a["k_norm"]))
        for n in ("gate", "up", "down"):
            put(f"{pre}.mlp.{n}_proj", _lin(L["mlp"][n], True))
    put("model.norm", _norm(bb["ln_f"]))
    if not cfg.tie_word_embeddings:
        put("lm_head", {"weight": head["W"]})
    return out


def from_hf_state(cfg: ModelConfig, state: dict, source: str = "checkpoint", dtype=np.float32):
    """Our params from {hf_name: array}. Missing, misshapen or unexpected tensors raise CheckpointError naming them."""
    expected = jax.eval_shape(lambda p: to_hf_state(cfg, p), abstract_params(cfg))
    state = dict(state)
    # checkpoints saved from the bare model (GPT2Model, GPTNeoXModel, LlamaModel) lack the prefix
    prefix = {"gpt2": "transformer.", "gpt_neox": "gpt_neox.", "llama": "model.", "gemma3": "model."}[cfg.family]
    if not any(k.startswith(prefix) for k in state):
        state = {(k if k in ("lm_head.weight", "embed_out.weight") else prefix + k): v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                              f"for a {cfg.model_type} model with {cfg.n_layers} layers")
    tied_head = {"lm_head.weight", "embed_out.weight"} if cfg.tie_word_embeddings else set()
    unexpected = [k for k in state if k not in expected and k not in tied_head and not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {unexpected[:5]} for a {cfg.model_type} model "
                              f"with {cfg.n_layers} layers (does config.json match the weights?)")
    for k, s in expected.items():
        if tuple(state[k].shape) != tuple(s.shape):
            raise CheckpointError(f"{source}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                  f"expected {tuple(s.shape)} from config.json")
    # invert the layout with the linear map's transpose: to_hf_state is linear in params, so its VJP is its
    # inverse here (each of our entries appears exactly once, as a permutation/reshape).
    arrays = {k: np.asarray(state[k], dtype=np.float32) for k in expected}
    _, vjp = jax.vjp(lambda p: to_hf_state(cfg, p), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                                 abstract_params(cfg)))
    (params,) = vjp(arrays)
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)


# ---------------------------------------------------------------------------------------------- safetensors
def read_safetensors(path: str) -> dict:
    """{name: np.ndarray} from one .safetensors file (bf16 via ml_dtypes). Corrupt files raise CheckpointError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        (n,) = struct.unpack("<Q", raw[:8])
        if n > len(raw) - 8:
            raise ValueError("header longer than file")
        header = json.loads(raw[8:8 + n])
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt = _DTYPES.get(meta.get("dtype"))
        if dt is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}")
        a, b = meta["data_offsets"]
        if b > len(body) or b - a != int(np.prod(meta["shape"], dtype=np.int64)) * np.dtype(dt).itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} data is truncated or inconsistent with its header")
        out[name] = np.frombuffer(body[a:b], dtype=dt).reshape(meta["shape"])
    return out


def read_weights(path: str) -> dict:
    """All tensors of a model directory: model.safetensors or model.safetensors.index.json shards."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                wmap = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: not valid JSON ({e}); expected a sharded-safetensors index") from None
        if not isinstance(wmap, dict) or not isinstance(wmap.get("weight_map"), dict) or not wmap["weight_map"]:
            raise CheckpointError(f"{index}: no weight_map; expected a JSON object with a non-empty "
                                  "\"weight_map\" {tensor name: shard file}")
        files = sorted(set(map(str, wmap["weight_map"].values())))
        state = {}
        for fn in files:
            fp = os.path.join(path, fn)
            if not os.path.isfile(fp):
                raise CheckpointError(f"{index}: shard {fn!r} is listed but missing")
            state.update(read_safetensors(fp))
        return state
    if os.path.isfile(single):
        return read_safetensors(single)
    others = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    if len(others) == 1:
        return read_safetensors(os.path.join(path, others[0]))
    raise CheckpointError(f"{path}: no model.safetensors (or index) found; expected Hugging Face safetensors "
                          "weights (.bin checkpoints are not read: convert them with transformers first)")


def generation_config(cfg: ModelConfig, tokenizer=None) -> dict:
    """generation_config.json: bos/pad ids and every EOS id (the tokenizer's `eos_ids` when it has several)."""
    eos = list(getattr(tokenizer, "eos_ids", None) or [])
    eos = eos if len(eos) > 1 else cfg.eos_token_id
    return {k: v for k, v in dict(bos_token_id=cfg.bos_token_id, eos_token_id=eos,
                                  pad_token_id=cfg.pad_token_id).items() if v is not None}


def write_model_dir(path: str, cfg: ModelConfig, params, tokenizer=None, max_shard_bytes: int = 2 ** 31):
    """Write config.json + safetensors (sharded with an index above max_shard_bytes) (+ tokenizer) atomically:
    everything goes to a temporary sibling directory that replaces `path` whole at the end (ntkdyn.io.atomic_dir;
    an existing regular file at `path` is refused and left untouched)."""
    from safetensors.numpy import save_file

    state = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in to_hf_state(cfg, params).items()}
    with atomic_dir(path, what="model directory") as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg.to_hf(), f, indent=2)
        shards, cur, size = [], {}, 0
        for k, v in state.items():
            if cur and size + v.nbytes > max_shard_bytes:
                shards.append(cur)
                cur, size = {}, 0
            cur[k] = v
            size += v.nbytes
        shards.append(cur)
        if len(shards) == 1:
            save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        else:
            wmap = {}
            for i, sh in enumerate(shards):
                fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(sh, os.path.join(tmp, fn), metadata={"format": "pt"})
                wmap.update({k: fn for k in sh})
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": sum(v.nbytes for v in state.values())}, "weight_map": wmap},
                          f, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(generation_config(cfg, tokenizer), f)
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name in os.listdir(tmp):  # safetensors writes 0600 files; a saved model is an ordinary directory
            os.chmod(os.path.join(tmp, name), 0o644)
    return os.path.abspath(path)
