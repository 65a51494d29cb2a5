"""Marks every figure shares: the paper's reference values, labels placed without overlap, legends outside the
data, long axis labels wrapped, log axes ticked with plain numbers. Re-exported by ``plots``."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from spikehijack.reporting.style import color_for


def wrapped(text: str, width: int = 38) -> str:
    """An axis label broken into lines of at most ``width`` characters (long labels fit a short axis)."""
    return "\n".join(textwrap.wrap(text, width)) if len(text) > width else text


def legend_outside(ax: plt.Axes, **kw) -> None:
    """The axes' legend to the right of it, where it cannot hide data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **{"fontsize": "small", **kw})


def log_axis(ax: plt.Axes, values: Sequence[float], axis: str = "x", base: float = 2) -> None:
    """A log axis ticked at ``values`` written as plain numbers (32, 64, 128 rather than 2^5 ...)."""
    vals = sorted({float(v) for v in values})
    getattr(ax, f"set_{axis}scale")("log", base=base)
    getattr(ax, f"set_{axis}ticks")(vals, [f"{v:g}" for v in vals])
    getattr(ax, f"{axis}axis").set_minor_locator(plt.NullLocator())


def paper_levels(ax: plt.Axes, levels: Mapping[str, float], label: str = "paper") -> plt.Axes:
    """The paper's value of each pooling (``{spec or label: value}``) as a dashed line in the pooling's colour,
    with one legend entry ``label`` for all of them."""
    for pooling, value in levels.items():
        ax.axhline(value, ls=(0, (5, 3)), lw=1.3, color=color_for(pooling), alpha=0.9, zorder=1, label="_nolegend_")
    if levels:  # one legend entry, in black: it stands for every pooling's line
        ax.plot([], [], ls=(0, (5, 3)), lw=1.3, color="0.2", label=label)
    return ax


def paper_range(ax: plt.Axes, low: float, high: float, label: str = "paper", x: float | None = None) -> plt.Axes:
    """The paper's range [low, high]: a grey band across the axes, or a black bar at ``x`` when the paper
    gives it at one abscissa only (e.g. one document length)."""
    if x is None:
        ax.axhspan(low, high, color="0.5", alpha=0.25, lw=0, zorder=0, label=label)
    else:
        ax.errorbar([x], [(low + high) / 2], yerr=[[(high - low) / 2], [(high - low) / 2]], fmt="none",
                    ecolor="black", elinewidth=4, capsize=0, alpha=0.6, zorder=4, label=label)
    return ax


class PlacedLabels(Artist):
    """Point labels placed when the figure is drawn, so with its final layout and limits: each text goes to
    the first offset of a widening ring around its point where it overlaps no other label, no other point and
    stays inside the axes (else where it overlaps least); a distant text gets a thin leader line.
    ``placed`` holds the last drawing's (text, display bbox) pairs. The labels take no part in the layout."""

    ANGLES = (30, -30, 150, -150, 90, -90, 0, 180, 60, -60, 120, -120, 15, -15, 165, -165)
    RADII = (6, 14, 26, 40, 56, 72)  # points

    def __init__(self, ax: plt.Axes, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 fontsize: str = "x-small", colors: Sequence[str | None] | None = None):
        super().__init__()
        self.ax, self.xs, self.ys, self.texts, self.fontsize = ax, list(xs), list(ys), list(texts), fontsize
        self.colors = [_darker(c) for c in (colors or [None] * len(self.texts))]
        self.placed: list[tuple[str, Bbox]] = []
        self.set_zorder(5)
        self.set_in_layout(False)

    def _annotation(self, i: int, dx: float, dy: float) -> Annotation:
        far = np.hypot(dx, dy) > 10
        ann = Annotation(self.texts[i], (self.xs[i], self.ys[i]), xytext=(dx, dy), textcoords="offset points",
                         ha="left" if dx > 1 else ("right" if dx < -1 else "center"),
                         va="bottom" if dy > 1 else ("top" if dy < -1 else "center"), fontsize=self.fontsize,
                         color=self.colors[i], arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6, "shrinkA": 1,
                                                   "shrinkB": 4} if far else None)
        ann.axes = self.ax
        ann.set_figure(self.ax.figure)
        return ann

    def draw(self, renderer) -> None:
        if not self.get_visible() or not self.xs:
            return
        pts = self.ax.transData.transform(np.column_stack([self.xs, self.ys]).astype(float))
        box = self.ax.get_window_extent(renderer)
        px_r = 6.0 * renderer.points_to_pixels(1.0)  # a marker's half-size
        markers = [Bbox.from_extents(x - px_r, y - px_r, x + px_r, y + px_r) for x, y in pts]
        offsets = [(r * np.cos(np.deg2rad(a)), r * np.sin(np.deg2rad(a))) for r in self.RADII for a in self.ANGLES]
        self.placed = []
        for i in np.argsort(-pts[:, 1], kind="stable"):  # top first
            best = None
            for dx, dy in offsets:
                ann = self._annotation(int(i), dx, dy)
                ann.update_positions(renderer)
                bb = Text.get_window_extent(ann, renderer).expanded(1.06, 1.2)  # the text, not its leader line
                outside = (max(0.0, box.x0 - bb.x0) + max(0.0, bb.x1 - box.x1) + max(0.0, box.y0 - bb.y0)
                           + max(0.0, bb.y1 - box.y1))
                # a label nearer another point than its own reads as that point's: penalise the difference
                near = [_distance(bb, p) for p in pts]
                ambiguous = max(0.0, near[i] - min((d for j, d in enumerate(near) if j != i), default=np.inf))
                cost = (_overlap(bb, [b for _, b in self.placed]) + 50 * outside + 30 * ambiguous
                        + _overlap(bb, [m for j, m in enumerate(markers) if j != i]))
                if best is None or cost < best[0]:
                    best = (cost, ann, bb)
                if cost == 0:
                    break
            best[1].draw(renderer)
            self.placed.append((self.texts[i], best[2]))
        self.stale = False


def _darker(color: str | None, f: float = 0.65) -> str:
    """A text colour for a label beside a marker of ``color``: the same hue, darker (near-black for None)."""
    if color is None:
        return "0.15"
    return mcolors.to_hex(tuple(f * v for v in mcolors.to_rgb(color)))


def _distance(b: Bbox, p) -> float:
    """Display distance from point p to the box b (0 inside it)."""
    return float(np.hypot(max(b.x0 - p[0], 0.0, p[0] - b.x1), max(b.y0 - p[1], 0.0, p[1] - b.y1)))


def _overlap(b: Bbox, others: Sequence[Bbox]) -> float:
    return sum(max(0.0, min(b.x1, o.x1) - max(b.x0, o.x0)) * max(0.0, min(b.y1, o.y1) - max(b.y0, o.y0))
               for o in others)


def place_labels(ax: plt.Axes, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 fontsize: str = "x-small", colors: Sequence[str | None] | None = None) -> PlacedLabels:
    """Label each point (xs[i], ys[i]) with texts[i] (in a darker shade of colors[i]) without overlaps
    (``PlacedLabels``, placed at draw time)."""
    labels = PlacedLabels(ax, xs, ys, texts, fontsize, colors)
    ax.add_artist(labels)
    return labels
