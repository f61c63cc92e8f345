"""One update step of RL post-training: the first-order prediction Δz = η Σ_u Θ(c_o, c_u) g_u (spec §2), split into
its representation (R) and gradient (G) parts, against the real step.

Two routes, neither of which forms a kernel:

* `one_step` — the policy-gradient step itself. One backward pass gives v = ∇_θ J (and the logit gradients
  g_u = ∂J/∂z(c_u)); the optimizer turns v into the parameter change u (SGD: u = η v; Adam: the optax update);
  the prediction is the JVP of the probe logits in the direction u, split by parameter group (the head part of u
  gives Δz_R, the backbone part Δz_G), and the step is really taken to measure z⁺ − z at the probes. It runs the
  same jitted core as `split_update` (plus, for a tied head, one JVP for the cross term).
* `split_update` — given any real update (params_before → params_after), split the logit change at the probes
  into Δz_R = ΔW h + Δb (exact) and Δz_G = W · JVP_ψ(h; δψ). One forward and one JVP, jit-compiled: what the RL
  trainer logs every k steps.

Probe contexts are rows of `probe_ids` with the position whose next-token logits are analysed: `probe_pos` is (P,)
(one position per row) or (P, 2) (row, position) pairs.

Tied heads (W = E, GPT-2). W is used twice: as the head (z = W h) and as the input table (inside h). Writing
J_head and J_in for the two uses and J_ψ for the backbone, Θ = R + G + X with (spec §1)
    R = J_head J_headᵀ = s·I,   G = (J_in + J_ψ)(J_in + J_ψ)ᵀ,   X = J_head J_inᵀ + J_in J_headᵀ.
`one_step` follows this kernel convention: ∇_W J = v_head + v_in splits into the gradient through the head use
(v_head = Σ_u g_u h_uᵀ) and through the input use (v_in), and
    Δz_R = (η v_head) h_o                                     = η Σ_u s(c_o, c_u) g_u
    Δz_G = W · JVP(h_o; δW_in = η v_in, δψ)                   = η Σ_u G(c_o, c_u) g_u
    Δz_X = (η v_in) h_o + W · JVP(h_o; δW_in = η v_head)      = η Σ_u X(c_o, c_u) g_u
so that Δz_R + Δz_G + Δz_X = Δz_predicted. `split_update` only sees the total ΔW, so it uses the
parameter-group convention instead: Δz_R = ΔW h_o + Δb (the whole ΔW read as a head) and Δz_G = W · JVP(h_o; ΔW as
input table, δψ); there the cross term is shared between the two (R gets (η v_in) h_o, G gets W·JVP(h_o; η v_head))
and Δz_R + Δz_G is still the full first-order change. For untied heads both conventions coincide (X = 0).

Non-SGD optimizers (Adam). The kernel becomes J P Jᵀ with the diagonal preconditioner P (spec §2): Δz_R = J_head u_head
is then diagonal-P-weighted, not ∝ I. For a tied W, u_W is split between its two uses by the elementwise
preconditioner P = u_W / ∇_W J (head use P ⊙ v_head, input use u_W − P ⊙ v_head), which reduces to the SGD split
when P = η.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .io import is_finite_number

from .metrics import first_order_entropy_change, token_entropy
from .models.lm import check_ids
from .models.logprobs import gather
from .models.transformer import apply_head, features, require_linear_head
from .ntk.contexts import context_index

__all__ = ["OneStep", "one_step", "split_update", "policy_gradient_objective", "probe_index"]


class OneStep(NamedTuple):
    """Result of `one_step`. Per-probe arrays are (P, V) or (P,); N is the number of trained tokens."""

    dz_predicted: jax.Array  # (P, V) first-order Δz = JVP(z(c_o); θ⁺ − θ)      (spec §2: η Σ Θ g)
    dz_representation: jax.Array  # (P, V) Δz_R = J_head u_head  (SGD: η Σ_u s(c_o,c_u) g_u)
    dz_gradient: jax.Array  # (P, V) Δz_G: backbone (and, tied, the input-table use of W)
    dz_cross: jax.Array | None  # (P, V) Δz_X: tied head/input-use cross term; None for untied heads
    dz_actual: jax.Array  # (P, V) z⁺ − z after really taking the step
    dlogp_predicted: jax.Array  # (P, V) (I − 1πᵀ) Δz_predicted
    dlogp_actual: jax.Array  # (P, V) log_softmax(z⁺) − log_softmax(z)
    dH_predicted: jax.Array  # (P,) first-order entropy change −Σ_k π_k (log π_k + H) Δz_k
    dH_actual: jax.Array  # (P,) H(z⁺) − H(z)
    rel_error: float  # ‖Δz_pred − Δz_act‖_F / ‖Δz_act‖_F over all probes
    s: jax.Array  # (P, N) s(c_o, c_u) = h_o·h_u (+1 with a head bias), u over the trained tokens
    g: jax.Array  # (N, V) logit gradients g_u = ∂J/∂z(c_u) of the objective (incl. the KL term)
    contexts: np.ndarray  # (N, 2) (row, position) of the trained contexts c_u in `ids` (position predicts pos+1)
    z: jax.Array  # (P, V) probe logits before the step
    h: jax.Array  # (P, d) probe features h(c_o) before the step
    objective: float  # J (policy-gradient objective, minus β·KL when the KL term is on)
    kl: float | None  # mean-token KL(π‖π_ref) (None without a reference)
    update: Any  # the parameter change u (pytree like params)
    params_after: Any  # θ⁺ = θ + u
    opt_state: Any  # the optimizer state after the step (None for "sgd")


# ----------------------------------------------------------------------------- inputs


def probe_index(probe_ids, probe_pos):
    """(rows, positions) int32 arrays (P,) from probe_pos (P,) (row i at position probe_pos[i]) or (P, 2)
    (validated by ntk.contexts.context_index, the one context validation)."""
    rows, pos = context_index(probe_ids, probe_pos, "probe_ids", "probe_pos", allow_empty=True)
    return jnp.asarray(rows, jnp.int32), jnp.asarray(pos, jnp.int32)


def _token_weights(completion_mask, B):
    """w_bt = m_bt / (B · Σ_t m_bt): J = Σ_bt w_bt A_b log π(ids[b,t] | ids[b,<t]) (0 for empty rows)."""
    m = np.asarray(completion_mask)
    if m.ndim != 2 or m.shape[0] != B:
        raise ValueError(f"completion_mask must be (B, T) like ids; got shape {m.shape}")
    m = (m != 0).astype(np.float64)
    if m[:, 0].any():
        raise ValueError("completion_mask[:, 0] must be 0: the first token has no context to be predicted from")
    count = np.maximum(m.sum(1, keepdims=True), 1.0)
    return m / count / B


def _check_step_args(optimizer, lr, beta, ref_params):
    import optax

    if isinstance(optimizer, str) and optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd', 'adam' or an optax.GradientTransformation; got {optimizer!r}")
    if not isinstance(optimizer, str) and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be 'sgd', 'adam' or an optax.GradientTransformation; "
                         f"got {type(optimizer).__name__}")
    for name, v, lo in (("lr", lr, "> 0"), ("beta", beta, ">= 0")):
        if not is_finite_number(v):
            err = ValueError if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else TypeError
            raise err(f"{name} must be a finite number {lo}; got {v!r} ({type(v).__name__})")
    if lr <= 0 or beta < 0:
        raise ValueError(f"lr must be > 0 and beta >= 0; got lr={lr!r}, beta={beta!r}")
    if beta > 0 and ref_params is None:
        raise ValueError("beta > 0 needs ref_params (the reference policy of the KL term)")


def _batch_inputs(cfg, ids, completion_mask, advantages, probe_ids, probe_pos):
    """Validated inputs: ids (B, T) int32, advantages (B,) float64, token weights w (B, T) (numpy), probe ids and
    the probe contexts (rows, positions)."""
    ids = check_ids(cfg, ids, "ids")
    B = ids.shape[0]
    try:
        adv = np.asarray(advantages, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"advantages must be an array of B = {B} numbers; got {advantages!r}") from None
    adv = adv.reshape(-1) if adv.size == B else adv
    if adv.shape != (B,):
        raise ValueError(f"advantages must be (B,) = ({B},); got shape {np.shape(advantages)}")
    if not np.all(np.isfinite(adv)):
        bad = np.flatnonzero(~np.isfinite(adv))
        raise ValueError(f"advantages must be finite; row(s) {bad[:5].tolist()} hold {adv[bad[:5]].tolist()}")
    w_np = _token_weights(completion_mask, B)
    if w_np.shape != tuple(ids.shape):
        raise ValueError(f"completion_mask shape {w_np.shape} != ids shape {tuple(ids.shape)}")
    probe_ids = check_ids(cfg, probe_ids, "probe_ids")
    rows, pos = probe_index(probe_ids, probe_pos)
    return ids, adv, w_np, probe_ids, rows, pos


def _reference_logp(lm, ids, ref_params, beta, dtype):
    """log π_ref (B, T−1, V) at the positions that predict ids[:, 1:], the β actually used and whether the KL term
    is on. β = 0: the KL term is computed on zeros but carries no weight (one compiled _gradient for both cases)."""
    if ref_params is not None and beta > 0:
        ref_logp = jax.nn.log_softmax(lm.head(lm.features(ids, ref_params), ref_params)[:, :-1], -1)
        return ref_logp.astype(dtype), beta, True
    return jnp.zeros((ids.shape[0], ids.shape[1] - 1, lm.config.vocab_size), dtype), 0.0, False


# ----------------------------------------------------------------------------- pure core


def _view_params(cfg, head, w_in, backbone):
    """The model's params with the head use of W (`head`) and the input-table use (`w_in`, tied only) separated."""
    if cfg.tie_word_embeddings:
        return {"backbone": backbone, "head": {"W": w_in}}
    return {"backbone": backbone, "head": head}


