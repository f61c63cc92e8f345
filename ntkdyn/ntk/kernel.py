"""The results of `decompose`: the Kernel Θ = R ⊗ I + G (+ X) (spec §1), Hutchinson probe estimates, and the
KernelPlan that says how a kernel was (or would be) computed."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Kernel", "HutchinsonEstimate", "KernelPlan", "OUTPUTS"]

OUTPUTS = ("full", "trace", "subset", "hidden", "hutchinson")


class HutchinsonEstimate(NamedTuple):
    """Probe estimates (Na, Nb) of tr K and ‖K‖_F² with their standard errors (std over probes / √n)."""

    trace: jax.Array
    trace_se: jax.Array
    fro2: jax.Array
    fro2_se: jax.Array
    num_probes: int


class KernelPlan(NamedTuple):
    """How a kernel is computed (k.plan, ntk.plan): the method, why it was chosen, the work and the memory.

    passes: reverse passes (one per context and cotangent or probe; per parameter group on the Jacobian path);
    sweeps: the compiled calls that run them; chunk: contexts per chunk (Jacobian) or cotangents / probes per sweep
    (structured); predicted_bytes: held at once by the method (model parameters not counted), within memory_budget
    unless a forced option exceeds it. predicted_seconds: {method: seconds} of every method that can compute the
    request, from a rough cost model (flops / FLOPS + bytes / BANDWIDTH + compilation, constants of one 2-core CPU):
    a diagnostic only, never used to choose. detail: the method's own plan. devices: of the mesh the contexts are
    spread over (1 without one); predicted_bytes_per_device: what one device holds of the method's arrays at the
    peak (its share of the split contexts' arrays, plus what the compiler gathers whole: the b side of a Gram
    matrix; the parameters, replicated or sharded over "fsdp", not counted); predicted_bytes without a mesh."""

    method: str
    reason: str
    passes: int
    sweeps: int
    chunk: int
    parameter_groups: int  # Jacobian path: one whole backward sweep per group (1: no split)
    predicted_bytes: int
    memory_budget: int
    predicted_seconds: dict
    detail: Any = None
    devices: int = 1
    predicted_bytes_per_device: int | None = None


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The eNTK split Θ = R ⊗ I + G (+ X).

    representation: (Na, Nb) scalars s = h(c)·h(c') (+1 with a head bias); R = s ⊗ I_V.
    gradient: G = W M Wᵀ; (Na, Nb, V, V) "full", (Na, Nb) "trace", (Na, Nb, |S|, |S|) "subset",
              M itself (Na, Nb, d, d) for "hidden", a HutchinsonEstimate for "hutchinson".
    cross: the tied-embedding cross term X in the same form as `gradient` (a HutchinsonEstimate of tr X, ‖X‖_F²
           for "hutchinson"); None for an untied head, for untied=True, and for "hidden"."""

    representation: jax.Array
    gradient: Any
    cross: Any
    output: str
    vocab_size: int
    tokens: Any = None
    plan: KernelPlan | None = None  # how it was computed

    def total(self):
        """Θ = R ⊗ I + G (+ X) for output "full" / "subset" ((Na, Nb, n, n)) or its trace for "trace"."""
        if self.output not in ("full", "subset", "trace"):
            raise ValueError(f"Kernel.total() needs output 'full', 'subset' or 'trace'; this kernel has "
                             f"output={self.output!r}")
        return total(self.representation, self.gradient, self.cross, self.vocab_size)


@partial(jax.jit, static_argnames=("V",))
def total(s, G, X, V):
    """Θ = s ⊗ I_V + G (+ X) from its parts (traces: V s + tr G (+ tr X))."""
    if G.ndim == 2:  # traces: tr(s I_V) = V s
        t = V * s + G
    else:
        t = s[:, :, None, None] * jnp.eye(G.shape[-1], dtype=G.dtype) + G
    return t if X is None else t + X
