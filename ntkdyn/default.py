"""The embedded default base model: a small Pythia-style (gpt_neox) model trained by :func:`ntkdyn.sft.train` on
``tasks.DEFAULT_TASK`` with the fixed :data:`RECIPE`, built on first use and cached.

Cache location: ``$NTKDYN_CACHE`` when set, else ``~/.cache/ntkdyn`` (``$XDG_CACHE_HOME/ntkdyn`` when that is set).
The model lives in ``<cache>/default-<task>-<family>-<hash>``, ``<hash>`` being a short hash of the recipe, so a
changed recipe builds a new directory. Building is atomic: training runs in a hidden ``.tmp-*`` sibling that is
renamed into place at the end (a killed build leaves no model directory, and its stale ``.tmp-*`` is swept by the
next build), and a lock file serialises concurrent builders.

    import ntkdyn.default as default
    path = default.default_model_dir()     # builds on first use (a few minutes on a laptop CPU)
    lm = default.base_model()              # nd.load(path), with its tokenizer
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time

from . import tasks as _tasks

__all__ = ["RECIPE", "cache_root", "recipe_hash", "default_model_dir", "base_model", "add_arguments", "run_cli"]

# The fixed recipe of the default model (arguments of ntkdyn.sft.train). Changing it changes the cache directory.
RECIPE = dict(task=_tasks.DEFAULT_TASK, family="gpt_neox", size="default", steps=2500, batch_size=32, lr=2e-3,
              seed=0, correct_frac=0.6, clean_frac=0.6, warmup=100, weight_decay=0.01, eval_prompts=64,
              eval_samples=32)

_FORMAT = 1  # bump when the on-disk layout or the training code changes what a recipe produces


def cache_root(cache_dir: str | None = None) -> str:
    """The cache directory: ``cache_dir`` if given, else ``$NTKDYN_CACHE``, else ``$XDG_CACHE_HOME/ntkdyn`` or
    ``~/.cache/ntkdyn``."""
    if cache_dir:
        return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    if os.environ.get("NTKDYN_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["NTKDYN_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "ntkdyn"))


def recipe_hash(recipe: dict) -> str:
    """Short (10 hex digits) hash of a recipe (and of the cache format version)."""
    blob = json.dumps(dict(recipe, _format=_FORMAT), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _dir_name(recipe: dict) -> str:
    return f"default-{recipe.get('task', _tasks.DEFAULT_TASK)}-{recipe.get('family', 'gpt_neox')}-{recipe_hash(recipe)}"


def _complete(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "model.safetensors",
                                                               "sft_config.json", "tokenizer.json"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(root: str, name: str) -> None:
    """Remove ``.tmp-<name>-<pid>-*`` staging directories left by builds whose process is gone."""
    prefix = f".tmp-{name}-"
    for entry in os.listdir(root):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


@contextlib.contextmanager
def _lock(path: str):
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_model_dir(cache_dir: str | None = None, build: bool = True, progress: bool = True, *,
                      rebuild: bool = False, recipe: dict | None = None) -> str:
    """Path of the default model directory, building it first when it is not cached (``build=False``: raise
    FileNotFoundError instead). ``rebuild=True`` trains it again. ``recipe`` overrides :data:`RECIPE` (tests
    use a tiny one); the directory name carries its hash."""
    from . import sft

    recipe = dict(RECIPE if recipe is None else recipe)
    root = cache_root(cache_dir)
    name = _dir_name(recipe)
    path = os.path.join(root, name)
    if _complete(path) and not rebuild:
        return path
    if not build:
        raise FileNotFoundError(f"default model not built: {path} does not exist; call "
                                "ntkdyn.default.default_model_dir() or run `ntkdyn default-model`")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the ntkdyn cache directory {root} ({e}); set NTKDYN_CACHE to a "
                      "writable directory") from None
    with _lock(os.path.join(root, f".lock-{name}")):
        if _complete(path) and not rebuild:  # another process built it while we waited
            return path
        _sweep_stale(root, name)
        args = {k: v for k, v in recipe.items() if k != "task"}
        t0 = time.perf_counter()
        sft.train(recipe.get("task", _tasks.DEFAULT_TASK), path, progress=progress, **args)
        with open(os.path.join(path, "sft_config.json")) as f:
            conf = json.load(f)
        conf["build_seconds"] = round(time.perf_counter() - t0, 1)
        conf["recipe"] = recipe
        conf["recipe_hash"] = recipe_hash(recipe)
        tmp = os.path.join(path, ".sft_config.json.tmp")
        with open(tmp, "w") as f:
            json.dump(conf, f, indent=2)
        os.replace(tmp, os.path.join(path, "sft_config.json"))
    return path


def base_model(cache_dir: str | None = None, build: bool = True, progress: bool = True, *,
               recipe: dict | None = None):
    """The default base model as an LM (``nd.load`` of :func:`default_model_dir`), with its tokenizer."""
    from .models.lm import load

    return load(default_model_dir(cache_dir, build=build, progress=progress, recipe=recipe))


# ----------------------------------------------------------------------------- CLI


def add_arguments(p):
    p.add_argument("--rebuild", action="store_true", help="train the default model again")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: $NTKDYN_CACHE or ~/.cache/ntkdyn)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args) -> int:
    path = default_model_dir(args.cache_dir, rebuild=args.rebuild, progress=not args.no_progress)
    with open(os.path.join(path, "sft_config.json")) as f:
        conf = json.load(f)
    ev = None
    log = os.path.join(path, "sft_log.jsonl")
    if os.path.isfile(log):
        with open(log) as f:
            for line in f:
                ev = json.loads(line).get("eval", ev)
    print(path)
    print(f"family {conf.get('family')}, size {conf.get('size')}, {conf.get('num_params', 0):,} parameters, "
          f"task {conf.get('task')}, build {conf.get('build_seconds', '?')} s")
    if ev:
        print(f"base reward {ev['reward']:.3f} on {ev['n_prompts']} held-out prompts x {ev['samples']} samples "
              f"(temperature 1); distinct answers {ev['distinct']:.1f}/{ev['samples']}; "
              f"malformed {ev['frac_malformed']:.3f}")
    return 0
