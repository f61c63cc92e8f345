"""`ntkdyn rl`: RL / CF-RL / LP-FT post-training with the learning dynamics tracked.

    ntkdyn rl --recipe cf-rl --task sum --steps 60 --head-steps 8 --seed 0 --out runs/cf-rl
    ntkdyn rl --out runs/cf-rl --resume            # continue a killed run with its saved config
    ntkdyn rl --config run.json --out runs/x       # keys of RLConfig in a JSON file; flags override them
    ntkdyn rl --mesh data=2,fsdp=4 --out runs/x    # 8 devices: batch over all 8, params and optimizer over 4
    ntkdyn rl --coordinator HOST:PORT --num-processes N --process-id I --mesh ... --out runs/x   # one per process
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import distributed
from ..options import add_options, given
from ..tasks.registry import REWARD_MODEL
from .config import ConfigError, RLConfig, TrainingError

def add_arguments(p: argparse.ArgumentParser):
    """The RLConfig fields (options.add_options: flags, types and help from the fields), then what is not a config
    key: --config, --dataset, --reward-model, --no-progress."""
    p.add_argument("--config", help="JSON file of RLConfig keys (flags given on the command line override it)")
    add_options(p, RLConfig)
    p.add_argument("--dataset", dest="dataset", default=None,
                   help="a dataset of prompts (JSONL, JSON, CSV, Parquet or a directory saved by datasets) with a "
                        "'prompt' column; the same as --task PATH")
    p.add_argument("--reward-model", dest="reward_models", action="append", default=None, metavar="NAME_OR_DIR",
                   help="a reward model (repeatable): a Hugging Face *ForSequenceClassification directory or a "
                        "known name, scored at the last token of prompt + completion; it comes after the "
                        "--reward functions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    distributed.add_arguments(p)


def fold_dataset_and_reward_models(args, d: dict, cli: dict) -> None:
    """--dataset PATH (the same as --task PATH; refused beside a --task on the command line) and --reward-model NAME
    (after the command line's --reward functions: the order the weights follow) folded into the config dict `d`;
    `cli`: the config fields the command line gave (options.given). Shared by `ntkdyn rl` and `ntkdyn analyze`."""
    if getattr(args, "dataset", None) is not None:
        if cli.get("task") is not None:
            raise ConfigError(f"--dataset {args.dataset!r} and --task {cli['task']!r} both given; expected one")
        d["task"] = args.dataset
    if getattr(args, "reward_models", None):
        d["rewards"] = list(cli.get("rewards") or []) + [REWARD_MODEL + m for m in args.reward_models]


def config_from_args(args) -> RLConfig:
    import os

    d = {}
    if getattr(args, "config", None):
        d.update(RLConfig.read_json(args.config))
    elif getattr(args, "resume", False) and args.out and os.path.isfile(os.path.join(args.out, "config.json")):
        d.update(RLConfig.read_json(os.path.join(args.out, "config.json")))  # resume: the run's own config
    cli = given(args, RLConfig, skip=("resume", "overwrite"))
    d.update(cli)
    fold_dataset_and_reward_models(args, d, cli)
    d["resume"] = bool(getattr(args, "resume", False))
    d["overwrite"] = bool(getattr(args, "overwrite", False))
    return RLConfig.from_dict(d, source="ntkdyn rl")


def run_cli(args) -> int:
    try:  # before any other JAX call
        several = distributed.initialize_from_args(args)
    except (ValueError, RuntimeError) as e:
        print(f"ntkdyn rl: error: {e}", file=sys.stderr)
        return 2
    if not several:
        return _run(args, several)
    try:
        rc = _run(args, several)
    except BaseException as e:  # a peer died (a collective failed) or this process was interrupted
        print(f"ntkdyn rl: error: {distributed.describe_failure(e)}", file=sys.stderr, flush=True)
        raise  # jax.distributed then ends this process once its coordination service reports the lost peer
    distributed.shutdown()
    return rc


def _run(args, several: bool) -> int:
    from .trainer import train

    try:
        config = config_from_args(args)
        import jax

        summary = train(config, progress=not args.no_progress and (not several or jax.process_index() == 0))
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
