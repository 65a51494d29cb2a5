"""Notebook 04's figures (the real benchmark): injection curves, gold-pair Gini against length, the length
sweep, quality bars and the rebuilt Figure 2. Re-exported by ``plots`` (the notebooks' one import)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from spikehijack.reporting import evidence
from spikehijack.reporting.marks import legend_outside, wrapped
from spikehijack.reporting.stats import bounds_for, wilson_ci
from spikehijack.reporting.style import axis_label, color_for, pooling_key, pooling_label


def real_color(label: str) -> str | None:
    """Same as ``color_for`` (kept for notebook 04): one colour per pooling in every world."""
    return color_for(label)


def plot_injection(ax: plt.Axes, summary: pd.DataFrame, y: str = "retained", title: str = "",
                   legend: bool = True, per_query: pd.DataFrame | None = None, xscale: str = "linear") -> plt.Axes:
    """``summary`` rows (kind, pooling, K, y): one line per pooling, solid for spikes, dashed for Gaussian, in
    the pooling's colour, with a 95 % band where ``summary`` has ``y_low`` / ``y_high`` columns
    (``evidence.curves``) or ``per_query`` (the per-query injection table) is given to compute them
    (hierarchical bootstrap over seeds and queries). A retained-recall axis that reaches beyond 2 is drawn
    linear up to 1 and logarithmic above (symlog), so that collapse near 0 and a length effect of 10x both
    read. The legend (if any) goes outside the axes, on the right. ``xscale="symlog"``: K on a log scale
    (linear from 0 to 25)."""
    if per_query is not None:
        bands = evidence.curves(per_query, (y,))
        summary = summary.drop(columns=[c for c in (f"{y}_low", f"{y}_high") if c in summary.columns]).merge(
            bands[["kind", "pooling", "K", f"{y}_low", f"{y}_high"]], on=["kind", "pooling", "K"], how="left")
    has_band = {f"{y}_low", f"{y}_high"} <= set(summary.columns)
    for (kind, pooling), g in summary.groupby(["kind", "pooling"], sort=False):
        g = g.sort_values("K")
        name = pooling_label(str(pooling))
        color = color_for(name)
        ax.plot(g.K, g[y], marker="o", ms=3, ls="-" if kind == "spike" else "--", color=color,
                label=f"{name} ({kind})", zorder=3)
        if has_band:
            ax.fill_between(g.K, g[f"{y}_low"], g[f"{y}_high"], color=color, alpha=0.15 if kind == "spike" else 0.08,
                            lw=0, zorder=2)
    ax.set_xlabel("injected patches per non-gold document K")
    ax.set_ylabel(wrapped(axis_label(y, default=y), 30))
    ax.set_title(title)
    if xscale == "symlog":
        ks = sorted(summary["K"].unique())
        ax.set_xscale("symlog", linthresh=min([k for k in ks if k > 0] or [1]), linscale=0.6)
        ax.set_xticks(ks, [str(int(k)) for k in ks])
        ax.minorticks_off()
    lo, hi = (bounds_for(y) or (None, None))
    top = float(np.nanmax(summary[f"{y}_high"] if has_band else summary[y]))
    if y.endswith("retained") and top > 2:
        ax.set_yscale("symlog", linthresh=1, linscale=2.0)
        ticks = [t for t in (0, 0.25, 0.5, 0.75, 1, 2, 5, 10, 20, 50, 100) if t <= top * 1.2]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.axhline(1, color="0.3", lw=0.8, ls=":", zorder=1)
        ax.set_ylabel(wrapped(axis_label(y, default=y) + "; log scale above 1", 30))
    if lo == 0:
        ax.set_ylim(bottom=-0.03 * max(1.0, min(top, 1.0)))
    if hi == 1:
        ax.set_ylim(top=1.03)
    if legend:
        legend_outside(ax, fontsize="x-small")
    return ax


def plot_gold_gini(ax: plt.Axes, gi: pd.DataFrame, order: list[str], loss: str = "pair", title: str = "") -> plt.Axes:
    """Per-query gold-pair Gini (``ch04.gold_pair_gini``) against the gold document's length M, one colour per
    pooling in ``order``, with MaxSim's structural bound 1 - T/M at the median query length; log-x."""
    for lab in order:
        g = gi[(gi.loss == loss) & (gi.pooling == lab)]
        ax.scatter(g.gold_len, g.gini, s=8, alpha=0.6, label=lab, color=real_color(lab))
    m = np.arange(1, gi.gold_len.max() + 1)
    ax.plot(m, np.clip(1 - np.median(gi.query_len) / m, 0, None), "k--", lw=1, label="1 - T/M (median T)")
    ax.set(xscale="log", xlabel="gold document length M (patches)", ylabel=f"Gini of patch gradients ({loss} loss)",
           title=title)
    ax.legend(fontsize="x-small")
    return ax


