"""Figures: one consistent style, labelled axes, error bands. Every function returns the Axes it drew on.

The style itself (a colour per pooling, human axis labels, ``check_figure``) lives in ``reporting/style.py`` and
is re-exported here, so a notebook needs only ``plots``. Each chapter's plotting helpers live here (append new
ones at the end of this file); the claims forest plot (``plot_claims``) closes it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from spikehijack.reporting.style import (  # noqa: F401  (re-exported: the notebooks' one import is ``plots``)
    AXIS_LABELS,
    BARE_TITLES,
    VERDICT_COLORS,
    FigureStyleError,
    axis_label,
    check_figure,
    color_for,
    looks_like_identifier,
    palette,
    pooling_key,
)

#: Fixed colours of the paper's three poolings (kept for old callers; ``color_for`` covers every pooling).
POOLING_COLORS = {lab: color_for(lab) for lab in ("MaxSim", "Top-4", "Mean")}


def setup_style() -> None:
    """Seaborn whitegrid, readable sizes, vector-friendly defaults."""
    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold", "figure.figsize": (6, 4)})


def line_with_band(
    ax: plt.Axes, df: pd.DataFrame, x: str, y: str, hue: str, band: tuple[str, str] = ("ci_low", "ci_high")
) -> plt.Axes:
    """One line per ``hue`` value with a shaded interval between the two ``band`` columns."""
    for label, g in df.groupby(hue, sort=False):
        g = g.sort_values(x)
        (line,) = ax.plot(g[x], g[y], marker="o", ms=3, label=str(label), color=color_for(str(label)))
        ax.fill_between(g[x], g[band[0]], g[band[1]], alpha=0.2, color=line.get_color())
    ax.set_xlabel(axis_label(x, default=x))
    ax.set_ylabel(axis_label(y, default=y))
    ax.legend(title=None if hue in BARE_TITLES else hue.replace("_", " "))
    return ax


# ---------------------------------------------------------------- notebook 01 (theory)


def plot_gini_vs_length(ax: plt.Axes, df: pd.DataFrame, bound: bool = True) -> plt.Axes:
    """Gini of g_j against M (log scale), one line per pooling with its 95% band; MaxSim's 1 - T/M dashed.

    ``df`` is a ``ch01_theory.gini_sweep`` table (pooling, M, mean, ci_low, ci_high, maxsim_bound).
    """
    line_with_band(ax, df, "M", "mean", "pooling")
    if bound:
        b = df.drop_duplicates("M").sort_values("M")
        ax.plot(b["M"], b["maxsim_bound"], ls="--", color="black", lw=1, label="bound 1 - T/M")
        ax.legend(title="pooling", fontsize="small")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("document length M (patches)")
    ax.set_ylabel("Gini of patch gradients $g_j$")
    ax.set_ylim(-0.02, 1.02)
    return ax


def plot_noise_growth(
    ax: plt.Axes,
    mc: pd.DataFrame,
    curves: dict[str, tuple[list[int], list[float]]] | None = None,
    levels: dict[str, float] | None = None,
) -> plt.Axes:
    """Monte-Carlo pooled noise against M (log scale) with 95% bands, plus closed-form curves (dashed).

    ``mc`` is a ``ch01_theory.noise_pool_monte_carlo`` table; ``curves`` maps a label to (Ms, values);
    ``levels`` maps a label to a constant (e.g. a large-M limit), drawn as a dotted horizontal line.
    """
    line_with_band(ax, mc, "M", "mean", "pooling")
    for label, (xs, ys) in (curves or {}).items():
        ax.plot(xs, ys, ls="--", lw=1.2, label=label)
    for label, y in (levels or {}).items():
        ax.axhline(y, ls=":", lw=1.2, color="black", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of noise patches M")
    ax.set_ylabel("expected pooled similarity")
    ax.legend(fontsize="small")
    return ax


# --- synthetic world (notebooks 02 and 03) ---------------------------------------------------------------

POOLING_COLORS.setdefault("Softmax τ=1", color_for("Softmax τ=1"))


def plot_similarity_matrix(ax: plt.Axes, S, title: str, xlabel: str, ylabel: str, vmin: float = -1.0,
                           vmax: float = 1.0) -> plt.Axes:
    """A similarity matrix (e.g. concept bank C x C, or S [T, M] of one query and one document) as a heatmap."""
    im = ax.imshow(S, cmap="RdBu_r", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_curves(ax: plt.Axes, summary: pd.DataFrame, x: str, ylabel: str, title: str = "") -> plt.Axes:
    """Lines with 95 % bands from a ``ch02_spikes.curves`` table (columns label, x, mean, ci_low, ci_high)."""
    line_with_band(ax, summary, x, "mean", "label")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def plot_patch_gradients(ax: plt.Axes, g, kinds, title: str) -> plt.Axes:
    """Stem plot of one document's patch gradient norms g [M], coloured by patch kind names [M]."""
    g, kinds = np.asarray(g), np.asarray(kinds)
    colors = {"support": "#1f77b4", "filler": "#bbbbbb", "shared": "#ff7f0e", "spike": "#d62728"}
    for k in dict.fromkeys(kinds.tolist()):
        idx = np.flatnonzero(kinds == k)
        ax.vlines(idx, 0, g[idx], color=colors.get(k, "k"), label=k)
        ax.plot(idx, g[idx], "o", ms=3, color=colors.get(k, "k"))
    ax.set_xlabel("patch index j")
    ax.set_ylabel(axis_label("g_j"))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


