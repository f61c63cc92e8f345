"""Runs that cannot corrupt each other (issue 27), table-driven like test_bad_inputs: concurrent writers of one run
directory, kills (SIGKILL at a chosen phase, in a child process), --overwrite of a run by a new one that fails its
validation, resumes from damaged checkpoints or with fewer steps, unreadable inputs, unusable rewards.

Each case is (id, setup(env) -> OUT, act(env, OUT), expected exception (None: it must succeed), regex the message
must match, keep: OUT must be exactly as before). A case's copy of a finished run holds the user's own file
notes.txt, which must survive; no case may leave a temporary or a lock file in OUT. Every child process has a
timeout."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from kill_storm import child, child_argv, child_env, leftovers, run_files
from test_bad_inputs import snapshot

import ntkdyn as nd
from ntkdyn.rl import ConfigError, RLConfig, TrainingError, read_metrics, train

# the embedded default model; 2 steps, a checkpoint after each (one compilation shared by every case)
TINY = dict(task="sum", group_size=2, prompts_per_step=2, max_new_tokens=6, eval_prompts=2, eval_samples=2,
            probe_prompts=2, eval_every=0, probe_every=0, checkpoint_every=1, steps=2, lr=1e-3, seed=0)
FLAGS = ["--task", "sum", "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "6",
         "--eval-prompts", "2", "--eval-samples", "2", "--probe-prompts", "2", "--eval-every", "0",
         "--probe-every", "0", "--checkpoint-every", "1", "--steps", "2", "--lr", "1e-3", "--seed", "0",
         "--no-progress"]
USER_FILE = "notes.txt"


class Env:
    """A finished TINY run (the reference every other run is compared with) and copies of it on demand."""

    def __init__(self, root):
        self.root = str(root)
        self.done = os.path.join(self.root, "done")
        train(RLConfig(out=self.done, **TINY), progress=False, compile_cache=False)

    def copy(self, name, edit=None):
        """A copy of the finished run with the user's file in it; `edit(out)` damages it."""
        out = os.path.join(self.root, name)
        shutil.copytree(self.done, out)
        with open(os.path.join(out, USER_FILE), "w") as f:
            f.write("the user's own file\n")
        if edit is not None:
            edit(out)
        return out

    def fresh(self, name):
        """A directory that does not exist yet (a new run's OUT)."""
        return os.path.join(self.root, name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("faults"))


class CliFailed(Exception):
    """`ntkdyn ...` exited non-zero: one stderr line, no traceback (the message is that line)."""


def _cli(*argv, code=2, capfd=None):
    """`ntkdyn` in this process (stderr read at the file descriptor: library log lines count too, ntkdyn's own
    progress lines do not)."""
    from ntkdyn.cli import main

    got = main(list(argv))
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("ntkdyn: ")]
    assert "Traceback" not in err and got == code, (got, err)
    assert len(lines) == 1, f"expected one line on stderr; got {lines}"
    raise CliFailed(lines[0])


def _cli_process(argv, timeout=300):
    """`ntkdyn ...` in a child process: (exit code, stderr)."""
    p = subprocess.run([sys.executable, "-m", "ntkdyn.cli", *argv], capture_output=True, text=True,
                       timeout=timeout, env=child_env())
    return p.returncode, p.stderr


def _truncate(rel, keep=0.5):
    def edit(out):
        path = os.path.join(out, rel)
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: int(len(data) * keep)])
    return edit


def _write(rel, text):
    def edit(out):
        with open(os.path.join(out, rel), "w" if isinstance(text, str) else "wb") as f:
            f.write(text)
    return edit


def _same_as_done(env, out):
    """The run in OUT equals the uninterrupted reference run."""
    assert run_files(out) == run_files(env.done)


