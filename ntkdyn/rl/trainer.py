"""The RL trainer: rollouts → rewards → advantages → jit-compiled update, over the stages of a recipe, with the
learning dynamics tracked, JSONL metrics, atomic checkpoints and exact resume.

    from ntkdyn.rl import RLConfig, train
    summary = train(RLConfig(recipe="cf-rl", task="sum", steps=60, head_steps=8, seed=0, out="runs/cf"))

A run directory OUT holds:
  config.json      the config (and what was resolved from it: model dir, stage plan, shapes)
  metrics.jsonl    one JSON line per global step (step 0 = the starting model's evaluation)
  checkpoint/      the last checkpoint: model/ (HF layout), optimizer.npz, state.json (replaced atomically)
  final/           the final model (HF layout: nd.load and transformers.AutoModelForCausalLM open it)
  summary.json     the returned summary (costs per stage, first/last evaluation)

PRNG: every random draw is keyed by (seed, stage id, stage step) (rollouts, stage-1 reference answers, prompt
order) or (seed, global step) (evaluation samples), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import metrics as M
from .. import tasks as _tasks
from ..models.sampling import sample
from ..models.transformer import features
from . import objectives as O
from .recipes import EVAL_ID, RECIPES, Stage, plan

__all__ = ["RLConfig", "ConfigError", "TrainingError", "train", "TIMING_KEYS", "read_metrics", "enable_compile_cache"]

TIMING_KEYS = ("step_time", "tokens_per_s")  # the only metrics.jsonl keys that differ between identical runs
_EVAL_PROMPT_SEED = 0  # the held-out evaluation prompts and the probe set are the same for every run seed


class ConfigError(ValueError):
    """A bad RLConfig value or key (raised before any work)."""


class TrainingError(RuntimeError):
    """The run stopped: a non-finite reward, loss or gradient. The last good checkpoint is kept."""


# ============================================================================= config

_CHOICES = {
    "recipe": RECIPES,
    "optimizer": O.OPTIMIZERS,
    "advantage": O.ADVANTAGE_KINDS,
    "loss_agg": O.LOSS_AGGS,
    "kl_estimator": O.KL_ESTIMATORS,
}


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Everything a run depends on. Validated on construction (ConfigError names the key, the value and what is
    expected); `RLConfig.from_dict` also rejects unknown keys."""

    recipe: str = "rl"  # "rl" | "cf-rl" | "lp-ft" (see ntkdyn.rl.recipes)
    task: str = _tasks.DEFAULT_TASK  # a task of ntkdyn.tasks
    model: str | None = None  # HF model directory; None: the embedded default base model
    out: str | None = None  # run directory (required)
    steps: int = 100  # full-parameter RL steps (stage 2 for cf-rl / lp-ft)
    head_steps: int | None = None  # stage-1 steps (cf-rl, lp-ft); ignored by "rl"
    head_epochs: float | None = None  # or stage-1 epochs over the train prompts (default: 1 epoch)
    group_size: int = 8  # G samples per prompt
    prompts_per_step: int = 8  # P prompts per step (batch = P·G rollouts)
    max_new_tokens: int = 12
    temperature: float = 1.0  # rollout temperature (the policy's log-probs use the same, as TRL)
    lr: float = 3e-4
    head_lr: float | None = None  # stage-1 learning rate (default: lr)
    optimizer: str = "adam"  # "adam" | "adamw" | "sgd"
    weight_decay: float = 0.0  # adamw only
    max_grad_norm: float = 1.0  # global-norm gradient clipping (0: none)
    advantage: str = "grpo"  # "grpo" | "dr_grpo" | "rloo" | "reinforce"
    baseline_decay: float = 0.9  # REINFORCE running-baseline EMA decay
    loss_agg: str = "seq_mean_token_mean"  # or "token_mean"
    beta: float = 0.0  # KL(π‖π_ref) coefficient; π_ref is the starting model
    kl_estimator: str = "k3"  # "k1" | "k3"
    num_iterations: int = 1  # gradient steps per rollout batch (> 1: PPO-style clipped ratio)
    clip_eps: float = 0.2
    train_prompts: int | None = None  # size of the train-prompt pool (None: the whole split, or 4096)
    eval_every: int = 10  # evaluate every k global steps (0: only at step 0 and at the end of each stage)
    eval_prompts: int = 16  # held-out test prompts (the whole test split when it is smaller)
    eval_samples: int = 32  # samples per eval prompt: k of pass@k
    eval_temperature: float = 1.0
    probe_prompts: int = 8  # the fixed probe set (test prompts with a reference answer)
    probe_every: int = 10  # dz_share every k stage steps and at each stage's first step (0: never)
    checkpoint_every: int = 50  # checkpoint every k global steps and at the end (0: only at the end)
    seed: int = 0
    resume: bool = False  # continue the run in `out` from its checkpoint
    overwrite: bool = False  # replace an existing run in `out`

    def __post_init__(self):
        _validate(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RLConfig":
        cls._check_keys(d, source)
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str) -> "RLConfig":
        """From a JSON object of RLConfig keys, or a run's OUT/config.json."""
        return cls.from_dict(cls.read_json(path), source=path)

    @classmethod
    def read_json(cls, path: str) -> dict:
        """The dict of RLConfig keys in a JSON file (a partial one is fine; unknown keys are rejected)."""
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config: {e}") from None
        if isinstance(d, dict) and "config" in d and isinstance(d["config"], dict):  # a run's config.json
            d = d["config"]
        cls._check_keys(d, path)
        return d

    @classmethod
    def _check_keys(cls, d, source: str) -> None:
        """d must be a dict whose keys are all RLConfig fields (a partial one is fine)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object / dict of RLConfig keys; got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {known}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> "RLConfig":
        return dataclasses.replace(self, **kw)


def _bad(key, value, expected):
    return ConfigError(f"RLConfig.{key}={value!r}: expected {expected}")


def _validate(c: RLConfig):
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

    for key, choices in _CHOICES.items():
        v = getattr(c, key)
        if not isinstance(v, str) or v not in choices:
            raise _bad(key, v, f"one of {list(choices)}")
    if not isinstance(c.task, str) or c.task not in _tasks.names():
        raise _bad("task", c.task, f"one of the tasks {_tasks.names()}")
    if c.model is not None and (not isinstance(c.model, (str, os.PathLike)) or not str(c.model)):
        raise _bad("model", c.model, "a Hugging Face model directory (str) or None for the default base model")
    if not isinstance(c.out, (str, os.PathLike)) or not str(c.out):
        raise _bad("out", c.out, "the run directory (a non-empty path)")
    ints = {"steps": 0, "group_size": 1, "prompts_per_step": 1, "max_new_tokens": 1, "num_iterations": 1,
            "eval_every": 0, "eval_prompts": 1, "eval_samples": 1, "probe_prompts": 1, "probe_every": 0,
            "checkpoint_every": 0, "seed": 0}
    for key, lo in ints.items():
        v = getattr(c, key)
        if not is_int(v) or v < lo:
            raise _bad(key, v, f"an integer >= {lo}")
    for key, lo in {"head_steps": 0, "train_prompts": 1}.items():
        v = getattr(c, key)
        if v is not None and (not is_int(v) or v < lo):
            raise _bad(key, v, f"None or an integer >= {lo}")
    if c.head_epochs is not None and (not is_num(c.head_epochs) or c.head_epochs <= 0):
        raise _bad("head_epochs", c.head_epochs, "None or a number > 0")
    if c.head_steps is not None and c.head_epochs is not None:
        raise ConfigError(f"RLConfig: head_steps={c.head_steps!r} and head_epochs={c.head_epochs!r} both set; "
                          "expected at most one of them (the stage-1 budget)")
    positive = ("temperature", "lr", "clip_eps", "eval_temperature")
    for key in positive:
        v = getattr(c, key)
        if not is_num(v) or v <= 0:
            raise _bad(key, v, "a finite number > 0")
    if c.head_lr is not None and (not is_num(c.head_lr) or c.head_lr <= 0):
        raise _bad("head_lr", c.head_lr, "None (= lr) or a finite number > 0")
    for key in ("weight_decay", "max_grad_norm", "beta"):
        v = getattr(c, key)
        if not is_num(v) or v < 0:
            raise _bad(key, v, "a finite number >= 0")
    if not is_num(c.baseline_decay) or not 0 <= c.baseline_decay < 1:
        raise _bad("baseline_decay", c.baseline_decay, "a number in [0, 1)")
    if c.advantage != "reinforce" and c.group_size < 2:
        raise _bad("group_size", c.group_size, f"an integer >= 2 for the group-relative advantage {c.advantage!r} "
                                               "(use advantage='reinforce' for single samples)")
    for key in ("resume", "overwrite"):
        if not isinstance(getattr(c, key), bool):
            raise _bad(key, getattr(c, key), "True or False")
    if c.resume and c.overwrite:
        raise ConfigError("RLConfig: resume=True and overwrite=True contradict each other; expected at most one")


# fields that may differ between a run and its resumption
_RESUMABLE_CHANGES = ("resume", "overwrite", "steps", "out")


# ============================================================================= small helpers


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return _json_safe(np.asarray(x).tolist()) if np.ndim(x) else _json_safe(np.asarray(x).item())
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl (a run directory or the file); an unreadable last line is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _pass_ks(n: int) -> list[int]:
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks


def _left_pad(seqs, T: int, pad_id: int):
    ids = np.full((len(seqs), T), pad_id, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = s
        mask[i, T - len(s):] = 1
    return ids, mask


class _Sharding:
    """Placement of arrays: the batch axis over the mesh's data axis, everything else replicated."""

    def __init__(self, mesh):
        self.mesh = mesh
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec as P

            self.axis = "data" if "data" in mesh.axis_names else mesh.axis_names[0]
            self.size = int(mesh.shape[self.axis])
            self._batch = NamedSharding(mesh, P(self.axis))
            self._repl = NamedSharding(mesh, P())
        else:
            self.size = 1

    def batch(self, x):
        return jnp.asarray(x) if self.mesh is None else jax.device_put(np.asarray(x), self._batch)

    def replicate(self, tree):
        return tree if self.mesh is None else jax.device_put(tree, self._repl)


