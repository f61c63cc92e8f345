"""One Flax NNX decoder for the four families (GPT-2, GPT-NeoX/Pythia, Llama/Qwen2/Qwen3, Gemma 3), driven by
ModelConfig.

The backbone maps token ids to h, the output of the final norm (spec: z = W h + b). The head (W, optional b)
is not a module: it is the pytree `params["head"]`, applied by `apply_head` (`head_logits` adds the optional
final soft-capping of Gemma-2-style checkpoints). For a tied model (GPT-2, Gemma) the backbone reads its input
embedding from the head table, which is passed in explicitly.

Attention is written for one code path that serves both teacher forcing and the KV-cache sampler: queries sit
at absolute slots `q_slot` of a key buffer; a key slot is visible when it is valid, not in the future and, in a
sliding layer, less than `sliding_window` slots back (transformers' masks: a row's real tokens occupy
consecutive slots in every layout ntkdyn builds, so slot distance is token distance).

Gemma 3 (family "gemma3"): the looked-up rows are multiplied by √d (after the embedding tap, so the tap's
cotangent stays the gradient of the table rows), RMSNorms scale by (1 + w), each block norms the attention and
MLP outputs too (post_attn, post_mlp), q and k are RMS-normed per head, the MLP is a GELU-tanh GLU, and the
sliding and global layers have their own RoPE bases.

Structured derivatives (ntkdyn/ntk/methods/structured.py) pass `taps=Taps(...)` through `features`: zero-valued additive taps
at every Dense output and at the looked-up embedding rows, and a record of every Dense input. Without `taps`
(the default) nothing of this runs and every number is unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from .config import ModelConfig
from .quantize import int8_matmul

_INIT = jax.nn.initializers.normal(0.02)
EMBED = ("embed",)  # the Taps key of the looked-up embedding rows x (after GPT-2's positions, before Gemma's √d)


class Taps:
    """Zero-valued additive taps at every Dense output and at the looked-up embedding rows, and a record of what
    those layers read, for structured derivatives (ntkdyn/ntk/methods/structured.py).

    Pass `taps=Taps(values_BxTxM)` to `features` (or Backbone.__call__). Keys are the paths of the Dense modules
    in params["backbone"], e.g. ("layers", 3, "attn", "q"), and EMBED for the embedding rows. Each Dense adds
    values_BxTxM[key] (B, T, m) to its output y = x @ kernel (+ bias) and records its input u = x (B, T, n) in
    `inputs_BxTxN[key]`; the lookup adds values_BxTxM[EMBED] (B, T, d) to x and records `ids_BxT` and
    `positions_BxT`. With values None nothing is added (record only: run it under jax.eval_shape to learn the
    tap shapes). The VJP with respect to zero taps is the cotangent δ of every Dense output (and of the looked-up
    rows), from one backward pass through the activations only; a kernel's gradient Σ_t δ_t u_tᵀ is never formed.
    A Taps object is filled during one call: create a fresh one per call (inside the traced function).
    """

    def __init__(self, values_BxTxM=None, _path=(), _record=None):
        self.values_BxTxM = values_BxTxM
        self.path = _path
        self._record = {"inputs": {}, "lookup": None} if _record is None else _record

    def scope(self, *names) -> "Taps":
        """A view for a submodule (the path extended by `names`), sharing the values and the record."""
        return Taps(self.values_BxTxM, self.path + names, self._record)

    @property
    def inputs_BxTxN(self) -> dict:
        return self._record["inputs"]

    @property
    def ids_BxT(self):
        return self._record["lookup"][0]

    @property
    def positions_BxT(self):
        return self._record["lookup"][1]

    def _add(self, key, y):
        return y if self.values_BxTxM is None else y + self.values_BxTxM[key].astype(y.dtype)

    def dense(self, x, y):
        """Record the input x of the Dense at this path and return its output y plus the tap."""
        self._record["inputs"][self.path] = x
        return self._add(self.path, y)

    def embed(self, ids, positions, x):
        """Record the lookup (ids, positions) and return the looked-up rows x plus the tap."""
        self._record["lookup"] = (ids, positions)
        return self._add(EMBED, x)


def _scope(taps, *names):
    return None if taps is None else taps.scope(*names)


def _param(rngs, shape, init=_INIT):
    return nnx.Param(init(rngs.params(), shape, jnp.float32))


def narrow(x, w):
    """x in w's dtype when w is a 16-bit float (bfloat16 / float16 compute: the matmul runs in that type); x
    itself otherwise (float32 and float64 programs are untouched)."""
    return x.astype(w.dtype) if jnp.dtype(w.dtype).itemsize == 2 and x.dtype != w.dtype else x


class Dense(nnx.Module):
    """x @ kernel (+ bias); kernel stored (in, out). With 16-bit params (a bfloat16 compute dtype: cast_params)
    x enters the product in the kernel's type; an int8 kernel (the sampler's weights, quantize.int8_graphdef) is
    multiplied by quantize.int8_matmul with its per-column `kernel_scale`."""

    def __init__(self, d_in, d_out, bias, rngs):
        self.kernel = _param(rngs, (d_in, d_out))
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if bias else None

    def __call__(self, x, taps=None):
        w = self.kernel[...]
        # as one (rows, in) @ (in, out) product: on 3-d x, XLA:CPU's backward pass wrote the SwiGLU's gradient
        # transposed from inside its elementwise fusion, ~7x slower than such fusions in row order
        # (benchmarks/RESULTS.md, issue 28); the same values up to float rounding
        x2 = x.reshape(-1, x.shape[-1])
        if w.dtype == jnp.int8:  # the sampler's int8 weights (models/quantize.py): kernel_scale per output column
            y = int8_matmul(x2, w, self.kernel_scale[...])
        else:
            y = narrow(x2, w) @ w
        y = y.reshape(*x.shape[:-1], w.shape[-1])
        y = y + self.bias[...] if self.bias is not None else y
        return y if taps is None else taps.dense(x, y)


class Norm(nnx.Module):
    """LayerNorm (scale, bias) or RMSNorm (scale), computed in at least float32 (float64 stays float64).
    offset (Gemma): the RMSNorm multiplies by (1 + scale), and scale starts at 0."""

    def __init__(self, d, eps, rms, offset=False):
        self.scale = nnx.Param((jnp.zeros if offset else jnp.ones)((d,), jnp.float32))
        self.bias = None if rms else nnx.Param(jnp.zeros((d,), jnp.float32))
        self.eps, self.rms, self.offset = eps, rms, offset

    def __call__(self, x):
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.rms:
            w = 1.0 + self.scale[...] if self.offset else self.scale[...]
            return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps) * w
        mu = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


def activation(name):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("silu", "swish"):
        return jax.nn.silu
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unknown activation {name!r}; expected gelu, gelu_new, silu or relu")


def rope(x, positions, rotary_dim, theta):
    """Rotary embedding (rotate-half convention of GPT-NeoX/Llama) on the first `rotary_dim` dims of x (B,T,H,hd)."""
    if rotary_dim == 0:
        return x
    ft = jnp.promote_types(x.dtype, jnp.float32)  # the angles in at least float32 (positions up to 2048 and more)
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=ft) / rotary_dim))
    ang = positions.astype(ft)[..., None] * inv_freq  # (B, T, rd/2)
    ang = jnp.concatenate([ang, ang], -1)[:, :, None, :]
    cos, sin = jnp.cos(ang).astype(x.dtype), jnp.sin(ang).astype(x.dtype)
    xr, xp = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rot = jnp.concatenate([-xr[..., half:], xr[..., :half]], -1)
    return jnp.concatenate([xr * cos + rot * sin, xp], -1)


def _norm(cfg: ModelConfig, d):
    """The family's norm over d features: LayerNorm (GPT-2, NeoX), RMSNorm (Llama), (1 + w) RMSNorm (Gemma)."""
    return Norm(d, cfg.norm_eps, cfg.family in ("llama", "gemma3"), cfg.family == "gemma3")


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs, layer: int = 0):
        d, hd = cfg.d_model, cfg.head_dim
        self.q = Dense(d, cfg.n_heads * hd, cfg.qkv_bias, rngs)
        self.k = Dense(d, cfg.n_kv_heads * hd, cfg.qkv_bias, rngs)
        self.v = Dense(d, cfg.n_kv_heads * hd, cfg.qkv_bias, rngs)
        self.o = Dense(cfg.n_heads * hd, d, cfg.out_bias, rngs)
        self.q_norm = _norm(cfg, hd) if cfg.qk_norm else None
        self.k_norm = _norm(cfg, hd) if cfg.qk_norm else None
        self.cfg = cfg
        self.window, self.theta = cfg.layer_window(layer), cfg.layer_rope_theta(layer)

    def __call__(self, x, positions, q_slot, key_valid, cache=None, start=0, taps=None, segments=None):
        """x (B,T,d); positions (B,T); q_slot (T,) absolute key slots of the queries; key_valid (B,S).
        cache: (k, v) buffers, k (B,KV,hd,S) and v (B,KV,S,hd), written at `start`, or None (keys are x's own
        tokens, S = T). The cached products read their operands in the order XLA:CPU's matmuls take without a
        copy (a cache stored (B,S,KV,hd) was copied transposed after every write: issue 28); the same values
        up to float rounding. taps: a Taps view for this module (see Taps), or None.
        segments: None, or (q_seg (B,T), k_seg (B,S), k_pos (B,S)) for rows that pack several sequences (the
        packed update, rl/packing.py): a key is then visible when it is valid, of the query's segment, at a
        position <= the query's (k_pos against `positions`) and, in a sliding layer, less than `sliding_window`
        positions back; slots no longer order the keys."""
        cfg = self.cfg
        B, T, _ = x.shape
        hd, H, KV = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        q = self.q(x, _scope(taps, "q")).reshape(B, T, H, hd)
        k = self.k(x, _scope(taps, "k")).reshape(B, T, KV, hd)
        if self.q_norm is not None:  # per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q = rope(q, positions, cfg.rotary_dim, self.theta)
        k = rope(k, positions, cfg.rotary_dim, self.theta)
        v = self.v(x, _scope(taps, "v")).reshape(B, T, KV, hd)
        qg = q.reshape(B, T, KV, H // KV, hd)
        if cache is None:
            scores = jnp.einsum("btkgd,bskd->bkgts", qg, k)
        else:
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype).transpose(0, 2, 3, 1),
                                             (0, 0, 0, start))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype).transpose(0, 2, 1, 3),
                                             (0, 0, start, 0))
            cache = (k, v)
            scores = jnp.einsum("bkgtd,bkds->bkgts", qg.transpose(0, 2, 3, 1, 4), k)
        S = scores.shape[-1]
        scale = cfg.query_pre_attn_scalar or hd
        scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))  # softmax in at least float32
        scores = scores / jnp.sqrt(jnp.asarray(scale, scores.dtype))
        if cfg.attn_logit_softcapping is not None:
            scores = softcap(scores, cfg.attn_logit_softcapping)
        if segments is None:
            k_slot = jnp.arange(S)[None, :]
            visible = k_slot <= q_slot[:, None]  # (T,S)
            if self.window is not None:
                visible = visible & (k_slot > q_slot[:, None] - self.window)
            visible = visible[None] & key_valid[:, None, :]  # (B,T,S)
        else:
            q_seg, k_seg, k_pos = segments
            qp, kp = positions[:, :, None], k_pos[:, None, :]
            visible = (k_seg[:, None, :] == q_seg[:, :, None]) & (kp <= qp) & key_valid[:, None, :]  # (B,T,S)
            if self.window is not None:
                visible = visible & (kp > qp - self.window)
        scores = jnp.where(visible[:, None, None], scores, jnp.finfo(scores.dtype).min)
        p = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        if cache is None:
            out = jnp.einsum("bkgts,bskd->btkgd", p, v)
        else:
            out = jnp.einsum("bkgts,bksd->bkgtd", p, v).transpose(0, 3, 1, 2, 4)
        out = out.reshape(B, T, H * hd)
        return self.o(out, _scope(taps, "o")), cache


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs):
        self.gated = cfg.family in ("llama", "gemma3")
        self.up = Dense(cfg.d_model, cfg.d_ff, cfg.out_bias, rngs)
        self.gate = Dense(cfg.d_model, cfg.d_ff, False, rngs) if self.gated else None
        self.down = Dense(cfg.d_ff, cfg.d_model, cfg.out_bias, rngs)
        self.act = activation(cfg.activation)

    def __call__(self, x, taps=None):
        if self.gated:  # SwiGLU (GELU-tanh GLU for Gemma)
            g = self.act(self.gate(x, _scope(taps, "gate")))
            return self.down(g * self.up(x, _scope(taps, "up")), _scope(taps, "down"))
        return self.down(self.act(self.up(x, _scope(taps, "up"))), _scope(taps, "down"))


