"""`ntkdyn reproduce`: the paper's experiments end to end on the embedded default base model.

1. build or reuse the base model (ntkdyn.default; or --model DIR),
2. feature similarity of the base model and a picture of R and G for a handful of contexts (claim 1;
   ntkdyn.experiments.features, ntkdyn.experiments.kernel),
3. the one-step prediction and Proposition 2 (claims 3, 4; ntkdyn.experiments.one_step),
4. RL, CF-RL and LP-FT->RL from the same base, several seeds each (claims 2, 5-8; ntkdyn.rl),
5. figures (PNG + PDF) and `summary.md`: each claim of spec §5 with its numbers and a verdict.

Runs are durable: an interrupted reproduction resumes each training run from its last checkpoint and skips runs
that finished.

  pipeline.py  the pipeline (`run`), its PROFILES and the command line (add_arguments, run_cli)
  verdicts.py       the claims measured on the base model (1, 1x, 3, 4) and `claims`, which judges them all
  verdicts_runs.py  the claims measured on training runs (2, 2x, 5-8, N1); thresholds as named constants
  verdicts_v1.py    the earlier readings of claims 1, 2, 6, 8 (before the spec's revision; docs/claims.md)
  claim_base.py     ClaimResult, numbers over seeds, the verdict over seeds
  summary.py        summary.md
(the modules are not named after `run` and `claims`, which are functions of this package)
"""
from ..experiments.features import feature_analysis
from ..experiments.kernel import kernel_analysis
from .verdicts import ClaimResult, claims
from .cli import add_arguments, run_cli
from .pipeline import CLAIMS, FIGURES, PROFILES, run
from .rejudge import rejudge
from .summary import write_summary

__all__ = ["run", "rejudge", "claims", "ClaimResult", "write_summary", "PROFILES", "FIGURES", "CLAIMS", "add_arguments",
           "run_cli", "feature_analysis", "kernel_analysis"]
