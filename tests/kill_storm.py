"""SIGKILLs at chosen phases of an `ntkdyn.rl.train` run, each followed by a resume: the run must end identical to an
uninterrupted one (metrics.jsonl but its timing keys, final/, summary.json but its costs), with nothing left over.

A child process runs `train` with one fault planted by patching (never by hooks in ntkdyn): it SIGKILLs itself

    step N        after step N's metrics line and checkpoint (the train callback)
    metrics N     in the middle of writing the N-th metrics line of this process (half a line on disk)
    checkpoint N  inside the N-th checkpoint write of this process (its model written, optimizer.npz not)
    rename N      between the two renames of the N-th checkpoint replacement (the old one moved aside)
    final N       inside the final/ write (its weights written into the temporary, never renamed)
    summary N     after summary.json's temporary is written, before it replaces the file
    pause N       after step N: writes the file `marker` and sleeps (for the test to act while the run holds OUT)

`tests/test_run_faults.py` runs two of them; `python tests/kill_storm.py` runs the whole storm (a kill before the
first checkpoint, then six kills at other phases, each followed by a resume) and prints the result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD = r'''
import json, os, signal, sys
args = json.loads(sys.argv[1])
phase, n = args["phase"], args.get("n", 1)
count = [0]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def hit():
    count[0] += 1
    return count[0] == n


import safetensors.numpy as stn
import ntkdyn.io as io
import ntkdyn.rl.rundir as rundir
from ntkdyn.rl import RLConfig, train


def kill_at(module, name, when, after=False):
    """module.name SIGKILLs the process at its n-th call for which when(*args) holds (before or after the call)."""
    orig = getattr(module, name)

    def patched(*a, **k):
        fire = when(*a) and hit()
        if fire and not after:
            die()
        out = orig(*a, **k)
        if fire:
            die()
        return out

    setattr(module, name, patched)


callback = None
if phase == "step":
    callback = lambda rec: rec["step"] == n and die()
elif phase == "pause":
    def callback(rec):
        if rec["step"] == n:
            import time
            open(args["marker"], "w").close()
            time.sleep(600)
elif phase in ("checkpoint", "final"):
    tag = {"checkpoint": ".tmp-checkpoint-", "final": ".tmp-final-"}[phase]
    kill_at(stn, "save_file", lambda tensors, path, *a: tag in path, after=True)
elif phase == "rename":
    kill_at(os, "rename", lambda src, dst: dst.endswith(os.sep + "checkpoint") and os.path.isdir(str(src) + ".old"))
elif phase == "summary":
    kill_at(os, "replace", lambda src, dst: str(dst).endswith("summary.json"))
elif phase == "metrics":
    append = rundir.append_jsonl

    def patched_append(path, rec):
        if hit():
            line = json.dumps(io.json_safe(rec)) + "\n"
            with open(path, "a") as f:
                f.write(line[: len(line) // 2])
            die()
        append(path, rec)

    rundir.append_jsonl = patched_append
elif phase != "none":
    raise SystemExit(f"unknown phase {phase!r}")
train(RLConfig.from_dict(args["config"]), progress=False, callback=callback)
'''

# a cf-rl run small enough for CPU: stage 1 (2 head-only RL steps) then 3 full RL steps, a checkpoint every step
CONFIG = dict(recipe="cf-rl", task="sum", head_steps=2, steps=3, group_size=2, prompts_per_step=2, max_new_tokens=6,
              eval_prompts=2, eval_samples=2, probe_prompts=2, eval_every=2, probe_every=2, checkpoint_every=1,
              lr=1e-3, seed=0)


def child_argv(out: str, phase: str = "none", n: int = 1, config: dict | None = None, marker: str | None = None,
               **extra) -> list[str]:
    """The command line of a child process running `train` on OUT (RLConfig keys: `config`, default CONFIG, updated
    with `extra`) with the fault `phase` (see the module docstring)."""
    cfg = dict(config or CONFIG, out=out, **extra)
    return [sys.executable, "-c", CHILD, json.dumps(dict(config=cfg, phase=phase, n=n, marker=marker))]


def child(out: str, phase: str = "none", n: int = 1, config: dict | None = None, timeout: float = 600,
          **extra) -> subprocess.CompletedProcess:
    """Run `child_argv` to its end (or its kill)."""
    return subprocess.run(child_argv(out, phase, n, config, **extra), capture_output=True, text=True,
                          timeout=timeout, env=child_env())


def child_env() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, NTKDYN_NO_COMPILE_CACHE="1")


def leftovers(out: str) -> list[str]:
    """Names under OUT that only an interrupted write or a live writer leaves: temporaries and the lock file."""
    found = []
    for d, dirs, files in os.walk(out):
        for n in dirs + files:
            if n.startswith(".tmp") or ".tmp-" in n or n.endswith(".old") or n == ".lock":
                found.append(os.path.relpath(os.path.join(d, n), out))
    return sorted(found)


def run_files(out: str) -> dict:
    """What must equal between an interrupted-and-resumed run and an uninterrupted one: the metrics records less
    their timing keys, the bytes of final/'s files, and summary.json less its costs, paths and timing keys."""
    from ntkdyn.rl.rundir import TIMING_KEYS, read_metrics

    recs = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(out)]
    final = {}
    for n in sorted(os.listdir(os.path.join(out, "final"))):
        with open(os.path.join(out, "final", n), "rb") as f:
            final[n] = f.read()
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    for k in ("cost", "out", "final_model"):
        summary.pop(k, None)
    summary["final_metrics"] = {k: v for k, v in summary.get("final_metrics", {}).items() if k not in TIMING_KEYS}
    return dict(metrics=json.dumps(recs), final=final, summary=summary)


