"""The `ntkdyn` command. Each subcommand lives in the module that does the work: the module exposes
`add_arguments(parser)` and `run_cli(args) -> int`, and is imported only when its subcommand runs."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "sft": ("ntkdyn.sft", "supervised training of a base model on a synthetic task (writes a HF model dir)"),
    "default-model": ("ntkdyn.default", "build (or show) the embedded default base model"),
    "rl": ("ntkdyn.rl.cli", "RL / CF-RL / LP-FT post-training with the dynamics tracked"),
    "one-step": ("experiments.one_step", "one-step learning-dynamics prediction vs the real step"),
    "reproduce": ("ntkdyn.reproduce", "the paper's experiments and figures end to end"),
    "info": ("ntkdyn.cli", "show a model directory's config and parameter count"),
}


def add_arguments(p):
    p.add_argument("model", help="Hugging Face model directory")


def run_cli(args) -> int:
    import jax

    import ntkdyn as nd

    lm = nd.load(args.model)
    print(lm.config)
    head = sum(x.size for x in jax.tree.leaves(lm.params["head"]))
    print(f"parameters: {lm.num_params:,} (head {head:,})")
    print(f"tokenizer: {type(lm.tokenizer).__name__ if lm.tokenizer else None}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ntkdyn", description="Learning dynamics of RL post-training of causal "
                                     "LMs: kernels, one-step predictions, RL / CF-RL / LP-FT, the paper's figures.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (mod, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        if name == chosen:  # import only the module that runs
            m = importlib.import_module(mod)
            m.add_arguments(sp)
            sp.set_defaults(_module=m)
    args = parser.parse_args(argv)
    return int(args._module.run_cli(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
