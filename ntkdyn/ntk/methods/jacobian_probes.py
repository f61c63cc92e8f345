"""Hutchinson estimates of tr G and ‖G‖_F² (and of the tied X) by the Jacobian method's passes (spec §1), without
J_h: G(c, c') v = W J_h(c) [J_h(c')ᵀ Wᵀ v], one VJP per (b context, probe), which writes a P-float weight gradient,
and one JVP per (a context, b context, probe). Runs on a Mesh (the a contexts spread over the devices)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ...models.lm import features_of
from ..kernel import HutchinsonEstimate, Kernel, KernelPlan
from ..shared import (cat, dense_sizes, finish_probes, finish_rep, g_estimates, rademacher, seconds, side,
                      tied_x_estimates)
from .jacobian import Placed, h_at, pow2, sizing, slot_q

__all__ = ["NAME", "OUTPUTS", "plan", "run"]

NAME = "jacobian"
OUTPUTS = ("hutchinson",)


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def probe_vjp(graphdef, cfg, psi, E, ptab, rows, pos, U):
    """g(c') = J_h(c')ᵀ u for every probe u = Wᵀ v: (ψ leaves (n, np, ...), input part (n, np, T, d))."""

    def one(row, p):
        x = E[row]
        _, vjp = jax.vjp(lambda psi, x: h_at(graphdef, cfg, psi, x, ptab, p), psi, x)
        return jax.vmap(vjp)(U)

    return jax.vmap(one)(rows, pos)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "positions", "tied"))
def probe_jvp(graphdef, cfg, psi, E, ptab, rows_a, pos_a, ha, gpsi, gx, idb, hb, U, probes, W, positions, tied):
    """Per (a, b, probe): vᵀ G v and ‖G v‖² with G v = W J_h(a) g(b) (one JVP), and the same for the tied X."""
    C = W.T @ W

    def one(row, p, h_a):
        x = E[row]
        f = lambda psi, x: h_at(graphdef, cfg, psi, x, ptab, p)  # noqa: E731
        jv = lambda tpsi, tx: jax.jvp(f, (psi, x), (tpsi, tx))[1]  # noqa: E731
        jvx = lambda tx: jax.jvp(lambda x: f(psi, x), (x,), (tx,))[1]  # noqa: E731

        def per_b(gp, gxb, ib, h_b):
            Q = slot_q(row, ib, positions, gxb.dtype)  # (Ta, Tb): the table tangent g(b) as a's lookup sees it
            y = jax.vmap(jv)(gp, jnp.einsum("ts,psj->ptj", Q, gxb))  # (np, d) = J_h(a) g(b)
            out = g_estimates(U, C, y)
            if tied:  # X v = W J_x(a) (v[ids_a] ⊗ h(b)) + Σ_s e_{ids_b[s]} (g_x(b)[s]·h(a))
                yx = jax.vmap(jvx)(probes[:, row][:, :, None] * h_b[None, None, :])  # (np, d)
                out += tied_x_estimates(U, C, W, yx, probes[:, ib], jnp.einsum("psj,j->ps", gxb, h_a), ib)
            return jnp.stack(out)  # (k, np)

        return jax.vmap(per_b)(gpsi, gx, idb, hb)

    return jax.vmap(one)(rows_a, pos_a, ha)  # (na, nb, k, np)


def _pad_rows(h, n_pad):
    """h (n, d) padded to n_pad rows by repeating the last one (as shared.side pads its contexts)."""
    return jnp.concatenate([h, jnp.repeat(h[-1:], n_pad - len(h), 0)]) if n_pad > len(h) else h


def plan(req) -> KernelPlan:
    """Chunk sizes (ca, cb) of the a and b contexts: a b chunk holds its contexts' probe VJPs (num_probes · (P + T d)
    floats each); an a chunk's JVPs run over all probes of a b chunk."""
    sz, d, n = sizing(req), req.cfg.d_model, req.num_probes
    na, nb = req.na, req.nb
    T = max(sz.Ta, sz.Tb)
    P = sum(sz.leaf_sizes)
    per_b = n * (P + T * d) * sz.itemsize  # one b context's probe VJPs
    cb = sz.batch_size or max(1, min(pow2(nb), int(sz.budget // (2 * per_b))))
    ca = sz.batch_size or max(1, min(pow2(na), int(sz.budget // (n * cb * d * T * 4 * sz.width * sz.itemsize + 1))))
    ca = -(-ca // sz.n_dev) * sz.n_dev
    P_D = dense_sizes(req.params)[0]
    vjps, jvps = nb * n, na * nb * n
    secs = seconds("jacobian_probes", vjps * 6 * T * P_D + jvps * 4 * T * P_D, 3 * vjps * P * sz.itemsize
                   + jvps * P * sz.itemsize, req.cfg.n_layers)
    return KernelPlan(NAME, "", vjps + jvps, -(-na // ca) * -(-nb // cb), cb, 1, int(cb * per_b), sz.budget,
                      {NAME: secs}, (ca, cb, sz), sz.n_dev, int(cb * per_b))  # the held b VJPs are not split


def run(req, kp: KernelPlan) -> Kernel:
    """The "hutchinson" Kernel: s from one forward pass per side, the probe estimates chunk by chunk."""
    ca, cb, sz = kp.detail
    pl, cfg = Placed(req), req.cfg
    W, V, na, nb = pl.sp.W, cfg.vocab_size, req.na, req.nb
    ha = features_of(req.graphdef, cfg, req.params, req.a.ids)[req.a.rows, req.a.pos]
    hb = ha if req.sym else features_of(req.graphdef, cfg, req.params, req.b.ids)[req.b.rows, req.b.pos]
    s = finish_rep(ha, hb, na, nb, pl.sp.has_bias)
    probes, U = rademacher(W, req.seed, req.num_probes)
    A = side(req.a, -(-na // ca) * ca, sz.Ta)
    B = side(req.b, -(-nb // cb) * cb, sz.Tb)
    hA, hB = _pad_rows(ha, len(A.pos)), _pad_rows(hb, len(B.pos))
    rows_out = []
    for sa in range(0, len(A.pos), ca):
        cols = []
        for sb in range(0, len(B.pos), cb):
            rows_b, pos_b = jnp.asarray(B.ids[sb:sb + cb]), jnp.asarray(B.pos[sb:sb + cb])
            gpsi, gx = probe_vjp(req.graphdef, cfg, pl.psi, pl.E, pl.P, rows_b, pos_b, U)
            cols.append(probe_jvp(req.graphdef, cfg, pl.psi, pl.E, pl.P, pl.put(A.ids[sa:sa + ca]),
                                  pl.put(A.pos[sa:sa + ca]), pl.put(hA[sa:sa + ca]), gpsi, gx, rows_b,
                                  hB[sb:sb + cb], U, probes, W, pl.positions, req.tied))
        rows_out.append(cat(cols, axis=1))
    mean, se = finish_probes(cat(rows_out), na, nb)
    G = HutchinsonEstimate(mean[..., 0], se[..., 0], mean[..., 1], se[..., 1], req.num_probes)
    X = HutchinsonEstimate(mean[..., 2], se[..., 2], mean[..., 3], se[..., 3], req.num_probes) if req.tied else None
    return Kernel(representation=s, gradient=G, cross=X, output="hutchinson", vocab_size=V)