def _logits_and_h(graphdef, cfg, head, w_in, backbone, ids):
    h = features(graphdef, cfg, _view_params(cfg, head, w_in, backbone), ids)[0]
    return apply_head(head, h), h


def _probe_h(graphdef, cfg, params, ids, rows, pos):
    """h(c_o) (P, d) at the probe contexts."""
    return features(graphdef, cfg, params, ids)[0][rows, pos]


def policy_gradient_objective(z, ids, w, advantages, ref_logp=None, beta=0.0):
    """J from logits z (B, T, V): Σ_bt w_bt A_b log π(ids[b,t]|c_{b,t−1}) − β Σ_bt w_bt KL(π‖π_ref)(c_{b,t−1}).

    w (B, T) token weights (w[:, 0] = 0), ref_logp (B, T−1, V) reference log-probs (or None). Returns (J, KL).
    (log π in the dtype of z: float64 under x64, which the O(η²) checks need.)"""
    logp = jax.nn.log_softmax(z[:, :-1], axis=-1)
    tok = gather(logp, ids[:, 1:])
    w = w[:, 1:]
    J = jnp.sum(w * advantages[:, None] * tok)  # spec §2: (1/G) Σ_j (1/|y_j|) Σ_l A_j log π(y_jl | c_jl)
    if ref_logp is None:
        return J, jnp.zeros((), z.dtype)
    kl_t = jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)  # full KL over the vocabulary, per token
    kl = jnp.sum(w * kl_t)
    return J - beta * kl, kl


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _gradient(graphdef, cfg, params, ids, w, advantages, ref_logp, beta):
    """One forward + one backward: J, KL, g = ∂J/∂z (B,T,V), features h (B,T,d), and v = ∇_θ J split into the head
    use of W/b (v_head), the input-table use of W (v_in, tied only) and the backbone (v_backbone)."""
    tied = cfg.tie_word_embeddings
    head = params["head"]
    w_in = head["W"] if tied else None
    (z, h), vjp_fn = jax.vjp(lambda hd, wi, bb: _logits_and_h(graphdef, cfg, hd, wi, bb, ids), head, w_in,
                             params["backbone"])
    (J, kl), g = jax.value_and_grad(
        lambda zz: policy_gradient_objective(zz, ids, w, advantages, ref_logp, beta), has_aux=True)(z)
    v_head, v_in, v_backbone = vjp_fn((g, jnp.zeros_like(h)))  # v = J_zᵀ g: ∇_θ J = Σ_u J_θ(c_u)ᵀ g_u
    return J, kl, g, h, v_head, v_in, v_backbone


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _input_use(graphdef, cfg, params, dW, probe_ids, rows, pos):
    """W · JVP(h(c_o); δW_in = dW, δψ = 0): a change of a tied table read through the input lookup only."""
    W = params["head"]["W"]
    hW = lambda Wt: _probe_h(graphdef, cfg, {"backbone": params["backbone"], "head": {"W": Wt}}, probe_ids, rows, pos)
    return jax.jvp(hW, (W,), (dW,))[1] @ W.T


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _scale(tree, c):
    return jax.tree.map(lambda x: c * x, tree)


