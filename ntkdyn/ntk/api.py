"""The API: `decompose` (the eNTK between two sets of contexts split into R, G and, tied, X), `representation`
(s alone, one forward pass per side) and `hidden_kernel` (M = J_h J_hᵀ). See the package docstring for the method."""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .blocks import apply_factor, cross_block, factor, finish_grad, finish_rep, m_block, swap_pairs, trace_block
from .contexts import kernel_contexts
from .engine import Engine, Side, assemble, loop
from .hutchinson import hutchinson
from .kernel import OUTPUTS, Kernel
from .method import METHODS, choose_exact, choose_probes
from .plan import exact_plan, probe_chunks, sizing
from .structured import structured_kernel
from .structured_plan import make_plan as structured_plan
from .structured_probes import probe_sizes, structured_hutchinson

__all__ = ["decompose", "representation", "hidden_kernel"]


def _params(lm, params):
    params = lm.params if params is None else params
    if not (isinstance(params, dict) and "backbone" in params and "head" in params):
        raise ValueError("params must be a pytree with the two top-level keys 'backbone' and 'head' "
                         "(like lm.params)")
    return params


def representation(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, params=None):
    """s(c, c') = h(c)·h(c') (+1 when the head has a bias): R = s ⊗ I_V, (Na, Nb). One forward pass per side."""
    params = _params(lm, params)
    a, b, sym = kernel_contexts(lm.config, ids_a, pos_a, ids_b, pos_b)
    return _representation(lm, params, a, b, sym)[0]


def _representation(lm, params, a, b, sym):
    """s from one forward pass (lm.features, compiled once per ids shape) per side; with h(a), h(b)."""
    ha = lm.features(a[0], params)[a[1], a[2]]
    hb = ha if sym else lm.features(b[0], params)[b[1], b[2]]
    return finish_rep(ha, hb, len(a[1]), len(b[1]), "b" in params["head"]), ha, hb


def hidden_kernel(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, params=None, batch_size=None, mesh=None,
                  memory_budget=None, method="auto", chunk=None):
    """M(c, c') = J_h(c) J_h(c')ᵀ, (Na, Nb, d, d); J_h over ψ (and, tied, the input use of the shared table)."""
    return decompose(lm, ids_a, pos_a, ids_b, pos_b, output="hidden", params=params, batch_size=batch_size,
                     mesh=mesh, memory_budget=memory_budget, method=method, chunk=chunk).gradient


