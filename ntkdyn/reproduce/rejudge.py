"""`ntkdyn reproduce --rejudge`: judge a finished reproduction again with the current verdict code, running
nothing (the run's outputs are read back from OUT/reproduce.json, OUT/runs and the one-step result)."""
from __future__ import annotations

import json
import os

from ..io import read_json, write_text
from .pipeline import _claims_figure
from .summary import write_summary
from .claims import claims

__all__ = ["rejudge"]


def rejudge(out="runs/reproduce", figures_dir=None) -> list[dict]:
    """Judge a finished reproduction in `out` again with this version's verdict code, without running anything:
    the training runs under OUT/runs, the feature table and pass@k curves of OUT/reproduce.json and the one-step
    result it points to. Rewrites summary.md, claims.json and fig_claims in `figures_dir` (default: the figures
    directory of reproduce.json's files) and the claims of reproduce.json (a --perturb rerun recorded there is
    judged again too); the meta (command, minutes, settings) stays the run's own."""
    from ..experiments.features import FEATURE_LABELS

    path = os.path.join(out, "reproduce.json")
    rec = read_json(path, what="reproduction record (run `ntkdyn reproduce` first)")
    table = rec["features"]["table"]
    feats = {"stats": {k: table[label] for k, label in FEATURE_LABELS.items()},
             "items": rec["features"].get("items")}  # absent in a reproduction made before v3
    one = read_json(os.path.join(rec["one_step_dir"], "one_step.json"), what="one-step result")
    claim_list = claims(os.path.join(out, "runs"), feats, one, rec.get("pass_at_k"))
    if figures_dir is None:
        summaries = [f for f in rec["files"] if os.path.basename(f) == "summary.md"]
        figures_dir = os.path.dirname(summaries[0]) if summaries else os.path.join(out, "figures")
    perturbed, perturb_meta = None, rec.get("perturb")
    if perturb_meta and os.path.isfile(os.path.join(perturb_meta["out"], "reproduce.json")):
        perturbed = rejudge(perturb_meta["out"])  # the --perturb rerun, judged by the same code
        rec["perturbed"] = perturbed
    _claims_figure(figures_dir, claim_list, rec["meta"]["model"])
    write_summary(os.path.join(figures_dir, "summary.md"), claim_list, rec["meta"], perturbed, perturb_meta)
    rec["claims"] = claim_list
    write_text(path, json.dumps(rec, indent=2, default=str))
    return claim_list
