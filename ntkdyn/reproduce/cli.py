"""The `ntkdyn reproduce` command line: its arguments and the dispatch to the pipeline (run, run_base_seeds) or to
rejudge."""
from __future__ import annotations

from ..tasks import DEFAULT_TASK
from .pipeline import PROFILES, run, run_base_seeds
from .rejudge import rejudge

__all__ = ["add_arguments", "run_cli"]


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="1 seed, fewer steps, same figures (about 10 minutes)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="explicit profile: real = SmolLM2-135M-Instruct on the natural task `add` (about 90 minutes; "
                        "make reproduce-real), tiny / real-tiny = the end-to-end tests' configurations")
    p.add_argument("--out", default="runs/reproduce", help="run directory (training runs, one-step, logs)")
    p.add_argument("--figures", default=None,
                   help="where figures and summary.md go (default: figures/ for the full run, OUT/figures otherwise)")
    p.add_argument("--model", default=None, help="base model: a known name, HF directory or .gguf (default: the "
                                                  "profile's, else the embedded default)")
    p.add_argument("--task", default=None, help=f"task (default: the profile's, else {DEFAULT_TASK})")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the profile's seeds")
    p.add_argument("--base-seeds", type=int, nargs="+", default=None,
                   help="repeat the whole reproduction over base models trained with these recipe seeds (the "
                        "recipe's own seed is the shipped model) and write robustness.md")
    p.add_argument("--rejudge", action="store_true",
                   help="run nothing: judge the finished reproduction in --out again with this version's verdicts "
                        "(rewrites summary.md and reproduce.json's claims)")
    p.add_argument("--no-progress", action="store_true")


def run_cli(args) -> int:
    if getattr(args, "rejudge", False):
        for c in rejudge(args.out, args.figures):
            print(f"{c['n']:>6}  {c['verdict']}")
        return 0
    if args.base_seeds:
        if args.model:
            raise ValueError("--base-seeds retrains the default recipe's base model; it cannot be combined with "
                             "--model")
        run_base_seeds(args.out, args.base_seeds, quick=args.quick, profile=args.profile, figures_dir=args.figures,
                       task=args.task, progress=not args.no_progress, seeds=args.seeds)
        return 0
    run(args.out, quick=args.quick, profile=args.profile, figures_dir=args.figures, model=args.model,
        task=args.task, progress=not args.no_progress, seeds=args.seeds)
    return 0
