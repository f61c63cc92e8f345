"""The kernel methods, dispatched from one table. A method is a module with

    NAME                      "jacobian" | "structured" (what `method=` names)
    OUTPUTS                   the outputs it computes
    plan(request) -> KernelPlan   pure planning: chunks, sweeps, bytes held, a seconds estimate (diagnostic);
                                  abstract parameters (jax.ShapeDtypeStruct) work
    run(request, plan) -> Kernel

Two ways to compute, each exact or by Hutchinson probes:
- "jacobian" (jacobian.py, jacobian_probes.py): reverse passes that write weight gradients; J_h held per chunk of
  contexts.
- "structured" (structured.py, structured_probes.py): one backward through the activations per cotangent, per-layer
  Gram matrices, never a weight gradient. The default: on every model measured (benchmarks/RESULTS.md, "kernel
  methods") it is at least as fast as the Jacobian method warm and cold, and its memory does not grow with P.

Both take a Mesh (request.mesh): the contexts of every chunk or sweep are spread over all its devices, the
parameters are placed by shared.place_params, and JAX (GSPMD) does the communication.

`choose(request, method)`: "auto" takes "structured" (with or without a mesh); a forced method is taken as given.
"""
from __future__ import annotations

from . import jacobian, jacobian_probes, structured, structured_probes

__all__ = ["TABLE", "choose", "module"]

TABLE = {
    ("jacobian", "exact"): jacobian,
    ("structured", "exact"): structured,
    ("jacobian", "probes"): jacobian_probes,
    ("structured", "probes"): structured_probes,
}


def choose(req, method: str) -> tuple[str, str]:
    """(method name, reason) for a request and the `method=` argument ("auto", "jacobian", "structured")."""
    if method != "auto":
        return method, "forced (method=...)"
    return "structured", "default"


def module(name: str, kind: str):
    """The method module of `name` for a request of `kind` ("exact" or "probes")."""
    return TABLE[(name, kind)]
