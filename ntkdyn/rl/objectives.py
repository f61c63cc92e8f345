"""RL objectives as pure, jit-able functions of arrays (spec section 2).

Shapes: a step's batch holds P prompts × G samples, flattened prompt-major (row b = p·G + g); completions are
(B, N) with a 0/1 mask over the generated tokens up to and including EOS. Per-token quantities are (B, N).

* :func:`advantages`  -- A_j for "grpo", "dr_grpo", "rloo", "reinforce" (zero-variance groups give A = 0 exactly).
* :func:`completion_logp` -- log π(y_l | x, y_<l) of the completion tokens by teacher forcing over [prompt; completion]
  in ONE forward pass, with the policy entropy and max-probability at the same contexts.
* :func:`kl_penalty`   -- per-token KL(π‖π_ref) estimators "k1" and "k3".
* :func:`aggregate`    -- "token_mean" or "seq_mean_token_mean" (the spec's J: 1/G Σ_j 1/|y_j| Σ_l ...).
* :func:`pg_loss`      -- the clipped policy-gradient loss −J (+ β·KL) and its aux metrics.
* :func:`make_optimizer` -- optax optimizer restricted to a parameter group ("all", "head", "backbone"); it lives in
  :mod:`ntkdyn.optim` (the one optimizer construction) and is re-exported here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..models.logprobs import DEFAULT_CHUNK, head_stats
from ..models.transformer import features, prefill
from ..optim import GROUPS, OPTIMIZERS, group_labels, make_optimizer, trainable_keys

__all__ = ["ADVANTAGE_KINDS", "LOSS_AGGS", "KL_ESTIMATORS", "GROUPS", "OPTIMIZERS", "advantages",
           "completion_logp", "kl_penalty", "aggregate", "pg_loss", "group_labels", "make_optimizer",
           "trainable_keys", "global_norm"]

ADVANTAGE_KINDS = ("grpo", "dr_grpo", "rloo", "reinforce")
LOSS_AGGS = ("token_mean", "seq_mean_token_mean")
KL_ESTIMATORS = ("k1", "k3")


# ----------------------------------------------------------------------------- advantages


def advantages(rewards_PxG, kind: str = "grpo", *, baseline=None, decay: float = 0.9, eps: float = 1e-4):
    """Advantages A (P, G) of rewards r (P prompts × G samples) and the updated REINFORCE baseline.

    * "grpo":      A_j = (r_j − mean_g r) / (std_g r + eps)   (std with Bessel's correction, as TRL)
    * "dr_grpo":   A_j = r_j − mean_g r                        (Dr. GRPO: no std scaling)
    * "rloo":      A_j = r_j − (Σ_{i≠j} r_i) / (G − 1)         (leave-one-out mean of the others)
    * "reinforce": A_j = r_j − b, with b the running baseline (`baseline`, a scalar; NaN or None = not yet set,
      then b = mean of this batch); the returned baseline is the EMA  b' = decay·b + (1 − decay)·mean(r).

    For the group-relative kinds a group whose rewards are all equal gets A = 0 exactly (never NaN), whatever the
    rounding of the mean. Returns (A (P, G) float32, new_baseline scalar float32).
    """
    r = jnp.asarray(rewards_PxG, jnp.float32)
    if r.ndim != 2:
        raise ValueError(f"rewards must be (prompts, group_size); got shape {r.shape}")
    P, G = r.shape
    b_in = jnp.asarray(jnp.nan if baseline is None else baseline, jnp.float32)
    if kind == "reinforce":
        b = jnp.where(jnp.isnan(b_in), jnp.mean(r), b_in)
        return r - b, decay * b + (1.0 - decay) * jnp.mean(r)
    if G < 2:
        raise ValueError(f"advantage kind {kind!r} needs group_size >= 2; got {G}")
    constant = jnp.all(r == r[:, :1], axis=1, keepdims=True)  # zero-variance groups
    mean = jnp.mean(r, axis=1, keepdims=True)
    if kind == "grpo":
        std = jnp.std(r, axis=1, keepdims=True, ddof=1)
        a = (r - mean) / (std + eps)
    elif kind == "dr_grpo":
        a = r - mean
    elif kind == "rloo":
        a = r - (jnp.sum(r, axis=1, keepdims=True) - r) / (G - 1)
    else:
        raise ValueError(f"unknown advantage kind {kind!r}; expected one of {ADVANTAGE_KINDS}")
    return jnp.where(constant, 0.0, a), b_in


# ----------------------------------------------------------------------------- log-probs by teacher forcing


def completion_logp(graphdef, cfg, params, prompt_ids, prompt_mask, completion, *, temperature: float = 1.0,
                    with_model_stats: bool = True, remat: bool = False, shared_prompts: int = 1,
                    chunk: int = DEFAULT_CHUNK, packing=None):
    """Teacher forcing over χ = [x; y] in one forward pass.

    prompt_ids (B, Tp) LEFT-padded with prompt_mask (1 on real tokens); completion (B, N). Positions count real
    tokens only and padding is masked out of attention, exactly as in the KV-cache sampler, so the result equals
    the sampler's log-probs up to float rounding.

    Returns a dict of (B, N) arrays: "logp" log π_T(y_l | c_l) under the policy at `temperature` (the sampling
    distribution, as TRL), and when `with_model_stats` "logp_model", "entropy" and "max_prob" of the model's own
    distribution (temperature 1) at the same contexts. remat: each layer rematerialised in a reverse pass
    through this (transformer.Backbone's remat). shared_prompts = G > 1: rows come in consecutive groups of G with
    the same prompt (an RL batch of P prompts × G samples); each prompt then runs once, and its keys and values
    are shared by the G completions (repeated; their gradients sum back), which saves (G − 1)/G of the prompt
    tokens' forward and backward. The caller guarantees the grouping; the result equals the plain pass up to
    float rounding (tested). Not with remat (the shared pass goes through the KV cache). chunk: completion
    tokens per head chunk (logprobs.head_stats: the (B·N, V) logits never exist at once; 0: all at once).
    packing: None, or the arrays of a rl/packing.pack of this batch's mask (a packing.Packing of jax arrays):
    the completions' inputs then run packed end to end into its R rows (`_packed_stats`; with the prompts shared
    by groups of `shared_prompts` rows), which skips the padding after each EOS; the statistics come back in the
    (B, N) layout, equal to the padded pass's up to float rounding on the mask's tokens (elsewhere finite values
    of no meaning). Not with remat.
    """
    B, Tp = prompt_ids.shape
    N = completion.shape[1]
    if packing is not None:
        if remat:
            raise ValueError("completion_logp: packing runs through the prompts' cache, which remat does not take")
        return _packed_stats(graphdef, cfg, params, prompt_ids, prompt_mask, completion, packing,
                             max(int(shared_prompts), 1), temperature=temperature,
                             with_model_stats=with_model_stats, chunk=chunk)
    ids = jnp.concatenate([prompt_ids, completion], axis=1)[:, :-1]  # the last token predicts nothing
    valid = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((B, N - 1), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    G = int(shared_prompts)
    if G > 1 and not remat and B % G == 0:
        h = _shared_prompt_features(graphdef, cfg, params, prompt_ids, completion, positions, valid, G)
    else:
        h = features(graphdef, cfg, params, ids, positions=positions, key_valid=valid, remat=remat)[0][:, Tp - 1:]
    # h (B, N, d): the features at the N contexts that predict the completion tokens; the head in chunks
    return head_stats(cfg, params["head"], h, completion, temperature=temperature,
                      with_model_stats=with_model_stats, chunk=chunk)


def _shared_prompt_features(graphdef, cfg, params, prompt_ids, completion, positions, valid, G):
    """completion_logp's h (B, N, d) with each group's prompt run once (transformer.prefill with group G); the
    completions run on the repeated cache from slot Tp (as the sampler continues a prefill)."""
    Tp, N = prompt_ids.shape[1], completion.shape[1]
    dtype = jnp.promote_types(params["head"]["W"].dtype, jnp.float32)
    first, caches = prefill(graphdef, cfg, params, prompt_ids, positions, valid, Tp + N - 1, dtype, group=G)
    first = first[:, None]  # h at the last prompt token predicts the first completion token
    if N == 1:
        return first
    hc = features(graphdef, cfg, params, completion[:, :-1], positions=positions[:, Tp:], key_valid=valid,
                  caches=caches, start=Tp)[0]
    return jnp.concatenate([first, hc], axis=1)


def _packed_stats(graphdef, cfg, params, prompt_ids, prompt_mask, completion, pk, G, **head_kw):
    """completion_logp over packed completions (rl/packing.py). The P = B / G prompts run once into a cache of
    Tp slots (transformer.prefill); packed row r's keys are its K segments' prompts (K·Tp slots, gathered) and
    then its own W tokens, each token seeing only its segment's prompt and its segment's earlier tokens
    (Attention's `segments`, by position). The head runs once over [the B first tokens' features (the prompt's
    last token); the R·W packed features] and `unpack` returns every statistic to (B, N)."""
    B, Tp = prompt_ids.shape
    N = completion.shape[1]
    R, K = pk.rows.shape
    W = pk.src.shape[1]
    valid = prompt_mask.astype(bool)
    ppos = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)  # the prompts' token positions
    dtype = jnp.promote_types(params["head"]["W"].dtype, jnp.float32)
    first, caches = prefill(graphdef, cfg, params, prompt_ids[::G], ppos[::G], valid[::G], Tp, dtype)
    used = pk.rows >= 0
    p_of = jnp.where(used, pk.rows, 0) // G  # (R, K): the prompt of each segment slot
    # the keys' segments and positions: K prompts of Tp slots (−2 on unused slots and prompt padding), then W
    k_seg = jnp.concatenate([jnp.where(used[:, :, None] & valid[::G][p_of], jnp.arange(K)[None, :, None], -2)
                             .reshape(R, K * Tp), pk.seg], axis=1)
    flat = completion.reshape(-1)
    b_tok, j_tok = pk.src // N, pk.src % N
    pos = jnp.sum(valid, axis=1).astype(jnp.int32)[b_tok] + j_tok  # y_j of row b sits at n_prompt(b) + j
    k_pos = jnp.concatenate([ppos[::G][p_of].reshape(R, K * Tp), pos], axis=1)

    def packed_cache(k, v):  # k (P, KV, hd, Tp), v (P, KV, Tp, hd) -> the R rows' K prompts and W free slots
        kk = jnp.moveaxis(k[p_of], 1, 3).reshape(R, *k.shape[1:3], K * Tp)
        vv = jnp.moveaxis(v[p_of], 1, 2).reshape(R, v.shape[1], K * Tp, v.shape[3])
        return (jnp.concatenate([kk, jnp.zeros((*kk.shape[:3], W), kk.dtype)], axis=3),
                jnp.concatenate([vv, jnp.zeros((vv.shape[0], vv.shape[1], W, vv.shape[3]), vv.dtype)], axis=2))

    hp = features(graphdef, cfg, params, flat[pk.src], positions=pos, caches=[packed_cache(*c) for c in caches],
                  start=K * Tp, segments=(pk.seg, k_seg, k_pos))[0]
    d = hp.shape[-1]
    h = jnp.concatenate([jnp.repeat(first, G, axis=0), hp.reshape(R * W, d)], axis=0)[None]
    targets = jnp.concatenate([completion[:, 0], flat[jnp.minimum(pk.src + 1, B * N - 1)].reshape(-1)])[None]
    st = head_stats(cfg, params["head"], h, targets, **head_kw)
    return {key: v[0][pk.unpack] for key, v in st.items()}


# ----------------------------------------------------------------------------- loss pieces


def kl_penalty(logp, logp_ref, estimator: str = "k3"):
    """Per-token estimate of KL(π‖π_ref) at a token sampled from π (Schulman's estimators):
    "k1": log π − log π_ref;  "k3": exp(log π_ref − log π) − (log π_ref − log π) − 1  (>= 0, unbiased)."""
    if estimator == "k1":
        return logp - logp_ref
    if estimator == "k3":
        d = logp_ref - logp
        return jnp.exp(d) - d - 1.0
    raise ValueError(f"unknown kl_estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def aggregate(x_BxN, mask_BxN, loss_agg: str = "seq_mean_token_mean", norm=None):
    """Masked mean of a per-token quantity.
    "token_mean":          Σ_{b,l} m x / Σ_{b,l} m            (every completion token of the batch weighs the same)
    "seq_mean_token_mean": (1/B) Σ_b [Σ_l m x / Σ_l m]         (the spec's J: each sequence weighs the same)
    Empty masks give 0, never NaN. norm = (tokens, rows): the denominators Σ m and B of a whole batch of which
    these rows are a part (a micro-batch): the parts' aggregates then sum to the whole batch's."""
    m = mask_BxN.astype(jnp.float32)
    if loss_agg == "token_mean":
        return jnp.sum(x_BxN * m) / jnp.maximum(jnp.sum(m) if norm is None else norm[0], 1.0)
    if loss_agg == "seq_mean_token_mean":
        per_seq = jnp.sum(x_BxN * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        return jnp.mean(per_seq) if norm is None else jnp.sum(per_seq) / norm[1]
    raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGS}")


def pg_loss(logp, logp_old, adv_B, mask, *, clip_eps: float = 0.2, loss_agg: str = "seq_mean_token_mean",
            logp_ref=None, beta: float = 0.0, kl_estimator: str = "k3", norm=None):
    """Clipped policy-gradient loss (PPO / GRPO form), to be MINIMISED:

      ratio ρ = exp(log π − log π_old),  per token  ℓ = −min(ρ A, clip(ρ, 1−ε, 1+ε) A) + β KL_est,
      loss = aggregate(ℓ).

    With logp_old = None the batch is on-policy and π_old = stop_gradient(π): ρ = 1, no clipping, and the gradient
    is −∇J with J = aggregate(A log π) (spec: J = 1/G Σ_j 1/|y_j| Σ_l A_j log π(y_jl | c_jl)).
    Returns (loss, aux) with aux = {"clip_ratio", "kl", "pg_loss"} (masked token means; kl is 0 when β = 0 and no
    reference is given). norm: the loss's denominators from a whole batch these rows are part of (`aggregate`);
    aux stays these rows' own."""
    m = mask.astype(jnp.float32)
    old = jax.lax.stop_gradient(logp) if logp_old is None else jax.lax.stop_gradient(logp_old)
    ratio = jnp.exp(logp - old)
    A = adv_B[:, None]
    unclipped = ratio * A
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * A
    per_tok = -jnp.minimum(unclipped, clipped)
    # the clipped region: the ratio left [1-ε, 1+ε] in the direction the advantage pushes it (TRL's "region")
    is_clipped = ((ratio < 1.0 - clip_eps) & (A < 0)) | ((ratio > 1.0 + clip_eps) & (A > 0))
    aux = {"clip_ratio": aggregate(is_clipped.astype(jnp.float32), m, "token_mean"),
           "pg_loss": aggregate(per_tok, m, loss_agg)}
    if logp_ref is not None:
        kl = kl_penalty(logp, jax.lax.stop_gradient(logp_ref), kl_estimator)
        aux["kl"] = aggregate(jax.lax.stop_gradient(kl), m, "token_mean")
        if beta:
            per_tok = per_tok + beta * kl
    else:
        aux["kl"] = jnp.zeros((), jnp.float32)
    return aggregate(per_tok, m, loss_agg, norm), aux


# ----------------------------------------------------------------------------- norms


def global_norm(tree):
    """‖tree‖_2 over all leaves (0 for an empty tree)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
