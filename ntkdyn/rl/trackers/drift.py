"""The eNTK drift tracker: how far the kernel on a fixed set of probe contexts moves from the run's start (the
"stable eNTK" assumption of one-step analyses, measured for RL).

At the run start the N×N trace kernels over the vocabulary (spec §1: Θ = R ⊗ I_V + G (+ X for a tied head))

    tr_V R(c, c') = V · s(c, c'),   tr_V G(c, c'),   tr_V K = tr_V R + tr_V G (+ tr_V X)

of the starting model on N fixed probe contexts are kept as K0 (OUT/ntk0.npz, written atomically by rl/rundir.py; a
resumed run reads it back, or recomputes it from the starting model when it is missing or unreadable). Every
RLConfig.ntk_every global steps, at step 0 and at the last step the run logs, for Z in R, G, K,

    ntk/align_Z  = metrics.kernel_alignment(Z_t, Z_0)   (uncentred: ⟨Z_t, Z_0⟩_F / ‖Z_t‖_F ‖Z_0‖_F; 1 = unmoved)
    ntk/change_Z = metrics.kernel_change(Z_t, Z_0)      (‖Z_t − Z_0‖_F / ‖Z_0‖_F; 0 = unmoved)
    ntk/trace_G, ntk/trace_R = the mean diagonal of tr_V G, tr_V R (the kernels' size at one context)

The kernels come from ntk.decompose: RLConfig.ntk_method "exact" (output="trace", the default method) or
"hutchinson" (output="hutchinson", RLConfig.ntk_probes Rademacher probes with a fixed seed, the same probes at
every step; R stays exact). The probe contexts are `drift_contexts` of the run's probe set.
"""
from __future__ import annotations

import numpy as np

from ... import metrics as M
from ..rundir import NTK0_FILE, read_arrays, write_arrays

__all__ = ["NTK0_FILE", "Drift", "drift_contexts", "trace_kernels", "drift_metrics"]

HUTCHINSON_SEED = 0  # the probes of every drift kernel of every run: differences are not probe noise


def drift_contexts(probe_pos, n: int) -> np.ndarray:
    """Up to n (row, position) contexts of the probe set `probe_pos` (M, 2), spread over the probe prompts: the
    first answer context of every probe row (the position predicting the answer's first token), then the second
    of every row, and so on (row order within a round)."""
    pp = np.asarray(probe_pos, np.int32).reshape(-1, 2)
    order = np.lexsort((pp[:, 1], pp[:, 0]))  # row-major, positions ascending
    pp = pp[order]
    rank = np.zeros(len(pp), np.int64)  # rank of a context within its row's answer
    for r in np.unique(pp[:, 0]):
        sel = np.flatnonzero(pp[:, 0] == r)
        rank[sel] = np.arange(len(sel))
    round_robin = np.lexsort((pp[:, 0], rank))
    return pp[round_robin[:n]]


def trace_kernels(lm, probe_ids, contexts, params, method: str = "exact", num_probes: int = 64, mesh=None) -> dict:
    """The (N, N) trace kernels {"R": V s, "G": tr_V G, "K": their sum (+ tr_V X, tied)} of `params` at `contexts`
    of `probe_ids`, float64: method "exact" (decompose output="trace") or "hutchinson" (`num_probes` probes of
    HUTCHINSON_SEED; R stays exact). mesh: the run's jax.sharding.Mesh (None: one device); the contexts are spread
    over its devices (ntk.decompose mesh=)."""
    from ...ntk.api import decompose

    V = lm.config.vocab_size
    if method == "hutchinson":
        k = decompose(lm, probe_ids, contexts, output="hutchinson", params=params, num_probes=int(num_probes),
                      seed=HUTCHINSON_SEED, mesh=mesh)
        G, X = k.gradient.trace, None if k.cross is None else k.cross.trace
    else:
        k = decompose(lm, probe_ids, contexts, output="trace", params=params, mesh=mesh)
        G, X = k.gradient, k.cross
    R = V * np.asarray(k.representation, np.float64)
    G = np.asarray(G, np.float64)
    K = R + G + (0.0 if X is None else np.asarray(X, np.float64))
    return {"R": R, "G": G, "K": K}


def drift_metrics(K0: dict, K: dict) -> dict:
    """ntk/align_Z, ntk/change_Z (Z = R, G, K) of the kernels K against K0, and ntk/trace_G, ntk/trace_R."""
    out = {}
    for z in ("R", "G", "K"):
        out[f"ntk/align_{z}"] = float(M.kernel_alignment(K[z], K0[z]))
        out[f"ntk/change_{z}"] = float(M.kernel_change(K[z], K0[z]))
    out["ntk/trace_G"] = float(np.mean(np.diag(K["G"])))
    out["ntk/trace_R"] = float(np.mean(np.diag(K["R"])))
    return out


class Drift:
    """The tracker: K0 of the starting params at `drift_contexts` of the probe set (OUT/ntk0.npz, written
    atomically by a fresh run, read back on resume, recomputed when missing or made on other contexts / another
    method), then drift_metrics at every `every`-th global step and at the last one; the kernels on the run's mesh
    (None: one device)."""

    name = "ntk_drift"

    def __init__(self, lm, probes, out: str, *, every: int, n_contexts: int, method: str, num_probes: int,
                 mesh=None):
        self.lm, self.ids, self.out, self.mesh = lm, probes.ids, out, mesh
        self.every, self.method, self.num_probes = int(every), method, int(num_probes)
        self.contexts = drift_contexts(probes.pos, n_contexts)
        self.K0 = None

    def _kernels(self, params) -> dict:
        return trace_kernels(self.lm, self.ids, self.contexts, params, self.method, self.num_probes, self.mesh)

    def start(self, params, resumed: bool, memo: dict | None = None) -> dict:
        saved = read_arrays(self.out, NTK0_FILE) if resumed else None  # None: missing or unreadable
        if (saved is not None and np.array_equal(saved.get("contexts"), self.contexts)
                and str(saved.get("method")) == self.method and all(k in saved for k in ("R", "G", "K"))):
            self.K0 = {k: saved[k] for k in ("R", "G", "K")}
            return {}
        key = (self.name, self.contexts.tobytes(), self.method, self.num_probes)
        if memo is not None and key in memo:  # another lane's K0 of the same params and contexts
            self.K0 = memo[key]
        else:
            self.K0 = self._kernels(params)
            if memo is not None:
                memo[key] = self.K0
        write_arrays(self.out, NTK0_FILE, method=np.asarray(self.method), contexts=self.contexts, **self.K0)
        return {} if resumed else drift_metrics(self.K0, self.K0)

    def reads_before(self, stage, stage_step: int) -> bool:
        return False  # the kernels at the params after the update only

    def after_update(self, u) -> dict:
        if u.step % self.every and u.step != u.total_steps:
            return {}
        return drift_metrics(self.K0, self._kernels(u.after))
