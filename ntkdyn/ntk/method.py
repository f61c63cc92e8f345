"""Which exact method computes a kernel, by a cost model: the Jacobian path (jacobians.py: J_h from d reverse passes
per context that write weight gradients, contracted over the parameters) or structured derivatives (structured.py:
one backward through the activations per cotangent, per-layer Gram matrices, no weight gradient). The choice and
its numbers are the `KernelPlan` on the returned Kernel (`k.plan`).

Cost model (seconds ≈ flops / FLOPS + bytes moved / BANDWIDTH + a compilation constant), P_D the Dense parameters,
T the tokens kept, n the contexts swept, r the cotangents (d, or |S|, or the rows of L):
  jacobian    groups · n · d · 2 T P_D (activation backward per parameter group) + n · d · 2 T P_D (weight gradients),
              n · d · P floats written and read, and the contraction (N² d P for a factored trace, N² d² P otherwise);
  structured  per sweep of b contexts × r cotangents: b (1 + r) 2 T P_D, the δ written (b r T Σm floats), and the
              Gram matrices of the visited pairs (na nb Ta Tb (Σn + r Σm), plus r² T Σm per pair for matrices).
The Jacobian path's count follows engine.loop: with more contexts than one memory block holds, the b-blocks are
recomputed for every a-block (`jacobian_blocks`), which makes 8 contexts of the default model cost ~16 s warm
against 0.3 s structured (idle CPU), where the earlier model (no recomputation, 4e9 B/s) predicted 8.5 s and kept
the Jacobian path. The constants were fitted to benchmarks/planner_bench.py (measured beside predicted seconds: the
default model, tiny and small random Llamas) on the 2-core CPU; see benchmarks/RESULTS.md. The structured path is
taken whenever the Jacobian plan would split the parameters into groups (one whole backward sweep per group) or,
for Hutchinson probes, hold weight gradients beyond the memory budget, and otherwise when it is predicted faster;
method="jacobian" | "structured" forces either.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from flax import traverse_util

__all__ = ["KernelPlan", "METHODS", "choose_exact", "choose_probes"]

METHODS = ("auto", "jacobian", "structured")
FLOPS = 3e10  # effective float operations per second of the vmapped passes (2 idle CPU cores)
BANDWIDTH = 3e9  # bytes per second of weight gradients written and read back (benchmarks/planner_bench.py)
# seconds of compilation per 2 layers (at least 2): the exact kernels' programs and the Hutchinson probes' (a VJP
# and a JVP program), read off benchmarks/planner_bench.py on the idle machine (first call minus warm call: the
# default model's 4 layers ~1.9 s Jacobian, ~2.5 s structured; probes ~3.7 s for both)
COMPILE = {"jacobian": 1.0, "structured": 1.25, "jacobian_probes": 1.85, "structured_probes": 1.8}


class KernelPlan(NamedTuple):
    """What `decompose` ran (k.plan): the method, why, the passes and chunks, the bytes and seconds predicted."""

    method: str  # "jacobian" | "structured"
    reason: str
    passes: int  # reverse passes (one per context and cotangent or probe; per parameter group for the Jacobian path)
    sweeps: int  # compiled calls that run them (vmapped chunks)
    chunk: int  # contexts per chunk (jacobian) | cotangents or probes per sweep (structured)
    parameter_groups: int  # Jacobian path: one whole backward sweep per group (1: no split)
    predicted_bytes: int  # held at once by the chosen method (model parameters not counted)
    memory_budget: int
    predicted_seconds: dict  # {"jacobian": s, "structured": s} from the cost model
    detail: Any = None  # the structured Plan, or the Jacobian (compute, [(leaves, with_x, k)]) plan


def _dense(params):
    """(P_D, Σm, Σn) of the backbone's Dense kernels."""
    ks = [v.shape for p, v in traverse_util.flatten_dict(params["backbone"]).items() if p[-1] == "kernel"]
    return sum(int(np.prod(s)) for s in ks), sum(s[1] for s in ks), sum(s[0] for s in ks)


def _seconds(method, flops, nbytes, n_layers):
    return round(flops / FLOPS + nbytes / BANDWIDTH + COMPILE[method] * max(1.0, n_layers / 2), 3)