def _is_int(x):
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def _check_options(output, batch_size, memory_budget, num_probes, method, chunk, mesh):
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; expected one of {', '.join(OUTPUTS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer (contexts per chunk); got {batch_size!r}")
    if chunk is not None and (not _is_int(chunk) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer (cotangents or probes per sweep); got {chunk!r}")
    if chunk is not None and method == "jacobian":
        raise ValueError("chunk= is an option of method='structured' (cotangents per sweep); the Jacobian method "
                         "takes batch_size= and memory_budget=")
    if mesh is not None and (method == "structured" or chunk is not None):
        raise ValueError("method='structured' (and its chunk= option) runs on one device and does not take mesh=; "
                         "use method='jacobian' or 'auto' to spread the contexts over the mesh's devices")
    if memory_budget is not None and (not isinstance(memory_budget, (int, np.integer)) or memory_budget < 1):
        raise ValueError(f"memory_budget must be a positive number of bytes; got {memory_budget!r}")
    if output == "hutchinson" and (not _is_int(num_probes) or num_probes < 2):
        raise ValueError(f"num_probes must be an integer >= 2 for output='hutchinson'; got {num_probes!r}")


def _subset_tokens(output, tokens, V):
    """The token subset S (int32, (|S|,)) for output="subset"; None otherwise."""
    if output != "subset":
        if tokens is not None:
            raise ValueError(f"tokens is only used with output='subset'; got output={output!r}")
        return None
    if tokens is None:
        raise ValueError("output='subset' needs tokens=S, a 1-D array of token ids")
    S = np.asarray(tokens)
    if S.ndim != 1 or S.size == 0 or not np.issubdtype(S.dtype, np.integer):
        raise ValueError(f"tokens must be a non-empty 1-D array of integer token ids; got shape {S.shape} "
                         f"dtype {S.dtype}")
    if S.min() < 0 or S.max() >= V:
        bad = sorted(set(S[(S < 0) | (S >= V)].tolist()))[:5]
        raise ValueError(f"tokens holds id(s) {bad} outside the vocabulary [0, {V})")
    return jnp.asarray(S, jnp.int32)


def decompose(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, output: str = "full", tokens=None, params=None,
              batch_size: int | None = None, mesh=None, num_probes: int = 64, seed: int = 0,
              untied: bool = False, memory_budget: int | None = None, method: str = "auto",
              chunk: int | None = None) -> Kernel:
    """The eNTK of the next-token logits between contexts a and b, split into R, G (and X for a tied head).

    ids_a: (B, T) int token rows; pos_a: (B,) one analysed position per row, or (N, 2) (row, position) pairs
    (see `contexts_from_mask`). ids_b/pos_b default to a's (symmetric kernel); pos_b alone reuses ids_a's rows.
    output: "full" (Na, Nb, V, V) | "trace" (Na, Nb) exact | "subset" (Na, Nb, |S|, |S|) with tokens=S |
            "hidden" M (Na, Nb, d, d) | "hutchinson" estimates of tr G and ‖G‖_F² from `num_probes`
            Rademacher probes (G v = W J_h(c) [J_h(c')ᵀ Wᵀ v]: one VJP and one JVP per probe).
    untied: report the view where the tied table is cloned into a separate output head (Θ = R + G, cross None).
    method: "jacobian" (J_h from d reverse passes per context that write weight gradients; parameter groups when
    one context's J_h exceeds the budget), "structured" (structured derivatives: one backward through the
    activations per cotangent, per-layer Gram matrices, never a weight gradient; ntk/structured.py) or "auto"
    (a cost model; see ntk/method.py). k.plan (a KernelPlan) tells which ran, why, and the passes, chunks and
    bytes it predicted.
    batch_size: contexts per vmapped chunk (Jacobian) or per sweep (structured); default from `memory_budget`,
    bytes of Jacobian blocks or sweep outputs held at once, 1 GiB by default. chunk: cotangents (or probes) per
    structured sweep. mesh: a jax.sharding.Mesh; every chunk's contexts are spread over all its devices (Jacobian
    method only). Float64 parameters (with jax x64 enabled) give a float64 kernel.
    """
    _check_options(output, batch_size, memory_budget, num_probes, method, chunk, mesh)
    S = _subset_tokens(output, tokens, lm.config.vocab_size)
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}")
    params = _params(lm, params)
    a, b, sym = kernel_contexts(lm.config, ids_a, pos_a, ids_b, pos_b)
    tied = lm.config.tie_word_embeddings and not untied
    eng = Engine(lm.graphdef, lm.config, params, mesh)
    sz = sizing(lm.config, eng.sp, a, b, memory_budget, batch_size, mesh)
    na, nb, d = len(a[1]), len(b[1]), lm.config.d_model
    if output == "hutchinson":
        sizes = probe_sizes(lm.config, params, max(sz.Ta, sz.Tb), nb, num_probes, sz.budget)
        kp = choose_probes(method if chunk is None else "structured", lm.config, params, sz, na, nb, num_probes,
                           mesh, (batch_size or sizes[0], chunk or sizes[1]), probe_chunks(sz, d, na, nb, num_probes))
        if kp.method == "structured":  # s, h(a), h(b) come out of its own compiled programs
            k = structured_hutchinson(lm.graphdef, lm.config, params, a, b, tied, num_probes, seed, sz.budget, chunk,
                                      batch_size)
        else:
            s, ha, hb = _representation(lm, params, a, b, sym)
            k = hutchinson(eng, a, b, s, ha, hb, sz, tied, num_probes, seed)
        return dataclasses.replace(k, plan=kp)
    jac = exact_plan(sz, d, na, nb, sym)
    bside = (None, None, None) if sym else b
    splan = lambda: structured_plan(lm.config, params, *a, *bside, output=output, tokens=S, untied=untied,  # noqa: E731
                                    memory_budget=memory_budget, chunk=chunk, block=batch_size)
    kp = choose_exact(method, lm.config, params, sz, jac, splan, na, nb, sym, output, mesh, chunk is not None)
    if kp.method == "structured":
        k = structured_kernel(lm.graphdef, lm.config, params, *a, *bside, output=output, tokens=S, untied=untied,
                              memory_budget=memory_budget, chunk=chunk, block=batch_size)
        return Kernel(representation=k.representation, gradient=k.gradient, cross=k.cross, output=output,
                      vocab_size=lm.config.vocab_size, tokens=S, plan=kp)
    return dataclasses.replace(_exact(eng, a, b, sym, sz, output, S, tied, jac), plan=kp)


def _trace_mode(W, output, bs, tied):
    """How trace_block contracts blocks of bs contexts: (mode, post, U). tr G = ⟨L J_h(a), L J_h(b)⟩ (see
    trace_block): untied heads take the rows of L as the cotangents U of the reverse passes, which gives L J_h
    directly at no extra cost (d P per pair instead of the d² P of contracting M with WᵀW: d = 128 times fewer flops
    on the default model); tied heads factor the parameter part after the fact (post, d² P per context), since the
    cross term needs the raw J_x, which pays only for large blocks."""
    if output == "trace" and not tied:
        return "factored", None, factor(W)
    if output == "trace" and bs * bs > 4 * bs:
        return "factored_p", partial(apply_factor, factor(W)), None
    return "m", None, None


def _exact(eng, a, b, sym, sz, output, S, tied, jac) -> Kernel:
    """The exact kernel ("full", "trace", "subset", "hidden"): Jacobian blocks of chunks of contexts, contracted
    block by block (spec §1)."""
    V, W, bias = eng.cfg.vocab_size, eng.sp.W, eng.sp.has_bias
    na, nb = len(a[1]), len(b[1])
    compute, plan = jac
    pad = lambda n: -(-n // compute) * compute  # noqa: E731
    A = Side(*a, sz.Ta, pad(na))
    B = A if sym else Side(*b, sz.Tb, pad(nb))
    want_cross = tied and output != "hidden"
    Sx = jnp.arange(V, dtype=jnp.int32) if output == "full" else S
    acc, cross = {}, {}
    mode, post, U = _trace_mode(W, output, plan[0][2] * compute, tied)
    if U is not None:
        eng.U = U

    def visit(with_x, i, j, JA, JB):
        (Jpa, Jxa, h_a, ida), (Jpb, Jxb, h_b, idb) = JA, JB
        if output == "trace":
            blk = trace_block(W, Jpa, Jxa, ida, Jpb, Jxb, idb, eng.pos_eye, mode)
        else:
            blk = m_block(Jpa, Jxa, ida, Jpb, Jxb, idb, eng.pos_eye)
        acc[(i, j)] = blk if (i, j) not in acc else acc[(i, j)] + blk
        if want_cross and with_x:
            cross[(i, j)] = cross_block(W, Sx, Jxa, ida, h_a, Jxb, idb, h_b,
                                        "trace" if output == "trace" else "matrix")

    hA, hB = loop(eng, A, B, sym, compute, plan, visit, post)
    s = finish_rep(hA, hB, na, nb, bias)
    G = finish_grad(assemble(acc, sym, swap_pairs), W, S, na, nb, output)
    X = finish_grad(assemble(cross, sym, swap_pairs), W, S, na, nb, "hidden") if want_cross else None
    return Kernel(representation=s, gradient=G, cross=X, output=output, vocab_size=V, tokens=S)
