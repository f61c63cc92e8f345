"""Hutchinson estimates of tr G and ‖G‖_F² (and of the tied X) from Rademacher probes v (spec §1), without J_h:
G(c, c') v = W J_h(c) [J_h(c')ᵀ Wᵀ v], one VJP per (b context, probe) and one JVP per (a context, b context, probe).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .blocks import q
from .engine import Side, cat
from .jacobians import h_at
from .kernel import HutchinsonEstimate, Kernel
from .plan import probe_chunks

__all__ = ["hutchinson"]


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def probe_vjp(graphdef, cfg, psi, E, ptab, rows, pos, U):
    """g(c') = J_h(c')ᵀ u for every probe u = Wᵀ v: (ψ leaves (n, np, ...), input part (n, np, T, d))."""

    def one(row, p):
        x = E[row]
        _, vjp = jax.vjp(lambda psi, x: h_at(graphdef, cfg, psi, x, ptab, p), psi, x)
        return jax.vmap(vjp)(U)

    return jax.vmap(one)(rows, pos)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "pos_eye", "tied"))
def probe_jvp(graphdef, cfg, psi, E, ptab, rows_a, pos_a, ha, gpsi, gx, idb, hb, U, probes, W, pos_eye, tied):
    """Per (a, b, probe): vᵀ G v and ‖G v‖² with G v = W J_h(a) g(b) (one JVP), and the same for the tied X."""
    C = W.T @ W

    def one(row, p, h_a):
        x = E[row]
        f = lambda psi, x: h_at(graphdef, cfg, psi, x, ptab, p)  # noqa: E731
        jv = lambda tpsi, tx: jax.jvp(f, (psi, x), (tpsi, tx))[1]  # noqa: E731
        jvx = lambda tx: jax.jvp(lambda x: f(psi, x), (x,), (tx,))[1]  # noqa: E731

        def per_b(gp, gxb, ib, h_b):
            Q = q(row, ib, pos_eye, gxb.dtype)  # (Ta, Tb): the table tangent g(b) as seen by a's lookup
            y = jax.vmap(jv)(gp, jnp.einsum("ts,psj->ptj", Q, gxb))  # (np, d) = J_h(a) g(b)
            out = [jnp.sum(U * y, -1), jnp.einsum("pk,kl,pl->p", y, C, y)]
            if tied:
                # X v = W J_x(a) (v[ids_a] ⊗ h(b)) + Σ_s e_{ids_b[s]} (g_x(b)[s]·h(a))
                yx = jax.vmap(jvx)(probes[:, row][:, :, None] * h_b[None, None, :])  # (np, d)
                sv = jnp.einsum("psj,j->ps", gxb, h_a)  # (np, Tb)
                trx = jnp.sum(U * yx, -1) + jnp.sum(probes[:, ib] * sv, -1)
                frx = (jnp.einsum("pk,kl,pl->p", yx, C, yx) + 2 * jnp.sum((yx @ W[ib].T) * sv, -1)
                       + jnp.einsum("ps,st,pt->p", sv, q(ib, ib, False, sv.dtype), sv))
                out += [trx, frx]
            return jnp.stack(out)  # (k, np)

        return jax.vmap(per_b)(gpsi, gx, idb, hb)

    return jax.vmap(one)(rows_a, pos_a, ha)  # (na, nb, k, np)


@partial(jax.jit, static_argnames=("na", "nb"))
def finish_probes(est, na, nb):
    """Mean over the probes and its standard error, unpadded: (na, nb, k) each."""
    est = est[:na, :nb]
    return est.mean(-1), est.std(-1, ddof=1) / jnp.sqrt(est.shape[-1])


def _pad_rows(h, n_pad):
    """h (n, d) padded to n_pad rows by repeating the last one (like Side pads its contexts)."""
    return jnp.concatenate([h, jnp.repeat(h[-1:], n_pad - len(h), 0)]) if n_pad > len(h) else h


def hutchinson(eng, a, b, s, ha, hb, sz, tied, num_probes, seed) -> Kernel:
    """The "hutchinson" Kernel between contexts a and b ((ids, rows, positions) each) with s, h(a), h(b) already
    computed; eng: an engine.Engine, sz: a plan.Sizing."""
    d, V = eng.cfg.d_model, eng.cfg.vocab_size
    W = eng.sp.W
    probes = jax.random.rademacher(jax.random.key(seed), (num_probes, V), dtype=eng.sp.dtype)
    U = probes @ W  # (np, d): Wᵀ v
    na, nb = len(a[1]), len(b[1])
    ca, cb = probe_chunks(sz, d, na, nb, num_probes)
    A = Side(*a, sz.Ta, -(-na // ca) * ca)
    B = Side(*b, sz.Tb, -(-nb // cb) * cb)
    hA, hB = _pad_rows(ha, A.n_pad), _pad_rows(hb, B.n_pad)
    rows_out = []
    for sa in range(0, A.n_pad, ca):
        cols = []
        for sb in range(0, B.n_pad, cb):
            rows_b, pos_b = jnp.asarray(B.ctx_ids[sb:sb + cb]), jnp.asarray(B.pos[sb:sb + cb])
            gpsi, gx = probe_vjp(eng.graphdef, eng.cfg, eng.psi, eng.E, eng.P, rows_b, pos_b, U)
            cols.append(probe_jvp(eng.graphdef, eng.cfg, eng.psi, eng.E, eng.P, eng.put(A.ctx_ids[sa:sa + ca]),
                                  eng.put(A.pos[sa:sa + ca]), eng.put(hA[sa:sa + ca]), gpsi, gx, rows_b,
                                  hB[sb:sb + cb], U, probes, W, eng.pos_eye, tied))
        rows_out.append(cat(cols, axis=1))
    mean, se = finish_probes(cat(rows_out), na, nb)
    G = HutchinsonEstimate(mean[..., 0], se[..., 0], mean[..., 1], se[..., 1], num_probes)
    X = HutchinsonEstimate(mean[..., 2], se[..., 2], mean[..., 3], se[..., 3], num_probes) if tied else None
    return Kernel(representation=s, gradient=G, cross=X, output="hutchinson", vocab_size=V)