# ----------------------------------------------------------------------------- one step


def one_step(lm, ids, completion_mask, advantages, probe_ids, probe_pos, *, lr, optimizer="sgd", opt_state=None,
             adam_kw=None, ref_params=None, beta=0.0, params=None) -> OneStep:
    """Predict (first order) and measure what one policy-gradient step does to the logits at probe contexts.

    ids (B, T) prompt+completion tokens; completion_mask (B, T) 1 where token t is trained (predicted from t−1);
    advantages (B,). Objective J = (1/B) Σ_b A_b mean_{t∈completion(b)} log π(ids[b,t] | ids[b,<t])
    [− β mean-token KL(π‖π_ref), the full KL over the vocabulary at every trained position, when beta > 0; then
    ref_params (π_ref) is required]; the step ascends J.
    probe_ids (P_rows, T'), probe_pos (P,) one position per row or (P, 2) (row, position) pairs: the contexts c_o
    whose next-token logits z(c_o) are analysed.
    optimizer: "sgd" (θ⁺ = θ + lr ∇J), "adam" (optax.adam(lr, **adam_kw) on −J, state `opt_state`, initialised
    when None; the new state is returned) or any optax.GradientTransformation (applied to −J; lr unused).
    params: defaults to lm.params (pass float64 params under jax.enable_x64 to measure the O(lr²) error, not
    float32 roundoff).
    The prediction is the JVP of the probe logits in the direction of the actual update u (spec §2); see the module
    docstring for the split and the tied-head / Adam conventions. Returns OneStep.
    """
    _check_step_args(optimizer, lr, beta, ref_params)
    require_linear_head(lm.config, "dynamics.one_step (its R/G split)")
    params = lm.params if params is None else params
    graphdef, cfg = lm.graphdef, lm.config
    ids, adv, w_np, probe_ids, rows, pos = _batch_inputs(cfg, ids, completion_mask, advantages, probe_ids, probe_pos)
    dtype = params["head"]["W"].dtype
    ref_logp, beta, use_kl = _reference_logp(lm, ids, ref_params, beta, dtype)

    J, kl, g, h_u, v_head, v_in, v_bb = _gradient(graphdef, cfg, params, ids, jnp.asarray(w_np, dtype),
                                                  jnp.asarray(adv, dtype), ref_logp, jnp.asarray(beta, dtype))
    v = {"backbone": v_bb, "head": dict(v_head)}
    if cfg.tie_word_embeddings:
        v["head"]["W"] = v_head["W"] + v_in  # ∇_W J = head use + input-table use
    u, u_head, new_state = _parameter_change(optimizer, lr, adam_kw, opt_state, params, v, v_head, cfg)

    # Δz_pred = J_θ(c_o)(θ⁺ − θ), split by parameter group (the cheap route), and the real z⁺ − z
    params_after = _tree_add(params, u)
    core = _split_update(graphdef, cfg, params, params_after, probe_ids, rows, pos)
    z, h_o, dz_pred, dz_act = core["z_before"], core["h"], core["dz_total_first_order"], core["dz_actual"]
    dz_R, dz_G, dz_X = _kernel_split(graphdef, cfg, params, params_after, u_head, core, probe_ids, rows, pos)

    # trained contexts c_u: position t−1 of every trained token t
    bb, tt = np.nonzero(w_np[:, 1:])
    contexts = np.stack([bb, tt], axis=1).astype(np.int32)
    hu = h_u[bb, tt]
    s = h_o @ hu.T + (1.0 if "b" in params["head"] else 0.0)  # s = h_o·h_u (+1 with a bias)
    g_N = g[bb, tt]

    z_after = z + dz_act
    logp, logp_after = jax.nn.log_softmax(z, -1), jax.nn.log_softmax(z_after, -1)
    pi = jnp.exp(logp)
    rel = float(jnp.linalg.norm(dz_pred - dz_act) / jnp.maximum(jnp.linalg.norm(dz_act), jnp.finfo(dz_act.dtype).tiny))
    return OneStep(
        dz_predicted=dz_pred, dz_representation=dz_R, dz_gradient=dz_G, dz_cross=dz_X, dz_actual=dz_act,
        dlogp_predicted=dz_pred - jnp.sum(pi * dz_pred, -1, keepdims=True),  # (I − 1πᵀ) Δz
        dlogp_actual=logp_after - logp,
        dH_predicted=first_order_entropy_change(z, dz_pred),
        dH_actual=token_entropy(z_after) - token_entropy(z),
        rel_error=rel, s=s, g=g_N, contexts=contexts, z=z, h=h_o, objective=float(J),
        kl=float(kl) if use_kl else None, update=u, params_after=params_after, opt_state=new_state)


