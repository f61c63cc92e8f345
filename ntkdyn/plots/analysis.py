"""The array-based figures: feature similarity (claim 1, with `feature_table_markdown`, the paper's Table 1
analogue), the one-step prediction vs the real step (claims 3, 4), the kernel K = R + G for a few contexts, and
pass@k curves of several policies (`plot_pass_at_k`), and the evidence of every claim (`plot_claims`: effects with
their 95 % CIs and thresholds, one row per model).
Each takes arrays and `out` (a path prefix without extension) and returns the written [png, pdf].
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..stats import FRAGILE, rerun
from .style import band, format_value, new_figure, no_data, recipe_color, recipe_label, save, styled

__all__ = ["plot_feature_similarity", "feature_table_markdown", "plot_one_step", "plot_one_step_split",
           "plot_kernel", "plot_pass_at_k", "plot_claims", "VERDICT_COLORS"]


# ============================================================================ array-based figures


def _cos_values(a) -> np.ndarray:
    """Finite values of `a`; a square symmetric matrix (a cosine matrix) gives its strict upper triangle."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1] and arr.shape[0] > 1 and np.allclose(arr, arr.T,
                                                                                          equal_nan=True):
        arr = arr[np.triu_indices(arr.shape[0], k=1)]
    arr = arr.ravel()
    return arr[np.isfinite(arr)]


def feature_table_markdown(stats: Mapping[str, Any]) -> str:
    """A markdown table of `stats`: {name: value} gives | quantity | value | rows; {row: {col: value}} gives one
    column per inner key (union, in first-seen order; blanks where missing)."""
    if stats and all(isinstance(v, Mapping) for v in stats.values()):
        cols: list[str] = []
        for v in stats.values():
            cols += [str(c) for c in v if str(c) not in cols]
        lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for r, v in stats.items():
            vv = {str(k): x for k, x in v.items()}
            lines.append(f"| {r} | " + " | ".join(format_value(vv[c]) if c in vv else "" for c in cols) + " |")
        return "\n".join(lines) + "\n"
    lines = ["| quantity | value |", "|---|---:|"]
    lines += [f"| {k} | {format_value(v)} |" for k, v in stats.items()]
    return "\n".join(lines) + "\n"


