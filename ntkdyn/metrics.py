"""Metrics for the learning dynamics of RL post-training.

Groups:
  * confidence   -- entropy / max-prob / log-prob of the policy, masked token means;
  * diversity    -- distinct-n, unique answers, unbiased pass@k (plain Python / numpy);
  * features     -- cosine similarities, inner-product statistics, effective rank;
  * kernel/train -- kernel norms, Δz decomposition shares, head norm, feature drift,
                    first-order entropy change.

Conventions: logits are float arrays (..., V); π = softmax(logits); masks are 0/1 arrays
with the same leading shape as the per-token quantity; every "mean over tokens" averages
only where mask == 1 and returns 0 (never NaN) when the mask is empty. Numeric functions use
jax.numpy and are jit-able; string / bool options are static (use `static_argnames`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "masked_mean",
    "token_entropy",
    "mean_entropy",
    "mean_max_prob",
    "mean_logp",
    "distinct_n",
    "unique_answers",
    "unique_correct",
    "pass_at_k",
    "pass_at_k_curve",
    "cosine_matrix",
    "pairwise_cosine",
    "feature_similarity",
    "effective_rank",
    "kernel_norms",
    "kernel_alignment",
    "kernel_change",
    "dz_share",
    "head_norm",
    "feature_change",
    "first_order_entropy_change",
]


# ----------------------------------------------------------------------------- helpers


def _safe_div(num, den):
    """num / den where den != 0, else 0 (no NaN in either branch)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def masked_mean(x, mask) -> jax.Array:
    """Masked mean  Σ_i m_i x_i / Σ_i m_i  over all entries (0 when Σ m = 0).

    `mask` (0/1, broadcastable to x) selects entries; entries with mask == 0 are ignored
    even when they are inf/NaN.
    """
    x = jnp.asarray(x)
    m = jnp.broadcast_to(jnp.asarray(mask) != 0, x.shape)
    total = jnp.sum(jnp.where(m, x, 0))
    count = jnp.sum(m)
    return total / jnp.maximum(count, 1)


def _probs_and_safe_logp(logits):
    """π = softmax(logits) and log π with log π := 0 where π == 0 (masked-out logits)."""
    logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    p = jnp.exp(logp)
    return p, jnp.where(p > 0, logp, 0.0)


# ----------------------------------------------------------------------------- confidence


def token_entropy(logits) -> jax.Array:
    """Per-token entropy  H = -Σ_k π_k log π_k,  π = softmax(logits).  (..., V) -> (...,).

    Computed from log_softmax (stable); terms with π_k = 0 contribute 0.
    """
    p, logp = _probs_and_safe_logp(logits)
    return -jnp.sum(p * logp, axis=-1)


def mean_entropy(logits, mask) -> jax.Array:
    """Masked mean over tokens of H = -Σ_k π_k log π_k.  logits (..., V), mask (...)."""
    return masked_mean(token_entropy(logits), mask)


def mean_max_prob(logits, mask) -> jax.Array:
    """Masked mean over tokens of max_k π_k = exp(max_k log_softmax(logits)_k)."""
    max_p = jnp.exp(jnp.max(jax.nn.log_softmax(jnp.asarray(logits), axis=-1), axis=-1))
    return masked_mean(max_p, mask)


def mean_logp(logp, mask) -> jax.Array:
    """Masked mean over tokens of the sampled-token log-prob log π(y_t | ...).  logp (...)."""
    return masked_mean(logp, mask)


# ----------------------------------------------------------------------------- diversity


