"""Trackers: what a run measures of its own learning dynamics besides the step's metrics, as after-update plugins
with their own cadence. The trainer's loop is rollout -> reward -> update -> trackers -> evaluate -> checkpoint; it
knows nothing of what a tracker measures.

A tracker has
    name                                  for messages
    start(params, resumed, memo) -> dict  at the start of a run (a fresh run merges it into the step-0 record; a
                                          resumed one restores what the tracker keeps, e.g. the drift's K0). memo:
                                          a dict shared by the trackers of every lane of one start (the lanes start
                                          from the same params), so a lane may reuse what another computed of them
    after_update(u: Update) -> dict       after every update: the tracker decides whether this step is its own
    reads_before(stage, stage_step) -> bool
                                          whether after_update of that step reads u.before or u.first_after (when
                                          no tracker does, the trainer lets the update reuse the old params'
                                          buffers: `reads_before`)

`from_config(config, lm, probes, out, mesh)` makes the run's trackers from its RLConfig, in the order their keys appear
in a record: the dz share (dz_share.py, RLConfig.probe_every), claim 6's measures (claim6.py, RLConfig.claim6), the
eNTK drift (drift.py, RLConfig.ntk_every). The two that compute kernels (claim 6's G_S, the drift's traces) compute
them on `mesh`, the run's (ctx.sh.mesh; None: one device). A new tracker: a module here with a class of that interface, and one line in
`from_config` that adds it when its config field asks for it.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

__all__ = ["Update", "Probes", "from_config", "reads_before"]


class Probes(NamedTuple):
    """The run's fixed probe set (rl/context.py): probe sequences, their mask, and the (row, position) contexts
    that predict an answer token or EOS."""

    ids: np.ndarray  # (n, T) int32, right-padded
    mask: np.ndarray  # (n, T) float32, 1 on real tokens
    pos: np.ndarray  # (m, 2) int32


class Update:
    """One update of one lane as the trackers see it: stage (recipes.Stage), step (global, after the update),
    stage_step (1 for the stage's first), total_steps (of the whole run), and, taken from the batched arrays only
    when a tracker reads them, before / after (the params before and after the update), first_after (after its
    first, on-policy iteration: num_iterations > 1 reuses the batch) and batch (the rollout batch of an RL update in
    objectives' layout; None for the LP stage)."""

    def __init__(self, stage, step, stage_step, total_steps, lanes, lane, before, after, first_after, batch):
        self.stage, self.step, self.stage_step, self.total_steps = stage, step, stage_step, total_steps
        self._lanes, self._lane = lanes, lane
        self._raw = dict(before=before, after=after, first_after=first_after, batch=batch)

    def _take(self, name):
        x = self._raw[name]
        return None if x is None else self._lanes.take(x, self._lane)

    @functools.cached_property
    def before(self):
        return self._take("before")

    @functools.cached_property
    def after(self):
        return self._take("after")

    @functools.cached_property
    def first_after(self):
        return self._take("first_after")

    @functools.cached_property
    def batch(self):
        return self._take("batch")


def from_config(c, lm, probes: Probes, out: str, mesh=None) -> list:
    """The trackers RLConfig `c` asks for, in record order; their kernels on `mesh` (the run's, ctx.sh.mesh)."""
    from .claim6 import Claim6
    from .drift import Drift
    from .dz_share import DzShare

    trackers = []
    if c.probe_every:
        trackers.append(DzShare(lm, probes, c.probe_every))
    if c.claim6:
        trackers.append(Claim6(lm, probes, c.ntk_contexts, temperature=float(c.temperature),
                               rollouts=int(c.claim6_rollouts), seed=int(c.seed), mesh=mesh))
    if c.ntk_every:
        trackers.append(Drift(lm, probes, out, every=c.ntk_every, n_contexts=c.ntk_contexts, method=c.ntk_method,
                              num_probes=c.ntk_probes, mesh=mesh))
    return trackers


def reads_before(trackers, stage, stage_step: int) -> bool:
    """Whether any of `trackers` reads the params before the update of (stage, stage_step) or after its first
    iteration (Update.before / first_after). When none does, those arrays are dead once the update has run, so the
    trainer donates them to it (the new params take their buffers: one parameter copy less at the step's peak)."""
    return any(t.reads_before(stage, stage_step) for t in trackers)
