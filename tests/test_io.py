"""ntkdyn.io: the sweep of killed writers' temporaries (dead processes only; a directory moved aside is put back;
the user's files untouched) and the lock file (the holder named, a killed holder's lock taken over, waiting)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ntkdyn.io import LockHeld, atomic_dir, atomic_file, exclusive_lock, pid_alive, sweep, write_json

DEAD = 999_999_999  # above pid_max: no such process


def _touch(path, text="x"):
    with open(path, "w") as f:
        f.write(text)


def test_pid_alive():
    assert pid_alive(os.getpid()) and not pid_alive(DEAD) and not pid_alive(0) and not pid_alive(-1)


def test_sweep_removes_dead_writers_temporaries_only(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        d = str(tmp_path)
        os.makedirs(os.path.join(d, f".tmp-model-{DEAD}-ab12cd34"))  # a killed lm.save
        _touch(os.path.join(d, f".tmp-summary.json-{DEAD}-0a1b2c3d.json"))  # a killed write_json
        os.makedirs(os.path.join(d, f".tmp-model-{live.pid}-zz99yy88"))  # a live writer's: kept
        os.makedirs(os.path.join(d, f".tmp-final-{DEAD}-qwertyui.old"))  # moved aside, its target exists: removed
        os.makedirs(os.path.join(d, "final"))
        old = os.path.join(d, f".tmp-ckpt-{DEAD}-asdfghjk.old")  # moved aside, replacement never arrived
        os.makedirs(old)
        _touch(os.path.join(old, "state.json"), "{}")
        for user in ("notes.tmp-1.txt", ".tmp-notes", "data.tmp-2023.csv", f".tmp-{DEAD}"):  # the user's own
            _touch(os.path.join(d, user))
        done = sweep(d)
        assert sorted(os.listdir(d)) == sorted([".tmp-notes", f".tmp-{DEAD}", f".tmp-model-{live.pid}-zz99yy88",
                                                "ckpt", "data.tmp-2023.csv", "final", "notes.tmp-1.txt"])
        assert os.path.isfile(os.path.join(d, "ckpt", "state.json")) and len(done) == 4
        assert sweep(str(tmp_path / "missing")) == []
    finally:
        live.kill()
        live.wait()


def test_atomic_writes_sweep_their_directory(tmp_path):
    d = str(tmp_path)
    os.makedirs(os.path.join(d, f".tmp-model-{DEAD}-ab12cd34"))
    _touch(os.path.join(d, f".tmp-x.json-{DEAD}-0a1b2c3d.json"))
    write_json(os.path.join(d, "x.json"), {"a": 1})
    assert sorted(os.listdir(d)) == ["x.json"]
    os.makedirs(os.path.join(d, f".tmp-model-{DEAD}-ab12cd35"))
    with atomic_dir(os.path.join(d, "model")) as tmp:
        _touch(os.path.join(tmp, "w"))
    assert sorted(os.listdir(d)) == ["model", "x.json"]
    with pytest.raises(RuntimeError):
        with atomic_file(os.path.join(d, "y.npz")) as tmp:
            assert os.path.basename(tmp).startswith(".tmp-y.npz-") and tmp.endswith(".npz")
            _touch(tmp)
            raise RuntimeError("writer failed")
    assert sorted(os.listdir(d)) == ["model", "x.json"]


def test_lock_names_the_holder_and_is_taken_over_after_a_kill(tmp_path):
    path = str(tmp_path / ".lock")
    with exclusive_lock(path) as stale:
        assert stale is None
        rec = json.load(open(path))
        assert rec["pid"] == os.getpid() and rec["started"] <= time.time()
        with pytest.raises(LockHeld, match=rf"\.lock: held by pid {os.getpid()} \(started 20\d\d-"):
            with exclusive_lock(path):  # a second holder, even in the same process
                pass
    assert not os.path.exists(path)  # released: removed
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ntkdyn.io import exclusive_lock\n"
                              f"with exclusive_lock({path!r}):\n    print('held', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=rf"pid {child.pid} "):
            with exclusive_lock(path):
                pass
    finally:
        child.kill()
        child.wait(timeout=30)
    with exclusive_lock(path) as stale:  # the killed holder's file is still there: taken over
        assert stale["pid"] == child.pid
        assert json.load(open(path))["pid"] == os.getpid()


def test_lock_waits(tmp_path):
    path, order = str(tmp_path / ".lock"), []

    def second():
        with exclusive_lock(path, wait=True):
            order.append("second")

    with exclusive_lock(path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first")
    t.join(timeout=30)
    assert order == ["first", "second"] and not os.path.exists(path)
