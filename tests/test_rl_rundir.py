"""ntkdyn.rl.rundir and ntkdyn.rl.checkpoint's file handling: a checkpoint moved aside by a kill is put back, the
leftovers of interrupted writes are removed, metrics are truncated for a resume (no training here)."""
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
