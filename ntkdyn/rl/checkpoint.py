"""Checkpoints of a run: OUT/checkpoint/ holds model/ (HF layout), optimizer.npz (the optimizer state's leaves) and
state.json (step, stage, REINFORCE baseline, costs, first evaluation). It is written whole into a temporary
sibling and renamed into place (ntkdyn.io.atomic_dir), so a kill at any moment leaves the previous or the new
checkpoint, never a mixture.

    save(out, lm, params, opt_state, state)        # state: step, stage_index, stage_step, stage, baseline, ...
    check_resumable(out, stages)                   # ConfigError: unreadable state.json, or the plan ends before it
    found = find(out, sh)                          # (params, optimizer leaves, state) or None
    opt_state = restore_optimizer(tx, params, leaves, out, sh)

A checkpoint file that cannot be read (truncated, corrupt, missing) is a ConfigError naming the file: the run is
refused before it writes anything.
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
from .config import ConfigError, TrainingError
from .sharding import is_writer
from .step import opt_init

__all__ = ["save", "find", "exists", "restore_optimizer", "note", "recover", "read_state", "check_resumable"]

_STATE_KEYS = {"step": int, "stage_index": int, "stage_step": int, "stage": str, "costs": dict,
               "n_opt_leaves": int}

_LEGACY_OLD = "checkpoint.old"  # the moved-aside previous checkpoint of older versions


def _dir(out: str) -> str:
    return os.path.join(out, "checkpoint")


def save(out: str, lm, params, opt_state, state: dict) -> None:
    """Write OUT/checkpoint atomically: the model with `params`, the leaves of `opt_state` (None: none) (host
    arrays, or arrays this process addresses: a multi-process run gathers them first, sharding.to_host) and
    `state` (a JSON object; baseline NaN is stored as null), state.json flushed to disk."""
    if not is_writer():  # process 0 of a multi-process run writes it
        return
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


def _unreadable(path: str, e: Exception) -> ConfigError:
    why = str(e) if str(e).startswith(path) else f"{type(e).__name__}: {e}"
    return ConfigError(f"{path}: cannot resume, the checkpoint file is unreadable ({why}); expected the file as "
                       "ntkdyn wrote it (it is replaced atomically, so this is damage from outside); "
                       "overwrite=True starts the run again")


def read_state(out: str) -> dict | None:
    """OUT/checkpoint/state.json (None when there is no checkpoint); ConfigError naming the file when it is
    unreadable or lacks a key."""
    path = os.path.join(_dir(out), "state.json")
    if not os.path.isfile(path):
        return None
    try:
        st = read_json(path, what="checkpoint state")
    except (OSError, ValueError) as e:
        raise _unreadable(path, e) from None
    bad = [k for k, t in _STATE_KEYS.items() if not isinstance(st.get(k), t) or isinstance(st.get(k), bool)]
    if bad:
        raise _unreadable(path, ValueError(f"missing or mistyped keys {bad}"))
    return st


def check_resumable(out: str, stages) -> dict | None:
    """The checkpoint's state when the stage plan `stages` (recipes.Stage) reaches its position; ConfigError when
    the plan has fewer steps than the checkpoint has done (a resume cannot undo steps), or state.json is
    unreadable. None when there is no checkpoint."""
    st = read_state(out)
    if st is None:
        return None
    i, total = st["stage_index"], sum(s.steps for s in stages)
    if i >= len(stages) or stages[i].name != st["stage"] or st["stage_step"] > stages[i].steps:
        done = st["step"] - sum(s.steps for s in stages if s.name != "rl")
        raise ConfigError(f"RLConfig.steps: the run in {out} has done {st['step']} steps (its checkpoint is at "
                          f"{st['stage']} step {st['stage_step']}), more than the {total} steps this config plans; "
                          f"a resume cannot undo steps: expected steps >= {done}")
    return st


def find(out: str, sh):
    """(params placed by the Sharding sh, optimizer-state leaves, state dict) of OUT/checkpoint, or None when
    the run was killed before its first checkpoint. ConfigError naming the file that cannot be read."""
    from ..models.lm import load

    st = read_state(out)
    if st is None:
        return None
    ck = _dir(out)
    try:
        params = load(os.path.join(ck, "model"), tokenizer=False).params
    except Exception as e:  # CheckpointError names the file; anything else (a reader's own error) gets named here
        raise _unreadable(os.path.join(ck, "model"), e) from None
    path = os.path.join(ck, "optimizer.npz")
    try:
        with np.load(path) as z:
            leaves = [z[f"leaf_{i:05d}"] for i in range(st["n_opt_leaves"])]
    except Exception as e:  # numpy / zipfile raise OSError, ValueError, KeyError, BadZipFile, EOFError, zlib.error
        raise _unreadable(path, e) from None
    return sh.place(params), leaves, st


def restore_optimizer(tx, params, leaves, out: str, sh):
    """The optimizer state of `tx` for `params` from a checkpoint's leaves (TrainingError if they do not fit)."""
    template = jax.eval_shape(partial(opt_init, tx=tx), params)
    t_leaves, treedef = jax.tree.flatten(template)
    if len(t_leaves) != len(leaves) or any(tuple(a.shape) != np.shape(b) for a, b in zip(t_leaves, leaves)):
        raise TrainingError(f"{out}/checkpoint/optimizer.npz does not match the optimizer of this stage "
                            f"({len(leaves)} arrays vs {len(t_leaves)} expected)")
    return sh.place(jax.tree.unflatten(treedef, [jnp.asarray(b, a.dtype) for a, b in zip(t_leaves, leaves)]))


def note(out: str) -> str:
    """For error messages: which checkpoint is kept."""
    path = os.path.join(_dir(out), "state.json")
    if not os.path.exists(path):
        return "no checkpoint had been written yet"
    try:
        return f"the last good checkpoint (step {int(read_json(path)['step'])}) is kept in {_dir(out)}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"the checkpoint in {_dir(out)} is unreadable"
