"""The embedded default base models: small Pythia-style (gpt_neox) models trained by :func:`ntkdyn.sft.train` with
fixed recipes, one per task in :data:`RECIPES`: ``tasks.DEFAULT_TASK`` ("sum", many answers per prompt) with
:data:`RECIPE`, and "plus" (a single answer per prompt, where diversity shows in pass@k) with the same recipe.

Their weights ship inside the package (``ntkdyn/default_model/`` for "sum", ``ntkdyn/default_model_<task>/`` for
the others, about 3 MB each): every machine starts from the bit-identical base, and loading one needs no training
and no cache. ``SHIPPED.json`` there records the weights' sha256, the recipe (and its hash) and the base reward
measured when it was built. ``task=`` picks the shipped model of a task; a character task without one of its own
(``multiple``, ``word``) gets the default ("sum") model, as before.

``rebuild=True`` (``ntkdyn default-model --rebuild``) trains the recipe again into the cache, ``$NTKDYN_CACHE`` when
set, else ``~/.cache/ntkdyn`` (``$XDG_CACHE_HOME/ntkdyn`` when that is set), in
``<cache>/default-<task>-<family>-<hash>``; the CLI then compares the rebuilt model with the shipped one. A
``recipe`` other than :data:`RECIPE` (tests use a tiny one) is always built into the cache. Building is atomic:
training runs in a hidden ``.tmp-*`` sibling that is renamed into place at the end (a killed build leaves no model
directory, and its stale ``.tmp-*`` is swept by the next build: ``ntkdyn.io.sweep``), and a lock file serialises
concurrent builders (``ntkdyn.io.entry_lock``).

    import ntkdyn.default as default
    path = default.default_model_dir()     # the shipped directory
    lm = default.base_model()              # nd.load(path), with its tokenizer
    lm = default.base_model(task="plus")   # the shipped base model of the single-answer task
"""
from __future__ import annotations

import hashlib
import json
import os
import time

from . import tasks as _tasks
from .cache import cache_root
from .evaluation import last_eval, with_current_names
from .io import entry_lock, read_json, write_json

__all__ = ["RECIPE", "RECIPES", "SHIPPED_DIR", "SHIPPED_DIRS", "shipped_task", "cache_root", "recipe_hash",
           "shipped_info", "default_model_dir", "base_model", "add_arguments", "run_cli"]

# The fixed recipe of the default model (arguments of ntkdyn.sft.train). Changing it changes the cache directory.
RECIPE = dict(task=_tasks.DEFAULT_TASK, family="gpt_neox", size="default", steps=2500, batch_size=32, lr=2e-3,
              seed=0, correct_frac=0.6, clean_frac=0.6, warmup=100, weight_decay=0.01, eval_prompts=64,
              eval_samples=32)

_FORMAT = 1  # bump when the on-disk layout or the training code changes what a recipe produces

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The shipped default model (config.json, model.safetensors, tokenizer files, sft_config.json, SHIPPED.json).
SHIPPED_DIR = os.path.join(_HERE, "default_model")

#: The recipe of each shipped base model, by task (the default task's is RECIPE).
RECIPES = {RECIPE["task"]: RECIPE, "plus": dict(RECIPE, task="plus")}
#: The directory of each shipped base model, by task.
SHIPPED_DIRS = {RECIPE["task"]: SHIPPED_DIR, "plus": os.path.join(_HERE, "default_model_plus")}


def recipe_hash(recipe: dict) -> str:
    """Short (10 hex digits) hash of a recipe (and of the cache format version)."""
    blob = json.dumps(dict(recipe, _format=_FORMAT), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _dir_name(recipe: dict) -> str:
    return f"default-{recipe.get('task', _tasks.DEFAULT_TASK)}-{recipe.get('family', 'gpt_neox')}-{recipe_hash(recipe)}"


def _complete(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "model.safetensors",
                                                               "sft_config.json", "tokenizer.json"))


def shipped_task(task: str | None = None) -> str:
    """The task whose shipped base model serves ``task``: ``task`` itself when a model ships for it, else the
    default task (every other task, a dataset path included, starts from the "sum" model, as before)."""
    return task if isinstance(task, str) and task in RECIPES else RECIPE["task"]


def shipped_info(task: str | None = None) -> dict:
    """SHIPPED.json of the shipped base model of ``task`` (default: the default model): sha256 of
    model.safetensors, recipe, recipe hash, base reward."""
    path = os.path.join(SHIPPED_DIRS[shipped_task(task)], "SHIPPED.json")
    info = read_json(path, what="record of the shipped default model")
    return dict(info, base_eval=with_current_names(info.get("base_eval")))


def _shipped_of(recipe: dict) -> str | None:
    """The task of the shipped model built by ``recipe`` (None when no shipped model is)."""
    h = recipe_hash(dict(recipe))
    return next((t for t, r in RECIPES.items() if recipe_hash(r) == h), None)