class Block(nnx.Module):
    """x + attn(ln1 x), then + mlp(ln2 x); GPT-NeoX adds both to x (parallel); Gemma norms each output too:
    x + post_attn(attn(ln1 x)), then + post_mlp(mlp(ln2 x))."""

    def __init__(self, cfg: ModelConfig, rngs, layer: int = 0):
        self.ln1 = _norm(cfg, cfg.d_model)
        self.ln2 = _norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, rngs, layer)
        self.mlp = MLP(cfg, rngs)
        gemma = cfg.family == "gemma3"
        self.post_attn = _norm(cfg, cfg.d_model) if gemma else None
        self.post_mlp = _norm(cfg, cfg.d_model) if gemma else None
        self.parallel = cfg.parallel_residual

    def __call__(self, x, positions, q_slot, key_valid, cache=None, start=0, taps=None, segments=None):
        a, cache = self.attn(self.ln1(x), positions, q_slot, key_valid, cache, start, _scope(taps, "attn"), segments)
        if self.parallel:  # GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)
            return x + a + self.mlp(self.ln2(x), _scope(taps, "mlp")), cache
        x = x + (a if self.post_attn is None else self.post_attn(a))
        m = self.mlp(self.ln2(x), _scope(taps, "mlp"))
        return x + (m if self.post_mlp is None else self.post_mlp(m)), cache


