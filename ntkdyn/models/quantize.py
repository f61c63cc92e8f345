"""int8 weights for sampling (issue #23): every Dense kernel and the head as int8 with one float32 scale per output
column, the activations quantized per row at run time, the products in int8 with int32 accumulation.

Why: decoding at a handful of rows reads every weight once per token, so a float32 sampler is bound by the time to
read 4 bytes per parameter. XLA:CPU (jaxlib 0.10) computes an s8 × s8 → s32 dot through its YNNPACK fusion: at 8
rows, one pass over SmolLM2-135M's matrices took 19 ms in int8 against 46 ms in float32 on an AVX-512 VNNI / AMX
Xeon (benchmarks/RESULTS.md); bfloat16 weights, or int8 weights converted to float32, were 3-4.5x slower there.
Only the sampler uses these weights: the log-probabilities a trainer learns from are recomputed in float32 from the
float32 parameters, as before.

    qgraphdef, qparams = int8_weights(cfg, params)
    sample(qgraphdef, cfg, qparams, ...)             # what lm.generate(..., weights="int8") does

Quantization (symmetric, round to nearest): a weight column w_j (the inputs of output j) becomes
q_j = round(w_j / s_j) with s_j = max|w_j| / 127. An activation row x_i is quantized in two levels, x_i ≈ t_i a_i +
u_i b_i with a_i = round(x_i / t_i), t_i = max|x_i| / 127, and b_i the same rounding of the residual x_i − t_i a_i
(u_i = max|x_i − t_i a_i| / 127 ≤ t_i / 254): with one level the outlier channels of a real model's activations
(SmolLM2) took the next-token KL to float32 to ~0.08 nats, with two ~7e-3. Both levels enter one product as stacked
rows (the weights are read once): y_ij = s_j (t_i Σ_k a_ik q_kj + u_i Σ_k b_ik q_kj). A zero column or row keeps
scale 1 (its q is 0). The embedding table (also the tied head's input side), norms, biases, attention and the KV
cache stay float32.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["WEIGHT_TYPES", "int8_matmul", "quantize_columns", "int8_weights", "int8_params", "int8_params_jit",
           "int8_graphdef"]

WEIGHT_TYPES = ("float32", "int8")  # what a sampler may read its weights as


def _int8(x, axis: int):
    """(q, t): x as int8 q with one float32 scale t = max|x| / 127 per slice along `axis` (kept as a size-1 axis;
    1 where the slice is all zero), x ≈ q · t."""
    t = jnp.max(jnp.abs(x), axis=axis, keepdims=True) / 127.0
    t = jnp.where(t > 0, t, 1.0)
    return jnp.clip(jnp.round(x / t), -127, 127).astype(jnp.int8), t


def quantize_columns(w):
    """(q, s): w (in, out) as int8 q with per-column float32 scales s (out,), w ≈ q · s."""
    q, s = _int8(jnp.asarray(w, jnp.float32), axis=0)
    return q, s[0]


def int8_matmul(x, q, s):
    """x (rows, in) float @ (q (in, out) int8 · s (out,)): x quantized per row in two int8 levels (the module
    docstring), both through one int8 product with int32 accumulation, rescaled to float32."""
    x = x.astype(jnp.float32)
    x1, t1 = _int8(x, axis=-1)
    x2, t2 = _int8(x - x1.astype(jnp.float32) * t1, axis=-1)  # the rounding residual, quantized again
    n = x.shape[-2]
    acc = jax.lax.dot_general(jnp.concatenate([x1, x2], -2), q, (((x.ndim - 1,), (0,)), ((), ())),
                              preferred_element_type=jnp.int32).astype(jnp.float32)
    return (acc[..., :n, :] * t1 + acc[..., n:, :] * t2) * s


def _is_dense(d) -> bool:
    return isinstance(d, dict) and "kernel" in d and np.ndim(d["kernel"]) == 2


def int8_params(params):
    """The parameter pytree of int8_graphdef: every Dense {"kernel", "bias"?} becomes {"kernel": int8,
    "kernel_scale", "bias"?}; the head gains "Wq" (d, V) int8 and "Wq_scale" (V,) (W itself stays: the embedding
    lookup of a tied model reads it). Pure and jit-able."""
    def convert(d):
        if _is_dense(d):
            q, s = quantize_columns(d["kernel"])
            return {**d, "kernel": q, "kernel_scale": s}
        if isinstance(d, dict):
            return {k: convert(v) for k, v in d.items()}
        return d

    head = dict(params["head"])
    head["Wq"], head["Wq_scale"] = quantize_columns(jnp.asarray(head["W"]).T)
    return {**params, "backbone": convert(params["backbone"]), "head": head}


@functools.lru_cache(maxsize=16)
def int8_graphdef(cfg):
    """The backbone's graphdef with int8 Dense kernels and their scales (transformer.Dense reads them), built from
    abstract arrays once per config."""
    from flax import nnx

    from .transformer import Backbone, Dense

    backbone = nnx.eval_shape(lambda: Backbone(cfg, nnx.Rngs(params=0)))
    for _, m in nnx.iter_graph(backbone):
        if isinstance(m, Dense):
            d_in, d_out = m.kernel.shape
            m.kernel = nnx.Param(jax.ShapeDtypeStruct((d_in, d_out), jnp.int8))
            m.kernel_scale = nnx.Param(jax.ShapeDtypeStruct((d_out,), jnp.float32))
    graphdef, _ = nnx.split(backbone)
    return graphdef


int8_params_jit = jax.jit(int8_params)  # its own program: inside a sampler's, XLA:CPU may redo it in the decode loop


def int8_weights(cfg, params):
    """(graphdef, params) of the model with int8 weights for sampling (module docstring)."""
    return int8_graphdef(cfg), int8_params_jit(params)