# --- beyond the paper (notebook 05) ------------------------------------------------------------------------


def plot_frontier(ax: plt.Axes, table: pd.DataFrame, x: str, y: str, title: str = "",
                  labels: dict[str, str] | None = None, new: tuple[str, ...] = ()) -> plt.Axes:
    """One labelled point per pooling (``ch05_findings.frontier_table``): e.g. Gini against clean or injected R@1.

    Poolings named in ``new`` are drawn as stars; Pareto-optimal ones (column ``pareto``) get a black edge.
    """
    for row in table.itertuples(index=False):
        spec = str(row.pooling)
        label = (labels or {}).get(spec, spec)
        edge = "black" if bool(getattr(row, "pareto", False)) else "none"
        ax.scatter(getattr(row, x), getattr(row, y), s=90 if spec in new else 50, marker="*" if spec in new else "o",
                   color=color_for(label), edgecolors=edge, linewidths=1.0, zorder=3)
        ax.annotate(label, (getattr(row, x), getattr(row, y)), textcoords="offset points", xytext=(4, 3),
                    fontsize="x-small")
    ax.set_xlabel(axis_label(x, default=x))
    ax.set_ylabel(axis_label(y, default=y))
    ax.set_title(title)
    return ax


def plot_swap_vs_retrained(ax: plt.Axes, table: pd.DataFrame, metric: str, title: str = "") -> plt.Axes:
    """Grouped bars with 95 % CIs from ``ch05_findings.retraining_table``: one group per pooling, swap vs retrained."""
    pools = list(dict.fromkeys(table["pooling"]))
    modes = ["swap", "retrained"]
    width = 0.38
    for k, mode in enumerate(modes):
        sub = table[table["mode"] == mode].set_index("pooling")
        xs, ys, err = [], [], [[], []]
        for i, p in enumerate(pools):
            if p in sub.index and metric in sub.columns and not np.isnan(sub.loc[p, metric]):
                xs.append(i + (k - 0.5) * width)
                ys.append(sub.loc[p, metric])
                err[0].append(sub.loc[p, metric] - sub.loc[p, f"{metric}_low"])
                err[1].append(sub.loc[p, f"{metric}_high"] - sub.loc[p, metric])
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=mode, color=["#9ecae1", "#3182bd"][k])
    ax.set_xticks(range(len(pools)), pools, rotation=20, fontsize="small")
    ax.set_ylabel(axis_label(metric, default=metric))
    ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


# ---- notebook 04 (real benchmark) ------------------------------------------------------------------------

def real_color(label: str) -> str | None:
    """Same as ``color_for`` (kept for notebook 04): one colour per pooling in every world."""
    return color_for(label)


def plot_injection(ax: plt.Axes, summary: pd.DataFrame, y: str = "retained", title: str = "",
                   legend: bool = True) -> plt.Axes:
    """``summary`` rows (kind, pooling, K, y): one line per pooling, solid for spikes, dashed for Gaussian.
    The legend (if any) goes outside the axes, on the right."""
    for (kind, label), g in summary.groupby(["kind", "pooling"], sort=False):
        g = g.sort_values("K")
        ax.plot(g.K, g[y], marker="o", ms=3, ls="-" if kind == "spike" else "--", color=real_color(str(label)),
                label=f"{label} ({kind})")
    ax.set_xlabel("injected patches per non-gold document K")
    ax.set_ylabel(axis_label(y, default=y))
    ax.set_title(title)
    if legend:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax


