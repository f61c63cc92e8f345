"""Hutchinson estimates of tr G and ‖G‖_F² (and of the tied X) by structured derivatives (spec §1), never forming a
weight gradient: G(c, c') v = W J_h(c) [J_h(c')ᵀ u], u = Wᵀ v.

VJP side: g(c'; u) = J_h(c')ᵀ u is kept in structured form, the cotangents δ'_s of every Dense output, δx'_s of the
looked-up rows and the small parameters' gradients, from one backward through the activations (structured._sweep).
JVP side: the tangent Ẇ = Σ_s u'_s δ'_sᵀ of a Dense enters its output at c as x_t Ẇ = Σ_s (u_t·u'_s) δ'_s (u_t: what
the Dense reads at c), which is fed to the Dense's tap (models/transformer.Taps); the lookup tables' tangent reaches
c's rows as Σ_s Q[t, s] δx'_s (Q = [id_t = id'_s] (+ [pos_t = pos'_s])); the small parameters take g directly. So per
probe: one VJP per b context and one JVP per (a, b) pair, as ntk/hutchinson.py, without P floats per probe.
The tied cross term X uses the same δx' (see ntk/hutchinson.py for the formulas).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ..models.transformer import EMBED, Taps, features
from .blocks import finish_rep
from .engine import cat
from .hutchinson import finish_probes
from .kernel import HutchinsonEstimate, Kernel
from .structured import _kinds, _split, _sweep

__all__ = ["structured_hutchinson", "probe_sizes"]


def _model_params(big, small, table):
    bb = traverse_util.unflatten_dict({**traverse_util.flatten_dict(big), **traverse_util.flatten_dict(small)})
    return {"backbone": bb, "head": {} if table is None else {"W": table}}


def _probe_jvp(graphdef, cfg, big, small, table, ida, pa, SB, hb, U, probes, W, tied):
    """Per b context and probe of the sweep SB: (vᵀ G v, ‖G v‖² [, vᵀ X v, ‖X v‖²]) at the a context (ids ida (T,),
    analysed position pa): ((nb, k, np), h(a) (d,)). The a context is linearised once: its primal pass records
    what every Dense reads (u, {kind: (L, T, n)}), the positions and h(a), so no separate forward is compiled."""
    kinds = _kinds(big)
    leaves, treedef = jax.tree.flatten(small)
    C = W.T @ W
    dtype = SB.dx.dtype
    T = ida.shape[0]
    zeros = {p: jnp.zeros((1, T, big_k.shape[1]), dtype)
             for p, big_k in ((p, traverse_util.flatten_dict(big)[p + ("kernel",)]) for ps in kinds.values()
                              for p in ps)}
    zeros[EMBED] = jnp.zeros((1, T, cfg.d_model), dtype)

    def h_a(small, taps):
        t = Taps(taps)
        h = features(graphdef, cfg, _model_params(big, small, table), ida[None], taps=t)[0][0]
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
        Q = (ida[:, None] == idb[None, :]).astype(dtype)
        if "pos" in big:
            Q = Q + (posa[:, None] == posb[None, :]).astype(dtype)
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
        y = y_all[:npr]
        out = [jnp.sum(U * y, -1), jnp.einsum("pk,kl,pl->p", y, C, y)]
        if tied:
            yx = y_all[npr:]
            sv = jnp.einsum("psj,j->ps", dxb, ha)
            Qb = (idb[:, None] == idb[None, :]).astype(dtype)
            out += [jnp.sum(U * yx, -1) + jnp.sum(probes[:, idb] * sv, -1),
                    jnp.einsum("pk,kl,pl->p", yx, C, yx) + 2 * jnp.sum((yx @ W[idb].T) * sv, -1)
                    + jnp.einsum("ps,st,pt->p", sv, Qb, sv)]
        return jnp.stack(out)

    return jax.vmap(per_b, in_axes=(1, 1, 0, 0, 0, 0, 0))(SB.u, SB.du, SB.dx, SB.ds, SB.ids, SB.positions, hb), ha


@partial(jax.jit, static_argnames=("seed", "num_probes"))
def _probes(W, seed, num_probes):
    """The Rademacher probes v (np, V) of `seed` (the same as ntk/hutchinson.py) and U = v W (np, d)."""
    probes = jax.random.rademacher(jax.random.key(seed), (num_probes, W.shape[0]), dtype=W.dtype)
    return probes, probes @ W


def probe_sizes(cfg, params, T, nb, num_probes, budget):
    """(cb, pc): b contexts and probes per VJP sweep so that the held δ (T (Σm + d) floats per context and probe)
    and the JVP's tangent activations (about 3 T (Σm + Σn) per b context and probe) stay within `budget` bytes."""
    flat = traverse_util.flatten_dict(params["backbone"])
    ks = [v.shape for p, v in flat.items() if p[-1] == "kernel"]
    sum_m, sum_n = sum(m for _, m in ks), sum(n for n, _ in ks)
    item = jnp.dtype(jnp.result_type(*jax.tree.leaves(params))).itemsize
    per = item * T * (sum_m + cfg.d_model + 3 * (sum_m + sum_n) + cfg.n_layers * cfg.n_heads * T)
    fit = max(1, int(budget // per))
    pc = min(num_probes, fit)
    return max(1, min(nb, fit // pc)), pc


@partial(jax.jit, static_argnames=("graphdef", "cfg", "tied"))
def _probe_block(graphdef, cfg, big, small, table, ida, pa, rows_b, pos_b, U, probes, W, tied):
    """One compiled program per (b block, probe chunk): the VJP sweep of the b contexts along the probes U (pc, d)
    (its primal output is h(b)) and, per a context, one linearisation (its primal pass gives what the Dense layers
    read and h(a)) applied to every probe's tangents. Returns (estimates (na, nb, k, pc), h(a) (na, d), h(b)
    (nb, d)). One program, one forward per a context: compilation, most of the cost of a few probes, is paid once
    for the smallest program that does the work."""
    SB = _sweep(graphdef, cfg, big, small, table, rows_b, pos_b, jnp.broadcast_to(U, (rows_b.shape[0],) + U.shape))
    hb = SB.h

    def per_a(xs):
        ida_i, pa_i = xs
        return _probe_jvp(graphdef, cfg, big, small, table, ida_i, pa_i, SB, hb, U, probes, W, tied)

    est, ha = jax.lax.map(per_a, (ida, pa))
    return est, ha, hb


def structured_hutchinson(graphdef, cfg, params, a, b, tied, num_probes, seed, budget, chunk=None, block=None):
    """The "hutchinson" Kernel between contexts a and b ((ids, rows, positions) each), with s = h(a)·h(b) (+1 with a
    head bias) from the same programs. chunk / block force the probes per sweep and the b contexts per sweep. Same
    probes (seed) as ntk/hutchinson.py."""
    W = params["head"]["W"]
    V = W.shape[0]
    probes, U = _probes(W, seed, num_probes)  # U (np, d): Wᵀ v
    big, small = _split(params["backbone"])
    table = W if cfg.tie_word_embeddings else None
    Ta, Tb = (min(-(-(int(c[2].max()) + 1) // 8) * 8, c[0].shape[1]) for c in (a, b))  # exact by causality
    ida, idb = a[0][a[1], :Ta], b[0][b[1], :Tb]
    na, nb = len(a[1]), len(b[1])
    cb, pc = probe_sizes(cfg, params, max(Ta, Tb), nb, num_probes, budget)
    cb, pc = block or cb, chunk or pc
    ida, pa = jnp.asarray(ida), jnp.asarray(a[2], jnp.int32)
    cols, hbs = [], []
    for sb in range(0, nb, cb):
        idx = np.minimum(np.arange(sb, sb + cb), nb - 1)  # padded by repeating the last context
        rows_b, pos_b = jnp.asarray(idb[idx]), jnp.asarray(b[2][idx])
        probe_cols = []
        for sp in range(0, num_probes, pc):
            k = np.minimum(np.arange(sp, sp + pc), num_probes - 1)
            est, ha, hb = _probe_block(graphdef, cfg, big, small, table, ida, pa, rows_b, pos_b, U[k], probes[k], W,
                                       tied)
            probe_cols.append(est[..., :min(pc, num_probes - sp)])
        hbs.append(hb[:min(cb, nb - sb)])
        cols.append(cat(probe_cols, axis=-1)[:, :min(cb, nb - sb)])
    mean, se = finish_probes(cat(cols, axis=1), na, nb)  # est (na, nb, k, np)
    s = finish_rep(ha, cat(hbs), na, nb, "b" in params["head"])
    G = HutchinsonEstimate(mean[..., 0], se[..., 0], mean[..., 1], se[..., 1], num_probes)
    X = HutchinsonEstimate(mean[..., 2], se[..., 2], mean[..., 3], se[..., 3], num_probes) if tied else None
    return Kernel(representation=s, gradient=G, cross=X, output="hutchinson", vocab_size=V)
