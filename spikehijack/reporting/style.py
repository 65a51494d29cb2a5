"""The book's one figure style: a colour per pooling, human axis labels with units, and a checker for both.

- ``color_for(label_or_spec)``: the same pooling gets the same colour in every figure. Colours are keyed by the
  pooling's family and parameter: MaxSim red, Top-k a distinct colour per k (Top-4 blue, Top-16 brown), softmax
  shades of green (darker for larger tau), Mean grey, the robust poolings of ``core/robust.py`` their own hues.
  Accepts plot labels (``"Softmax τ=0.1"``, ``"Top-4 (spike)"``) and specs (``"softmax:0.1"``, ``"topk:4"``).
- ``axis_label(name)``: a variable or column name (``hijack_rate``, ``clean_r1``, ``K``, ``M``...) -> axis text.
- ``check_figure(fig)``: raises ``FigureStyleError`` when an axis with data has no x/y label or one that looks
  like an identifier, a legend title is a bare column name, or an image (heatmap) has no colour bar.

>>> color_for("MaxSim") == color_for("maxsim") == color_for("MaxSim (spike)")
True
>>> color_for("Top-4") != color_for("Top-16")
True
>>> axis_label("hijack_rate")
'hijack rate (share of arg-max selections on injected patches)'
>>> looks_like_identifier("clean_r1"), looks_like_identifier("recall@1"), looks_like_identifier("clean Recall@1")
(True, True, False)
"""

from __future__ import annotations

import math
import re
import zlib

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from spikehijack.reporting.claims import VERDICTS

# ---------------------------------------------------------------- one colour per pooling

MAXSIM, MEAN = "#d62728", "#7f7f7f"
#: Top-k: one distinct hue per k used in the book (never two shades of one blue for Top-4 and Top-16).
TOPK = {1: "#7b3294", 2: "#6baed6", 4: "#1f77b4", 5: "#17becf", 8: "#3f51b5", 16: "#8c564b", 32: "#525252"}
#: Families beyond the paper (``core/robust.py``): a base hue, shifted in lightness per parameter setting.
ROBUST = {"LC-MaxSim": "#ff7f0e", "Capacity": "#e377c2", "Trimmed": "#bcbd22", "Median-top": "#b8860b"}
SPEC_FAMILY = {"maxsim": "MaxSim", "topk": "Top", "softmax": "Softmax", "mean": "Mean", "lcmaxsim": "LC-MaxSim",
               "capacity": "Capacity", "trimmed": "Trimmed", "medtopk": "Median-top"}


def pooling_key(label: str) -> tuple[str, str]:
    """(family, parameter) of a pooling label or spec: ``"Top-16 (spike)"`` -> ("Top", "16"),
    ``"softmax:0.05"`` -> ("Softmax", "0.05"), ``"LC-MaxSim σ=auto"`` -> ("LC-MaxSim", "σ=auto")."""
    text = re.sub(r"\s*\(.*\)\s*$", "", str(label)).strip()
    if text.partition(":")[0] in SPEC_FAMILY:  # a spec: key it by its pooling's own label
        text = _spec_label(text)
    if m := re.fullmatch(r"Top-(\d+)", text):
        return "Top", m.group(1)
    if m := re.fullmatch(r"Softmax\s*(?:τ|tau)\s*=\s*([0-9.eE+-]+)", text):
        return "Softmax", m.group(1)
    for family in ("LC-MaxSim", "Capacity", "Trimmed", "Median-top", "MaxSim", "Mean"):
        if text.startswith(family):
            return family, text[len(family):].strip(" -")
    return text, ""


def pooling_label(text: str) -> str:
    """The reader's name of a pooling given its spec (``"softmax:0.1"`` -> ``"Softmax τ=0.1"``); any other text
    (a label already, or not a pooling) comes back unchanged."""
    return _spec_label(str(text)) if str(text).partition(":")[0] in SPEC_FAMILY else str(text)


def _spec_label(spec: str) -> str:
    from spikehijack.core import robust  # noqa: F401  (registers the poolings beyond the paper)
    from spikehijack.core.pooling import parse_pooling

    try:
        return parse_pooling(spec).label
    except ValueError:
        return spec