class Backbone(nnx.Module):
    """ψ: everything but the head. __call__ returns h (B,T,d), the output of the final norm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = None if cfg.tie_word_embeddings else nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs,
                                                                     embedding_init=_INIT)
        self.pos = nnx.Embed(cfg.max_positions, cfg.d_model, rngs=rngs, embedding_init=jax.nn.initializers.normal(
            0.01)) if cfg.family == "gpt2" else None
        self.layers = nnx.List([Block(cfg, rngs, i) for i in range(cfg.n_layers)])
        self.ln_f = _norm(cfg, cfg.d_model)

    def __call__(self, ids, head_table=None, positions=None, q_slot=None, key_valid=None, caches=None, start=0,
                 taps=None, remat=False, segments=None):
        """ids (B,T). head_table: W, the input table of a tied model. positions default to 0..T-1, q_slot to
        start..start+T-1, key_valid to all-true. caches: list of per-layer (k, v) or None. segments: packed rows'
        visibility (Attention), the same for every layer, or None. taps: a Taps (zero
        taps and a record of layer inputs, for structured derivatives) or None. remat: rematerialise each layer
        (jax.checkpoint): a reverse pass keeps only the layers' inputs and recomputes their insides, trading about
        one more forward for the activation memory of all layers but one (not with caches or taps). Returns
        (h, caches)."""
        if remat and (caches is not None or taps is not None or segments is not None):
            raise ValueError("remat=True is for teacher-forced passes: it takes neither caches, taps nor segments")
        B, T = ids.shape
        table = head_table if self.embed is None else self.embed.embedding[...]
        x = jnp.take(table, ids, axis=0)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        if q_slot is None:
            q_slot = start + jnp.arange(T, dtype=jnp.int32)
        if key_valid is None:
            S = T if caches is None else caches[0][1].shape[2]
            key_valid = jnp.ones((B, S), bool)
        if self.pos is not None:
            x = x + jnp.take(self.pos.embedding[...], positions, axis=0)
        if taps is not None:
            x = taps.embed(ids, positions, x)
        if self.cfg.family == "gemma3":  # √d, after the tap: the tap's cotangent is the table rows' gradient
            x = x * jnp.sqrt(jnp.asarray(self.cfg.d_model, x.dtype))
        new = []
        for i, layer in enumerate(self.layers):
            if remat:
                x = _remat_layer(layer, x, positions, q_slot, key_valid, start)
                continue
            x, c = layer(x, positions, q_slot, key_valid, None if caches is None else caches[i], start,
                         _scope(taps, "layers", i), segments)
            new.append(c)
        return self.ln_f(x), (new if caches is not None else None)


@functools.partial(nnx.remat, static_argnums=(5,))
def _remat_layer(layer, x, positions, q_slot, key_valid, start):
    """One Block without a cache, its activations recomputed in the reverse pass (Backbone(remat=True))."""
    return layer(x, positions, q_slot, key_valid, None, start)[0]


def init_params(cfg: ModelConfig, seed: int = 0):
    """Random parameters {"backbone", "head"} (normal(0.02) weights, as GPT-2/Pythia initialise) and the graphdef."""
    backbone = Backbone(cfg, nnx.Rngs(params=seed))
    graphdef, state = nnx.split(backbone)
    head = {"W": _INIT(jax.random.fold_in(jax.random.key(seed), 7), (cfg.vocab_size, cfg.d_model), jnp.float32)}
    return graphdef, {"backbone": nnx.to_pure_dict(state), "head": head}


@functools.lru_cache(maxsize=64)
def graphdef_for(cfg: ModelConfig):
    """The graphdef of the backbone without allocating parameters; one per config, so that every LM of the same
    config shares it and the jitted functions that take it as a static argument compile once."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Backbone(cfg, nnx.Rngs(params=0))))
    return graphdef