# ============================================================================= jitted pieces
# Module-level jitted functions with hashable static arguments (the model's graphdef and config, the optimizer
# spec, the loss settings): runs with the same shapes and settings in one process share the compiled programs.


class _LossSpec(NamedTuple):
    temperature: float
    clip_eps: float
    loss_agg: str
    beta: float
    kl_estimator: str


class _OptSpec(NamedTuple):
    name: str
    lr: float
    group: str
    max_grad_norm: float
    weight_decay: float


def _tx(spec: _OptSpec):
    return O.make_optimizer(spec.name, spec.lr, spec.group, max_grad_norm=spec.max_grad_norm or None,
                            weight_decay=spec.weight_decay)


_GRAPHDEFS: dict = {}


def _canonical_graphdef(cfg, graphdef):
    """One graphdef object per model config (graphdefs of separately loaded models do not compare equal, and jit
    caches on the static argument's identity)."""
    return _GRAPHDEFS.setdefault(cfg, graphdef)


@partial(jax.jit, static_argnames=("spec",))
def _opt_init(params, *, spec: _OptSpec):
    return _tx(spec).init(params)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "spec", "ls"))
def _rl_update(params, opt_state, batch, logp_old, on_policy, logp_ref, *, graphdef, cfg, spec: _OptSpec,
               ls: _LossSpec):
    """One gradient step of the clipped policy-gradient loss on a rollout batch, for the parameter group
    spec.group only (the other group's arrays are returned untouched, bit-identical). on_policy (a traced bool,
    so both cases share one compiled program): π_old = stop_gradient(π), ratio exactly 1; else π_old = logp_old."""
    keys = O.trainable_keys(spec.group)

    def loss_fn(train_p, frozen_p):
        p = {**frozen_p, **train_p}
        st = O.completion_logp(graphdef, cfg, p, batch["prompt_ids"], batch["prompt_mask"], batch["completion"],
                               temperature=ls.temperature)
        old = jnp.where(on_policy, jax.lax.stop_gradient(st["logp"]), logp_old)
        loss, aux = O.pg_loss(st["logp"], old, batch["adv"], batch["mask"], clip_eps=ls.clip_eps,
                              loss_agg=ls.loss_agg, logp_ref=logp_ref, beta=ls.beta, kl_estimator=ls.kl_estimator)
        return loss, (aux, st)

    train_p = {k: params[k] for k in keys}
    frozen_p = {k: v for k, v in params.items() if k not in keys}
    (loss, (aux, st)), g = jax.value_and_grad(loss_fn, has_aux=True)(train_p, frozen_p)
    grads = {k: g[k] if k in keys else jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
    updates, opt_state = _tx(spec).update(grads, opt_state, params)
    stepped = optax.apply_updates(params, updates)
    new = {k: stepped[k] if k in keys else v for k, v in params.items()}  # frozen: the very same arrays
    m = batch["mask"]
    out = {"loss": loss, "clip_ratio": aux["clip_ratio"], "entropy": M.masked_mean(st["entropy"], m),
           "max_prob": M.masked_mean(st["max_prob"], m), "logp": M.masked_mean(st["logp_model"], m)}
    if logp_ref is not None:
        out["kl"] = aux["kl"]
    for k in keys:
        out[f"grad_norm/{k}"] = O.global_norm(g[k])
    return new, opt_state, out, st["logp"]


@partial(jax.jit, static_argnames=("graphdef", "cfg", "spec"))
def _lp_update(params, opt_state, ids, mask, *, graphdef, cfg, spec: _OptSpec):
    """The linear probe (LP stage of LP-FT): cross-entropy on reference answers through the head only."""
    from ..models.lm import LM
    from ..sft import sequence_ce_loss

    lm = LM(cfg, params, None, graphdef)
    loss, g_head = jax.value_and_grad(
        lambda head: sequence_ce_loss(lm, {"backbone": params["backbone"], "head": head}, ids, mask))(params["head"])
    grads = {"backbone": jax.tree.map(jnp.zeros_like, params["backbone"]), "head": g_head}
    updates, opt_state = _tx(spec).update(grads, opt_state, params)
    stepped = optax.apply_updates(params, updates)
    new = {"backbone": params["backbone"], "head": stepped["head"]}
    return new, opt_state, {"loss": loss, "grad_norm/head": O.global_norm(g_head)}


@partial(jax.jit, static_argnames=("graphdef", "cfg", "temperature"))
def _ref_logp(params, ids, pmask, completion, *, graphdef, cfg, temperature):
    return O.completion_logp(graphdef, cfg, params, ids, pmask, completion, temperature=temperature,
                             with_model_stats=False)["logp"]


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _confidence(params, ids, pmask, completion, mask, *, graphdef, cfg):
    """Mean entropy, max-probability and sampled-token log-prob of the model at the completion tokens."""
    st = O.completion_logp(graphdef, cfg, params, ids, pmask, completion)
    return {"entropy": M.masked_mean(st["entropy"], mask), "max_prob": M.masked_mean(st["max_prob"], mask),
            "logp": M.masked_mean(st["logp_model"], mask)}


@partial(jax.jit, static_argnames=("kind", "decay"))
def _advantages(r, b, *, kind, decay):
    return O.advantages(r, kind, baseline=b, decay=decay)


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _features(params, ids, *, graphdef, cfg):
    return features(graphdef, cfg, params, ids)[0]


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _probe(params, ids, mask, h0, *, graphdef, cfg):
    h = features(graphdef, cfg, params, ids)[0]
    return {"head_norm": M.head_norm(params["head"]["W"]), "feature_change": M.feature_change(h, h0, mask)}


@jax.jit
def _dz_share(dz_gradient, dz_representation):
    return M.dz_share(dz_gradient, dz_representation)


@partial(jax.jit, static_argnames=("stage_id",))
def _step_key(key, step, *, stage_id):
    return jax.random.fold_in(jax.random.fold_in(key, stage_id), step)


# ============================================================================= the run


class _Run:
    def __init__(self, config: RLConfig, mesh, progress: bool, reward_fn, callback):
        self.c = config
        self.progress = progress
        self.reward_fn = reward_fn
        self.callback = callback
        self.sh = _Sharding(mesh)
        self.out = os.path.abspath(os.fspath(config.out))
        self._prepare()

    # ------------------------------------------------------------------ setup (all checks before any work)
    def _prepare(self):
        from .. import sft
        from ..models.lm import load

        c = self.c
        self.task = _tasks.get(c.task)
        # run directory state
        has_run = os.path.isdir(self.out) and any(
            os.path.exists(os.path.join(self.out, n)) for n in ("metrics.jsonl", "checkpoint", "checkpoint.old",
                                                                 "config.json"))
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"RLConfig.out={c.out!r}: exists and is not a directory")
        if has_run and not (c.resume or c.overwrite):
            raise ConfigError(f"RLConfig.out={c.out!r}: already holds a run; expected resume=True to continue it, "
                              "overwrite=True to replace it, or a fresh directory")
        self.saved = None
        if c.resume and has_run:
            path = os.path.join(self.out, "config.json")
            try:
                with open(path) as f:
                    self.saved = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"{path}: cannot resume, the run's config is unreadable: {e}") from None
            old = self.saved.get("config", {})
            diff = {k: (old.get(k), v) for k, v in c.to_dict().items()
                    if k not in _RESUMABLE_CHANGES and old.get(k) != v and k in old}
            if diff:
                raise ConfigError(f"{path}: cannot resume with a different config; differing keys (saved, given): "
                                  f"{diff}")
        # model
        model_dir = c.model
        if model_dir is None and self.saved is not None:
            model_dir = self.saved.get("model_dir")
        if model_dir is None:
            from ..default import default_model_dir

            model_dir = default_model_dir()
        model_dir = os.path.abspath(os.fspath(model_dir))
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise ConfigError(f"RLConfig.model={c.model!r}: {model_dir} is not a Hugging Face model directory "
                              "(no config.json)")
        self.model_dir = model_dir
        lm = load(model_dir)
        if lm.tokenizer is None:
            tok = _tasks.CharTokenizer()
            if tok.vocab_size != lm.config.vocab_size:
                raise ConfigError(f"RLConfig.model={model_dir}: no tokenizer files, and the model's vocabulary "
                                  f"({lm.config.vocab_size}) is not the task tokenizer's ({tok.vocab_size})")
            lm.tokenizer = tok
        lm.graphdef = _canonical_graphdef(lm.config, lm.graphdef)
        self.lm, self.tok = lm, lm.tokenizer
        self.cfg = lm.config
        # prompts and shapes
        pool = self.task.split_prompts("train")
        if pool is None or c.train_prompts is not None and c.train_prompts < len(pool):
            n = c.train_prompts or 4096
            pool = self.task.prompts("train", n, seed=0) if pool is None else pool[:n]
        self.train_pool = list(pool)
        test = self.task.split_prompts("test")
        if test is not None and len(test) <= c.eval_prompts:
            self.eval_prompts = list(test)
        else:
            self.eval_prompts = self.task.prompts("test", c.eval_prompts, seed=_EVAL_PROMPT_SEED)
        self.stages: list[Stage] = plan(c, len(self.train_pool))
        longest = max(len(p) for p in self.train_pool + self.eval_prompts)
        self.Tp = 1 + longest  # [bos] + prompt: one fixed prompt length, one compilation
        if self.Tp + c.max_new_tokens > self.cfg.max_positions:
            raise ConfigError(f"RLConfig.max_new_tokens={c.max_new_tokens}: prompts of up to {self.Tp} tokens plus "
                              f"{c.max_new_tokens} new tokens exceed the model's max_positions="
                              f"{self.cfg.max_positions}")
        # the LP stage's teacher-forcing length: prompt + answer (<= 8 characters in every task) + EOS
        self.T_lp = self.Tp + max(c.max_new_tokens, 9)
        if any(s.kind == "lp" for s in self.stages) and self.T_lp > self.cfg.max_positions:
            raise ConfigError(f"RLConfig.recipe='lp-ft': reference sequences of {self.T_lp} tokens exceed the "
                              f"model's max_positions={self.cfg.max_positions}")
        self.B = c.prompts_per_step * c.group_size
        self.B_eval = len(self.eval_prompts) * c.eval_samples
        if self.sh.size > 1:
            for what, b in (("prompts_per_step * group_size", self.B), ("eval prompts * eval_samples", self.B_eval)):
                if b % self.sh.size:
                    raise ConfigError(f"RLConfig: {what} = {b} is not divisible by the mesh's "
                                      f"{self.sh.size} devices on axis {self.sh.axis!r}")
        # probe set: test prompts with one correct reference answer each
        probe_prompts = self.eval_prompts[: c.probe_prompts]
        rng = np.random.default_rng([_EVAL_PROMPT_SEED, 7])
        answers = [self.task.sample_answer(p, rng, correct=True) for p in probe_prompts]
        ids, loss_mask = sft.make_examples(self.task, self.tok, probe_prompts, answers)
        if ids.shape[1] > self.cfg.max_positions:
            raise ConfigError(f"probe sequences of {ids.shape[1]} tokens exceed max_positions")
        self.probe_ids = ids
        self.probe_mask = (ids != self.tok.pad_id).astype(np.float32)
        r, t = np.nonzero(loss_mask[:, 1:])  # contexts (row, t) predicting an answer token or EOS
        self.probe_pos = np.stack([r, t], 1).astype(np.int32)
        self.threshold = 1.0 if self.task.binary else 0.9
        self.key = jax.random.key(c.seed)  # all randomness: fold_in(key, stage id / EVAL_ID, step)
        self._perm_cache: dict = {}

    # ------------------------------------------------------------------ the main loop
    def run(self) -> dict:
        c = self.c
        os.makedirs(self.out, exist_ok=True)
        for n in os.listdir(self.out):  # leftovers of a run killed while writing a checkpoint or a file
            if n.startswith(".checkpoint.tmp-") or ".tmp-" in n and n.split(".tmp-")[0] in (
                    "metrics.jsonl", "summary.json", "config.json"):
                p = os.path.join(self.out, n)
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
        if c.overwrite:
            for n in ("metrics.jsonl", "checkpoint", "checkpoint.old", "final", "summary.json", "config.json"):
                p = os.path.join(self.out, n)
                shutil.rmtree(p) if os.path.isdir(p) else (os.remove(p) if os.path.exists(p) else None)
        base = self.sh.replicate(jax.tree.map(jnp.asarray, self.lm.params))
        self.base_params = base
        self._build_fns()
        self.h0 = _features(base, self.probe_ids_dev, **self.gd)
        ckpt = self._find_checkpoint() if c.resume else None
        total = sum(s.steps for s in self.stages)
        # cost per stage (rollout + reward + update time, generated tokens); evaluation and dz probes apart
        self.costs = {s.name: dict(steps=0, time_s=0.0, generated_tokens=0) for s in self.stages}
        self.costs["eval"] = dict(time_s=0.0)
        self.first_eval = None
        metrics_path = os.path.join(self.out, "metrics.jsonl")
        if ckpt is None:
            self._write_config()
            params, opt_state, baseline = base, None, np.float32(np.nan)
            step, stage_idx, stage_step = 0, 0, 0
            with open(metrics_path, "w") as f:
                f.write("")
            rec = {"step": 0, "stage": self.stages[0].name, "stage_step": 0}
            rec.update(self._probe_metrics(params))
            rec.update(self._evaluate(params, 0))
            self.first_eval = {k: v for k, v in rec.items() if k.startswith("eval/")}
            self._log(rec)
        else:
            params, opt_state_leaves, st = ckpt
            step, stage_idx, stage_step = st["step"], st["stage_index"], st["stage_step"]
            baseline = np.float32(np.nan if st["baseline"] is None else st["baseline"])
            self.costs.update(st["costs"])
            self.first_eval = st.get("first_eval")
            self._truncate_metrics(step)
            opt_state = opt_state_leaves  # turned into a pytree once the stage's optimizer exists
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, disable=not self.progress, dynamic_ncols=True,
                   desc=f"{c.recipe} {c.task} seed {c.seed}")
        last = None
        try:
            for si, stage in enumerate(self.stages):
                if si < stage_idx or (si == stage_idx and stage_step >= stage.steps):
                    continue
                spec = self._opt_spec(stage)
                if si == stage_idx and stage_step > 0 and opt_state is not None:
                    opt_state = self._restore_opt(spec, params, opt_state)
                else:
                    opt_state, stage_step = self.sh.replicate(_opt_init(params, spec=spec)), 0
                if stage.kind == "rl":
                    update = partial(_rl_update, spec=spec, ls=self.loss_spec, **self.gd)
                else:
                    update = partial(_lp_update, spec=spec, **self.gd)
                while stage_step < stage.steps:
                    stage_step += 1
                    step += 1
                    rec = {"step": step, "stage": stage.name, "stage_step": stage_step}
                    t0 = time.perf_counter()
                    before = params
                    if stage.kind == "rl":
                        params, opt_state, baseline, m = self._rl_step(stage, stage_step, step, update, params,
                                                                       opt_state, baseline)
                    else:
                        params, opt_state, m = self._lp_step(stage, stage_step, step, update, params, opt_state)
                    rec.update(m)
                    rec.update(self._probe_metrics(params))
                    dt = time.perf_counter() - t0
                    cost = self.costs[stage.name]
                    cost["steps"] += 1
                    cost["time_s"] += dt
                    ntok = int(rec.pop("_generated_tokens", 0))
                    cost["generated_tokens"] += ntok
                    if stage.kind == "rl":
                        rec["generated_tokens"] = sum(v.get("generated_tokens", 0) for v in self.costs.values())
                    if c.probe_every and (stage_step == 1 or stage_step % c.probe_every == 0):
                        rec.update(self._dz_share(before, params))
                    end_of_stage = stage_step == stage.steps
                    if (c.eval_every and step % c.eval_every == 0) or end_of_stage:
                        t1 = time.perf_counter()
                        rec.update(self._evaluate(params, step))
                        self.costs["eval"]["time_s"] += time.perf_counter() - t1
                    rec["step_time"] = dt
                    if stage.kind == "rl":
                        rec["tokens_per_s"] = ntok / dt if dt > 0 else 0.0
                    self._log(rec)
                    last = rec
                    final_step = step == total
                    if (c.checkpoint_every and step % c.checkpoint_every == 0) or final_step:
                        self._save_checkpoint(params, opt_state, dict(step=step, stage_index=si,
                                                                      stage_step=stage_step, stage=stage.name,
                                                                      baseline=baseline))
                    bar.update(1)
                    post = {"stage": stage.name}
                    if "reward" in rec:
                        post["reward"] = f"{rec['reward']:.3f}"
                    if "eval/reward" in rec:
                        post["eval"] = f"{rec['eval/reward']:.3f}"
                    bar.set_postfix(post)
                    if self.callback is not None:
                        self.callback(rec)
                opt_state = None
        finally:
            bar.close()
        if total == 0 and not os.path.isdir(os.path.join(self.out, "checkpoint")):
            self._save_checkpoint(params, None, dict(step=0, stage_index=0, stage_step=0, stage=self.stages[0].name,
                                                     baseline=baseline))
        final_dir = self.lm.save(os.path.join(self.out, "final"), params=jax.device_get(params))
        records = read_metrics(os.path.join(self.out, "metrics.jsonl"))
        evals = [r for r in records if "eval/reward" in r]
        summary = dict(
            out=self.out, recipe=c.recipe, task=c.task, seed=c.seed, model_dir=self.model_dir,
            steps=total, stages=[dataclasses.asdict(s) for s in self.stages],
            cost=self.costs,
            stage1_steps=sum(s.steps for s in self.stages if s.name == "stage1"),
            first_eval={k: v for k, v in evals[0].items() if k.startswith("eval/")} if evals else None,
            final_eval={k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else None,
            final_metrics={k: v for k, v in (last or {}).items() if not k.startswith("eval/")},
            final_model=final_dir,
        )
        self._atomic_json(os.path.join(self.out, "summary.json"), summary)
        return summary

    # ------------------------------------------------------------------ jitted functions of this run
    def _build_fns(self):
        c, cfg = self.c, self.cfg
        self.gd = dict(graphdef=self.lm.graphdef, cfg=cfg)
        self.eos = int(cfg.eos_token_id if cfg.eos_token_id is not None else self.tok.eos_id)
        self.pad = int(cfg.pad_token_id or 0)
        self.loss_spec = _LossSpec(float(c.temperature), float(c.clip_eps), c.loss_agg, float(c.beta),
                                   c.kl_estimator)
        self.probe_ids_dev = self.sh.replicate(jnp.asarray(self.probe_ids))
        self.probe_mask_dev = self.sh.replicate(jnp.asarray(self.probe_mask))

    def _rollout(self, params, ids, mask, key, temperature):
        return sample(self.lm.graphdef, self.cfg, params, ids, mask, key, max_new_tokens=int(self.c.max_new_tokens),
                      temperature=float(temperature), top_k=None, top_p=1.0, stop_token=self.eos, pad_id=self.pad,
                      greedy=False)

    def _opt_spec(self, stage: Stage) -> _OptSpec:
        c = self.c
        return _OptSpec(c.optimizer, float(stage.lr), stage.group, float(c.max_grad_norm), float(c.weight_decay))

    # ------------------------------------------------------------------ one step of each kind
    def _stage_prompts(self, stage: Stage, stage_step: int) -> list[str]:
        """P train prompts for this stage step: epochs over the pool, each a permutation keyed by (seed, stage,
        epoch)."""
        P, N = self.c.prompts_per_step, len(self.train_pool)
        out = []
        for i in range((stage_step - 1) * P, stage_step * P):
            epoch, pos = divmod(i, N)
            k = (stage.stage_id, epoch)
            if k not in self._perm_cache:
                self._perm_cache[k] = np.random.default_rng([self.c.seed, stage.stage_id, epoch]).permutation(N)
            out.append(self.train_pool[self._perm_cache[k][pos]])
        return out

    def _rewards(self, prompts, tokens, mask, where: str):
        from ..sft import decode_completions

        texts, finished = decode_completions(self.tok, tokens, mask, self.tok.eos_id)
        fn = self.reward_fn or self.task.reward
        rewards = np.asarray([float(fn(p, t)) if f else 0.0 for p, t, f in zip(prompts, texts, finished)],
                             np.float64)
        bad = np.flatnonzero(~np.isfinite(rewards))
        if bad.size:
            i = int(bad[0])
            raise TrainingError(f"{where}: non-finite reward {rewards[i]} for prompt {prompts[i]!r} and completion "
                                f"{texts[i]!r}; the run stopped and {self._ckpt_note()}")
        return texts, finished, rewards

    def _rl_step(self, stage, stage_step, step, update, params, opt_state, baseline):
        c, G, P = self.c, self.c.group_size, self.c.prompts_per_step
        prompts = self._stage_prompts(stage, stage_step)
        flat = [p for p in prompts for _ in range(G)]
        ids, pmask = _left_pad([[self.tok.bos_id] + self.tok.encode(p) for p in flat], self.Tp, self.tok.pad_id)
        ids, pmask = self.sh.batch(ids), self.sh.batch(pmask)
        key = self.sh.replicate(_step_key(self.key, stage_step, stage_id=stage.stage_id))
        gen = self._rollout(params, ids, pmask, key, c.temperature)
        tokens, mask = jax.device_get((gen.tokens, gen.mask))
        where = f"step {step} ({stage.name} step {stage_step})"
        _, finished, rewards = self._rewards(flat, tokens, mask, where)
        r_PxG = rewards.reshape(P, G)
        adv, new_baseline = _advantages(jnp.asarray(r_PxG, jnp.float32), jnp.float32(baseline), kind=c.advantage,
                                        decay=float(c.baseline_decay))
        batch = {"prompt_ids": ids, "prompt_mask": pmask, "completion": gen.tokens, "mask": gen.mask,
                 "adv": adv.reshape(-1)}
        logp_ref = (_ref_logp(self.base_params, ids, pmask, gen.tokens, temperature=float(c.temperature), **self.gd)
                    if c.beta > 0 else None)
        logp_old, ms = jnp.zeros(gen.tokens.shape, jnp.float32), []
        for it in range(c.num_iterations):  # iteration 0 is on-policy; later ones reuse the batch (PPO ratio)
            params, opt_state, m, logp = update(params, opt_state, batch, logp_old, jnp.asarray(it == 0), logp_ref)
            if it == 0:
                logp_old = logp
            ms.append(m)
        ms = jax.device_get(ms)
        first = ms[0]
        rec = {}
        for k in ("loss", "clip_ratio", "kl") + tuple(k for k in first if k.startswith("grad_norm/")):
            if k in first:
                vals = np.asarray([m[k] for m in ms], np.float64)
                if not np.all(np.isfinite(vals)):
                    raise TrainingError(f"{where}: non-finite {k} {vals.tolist()}; the run stopped and "
                                        f"{self._ckpt_note()}")
                rec[k] = float(vals.mean())
        zero_std = np.all(r_PxG == r_PxG[:, :1], axis=1)
        out = {"reward": float(rewards.mean()),
               "reward_std": float(rewards.std(ddof=1)) if rewards.size > 1 else 0.0,  # as TRL: batch std
               "frac_reward_zero_std": float(zero_std.mean()),
               "completions/mean_length": float(mask.sum(1).mean()),
               "completions/clipped_ratio": float(1.0 - finished.mean()),
               "entropy": float(first["entropy"]), "max_prob": float(first["max_prob"]),
               "logp": float(first["logp"])}
        out.update(rec)
        if c.advantage == "reinforce":
            out["baseline"] = float(new_baseline)
        out["_generated_tokens"] = int(mask.sum())
        return params, opt_state, np.float32(new_baseline), out

    def _lp_step(self, stage, stage_step, step, update, params, opt_state):
        from ..sft import make_examples

        c = self.c
        prompts = self._stage_prompts(stage, stage_step)
        rng = np.random.default_rng([c.seed, stage.stage_id, stage_step])
        flat = [p for p in prompts for _ in range(c.group_size)]
        answers = [self.task.sample_answer(p, rng, correct=True) for p in flat]
        ids, mask = make_examples(self.task, self.tok, flat, answers, length=self.T_lp)
        params, opt_state, m = update(params, opt_state, self.sh.batch(ids), self.sh.batch(mask))
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        for k, v in m.items():
            if not math.isfinite(v):
                raise TrainingError(f"step {step} ({stage.name} step {stage_step}): non-finite {k} {v}; the run "
                                    f"stopped and {self._ckpt_note()}")
        return params, opt_state, m

    # ------------------------------------------------------------------ tracked quantities
    def _probe_metrics(self, params) -> dict:
        out = _probe(params, self.probe_ids_dev, self.probe_mask_dev, self.h0, **self.gd)
        return {k: float(v) for k, v in jax.device_get(out).items()}

    def _dz_share(self, before, after) -> dict:
        from ..dynamics import split_update

        d = split_update(self.lm, before, after, self.probe_ids, self.probe_pos)
        s = jax.device_get(_dz_share(d["dz_gradient"], d["dz_representation"]))
        return {"dz_share/gradient": float(s["gradient"]), "dz_share/representation": float(s["representation"])}

    def _evaluate(self, params, step: int) -> dict:
        c, k = self.c, self.c.eval_samples
        flat = [p for p in self.eval_prompts for _ in range(k)]
        ids, pmask = _left_pad([[self.tok.bos_id] + self.tok.encode(p) for p in flat], self.Tp, self.tok.pad_id)
        ids, pmask = self.sh.batch(ids), self.sh.batch(pmask)
        key = self.sh.replicate(_step_key(self.key, step, stage_id=EVAL_ID))
        gen = self._rollout(params, ids, pmask, key, c.eval_temperature)
        conf = jax.device_get(_confidence(params, ids, pmask, gen.tokens, gen.mask, **self.gd))
        tokens, mask = jax.device_get((gen.tokens, gen.mask))
        texts, _, rewards = self._rewards(flat, tokens, mask, f"evaluation at step {step}")
        E = len(self.eval_prompts)
        correct = (rewards >= self.threshold).reshape(E, k)
        curve = M.pass_at_k_curve(correct, _pass_ks(k))
        per = [slice(i * k, (i + 1) * k) for i in range(E)]
        return {
            "eval/reward": float(rewards.mean()),
            "eval/pass@1": float(curve[0]),
            "eval/pass@k": float(curve[-1]),  # k = eval_samples
            f"eval/pass@{k}": float(curve[-1]),
            "eval/pass_at_k_curve": [float(x) for x in curve],
            "eval/unique_answers": float(np.mean([M.unique_answers(texts[s]) for s in per])),
            "eval/unique_correct": float(np.mean([M.unique_correct(texts[s], rewards[s].tolist(), self.threshold)
                                                  for s in per])),
            "eval/distinct_2": float(np.mean([M.distinct_n(texts[s], 2) for s in per])),
            "eval/entropy": float(conf["entropy"]), "eval/max_prob": float(conf["max_prob"]),
            "eval/logp": float(conf["logp"]),
        }

    # ------------------------------------------------------------------ files
    def _atomic_json(self, path, obj):
        tmp = path + f".tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(_json_safe(obj), f, indent=2)
        os.replace(tmp, path)

    def _write_config(self):
        self._atomic_json(os.path.join(self.out, "config.json"), dict(
            config=self.c.to_dict(), model_dir=self.model_dir,
            stages=[dataclasses.asdict(s) for s in self.stages], prompt_len=self.Tp, batch=self.B,
            eval_batch=self.B_eval, n_train_prompts=len(self.train_pool), eval_prompts=self.eval_prompts,
            pass_at_k=_pass_ks(self.c.eval_samples), model_config=self.cfg.to_hf(),
            num_params=self.lm.num_params, mesh_devices=self.sh.size, jax_version=jax.__version__))

    def _log(self, rec):
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(_json_safe(rec)) + "\n")

    def _truncate_metrics(self, step):
        path = os.path.join(self.out, "metrics.jsonl")
        keep = []
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if rec.get("step", 1 << 60) <= step:
                        keep.append(line if line.endswith("\n") else line + "\n")
        tmp = path + f".tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)

    def _ckpt_note(self):
        st = os.path.join(self.out, "checkpoint", "state.json")
        if os.path.exists(st):
            with open(st) as f:
                s = json.load(f)["step"]
            return f"the last good checkpoint (step {s}) is kept in {os.path.dirname(st)}"
        return "no checkpoint had been written yet"

    def _save_checkpoint(self, params, opt_state, state):
        ck = os.path.join(self.out, "checkpoint")
        old = os.path.join(self.out, "checkpoint.old")
        tmp = os.path.join(self.out, f".checkpoint.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.lm.save(os.path.join(tmp, "model"), params=jax.device_get(params))
        leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(opt_state))] if opt_state is not None else []
        with open(os.path.join(tmp, "optimizer.npz"), "wb") as f:
            np.savez(f, **{f"leaf_{i:05d}": x for i, x in enumerate(leaves)})
        b = float(state["baseline"])
        state = dict(state, baseline=None if math.isnan(b) else b, costs=self.costs, first_eval=self.first_eval,
                     n_opt_leaves=len(leaves))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(_json_safe(state), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(ck):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(ck, old)
        os.rename(tmp, ck)  # the new checkpoint appears whole
        shutil.rmtree(old, ignore_errors=True)

    def _find_checkpoint(self):
        from ..models.lm import load

        ck = os.path.join(self.out, "checkpoint")
        if not os.path.isdir(ck) and os.path.isdir(os.path.join(self.out, "checkpoint.old")):
            ck = os.path.join(self.out, "checkpoint.old")  # killed between the two renames
        if not os.path.isfile(os.path.join(ck, "state.json")):
            if os.path.exists(os.path.join(self.out, "metrics.jsonl")):
                # killed before the first checkpoint: start over
                return None
            return None
        with open(os.path.join(ck, "state.json")) as f:
            st = json.load(f)
        params = self.sh.replicate(load(os.path.join(ck, "model"), tokenizer=False).params)
        with np.load(os.path.join(ck, "optimizer.npz")) as z:
            leaves = [z[f"leaf_{i:05d}"] for i in range(st["n_opt_leaves"])]
        return params, leaves, st

    def _restore_opt(self, spec, params, leaves):
        template = jax.eval_shape(partial(_opt_init, spec=spec), params)
        t_leaves, treedef = jax.tree.flatten(template)
        if len(t_leaves) != len(leaves) or any(tuple(a.shape) != np.shape(b) for a, b in zip(t_leaves, leaves)):
            raise TrainingError(f"{self.out}/checkpoint/optimizer.npz does not match the optimizer of this stage "
                                f"({len(leaves)} arrays vs {len(t_leaves)} expected)")
        return self.sh.replicate(jax.tree.unflatten(treedef, [jnp.asarray(b, a.dtype) for a, b in
                                                              zip(t_leaves, leaves)]))


def enable_compile_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (compiled programs are reused by later processes: a run's
    first steps no longer wait for XLA) in `path`, default `<ntkdyn cache>/xla` (see ntkdyn.default.cache_root).
    A cache directory already configured (jax_compilation_cache_dir / JAX_COMPILATION_CACHE_DIR) is kept;
    NTKDYN_NO_COMPILE_CACHE=1 disables. Returns the directory in use, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if os.environ.get("NTKDYN_NO_COMPILE_CACHE"):
        return None
    try:
        from ..default import cache_root

        path = path or os.path.join(cache_root(), "xla")
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def train(config: RLConfig | dict, *, mesh=None, progress: bool = True,
          reward_fn: Callable[[str, str], float] | None = None,
          callback: Callable[[dict], Any] | None = None, compile_cache: bool = True) -> dict:
    """Run `config.recipe` and return the summary (also written to OUT/summary.json).

    config: an RLConfig (or a dict of its keys; unknown keys are rejected). mesh: an optional
    jax.sharding.Mesh; the rollout and update batch axis is sharded over its "data" axis, params replicated.
    progress: a tqdm bar on the terminal. reward_fn(prompt, completion_text) -> float replaces the task's reward.
    callback(record) is called after each step's metrics line (and checkpoint) is written; an exception in it
    stops the run there (as a kill would). compile_cache: turn on JAX's persistent compilation cache
    (`enable_compile_cache`) so that later runs skip XLA compilation. Raises ConfigError before any work on bad
    input, TrainingError on a non-finite reward / loss / gradient (the last good checkpoint is kept)."""
    if isinstance(config, dict):
        config = RLConfig.from_dict(config)
    if not isinstance(config, RLConfig):
        raise ConfigError(f"train: expected an RLConfig or a dict; got {type(config).__name__}")
    run = _Run(config, mesh, progress, reward_fn, callback)  # validates everything before any work
    if compile_cache:
        enable_compile_cache()
    return run.run()
