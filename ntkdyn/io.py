"""Files: atomic writes of files and directories, JSON and JSONL reading/appending. The only copies in ntkdyn.

Every writer in the package goes through here, so a crash or a bad destination never leaves a half-written file
or a stray temporary behind:

    with atomic_dir("runs/x/final") as tmp:      # write into tmp; it replaces runs/x/final whole at the end
        ...
    write_json("runs/x/summary.json", obj)      # temp file + os.replace
    with atomic_file("fig.png") as tmp:         # for writers that want a path (matplotlib, numpy)
        fig.savefig(tmp)
    append_jsonl("runs/x/metrics.jsonl", rec); read_jsonl("runs/x/metrics.jsonl")
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile

import numpy as np

__all__ = ["json_safe", "atomic_dir", "atomic_file", "write_json", "write_text", "read_json", "read_jsonl",
           "append_jsonl", "check_writable_dir"]


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


@contextlib.contextmanager
def atomic_dir(path: str, *, what: str = "output directory"):
    """Yield a fresh temporary sibling directory of `path`; on success it replaces `path` whole (an existing
    directory there is removed only after the new one is in place), on any exception it is deleted and `path` is
    untouched. An existing regular file at `path` is refused before anything is written."""
    path = check_writable_dir(path, what)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
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
    renamed onto `path` on success and removed on failure."""
    path = _check_file_target(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
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
