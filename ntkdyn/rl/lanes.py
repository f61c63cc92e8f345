"""The seeds of a batched run as lanes of one program: several independent runs (same config but the seed, same
shapes) whose params, optimizer states, PRNG keys and batches carry a leading lane axis, so that every step's
sampler, update, evaluation and probes run once for all of them (jax.vmap inside one jit). A run of one seed is
one lane and carries no lane axis: it calls the per-run functions themselves, exactly as a lone run does.

    lanes = Lanes(len(seeds))
    update = lanes.map(rl_update, dict(graphdef=..., cfg=..., tx=..., ls=..., group=...), in_axes=(0, 0, 0, 0, None, 0))
    params, opt_state, m, logp = update(params, opt_state, batch, logp_old, on_policy, logp_ref)
    lanes.take(params, i)          # lane i's params (the tree itself for one lane)
    lanes.stack([p0, p1, ...])     # one tree with a lane axis (the tree itself for one lane)
    evaluate = lanes.map(confidence, dict(...), chunk=1)   # one jit that runs the lanes one after the other

`chunk=k` trades speed for memory where a program's transient arrays grow with its lanes (the evaluation's
sampler and confidence pass on a real model): the lanes run k at a time (jax.lax.map with batch_size k inside the
one jit), so at most k lanes' transients are alive at once. Each lane's numbers do not depend on the other lanes
(their PRNG keys are their own), so a chunked map gives what the full vmap gives, to float rounding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["Lanes"]


@functools.lru_cache(maxsize=256)
def _vmapped(fn, static: tuple, in_axes, donate: tuple = ()):
    return jax.jit(jax.vmap(functools.partial(fn, **dict(static)), in_axes=in_axes), donate_argnums=donate)


@functools.lru_cache(maxsize=256)
def _chunked(fn, static: tuple, in_axes, chunk: int, donate: tuple = ()):
    f = functools.partial(fn, **dict(static))

    def run(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        if len(axes) != len(args) or any(a not in (0, None) for a in axes):
            raise ValueError(f"Lanes.map(chunk=...): in_axes {in_axes!r} for {len(args)} arguments; expected 0 or "
                             "None per argument")

        def one(mapped):  # the arguments of a chunk of lanes (jax.lax.map vmaps `one` over batch_size lanes)
            it = iter(mapped)
            return f(*(next(it) if a == 0 else x for x, a in zip(args, axes)))

        return jax.lax.map(one, tuple(x for x, a in zip(args, axes) if a == 0), batch_size=chunk)

    return jax.jit(run, donate_argnums=donate)


@functools.lru_cache(maxsize=256)
def _donating(fn, static: tuple, donate: tuple):
    # fn may be jitted itself: traced inside this jit it is inlined (one program) and this jit's donation applies
    return jax.jit(functools.partial(fn, **dict(static)), donate_argnums=donate)


class Lanes:
    """n lanes (n >= 1); see the module docstring."""

    def __init__(self, n: int):
        if int(n) < 1:
            raise ValueError(f"a batched run needs at least one lane; got {n}")
        self.n = int(n)

    def map(self, fn, static: dict | None = None, in_axes=0, donate: tuple = (), chunk: int | None = None):
        """fn with its static keywords bound, over the lanes: fn itself for one lane, else one jit of its vmap
        (in_axes as jax.vmap's: None for an argument every lane shares). donate: positions of the arguments whose
        buffers the jit may reuse (jax.jit's donate_argnums; for one lane, one jit of fn with that donation, and
        with none given fn itself, whose own jit decides). chunk = k < n: the lanes k at a time inside the one jit
        (module docstring). Cached per (fn, static, in_axes, donate, chunk)."""
        static = static or {}
        if chunk is not None and int(chunk) < 1:
            raise ValueError(f"Lanes.map: chunk={chunk}; expected a positive number of lanes per chunk")
        if chunk is not None and int(chunk) < self.n:  # (chunk >= 1, so n > 1)
            return _chunked(fn, tuple(sorted(static.items())), in_axes, int(chunk), tuple(donate))
        if self.n == 1:
            if donate:
                return _donating(fn, tuple(sorted(static.items())), tuple(donate))
            return functools.partial(fn, **static) if static else fn
        return _vmapped(fn, tuple(sorted(static.items())), in_axes, tuple(donate))

    def take(self, tree, i: int):
        """Lane i of a tree with a lane axis (the tree itself for one lane)."""
        return tree if self.n == 1 else jax.tree.map(lambda x: x[i], tree)

    def stack(self, trees):
        """One tree with a lane axis from one tree per lane (the tree itself for one lane)."""
        trees = list(trees)
        if len(trees) != self.n:
            raise ValueError(f"{len(trees)} trees for {self.n} lanes")
        return trees[0] if self.n == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
