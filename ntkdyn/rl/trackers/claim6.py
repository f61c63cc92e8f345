"""The claim-6 tracker (spec §5): "shaping the classifier directly affects the gradient component of the NTK", made
measurable. Logged in the record of the FIRST step of every stage named "rl" (plain RL: global step 1; CF-RL and
LP-FT: the first stage-2 step), when RLConfig.claim6 is on:

(a) claim6/trG_answer = mean over the drift probe contexts c (drift.drift_contexts, RLConfig.ntk_contexts of
    them) of tr G_S(c, c) = Σ_{k∈S} G(c, c)_kk, with the params at the START of the stage (before its first update)
    (ntk.decompose output="subset"). S (`answer_tokens`) = every token the probe set's reference answers use, EOS
    included: the tokens at the positions the probe contexts predict.
(b) claim6/align_G = cos(Δz_G, D), claim6/align_R = cos(Δz_R, D) (Frobenius over all trained contexts × V), and
(c) claim6/gain_G = Σ_u ⟨D_u, Δz_G,u⟩ / (T · B), claim6/gain_R likewise, claim6/gain = gain_G + gain_R,
    over the trained contexts u of the stage's first update (iteration 0: every generated position of the rollout
    batch, masked), with
        D_u = A_u (e_{y_u} − π_u)     (the reward-improving direction; π_u = softmax(z_u / T), T the rollout
                                       temperature, as the loss uses it; A_u the rollout's advantage)
    and Δz_R, Δz_G the split of that update's logit change at u (dynamics.split_update between the params before
    and after it: Δz_R = ΔW h + Δb, Δz_G = W · JVP_ψ(h; δψ)). ⟨D_u, Δz_u⟩ / T is the first-order change of
    A_u log π_T(y_u | c_u), so gain is the first-order change of Σ_b A_b Σ_l log π_T(y_bl) / B (B rollouts
    measured; the loss's per-sequence token mean is not applied). T = 1 by default.

RLConfig.claim6_rollouts > 0 measures a fixed random subset of that many rollouts (rows drawn once from
(seed, CLAIM6_ID); B above is then their number) instead of the whole batch.

The rollout batch's prompts are left-padded; the measured sequences are [real prompt tokens; completion],
right-padded, so that plain positions and causal attention reproduce the loss's logits (objectives.completion_logp).
"""
from __future__ import annotations

from functools import partial

import jax
import numpy as np

from ...models.padding import pad_right
from ...models.transformer import apply_head, features
from .drift import drift_contexts
from ..sharding import to_host

__all__ = ["Claim6", "answer_tokens", "answer_trace", "update_measures", "CLAIM6_ID", "CHUNK_BYTES"]

CLAIM6_ID = 6  # folds into the seed of the fixed rollout subset
CHUNK_BYTES = 256 * 2**20  # (contexts, V) float32 arrays held at once, roughly, per chunk of rollouts


def answer_tokens(probe_ids, probe_pos) -> np.ndarray:
    """S: the sorted distinct token ids the probe contexts predict (their reference answers' tokens and EOS)."""
    ids, pp = np.asarray(probe_ids), np.asarray(probe_pos).reshape(-1, 2)
    return np.unique(ids[pp[:, 0], pp[:, 1] + 1]).astype(np.int32)


def answer_trace(lm, probe_ids, probe_pos, params, contexts, mesh=None) -> dict:
    """(a): {"claim6/trG_answer": mean_c tr G_S(c, c)} of `params` at `contexts` of `probe_ids` (on the run's
    jax.sharding.Mesh `mesh`, None: one device)."""
    from ...ntk.api import decompose

    S = answer_tokens(probe_ids, probe_pos)
    k = decompose(lm, probe_ids, contexts, output="subset", tokens=S, params=params, mesh=mesh)
    G = np.asarray(k.gradient, np.float64)  # (N, N, |S|, |S|)
    return {"claim6/trG_answer": float(np.mean(np.einsum("nnkk->n", G)))}


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _context_logits(params, ids, rows, pos, *, graphdef, cfg):
    """z(c) (N, V) at the contexts (rows, pos) of right-padded rows `ids`."""
    return apply_head(params["head"], features(graphdef, cfg, params, ids)[0][rows, pos])


def measured_rows(rollouts: int, seed: int, B: int) -> np.ndarray:
    """The rollout rows measured: all B, or a fixed random subset of `rollouts` of them (RLConfig.claim6_rollouts),
    drawn once from (seed, CLAIM6_ID)."""
    n = int(rollouts)
    if n == 0 or n >= B:
        return np.arange(B)
    return np.sort(np.random.default_rng([int(seed), CLAIM6_ID]).choice(B, n, replace=False))