def _shade(color: str, param: str) -> str:
    """The family hue, lighter or darker by a stable function of the parameter text (one shade per setting)."""
    if not param:
        return color
    r, g, b = mcolors.to_rgb(color)
    f = (-0.25, 0.0, 0.25, -0.4, 0.4)[zlib.crc32(param.encode()) % 5]
    mix = (1.0, 1.0, 1.0) if f > 0 else (0.0, 0.0, 0.0)
    return mcolors.to_hex(tuple(c + abs(f) * (m - c) for c, m in zip((r, g, b), mix, strict=True)))


def color_for(label: str) -> str | None:
    """The fixed colour of a pooling (label or spec), or None when it is not a pooling (matplotlib chooses)."""
    family, param = pooling_key(label)
    if family == "MaxSim":
        return MAXSIM
    if family == "Mean":
        return MEAN
    if family == "Top":
        k = int(param or 4)
        if k in TOPK:
            return TOPK[k]
        return mcolors.to_hex(plt.get_cmap("Blues")(0.45 + 0.5 * min(math.log2(k), 6) / 6))
    if family == "Softmax":
        tau = float(param or 1.0)
        # darker green for a larger tau (a softer pooling); tau 0.03 .. 3 spans the ramp
        x = (min(max(math.log10(tau), -1.5), 0.5) + 1.5) / 2.0
        return mcolors.to_hex(plt.get_cmap("Greens")(0.42 + 0.55 * x))
    if family in ROBUST:
        return _shade(ROBUST[family], param)
    return None


def palette(labels) -> dict[str, str | None]:
    """``{label: color_for(label)}`` for seaborn's ``palette=`` or a legend."""
    return {str(lab): color_for(str(lab)) for lab in labels}


# ---------------------------------------------------------------- verdict colours (claims figure)

VERDICT_COLORS: dict[str, str] = {
    "reproduced": "#1a9850", "partly reproduced": "#fdae61", "not reproduced": "#d73027",
    "indicative": "#74add1", "untestable here": "#969696", "calibrated": "#8073ac", "mechanism": "#a6761d",
    "supported": "#00441b", "not supported": "#67001f", "inconclusive": "#c7c7c7",
}
assert set(VERDICT_COLORS) == set(VERDICTS), "one colour per verdict of the claims vocabulary"

# ---------------------------------------------------------------- human axis labels

AXIS_LABELS: dict[str, str] = {
    "hijack_rate": "hijack rate (share of arg-max selections on injected patches)",
    "hijack": "hijack rate (share of arg-max selections on injected patches)",
    "spike_hijack": "hijack rate under spike injection",
    "gaussian_hijack": "hijack rate under Gaussian injection",
    "argmax_shift": "share of arg-max selections moved",
    "selection_mass": "selection mass on injected patches (pooling weights)",
    "clean_r1": "clean Recall@1",
    "clean_mrr": "clean mean reciprocal rank",
    "spike_r1": "Recall@1 under spike injection",
    "gaussian_r1": "Recall@1 under Gaussian injection",
    "retained": "retained Recall@1 (attacked / clean)",
    "retained@K=100": "retained Recall@1 at K = 100 (attacked / clean)",
    "spike_retained": "retained Recall@1 under spikes (attacked / clean)",
    "gaussian_retained": "retained Recall@1 under Gaussian patches (attacked / clean)",
    "recall@1": "Recall@1",
    "r1": "Recall@1",
    "rr": "reciprocal rank",
    "hit": "Recall@1",
    "mrr": "mean reciprocal rank",
    "gini": "Gini of patch gradients",
    "g_j": "patch gradient norm $\\|g_j\\|$",
    "share": "share of gradient mass",
    "K": "injected patches per document K",
    "M": "document length M (patches)",
    "T": "query length T (tokens)",
    "d": "embedding dimension d",
    "k": "patches pooled per token k (Top-k)",
    "tau": "softmax temperature τ",
    "epoch": "training epoch",
    "length": "document length M (patches)",
    "eval_length": "evaluation document length M (patches)",
    "train_length": "training document length M (patches)",
    "factor": "padding factor (× natural length)",
    "loss": "training loss",
    "pooled": "pooled similarity",
    "similarity": "cosine similarity",
    "d_clean": "clean Recall@1, difference to MaxSim",
    "d_spike": "Recall@1 under spikes, difference to MaxSim",
}