def plot_token_selection(ax: plt.Axes, example: dict, title: str = "", max_tokens: int = 12,
                         labels: bool = True, colorbar: bool = True) -> plt.Axes:
    """Figure-2 style: similarities of each query token [T] to the document's M patches and K injected ones,
    with the arg-max before (white circle) and after injection (black cross); the dashed line separates them.
    Both panels of a pair name their rows the same way: "query phrase i" on the y axis, the row numbers as
    ticks, and (``labels``) the phrase's text after its number.
    ``colorbar``: draw the similarity scale beside the panel (pass False for all but one of shared panels and
    add ``fig.colorbar(ax.images[0], ax=axes)`` yourself)."""
    S = example["S"][:max_tokens]
    im = ax.imshow(S, aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.0, interpolation="nearest")
    if colorbar:
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    rows = range(len(S))
    ax.scatter(example["before"][: len(S)], rows, s=40, facecolors="none", edgecolors="white", linewidths=1.2,
               label="arg-max before injection")
    ax.scatter(example["after"][: len(S)], rows, s=40, marker="x", color="black", label="arg-max after injection")
    ax.axvline(example["M"] - 0.5, color="red", ls="--", lw=1)
    ax.set_xlabel(f"patch (0-{example['M'] - 1}: document, then {example['K']} injected)")
    ax.grid(False)
    tokens = list(example.get("tokens") or [])[: len(S)]
    ticks = [f"{i}  {tokens[i][:26]}" if labels and i < len(tokens) else str(i) for i in rows]
    ax.set_yticks(list(rows), ticks, fontsize="x-small")
    ax.set_ylabel("query phrase i")
    # the markers' key goes under the title: a legend inside would hide cells, a white circle on white is unseen
    ax.set_title(f"{title}\n" if title else "", loc="left", fontsize="medium")
    ax.set_title("○ arg-max before injection    × arg-max after", loc="right", fontsize="x-small",
                 fontweight="normal")
    return ax


#: Reader's names of the real benchmark's tasks (``tasks.build_*``), for legends.
TASK_NAMES = {"hpo-dx": "HPO-Dx", "hpo-dx+head": "HPO-Dx", "hpo-syn2def": "Syn2Def"}


def plot_quality(ax: plt.Axes, quality: pd.DataFrame, metric: str = "recall@1",
                 n_queries: int | Mapping[str, int] | None = None) -> plt.Axes:
    """Grouped bars of ``metric`` from a ``ch04.evaluate`` table (task, pooling, spec, metric, value, model):
    one group per pooling (the softmax of every model in one slot, its tau written on the bar), one bar per
    task and model, in greys (the colours belong to poolings). ``n_queries`` (one number, or per model): a 95 %
    Wilson interval on each bar (a Recall@k is a share of n independent queries)."""
    t = quality[quality["metric"] == metric].copy()
    t["slot"] = [("Softmax (validated τ)" if pooling_key(p)[0] == "Softmax" else str(p))
                 for p in t["pooling"]]
    t["group"] = [f"{TASK_NAMES.get(a, a)}, {m}" for a, m in zip(t["task"], t["model"], strict=True)]
    slots, groups = list(dict.fromkeys(t["slot"])), list(dict.fromkeys(t["group"]))
    greys = plt.get_cmap("Greys")(np.linspace(0.35, 0.85, max(2, len(groups))))
    width = 0.8 / len(groups)
    for k, grp in enumerate(groups):
        sub = t[t["group"] == grp].set_index("slot")
        xs = [i + (k - (len(groups) - 1) / 2) * width for i, sl in enumerate(slots) if sl in sub.index]
        vals = [float(sub.loc[sl, "value"]) for sl in slots if sl in sub.index]
        err = None
        n = n_queries.get(sub["model"].iloc[0]) if isinstance(n_queries, Mapping) else n_queries
        if n and bounds_for(metric) == (0.0, 1.0):
            ci = [wilson_ci(v, int(n)) for v in vals]
            err = [[max(0.0, v - lo) for v, (lo, _) in zip(vals, ci, strict=True)],
                   [max(0.0, hi - v) for v, (_, hi) in zip(vals, ci, strict=True)]]
        ax.bar(xs, vals, width, yerr=err, capsize=2, color=greys[k], label=grp, error_kw={"elinewidth": 0.8})
        for x0, sl in zip(xs, [sl for sl in slots if sl in sub.index], strict=True):
            if sl.startswith("Softmax"):
                tau = pooling_key(str(sub.loc[sl, "pooling"]))[1]
                ax.annotate(f"τ={tau}", (x0, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", rotation=90, fontsize="xx-small", color="white" if k else "black")
    ax.set_xticks(range(len(slots)), [wrapped(sl, 14) for sl in slots], fontsize="small")
    ax.set_xlabel("pooling")
    ax.set_ylabel(axis_label(metric, default=metric))
    if bounds_for(metric) == (0.0, 1.0):
        ax.set_ylim(0, 1.0)
    legend_outside(ax, fontsize="x-small")
    return ax


def plot_length_sweep(ax: plt.Axes, sweep: pd.DataFrame, n_queries: int, metric: str = "recall@1",
                      title: str = "") -> plt.Axes:
    """A ``ch04.length_sweep`` table (factor, pooling, metric, value): ``metric`` against the padding factor, one
    line per pooling with its 95 % Wilson band over ``n_queries`` queries; log2-x."""
    r = sweep[sweep["metric"] == metric].pivot_table(index="factor", columns="pooling", values="value", sort=False)
    for lab in r.columns:
        ci = np.array([wilson_ci(float(v), n_queries) for v in r[lab]])
        ax.plot(r.index, r[lab], marker="o", label=lab, color=color_for(str(lab)))
        ax.fill_between(r.index, ci[:, 0], ci[:, 1], color=color_for(str(lab)), alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="length factor (neutral real patches)", ylabel=axis_label(metric, default=metric), title=title)
    ax.legend(fontsize="small")
    return ax