def _ngrams(text: str, n: int, tokens: bool) -> list[tuple]:
    units = text.split() if tokens else text
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def distinct_n(texts: Sequence[str], n: int, tokens: bool = False) -> float:
    """distinct-n = |set of n-grams over all texts| / (total number of n-grams over all texts).

    n-grams are character n-grams (tokens=False) or whitespace-token n-grams (tokens=True).
    Returns 0.0 when there are no n-grams at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    all_grams = [g for t in texts for g in _ngrams(t, n, tokens)]
    if not all_grams:
        return 0.0
    return len(set(all_grams)) / len(all_grams)


def unique_answers(texts: Sequence[str]) -> int:
    """Number of distinct strings  |{t_i}|."""
    return len(set(texts))


def unique_correct(texts: Sequence[str], rewards: Sequence[float], threshold: float = 1.0) -> int:
    """Number of distinct strings among those with reward >= threshold: |{t_i : r_i >= threshold}|.

    Binary rewards: threshold=1.0 (default); graded rewards: pass the pass threshold.
    """
    if len(texts) != len(rewards):
        raise ValueError(f"len(texts)={len(texts)} != len(rewards)={len(rewards)}")
    return len({t for t, r in zip(texts, rewards) if r >= threshold})


def _pass_at_k_scalar(n: int, c: int, k: int) -> float:
    # 1 - C(n-c, k)/C(n, k) = 1 - Π_{i=n-c+1}^{n} (1 - k/i)   (Chen et al. 2021)
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _as_int_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name} must be integer-valued, got {x}")
    return arr.astype(np.int64)


def pass_at_k(n, c, k):
    """Unbiased pass@k estimator (Chen et al. 2021):  pass@k = 1 - C(n-c, k) / C(n, k),

    with n samples of which c are correct. Evaluated in the stable product form
    1 - Π_{i=n-c+1}^{n} (1 - k/i)  (and 1 when n - c < k). n, c, k broadcast against each
    other; returns a float for scalar inputs, else a float64 ndarray of the broadcast shape.
    Raises ValueError if k > n, k < 1, or c not in [0, n].
    """
    n_arr, c_arr, k_arr = np.broadcast_arrays(
        _as_int_array(n, "n"), _as_int_array(c, "c"), _as_int_array(k, "k")
    )
    if np.any(k_arr > n_arr):
        raise ValueError(f"k must be <= n (got k={k}, n={n})")
    if np.any(k_arr < 1):
        raise ValueError(f"k must be >= 1 (got k={k})")
    if np.any((c_arr < 0) | (c_arr > n_arr)):
        raise ValueError(f"c must be in [0, n] (got c={c}, n={n})")
    out = np.array(
        [_pass_at_k_scalar(int(a), int(b), int(kk)) for a, b, kk in zip(n_arr.ravel(), c_arr.ravel(), k_arr.ravel())],
        dtype=np.float64,
    ).reshape(n_arr.shape)
    return float(out) if out.ndim == 0 else out


def pass_at_k_curve(correct_matrix, ks: Sequence[int]) -> np.ndarray:
    """Mean over prompts of pass@k for each k in ks.

    correct_matrix: (P prompts, n samples) bool. For prompt p, c_p = Σ_j correct[p, j] and
    curve[i] = (1/P) Σ_p pass@k_i(n, c_p).  Returns float64 array of shape (len(ks),).
    """
    correct_PxN = np.asarray(correct_matrix, dtype=bool)
    if correct_PxN.ndim != 2:
        raise ValueError(f"correct_matrix must be (P, n), got shape {correct_PxN.shape}")
    n = correct_PxN.shape[1]
    c_P = correct_PxN.sum(axis=1)
    return np.array([np.mean(pass_at_k(n, c_P, k)) for k in ks], dtype=np.float64)


# ----------------------------------------------------------------------------- features


def cosine_matrix(h) -> jax.Array:
    """Cosine-similarity matrix  C_ij = <h_i, h_j> / (‖h_i‖ ‖h_j‖)  for h (N, d) -> (N, N).

    Zero vectors are left unnormalised, so their row/column (diagonal included) is 0.
    """
    h_Nxd = jnp.asarray(h)
    norms_N1 = jnp.linalg.norm(h_Nxd, axis=-1, keepdims=True)
    hn_Nxd = h_Nxd / jnp.where(norms_N1 > 0, norms_N1, 1)
    return hn_Nxd @ hn_Nxd.T


def _pair_mask(w_N):
    """Boolean (N, N) mask of pairs i < j with w_i and w_j both set."""
    w = jnp.asarray(w_N) != 0
    return jnp.triu(w[:, None] & w[None, :], k=1)


def pairwise_cosine(h, mask=None) -> jax.Array:
    """Mean cosine similarity over distinct pairs:  (2 / (N(N-1))) Σ_{i<j} C_ij.

    h (N, d); optional mask (N,) restricts to rows with mask == 1. 0 when fewer than 2 rows.
    """
    h_Nxd = jnp.asarray(h)
    w_N = jnp.ones(h_Nxd.shape[0], bool) if mask is None else mask
    return masked_mean(cosine_matrix(h_Nxd), _pair_mask(w_N))


def feature_similarity(h_BxTxd, mask_BxT, prompt_feature: str = "mean") -> dict:
    """Similarity statistics of features h (B sequences, T positions, d) on masked contexts.

    Let m_bt ∈ {0,1} be the mask and the masked contexts {h_bt : m_bt = 1}.

    * "cos_across_prompts": mean pairwise cosine (over pairs b < b') of one feature per
      sequence, f_b, over sequences with at least one masked position:
        prompt_feature="mean": f_b = Σ_t m_bt h_bt / Σ_t m_bt   (masked mean over positions);
        prompt_feature="last": f_b = h_{b, t_b}, t_b = last t with m_bt = 1 (e.g. pass a
        prompt mask to get the last prompt position).
    * "cos_across_positions": for each sequence b, mean cosine over pairs t < t' of masked
      positions; then the unweighted mean over sequences having >= 2 masked positions.
    * "s_mean", "s_std", "s_cv": mean, (population) std and std/|mean| of the inner products
      s = <h_bt, h_b't'> over all unordered pairs of distinct masked contexts (b,t) != (b',t')
      (same and different sequences). s_cv = 0 when s_std = 0, inf when s_mean = 0 < s_std.

    All entries are 0 when the corresponding set of pairs is empty.
    prompt_feature is a static option under jit.
    """
    h = jnp.asarray(h_BxTxd)
    m_BxT = jnp.asarray(mask_BxT) != 0
    B, T, d = h.shape

    # --- across prompts
    count_B = m_BxT.sum(axis=1)
    if prompt_feature == "mean":
        f_Bxd = jnp.sum(jnp.where(m_BxT[..., None], h, 0), axis=1) / jnp.maximum(count_B, 1)[:, None]
    elif prompt_feature == "last":
        last_B = T - 1 - jnp.argmax(m_BxT[:, ::-1], axis=1)
        f_Bxd = h[jnp.arange(B), last_B]
    else:
        raise ValueError(f"prompt_feature must be 'mean' or 'last', got {prompt_feature!r}")
    cos_prompts = pairwise_cosine(f_Bxd, count_B > 0)

    # --- across positions (within each sequence)
    C_BxTxT = jax.vmap(cosine_matrix)(h)
    pairs_BxTxT = jax.vmap(_pair_mask)(m_BxT)
    n_pairs_B = pairs_BxTxT.sum(axis=(1, 2))
    per_seq_B = jnp.sum(jnp.where(pairs_BxTxT, C_BxTxT, 0), axis=(1, 2)) / jnp.maximum(n_pairs_B, 1)
    cos_positions = masked_mean(per_seq_B, n_pairs_B > 0)

    # --- inner products over all distinct masked contexts
    h_Nxd = h.reshape(B * T, d)
    S_NxN = h_Nxd @ h_Nxd.T
    pairs_NxN = _pair_mask(m_BxT.reshape(B * T))
    s_mean = masked_mean(S_NxN, pairs_NxN)
    s_std = jnp.sqrt(masked_mean((S_NxN - s_mean) ** 2, pairs_NxN))
    abs_mean = jnp.abs(s_mean)
    s_cv = jnp.where(
        abs_mean > 0, s_std / jnp.where(abs_mean > 0, abs_mean, 1), jnp.where(s_std > 0, jnp.inf, 0.0)
    )
    return {
        "cos_across_prompts": cos_prompts,
        "cos_across_positions": cos_positions,
        "s_mean": s_mean,
        "s_std": s_std,
        "s_cv": s_cv,
    }


def effective_rank(h) -> jax.Array:
    """Effective rank (Roy & Vetterli 2007) of h (N, d):  erank = exp(-Σ_i p_i log p_i),

    p_i = σ_i / Σ_j σ_j with σ the singular values (0 log 0 = 0). Returns 0 for h = 0.
    """
    sigma = jnp.linalg.svd(jnp.asarray(h), compute_uv=False)
    total = jnp.sum(sigma)
    p = _safe_div(sigma, total)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0))
    return jnp.where(total > 0, jnp.exp(ent), 0.0)


# ----------------------------------------------------------------------------- kernel / training


def kernel_norms(R, G, vocab_size: int | None = None) -> dict:
    """Frobenius norms of the representation kernel R and gradient kernel G.

    ‖G‖_F = sqrt(Σ G²) over all entries (any shape, e.g. (Na, V, Nb, V)).
    If vocab_size is None, R is the full kernel and ‖R‖_F = sqrt(Σ R²).
    If vocab_size = V is given, R is the (Na, Nb) scalar kernel s with R = s ⊗ I_V, so
    ‖R‖_F = sqrt(V) · ‖s‖_F.
    Returns {"R": ‖R‖_F, "G": ‖G‖_F}.
    """
    r_norm = jnp.linalg.norm(jnp.ravel(jnp.asarray(R)))
    if vocab_size is not None:
        r_norm = jnp.sqrt(jnp.asarray(vocab_size, dtype=r_norm.dtype)) * r_norm
    return {"R": r_norm, "G": jnp.linalg.norm(jnp.ravel(jnp.asarray(G)))}


def kernel_alignment(K1, K2) -> jax.Array:
    """Uncentred kernel alignment  ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F)  over all entries (any equal shapes, e.g. the
    (N, N) trace kernels tr_V R, tr_V G): 1 when K1 ∝ K2 with a positive factor; 0 when either is 0. Clipped to
    [-1, 1] (Cauchy-Schwarz): float32 rounding of the inner product and the norms can otherwise give 1 + 1 ulp for
    a kernel against itself."""
    a, b = jnp.ravel(jnp.asarray(K1)), jnp.ravel(jnp.asarray(K2))
    if a.shape != b.shape:
        raise ValueError(f"kernel_alignment: the kernels must have the same shape; got {jnp.shape(K1)} and "
                         f"{jnp.shape(K2)}")
    return jnp.clip(_safe_div(jnp.vdot(a, b), jnp.linalg.norm(a) * jnp.linalg.norm(b)), -1.0, 1.0)


def kernel_change(K1, K0) -> jax.Array:
    """Relative change of a kernel  ‖K1 − K0‖_F / ‖K0‖_F  (0 when K0 = 0)."""
    a, b = jnp.ravel(jnp.asarray(K1)), jnp.ravel(jnp.asarray(K0))
    if a.shape != b.shape:
        raise ValueError(f"kernel_change: the kernels must have the same shape; got {jnp.shape(K1)} and "
                         f"{jnp.shape(K0)}")
    return _safe_div(jnp.linalg.norm(a - b), jnp.linalg.norm(b))


def dz_share(dz_gradient, dz_representation) -> dict:
    """Relative size of the two parts of the logit change Δz = Δz_R + Δz_G:

      {"gradient": ‖Δz_G‖_F / ‖Δz‖_F, "representation": ‖Δz_R‖_F / ‖Δz‖_F}

    (Frobenius over all entries; both 0 when Δz = 0). The shares need not sum to 1: they do
    when Δz_R, Δz_G are parallel with the same sign, and their squares do when orthogonal.
    """
    dz_G = jnp.asarray(dz_gradient)
    dz_R = jnp.asarray(dz_representation)
    total = jnp.linalg.norm(jnp.ravel(dz_G + dz_R))
    return {
        "gradient": _safe_div(jnp.linalg.norm(jnp.ravel(dz_G)), total),
        "representation": _safe_div(jnp.linalg.norm(jnp.ravel(dz_R)), total),
    }


def head_norm(W) -> jax.Array:
    """‖W‖_F = sqrt(Σ_ij W_ij²)  (e.g. the unembedding / LM head)."""
    return jnp.linalg.norm(jnp.ravel(jnp.asarray(W)))


def feature_change(h_t, h_0, mask=None, relative: bool = False) -> jax.Array:
    """Mean feature drift over contexts.  h_t, h_0 (..., d); mask (...) optional.

    relative=False:  mean_c ‖h_t[c] − h_0[c]‖_2
    relative=True :  mean_c ‖h_t[c] − h_0[c]‖_2 / ‖h_0[c]‖_2   (contexts with h_0[c] = 0
                     are excluded).
    The mean is over masked contexts (all when mask is None); 0 when there are none.
    `relative` is a static option under jit.
    """
    h_t = jnp.asarray(h_t)
    h_0 = jnp.asarray(h_0)
    diff = jnp.linalg.norm(h_t - h_0, axis=-1)
    m = jnp.ones(diff.shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask) != 0, diff.shape)
    if relative:
        norm0 = jnp.linalg.norm(h_0, axis=-1)
        diff = _safe_div(diff, norm0)
        m = m & (norm0 > 0)
    return masked_mean(diff, m)


def first_order_entropy_change(logits, dz) -> jax.Array:
    """First-order change of token entropy under a logit change Δz:

      ΔH = Σ_k (∂H/∂z_k) Δz_k = −Σ_k π_k (log π_k + H) Δz_k,   π = softmax(logits).

    logits, dz (..., V) -> (...,). Equals −Cov_{k~π}(log π_k, Δz_k).
    """
    p, logp = _probs_and_safe_logp(logits)
    H = -jnp.sum(p * logp, axis=-1, keepdims=True)
    return -jnp.sum(p * (logp + H) * jnp.asarray(dz), axis=-1)
