"""ntkdyn.rl.rundir and ntkdyn.rl.checkpoint's file handling: a checkpoint moved aside by a kill is put back, the
leftovers of interrupted writes are removed, metrics are truncated for a resume, one writer holds the lock, overwrite
removes the run's files only, the reader (both layouts), the resume checks of a checkpoint (no training here)."""
import json
import os

from ntkdyn.rl import checkpoint, rundir


def _ckpt(path, step):
    os.makedirs(path)
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump({"step": step}, f)


def test_prepare_recovers_moved_aside_checkpoint_and_removes_leftovers(tmp_path):
    out = str(tmp_path)
    _ckpt(os.path.join(out, ".tmp-checkpoint-123-abc.old"), 4)  # killed between the two renames of atomic_dir
    os.makedirs(os.path.join(out, ".tmp-checkpoint-123-abc"))  # the new one, never renamed into place
    for name in ("metrics.tmp-99.jsonl", "config.json.tmp-99", "summary.tmp-7.json", "keep.txt"):
        open(os.path.join(out, name), "w").close()
    rundir.prepare(out, overwrite=False)
    assert sorted(os.listdir(out)) == ["checkpoint", "keep.txt"]
    assert "step 4" in checkpoint.note(out)


def test_prepare_recovers_legacy_checkpoint_old_and_overwrite_clears(tmp_path):
    out = str(tmp_path)
    _ckpt(os.path.join(out, "checkpoint.old"), 2)
    rundir.prepare(out, overwrite=False)
    assert os.listdir(out) == ["checkpoint"]
    open(os.path.join(out, "metrics.jsonl"), "w").close()
    rundir.prepare(out, overwrite=True)
    assert os.listdir(out) == []
    assert checkpoint.note(out) == "no checkpoint had been written yet"


def test_truncate_and_read_metrics(tmp_path):
    out = str(tmp_path)
    rundir.start_metrics(out)
    for s in range(4):
        rundir.log(out, {"step": s, "x": s / 3, "nan": float("nan")})
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "x"')  # a line cut by a kill
    assert [r["step"] for r in rundir.read_metrics(out)] == [0, 1, 2, 3]
    rundir.truncate_metrics(out, 1)
    recs = rundir.read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [r["step"] for r in recs] == [0, 1] and recs[1]["x"] == 1 / 3
    assert "TIMING_KEYS" in dir(rundir) and rundir.TIMING_KEYS == ("step_time", "tokens_per_s")


def test_lock_refuses_a_second_writer_and_cleans_up(tmp_path):
    import pytest

    from ntkdyn.rl import ConfigError

    out = str(tmp_path / "a" / "b")
    with rundir.lock(out) as path:
        assert path == out and os.path.isfile(os.path.join(out, rundir.LOCK_FILE))
        with pytest.raises(rundir.RunLocked, match=rf"RLConfig.out=.*b'?: another process is writing this run "
                                                   rf"directory: pid {os.getpid()} \(started "):
            with rundir.lock(out):
                pass
    assert not os.path.exists(tmp_path / "a")  # created for a run that wrote nothing: removed again
    open(tmp_path / "file", "w").close()
    with pytest.raises(ConfigError, match="file.*not a directory"):
        with rundir.lock(str(tmp_path / "file")):
            pass
    with rundir.lock(str(tmp_path / "kept")) as path:
        open(os.path.join(path, "x"), "w").close()
    assert os.listdir(tmp_path / "kept") == ["x"]


def test_overwrite_removes_the_run_files_only(tmp_path):
    out = str(tmp_path)
    for n in ("config.json", "metrics.jsonl", "summary.json", "ntk0.npz", "notes.txt", "final.txt"):
        open(os.path.join(out, n), "w").close()
    for d in ("checkpoint", "final", "plots"):
        os.makedirs(os.path.join(out, d))
    assert rundir.holds_run(out)
    rundir.prepare(out, overwrite=True)
    assert sorted(os.listdir(out)) == ["final.txt", "notes.txt", "plots"]
    assert not rundir.holds_run(out)


