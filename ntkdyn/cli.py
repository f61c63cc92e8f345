"""The `ntkdyn` command. Each subcommand lives in the module that does the work: the module exposes
`add_arguments(parser)` and `run_cli(args) -> int`, and is imported only when its subcommand runs."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help[, (add_arguments name, run name)]); the default pair is add_arguments/run_cli
COMMANDS = {
    "sft": ("ntkdyn.sft", "supervised training of a base model on a synthetic task (writes a HF model dir)"),
    "default-model": ("ntkdyn.default", "show the embedded default base model (or rebuild it from its recipe)"),
    "rl": ("ntkdyn.rl.cli", "RL / CF-RL / LP-FT post-training with the dynamics tracked"),
    "analyze": ("ntkdyn.analyze", "the learning dynamics of a run trained elsewhere (TRL checkpoints, an ntkdyn run "
                "with --save-every, a list of models): eval, confidence, diversity, eNTK drift, the Δz split"),
    "one-step": ("ntkdyn.experiments.one_step", "one-step learning-dynamics prediction vs the real step"),
    "reproduce": ("ntkdyn.reproduce", "the paper's experiments and figures end to end"),
    "pass-at-k": ("ntkdyn.experiments.pass_at_k", "pass@k curves (k = 1..n) of base / RL / CF-RL policies on "
                  "held-out prompts, and where they cross"),
    "plan-memory": ("ntkdyn.memory", "the predicted peak memory of an RL step (or an eNTK request) from the model "
                    "config and the batch, before running it"),
    "info": ("ntkdyn.cli", "show a model's config and parameter count (a directory, a .gguf file or a known name)"),
    "models": ("ntkdyn.models.known", "the known models: sizes, licences, whether they are cached",
               ("add_arguments_models", "run_models")),
    "fetch": ("ntkdyn.models.known", "download and convert a known model once (prints its directory)",
              ("add_arguments_fetch", "run_fetch")),
    "convert-gguf": ("ntkdyn.models.gguf", "convert a .gguf file into a Hugging Face model directory",
                     ("add_arguments_convert_gguf", "run_convert_gguf")),
}


def add_arguments(p):
    p.add_argument("model", help="a Hugging Face model directory, a .gguf file or a known model name")


def run_cli(args) -> int:
    import jax

    from .models.lm import load

    lm = load(args.model)
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
    for name, (mod, help_, *fns) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:  # import only the module that runs
            add, run = fns[0] if fns else ("add_arguments", "run_cli")
            m = importlib.import_module(mod)
            getattr(m, add)(sp)
            sp.set_defaults(_run=getattr(m, run))
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as e:  # bad input: one line naming it, no traceback
        msg = str(e) or type(e).__name__
        print(f"ntkdyn {args.command}: error: {msg}", file=sys.stderr)
        return 2


# the exceptions that mean "bad input" (a bad argument, a missing or unreadable file, a failed download):
# reported in one line
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError)
try:
    from .models.known import FetchError
    USER_ERRORS += (FetchError,)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    sys.exit(main())