def plot_token_selection(ax: plt.Axes, example: dict, title: str = "", max_tokens: int = 12,
                         labels: bool = True, colorbar: bool = True) -> plt.Axes:
    """Figure-2 style: similarities of each query token [T] to the document's M patches and K injected ones,
    with the arg-max before (white circle) and after injection (black cross); the dashed line separates them.
    ``colorbar``: draw the similarity scale beside the panel (pass False for all but one of shared panels and
    add ``fig.colorbar(ax.images[0], ax=axes)`` yourself)."""
    S = example["S"][:max_tokens]
    im = ax.imshow(S, aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.0, interpolation="nearest")
    if colorbar:
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    rows = range(len(S))
    ax.scatter(example["before"][: len(S)], rows, s=40, facecolors="none", edgecolors="white", label="before")
    ax.scatter(example["after"][: len(S)], rows, s=40, marker="x", color="black", label="after")
    ax.axvline(example["M"] - 0.5, color="red", ls="--", lw=1)
    ax.set_xlabel(f"patch (0-{example['M'] - 1}: document, then {example['K']} injected)")
    ax.grid(False)
    if labels and example.get("tokens"):
        ax.set_yticks(list(rows), [t[:28] for t in example["tokens"][: len(S)]], fontsize="x-small")
    else:
        ax.set_ylabel("query token")
    ax.set_title(title)
    ax.legend(fontsize="x-small", loc="lower right")
    return ax


# ---- the claims figure (landing page, notebook 06) --------------------------------------------------------

#: Panels of the claims figure: (words in the quantity text, x-axis label, x limits or None for automatic).
CLAIM_PANELS = (
    (("gini",), "Gini of patch gradients (level, or difference between poolings)", (-0.35, 1.05)),
    (("retained",), "retained Recall@1 (attacked / clean, or difference)", (-0.2, 1.3)),
    (("selection", "arg-max", "hijack"), "share of arg-max selections on injected patches", (-0.05, 1.05)),
    (("recall@1", "r@1"), "Recall@1 (level, or difference)", (-1.05, 1.05)),
    (("finding",), "findings beyond the paper: difference in Recall@1", (-1.05, 1.05)),
    ((), "other quantity (unit in the claims table)", None),
)


def paper_number(text: object) -> tuple[float, float] | None:
    """The paper's value as (low, high) where it is numeric: ``"~0.78"`` -> (0.78, 0.78), ``"27.8 % (real)"`` ->
    (0.278, 0.278), ``"0.33-0.38"`` -> (0.33, 0.38); None for a direction or words (``"> 0"``, ``"stable"``).

    >>> paper_number("~0.78"), paper_number("0.28-0.30 for k=1,4,16 (real)"), paper_number("> 0 (p < 1e-80)")
    ((0.78, 0.78), (0.28, 0.3), None)
    """
    import re

    m = re.match(r"\s*[~≈]?\s*([+-]?\d*\.?\d+)\s*(?:-\s*(\d*\.?\d+))?\s*(%)?", str(text))
    if not m or str(text).strip()[:1] in "<>":
        return None
    lo, hi = float(m.group(1)), float(m.group(2) or m.group(1))
    return (lo / 100, hi / 100) if m.group(3) else (lo, hi)


def _claim_panel(claim: str, quantity: str) -> int:
    q = "finding" if claim.startswith("B") else quantity.lower()
    return next(i for i, (words, _, _) in enumerate(CLAIM_PANELS) if not words or any(w in q for w in words))


