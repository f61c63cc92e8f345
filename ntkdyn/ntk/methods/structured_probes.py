"""Hutchinson estimates of tr G and ‖G‖_F² (and of the tied X) by structured derivatives (spec §1), never forming a
weight gradient: G(c, c') v = W J_h(c) [J_h(c')ᵀ u], u = Wᵀ v.

VJP side: g(c'; u) = J_h(c')ᵀ u is kept in structured form, the cotangents δ'_s of every Dense output, δx'_s of the
looked-up rows and the small parameters' gradients, from one backward through the activations (structured.sweep).
JVP side: the tangent Ẇ = Σ_s u'_s δ'_sᵀ of a Dense enters its output at c as x_t Ẇ = Σ_s (u_t·u'_s) δ'_s (u_t: what
the Dense reads at c), which is fed to the Dense's tap (models/transformer.Taps); the lookup tables' tangent reaches
c's rows as Σ_s Q[t, s] δx'_s (shared.q); the small parameters take g directly. So per probe: one VJP per b context
and one JVP per (a, b) pair, as the Jacobian method's probes, without P floats per probe. The estimates from y and
the tied X are shared.g_estimates and shared.tied_x_estimates; the probes are shared.rademacher (same seed, same
probes as the Jacobian method).

Mesh (request.mesh): the b contexts of every block (the VJP sweep's and the vmapped JVPs' context axis) are spread
over all the mesh's devices, the block rounded up to a multiple of the device count; the parameters are placed by
shared.place_params; GSPMD runs the same programs.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ...models.transformer import EMBED, Taps, features
from ..kernel import HutchinsonEstimate, Kernel, KernelPlan
from ..shared import (auto_mesh, cat, dense_sizes, devices, finish_probes, finish_rep, g_estimates, place_params, q,
                      rademacher, seconds, sharded, tied_x_estimates, tokens_kept)
from .structured import dense_kinds, model_params, split_backbone, sweep, zero_taps

__all__ = ["NAME", "OUTPUTS", "plan", "run"]

NAME = "structured"
OUTPUTS = ("hutchinson",)


def _probe_jvp(graphdef, cfg, big, small, table, ida, pa, SB, hb, U, probes, W, tied):
    """Per b context and probe of the sweep SB: (vᵀ G v, ‖G v‖² [, vᵀ X v, ‖X v‖²]) at the a context (ids ida (T,),
    analysed position pa): ((nb, k, np), h(a) (d,)). The a context is linearised once: its primal pass records
    what every Dense reads (u, {kind: (L, T, n)}), the positions and h(a), so no separate forward is compiled."""
    kinds = dense_kinds(big)
    leaves, treedef = jax.tree.flatten(small)
    C = W.T @ W
    dtype = SB.dx.dtype
    zeros = zero_taps(big, kinds, ida.shape[0], cfg.d_model, dtype)

    def h_a(small, taps):
        t = Taps(taps)
        h = features(graphdef, cfg, model_params(big, small, table), ida[None], taps=t)[0][0]
        u = t.inputs_BxTxN
        h_p = jax.lax.dynamic_index_in_dim(h, pa, 0, keepdims=False)
        return h_p, ({k: jnp.stack([u[p][0] for p in ps]) for k, ps in kinds.items()}, t.positions_BxT[0], h_p)

    _, lin, (ua, posa, ha) = jax.linearize(h_a, small, zeros, has_aux=True)

    def unflat(ds):  # (P_small,) -> the small pytree
        out, o = [], 0
        for x in leaves:
            out.append(ds[o:o + x.size].reshape(x.shape))
            o += x.size
        return treedef.unflatten(out)

    def per_b(ub, dub, dxb, dsb, idb, posb, h_b):
        # tangents of every tap for every probe: x_t Ẇ = Σ_s (u_t·u'_s) δ'_s, lookups Σ_s Q[t,s] δx'_s
        tang = {}
        for kind, ps in kinds.items():
            Gr = jnp.einsum("Ltn,Lsn->Lts", ua[kind], ub[kind])
            Z = jnp.einsum("Lts,Lpsm->Lptm", Gr, dub[kind])
            for L, p in enumerate(ps):
                tang[p] = Z[L][:, None]
        Q = q(ida, idb, dtype, posa, posb) if "pos" in big else q(ida, idb, dtype)
        tang[EMBED] = jnp.einsum("ts,psj->ptj", Q, dxb)[:, None]
        st = jax.vmap(unflat)(dsb)
        npr = dsb.shape[0]
        if tied:  # X v = W J_x(a) (v[ids_a] ⊗ h(b)) + Σ_s e_{ids_b[s]} (δx'_s·h(a)): its J_x(a) tangent rides along
            # as npr more tangents of the same JVP (zero everywhere but the looked-up rows), so that the program
            # holds one JVP through the network instead of two (compilation is most of the cost of a few probes)
            tx = (probes[:, ida][:, :, None] * h_b[None, None, :])[:, None]  # (np, 1, T, d)
            st = jax.tree.map(lambda x: jnp.concatenate([x, jnp.zeros_like(x)]), st)
            tang = {p: jnp.concatenate([t, tx if p == EMBED else jnp.zeros_like(t)]) for p, t in tang.items()}
        y_all = jax.vmap(lin)(st, tang)
        out = g_estimates(U, C, y_all[:npr])
        if tied:
            out += tied_x_estimates(U, C, W, y_all[npr:], probes[:, idb], jnp.einsum("psj,j->ps", dxb, ha), idb)
        return jnp.stack(out)

    return jax.vmap(per_b, in_axes=(1, 1, 0, 0, 0, 0, 0))(SB.u, SB.du, SB.dx, SB.ds, SB.ids, SB.positions, hb), ha


@partial(jax.jit, static_argnames=("graphdef", "cfg", "tied"))
def _probe_block(graphdef, cfg, big, small, table, ida, pa, rows_b, pos_b, U, probes, W, tied):
    """One compiled program per (b block, probe chunk): the VJP sweep of the b contexts along the probes U (pc, d)
    (its primal output is h(b)) and, per a context, one linearisation (its primal pass gives what the Dense layers
    read and h(a)) applied to every probe's tangents. Returns (estimates (na, nb, k, pc), h(a) (na, d), h(b)
    (nb, d)). One program, one forward per a context: compilation, most of the cost of a few probes, is paid once
    for the smallest program that does the work."""
    SB = sweep(graphdef, cfg, big, small, table, rows_b, pos_b, jnp.broadcast_to(U, (rows_b.shape[0],) + U.shape))
    hb = SB.h

    def per_a(xs):
        ida_i, pa_i = xs
        return _probe_jvp(graphdef, cfg, big, small, table, ida_i, pa_i, SB, hb, U, probes, W, tied)

    est, ha = jax.lax.map(per_a, (ida, pa))
    return est, ha, hb


def _tokens(req):
    Ta = tokens_kept(req.a.ids, req.a.pos)
    return Ta, (Ta if req.sym else tokens_kept(req.b.ids, req.b.pos))


def plan(req) -> KernelPlan:
    """(cb, pc): b contexts and probes per VJP sweep so that the held δ (T (Σm + d) floats per context and probe)
    and the JVP's tangent activations (about 3 T (Σm + Σn) per b context and probe) stay within the budget;
    req.batch_size / req.chunk force them. On a mesh cb is rounded up to a multiple of its devices."""
    cfg, n = req.cfg, req.num_probes
    T = max(_tokens(req))
    P_D, sum_m, sum_n = dense_sizes(req.params)
    item = req.itemsize
    per = item * T * (sum_m + cfg.d_model + 3 * (sum_m + sum_n) + cfg.n_layers * cfg.n_heads * T)
    fit = max(1, int(req.memory_budget // per))
    pc = min(n, fit)
    cb = max(1, min(req.nb, fit // pc))
    cb, pc = req.batch_size or cb, req.chunk or pc
    n_dev = devices(req.mesh)
    cb = -(-cb // n_dev) * n_dev
    vjps, jvps = req.nb * n, req.na * req.nb * n
    secs = seconds("structured_probes", vjps * 4 * T * P_D + jvps * (2 * T * P_D + 2 * T * T * (sum_m + sum_n)),
                   2 * vjps * T * sum_m * item, cfg.n_layers)
    held = item * cb * pc * T * (sum_m + cfg.d_model + 3 * (sum_m + sum_n))
    return KernelPlan(NAME, "", vjps + jvps, -(-req.nb // cb) * -(-n // pc), pc, 1, int(held), req.memory_budget,
                      {NAME: secs}, (cb, pc), n_dev, -(-int(held) // n_dev))  # the b contexts split, none gathered


def run(req, kp: KernelPlan) -> Kernel:
    """The "hutchinson" Kernel, with s = h(a)·h(b) (+1 with a head bias) from the same programs."""
    cb, pc = kp.detail
    cfg, n = req.cfg, req.num_probes
    mesh = None if req.mesh is None else auto_mesh(req.mesh)
    put = jnp.asarray if mesh is None else partial(sharded, mesh)
    params = place_params(mesh, req.params)
    W = params["head"]["W"]
    probes, U = rademacher(W, req.seed, n)
    big, small = split_backbone(params["backbone"])
    table = W if cfg.tie_word_embeddings else None
    Ta, Tb = _tokens(req)
    ida, idb = req.a.ids[req.a.rows, :Ta], req.b.ids[req.b.rows, :Tb]
    na, nb = req.na, req.nb
    ida, pa = jnp.asarray(ida), jnp.asarray(req.a.pos, jnp.int32)
    cols, hbs = [], []
    for sb in range(0, nb, cb):
        idx = np.minimum(np.arange(sb, sb + cb), nb - 1)  # padded by repeating the last context
        rows_b, pos_b = put(idb[idx]), put(req.b.pos[idx])
        probe_cols = []
        for sp in range(0, n, pc):
            k = np.minimum(np.arange(sp, sp + pc), n - 1)
            est, ha, hb = _probe_block(req.graphdef, cfg, big, small, table, ida, pa, rows_b, pos_b, U[k], probes[k],
                                       W, req.tied)
            probe_cols.append(est[..., :min(pc, n - sp)])
        hbs.append(hb[:min(cb, nb - sb)])
        cols.append(cat(probe_cols, axis=-1)[:, :min(cb, nb - sb)])
    mean, se = finish_probes(cat(cols, axis=1), na, nb)  # est (na, nb, k, np)
    s = finish_rep(ha, cat(hbs), na, nb, req.has_bias)
    G = HutchinsonEstimate(mean[..., 0], se[..., 0], mean[..., 1], se[..., 1], n)
    X = HutchinsonEstimate(mean[..., 2], se[..., 2], mean[..., 3], se[..., 3], n) if req.tied else None
    return Kernel(representation=s, gradient=G, cross=X, output="hutchinson", vocab_size=cfg.vocab_size)
