"""`ntkdyn rl`: RL / CF-RL / LP-FT post-training with the learning dynamics tracked.

    ntkdyn rl --recipe cf-rl --task sum --steps 60 --head-steps 8 --seed 0 --out runs/cf-rl
    ntkdyn rl --out runs/cf-rl --resume            # continue a killed run with its saved config
    ntkdyn rl --config run.json --out runs/x       # keys of RLConfig in a JSON file; flags override them
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..models.tokenizer import CHAT_CHOICES
from ..tasks.registry import REWARD_MODEL
from .config import ConfigError, RLConfig, TrainingError

# flag -> (RLConfig key, type, help); a flag left out keeps the RLConfig default (or the --config file's value)
_FLAGS = [
    ("--recipe", "recipe", str, "rl | cf-rl | lp-ft"),
    ("--model", "model", str, "a Hugging Face model directory, a .gguf file or a known name such as "
                              "smollm2-135m-instruct (default: the embedded default base model)"),
    ("--task", "task", str, "a built-in task (sum, multiple, word, plus; add, mul, two-sum, list-multiples) or a "
                            "dataset path"),
    ("--eval-dataset", "eval_dataset", str, "held-out prompts of a dataset task (JSONL, CSV, Parquet, saved dir)"),
    ("--eval-fraction", "eval_fraction", float, "share of the dataset held out when no --eval-dataset"),
    ("--steps", "steps", int, "full-parameter RL steps (stage-1 steps come before them; 0: stage 1 alone)"),
    ("--head-steps", "head_steps", int, "stage-1 steps of cf-rl / lp-ft"),
    ("--head-epochs", "head_epochs", float, "stage-1 epochs over the train prompts (default 1)"),
    ("--group-size", "group_size", int, "G samples per prompt"),
    ("--prompts-per-step", "prompts_per_step", int, "prompts per step (batch = prompts x G)"),
    ("--max-new-tokens", "max_new_tokens", int, None),
    ("--temperature", "temperature", float, "rollout temperature"),
    ("--lr", "lr", float, None),
    ("--head-lr", "head_lr", float, "stage-1 learning rate (default: --lr)"),
    ("--optimizer", "optimizer", str, "adam | adamw | sgd"),
    ("--weight-decay", "weight_decay", float, None),
    ("--max-grad-norm", "max_grad_norm", float, "global-norm clipping (0: off)"),
    ("--advantage", "advantage", str, "grpo | dr_grpo | rloo | reinforce"),
    ("--loss-agg", "loss_agg", str, "seq_mean_token_mean | token_mean"),
    ("--beta", "beta", float, "KL coefficient (reference: the starting model)"),
    ("--kl-estimator", "kl_estimator", str, "k1 | k3"),
    ("--num-iterations", "num_iterations", int, "gradient steps per rollout batch (PPO clipping when > 1)"),
    ("--clip-eps", "clip_eps", float, None),
    ("--train-prompts", "train_prompts", int, "size of the train-prompt pool"),
    ("--eval-every", "eval_every", int, "evaluate every k steps (0: start and stage ends only)"),
    ("--eval-prompts", "eval_prompts", int, None),
    ("--eval-samples", "eval_samples", int, "samples per eval prompt (k of pass@k)"),
    ("--eval-temperature", "eval_temperature", float, None),
    ("--probe-prompts", "probe_prompts", int, None),
    ("--probe-every", "probe_every", int, "dz_share every k steps (0: never)"),
    ("--checkpoint-every", "checkpoint_every", int, "checkpoint every k steps (0: at the end only)"),
    ("--seed", "seed", int, None),
    ("--ntk-every", "ntk_every", int, "eNTK drift (ntk/*) every k global steps, at step 0 and the last (0: never)"),
    ("--ntk-contexts", "ntk_contexts", int, "probe contexts of the drift kernels"),
    ("--ntk-method", "ntk_method", str, "exact | hutchinson"),
    ("--ntk-probes", "ntk_probes", int, "Rademacher probes per drift kernel (hutchinson)"),
    ("--claim6-rollouts", "claim6_rollouts", int, "claim-6 measures on a fixed random subset of n rollouts (0: all)"),
]


def add_arguments(p: argparse.ArgumentParser):
    defaults = {f.name: f.default for f in dataclasses.fields(RLConfig)}
    p.add_argument("--config", help="JSON file of RLConfig keys (flags given on the command line override it)")
    p.add_argument("--out", help="run directory (metrics.jsonl, checkpoint/, final/, summary.json)")
    for flag, key, typ, help_ in _FLAGS:
        h = (help_ + "; " if help_ else "") + f"default {defaults[key]!r}"
        p.add_argument(flag, dest=key, type=typ, default=None, help=h)
    p.add_argument("--dataset", dest="dataset", default=None,
                   help="a dataset of prompts (JSONL, JSON, CSV, Parquet or a directory saved by datasets) with a "
                        "'prompt' column; the same as --task PATH")
    p.add_argument("--reward", dest="rewards", action="append", default=None, metavar="SPEC",
                   help="a reward function in TRL's signature (repeatable): package.module:function, "
                        "path/file.py:function, a task name or a reward-model directory; default: the task's own")
    p.add_argument("--reward-model", dest="reward_models", action="append", default=None, metavar="NAME_OR_DIR",
                   help="a reward model (repeatable): a Hugging Face *ForSequenceClassification directory or a "
                        "known name, scored at the last token of prompt + completion; it comes after the "
                        "--reward functions")
    p.add_argument("--reward-weights", dest="reward_weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per reward: the --reward functions in order, then the --reward-model ones "
                        "in order (default 1.0 each)")
    p.add_argument("--chat-template", dest="chat_template", choices=list(CHAT_CHOICES), default=None,
                   help="prompts through the tokenizer's chat template: auto (when it has one), on, off; "
                        "default auto")
    p.add_argument("--score-truncated", dest="score_truncated", action="store_const", const=True, default=None,
                   help="score completions cut at --max-new-tokens with the reward too (default: they score 0)")
    p.add_argument("--claim6", dest="claim6", action="store_const", const=True, default=None,
                   help="log claim 6's measures (claim6/*) at the first step of the stage 'rl'")
    p.add_argument("--remat", dest="remat", action="store_const", const=True, default=None,
                   help="rematerialise each layer in the update's backward pass (jax.checkpoint): activation "
                        "memory of one layer instead of all, for about one more forward pass per step")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args) -> RLConfig:
    import os

    d = {}
    if getattr(args, "config", None):
        d.update(RLConfig.read_json(args.config))
    elif getattr(args, "resume", False) and args.out and os.path.isfile(os.path.join(args.out, "config.json")):
        d.update(RLConfig.read_json(os.path.join(args.out, "config.json")))  # resume: the run's own config
    for _, key, _, _ in _FLAGS:
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    if getattr(args, "dataset", None) is not None:
        if getattr(args, "task", None) is not None:
            raise ConfigError(f"--dataset {args.dataset!r} and --task {args.task!r} both given; expected one")
        d["task"] = args.dataset
    for key in ("rewards", "reward_weights"):
        if getattr(args, key, None) is not None:
            d[key] = list(getattr(args, key))
    if getattr(args, "reward_models", None):  # after the --reward functions: the order the weights follow
        d["rewards"] = list(getattr(args, "rewards", None) or []) + [REWARD_MODEL + m for m in args.reward_models]
    if getattr(args, "chat_template", None) is not None:
        d["chat_template"] = CHAT_CHOICES[args.chat_template]
    for key in ("score_truncated", "remat"):
        if getattr(args, key, None) is not None:
            d[key] = True
    if getattr(args, "out", None):
        d["out"] = args.out
    d["resume"] = bool(getattr(args, "resume", False))
    d["overwrite"] = bool(getattr(args, "overwrite", False))
    return RLConfig.from_dict(d, source="ntkdyn rl")


def run_cli(args) -> int:
    from .trainer import train

    try:
        config = config_from_args(args)
        summary = train(config, progress=not args.no_progress)
    except ConfigError as e:
        msg = str(e).removeprefix("ntkdyn rl: ")
        print(f"ntkdyn rl: error: {msg}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"ntkdyn rl: training stopped: {e}", file=sys.stderr)
        return 1
    cost = summary["cost"]
    print(f"wrote {summary['out']} ({summary['steps']} steps: " +
          ", ".join(f"{k} {v['steps']} steps {v['time_s']:.1f}s {v['generated_tokens']} generated tokens"
                    for k, v in cost.items() if "steps" in v) + ")")
    for name in ("first_eval", "final_eval"):
        ev = summary.get(name)
        if ev:
            keep = {k: round(v, 4) for k, v in ev.items() if isinstance(v, float)}
            print(f"{name}: {json.dumps(keep)}")
    print(f"final model: {summary['final_model']}")
    return 0
