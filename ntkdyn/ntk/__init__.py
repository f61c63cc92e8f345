"""The decomposed empirical NTK of a causal LM's next-token logits (paper/spec.md §1).

    Θ(c, c') = ∂z(c)/∂θ ∂z(c')/∂θᵀ = R + G (+ X for a tied head),
    R(c, c') = (h(c)·h(c') [+1 with a head bias]) I_V                         representation component
    G(c, c') = W M(c, c') Wᵀ,  M(c, c') = J_h(c) J_h(c')ᵀ ∈ R^{d×d}          gradient component
    X(c, c') = B(c, c') + B(c', c)ᵀ,  B(c, c') = W J_h^E(c) (I_V ⊗ h(c'))      tied cross term

A context c is a (row, position) pair into a token array: the prefix ids[row, :pos+1], whose next-token logits
z(c) = lm.logits(ids)[row, pos] are analysed.

Fast path (never a V×P Jacobian). R needs only h (one forward pass). J_h(c) (d × P_ψ) is built from d
reverse-mode passes per context (one jax.vjp of h(c), vmapped over the d cotangents and over a chunk of
contexts), then M = J_h J_hᵀ is one contraction over the parameters and G = W M Wᵀ, G_S = W_S M W_Sᵀ. For the
trace, tr G = ⟨WᵀW, M⟩_F = ⟨L J_h(c), L J_h(c')⟩ with LᵀL = WᵀW: the reverse passes take the rows of L as
cotangents and the kernel is one Gram matrix (N² d P instead of N² d² P). Work is chunked over contexts (and, if
one context's J_h is too large, over parameter leaves) within a memory budget; a Mesh spreads each chunk's
contexts over its devices.

The input-embedding tables are never differentiated as V×d leaves: h is differentiated w.r.t. the looked-up
input vectors x_t = E[ids_t] (+ P[t] for GPT-2), J_x(c) ∈ R^{d×T×d}, and the table rows are recovered from the
lookup: ∂h/∂E_v = Σ_{t: ids_t = v} ∂h/∂x_t, ∂h/∂P_p = ∂h/∂x_p. Hence the table part of M is
Σ_{t,s} Q(c,c')[t,s] J_x(c)[:, t] J_x(c')[:, s]ᵀ with Q[t,s] = [ids_t = ids'_s] (+ [t = s] for GPT-2's
positions), and for a tied head the same J_x gives the cross term X without V×d×d objects.

Structured path (real models). Materialising J_h costs d·P floats per context and a weight gradient per reverse
pass; structured derivatives never form either: for a Dense layer with inputs u_t and output cotangents δ_t,
⟨∂_W h(c)ᵀ r, ∂_W h(c')ᵀ r'⟩ = Σ_{t,s} (u_t·u'_s)(δ_t·δ'_s), with every δ from one backward through the activations
(zero taps at the Dense outputs, models/transformer.Taps). `decompose(method="auto")` picks the path by a cost model
(method.py) and reports it as `k.plan`; method="jacobian" | "structured" forces either.

Modules: kernel.py (the Kernel result, HutchinsonEstimate), contexts.py (validated (row, position) contexts),
jacobians.py (the parameter split and J_h by reverse passes), blocks.py (M, tr G, X from Jacobian blocks), plan.py
(the Jacobian path's chunking, sharding helpers), engine.py (the chunked sweep over contexts), hutchinson.py (probe
estimates), structured.py (exact kernels by structured derivatives), structured_plan.py (its sweeps and chunks),
structured_probes.py (probe estimates by structured derivatives), method.py (the choice of method: KernelPlan),
bruteforce.py (the jax.jacrev reference), api.py (the API: decompose, representation, hidden_kernel).
"""
from .api import decompose, hidden_kernel, representation
from .bruteforce import full_kernel_bruteforce
from .contexts import contexts_from_mask
from .kernel import OUTPUTS, HutchinsonEstimate, Kernel
from .method import METHODS, KernelPlan
from .plan import DEFAULT_MEMORY_BUDGET

__all__ = ["Kernel", "HutchinsonEstimate", "decompose", "representation", "hidden_kernel",
           "full_kernel_bruteforce", "contexts_from_mask", "OUTPUTS", "DEFAULT_MEMORY_BUDGET", "KernelPlan", "METHODS"]