def _right_aligned(prompt_ids, prompt_mask, completion, pad: int):
    """[real prompt; completion] rows right-padded to Tp + N, and the context positions (R, N) predicting each
    completion token l (the position before it)."""
    seqs = [np.concatenate([p[m.astype(bool)], y]) for p, m, y in zip(prompt_ids, prompt_mask, completion)]
    ids, _ = pad_right(seqs, pad, prompt_ids.shape[1] + completion.shape[1])
    lp = np.asarray(prompt_mask).astype(bool).sum(1)
    return ids, lp[:, None] - 1 + np.arange(completion.shape[1])[None, :]


def _chunk_sums(z, dz, y, w, m, T):
    """Float64 sums of one chunk: ⟨D, Δz⟩ for Δz in dz (a dict), ‖Δz‖² over the trained contexts, and ‖D‖²."""
    z = np.asarray(z, np.float64) / T
    pi = np.exp(z - z.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    n = np.arange(len(y))
    out = {"D": float(np.sum(m * w**2 * (1.0 - 2.0 * pi[n, y] + np.sum(pi * pi, 1))))}  # ‖A (e_y − π)‖²
    for name, d in dz.items():
        d = np.asarray(d, np.float64)
        e = d[n, y] - np.sum(pi * d, 1)  # (e_y − π)·Δz
        out[f"dot_{name}"] = float(np.sum(m * w * e))
        out[f"norm_{name}"] = float(np.sum(m * np.sum(d * d, 1)))
    return out


def update_measures(lm, before, after, batch, *, temperature: float = 1.0, rows=None) -> dict:
    """(b) and (c) of the update before → after on the rollout `batch` (the trainer's rl_update batch) at the
    rollout `temperature`; rows: the rollout rows measured (default: all)."""
    from ...dynamics import split_update

    pids, pmask, comp, mask, adv = (np.asarray(x) for x in to_host(
        (batch["prompt_ids"], batch["prompt_mask"], batch["completion"], batch["mask"], batch["adv"])))
    rows = np.arange(len(adv)) if rows is None else np.asarray(rows)
    gd = dict(graphdef=lm.graphdef, cfg=lm.config)
    ids, pos = _right_aligned(pids[rows], pmask[rows], comp[rows], int(lm.config.pad_token_id or 0))
    R, N, V, T = len(rows), comp.shape[1], lm.config.vocab_size, float(temperature)
    k = int(max(1, min(R, CHUNK_BYTES // (8 * 4 * N * V))))  # rows per chunk (~8 (contexts, V) arrays at once)
    sums: dict = {}
    for start in range(0, R, k):
        sel = np.arange(start, start + k) % R  # the last chunk repeats rows (weight 0): one shape, one compile
        live = (np.arange(start, start + k) < R).astype(np.float64)
        cr, cp = np.repeat(np.arange(k), N).astype(np.int32), pos[sel].reshape(-1).astype(np.int32)
        d = split_update(lm, before, after, ids[sel], np.stack([cr, cp], 1))
        z = _context_logits(before, ids[sel], cr, cp, **gd)
        dz = {"G": d["dz_gradient"], "R": d["dz_representation"]}
        m = (mask[rows][sel] != 0).astype(np.float64) * live[:, None]
        part = _chunk_sums(to_host(z), to_host(dz), comp[rows][sel].reshape(-1),
                           np.repeat(adv[rows][sel].astype(np.float64), N), m.reshape(-1), T)
        for key, v in part.items():
            sums[key] = sums.get(key, 0.0) + v
    out = {}
    for name in ("G", "R"):
        den = np.sqrt(sums[f"norm_{name}"] * sums["D"])
        out[f"claim6/align_{name}"] = float(sums[f"dot_{name}"] / den) if den > 0 else float("nan")
        out[f"claim6/gain_{name}"] = float(sums[f"dot_{name}"] / (T * R))
    out["claim6/gain"] = out["claim6/gain_G"] + out["claim6/gain_R"]
    return out


class Claim6:
    """The tracker: at the first update of a stage named "rl", (a) at the params before it and (b), (c) of its first
    (on-policy) iteration."""

    name = "claim6"

    def __init__(self, lm, probes, n_contexts: int, *, temperature: float, rollouts: int, seed: int, mesh=None):
        self.lm, self.ids, self.pos, self.mesh = lm, probes.ids, probes.pos, mesh
        self.contexts = drift_contexts(probes.pos, n_contexts)
        self.temperature, self.rollouts, self.seed = temperature, rollouts, seed

    def start(self, params, resumed: bool, memo: dict | None = None) -> dict:
        return {}

    def reads_before(self, stage, stage_step: int) -> bool:
        return stage.name == "rl" and stage.kind == "rl" and stage_step == 1

    def after_update(self, u) -> dict:
        if not self.reads_before(u.stage, u.stage_step):
            return {}
        out = answer_trace(self.lm, self.ids, self.pos, u.before, self.contexts, self.mesh)
        rows = measured_rows(self.rollouts, self.seed, int(np.shape(u.batch["adv"])[0]))
        out.update(update_measures(self.lm, u.before, u.first_after, u.batch, temperature=self.temperature, rows=rows))
        return out
