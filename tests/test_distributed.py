"""ntkdyn.distributed: `ntkdyn rl` over two local processes (one CPU device each, jax.distributed on 127.0.0.1)
against one process with two forced devices; a resume on both processes from process 0's run directory; a killed
peer ends the run within a bounded time with a clear error; bad process options are refused."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from rl_helpers import base_dir, strip_timing  # noqa: F401 (fixture)

import ntkdyn as nd
from ntkdyn import distributed
from ntkdyn.rl import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT = 10  # seconds: a dead peer must end the run within a few of these


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rl(base, out, *extra):
    return [sys.executable, "-m", "ntkdyn.cli", "rl", "--recipe", "rl", "--model", base, "--task", "sum",
            "--group-size", "4", "--prompts-per-step", "4", "--max-new-tokens", "8", "--eval-prompts", "4",
            "--eval-samples", "4", "--eval-every", "0", "--probe-every", "0", "--probe-prompts", "4",
            "--optimizer", "sgd", "--lr", "0.05", "--seed", "1", "--checkpoint-every", "1", "--mesh", "fsdp=2",
            "--no-progress", "--out", out, *extra]


def _env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def _two(base, out, *extra):
    port = _port()
    return [subprocess.Popen(_rl(base, out, *extra, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                 "--process-id", str(i), "--heartbeat-timeout", str(HEARTBEAT)),
                             env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def _wait(procs, timeout=600):
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def test_two_processes_equal_two_devices_resume_and_a_dead_peer_ends_the_run(base_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    ref = subprocess.Popen(_rl(base_dir, one, "--steps", "2"), env=_env(2), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    _wait(_two(base_dir, two, "--steps", "2") + [ref])
    a, b = strip_timing(read_metrics(one)), strip_timing(read_metrics(two))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-5), (x["step"], k)
            else:
                assert np.allclose(x[k], y[k], rtol=1e-5, atol=1e-5) if isinstance(x[k], list) else x[k] == y[k]
    wa, wb = nd.load(os.path.join(one, "final")).params, nd.load(os.path.join(two, "final")).params
    import jax

    for u, v in zip(jax.tree.leaves(wa), jax.tree.leaves(wb)):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-5, atol=1e-5)
    with open(os.path.join(two, "config.json")) as f:
        assert '"processes": 2' in f.read()

    # both processes resume from process 0's directory; then process 1 is killed mid-run
    procs = _two(base_dir, two, "--steps", "40", "--resume")
    deadline = time.time() + 300
    while time.time() < deadline and max((r["step"] for r in read_metrics(two)), default=0) < 3:
        assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.5)
    assert max(r["step"] for r in read_metrics(two)) >= 3, "the resumed run made no progress"
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = procs[0].communicate(timeout=12 * HEARTBEAT)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail(f"process 0 still running {12 * HEARTBEAT} s after its peer was killed")
    procs[1].communicate()
    assert procs[0].returncode != 0
    assert time.time() - t0 < 12 * HEARTBEAT
    print(f"process 0 ended {time.time() - t0:.1f} s after its peer was killed: {err.strip()[-300:]}")
    assert DEAD_PEER_MESSAGE in err, err[-3000:]


DEAD_PEER_MESSAGE = "ntkdyn rl: error: process 0 of 2: the run stopped"


def test_bad_process_options_are_refused():
    p = argparse.ArgumentParser()
    distributed.add_arguments(p)
    cases = ((["--coordinator", "host-without-port", "--num-processes", "2", "--process-id", "0"],
              "expected HOST:PORT"),
             (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "--num-processes 0"),
             (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], r"in 0\.\.1"),
             (["--coordinator", "h:1", "--num-processes", "2"], "--process-id None"),
             (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1", "--heartbeat-timeout", "0"],
              "--heartbeat-timeout 0"))
    for argv, why in cases:
        with pytest.raises(ValueError, match=why):
            distributed.initialize_from_args(p.parse_args(argv))
    assert distributed.initialize_from_args(p.parse_args([])) is False  # one process: nothing to do
