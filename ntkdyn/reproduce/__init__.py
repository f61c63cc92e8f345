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
  claims.py         the one table of claims (id, version, measure, effects, threshold, side, rule) and `claims`,
                    which judges every entry: v3 by effects with 95 % t intervals (ntkdyn.stats), v2/v1 as before
  earlier.py        the earlier readings' measures: v2 (all claims) and v1 (claims 1, 2, 6, 8; before the spec's
                    revision; docs/claims.md); thresholds as named constants beside each
  claim_base.py     ClaimResult, numbers over seeds, the v2 verdict over seeds, pieces several measures share
  summary.py        summary.md
(the package's `claims` is the function claims.claims: `from ntkdyn.reproduce import claims` gets the function;
import the table's module as `from ntkdyn.reproduce.claims import TABLE, ...`)
"""
from ..experiments.features import feature_analysis
from ..experiments.kernel import kernel_analysis
from .claim_base import ClaimResult
from .claims import TABLE, claims
from .cli import add_arguments, run_cli
from .pipeline import CLAIMS, FIGURES, PROFILES, run
from .rejudge import rejudge
from .summary import write_summary

__all__ = ["run", "rejudge", "claims", "TABLE", "ClaimResult", "write_summary", "PROFILES", "FIGURES", "CLAIMS", "add_arguments",
           "run_cli", "feature_analysis", "kernel_analysis"]
