"""The `ntkdyn reproduce` command line (generated from ReproduceConfig's fields) and its dispatch to the pipeline
(run, run_base_seeds) or to rejudge."""
from __future__ import annotations

import dataclasses

from ..options import add_options, given, option
from .pipeline import PROFILES, run, run_base_seeds
from .rejudge import rejudge

__all__ = ["ReproduceConfig", "add_arguments", "run_cli"]


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """What `ntkdyn reproduce` is asked (the pipeline's keywords)."""

    quick: bool = option(False, "3 seeds, fewer steps, same figures")
    profile: str | None = option(None, "explicit profile: real = SmolLM2-135M-Instruct on the natural task `add` "
                                 "(make reproduce-real), tiny / real-tiny = the end-to-end tests' configurations; "
                                 f"one of {sorted(PROFILES)}")
    out: str = option("runs/reproduce", "run directory (training runs, one-step, logs)")
    figures: str | None = option(None, "where figures and summary.md go (default: figures/ for the full run, "
                                 "OUT/figures otherwise)")
    model: str | None = option(None, "base model: a known name, HF directory or .gguf (default: the profile's, else "
                               "the embedded default)")
    task: str | None = option(None, "task (default: the profile's, else the default task)")
    seeds: list | None = option(None, "override the profile's seeds", type=int, nargs="+")
    base_seeds: list | None = option(None, "repeat the whole reproduction over base models trained with these recipe "
                                     "seeds (the recipe's own seed is the shipped model) and write robustness.md",
                                     type=int, nargs="+")
    rejudge: bool = option(False, "run nothing: judge the finished reproduction in --out again with this version's "
                           "verdicts (rewrites summary.md and reproduce.json's claims)")
    perturb: bool = option(False, "then rerun the reproduction into OUT/perturbed in a child process with XLA's CPU "
                           "code generation limited to AVX2 (other float rounding, the same experiment) and state in "
                           "summary.md whether any verdict moved")
    progress: bool = option(True, "no progress lines", flag="--no-progress")


def add_arguments(p):
    add_options(p, ReproduceConfig)


def run_cli(args) -> int:
    c = ReproduceConfig(**given(args, ReproduceConfig))
    if c.profile is not None and c.profile not in PROFILES:
        raise ValueError(f"unknown profile {c.profile!r}; expected one of {sorted(PROFILES)}")
    if c.rejudge:
        for claim in rejudge(c.out, c.figures):
            print(f"{claim['n']:>6}  {claim['verdict']}")
        return 0
    if c.perturb and (c.rejudge or c.base_seeds):
        raise ValueError("--perturb reruns one reproduction; it cannot be combined with --rejudge or --base-seeds")
    if c.base_seeds:
        if c.model:
            raise ValueError("--base-seeds retrains the default recipe's base model; it cannot be combined with "
                             "--model")
        run_base_seeds(c.out, c.base_seeds, quick=c.quick, profile=c.profile, figures_dir=c.figures, task=c.task,
                       progress=c.progress, seeds=c.seeds)
        return 0
    run(c.out, quick=c.quick, profile=c.profile, figures_dir=c.figures, model=c.model, task=c.task,
        progress=c.progress, seeds=c.seeds, perturb=c.perturb)
    return 0
