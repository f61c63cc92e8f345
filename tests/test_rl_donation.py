"""The trainer donates a step's starting params to its update (their buffers become the new params') exactly when
nothing reads them after the update: not at a run's first step when a KL term reads the starting model as π_ref
(beta > 0), never at a step whose dz share or claim-6 measures read them; the records and the final model equal
those of a run that donates nothing."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from rl_helpers import SMALL, assert_records_close, base_dir, easy_reward  # noqa: F401 (fixture)

from ntkdyn.rl import RLConfig, read_metrics, train, train_batch
from ntkdyn.rl import trainer as T


def _spy(monkeypatch):
    """Record, per update call, whether its params were deleted by it (donated) and the (stage, stage step)."""
    seen = []
    real = T._run_step

    def run_step(ctxs, state, stage, updates):
        before = state.params
        recs = real(ctxs, state, stage, updates)
        seen.append((stage.name, state.stage_step, all(x.is_deleted() for x in jax.tree.leaves(before))))
        return recs

    monkeypatch.setattr(T, "_run_step", run_step)
    return seen


def _final_params(out):
    from safetensors.numpy import load_file

    return load_file(f"{out}/final/model.safetensors")


@pytest.mark.parametrize("lanes", [1, 2])
def test_donates_when_nothing_reads_the_old_params(base_dir, tmp_path, monkeypatch, lanes):
    cfg = RLConfig(recipe="cf-rl", model=base_dir, out="x", steps=4, head_steps=2,
                   **dict(SMALL, eval_every=0, probe_every=3, num_iterations=1))
    runs, seen = {}, _spy(monkeypatch)
    for donate in (True, False):
        if not donate:  # a tracker that reads the old params at every step: nothing is donated
            monkeypatch.setattr(T.trackers, "reads_before", lambda *a: True)
        outs = [cfg.replace(seed=s, out=str(tmp_path / f"d{donate}-s{s}")) for s in range(lanes)]
        train_batch(outs, progress=False, reward_fn=easy_reward)
        runs[donate] = (outs, list(seen))
        seen.clear()
    outs, seen = runs[True]
    # stage 1 (the head): step 1 starts from the base model; step 2 donated. Stage rl: the dz share (probe_every 3)
    # reads the old params at its steps 1 and 3
    assert seen == [("stage1", 1, False), ("stage1", 2, True), ("rl", 1, False), ("rl", 2, True), ("rl", 3, False),
                    ("rl", 4, True)]
    assert not any(d for *_, d in runs[False][1])
    for a, b in zip(outs, runs[False][0]):
        assert_records_close(read_metrics(a.out), read_metrics(b.out), rtol=0, atol=0)
        pa, pb = _final_params(a.out), _final_params(b.out)
        assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_claim6_step_keeps_its_params(base_dir, tmp_path, monkeypatch):
    """claim 6 reads the params before the first step of stage rl and after its first iteration (num_iterations
    2: the second iteration's input): that step donates nothing; later steps donate."""
    seen = _spy(monkeypatch)
    train(RLConfig(recipe="cf-rl", model=base_dir, out=str(tmp_path / "c6"), steps=3, head_steps=1, claim6=True,
                   ntk_contexts=2, **dict(SMALL, eval_every=0, probe_every=0)), progress=False,
          reward_fn=easy_reward)
    assert seen == [("stage1", 1, False), ("rl", 1, False), ("rl", 2, True), ("rl", 3, True)]


def test_first_step_donates_the_starting_model_without_kl(base_dir, tmp_path, monkeypatch):
    """beta = 0 and no tracker: nothing reads the starting model after the first update, which takes its buffers
    over (the run then holds one parameter copy fewer); the run equals one that donates nothing."""
    cfg = RLConfig(recipe="rl", model=base_dir, out="x", steps=2, **dict(SMALL, beta=0.0, probe_every=0))
    seen, outs = _spy(monkeypatch), []
    for donate in (True, False):
        if not donate:
            monkeypatch.setattr(T.trackers, "reads_before", lambda *a: True)
        outs.append(str(tmp_path / f"d{donate}"))
        train(cfg.replace(out=outs[-1]), progress=False, reward_fn=easy_reward)
    assert seen == [("rl", 1, True), ("rl", 2, True), ("rl", 1, False), ("rl", 2, False)]
    assert_records_close(read_metrics(outs[0]), read_metrics(outs[1]), rtol=0, atol=0)
    pa, pb = _final_params(outs[0]), _final_params(outs[1])
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
