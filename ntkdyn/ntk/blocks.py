"""Kernel blocks from Jacobian blocks (spec §1): M = J_h J_hᵀ, tr G = ⟨WᵀW, M⟩_F, the tied cross term X, and
the finishing steps (unpadding, G = W M Wᵀ, s = h·h').

The input-table part of M never forms a V×d table: with Q(c, c')[t, s] = [ids_t = ids'_s] (+ [t = s] for GPT-2's
learned positions), it is Σ_{t,s} Q[t,s] J_x(c)[:, t] J_x(c')[:, s]ᵀ.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

__all__ = ["q", "x_part", "m_block", "trace_block", "factor", "apply_factor", "cross_block", "finish_rep",
           "finish_grad", "swap_pairs"]


def q(ida, idb, pos_eye, dtype):
    """Q(c, c')[t, s] = [ids_t = ids'_s] (+ [t = s] for learned positions): (..., Ta, Tb)."""
    Q = (ida[..., :, None] == idb[..., None, :]).astype(dtype)
    if pos_eye:
        Q = Q + jnp.eye(ida.shape[-1], idb.shape[-1], dtype=dtype)
    return Q


def x_part(Jxa, ida, Jxb, idb, pos_eye):
    """Σ_{t,s} Q[t,s] J_x(a)[:, t] J_x(b)[:, s]ᵀ -> (na, nb, d, d): the input-table part of M, one a at a time."""

    def per_a(args):
        jx, ia = args  # (d, Ta, d), (Ta,)
        Q = q(ia[None], idb, pos_eye, jx.dtype)  # (nb, Ta, Tb)
        Z = jnp.einsum("bts,blsj->btlj", Q, Jxb)
        return jnp.einsum("ktj,btlj->bkl", jx, Z)

    return jax.lax.map(per_a, (Jxa, ida))


@partial(jax.jit, static_argnames=("pos_eye",))
def m_block(Ja, Jxa, ida, Jb, Jxb, idb, pos_eye):
    """M(a, b) = J_h(a) J_h(b)ᵀ over this group's parameters: (na, nb, d, d)."""
    M = jnp.einsum("akp,blp->abkl", Ja, Jb)
    if Jxa is not None:
        M = M + x_part(Jxa, ida, Jxb, idb, pos_eye)
    return M


@partial(jax.jit, static_argnames=("pos_eye", "mode"))
def trace_block(W, Ja, Jxa, ida, Jb, Jxb, idb, pos_eye, mode):
    """tr G(a, b) = ⟨WᵀW, M(a, b)⟩_F over this group's parameters: (na, nb).
    mode "m" (small blocks): M by one GEMM, contracted with C = WᵀW. "factored": Ja, Jb (and Jx) are L J_h with
    LᵀL = WᵀW, so tr G = ⟨L J_h(a), L J_h(b)⟩, one GEMM of N² d P instead of N² d² P. "factored_p": only the
    parameter part is factored, J_x is raw (tied heads need it for the cross term)."""
    C = W.T @ W
    na, nb = Ja.shape[0], Jb.shape[0]
    if mode == "m":
        t = jnp.einsum("kl,abkl->ab", C, jnp.einsum("akp,blp->abkl", Ja, Jb))
    else:
        t = Ja.reshape(na, -1) @ Jb.reshape(nb, -1).T
    if Jxa is not None:
        Fxa = Jxa if mode == "factored" else jnp.einsum("kl,altj->aktj", C, Jxa)
        Sx = jnp.einsum("aktj,bksj->abts", Fxa, Jxb)
        t = t + jnp.sum(Sx * q(ida[:, None], idb[None], pos_eye, Sx.dtype), axis=(-2, -1))
    return t


@jax.jit
def factor(W):
    """L (d×d) with LᵀL = WᵀW (symmetric square root via eigh; tiny negative eigenvalues clipped)."""
    lam, U = jnp.linalg.eigh(W.T @ W)
    return (U * jnp.sqrt(jnp.clip(lam, 0.0))) @ U.T


@jax.jit
def apply_factor(L, J):
    """(L Jp, Jx, h, ids) from a Jacobian block (Jp, Jx, h, ids): the parameter part factored after the fact."""
    Jp, Jx, h, ids = J
    return jnp.matmul(L, Jp), Jx, h, ids


@partial(jax.jit, static_argnames=("mode",))
def cross_block(W, S, Jxa, ida, ha, Jxb, idb, hb, mode):
    """Tied cross term X(a, b) = B(a, b) + B(b, a)ᵀ with B(c, c')[v, w] = Σ_{t: ids_t = w} (W J_x(c)[:, t] h(c'))_v.
    mode "trace": (na, nb); "matrix": (na, nb, n, n) over the tokens S (all of them for "full")."""
    if mode == "trace":
        Za = jnp.einsum("atk,aktj->atj", W[ida], Jxa)
        Zb = jnp.einsum("btk,bktj->btj", W[idb], Jxb)
        return jnp.einsum("atj,bj->ab", Za, hb) + jnp.einsum("btj,aj->ab", Zb, ha)
    WS = W[S]
    Oa = (ida[..., None] == S).astype(W.dtype)  # (na, Ta, n) one-hot restricted to S
    Ob = (idb[..., None] == S).astype(W.dtype)
    Yab = jnp.einsum("aktj,bj->abkt", Jxa, hb)
    Yba = jnp.einsum("bktj,aj->abkt", Jxb, ha)
    Bab = jnp.einsum("vk,abkt,atw->abvw", WS, Yab, Oa)
    Bba = jnp.einsum("wk,abkt,btv->abvw", WS, Yba, Ob)  # B(b, a)ᵀ
    return Bab + Bba


@partial(jax.jit, static_argnames=("na", "nb", "bias"))
def finish_rep(ha, hb, na, nb, bias):
    """s = h(c)·h(c') (+1 with a head bias) for the unpadded contexts."""
    return ha[:na] @ hb[:nb].T + (1.0 if bias else 0.0)


@partial(jax.jit, static_argnames=("na", "nb", "output"))
def finish_grad(M, W, S, na, nb, output):
    """Unpad; "full"/"subset": G_S = W_S M W_Sᵀ (spec §1) per pair."""
    M = M[:na, :nb]
    if output in ("full", "subset"):
        WS = W if S is None else W[S]
        return jnp.einsum("abvl,wl->abvw", jnp.einsum("vk,abkl->abvl", WS, M), WS)
    return M


def swap_pairs(x):
    """K(b, a) from K(a, b) for a block: transpose the context axes, and the matrix axes when present."""
    x = jnp.swapaxes(x, 0, 1)
    return jnp.swapaxes(x, 2, 3) if x.ndim == 4 else x