def _parameter_change(optimizer, lr, adam_kw, opt_state, params, v, v_head, cfg):
    """The optimizer's parameter change u from the gradient v = ∇_θ J, its head-use part u_head (W and b as the
    head; module docstring) and the new optimizer state (None for "sgd")."""
    if isinstance(optimizer, str) and optimizer == "sgd":
        u = _scale(v, lr)  # θ⁺ = θ + η ∇_θ J
        return u, _scale(dict(v_head), lr), None  # head use of W (and b): η v_head
    tx = _adam(lr, adam_kw) if isinstance(optimizer, str) else optimizer
    if opt_state is None:
        opt_state = tx.init(params)
    try:
        hash(tx)
    except TypeError:  # an unhashable transformation: run it eagerly
        return _optax_change.__wrapped__(tx, cfg.tie_word_embeddings, params, v, v_head, opt_state)
    return _optax_change(tx, cfg.tie_word_embeddings, params, v, v_head, opt_state)


def _adam(lr, adam_kw):
    """optax.adam(lr, **adam_kw), the same object for equal arguments (so that _optax_change compiles once)."""
    import optax

    try:
        return _adam_cached(lr, tuple(sorted((adam_kw or {}).items())))
    except TypeError:  # unhashable keyword values
        return optax.adam(lr, **(adam_kw or {}))