def abstract_params(cfg: ModelConfig):
    """ShapeDtypeStructs of the parameter pytree, without allocating it."""
    return jax.eval_shape(lambda: init_params(cfg, 0)[1])


def apply_head(head, h, w_t=None):
    """z = W h + b (spec notation; W is (V, d)). With a 16-bit W (cast_params) h enters in W's type and z comes
    out in float32. w_t: W.T (d, V), taken by a caller that applies the head at every step of a loop once,
    outside it (the sampler): inside the loop XLA folds the transpose into the product, and XLA:CPU's matmul
    read the weight in that form about half as fast at decode batch sizes (issue 28); the same values up to
    float rounding. A head with "Wq" (int8 weights for sampling) multiplies by those instead."""
    W = head["W"]
    if "Wq" in head:  # the sampler's int8 head (quantize.int8_params): W.T as int8 with per-column scales
        z = int8_matmul(h, head["Wq"], head["Wq_scale"])
        return z + head["b"] if "b" in head else z
    w_t = W.T if w_t is None else w_t
    if jnp.dtype(W.dtype).itemsize == 2:
        z = jnp.matmul(narrow(h, W), w_t, preferred_element_type=jnp.float32)
    else:
        z = h @ w_t
    return z + head["b"] if "b" in head else z


COMPUTE_DTYPES = ("float32", "bfloat16")


