"""Figures: one consistent style, labelled axes, error bands. Every function returns the Axes it drew on.

The style itself (a colour per pooling, human axis labels, ``check_figure``) lives in ``reporting/style.py``, the
marks every figure shares (the paper's values, labels placed without overlap, legends outside the data) in
``reporting/marks.py`` and the claims forest plot (``plot_claims``) in ``reporting/forest.py``; all are
re-exported here, so a notebook needs only ``plots``. Each chapter's plotting helpers live here (append new ones
at the end of this file). Every estimate is drawn with its 95 % interval, kept inside the quantity's range.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from spikehijack.reporting.forest import CLAIM_PANELS, paper_number, plot_claims  # noqa: F401  (re-exported)
from spikehijack.reporting.marks import (  # noqa: F401  (re-exported)
    PlacedLabels,
    legend_outside,
    log_axis,
    paper_levels,
    paper_range,
    place_labels,
    wrapped,
)
from spikehijack.reporting.stats import bounds_for
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
    pooling_label,
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
        ax.plot(b["M"], b["maxsim_bound"], ls="--", color="black", lw=1, label="MaxSim bound 1 - T/M")
    legend_outside(ax, title="pooling")
    log_axis(ax, df["M"])
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


def _interval(row: Mapping, col: str, value: float) -> tuple[float, float]:
    """(value - low, high - value) from ``col_low`` / ``col_high`` of a row, (0, 0) where absent."""
    lo, hi = row.get(f"{col}_low", np.nan), row.get(f"{col}_high", np.nan)
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return 0.0, 0.0
    return max(0.0, value - lo), max(0.0, hi - value)


def plot_frontier(ax: plt.Axes, table: pd.DataFrame, x: str, y: str, title: str = "",
                  labels: dict[str, str] | None = None, new: tuple[str, ...] = (),
                  intervals: pd.DataFrame | None = None, connect: bool = False) -> plt.Axes:
    """One point per pooling (``ch05_findings.frontier_table`` or ``ch03.frontier_table``): e.g. Gini against
    clean or injected R@1, each with its 95 % interval in x and y where ``intervals`` gives one (a table with a
    ``pooling`` column and ``m_low`` / ``m_high`` columns: ``ch05_findings.seed_intervals``,
    ``ch03.frontier_intervals``). Poolings named in ``new`` are stars; Pareto-optimal ones (column ``pareto``)
    get a black edge. ``connect``: a thin line through each family with a parameter (softmax by tau, Top-k by
    k), in parameter order. Labels are placed where they overlap nothing (``place_labels``)."""
    rows = table.to_dict("records")
    if intervals is not None:
        extra = intervals.drop_duplicates("pooling").set_index("pooling")
        keep = [c for c in extra.columns if c.endswith(("_low", "_high"))]
        rows = [{**r, **extra.loc[r["pooling"], keep].to_dict()} if r["pooling"] in extra.index else r for r in rows]
    names = [(labels or {}).get(str(r["pooling"]), r.get("label") or pooling_label(str(r["pooling"]))) for r in rows]
    if connect:
        fams: dict[str, list[tuple[float, float, float]]] = {}
        for r, name in zip(rows, names, strict=True):
            fam, par = pooling_key(name)
            try:
                fams.setdefault(fam, []).append((float(par), float(r[x]), float(r[y])))
            except ValueError:
                continue
        for fam, pts in fams.items():
            if len(pts) > 1:
                pts.sort()
                mid = pts[len(pts) // 2][0]  # the family's middle member lends the line its colour
                ax.plot([p[1] for p in pts], [p[2] for p in pts], "-", lw=1.0, alpha=0.45, zorder=1,
                        color=color_for(f"Top-{mid:g}" if fam == "Top" else f"{fam} τ={mid:g}"))
    for r, name in zip(rows, names, strict=True):
        spec = str(r["pooling"])
        vx, vy = float(r[x]), float(r[y])
        star = spec in new
        ax.errorbar([vx], [vy], xerr=np.array(_interval(r, x, vx)).reshape(2, 1),
                    yerr=np.array(_interval(r, y, vy)).reshape(2, 1), fmt="none", ecolor=color_for(name) or "0.3",
                    elinewidth=1, alpha=0.6, capsize=2, zorder=2)
        ax.scatter(vx, vy, s=110 if star else 45, marker="*" if star else "o", color=color_for(name),
                   edgecolors="black" if bool(r.get("pareto", False)) else "none", linewidths=1.0, zorder=3)
    ax.set_xlabel(axis_label(x, default=x))
    ax.set_ylabel(wrapped(axis_label(y, default=y), 45))
    ax.set_title(title)
    for col, setter, getter in ((x, ax.set_xlim, ax.get_xlim), (y, ax.set_ylim, ax.get_ylim)):
        b = bounds_for(col)  # the axis may not suggest values the quantity cannot take
        if b is not None:
            lo, hi = getter()
            setter(max(lo, b[0] - 0.03 * (hi - lo)), min(hi, b[1] + 0.03 * (hi - lo)))
    place_labels(ax, [float(r[x]) for r in rows], [float(r[y]) for r in rows], names,
                 colors=[color_for(n) for n in names])
    return ax


def plot_swap_vs_retrained(ax: plt.Axes, table: pd.DataFrame, metric: str, title: str = "",
                           intervals: pd.DataFrame | None = None, legend: bool = True) -> plt.Axes:
    """Grouped bars with 95 % CIs from ``ch05_findings.retraining_table``: one group per pooling, swap vs retrained.

    ``intervals`` (``ch05_findings.seed_intervals``: train, pooling, mode, ``metric_low``, ``metric_high``)
    replaces the table's t-intervals over seeds (none with one seed) by bootstrap intervals over seeds and
    queries; either way an interval is clipped to the metric's range (``stats.bounds_for``)."""
    pools = list(dict.fromkeys(table["pooling"]))
    modes = [("swap", "swap (MaxSim-trained model)", "#9ecae1"), ("retrained", "retrained with the pooling", "#3182bd")]
    width = 0.38
    b = bounds_for(metric) or (-np.inf, np.inf)
    iv = None
    if intervals is not None:
        train = np.where(intervals["mode"] == "swap", "maxsim", intervals["pooling"])
        iv = intervals[intervals["train"] == train].set_index(["pooling", "mode"])
    for k, (mode, name, color) in enumerate(modes):
        sub = table[table["mode"] == mode].set_index("pooling")
        xs, ys, err = [], [], [[], []]
        for i, p in enumerate(pools):
            if p in sub.index and metric in sub.columns and not np.isnan(sub.loc[p, metric]):
                src = iv.loc[(p, mode)] if iv is not None and (p, mode) in iv.index else sub.loc[p]
                v = float(sub.loc[p, metric])
                lo, hi = np.clip([src[f"{metric}_low"], src[f"{metric}_high"]], *b)
                xs.append(i + (k - 0.5) * width)
                ys.append(v)
                err[0].append(max(0.0, v - lo))
                err[1].append(max(0.0, hi - v))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=name, color=color, error_kw={"elinewidth": 1})
        for x0, v in zip(xs, ys, strict=True):
            if v == 0:  # a measured zero, not a missing bar
                ax.annotate("0", (x0, 0), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize="x-small", color="0.3")
    ax.set_xticks(range(len(pools)), [pooling_label(p) for p in pools], fontsize="small")
    ax.set_ylabel(wrapped(axis_label(metric, default=metric), 34))
    ax.set_xlabel("pooling")
    ax.set_title(title)
    if b[0] == 0:
        ax.set_ylim(bottom=0)
    if legend:
        ax.legend(fontsize="x-small")
    return ax


from spikehijack.reporting.plots_real import (  # noqa: E402, F401  (notebook 04's figures, re-exported)
    TASK_NAMES,
    plot_gold_gini,
    plot_injection,
    plot_length_sweep,
    plot_quality,
    plot_token_selection,
    real_color,
)
