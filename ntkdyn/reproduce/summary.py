"""`summary.md` of a reproduction: the claims' table (v3: effect, 95 % CI, n, verdict, seeds needed, the predicted
probability of the same verdict on a rerun), the earlier readings (v2, v1) in a table of their own, each claim with
its numbers and note, the machine-noise check (`--perturb`: both verdict tables, and which moved verdicts had been
marked as ones a rerun may move) and the base model's feature table (the paper's Table 1 analogue)."""
from __future__ import annotations

from ..io import write_text
from ..plots.analysis import feature_table_markdown
from ..stats import FRAGILE

__all__ = ["summary_markdown", "write_summary", "table_cell", "moved_verdicts"]

_HEAD = ["| # | claim | verdict | on the mean | per seed |", "|---|---|---|---|---|"]
_HEAD_V3 = ["| # | claim | effect: mean [95 % CI] (threshold) | n | verdict | seeds needed | same verdict on a rerun |",
            "|---|---|---|---|---|---|---|"]


def table_cell(text: str) -> str:
    """Text for a Markdown table cell (a literal "|", as in log π(y | c), would end the cell)."""
    return str(text).replace("|", "\\|")


def _row(c) -> str:
    seeds = ", ".join(f"{p['seed']}: {p['verdict']}" for p in c.get("per_seed", [])) or "(one measurement)"
    return (f"| {c['n']} | {table_cell(c['claim'])} | **{c['verdict']}** | {c.get('verdict_mean', c['verdict'])} | "
            f"{seeds} |")


def _g(x) -> str:
    import math

    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3g}" if abs(x) >= 1e3 else f"{x:.3f}"


def _row_v3(c) -> str:
    effs = "<br>".join(f"{table_cell(e['name'])}: {_g(e['mean'])} [{_g(e['lo'])}, {_g(e['hi'])}] "
                       f"({'>' if e['side'] == 'above' else '<'} {e['threshold']:g})" for e in c["effects"]) or "—"
    n = f"{c['n_items']} {c['unit']}" if c["effects"] else "—"
    need = "" if c.get("needed") is None else f"{c['needed']} {c['unit']}"
    return (f"| {c['n']} | {table_cell(c['claim'])} | {effs} | {n} | **{c['verdict']}** | {need} | "
            f"{_same(c)} |")


def _same(c) -> str:
    """The predicted probability of the same verdict on a rerun, in percent, marked when below FRAGILE."""
    p = c.get("same_on_rerun")
    if p is None:
        return ""
    return f"{100 * p:.0f} %" + (" (may move)" if p < FRAGILE else "")


def moved_verdicts(claim_list, perturbed) -> list[str]:
    """The labels of the claims whose verdict differs between two claim lists (missing on one side: moved)."""
    other = {c["n"]: c["verdict"] for c in perturbed}
    return [c["n"] for c in claim_list if other.get(c["n"]) != c["verdict"]]


def _perturb_section(claim_list, perturbed, perturb_meta) -> list[str]:
    moved = moved_verdicts(claim_list, perturbed)
    other = {c["n"]: c["verdict"] for c in perturbed}
    main = {c["n"]: c for c in claim_list if not c.get("earlier")}
    flagged = [n for n, c in main.items() if c.get("same_on_rerun") is not None and c["same_on_rerun"] < FRAGILE]
    unpredicted = [n for n in moved if n in main and n not in flagged]
    lines = ["## Machine-noise check (`--perturb`)", "",
             f"The pipeline was rerun in a child process with {perturb_meta.get('change', 'a float-rounding change')}"
             f" ({perturb_meta.get('minutes', float('nan')):.1f} minutes, into `{perturb_meta.get('out', '?')}`"
             f"{_reused(perturb_meta)}): "
             "the same experiment with other float rounding. "
             + ("**No verdict moved.**" if not moved else f"**Verdicts that moved: {', '.join(moved)}.**")
             + f" Marked in advance as ones a rerun may move (same verdict on a rerun below {100 * FRAGILE:.0f} %): "
             + (", ".join(flagged) or "none") + "; "
             + (f"moved without that mark: {', '.join(unpredicted)}." if unpredicted else
                "no v3 verdict moved without that mark."), "",
             "| # | this run | perturbed run |", "|---|---|---|"]
    lines += [f"| {c['n']} | {c['verdict']} | {other.get(c['n'], 'absent')}{' ← moved' if c['n'] in moved else ''} |"
              for c in claim_list]
    return lines + [""]