def cast_params(params, compute_dtype: str = "float32"):
    """The params for a forward pass in `compute_dtype`: "float32" returns them as they are; "bfloat16" casts
    every floating leaf (differentiably: gradients flow back to the float32 master weights in float32). In such a
    pass the matmuls take bfloat16 operands, while the embedding's residual stream, the norms, the attention
    softmax, RoPE's angles and the head's logits stay in float32."""
    if compute_dtype == "float32":
        return params
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {compute_dtype!r}; expected one of {COMPUTE_DTYPES}")
    dt = jnp.dtype(compute_dtype)
    return jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def softcap(x, c):
    """c·tanh(x / c): Gemma's soft-capping of attention scores and logits (|result| < c)."""
    return c * jnp.tanh(x / c)


def head_logits(cfg: ModelConfig, head, h, w_t=None):
    """The model's logits: z = W h + b, soft-capped to c·tanh(z / c) when cfg.final_logit_softcapping = c. With
    the capping the head is not linear in W, so the R/G split of spec §1 does not apply to such a model. w_t:
    see apply_head."""
    z = apply_head(head, h, w_t)
    return z if cfg.final_logit_softcapping is None else softcap(z, cfg.final_logit_softcapping)


def require_linear_head(cfg: ModelConfig, what: str) -> None:
    """ValueError unless the model's logits are z = W h + b: `what` (the eNTK split, the one-step split) rests on
    the linear head of spec §1, which final-logit soft-capping (Gemma-2-style checkpoints) makes nonlinear."""
    if cfg.final_logit_softcapping is not None:
        raise ValueError(f"{what} needs logits z = W h + b; this model soft-caps them (final_logit_softcapping="
                         f"{cfg.final_logit_softcapping}), a nonlinear head for which the R/G split of spec §1 does "
                         "not hold")


