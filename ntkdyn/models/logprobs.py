"""Teacher-forced log-probabilities: the only place where logits become log π(token | context).

    logp = token_logp(z, targets)                      # log softmax(z / T)[target], any leading shape
    st = head_stats(cfg, head, h, targets, chunk=512)  # log π, entropy, max-prob from features, the head in chunks
    logp = next_token_logp(graphdef, cfg, params, ids) # (B, T-1): log π(ids[:, t] | ids[:, <t]) for right-padded ids

Memory (issue #23): the logits of n tokens are an (n, V) float32 array, and a loss through log_softmax keeps
several of them alive for its backward pass (the logits, the log-probs, the probabilities and their cotangents).
`head_stats` runs the head over `chunk` tokens at a time (jax.lax.map over chunks of the flattened token axis,
the chunk function under jax.checkpoint), so the forward pass holds one (chunk, V) block at a time and the
backward pass recomputes each chunk's logits instead of storing them: the (n, V) array never exists. The numbers
are those of the full pass (the same per-row formulas; equal to float rounding, tested to 1e-5 in float32).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import ModelConfig
from .transformer import features, head_logits

__all__ = ["DEFAULT_CHUNK", "log_softmax", "gather", "token_logp", "head_stats", "next_token_logp"]

# tokens per head chunk: (512, V) float32 is 100 MB at V = 50k, and a (512, d) × (d, V) product still runs at
# full speed on a CPU or an accelerator
DEFAULT_CHUNK = 512


def log_softmax(z, temperature: float = 1.0):
    """log π_T(· | c) = log_softmax(z / T) over the last axis, in float32 (float64 stays float64)."""
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    return jax.nn.log_softmax(z if temperature == 1.0 else z / temperature, axis=-1)


def gather(logp, targets):
    """logp[..., targets]: (..., V) log-probs and (...) int targets -> (...)."""
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def token_logp(z, targets, temperature: float = 1.0):
    """log π_T(target | c) from logits z (..., V) and targets (...)."""
    return gather(log_softmax(z, temperature), targets)


def _stats_of_logits(z, targets, temperature, with_model_stats):
    """The per-token statistics of logits z (n, V) at targets (n,) (see head_stats)."""
    lsm = log_softmax(z)  # the model's own distribution (temperature 1), float32
    out = {"logp": gather(lsm, targets) if temperature == 1.0 else token_logp(z, targets, temperature)}
    if with_model_stats:
        p = jnp.exp(lsm)
        out["logp_model"] = gather(lsm, targets)
        out["entropy"] = -jnp.sum(p * jnp.where(p > 0, lsm, 0.0), axis=-1)
        out["max_prob"] = jnp.exp(jnp.max(lsm, axis=-1))
    return out


def head_stats(cfg: ModelConfig, head, h, targets, *, temperature: float = 1.0, with_model_stats: bool = True,
               chunk: int = DEFAULT_CHUNK):
    """Per-token statistics of the model's next-token distribution at features h (..., d) and targets (...):

      "logp"        log π_T(target | c) = log_softmax(z / T)[target]      (z = head_logits(cfg, head, h))
      and when `with_model_stats`, of the model's own distribution π = softmax(z) (temperature 1):
      "logp_model"  log π(target | c)
      "entropy"     −Σ_k π_k log π_k  (terms with π_k = 0 count 0)
      "max_prob"    max_k π_k

    each of the shape of `targets`, float32. chunk: the head runs over at most `chunk` tokens of the flattened
    leading axes at a time (the fewest chunks, all of one size), each chunk rematerialised in a reverse pass
    (module docstring); chunk = 0 or >= the number of tokens is one pass over the full (n, V) logits. Pure in head
    and h (jax.grad flows through both)."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ValueError(f"chunk must be an integer >= 0 (tokens per head chunk; 0: all at once); got {chunk!r}")
    lead, d = targets.shape, h.shape[-1]
    hf, tf = h.reshape(-1, d), targets.reshape(-1)
    n = tf.shape[0]

    def stats(xs):
        return _stats_of_logits(head_logits(cfg, head, xs[0]), xs[1], temperature, with_model_stats)

    if chunk == 0 or chunk >= n:
        out = stats((hf, tf))
    else:
        k = -(-n // chunk)
        chunk = -(-n // k)  # k chunks of equal size, the fewest padding rows (n a multiple of chunk: unchanged)
        pad = k * chunk - n  # zero features and target 0 on the padding rows: finite, then cut off
        xs = (jnp.pad(hf, ((0, pad), (0, 0))).reshape(k, chunk, d), jnp.pad(tf, (0, pad)).reshape(k, chunk))
        out = {key: v.reshape(-1)[:n] for key, v in jax.lax.map(jax.checkpoint(stats), xs).items()}
    return {key: v.reshape(lead) for key, v in out.items()}


def next_token_logp(graphdef, cfg: ModelConfig, params, ids, *, chunk: int = 0):
    """(B, T-1) log π(ids[b, t] | ids[b, <t]) for t = 1..T-1 in one forward pass over ids[:, :-1] (rows start at
    column 0; right padding only affects the positions after it), the head in chunks of `chunk` tokens
    (head_stats). Pure in params. The default, 0, is the full logits: SFT (sft.sequence_ce) keeps the exact
    arithmetic that built the shipped default models, so that rebuilding one stays bit-identical."""
    h = features(graphdef, cfg, params, ids[:, :-1])[0]
    return head_stats(cfg, params["head"], h, ids[:, 1:], with_model_stats=False, chunk=chunk)["logp"]
