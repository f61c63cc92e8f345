"""Checkpoints of a run: OUT/checkpoint/ holds model/ (HF layout), optimizer.npz (the optimizer state's leaves) and
state.json (step, stage, REINFORCE baseline, costs, first evaluation). It is written whole into a temporary
sibling and renamed into place (ntkdyn.io.atomic_dir), so a kill at any moment leaves the previous or the new
checkpoint, never a mixture.

    save(out, lm, params, opt_state, state)        # state: step, stage_index, stage_step, stage, baseline, ...
    found = find(out)                              # (params, optimizer leaves, state) or None
    opt_state = restore_optimizer(tx, params, leaves, out)
"""
from __future__ import annotations

import glob
import math
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..io import atomic_dir, read_json, write_json
from .config import TrainingError
from .step import opt_init

__all__ = ["save", "find", "exists", "restore_optimizer", "note", "recover"]

_LEGACY_OLD = "checkpoint.old"  # the moved-aside previous checkpoint of older versions


def _dir(out: str) -> str:
    return os.path.join(out, "checkpoint")


def save(out: str, lm, params, opt_state, state: dict) -> None:
    """Write OUT/checkpoint atomically: the model with `params`, the leaves of `opt_state` (None: none) and
    `state` (a JSON object; baseline NaN is stored as null), state.json flushed to disk."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(opt_state))] if opt_state is not None else []
    b = float(state["baseline"])
    state = dict(state, baseline=None if math.isnan(b) else b, n_opt_leaves=len(leaves))
    with atomic_dir(_dir(out), what="checkpoint directory") as tmp:
        lm.save(os.path.join(tmp, "model"), params=jax.device_get(params))
        with open(os.path.join(tmp, "optimizer.npz"), "wb") as f:
            np.savez(f, **{f"leaf_{i:05d}": x for i, x in enumerate(leaves)})
        write_json(os.path.join(tmp, "state.json"), state, fsync=True)


def recover(out: str) -> None:
    """After a kill between the two renames of a checkpoint replacement, put the previous checkpoint (moved aside)
    back in place."""
    if os.path.isdir(_dir(out)):
        return
    for old in sorted(glob.glob(os.path.join(out, ".tmp-checkpoint-*.old"))) + [os.path.join(out, _LEGACY_OLD)]:
        if os.path.isfile(os.path.join(old, "state.json")):
            os.rename(old, _dir(out))
            return


def exists(out: str) -> bool:
    """Whether OUT holds a checkpoint to resume from (in place, or moved aside by a kill during a replacement)."""
    candidates = [_dir(out), os.path.join(out, _LEGACY_OLD)] + glob.glob(os.path.join(out, ".tmp-checkpoint-*.old"))
    return any(os.path.isfile(os.path.join(d, "state.json")) for d in candidates)


def is_leftover(name: str) -> bool:
    """A temporary of an interrupted checkpoint write (removed at the start of a run, after `recover`)."""
    return name.startswith((".tmp-checkpoint-", ".checkpoint.tmp-")) or name == _LEGACY_OLD


def find(out: str, sh):
    """(params replicated by the Sharding sh, optimizer-state leaves, state dict) of OUT/checkpoint, or None when
    the run was killed before its first checkpoint."""
    from ..models.lm import load

    ck = _dir(out)
    if not os.path.isfile(os.path.join(ck, "state.json")):
        return None
    st = read_json(os.path.join(ck, "state.json"), what="checkpoint state")
    params = sh.replicate(load(os.path.join(ck, "model"), tokenizer=False).params)
    with np.load(os.path.join(ck, "optimizer.npz")) as z:
        leaves = [z[f"leaf_{i:05d}"] for i in range(st["n_opt_leaves"])]
    return params, leaves, st


def restore_optimizer(tx, params, leaves, out: str, sh):
    """The optimizer state of `tx` for `params` from a checkpoint's leaves (TrainingError if they do not fit)."""
    template = jax.eval_shape(partial(opt_init, tx=tx), params)
    t_leaves, treedef = jax.tree.flatten(template)
    if len(t_leaves) != len(leaves) or any(tuple(a.shape) != np.shape(b) for a, b in zip(t_leaves, leaves)):
        raise TrainingError(f"{out}/checkpoint/optimizer.npz does not match the optimizer of this stage "
                            f"({len(leaves)} arrays vs {len(t_leaves)} expected)")
    return sh.replicate(jax.tree.unflatten(treedef, [jnp.asarray(b, a.dtype) for a, b in zip(t_leaves, leaves)]))


def note(out: str) -> str:
    """For error messages: which checkpoint is kept."""
    st = os.path.join(_dir(out), "state.json")
    if os.path.exists(st):
        return f"the last good checkpoint (step {read_json(st)['step']}) is kept in {os.path.dirname(st)}"
    return "no checkpoint had been written yet"