def features(graphdef, cfg: ModelConfig, params, ids, **kw):
    """h(c) for every position of ids: the output of the final norm. Pure in params. Keywords go to
    Backbone.__call__ (positions, q_slot, key_valid, caches, start, taps, remat, segments)."""
    backbone = nnx.merge(graphdef, params["backbone"])
    table = params["head"]["W"] if cfg.tie_word_embeddings else None
    return backbone(ids, table, **kw)


def prefill(graphdef, cfg: ModelConfig, params, prompt_ids, positions, key_valid, length: int, dtype=jnp.float32,
            group: int = 1):
    """Run left-padded prompts (B, Tp) into a fresh KV cache of `length` slots (per layer k (B, n_kv_heads,
    head_dim, length) and v (B, n_kv_heads, length, head_dim): Attention); key_valid (B, length) masks the
    padding. Returns (h at the last prompt token (B, d), caches); the continuation runs on the caches from slot
    Tp.

    group = G > 1: rows come in consecutive groups of G with the same prompt (an RL batch of P prompts × G
    samples; the caller guarantees it). Each prompt then runs once and its features and cache are repeated G
    times, which saves (G − 1)/G of the prompt tokens' work (and, in a reverse pass, their gradients sum back
    through the repeat). Equal to group = 1 up to float rounding."""
    B, Tp = prompt_ids.shape
    G = int(group)
    if G < 1 or B % G:
        raise ValueError(f"group must be >= 1 and divide the batch ({B} rows); got {G}")
    rows = B // G
    caches = [(jnp.zeros((rows, cfg.n_kv_heads, cfg.head_dim, length), dtype),
               jnp.zeros((rows, cfg.n_kv_heads, length, cfg.head_dim), dtype)) for _ in range(cfg.n_layers)]
    h, caches = features(graphdef, cfg, params, prompt_ids[::G], positions=positions[::G, :Tp],
                         key_valid=key_valid[::G], caches=caches, start=0)
    h = h[:, -1]
    if G > 1:
        h = jnp.repeat(h, G, axis=0)
        caches = [tuple(jnp.repeat(x, G, axis=0) for x in c) for c in caches]
    return h, caches