def storm(root: str) -> dict:
    """The whole storm in `root`: an uninterrupted reference run, then a run killed before its first checkpoint
    (its resume is refused: nothing to resume from; it starts again with overwrite) and killed again at six other
    phases, each followed by a resume. Returns what happened, step by step, and whether the end equals the
    reference."""
    ref, out = os.path.join(root, "reference"), os.path.join(root, "stormed")
    t0 = time.time()
    r = child(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [dict(what="reference run", rc=r.returncode, seconds=round(time.time() - t0, 1))]
    plan = [("metrics", 1, {}, "fresh run: killed writing the step-0 metrics line (before the first checkpoint)"),
            ("none", 1, dict(resume=True), "resume: refused, no checkpoint to resume from"),
            ("step", 1, dict(overwrite=True), "overwrite: killed after step 1 (its line and checkpoint written)"),
            ("checkpoint", 1, dict(resume=True), "resume: killed inside the step-2 checkpoint write"),
            ("rename", 1, dict(resume=True), "resume: killed between the renames of the step-2 checkpoint"),
            ("metrics", 2, dict(resume=True), "resume: killed writing the step-3 metrics line"),
            ("final", 1, dict(resume=True), "resume: killed inside the final/ write"),
            ("summary", 1, dict(resume=True), "resume: killed before summary.json replaces its temporary"),
            ("none", 1, dict(resume=True), "resume: to the end")]
    for phase, n, extra, what in plan:
        t0 = time.time()
        left_before = leftovers(out) if os.path.isdir(out) else []
        r = child(out, phase, n, **extra)
        err = [x for x in r.stderr.strip().splitlines() if x.strip()]
        log.append(dict(what=what, phase=f"{phase} {n}", rc=r.returncode, seconds=round(time.time() - t0, 1),
                        left_before=left_before, error=err[-1] if r.returncode not in (0, -9) and err else None))
    same = run_files(out) == run_files(ref)
    return dict(steps=log, identical=same, left_at_end=leftovers(out), kills=sum(s.get("rc") == -9 for s in log))


if __name__ == "__main__":
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="working directory (default: a temporary one, removed)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kill-storm-") as tmp:
        res = storm(a.root or tmp)
    for s in res["steps"]:
        print(json.dumps(s))
    print(f"kills: {res['kills']}; identical to the uninterrupted run: {res['identical']}; "
          f"left at the end: {res['left_at_end']}")
    sys.exit(0 if res["identical"] and not res["left_at_end"] and res["kills"] >= 5 else 1)