def _hist(ax, vals, color, title, xlabel) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if vals.size == 0:
        no_data(ax)
        return
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.01, hi + 0.01
    ax.hist(vals, bins=min(50, max(10, int(np.sqrt(vals.size)) * 2)), range=(lo, hi), color=color, alpha=0.75,
            edgecolor="white", lw=0.4)
    m = float(vals.mean())
    ax.axvline(m, color="k", ls="--", lw=1.2)
    ax.text(0.03, 0.95, f"mean = {m:.4f}\nstd = {vals.std():.4f}\nmin = {vals.min():.4f}\nn = {vals.size}",
            transform=ax.transAxes, ha="left", va="top", fontsize=8,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7", alpha=0.9))


@styled
def plot_feature_similarity(cos_prompts, cos_positions, out, table: Mapping[str, Any] | None = None) -> list[str]:
    """Histograms of pairwise cosine similarities of the features h across prompts and across positions (arrays
    of values; a square symmetric cosine matrix contributes its strict upper triangle), means annotated;
    `table` ({name: number}) is rendered as a small table in a third panel (the paper's Table 1 analogue)."""
    ncols = 3 if table else 2
    fig, axes = new_figure(ncols, width=4.0, height=3.3)
    _hist(axes[0], _cos_values(cos_prompts), "#4c72b0", "Across prompts", "cos(h_i, h_j)")
    _hist(axes[1], _cos_values(cos_positions), "#dd8452", "Across positions", "cos(h_t, h_t')")
    if table:
        ax = axes[2]
        ax.axis("off")
        ax.grid(False)
        rows = [[str(k), format_value(v)] for k, v in table.items()]
        tb = ax.table(cellText=rows, colLabels=["quantity", "value"], loc="center", cellLoc="left",
                      colLoc="left", colWidths=[0.68, 0.32])
        tb.auto_set_font_size(False)
        tb.set_fontsize(8)
        tb.scale(1.0, 1.3)
        ax.set_title("Feature statistics")
    fig.suptitle("Feature similarity (pairwise cosine of h)")
    return save(fig, out)


def _one_step_scatter(ax, pred, act) -> None:
    """Predicted vs real Δ log π with y = x and the relative error in the title."""
    ax.set_xlabel("real Δ log π")
    ax.set_ylabel("predicted Δ log π (first order, R + G)")
    if not act.size:
        ax.set_title("One-step prediction")
        no_data(ax)
        return
    denom = float(np.linalg.norm(act))
    rel = float(np.linalg.norm(pred - act)) / denom if denom > 0 else float("nan")
    ax.scatter(act, pred, s=9, alpha=0.6, color="#4c72b0", edgecolors="none", label="probe entries")
    lo = float(min(act.min(), pred.min()))
    hi = float(max(act.max(), pred.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1e-3 + 0.05 * abs(hi)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", ls="--", lw=1.0, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.legend(loc="upper left")
    ax.set_title(f"One-step prediction (relative error {100 * rel:.2f}%)")


def _one_step_split(ax2, split: Mapping[str, Any]) -> None:
    """Per-probe ‖Δz_R‖ and ‖Δz_G‖: bars for up to 40 probes, a scatter of one against the other beyond."""
    r = np.asarray(split.get("representation", []), dtype=np.float64).ravel()
    g = np.asarray(split.get("gradient", []), dtype=np.float64).ravel()
    ax2.set_title("Per-probe parts of Δz")
    if r.size and r.size == g.size and r.size <= 40:
        idx = np.arange(r.size)
        w = 0.4
        ax2.bar(idx - w / 2, r, width=w, color="#55a868", label="‖Δz_R‖ (representation)")
        ax2.bar(idx + w / 2, g, width=w, color="#c44e52", label="‖Δz_G‖ (gradient)")
        ax2.set_xlabel("probe")
        ax2.set_ylabel("norm")
        top = float(np.nanmax(np.concatenate([r, g, [0.0]])))
        if top > 0:
            ax2.set_ylim(0, 1.3 * top)  # room for the legend
        if r.size <= 20:
            ax2.set_xticks(idx)
        ax2.legend()
    elif r.size and r.size == g.size:
        ax2.scatter(r, g, s=10, alpha=0.6, color="#8172b2", edgecolors="none")
        top = float(max(r.max(), g.max(), 0))
        ax2.plot([0, top], [0, top], color="k", ls="--", lw=1.0, label="y = x")
        ax2.set_xlabel("‖Δz_R‖ (representation)")
        ax2.set_ylabel("‖Δz_G‖ (gradient)")
        ax2.legend()
    else:
        no_data(ax2, "representation / gradient norms")


@styled
def plot_one_step(predicted, actual, out, split: Mapping[str, Any] | None = None) -> list[str]:
    """Scatter of the first-order prediction vs the real Δ log π after one step (flattened), with y = x and the
    relative error ‖pred − real‖ / ‖real‖ in the title. `split` = dict(representation=..., gradient=...) of
    per-probe norms ‖Δz_R‖, ‖Δz_G‖ adds a second panel (bars per probe; a scatter for many probes)."""
    pred = np.asarray(predicted, dtype=np.float64).ravel()
    act = np.asarray(actual, dtype=np.float64).ravel()
    if pred.shape != act.shape:
        raise ValueError(f"predicted and actual must have the same size (got {pred.size} and {act.size})")
    ok = np.isfinite(pred) & np.isfinite(act)
    pred, act = pred[ok], act[ok]
    fig, axes = new_figure(2 if split is not None else 1, width=4.6, height=4.0)
    _one_step_scatter(axes[0], pred, act)
    if split is not None:
        _one_step_split(axes[1], split)
    return save(fig, out)


def _kernel_blocks(s_arr, G_blocks, normalize: bool):
    """Validate s (N, N) and G (N, N, k, k) or (N·k, N·k); returns (k, the (N·k, N·k) map of G, optionally
    trace-normalised per block)."""
    if s_arr.ndim != 2 or s_arr.shape[0] != s_arr.shape[1]:
        raise ValueError(f"s must be (N, N), got {s_arr.shape}")
    N = s_arr.shape[0]
    G = np.asarray(G_blocks, dtype=np.float64)
    if G.ndim == 4:
        if G.shape[:2] != (N, N) or G.shape[2] != G.shape[3]:
            raise ValueError(f"G_blocks must be (N, N, k, k) with N={N}, got {G.shape}")
        k = G.shape[2]
        G4 = G
    elif G.ndim == 2 and G.shape[0] == G.shape[1] and G.shape[0] % N == 0:
        k = G.shape[0] // N
        G4 = G.reshape(N, k, N, k).transpose(0, 2, 1, 3)
    else:
        raise ValueError(f"G_blocks must be (N, N, k, k) or (N*k, N*k), got {G.shape}")
    if normalize:
        tr = np.array([np.trace(G4[i, i]) for i in range(N)]) / k
        scale = np.sqrt(np.abs(np.outer(tr, tr)))
        scale[scale == 0] = 1.0
        G4 = G4 / scale[:, :, None, None]
    return k, G4.transpose(0, 2, 1, 3).reshape(N * k, N * k)


def _kernel_s_panel(fig, a1, s_arr, labels) -> None:
    """Panel 1: the representation scalars s as a heatmap (values written in for N <= 8)."""
    N = s_arr.shape[0]
    vmax_s = float(np.nanmax(np.abs(s_arr))) if s_arr.size else 1.0
    if np.nanmin(s_arr) >= 0:
        im1 = a1.imshow(s_arr, cmap="viridis", vmin=0, vmax=vmax_s or 1.0)
    else:
        im1 = a1.imshow(s_arr, cmap="RdBu_r", vmin=-vmax_s, vmax=vmax_s)
    fig.colorbar(im1, ax=a1, shrink=0.8, label="s(c_i, c_j)")
    a1.set_title("Representation component: s  (R = s·I)")
    a1.grid(False)
    ticks = np.arange(N)
    if labels is not None and len(labels) == N:
        a1.set_xticks(ticks, [str(l) for l in labels], rotation=45, ha="right")
        a1.set_yticks(ticks, [str(l) for l in labels])
    else:
        a1.set_xticks(ticks)
        a1.set_yticks(ticks)
    if N <= 8:
        for i in range(N):
            for j in range(N):
                v = s_arr[i, j]
                a1.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="white" if (np.nanmin(s_arr) >= 0 and v < 0.6 * vmax_s) else "black")
    a1.set_xlabel("context j")
    a1.set_ylabel("context i")


def _kernel_g_panel(fig, a2, big, N, k, labels, tokens, normalize) -> None:
    """Panel 2: the assembled G map with block separators; token names per block when the map is small."""
    vmax_g = float(np.nanmax(np.abs(big))) if big.size else 1.0
    im2 = a2.imshow(big, cmap="RdBu_r", vmin=-(vmax_g or 1.0), vmax=vmax_g or 1.0, interpolation="nearest")
    fig.colorbar(im2, ax=a2, shrink=0.8, label="G (tr-normalised)" if normalize else "G")
    a2.set_title(f"Gradient component: G blocks ({k}×{k} tokens)")
    a2.grid(False)
    for b in range(1, N):
        a2.axhline(b * k - 0.5, color="k", lw=0.8)
        a2.axvline(b * k - 0.5, color="k", lw=0.8)
    centres = np.arange(N) * k + (k - 1) / 2
    ctx = [str(l) for l in labels] if labels is not None and len(labels) == N else [str(i) for i in range(N)]
    if tokens is not None and len(tokens) == k and N * k <= 48:
        pos = np.arange(N * k)
        a2.set_xticks(pos, [str(t) for t in tokens] * N, fontsize=6, rotation=90)
        a2.set_yticks(pos, [str(t) for t in tokens] * N, fontsize=6)
        a2.set_xlabel("token (within context block j)")
        a2.set_ylabel("token (within context block i)")
        # the blocks by number (the s panel names them "i: label"); whole labels would collide over small blocks
        num = [f"context {i}" for i in range(N)] if labels is not None else ctx
        top = a2.secondary_xaxis("top")
        top.set_xticks(centres, num, fontsize=7)
        top.tick_params(length=0)
        right = a2.secondary_yaxis("right")
        right.set_yticks(centres, num, fontsize=7, rotation=90, va="center")
        right.tick_params(length=0)
    else:
        rot = labels is not None
        a2.set_xticks(centres, ctx, rotation=45 if rot else 0, ha="right" if rot else "center")
        a2.set_yticks(centres, ctx)
        a2.set_xlabel("context j" + (f"  (tokens: {', '.join(map(str, tokens))})" if tokens is not None else ""))
        a2.set_ylabel("context i")


@styled
def plot_kernel(s, G_blocks, out, labels: Sequence[str] | None = None, tokens: Sequence[str] | None = None,
                normalize: bool = False) -> list[str]:
    """The kernel for a handful of contexts. Panel 1: the representation scalars s (N, N) (R = s · I). Panel 2:
    the gradient component, G_blocks (N, N, k, k) (block (i, j) over a k-token subset) assembled into an
    (N·k) × (N·k) heatmap with block separators; an (N·k, N·k) matrix is accepted as already assembled.
    normalize=True divides block (i, j) by sqrt(tr G_ii · tr G_jj) / k (so the diagonal blocks have unit
    mean diagonal). `labels`: N context names; `tokens`: k token names (shown when the map is small)."""
    s_arr = np.asarray(s, dtype=np.float64)
    k, big = _kernel_blocks(s_arr, G_blocks, normalize)
    fig, (a1, a2) = new_figure(2, width=4.8, height=4.3)
    numbered = None if labels is None else [f"{i}: {lab}" for i, lab in enumerate(labels)]
    _kernel_s_panel(fig, a1, s_arr, numbered)
    _kernel_g_panel(fig, a2, big, s_arr.shape[0], k, labels, tokens, normalize)
    fig.suptitle("Empirical NTK for a few contexts: K = R + G")
    return save(fig, out)


def plot_one_step_split(res: Mapping[str, Any], out) -> list[str]:
    """The one-step experiment's R vs G split (left: per-probe norms of Δz_R, Δz_G (, Δz_X) and the real Δz) and
    Proposition 2 (right: real Δ log π(y_u | c_o) against s(c_o, c_u) for single positive-advantage samples), from
    the result dict of ntkdyn.experiments.one_step.run. Writes out.png and out.pdf; returns the paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pp = res["per_probe"]
    nR, nG, nA = (np.asarray(pp[k]) for k in ("norm_dz_R", "norm_dz_G", "norm_dz_actual"))
    nX = None if pp["norm_dz_X"] is None else np.asarray(pp["norm_dz_X"])
    fig = Figure(figsize=(12.0, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
    idx = np.arange(len(nR))
    parts = [(nR, "‖Δz_R‖ representation", "#55a868"), (nG, "‖Δz_G‖ gradient", "#c44e52")]
    if nX is not None:
        parts.append((nX, "‖Δz_X‖ tied cross", "#8172b2"))
    parts.append((nA, "‖Δz‖ real", "#4c4c4c"))
    w = 0.8 / len(parts)
    for i, (v, label, color) in enumerate(parts):
        ax.bar(idx + (i - (len(parts) - 1) / 2) * w, v, width=w, color=color, label=label)
    for i, k in enumerate(pp["kind"]):
        if k == "prompt":
            ax.axvline(i - 0.5, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("probe context (grey line: a new held-out prompt; its first probe is the last prompt position)")
    ax.set_ylabel("norm over the vocabulary")
    ax.set_title(f"R vs G split of one SGD step (lr={res['lr']:g}): R share {res['share_representation']:.2f}, "
                 f"G share {res['share_gradient']:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    p2 = res["prop2"]
    for smp in p2["samples"]:
        ax2.scatter(smp["s"], smp["dlogp_y_actual"], s=14, alpha=0.7,
                    label=f"y_u = {smp['token']!r} (A = {smp['advantage']:.2f})")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_xlabel("s(c_o, c_u) = h_o · h_u")
    ax2.set_ylabel("real Δ log π(y_u | c_o)")
    ax2.set_title(f"Prop. 2: single samples with A > 0, held-out probes\nΔ log π(y_u) > 0 at "
                  f"{100 * p2['frac_logp_y_up']:.0f}%, argmax Δz_R = y_u at {100 * p2['frac_argmax_dzR_is_y']:.0f}%,"
                  f"\ns > 0 at {100 * p2['frac_s_positive']:.0f}% of (sample, probe) pairs", fontsize=9)
    ax2.legend(fontsize=7)
    return save(fig, out)


BASE_COLOR = "0.2"  # the base policy of pass@k figures (the recipes keep their RECIPE_COLORS)


@styled
def plot_pass_at_k(curves: Mapping[str, Any], out, reference: str | None = None,
                   crossings: Mapping[str, Sequence[int]] | None = None, title: str | None = None) -> list[str]:
    """pass@k against k = 1..n (log2 axis): one line per label with a ± std band over seeds. `curves`: {label:
    (mean (n,), std (n,), n_seeds)}. With a `reference` label, a second panel shows each other label's mean minus
    the reference's (below 0: fewer prompts solved within k samples); `crossings` {label: [k, ...]} (where it
    crosses 0) are marked with dotted lines."""
    if not curves:
        raise ValueError("plot_pass_at_k needs at least one curve")
    ref = None if reference is None else np.asarray(curves[reference][0], np.float64)
    fig, axes = new_figure(2 if ref is not None and len(curves) > 1 else 1, width=4.6, height=3.4)
    for label, (mean, std, n) in curves.items():
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        k = np.arange(1, mean.size + 1)
        color = BASE_COLOR if label == "base" else recipe_color(label)
        seeds = f"{n} seed" + ("s" if n != 1 else "")
        band(axes[0], k, mean, std, np.full(k.shape, int(n)), color, label=f"{recipe_label(label)} ({seeds})")
        if len(axes) > 1 and label != reference:
            diff = mean - ref
            axes[1].plot(k, diff, color=color, lw=1.6, label=recipe_label(label))
            for kc in (crossings or {}).get(label, []):
                axes[1].axvline(kc, color=color, ls=":", lw=1.0)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("k (samples per prompt)")
    axes[0].set_ylabel("pass@k (unbiased, mean over prompts)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(loc="lower right")
    axes[0].set_title(title or "pass@k")
    if len(axes) > 1:
        axes[1].axhline(0, color=BASE_COLOR, lw=1.0)
        axes[1].set_ylabel(f"pass@k − pass@k of {recipe_label(reference)}")
        axes[1].set_title(f"Difference to {recipe_label(reference)} (dotted: crossings)")
        axes[1].legend(loc="best")
    return save(fig, out)


VERDICT_COLORS = {"supported": "#2a9d4b", "not supported": "#c0392b", "inconclusive": "#e69f00"}


@styled
def plot_claims(claim_lists: Mapping[str, Sequence[Mapping[str, Any]]], out, ncols: int = 4) -> list[str]:
    """The evidence of every v3 claim (fig_claims): one panel per effect (a claim of several effects has several
    panels, titled "claim: effect"), each model a row: its mean with the 95 % CI as an error bar, coloured by the
    effect's verdict (VERDICT_COLORS), the threshold as a dashed vertical line and the claim's side shaded; an effect
    whose verdict an independent rerun keeps with probability below stats.FRAGILE (its "rerun" record, or
    stats.rerun of its mean, s and n for a record written before it had one) is labelled with that probability.
    `claim_lists`: {model label: the claim records of reproduce.claims.claims} (only records with "effects" are
    drawn; a model lacking an effect, or with an effect of fewer than 2 items, shows its point without a bar or
    "n/a"). Raises ValueError when no record has effects."""
    models = list(claim_lists)
    panels: dict[tuple[str, str], dict] = {}
    for m in models:
        for c in claim_lists[m]:
            for e in c.get("effects") or []:
                panels.setdefault((c["n"], e["name"]), {})[m] = e
    if not panels:
        raise ValueError("plot_claims needs claim records with effects (reproduce.claims, version 3)")
    keys = list(panels)
    nrows = -(-len(keys) // ncols)
    fig, axes = new_figure(ncols, nrows, width=3.6, height=0.55 + 0.42 * max(len(models), 1) + 0.9)
    for ax, key in zip(axes, keys):
        effs = panels[key]
        thr = next(iter(effs.values()))["threshold"]
        side = next(iter(effs.values()))["side"]
        xs = [v for e in effs.values() for v in (e["lo"], e["hi"], e["mean"]) if np.isfinite(v)] + [thr]
        lo, hi = min(xs), max(xs)
        pad = 0.1 * (hi - lo) if hi > lo else max(abs(thr), 1.0) * 0.1
        ax.set_xlim(lo - pad, hi + pad)
        if side == "above":
            ax.axvspan(thr, hi + pad, color="0.92", zorder=0)
        else:
            ax.axvspan(lo - pad, thr, color="0.92", zorder=0)
        ax.axvline(thr, color="0.3", ls="--", lw=1.0)
        for row, m in enumerate(models):
            e = effs.get(m)
            y = len(models) - 1 - row
            if e is None or not np.isfinite(e["mean"]):
                ax.text(thr, y, "n/a", ha="center", va="center", fontsize=7, color="0.4")
                continue
            color = VERDICT_COLORS.get(e["verdict"], "0.4")
            if np.isfinite(e["lo"]) and np.isfinite(e["hi"]):
                ax.errorbar([e["mean"]], [y], xerr=[[e["mean"] - e["lo"]], [e["hi"] - e["mean"]]], fmt="o",
                            color=color, ms=4, capsize=3, lw=1.4)
            else:
                ax.plot([e["mean"]], [y], "o", color=color, ms=4)
            r = e.get("rerun") or (rerun(e["mean"], e["s"], e["n"], e["threshold"], e["side"])
                                    if "s" in e and e.get("n", 0) >= 2 else None)  # a record made before v3's rerun
            same = None if r is None else r.get(e["verdict"])
            if same is not None and same < FRAGILE:
                ax.text(0.98, y + 0.25, f"rerun keeps it: {100 * same:.0f} %", transform=ax.get_yaxis_transform(),
                        ha="right", va="bottom", fontsize=6, color="0.35")
        ax.set_yticks(range(len(models)))
        ax.set_yticklabels([f"{m} (n={effs[m]['n']})" if m in effs else m for m in reversed(models)], fontsize=7)
        ax.set_ylim(-0.7, len(models) - 0.3)
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=7.5)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    handles = [ax.errorbar([], [], xerr=[], fmt="o", color=c, label=v) for v, c in VERDICT_COLORS.items()
               for ax in axes[:1]]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8,
               title="mean and 95 % CI (t, over seeds or items); dashed: threshold; shaded: the claim's side; "
                     f"a verdict a rerun keeps with under {100 * FRAGILE:.0f} % probability is labelled")
    return save(fig, out)