def axis_label(name: str, default: str | None = None) -> str:
    """Human axis text (with units) for a variable or column name; ``default`` (or a KeyError) when unknown."""
    if name in AXIS_LABELS:
        return AXIS_LABELS[name]
    if name.lower() in AXIS_LABELS:
        return AXIS_LABELS[name.lower()]
    if default is not None:
        return default
    raise KeyError(f"no axis label for {name!r}: add it to spikehijack.reporting.style.AXIS_LABELS")


#: Legend titles that are column names, not words for a reader.
BARE_TITLES = {"label", "hue", "pooling_spec", "spec", "kind", "mode", "variable", "value", "run", "run_key"}


def looks_like_identifier(text: str) -> bool:
    """True for text a reader should not see as a label: snake_case, a lower-case name with ``@``
    (``recall@1``, ``retained@K=100``; the metric's own spelling ``Recall@1`` is fine), a known variable name on
    its own (``retained``, ``gini``, ``K``), or a single lower-case token with digits (``r1``)."""
    t = re.sub(r"\$[^$]*\$", "", text).strip()  # math is fine: $g_j$ is typeset
    if not t:
        return False
    if re.search(r"(?<![\w.])[a-z][\w.]*@", t) or re.search(r"[A-Za-z0-9]_[A-Za-z0-9]", t):
        return True
    if t in AXIS_LABELS or t.lower() in BARE_TITLES:
        return True
    return bool(re.fullmatch(r"[a-z]+[0-9]+", t))


class FigureStyleError(AssertionError):
    """A figure breaks the book's style (see ``check_figure``)."""


def _has_data(ax) -> bool:
    return bool(ax.lines or ax.collections or ax.patches or ax.images)


def check_figure(fig: Figure) -> Figure:
    """Raise ``FigureStyleError`` listing every problem of ``fig``; return ``fig`` when it passes.

    Every axis that shows data needs an x and a y label (tick labels naming the rows stand in for the y label,
    e.g. a forest plot or a heatmap with token names; an axis shared with a labelled one needs none), and no
    label may look like an identifier; a legend
    title may not be a bare column name; every image drawn with a colour map needs a colour bar."""
    problems: list[str] = []
    fig.canvas.draw()  # tick labels exist only once drawn
    colorbar_axes = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    for i, ax in enumerate(fig.axes):
        if ax in colorbar_axes or not ax.get_visible():
            continue
        name = ax.get_title() or f"axes {i}"
        if _has_data(ax):
            for which, label, ticks, shared in (
                    ("x", ax.get_xlabel(), ax.get_xticklabels(), ax.get_shared_x_axes().get_siblings(ax)),
                    ("y", ax.get_ylabel(), ax.get_yticklabels(), ax.get_shared_y_axes().get_siblings(ax))):
                named_ticks = any(t.get_text() and not _is_number(t.get_text()) for t in ticks)
                sibling = any((o.get_xlabel() if which == "x" else o.get_ylabel()).strip() for o in shared)
                if not label.strip() and not named_ticks and not sibling:
                    problems.append(f"{name}: no {which} label")
                elif looks_like_identifier(label):
                    problems.append(f"{name}: {which} label {label!r} looks like a variable name")
        legend = ax.get_legend()
        if legend is not None:
            title = legend.get_title().get_text()
            if title and (looks_like_identifier(title) or title.strip().lower() in BARE_TITLES):
                problems.append(f"{name}: legend title {title!r} is a column name")
        for im in ax.images:
            if im.get_array() is not None and im.get_array().ndim == 2 and im.colorbar is None:
                problems.append(f"{name}: heatmap without a colour bar")
    if problems:
        raise FigureStyleError("figure style: " + "; ".join(problems))
    return fig


def _is_number(text: str) -> bool:
    try:
        float(text.replace("−", "-").replace("$", "").replace("\\mathdefault{", "").replace("}", ""))
    except ValueError:
        return False
    return True