def default_model_dir(cache_dir: str | None = None, build: bool = True, progress: bool = True, *,
                      rebuild: bool = False, recipe: dict | None = None, task: str | None = None) -> str:
    """Path of a default model directory: the shipped one (:data:`SHIPPED_DIRS`) for a shipped recipe, by default
    the one serving ``task`` (:func:`shipped_task`; :data:`SHIPPED_DIR` for ``task=None``). ``rebuild=True`` trains
    that recipe (or ``recipe``) again into the cache; any other ``recipe`` is built into the cache on first use
    (``build=False``: raise FileNotFoundError instead). The directory name in the cache carries the recipe's
    hash."""
    if recipe is None:
        recipe = RECIPES[shipped_task(task)]
    elif task is not None and recipe.get("task", _tasks.DEFAULT_TASK) != task:
        raise ValueError(f"default_model_dir: recipe task {recipe.get('task')!r} differs from task={task!r}; "
                         "expected one of them, or the same task")
    shipped = _shipped_of(recipe)
    if shipped is not None and not rebuild:
        path = SHIPPED_DIRS[shipped]
        if not _complete(path):
            raise FileNotFoundError(f"the shipped default model is incomplete: {path} lacks one of config.json, "
                                    "model.safetensors, sft_config.json, tokenizer.json (a broken install?); "
                                    f"reinstall ntkdyn or run `ntkdyn default-model --task {shipped} --rebuild`")
        return path
    return _cached_build(dict(recipe), cache_dir, build, progress, rebuild)


def _cached_build(recipe: dict, cache_dir, build: bool, progress: bool, rebuild: bool) -> str:
    from . import sft

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
    with entry_lock(path):
        if _complete(path) and not rebuild:  # another process built it while we waited
            return path
        args = {k: v for k, v in recipe.items() if k != "task"}
        t0 = time.perf_counter()
        sft.train(recipe.get("task", _tasks.DEFAULT_TASK), path, progress=progress, **args)
        conf = read_json(os.path.join(path, "sft_config.json"), what="SFT config")
        conf.update(build_seconds=round(time.perf_counter() - t0, 1), recipe=recipe, recipe_hash=recipe_hash(recipe))
        write_json(os.path.join(path, "sft_config.json"), conf)
    return path


def base_model(cache_dir: str | None = None, build: bool = True, progress: bool = True, *,
               recipe: dict | None = None, task: str | None = None):
    """The default base model (of ``task``) as an LM (``nd.load`` of :func:`default_model_dir`), with its
    tokenizer."""
    from .models.lm import load

    return load(default_model_dir(cache_dir, build=build, progress=progress, recipe=recipe, task=task))


# ----------------------------------------------------------------------------- CLI


def add_arguments(p):
    p.add_argument("--task", default=RECIPE["task"], choices=list(RECIPES),
                   help="the task whose shipped base model to show or rebuild")
    p.add_argument("--rebuild", action="store_true", help="train the recipe again into the cache and compare the "
                   "result with the shipped model")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: $NTKDYN_CACHE or ~/.cache/ntkdyn)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _describe(path: str) -> None:
    conf = read_json(os.path.join(path, "sft_config.json"), what="SFT config")
    print(path)
    print(f"family {conf.get('family')}, size {conf.get('size')}, {conf.get('num_params', 0):,} parameters, "
          f"task {conf.get('task')}, recipe {conf.get('recipe_hash', recipe_hash(RECIPE))}")
    ev = last_eval(path)
    if ev:
        print(f"base reward {ev['reward']:.3f} on {ev['n_prompts']} held-out prompts x {ev['samples']} samples "
              f"(temperature 1); distinct answers {ev['unique_answers']:.1f}/{ev['samples']}; "
              f"malformed {ev['frac_malformed']:.3f}")
    print(f"model.safetensors sha256 {_sha256(os.path.join(path, 'model.safetensors'))}")


def _compare_with_shipped(path: str, task: str) -> None:
    """How a rebuilt model differs from the shipped one of ``task``: identical bytes, or the largest weight
    difference and the two base rewards."""
    import numpy as np
    from safetensors.numpy import load_file

    ship = shipped_info(task)
    sha = _sha256(os.path.join(path, "model.safetensors"))
    if sha == ship["sha256"]:
        print("the rebuilt weights are bit-identical to the shipped model")
        return
    a = load_file(os.path.join(path, "model.safetensors"))
    b = load_file(os.path.join(SHIPPED_DIRS[task], "model.safetensors"))
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in b)
    ev = last_eval(path) or {}
    print(f"the rebuilt weights differ from the shipped model (max |difference| {diff:.3g}; training on another "
          f"CPU or JAX version lands elsewhere): base reward {ev.get('reward', float('nan')):.3f} rebuilt vs "
          f"{ship['base_reward']:.3f} shipped")


def run_cli(args) -> int:
    path = default_model_dir(args.cache_dir, rebuild=args.rebuild, progress=not args.no_progress, task=args.task)
    _describe(path)
    if args.rebuild:
        _compare_with_shipped(path, args.task)
    return 0
