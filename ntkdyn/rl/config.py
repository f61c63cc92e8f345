"""The RL run's configuration: RLConfig (every key a run depends on, validated on construction), its errors, and
reading a config from JSON (a partial file of RLConfig keys, or a run's OUT/config.json).

    cfg = RLConfig(recipe="cf-rl", task="sum", steps=60, head_steps=8, seed=0, out="runs/cf")
    cfg = RLConfig.from_json("runs/cf/config.json").replace(out="runs/cf2")
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from .. import tasks as _tasks
from ..io import is_finite_number, read_json
from ..models.quantize import WEIGHT_TYPES
from ..models.tokenizer import CHAT_CHOICES
from ..models.transformer import COMPUTE_DTYPES
from ..optim import OPTIMIZERS
from ..options import choices_of, option
from . import objectives as O
from .recipes import RECIPES
from .sharding import parse_mesh

__all__ = ["RLConfig", "ConfigError", "TrainingError", "RESUMABLE_CHANGES"]


class ConfigError(ValueError):
    """A bad RLConfig value or key (raised before any work)."""


class TrainingError(RuntimeError):
    """The run stopped: a non-finite reward, loss or gradient. The last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Everything a run depends on. Validated on construction (ConfigError names the key, the value and what is
    expected); `RLConfig.from_dict` also rejects unknown keys. Each field carries its help text (options.option):
    the `ntkdyn rl` command line is generated from them."""

    recipe: str = option("rl", "rl | cf-rl | lp-ft (ntkdyn.rl.recipes)", choices=RECIPES)
    task: str = option(_tasks.DEFAULT_TASK, "a built-in task (sum, multiple, word, plus; add, mul, two-sum, "
                       "list-multiples) or a dataset path (ntkdyn.tasks.resolve)")
    eval_dataset: str | None = option(None, "held-out prompts of a dataset task (JSONL, CSV, Parquet, saved dir); "
                                      "None: eval_fraction of its rows")
    eval_fraction: float = option(0.1, "share of a dataset's rows held out (seeded by seed) when no eval_dataset")
    rewards: list | None = option(None, "a reward function in TRL's signature (repeatable): package.module:function, "
                                  "path/file.py:function, a task name or a reward-model directory; default: the "
                                  "task's own", flag="--reward", type=str, append=True, metavar="SPEC")
    reward_weights: list | None = option(None, "one weight per reward: the --reward functions in order, then the "
                                         "--reward-model ones (default 1.0 each)", type=float, nargs="+",
                                         metavar="W")
    model: str | None = option(None, "a Hugging Face model directory, a .gguf file or a known name such as "
                               "smollm2-135m-instruct (default: the embedded default base model)")
    out: str | None = option(None, "run directory (metrics.jsonl, checkpoint/, final/, summary.json); required")
    steps: int = option(100, "full-parameter RL steps (stage-1 steps come before them; 0: stage 1 alone)")
    head_steps: int | None = option(None, "stage-1 steps of cf-rl / lp-ft")
    head_epochs: float | None = option(None, "stage-1 epochs over the train prompts (default: 1 epoch)")
    group_size: int = option(8, "G samples per prompt")
    prompts_per_step: int = option(8, "prompts per step (batch = prompts x G)")
    max_new_tokens: int = option(12, "tokens sampled per completion at most")
    temperature: float = option(1.0, "rollout temperature (the policy's log-probs use the same, as TRL)")
    lr: float = option(3e-4, "learning rate of the RL stage")
    head_lr: float | None = option(None, "stage-1 learning rate (default: lr)")
    optimizer: str = option("adam", "adam | adamw | sgd", choices=OPTIMIZERS)
    weight_decay: float = option(0.0, "adamw only")
    max_grad_norm: float = option(1.0, "global-norm gradient clipping (0: none)")
    advantage: str = option("grpo", "grpo | dr_grpo | rloo | reinforce", choices=O.ADVANTAGE_KINDS)
    baseline_decay: float = option(0.9, "REINFORCE running-baseline EMA decay")
    loss_agg: str = option("seq_mean_token_mean", "seq_mean_token_mean | token_mean", choices=O.LOSS_AGGS)
    beta: float = option(0.0, "KL(π‖π_ref) coefficient; π_ref is the starting model")
    kl_estimator: str = option("k3", "k1 | k3", choices=O.KL_ESTIMATORS)
    num_iterations: int = option(1, "gradient steps per rollout batch (> 1: PPO-style clipped ratio)")
    clip_eps: float = option(0.2, "PPO clipping range")
    train_prompts: int | None = option(None, "size of the train-prompt pool (None: the whole split, or 4096)")
    eval_every: int = option(10, "evaluate every k global steps (0: only at step 0 and at the end of each stage)")
    eval_prompts: int = option(16, "held-out test prompts (the whole test split when it is smaller)")
    eval_samples: int = option(32, "samples per eval prompt: k of pass@k")
    eval_temperature: float = option(1.0, "evaluation sampling temperature")
    eval_lanes: int = option(1, "seeds of a batched run (train_batch) evaluated at once, the others after them "
                             "inside the same program: the evaluation's transient memory is that of this many "
                             "lanes (0: every lane at once); the numbers are the same to float rounding")
    probe_prompts: int = option(8, "the fixed probe set (test prompts with a reference answer)")
    probe_every: int = option(10, "dz_share every k stage steps and at each stage's first step (0: never)")
    ntk_every: int = option(0, "eNTK drift (ntk/* metrics) every k global steps, at step 0 and the last (0: never)")
    ntk_contexts: int = option(8, "probe contexts of the drift kernels (and of claim 6's trace)")
    ntk_method: str = option("exact", "the drift's trace kernels: exact (decompose output='trace') | hutchinson",
                             choices=("exact", "hutchinson"))
    ntk_probes: int = option(64, "Rademacher probes per drift kernel when ntk_method is hutchinson")
    claim6: bool = option(False, "claim 6's measures (claim6/*) at the first step of the stage 'rl' "
                          "(rl/trackers/claim6.py)")
    claim6_rollouts: int = option(0, "rollouts of that step's batch measured (0: all; else a fixed random subset)")
    remat: bool = option(False, "rematerialise each layer in the update's backward pass (jax.checkpoint): "
                         "activation memory of one layer instead of all, for about one more forward per step")
    logit_chunk: int = option(512, "completion tokens per chunk through the head in the update and the "
                              "evaluation: their (chunk, vocab) logits are recomputed in the backward pass, so the "
                              "(tokens, vocab) float32 logits never exist at once (0: all at once)")
    micro_batches: int = option(1, "the update's rollouts in this many micro-batches of whole groups, one after "
                                "the other, their gradients summed into the one step (TRL's "
                                "gradient_accumulation_steps): the activations of 1/k of the batch alive at once; "
                                "the same step up to float rounding; must divide prompts_per_step")
    pack: bool = option(False, "the update's completions packed end to end into fewer rows (rl/packing.py), so "
                        "its forward and backward passes skip the padding after each EOS: the same step up to float "
                        "rounding, faster when completion lengths vary; each distinct packed row count compiles once "
                        "(not with remat; with micro_batches, each micro-batch packed on its own)")
    dtype: str = option("float32", "compute dtype of the update's forward and backward passes (and of the KL "
                        "term's reference log-probs): bfloat16 casts the params for them (matmul operands in "
                        "bfloat16; master weights, gradients, optimizer state, norms, softmax and logits stay "
                        "float32); the sampler and the evaluation stay float32", choices=COMPUTE_DTYPES)
    sample_weights: str = option("float32", "the weights the training rollouts' sampler reads: int8 quantizes "
                                 "every matrix per output column for sampling only (models/quantize.py; on "
                                 "SmolLM2-135M about 2x the float32 decode on an AVX-512 VNNI CPU, at a KL to the "
                                 "float32 policy of about 7e-3 nats per token): the rollouts then come from that "
                                 "approximation, while the update's log-probs, the KL reference and the evaluation "
                                 "stay float32", choices=WEIGHT_TYPES)
    checkpoint_every: int = option(50, "checkpoint every k global steps and at the end (0: only at the end)")
    save_every: int = option(0, "keep a snapshot of the model every k global steps and at the end, in Hugging Face "
                             "layout under out/snapshots/step-N (what `ntkdyn analyze` reads; 0: none)")
    seed: int = option(0, "the run's seed: rollouts, prompt order, evaluation samples")
    chat_template: bool | None = option(None, "prompts through the tokenizer's chat template (auto: when it has "
                                        "one)", choices=CHAT_CHOICES)
    score_truncated: bool = option(False, "score completions cut at max_new_tokens with the reward too (TRL); "
                                   "default: they score 0")
    mesh: str | None = option(None, "the device mesh 'data=D,fsdp=F' (D*F = all devices of all processes): the "
                              "batch split over D*F devices, parameters and optimizer state over F (FSDP); "
                              "None: one device (ntkdyn.rl.sharding)")
    resume: bool = option(False, "continue the run in out from its last checkpoint")
    overwrite: bool = option(False, "replace a run already in out")

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
            d = read_json(path, what="config", expect=None)
        except (OSError, ValueError) as e:
            raise ConfigError(str(e)) from None
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

    is_num = is_finite_number

    for key, choices in choices_of(RLConfig).items():
        v = getattr(c, key)
        if not isinstance(v, str) or v not in choices:
            raise _bad(key, v, f"one of {list(choices)}")
    _validate_task(c)
    if c.model is not None and (not isinstance(c.model, (str, os.PathLike)) or not str(c.model)):
        raise _bad("model", c.model, "a Hugging Face model directory, a .gguf file or a known model name (str), "
                   "or None for the default base model")
    if not isinstance(c.out, (str, os.PathLike)) or not str(c.out):
        raise _bad("out", c.out, "the run directory (a non-empty path)")
    ints = {"steps": 0, "group_size": 1, "prompts_per_step": 1, "max_new_tokens": 1, "num_iterations": 1,
            "eval_every": 0, "eval_prompts": 1, "eval_samples": 1, "probe_prompts": 1, "probe_every": 0,
            "checkpoint_every": 0, "save_every": 0, "seed": 0, "ntk_every": 0, "ntk_contexts": 1, "ntk_probes": 2,
            "claim6_rollouts": 0, "logit_chunk": 0, "micro_batches": 1, "eval_lanes": 0}
    for key, lo in ints.items():
        v = getattr(c, key)
        if not is_int(v) or v < lo:
            raise _bad(key, v, f"an integer >= {lo}")
    if c.prompts_per_step % c.micro_batches:
        raise _bad("micro_batches", c.micro_batches, f"a divisor of prompts_per_step={c.prompts_per_step} (each "
                                                     "micro-batch holds whole groups of one prompt)")
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
    if c.chat_template is not None and not isinstance(c.chat_template, bool):
        raise _bad("chat_template", c.chat_template, "None (auto: when the tokenizer has one), True or False")
    for key in ("resume", "overwrite", "score_truncated", "claim6", "remat", "pack"):
        if not isinstance(getattr(c, key), bool):
            raise _bad(key, getattr(c, key), "True or False")
    if c.pack and c.remat:
        raise _bad("pack", c.pack, "False with remat=True (the packed update runs through the prompts' cache, which "
                                   "remat does not take); set one of them")
    if c.mesh is not None:
        try:
            parse_mesh(c.mesh, "RLConfig.mesh")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if c.resume and c.overwrite:
        raise ConfigError("RLConfig: resume=True and overwrite=True contradict each other; expected at most one")


def _validate_task(c: RLConfig):
    """task, eval_dataset, eval_fraction, rewards, reward_weights (their files are read later, by context)."""
    if not isinstance(c.task, (str, os.PathLike)) or not (c.task in _tasks.all_names() or
                                                          os.path.exists(os.fspath(c.task))):
        raise _bad("task", c.task, f"one of the tasks {_tasks.all_names()} or an existing dataset file / directory")
    if c.eval_dataset is not None and (not isinstance(c.eval_dataset, (str, os.PathLike)) or
                                       not os.path.exists(os.fspath(c.eval_dataset))):
        raise _bad("eval_dataset", c.eval_dataset, "None or an existing dataset file / directory")
    if c.eval_dataset is not None and c.task in _tasks.all_names():
        raise _bad("eval_dataset", c.eval_dataset, f"None for the built-in task {c.task!r} (a dataset task only)")
    if not is_finite_number(c.eval_fraction) or not 0 < c.eval_fraction < 1:
        raise _bad("eval_fraction", c.eval_fraction, "a number in (0, 1)")
    if c.rewards is not None and (not isinstance(c.rewards, (list, tuple)) or not c.rewards or
                                  not all(isinstance(r, str) and r for r in c.rewards)):
        raise _bad("rewards", c.rewards, "None or a non-empty list of reward specs (strings: 'pkg.module:function', "
                                         "'file.py:function', a task name or a reward-model directory)")
    if c.reward_weights is not None:
        if (not isinstance(c.reward_weights, (list, tuple)) or not c.reward_weights
                or not all(is_finite_number(w) for w in c.reward_weights)):
            raise _bad("reward_weights", c.reward_weights, "None or a non-empty list of finite numbers")
        if c.rewards is not None and len(c.reward_weights) != len(c.rewards):
            raise _bad("reward_weights", c.reward_weights, f"one weight per reward function ({len(c.rewards)}: "
                                                           f"{list(c.rewards)})")


# fields that may differ between a run and its resumption
# (mesh: a checkpoint holds host arrays, placed again on the resuming run's mesh)
RESUMABLE_CHANGES = ("resume", "overwrite", "steps", "out", "save_every", "mesh")