def jacobian_blocks(n_pad_a, n_pad_b, bs, sym):
    """(Jacobian blocks computed, block pairs visited) of engine.loop over blocks of bs contexts: with several
    b-blocks they are recomputed for every a-block (the memory bound), one b-block is kept."""
    nA = -(-n_pad_a // bs)
    nB = nA if sym else -(-n_pad_b // bs)
    if sym:
        return nA + nA * (nA - 1) // 2, nA * (nA + 1) // 2
    return nA + (nB if nB == 1 else nA * nB), nA * nB


def _jacobian_cost(cfg, params, sz, compute, jplan, na, nb, sym, output):
    """Per parameter group: every computed context block costs d backward passes through the activations (2 T P_D
    each) and the group's weight gradients (2 T P_g), d·P_g floats written and read; every visited block pair is
    contracted in d·P_g (factored trace: untied, or tied blocks of more than 4 contexts, which pay d²·P_g per
    context to factor) or d²·P_g (M, contracted with WᵀW) per context pair (api._trace_mode)."""
    P_D = _dense(params)[0]
    d, T, item = cfg.d_model, max(sz.Ta, sz.Tb), sz.itemsize
    tied = cfg.tie_word_embeddings
    pad = lambda n: -(-n // compute) * compute  # noqa: E731
    flops = nbytes = 0.0
    for group, _, k in jplan:
        P_g = sum(sz.leaf_sizes[i] for i in group)
        bs = k * compute
        blocks, pairs = jacobian_blocks(pad(na), pad(nb), bs, sym)
        ctx = blocks * bs
        flops += ctx * d * 2 * T * (P_D + min(P_g, P_D))
        nbytes += 2 * ctx * d * P_g * item
        factored = output == "trace" and (not tied or bs > 4)
        flops += 2 * pairs * bs * bs * d * P_g * (1 if factored else d)
        if factored and tied:
            flops += 2 * ctx * d * d * P_g
    return _seconds("jacobian", flops, nbytes, cfg.n_layers)


def _structured_cost(cfg, params, splan, na, nb, item):
    P_D, sum_m, sum_n = _dense(params)
    b, r, T = splan.block, splan.chunk, max(splan.tokens_a, splan.tokens_b)
    flops = splan.sweeps * b * (1 + r) * 2 * T * P_D
    pairs = splan.sweeps if splan.mode == "trace" else splan.sweeps * splan.n_chunks
    per_pair = min(b, na) * min(b, nb) * splan.tokens_a * splan.tokens_b * (sum_n + r * sum_m)
    if splan.mode == "matrix":
        per_pair += min(b, na) * min(b, nb) * r * r * T * sum_m
    flops += 2 * pairs * per_pair
    return _seconds("structured", flops, 2 * splan.sweeps * b * r * T * sum_m * item, cfg.n_layers)


def choose_exact(method, cfg, params, sz, jac, splan_fn, na, nb, sym, output, mesh, forced) -> KernelPlan:
    """The KernelPlan of an exact kernel. jac: the Jacobian path's (compute, plan) (plan.exact_plan);
    splan_fn(): the structured Plan (structured_plan.make_plan); forced: a structured-only option (chunk) was given."""
    compute, jplan = jac
    splan = splan_fn()
    secs = {"jacobian": _jacobian_cost(cfg, params, sz, compute, jplan, na, nb, sym, output),
            "structured": _structured_cost(cfg, params, splan, na, nb, sz.itemsize)}
    if method == "auto":
        if mesh is not None:
            method, reason = "jacobian", "a mesh is given (the structured method runs on one device)"
        elif forced:
            method, reason = "structured", "chunk= is an option of the structured method"
        elif len(jplan) > 1:
            method, reason = "structured", (f"the Jacobian plan would split the parameters into {len(jplan)} groups "
                                            f"(2·d·P·itemsize > memory_budget)")
        else:
            method = min(secs, key=secs.get)
            reason = "predicted faster"
    else:
        reason = "forced (method=...)"
    d = cfg.d_model
    if method == "structured":
        return KernelPlan("structured", reason, splan.sweeps * splan.block * splan.chunk, splan.sweeps, splan.chunk, 1,
                          splan.predicted_bytes, splan.memory_budget, secs, splan)
    n_pad = -(-max(na, nb) // compute) * compute
    n_sides = 1 if sym else 2
    sweeps = len(jplan) * n_sides * n_pad // compute
    held = 2 * max(k for _, _, k in jplan) * compute * d * (max(
        sum(sz.leaf_sizes[i] for i in g) for g, _, _ in jplan) + max(sz.Ta, sz.Tb) * d) * sz.itemsize
    return KernelPlan("jacobian", reason, sweeps * compute * d, sweeps, compute, len(jplan), int(held), sz.budget,
                      secs, (compute, jplan))


def choose_probes(method, cfg, params, sz, na, nb, num_probes, mesh, sizes, jac_chunks) -> KernelPlan:
    """The KernelPlan of the Hutchinson estimator: per probe one VJP per b context and one JVP per (a, b) pair.
    The Jacobian path's VJPs write P-float weight gradients (held for a chunk of b contexts); the structured VJPs
    keep the Dense cotangents δ and its JVPs feed them through the taps. sizes: the structured (b contexts, probes)
    per sweep; jac_chunks: the Jacobian path's (a contexts, b contexts) per call (plan.probe_chunks)."""
    P_D, sum_m, sum_n = _dense(params)
    P = sum(sz.leaf_sizes)
    T, item = max(sz.Ta, sz.Tb), sz.itemsize
    vjps, jvps = nb * num_probes, na * nb * num_probes
    secs = {"jacobian": _seconds("jacobian_probes", vjps * 6 * T * P_D + jvps * 4 * T * P_D,
                                 3 * vjps * P * item + jvps * P * item, cfg.n_layers),
            "structured": _seconds("structured_probes",
                                   vjps * 4 * T * P_D + jvps * (2 * T * P_D + 2 * T * T * (sum_m + sum_n)),
                                   2 * vjps * T * sum_m * item, cfg.n_layers)}
    ca, cb_j = jac_chunks
    held_j = cb_j * num_probes * (P + T * cfg.d_model) * item
    if method == "auto":
        if mesh is not None:
            method, reason = "jacobian", "a mesh is given (the structured method runs on one device)"
        elif held_j > sz.budget:
            method, reason = "structured", (f"the Jacobian path's probe VJPs (weight gradients) would hold "
                                            f"{held_j / 2 ** 30:.1f} GiB > memory_budget")
        else:
            method, reason = min(secs, key=secs.get), "predicted faster"
    else:
        reason = "forced (method=...)"
    cb, pc = sizes
    if method == "structured":
        sweeps = -(-nb // cb) * -(-num_probes // pc)
        held = item * cb * pc * T * (sum_m + cfg.d_model + 3 * (sum_m + sum_n))
        return KernelPlan("structured", reason, vjps + jvps, sweeps, pc, 1, int(held), sz.budget, secs, sizes)
    return KernelPlan("jacobian", reason, vjps + jvps, -(-na // ca) * -(-nb // cb_j), cb_j, 1, int(held_j), sz.budget,
                      secs, jac_chunks)