def plot_claims(ax_or_fig, claims: pd.DataFrame, max_label: int = 64) -> list[plt.Axes]:
    """Forest plot of a claims table (``claims.COLUMNS``): one row per claim link and world, our estimate (dot)
    with its 95 % interval (bar) coloured by verdict, the paper's number (open diamond, or a black bar for a
    range) where it is numeric. Given a Figure: one panel per kind of quantity (Gini, retained recall, share of
    selections, Recall@1, findings beyond the paper, other; ``CLAIM_PANELS``), sized to its rows; given an Axes:
    every row on it (pass one kind).
    Values beyond a panel's limits are drawn at its edge as an arrow with the number. Returns the axes."""
    df = claims.reset_index(drop=True).copy()
    df["panel"] = [_claim_panel(str(c), str(q)) for c, q in zip(df["claim"], df["quantity"], strict=True)]
    if isinstance(ax_or_fig, plt.Axes):
        fig, groups = ax_or_fig.figure, [(ax_or_fig, df, None)]
    else:
        fig = ax_or_fig
        kinds = [k for k in range(len(CLAIM_PANELS)) if (df["panel"] == k).any()]
        sizes = [int((df["panel"] == k).sum()) for k in kinds]
        fig.set_size_inches(9, 1.2 + 0.2 * sum(sizes) + 0.55 * len(kinds))
        axes = fig.subplots(len(kinds), 1, gridspec_kw={"height_ratios": [s + 2 for s in sizes]}, squeeze=False)
        groups = [(axes[i, 0], df[df["panel"] == k], k) for i, k in enumerate(kinds)]
    for ax, sub, kind in groups:
        _forest(ax, sub, kind, max_label)
    handles = [plt.Line2D([], [], marker="o", ls="-", color=VERDICT_COLORS[v], label=v)
               for v in VERDICT_COLORS if v in set(df["verdict"])]
    handles.append(plt.Line2D([], [], marker="D", ls="none", mfc="white", mec="black", label="paper's number"))
    fig.legend(handles=handles, loc="upper center", ncol=4, fontsize="small", frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
    return [g[0] for g in groups]


def _forest(ax: plt.Axes, sub: pd.DataFrame, kind: int | None, max_label: int) -> None:
    xlabel, lims = ("claim quantity", None) if kind is None else CLAIM_PANELS[kind][1:]
    ys = np.arange(len(sub))[::-1]
    for y, r in zip(ys, sub.itertuples(index=False), strict=True):
        color = VERDICT_COLORS.get(str(r.verdict), "black")
        lo, hi, est = float(r.ci_low), float(r.ci_high), float(r.ours)
        if lims:
            clo, chi = np.clip([lo, hi, est], *lims)[:2], np.clip(est, *lims)
            ax.plot(clo, [y, y], color=color, lw=2, solid_capstyle="butt")
            ax.plot(chi, y, "o", color=color, ms=5, zorder=3)
            if not lims[0] <= est <= lims[1] or not lims[0] <= hi <= lims[1] or not lims[0] <= lo <= lims[1]:
                edge = lims[1] if max(est, hi) > lims[1] else lims[0]
                ax.plot(edge, y, ">" if edge == lims[1] else "<", color=color, ms=6, zorder=3)
                ax.annotate(f"{est:.3g} [{lo:.3g}, {hi:.3g}]", (edge, y), xytext=(-6 if edge == lims[1] else 6, 4),
                            textcoords="offset points", ha="right" if edge == lims[1] else "left",
                            fontsize="xx-small", color=color)
        else:
            ax.plot([lo, hi], [y, y], color=color, lw=2, solid_capstyle="butt")
            ax.plot(est, y, "o", color=color, ms=5, zorder=3)
        paper = paper_number(r.paper)
        if paper is not None and (not lims or lims[0] <= paper[0] <= lims[1]):
            if paper[0] == paper[1]:
                ax.plot(paper[0], y, "D", mfc="white", mec="black", ms=5, zorder=4)
            else:
                ax.plot(paper, [y, y], color="black", lw=3, alpha=0.6, solid_capstyle="butt", zorder=4)
    labels = [_claim_row_label(r, max_label) for r in sub.itertuples(index=False)]
    ax.set_yticks(ys, labels, fontsize="x-small")
    ax.set_ylim(-0.7, len(sub) - 0.3)
    ax.axvline(0, color="0.4", lw=0.8, ls="--", zorder=1)
    if lims:
        ax.set_xlim(*lims)
    ax.set_xlabel(xlabel, fontsize="small")
    ax.grid(axis="y", visible=False)


def _claim_row_label(r, max_label: int) -> str:
    import re

    reading = re.search(r"\((\w+) reading\)", str(r.quantity))  # claim 1 is measured in two readings
    text = f"{r.claim} · {r.link} ({r.world}{', ' + reading.group(1) + ' reading' if reading else ''})"
    return text if len(text) <= max_label else text[: max_label - 1] + "…"