def _input(env, name, text):
    path = os.path.join(env.root, "inputs", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w" if isinstance(text, str) else "wb") as f:
        f.write(text)
    return path


# ------------------------------------------------------------------------------------------- rewards (callables)
def raises(prompts, completions, **kw):
    raise KeyError("answer")


def none_reward(prompts, completions, **kw):
    return [None] * len(completions)


def nan_reward(prompts, completions, **kw):
    return [float("nan")] * len(completions)


def every_other(prompts, completions, **kw):
    """None for the odd completions: 2 of each step's 4 unusable."""
    return [None if i % 2 else 1.0 for i in range(len(completions))]


# ------------------------------------------------------------------------------------------- class 1: one writer
def _second_writers_refused_then_kill(env, out):
    """A child run pauses after step 1 (holding OUT); a second run, a resume and an overwrite on OUT are each
    refused naming it; then the child is SIGKILLed (its lock file stays behind) and a resume takes the lock over
    and ends equal to the uninterrupted run."""
    marker = os.path.join(env.root, "paused")
    a = subprocess.Popen(child_argv(out, "pause", 1, config=TINY, marker=marker), env=child_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not os.path.exists(marker):
            assert a.poll() is None, a.stderr.read()[-3000:]
            assert time.time() - t0 < 400, "the child run never reached step 1"
            time.sleep(0.2)
        errors = []
        for extra in ([], ["--resume"], ["--overwrite"]):
            code, err = _cli_process(["rl", "--out", out, *extra, *FLAGS], timeout=300)
            lines = [x for x in err.splitlines() if x.strip()]
            assert code == 2 and len(lines) == 1 and "Traceback" not in err, (extra, code, err)
            assert re.search(rf"another process is writing this run directory: pid {a.pid} \(started ", err), err
            errors.append(lines[0])
        assert [r["step"] for r in read_metrics(out)] == [0, 1]  # every line once
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
        a.stderr.close()
    assert os.path.exists(os.path.join(out, ".lock"))  # what a killed writer leaves
    train(RLConfig(out=out, resume=True, **TINY), progress=False, compile_cache=False)
    _same_as_done(env, out)
    raise ConfigError(errors[0])


def _held_in_this_process(env, out):
    from ntkdyn.rl import rundir

    with rundir.lock(out):
        _overwrite(env, out)


# ------------------------------------------------------------------------------------------- class 2: temporaries
def _kill_in_final_write(env, out):
    r = child(out, "final", 1, config=TINY, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert [n for n in os.listdir(out) if n.startswith(".tmp-final-")], os.listdir(out)  # what the kill left
    train(RLConfig(out=out, resume=True, **TINY), progress=False, compile_cache=False)
    _same_as_done(env, out)


LM_SAVE_KILLED = r'''
import os, signal, sys
import safetensors.numpy as stn
import ntkdyn as nd

def save_file(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

stn.save_file = save_file
nd.load(sys.argv[1]).save(sys.argv[2])
'''


def _kill_in_lm_save(env, out):
    target = os.path.join(out, "mymodel")
    p = subprocess.run([sys.executable, "-c", LM_SAVE_KILLED, os.path.join(env.done, "final"), target],
                       capture_output=True, text=True, timeout=300, env=child_env())
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert [n for n in os.listdir(out) if n.startswith(".tmp-mymodel-")]
    nd.load(os.path.join(env.done, "final")).save(target)  # the next save into OUT sweeps the killed one's
    assert nd.load(target).config.vocab_size > 0
    shutil.rmtree(target)


# ------------------------------------------------------------------------------------------- class 3: --overwrite
def _overwrite(env, out, **kw):
    reward_funcs = kw.pop("reward_funcs", None)
    train(RLConfig(out=out, overwrite=True, **dict(TINY, **kw)), progress=False, reward_funcs=reward_funcs,
          compile_cache=False)


def _overwrite_ok(env, out):
    _overwrite(env, out, steps=1)
    assert sorted(os.listdir(out)) == ["checkpoint", "config.json", "final", "metrics.jsonl", USER_FILE,
                                       "summary.json"]  # the old run's ntk0.npz is gone, the user's file kept
    assert [r["step"] for r in read_metrics(out)] == [0, 1]


# ------------------------------------------------------------------------------------------- class 6: rewards
def _some_unusable(env, out):
    s = train(RLConfig(out=out, **TINY), progress=False, reward_funcs=[every_other], compile_cache=False)
    recs = read_metrics(out)
    assert [r["rewards/every_other/unusable"] for r in recs[1:]] == [2, 2]
    assert s["unusable_rewards"] == {"every_other": 4}
    assert json.load(open(os.path.join(out, "summary.json")))["unusable_rewards"] == {"every_other": 4}


def _unusable_from_step_2(env, out):
    state = {"bad": False}

    def flaky(prompts, completions, **kw):
        return [None if state["bad"] else 1.0] * len(completions)

    def arm(rec):
        state["bad"] = rec["step"] == 1

    train(RLConfig(out=out, **TINY), progress=False, reward_funcs=[flaky], callback=arm, compile_cache=False)


CASES = [
    # --- 1. one writer per run directory (a child run holds OUT; three other writers are refused naming it)
    ("second-writers-refused", lambda e: e.fresh("live"), _second_writers_refused_then_kill, ConfigError,
     r"RLConfig\.out=.*live.*another process is writing this run directory: pid \d+ \(started \d{4}-", False),
    ("second-writer-in-this-process", lambda e: e.copy("twice"), _held_in_this_process, ConfigError,
     rf"another process is writing this run directory: pid {os.getpid()} ", True),
    # --- 2. temporaries of killed writes are swept by the next writer
    ("kill-in-final-write", lambda e: e.fresh("killed_final"), _kill_in_final_write, None, "", False),
    ("kill-in-lm-save", lambda e: e.copy("killed_save"), _kill_in_lm_save, None, "", True),
    # --- 3. --overwrite validates the new run (rewards on a real batch) before removing anything of the old one
    ("overwrite-reward-raises", lambda e: e.copy("ow_raises"), lambda e, o: _overwrite(e, o, reward_funcs=[raises]),
     TrainingError, r"dry run.*reward function 'raises' raised KeyError.*nothing was written", True),
    ("overwrite-reward-none", lambda e: e.copy("ow_none"), lambda e, o: _overwrite(e, o, reward_funcs=[none_reward]),
     TrainingError, r"'none_reward' returned None or NaN for every one.*nothing was written", True),
    ("overwrite-bad-model", lambda e: e.copy("ow_model"),
     lambda e, o: _overwrite(e, o, model=_input(e, "fake.gguf", "not a gguf file")),
     ConfigError, r"RLConfig\.model=.*fake\.gguf.*not a readable GGUF file", True),
    ("overwrite-removes-old-files-only", lambda e: e.copy("ow_ok", _write("ntk0.npz", b"old kernels")),
     _overwrite_ok, None, "", False),
    # --- 4. resume from a damaged checkpoint, or with fewer steps than done
    ("resume-truncated-optimizer", lambda e: e.copy("r_opt", _truncate("checkpoint/optimizer.npz")),
     lambda e, o: train(RLConfig(out=o, resume=True, **TINY), progress=False, compile_cache=False),
     ConfigError, r"checkpoint/optimizer\.npz: cannot resume, the checkpoint file is unreadable", True),
    ("resume-truncated-weights", lambda e: e.copy("r_w", _truncate("checkpoint/model/model.safetensors")),
     lambda e, o: train(RLConfig(out=o, resume=True, **TINY), progress=False, compile_cache=False),
     ConfigError, r"checkpoint/model/model\.safetensors", True),
    ("resume-corrupt-state", lambda e: e.copy("r_state", _write("checkpoint/state.json", '{"step": 2,')),
     lambda e, o: train(RLConfig(out=o, resume=True, **TINY), progress=False, compile_cache=False),
     ConfigError, r"checkpoint/state\.json: cannot resume", True),
    ("resume-fewer-steps", lambda e: e.copy("r_fewer"),
     lambda e, o: train(RLConfig(out=o, resume=True, **dict(TINY, steps=1)), progress=False, compile_cache=False),
     ConfigError, r"RLConfig\.steps: the run in .*r_fewer has done 2 steps.*expected steps >= 2", True),
    ("cli-resume-truncated-optimizer", lambda e: e.copy("cli_opt", _truncate("checkpoint/optimizer.npz", 0.9)),
     lambda e, o, capfd: _cli("rl", "--out", o, "--resume", "--no-progress", capfd=capfd),
     CliFailed, r"^ntkdyn rl: error: .*optimizer\.npz: cannot resume", True),
    # --- 5. messages that name the cause
    ("cli-jsonl-line", lambda e: e.fresh("m_jsonl"),
     lambda e, o, capfd: _cli("rl", "--dataset", _input(e, "bad.jsonl", '{"prompt": "a"}\n{"prompt": "b",\n'),
                              "--reward", "sum", "--out", o, capfd=capfd),
     CliFailed, r"bad\.jsonl:2: not valid JSON", True),
    ("cli-truncated-parquet", lambda e: e.fresh("m_parquet"),
     lambda e, o, capfd: _cli("rl", "--dataset", _input(e, "cut.parquet", b"PAR1\x15\x04"), "--reward", "sum",
                              "--out", o, capfd=capfd),
     CliFailed, r"^ntkdyn rl: error: .*cut\.parquet: cannot read the dataset \(", True),
    ("cli-truncated-gguf", lambda e: e.fresh("m_gguf"),
     lambda e, o, capfd: _cli("rl", "--model", _input(e, "cut.gguf", b"GGUF\x03\x00\x00\x00\x01"), "--out", o,
                              *FLAGS, capfd=capfd),
     CliFailed, r"cut\.gguf: not a readable GGUF file", True),
    ("model-name-trailing-space", lambda e: e.fresh("m_name"),
     lambda e, o: train(RLConfig(out=o, model="smollm2-135m-instruct ", **TINY), progress=False,
                        compile_cache=False),
     ConfigError, r"'smollm2-135m-instruct ': not a directory.*did you mean 'smollm2-135m-instruct'\?", True),
    ("unencodable-prompt", lambda e: e.fresh("m_chars"),
     lambda e, o: train(RLConfig(out=o, **dict(TINY, task=_input(e, "accents.jsonl", '{"prompt": "café 1+2="}\n'
                                                                                      '{"prompt": "3+4="}\n'))),
                        progress=False, reward_funcs=[every_other], compile_cache=False),
     ConfigError, r"RLConfig\.task=.*accents\.jsonl.*prompt 'café 1\+2=' cannot be encoded.*\['é'\]", True),
    # --- 6. unusable rewards
    ("fresh-reward-nan", lambda e: e.fresh("u_nan"),
     lambda e, o: train(RLConfig(out=o, **TINY), progress=False, reward_funcs=[nan_reward], compile_cache=False),
     TrainingError, r"dry run.*'nan_reward' returned None or NaN for every one", True),
    ("some-rewards-unusable", lambda e: e.fresh("u_some"), _some_unusable, None, "", False),
    ("rewards-unusable-mid-run", lambda e: e.fresh("u_mid"), _unusable_from_step_2, TrainingError,
     r"step 2 \(rl step 2\): no reward function gave a value.*'flaky'.*checkpoint \(step 1\) is kept", False),
]


def test_cases_are_unique():
    assert len({c[0] for c in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fault(env, case, capfd):
    name, setup, act, exc, pattern, keep = case
    out = setup(env)
    before = snapshot(out)
    args = (env, out, capfd) if act.__code__.co_argcount == 3 else (env, out)
    if exc is None:
        act(*args)
    else:
        with pytest.raises(exc) as info:
            act(*args)
        assert re.search(pattern, str(info.value)), f"{name}: message {str(info.value)!r} does not match {pattern!r}"
    after = snapshot(out)
    if keep:
        a, b = after or {}, before or {}
        assert after == before, f"{name}: changed {sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))}"
    if before is not None and os.path.join(".", USER_FILE) in before:
        assert open(os.path.join(out, USER_FILE)).read() == "the user's own file\n"
    if os.path.isdir(out):
        assert not leftovers(out), f"{name}: left behind {leftovers(out)}"


def test_resume_with_more_steps_updates_the_stage_plan(env):
    """A resume may ask for more steps (RESUMABLE_CHANGES): config.json's plan follows, so the run reads back right."""
    from ntkdyn.rl.rundir import read_run

    out = env.copy("more")
    train(RLConfig(out=out, resume=True, **dict(TINY, steps=3)), progress=False, compile_cache=False)
    run = read_run(out)
    assert [r["step"] for r in run.records] == [0, 1, 2, 3]
    assert run.stages[-1]["steps"] == 3 and run.config["steps"] == 3
    assert np.isfinite(run.records[-1]["reward"])
