"""Figures: one consistent style, labelled axes, error bands. Every function returns the Axes it drew on.

Each chapter's plotting helpers live here (append new ones at the end of this file).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

#: Fixed colours so a pooling looks the same in every figure of the book.
POOLING_COLORS = {"MaxSim": "#d62728", "Top-4": "#1f77b4", "Mean": "#7f7f7f"}


def setup_style() -> None:
    """Seaborn whitegrid, readable sizes, vector-friendly defaults."""
    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold", "figure.figsize": (6, 4)})


def color_for(label: str) -> str | None:
    """The fixed colour of a pooling label, or None to let matplotlib choose."""
    return POOLING_COLORS.get(label)


def line_with_band(
    ax: plt.Axes, df: pd.DataFrame, x: str, y: str, hue: str, band: tuple[str, str] = ("ci_low", "ci_high")
) -> plt.Axes:
    """One line per ``hue`` value with a shaded interval between the two ``band`` columns."""
    for label, g in df.groupby(hue, sort=False):
        g = g.sort_values(x)
        (line,) = ax.plot(g[x], g[y], marker="o", ms=3, label=str(label), color=color_for(str(label)))
        ax.fill_between(g[x], g[band[0]], g[band[1]], alpha=0.2, color=line.get_color())
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(title=hue)
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

POOLING_COLORS.setdefault("Softmax τ=1", "#2ca02c")


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
    ax.set_xlabel("patch j")
    ax.set_ylabel("g_j")
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
    ax.set_xlabel(x)
    ax.set_ylabel(y)
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
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


# ---- notebook 04 (real benchmark) ------------------------------------------------------------------------

_REAL_EXTRA_COLORS = {"Top-1": "#9467bd", "Top-5": "#17becf", "Top-16": "#8c564b"}


def real_color(label: str) -> str | None:
    """``color_for`` plus fixed colours for Top-1/5/16 and any softmax label (green)."""
    if color_for(label):
        return color_for(label)
    if label.startswith("Softmax"):
        return "#2ca02c"
    return _REAL_EXTRA_COLORS.get(label)


def plot_injection(ax: plt.Axes, summary: pd.DataFrame, y: str = "retained", title: str = "",
                   legend: bool = True) -> plt.Axes:
    """``summary`` rows (kind, pooling, K, y): one line per pooling, solid for spikes, dashed for Gaussian.
    The legend (if any) goes outside the axes, on the right."""
    for (kind, label), g in summary.groupby(["kind", "pooling"], sort=False):
        g = g.sort_values("K")
        ax.plot(g.K, g[y], marker="o", ms=3, ls="-" if kind == "spike" else "--", color=real_color(str(label)),
                label=f"{label} ({kind})")
    ax.set_xlabel("injected patches per non-gold document K")
    ax.set_ylabel(y)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax


def plot_token_selection(ax: plt.Axes, example: dict, title: str = "", max_tokens: int = 12,
                         labels: bool = True) -> plt.Axes:
    """Figure-2 style: similarities of each query token [T] to the document's M patches and K injected ones,
    with the arg-max before (white circle) and after injection (black cross); the dashed line separates them."""
    S = example["S"][:max_tokens]
    ax.imshow(S, aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.0, interpolation="nearest")
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