@lru_cache(maxsize=32)
def _adam_cached(lr, kw_items):
    import optax

    return optax.adam(lr, **dict(kw_items))


@partial(jax.jit, static_argnames=("tx", "tied"))
def _optax_change(tx, tied, params, v, v_head, opt_state):
    """u, u_head, new state of an optax transformation `tx` on −J (one fused call: a real model's 100M-float
    update is not dispatched op by op)."""
    u, new_state = tx.update(_scale(v, -1.0), opt_state, params)  # optax minimises −J
    u = jax.tree.map(lambda x, p: x.astype(p.dtype), u, params)
    u_head = dict(u["head"])
    if tied:  # split u_W by the elementwise preconditioner P = u_W / ∇_W J: head use P ⊙ v_head
        vW, uW = v["head"]["W"], u["head"]["W"]
        nz = vW != 0
        u_head["W"] = jnp.where(nz, uW * v_head["W"] / jnp.where(nz, vW, 1), 0)
    return u, u_head, new_state


def _kernel_split(graphdef, cfg, params, params_after, u_head, core, probe_ids, rows, pos):
    """(Δz_R, Δz_G, Δz_X) in the kernel convention from the parameter-group split `core` of _split_update."""
    if not cfg.tie_word_embeddings:  # untied: the parameter groups are the kernel's R and G
        return core["dz_representation"], core["dz_gradient"], None
    # tied: move the cross paths out of the parameter-group split into X (module docstring)
    h_o = core["h"]
    dW = params_after["head"]["W"] - params["head"]["W"]
    u_in = dW - u_head["W"]  # the realised ΔW = head-use part + input-use part
    head_as_input = _input_use(graphdef, cfg, params, u_head["W"], probe_ids, rows, pos)
    dz_R = h_o @ u_head["W"].T + (core["dz_representation"] - h_o @ dW.T)  # (η v_head) h (+ Δb)
    dz_X = h_o @ u_in.T + head_as_input  # (η v_in) h + W·JVP(h; δW_in = η v_head)
    dz_G = core["dz_gradient"] - head_as_input  # W·JVP(h; δW_in = η v_in, δψ)
    return dz_R, dz_G, dz_X


