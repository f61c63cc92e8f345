"""The API: `decompose` (the eNTK between two sets of contexts split into R, G and, tied, X), `plan` (what decompose
would run, without running it), `representation` (s alone, one forward pass per side) and `hidden_kernel`
(M = J_h J_hᵀ). A call builds one validated Request (request.py), chooses a method (methods.choose) and runs it."""
from __future__ import annotations

import dataclasses

from . import methods
from .contexts import kernel_contexts
from .kernel import Kernel, KernelPlan
from .request import make_request, params_of
from .shared import finish_rep

__all__ = ["decompose", "plan", "representation", "hidden_kernel"]


def representation(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, params=None):
    """s(c, c') = h(c)·h(c') (+1 when the head has a bias): R = s ⊗ I_V, (Na, Nb). One forward pass per side."""
    params = params_of(lm, params)
    a, b, sym = kernel_contexts(lm.config, ids_a, pos_a, ids_b, pos_b)
    ha = lm.features(a[0], params)[a[1], a[2]]
    hb = ha if sym else lm.features(b[0], params)[b[1], b[2]]
    return finish_rep(ha, hb, len(a[1]), len(b[1]), "b" in params["head"])


def hidden_kernel(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, params=None, batch_size=None, mesh=None,
                  memory_budget=None, method="auto", chunk=None):
    """M(c, c') = J_h(c) J_h(c')ᵀ, (Na, Nb, d, d); J_h over ψ (and, tied, the input use of the shared table)."""
    return decompose(lm, ids_a, pos_a, ids_b, pos_b, output="hidden", params=params, batch_size=batch_size,
                     mesh=mesh, memory_budget=memory_budget, method=method, chunk=chunk).gradient


def _plan(req, method) -> KernelPlan:
    name, reason = methods.choose(req, method)
    kp = methods.module(name, req.kind).plan(req)
    secs = dict(kp.predicted_seconds)
    for other in ("jacobian", "structured"):  # the other method's seconds estimate too: a diagnostic only
        if other not in secs:
            secs.update(methods.module(other, req.kind).plan(req).predicted_seconds)
    return kp._replace(reason=reason, predicted_seconds={m: secs[m] for m in sorted(secs)})


def plan(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, output: str = "full", tokens=None, params=None,
         batch_size: int | None = None, mesh=None, num_probes: int = 64, seed: int = 0, untied: bool = False,
         memory_budget: int | None = None, method: str = "auto", chunk: int | None = None) -> KernelPlan:
    """The KernelPlan `decompose` would follow for these arguments, without computing anything (`params` may be
    jax.ShapeDtypeStructs, e.g. transformer.abstract_params(cfg)): the method and why, passes, sweeps, chunk,
    predicted bytes (in all and per device of the mesh). Same arguments as `decompose`."""
    req = make_request(lm, ids_a, pos_a, ids_b, pos_b, output=output, tokens=tokens, params=params,
                       batch_size=batch_size, mesh=mesh, num_probes=num_probes, seed=seed, untied=untied,
                       memory_budget=memory_budget, method=method, chunk=chunk)
    return _plan(req, method)


def decompose(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, output: str = "full", tokens=None, params=None,
              batch_size: int | None = None, mesh=None, num_probes: int = 64, seed: int = 0,
              untied: bool = False, memory_budget: int | None = None, method: str = "auto",
              chunk: int | None = None) -> Kernel:
    """The eNTK of the next-token logits between contexts a and b, split into R, G (and X for a tied head).

    ids_a: (B, T) int token rows; pos_a: (B,) one analysed position per row, or (N, 2) (row, position) pairs
    (see `contexts_from_mask`). ids_b/pos_b default to a's (symmetric kernel); pos_b alone reuses ids_a's rows.
    output: "full" (Na, Nb, V, V) | "trace" (Na, Nb) exact | "subset" (Na, Nb, |S|, |S|) with tokens=S |
            "hidden" M (Na, Nb, d, d) | "hutchinson" estimates of tr G and ‖G‖_F² from `num_probes`
            Rademacher probes of `seed` (G v = W J_h(c) [J_h(c')ᵀ Wᵀ v]: one VJP and one JVP per probe).
    untied: report the view where the tied table is cloned into a separate output head (Θ = R + G, cross None).
    method: "structured" (structured derivatives: one backward through the activations per cotangent, per-layer
    Gram matrices, never a weight gradient), "jacobian" (J_h from d reverse passes per context that write weight
    gradients; parameter groups when one context's J_h exceeds the budget) or "auto": structured (ntk/methods).
    k.plan (a KernelPlan) tells which ran, why, and its passes, chunks and bytes.
    batch_size: contexts per vmapped chunk (jacobian) or per sweep (structured); default from `memory_budget`, the
    bytes held at once (1 GiB by default). chunk: cotangents (or probes) per structured sweep. mesh: a
    jax.sharding.Mesh (every method, every output); every chunk's or sweep's contexts are spread over all its
    devices, the parameters replicated or, on a mesh with an "fsdp" axis, sharded over it; the result equals one
    device's up to float rounding. Float64 parameters (with jax x64 enabled) give a float64 kernel.
    """
    req = make_request(lm, ids_a, pos_a, ids_b, pos_b, output=output, tokens=tokens, params=params,
                       batch_size=batch_size, mesh=mesh, num_probes=num_probes, seed=seed, untied=untied,
                       memory_budget=memory_budget, method=method, chunk=chunk)
    kp = _plan(req, method)
    k = methods.module(kp.method, req.kind).run(req, kp)
    return dataclasses.replace(k, plan=kp)
