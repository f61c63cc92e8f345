"""Files: atomic writes of files and directories, JSON and JSONL reading/appending. The only copies in ntkdyn.

Every writer in the package goes through here, so a crash or a bad destination never leaves a half-written file
or a stray temporary behind:

    with atomic_dir("runs/x/final") as tmp:      # write into tmp; it replaces runs/x/final whole at the end
        ...
    write_json("runs/x/summary.json", obj)      # temp file + os.replace
    with atomic_file("fig.png") as tmp:         # for writers that want a path (matplotlib, numpy)
        fig.savefig(tmp)
    append_jsonl("runs/x/metrics.jsonl", rec); read_jsonl("runs/x/metrics.jsonl")

Temporaries are hidden siblings named `.tmp-<name>-<pid>-<random>[<ext>]` (a directory moved aside while it is
replaced: the same with `.old`). A kill can leave them; the next atomic write into the same directory sweeps those
of processes no longer running (`sweep`), putting back a directory moved aside whose replacement never arrived.

    with exclusive_lock("runs/x/.lock"):         # one writer: LockHeld names the holder (pid, start time, command)
        ...
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time

import numpy as np

__all__ = ["json_safe", "atomic_dir", "atomic_file", "write_json", "write_text", "read_json", "read_jsonl",
           "append_jsonl", "check_writable_dir", "sweep", "pid_alive", "exclusive_lock", "entry_lock", "LockHeld"]


def json_safe(x):
    """x with numpy/JAX scalars and arrays turned into Python numbers and lists (NaN stays NaN)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
        a = np.asarray(x)
        return json_safe(a.tolist()) if a.ndim else json_safe(a.item())
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def check_writable_dir(path: str, what: str = "output directory") -> str:
    """The absolute path of `path` as a directory to write: refuses an existing regular file (ValueError naming it)
    so that the user's file is never touched."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path}: exists and is not a directory; expected a path for the {what} (a new or "
                         "existing directory)")
    parent = os.path.dirname(path)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{parent}: is not a directory; cannot create the {what} {path} inside it")
    return path


def _check_file_target(path: str) -> str:
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; expected a file path to write")
    parent = os.path.dirname(path)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{parent}: is not a directory; cannot write {path} inside it")
    return path


# .tmp-<name>-<pid>-<random><tail>: tail "" (a directory being written), ".old" (the directory it replaces, moved
# aside) or the name's extension (a file being written)
_TMP = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>[0-9]+)-(?P<rand>[A-Za-z0-9_]+)(?P<tail>\.[^.]*)?$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a reused id counts as running: nothing is removed)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep(directory: str) -> list[str]:
    """Clean up after interrupted atomic writes in `directory`: the temporaries (`.tmp-<name>-<pid>-<random>...`)
    of processes no longer running are removed, except that a directory moved aside by a replacement (`...old`)
    whose `<name>` is missing is renamed back to `<name>` (the previous version, whole). Returns the names removed
    or put back; a missing directory has none."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    stale = [(n, m) for n, m in ((n, _TMP.match(n)) for n in names)
             if m and not pid_alive(int(m["pid"]))]
    done = []
    for n, m in stale:  # put back first: the previous version of a directory whose replacement never arrived
        target = os.path.join(directory, m["name"])
        if m["tail"] == ".old" and os.path.isdir(os.path.join(directory, n)) and not os.path.lexists(target):
            os.rename(os.path.join(directory, n), target)
            done.append(n)
    for n, m in stale:
        if n in done:
            continue
        p = os.path.join(directory, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        done.append(n)
    return done


@contextlib.contextmanager
def atomic_dir(path: str, *, what: str = "output directory"):
    """Yield a fresh temporary sibling directory of `path`; on success it replaces `path` whole (an existing
    directory there is removed only after the new one is in place), on any exception it is deleted and `path` is
    untouched. An existing regular file at `path` is refused before anything is written. The stale temporaries
    of killed writers beside `path` are swept first (`sweep`)."""
    path = check_writable_dir(path, what)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    sweep(parent)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-{os.getpid()}-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if os.path.isdir(path):
            old = tmp + ".old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str):
    """Yield a temporary path beside `path` (same extension, so writers that infer the format from it work); it is
    renamed onto `path` on success and removed on failure. The stale temporaries of killed writers beside `path`
    are swept first (`sweep`)."""
    path = _check_file_target(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sweep(os.path.dirname(path))
    tmp = os.path.join(os.path.dirname(path),
                       f".tmp-{os.path.basename(path)}-{os.getpid()}-{secrets.token_hex(4)}{os.path.splitext(path)[1]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str, *, fsync: bool = False) -> str:
    """Write `text` to `path` atomically."""
    with atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return os.path.abspath(path)


def write_json(path: str, obj, *, indent: int | None = 2, fsync: bool = False) -> str:
    """Write `obj` (numpy/JAX values allowed) as JSON to `path` atomically."""
    return write_text(path, json.dumps(json_safe(obj), indent=indent), fsync=fsync)


def read_json(path: str, *, what: str = "JSON file", expect: type | None = dict):
    """Parse a JSON file; a missing, unreadable or malformed file (or one whose top level is not `expect`) raises
    ValueError naming the file and what was expected."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; expected a {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the {what}: {e}") from None
    if expect is not None and not isinstance(obj, expect):
        raise ValueError(f"{path}: the {what} must hold a JSON {'object' if expect is dict else expect.__name__}; "
                         f"got {type(obj).__name__}")
    return obj


def read_jsonl(path: str, *, name: str = "metrics.jsonl") -> list[dict]:
    """The records of a JSONL file (or of `path/name` when `path` is a directory). Lines that do not parse as a
    JSON object (a line cut by a kill) are skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, name)
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def append_jsonl(path: str, record: dict) -> None:
    """Append one JSON line (numpy/JAX values allowed) to `path`."""
    with open(path, "a") as f:
        f.write(json.dumps(json_safe(record)) + "\n")


def is_finite_number(v) -> bool:
    """A real number (not bool) that is finite."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and \
        math.isfinite(v)


# ============================================================================================== lock files


class LockHeld(RuntimeError):
    """Another process holds the lock file `path`; `holder` is what it wrote there (pid, started, host, command)."""

    def __init__(self, path: str, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(f"{path}: held by {describe_holder(holder)}")


def describe_holder(holder: dict) -> str:
    """"pid 123 (started 2025-01-02 10:11:12, `ntkdyn rl --out x`)" of a lock file's record."""
    if not holder.get("pid"):
        return "another process (it has not written its pid yet)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    cmd = f", `{holder['command']}`" if holder.get("command") else ""
    return f"pid {holder['pid']}{where} (started {when}{cmd})"


def _process_start(pid: int) -> float | None:
    """The start time (seconds since the epoch) of process `pid`, from /proc (None where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, clock ticks after boot
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _read_holder(fd: int) -> dict:
    try:
        rec = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


@contextlib.contextmanager
def exclusive_lock(path: str, *, wait: bool = False):
    """Hold the lock file `path` (created if needed; flock, so a killed holder's lock frees itself) for the body;
    the file records the holder: {"pid", "started" (the process's start time), "host", "command"}, and is removed
    on release. A lock held by another process raises LockHeld naming it, or, with `wait`, is waited for. Yields
    the record a previous holder left behind when it was killed (a stale lock, taken over), else None."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            for _ in range(50):  # a holder that has just taken the lock writes its record right after
                if holder.get("pid"):
                    break
                time.sleep(0.01)
                holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the previous holder removes the file on release: lock the file now at `path`, not a removed one
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        stale = _read_holder(fd) or None
        me = dict(pid=os.getpid(), started=_process_start(os.getpid()) or time.time(), host=socket.gethostname(),
                  command=" ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])[:300])
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield stale
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # before unlocking: a waiter that wakes up on this file sees it gone and retries
        os.close(fd)


def entry_lock(path: str):
    """The lock of one cache entry `path` (a file or directory that one process builds and others then read):
    `exclusive_lock` on `.lock-<name>` beside it, waited for, so that processes building the same entry at once
    take turns; a builder re-checks the entry once it holds the lock (another may have finished it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return exclusive_lock(os.path.join(os.path.dirname(path), f".lock-{os.path.basename(path)}"), wait=True)