# ----------------------------------------------------------------------------- cheap route


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _split_update(graphdef, cfg, params_before, params_after, probe_ids, rows, pos):
    delta = jax.tree.map(jnp.subtract, params_after, params_before)
    hfun = lambda p: _probe_h(graphdef, cfg, p, probe_ids, rows, pos)
    # JVP of h in the direction of the update: the backbone part δψ (and, tied, ΔW as the input table);
    # features never read the head's own W (untied) or b, so their tangents do not enter.
    h, dh = jax.jvp(hfun, (params_before,), (delta,))
    dW = delta["head"]["W"]
    dz_R = h @ dW.T + (delta["head"]["b"] if "b" in delta["head"] else 0.0)  # Δz_R = ΔW h + Δb (exact)
    dz_G = dh @ params_before["head"]["W"].T  # Δz_G = W · JVP_ψ(h; δψ)
    z0 = apply_head(params_before["head"], h)
    z1 = apply_head(params_after["head"], hfun(params_after))
    return {"dz_representation": dz_R, "dz_gradient": dz_G, "dz_total_first_order": dz_R + dz_G,
            "dz_actual": z1 - z0, "h": h, "z_before": z0}


def split_update(lm, params_before, params_after, probe_ids, probe_pos) -> dict:
    """Split the logit change of a real update at probe contexts (spec §2, cheap measurement without kernels).

    Returns {"dz_representation": ΔW h(c_o) + Δb (h from params_before; exact head part),
             "dz_gradient": W · JVP_ψ(h(c_o); δψ) (backbone part, first order),
             "dz_total_first_order": their sum, "dz_actual": z_after − z_before}, each (P, V).
    Tied heads: ΔW is read both as a head (in dz_representation) and as the input table (in the JVP of
    dz_gradient); the kernel's cross term X is thereby shared between the two (module docstring).
    One forward + one JVP over the probes (plus the forward at params_after for dz_actual), jit-compiled.
    """
    require_linear_head(lm.config, "dynamics.split_update")
    probe_ids = check_ids(lm.config, probe_ids, "probe_ids")
    rows, pos = probe_index(probe_ids, probe_pos)
    out = _split_update(lm.graphdef, lm.config, params_before, params_after, probe_ids, rows, pos)
    return {k: out[k] for k in ("dz_representation", "dz_gradient", "dz_total_first_order", "dz_actual")}