def _section(c) -> list[str]:
    lines = [f"## Claim {c['n']}: {c['verdict']}", "", c["claim"], "", f"Measured: {c['numbers']}.", ""]
    lines += [f"- seed {p['seed']}: {p['verdict']}; {p['numbers']}" for p in c.get("per_seed", [])]
    if c.get("per_seed"):
        lines.append("")
    if c.get("needed") is not None:
        lines += [f"Inconclusive: about {c['needed']} {c['unit']} would decide it at the observed effects and "
                  "spread (t_{0.975, n−1} · s/√n < |mean − threshold|).", ""]
    if c.get("rerun"):
        r = c["rerun"]
        lines += [f"On an independent rerun of the same size (new {c['unit']}; predicted from the observed effects "
                  "and spread, the parts taken as independent): supported {:.0f} %, not supported {:.0f} %, "
                  "inconclusive {:.0f} %.".format(*(100 * r[k] for k in ("supported", "not supported",
                                                                         "inconclusive"))), ""]
    if c["note"]:
        lines += [f"Note: {c['note']}.", ""]
    return lines


def _reused(meta) -> str:
    """The note that the minutes leave out training runs reused from an earlier invocation (none: "")."""
    k, n = meta.get("runs_reused") or (0, 0)
    return (f"; {k} of its {n} training runs were finished by an earlier invocation into the same directory and "
            "reused, so those minutes leave out their training") if k else ""


def _setting(meta) -> str:
    """The paragraph that states the setting and budget of the reproduction."""
    text = (f"Base model: {meta['model']} ({meta['num_params']:,} parameters, family {meta['family']}); task "
            f"`{meta['task']}`; recipes RL, CF-RL, LP-FT→RL with seeds {list(meta['seeds'])}; {meta['steps']} "
            f"full-RL steps each (Adam, lr {meta['lr']:g}), {meta['head_steps']} stage-1 steps for CF-RL and LP-FT "
            f"(head lr {meta['head_lr']:g})")
    if meta.get("rollout"):
        text += f"; {meta['rollout']}"
    if meta.get("pass_at_k"):
        text += f"; {meta['pass_at_k']}"
    return text + (". Effects are given as mean [95 % CI]; in the earlier readings numbers are mean ± std over "
                   "seeds unless a single value is shown. The thresholds behind each verdict are stated with it and "
                   "were fixed in advance in docs/claims.md.")


def summary_markdown(claim_list, meta, perturbed=None, perturb_meta=None) -> str:
    """The text of summary.md: `claim_list` as `claims.claims` returns it, `meta` the run's facts (profile, date,
    minutes, machine, model, num_params, family, task, seeds, steps, head_steps, lr, head_lr, feature_table; optional
    command, budget, rollout, pass_at_k); `perturbed`: the claim list of the `--perturb` rerun (with
    `perturb_meta`: change, minutes, out), whose verdicts are tabled beside this run's."""
    cmd = meta.get("command") or f"ntkdyn reproduce{' --quick' if meta['profile'] == 'quick' else ''}"
    lines = ["# ntkdyn reproduction: summary", "",
             f"Generated by `{cmd}` on {meta['date']} in {meta['minutes']:.1f} minutes ({meta['machine']})"
             + (f"; budget {meta['budget']}" if meta.get("budget") else "") + _reused(meta) + ".", "",
             _setting(meta), "",
             "Verdicts (docs/claims.md, version 3): each claim is an effect per seed (paired by seed where two "
             "recipes share it) or, for the claims measured once on the base model (1, 1x, 3, 4), per prompt / "
             "sequence / update / probe, with a 95 % Student-t interval over those items; *supported* when the "
             "interval lies wholly on the claim's side of its threshold, *not supported* when wholly on the other "
             "side, *inconclusive* otherwise (with the seeds or items that would decide it at the observed effect "
             "and spread); a claim of several effects needs all of them. The last column predicts, from the observed "
             "effects and spread, how likely an independent rerun of the same size (new seeds, or another machine's "
             f"rounding) reaches the same verdict; below {100 * FRAGILE:.0f} % the verdict is marked as one a rerun "
             "may move. "
             "*cannot show on this setting* when the "
             "setting cannot tell the claim from its negation (the reason is given). [A] the paper's abstract, [P] "
             "its body, [N] ntkdyn's own extension.", ""]
    main = [c for c in claim_list if not c.get("earlier")]
    earlier = [c for c in claim_list if c.get("earlier")]
    lines += _HEAD_V3 + [_row_v3(c) for c in main] + [""]
    if earlier:
        lines += ["Earlier readings (docs/claims.md keeps them): v2, the rule before v3 (*supported* / *not "
                  "supported* when the mean over seeds and every seed agree, *mixed* otherwise), and v1, claims 1, 2, "
                  "6 and 8 before the spec's claim list was revised:", ""] + _HEAD + [_row(c) for c in earlier] + [""]
    if perturbed is not None:
        lines += _perturb_section(claim_list, perturbed, perturb_meta or {})
    for c in main + earlier:
        lines += _section(c)
    lines += ["## Feature similarity of the base model (Table 1 analogue)", "",
              feature_table_markdown(meta["feature_table"]), ""]
    return "\n".join(lines)


def write_summary(path, claim_list, meta, perturbed=None, perturb_meta=None) -> None:
    """Write `summary_markdown(claim_list, meta, perturbed, perturb_meta)` to `path` atomically."""
    write_text(path, summary_markdown(claim_list, meta, perturbed, perturb_meta))
