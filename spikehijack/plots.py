"""Figures: one consistent style, labelled axes, error bands. Every function returns the Axes it drew on.

Each chapter's plotting helpers live here (append new ones at the end of this file).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
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
