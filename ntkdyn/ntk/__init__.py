"""The decomposed empirical NTK of a causal LM's next-token logits (paper/spec.md §1).

    Θ(c, c') = ∂z(c)/∂θ ∂z(c')/∂θᵀ = R + G (+ X for a tied head),
    R(c, c') = (h(c)·h(c') [+1 with a head bias]) I_V                         representation component
    G(c, c') = W M(c, c') Wᵀ,  M(c, c') = J_h(c) J_h(c')ᵀ ∈ R^{d×d}          gradient component
    X(c, c') = B(c, c') + B(c', c)ᵀ,  B(c, c') = W J_h^E(c) (I_V ⊗ h(c'))      tied cross term

A context c is a (row, position) pair into a token array: the prefix ids[row, :pos+1], whose next-token logits
z(c) = lm.logits(ids)[row, pos] are analysed.

    k = decompose(lm, ids_a, pos_a, ids_b=None, pos_b=None, output="full" | "trace" | "subset" | "hidden" |
                  "hutchinson", tokens=S, method="auto" | "structured" | "jacobian", ...)
    kp = plan(lm, ...)              # the same arguments: what decompose would run (method, sweeps, bytes)

R needs only h (one forward pass). G never needs V×P Jacobians. The methods (ntk/methods: a table of modules with
one interface, plan(request) and run(request, plan)) compute G exactly or by Hutchinson probes:
structured derivatives (the default: per-layer Gram matrices from one backward through the activations per
cotangent, no weight gradient) or Jacobian blocks (J_h by reverse passes). Both take a Mesh: the contexts of every
sweep or chunk are spread over its devices, the parameters replicated or sharded over an "fsdp" axis.

Modules: api.py (decompose, plan, representation, hidden_kernel), request.py (the validated Request), kernel.py
(Kernel, HutchinsonEstimate, KernelPlan), contexts.py (validated (row, position) contexts), shared.py (sides, token
bucketing, Q, the factor of WᵀW, probes and their formulas, the scheduler, mesh placement), methods/ (jacobian,
jacobian_probes, structured, structured_probes), bruteforce.py (the jax.jacrev reference every method is tested
against).
"""
from .api import decompose, hidden_kernel, plan, representation
from .bruteforce import full_kernel_bruteforce
from .contexts import contexts_from_mask
from .kernel import OUTPUTS, HutchinsonEstimate, Kernel, KernelPlan
from .request import DEFAULT_MEMORY_BUDGET, METHODS

__all__ = ["Kernel", "HutchinsonEstimate", "KernelPlan", "decompose", "plan", "representation", "hidden_kernel",
           "full_kernel_bruteforce", "contexts_from_mask", "OUTPUTS", "DEFAULT_MEMORY_BUDGET", "METHODS"]