def test_arrays_and_summary(tmp_path):
    import numpy as np
    import pytest

    out = str(tmp_path)
    rundir.write_arrays(out, rundir.NTK0_FILE, a=np.arange(3))
    assert rundir.read_arrays(out, rundir.NTK0_FILE)["a"].tolist() == [0, 1, 2]
    with open(os.path.join(out, rundir.NTK0_FILE), "r+b") as f:
        f.truncate(10)
    assert rundir.read_arrays(out, rundir.NTK0_FILE) is None  # unreadable: computed again by the caller
    with pytest.raises(ValueError, match="not an array file"):
        rundir.write_arrays(out, "other.npz", a=np.arange(3))
    rundir.start_metrics(out)
    rundir.log(out, {"step": 0})
    rundir.log(out, {"step": 1, "rewards/f/unusable": 3, "rewards/g/unusable": 0})
    rundir.log(out, {"step": 2, "rewards/f/unusable": 1, "rewards/g/unusable": 2})
    s = rundir.write_summary(out, {"steps": 2})
    assert s == {"steps": 2, "unusable_rewards": {"f": 4, "g": 2}}
    assert json.load(open(os.path.join(out, "summary.json"))) == s


def test_read_run_both_layouts(tmp_path):
    import pytest

    a = tmp_path / "ntkdyn"
    a.mkdir()
    stages = [{"name": "stage1", "kind": "rl", "group": "head", "steps": 3, "lr": 0.1, "stage_id": 1},
              {"name": "rl", "kind": "rl", "group": "all", "steps": 5, "lr": 0.1, "stage_id": 2}]
    (a / "config.json").write_text(json.dumps({"config": {"recipe": "cf-rl", "seed": 1}, "stages": stages,
                                               "model_dir": "m"}))
    (a / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "x"')
    run = rundir.read_run(str(a))
    assert run.config == {"recipe": "cf-rl", "seed": 1} and run.stages == stages
    assert run.resolved == {"model_dir": "m"} and [r["step"] for r in run.records] == [0, 1]
    b = tmp_path / "flat"
    b.mkdir()
    (b / "config.json").write_text('{"recipe": "rl", "head_steps": 2}')
    (b / "metrics.jsonl").write_text("")
    assert rundir.read_run(str(b)) == ({"recipe": "rl", "head_steps": 2}, None, [], {})
    (b / "config.json").write_text("[1]")
    with pytest.raises(ValueError, match="config.json.*JSON object"):
        rundir.read_run(str(b))
    os.remove(b / "metrics.jsonl")
    (b / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        rundir.read_run(str(b))
    assert rundir.is_run_dir(str(a)) and not rundir.is_run_dir(str(b))

    from ntkdyn.plots import load_runs

    (r,) = load_runs(tmp_path)["cf-rl"]
    assert r.stage1_steps == 3 and r.config["model_dir"] == "m"  # the plan, not the fallbacks


def test_check_resumable(tmp_path):
    import pytest

    from ntkdyn.rl import ConfigError
    from ntkdyn.rl.recipes import Stage

    out = str(tmp_path)
    plan = [Stage("stage1", "rl", "head", 2, 0.1, 1), Stage("rl", "rl", "all", 3, 0.1, 2)]
    assert checkpoint.check_resumable(out, plan) is None  # no checkpoint
    os.makedirs(os.path.join(out, "checkpoint"))
    state = dict(step=4, stage_index=1, stage_step=2, stage="rl", costs={}, n_opt_leaves=0)
    with open(os.path.join(out, "checkpoint", "state.json"), "w") as f:
        json.dump(state, f)
    assert checkpoint.check_resumable(out, plan)["step"] == 4
    fewer = [plan[0], Stage("rl", "rl", "all", 1, 0.1, 2)]
    with pytest.raises(ConfigError, match=r"has done 4 steps .*rl step 2.*more than the 3 steps.*steps >= 2"):
        checkpoint.check_resumable(out, fewer)
    with pytest.raises(ConfigError, match="has done 4 steps"):
        checkpoint.check_resumable(out, plan[:1])  # steps=0: the stage "rl" dropped
    with open(os.path.join(out, "checkpoint", "state.json"), "w") as f:
        json.dump(dict(state, stage_step="2"), f)
    with pytest.raises(ConfigError, match=r"state\.json: cannot resume.*\['stage_step'\]"):
        checkpoint.check_resumable(out, plan)
