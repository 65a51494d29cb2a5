"""The claims figure (landing page, notebook 06): a forest plot of every claim link, ours with its interval and
the paper's number, coloured by verdict. Re-exported by ``plots``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from spikehijack.reporting.style import VERDICT_COLORS

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
