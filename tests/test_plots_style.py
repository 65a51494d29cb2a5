"""The book's figure style: one colour per pooling, human axis labels, the style checker and the claims figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from spikehijack.reporting import claims, plots, style  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: Every pooling label the package draws (core/pooling.py and core/robust.py ``.label``), and their specs.
LABELS = ["MaxSim", "Top-1", "Top-2", "Top-4", "Top-5", "Top-8", "Top-16", "Softmax τ=0.05", "Softmax τ=0.1",
          "Softmax τ=0.2", "Softmax τ=1", "Mean", "LC-MaxSim σ=auto", "Capacity C=1 ε=0.05", "Trimmed-4/1",
          "Median-top-5"]
SPECS = {"maxsim": "MaxSim", "topk:4": "Top-4", "topk:16": "Top-16", "softmax:0.1": "Softmax τ=0.1",
         "softmax:1": "Softmax τ=1", "mean": "Mean", "lcmaxsim": "LC-MaxSim σ=auto",
         "capacity:1:0.05:20": "Capacity C=1 ε=0.05", "trimmed:4:1": "Trimmed-4/1", "medtopk:5": "Median-top-5"}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _distance(a: str, b: str) -> float:
    return float(np.abs(np.array(mcolors.to_rgb(a)) - np.array(mcolors.to_rgb(b))).sum())


def test_every_pooling_has_its_own_colour():
    colors = [plots.color_for(lab) for lab in LABELS]
    assert all(colors), dict(zip(LABELS, colors, strict=True))
    assert len(set(colors)) == len(colors)
    assert _distance(plots.color_for("Top-4"), plots.color_for("Top-16")) > 0.6  # clearly distinct


def test_colours_are_stable_across_spellings_and_figures():
    for spec, label in SPECS.items():
        assert plots.color_for(spec) == plots.color_for(label), spec
    assert plots.color_for("MaxSim (spike)") == plots.color_for("MaxSim") == plots.real_color("MaxSim")
    assert plots.POOLING_COLORS["MaxSim"] == plots.color_for("MaxSim")
    assert plots.color_for("not a pooling") is None
    assert plots.palette(["Top-4", "MaxSim"]) == {lab: plots.color_for(lab) for lab in ("Top-4", "MaxSim")}


def test_softmax_temperatures_are_shades_of_one_hue():
    taus = [0.05, 0.1, 0.2, 1.0]
    rgb = [mcolors.to_rgb(plots.color_for(f"Softmax τ={t:g}")) for t in taus]
    hues = [mcolors.rgb_to_hsv(c)[0] for c in rgb]
    assert max(hues) - min(hues) < 0.08, hues  # all green
    lightness = [sum(c) for c in rgb]
    assert lightness == sorted(lightness, reverse=True), "darker for a larger tau"


def test_verdict_colours_cover_the_vocabulary():
    assert set(plots.VERDICT_COLORS) == set(claims.VERDICTS)
    assert len(set(plots.VERDICT_COLORS.values())) == len(claims.VERDICTS)


@pytest.mark.parametrize("name", ["hijack_rate", "clean_r1", "retained", "recall@1", "gini", "g_j", "K", "M"])
def test_axis_labels_are_words_with_units(name):
    label = plots.axis_label(name)
    assert label != name and not plots.looks_like_identifier(label), label


def test_axis_label_of_an_unknown_name():
    with pytest.raises(KeyError, match="AXIS_LABELS"):
        plots.axis_label("no_such_column")
    assert plots.axis_label("no_such_column", default="something") == "something"


@pytest.mark.parametrize("text,bad", [("hijack_rate", True), ("recall@1", True), ("retained@K=100", True),
                                      ("retained", True), ("r1", True), ("label", True),
                                      ("clean Recall@1", False), ("patch gradient norm $\\|g_j\\|$", False),
                                      ("document length M (patches)", False)])
def test_identifier_detection(text, bad):
    assert plots.looks_like_identifier(text) is bad


def _good_figure():
    fig, (ax, hm) = plt.subplots(1, 2)
    ax.plot([1, 2, 3], [0.1, 0.2, 0.3], label="MaxSim", color=plots.color_for("MaxSim"))
    ax.set_xlabel(plots.axis_label("M"))
    ax.set_ylabel(plots.axis_label("gini"))
    ax.legend(title="pooling")
    im = hm.imshow(np.eye(3))
    fig.colorbar(im, ax=hm, label="cosine similarity")
    hm.set_xlabel("patch index j")
    hm.set_ylabel("query token i")
    return fig, ax, hm


def test_check_figure_accepts_a_good_figure():
    fig, _, _ = _good_figure()
    assert style.check_figure(fig) is fig


@pytest.mark.parametrize("breakage,message", [
    (lambda fig, ax, hm: ax.set_xlabel(""), "no x label"),
    (lambda fig, ax, hm: ax.set_ylabel("hijack_rate"), "looks like a variable name"),
    (lambda fig, ax, hm: ax.set_xlabel("recall@1"), "looks like a variable name"),
    (lambda fig, ax, hm: ax.legend(title="label"), "legend title"),
    (lambda fig, ax, hm: hm.imshow(np.ones((2, 2))), "colour bar"),
])
def test_check_figure_rejects_bad_figures(breakage, message):
    fig, ax, hm = _good_figure()
    breakage(fig, ax, hm)
    with pytest.raises(plots.FigureStyleError, match=message):
        plots.check_figure(fig)


def test_existing_helpers_draw_in_the_style():
    df = pd.DataFrame({"pooling": ["MaxSim"] * 3 + ["Top-4"] * 3, "M": [16, 32, 64] * 2,
                       "mean": [0.5, 0.6, 0.7, 0.3, 0.35, 0.4], "ci_low": 0.0, "ci_high": 1.0})
    fig, ax = plt.subplots()
    plots.line_with_band(ax, df, "M", "mean", "pooling")
    ax.set_ylabel(plots.axis_label("gini"))
    plots.check_figure(fig)
    assert ax.lines[0].get_color() == plots.color_for("MaxSim")
    fig, ax = plt.subplots()
    plots.plot_patch_gradients(ax, [0.1, 0.9, 0.2], ["support", "spike", "filler"], "one document")
    plots.check_figure(fig)


def test_paper_numbers_are_parsed_only_where_numeric():
    assert plots.paper_number("~0.78") == (0.78, 0.78)
    assert plots.paper_number("27.8 % (real)") == (0.278, 0.278)
    assert plots.paper_number("0.33-0.38") == (0.33, 0.38)
    assert plots.paper_number("+0.38 (real)") == (0.38, 0.38)
    for words in ("> 0", "< 0.15", "stable", "n/a (new)", "clearly negative", "barely"):
        assert plots.paper_number(words) is None, words


def test_claims_forest_plot_on_the_quick_claims():
    table = pd.read_csv(ROOT / "reports" / "quick" / "claims.csv")
    fig = plt.figure()
    axes = plots.plot_claims(fig, table)
    plots.check_figure(fig)
    rows = sum(len(ax.get_yticklabels()) for ax in axes)
    assert rows == len(table), "one row per claim link and world"
    # every estimate is drawn in its verdict's colour, and the legend names each verdict present
    drawn = {mcolors.to_hex(line.get_color()) for ax in axes for line in ax.lines}
    for verdict in set(table["verdict"]):
        assert plots.VERDICT_COLORS[verdict] in drawn, verdict
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert set(table["verdict"]) | {"paper's number"} == legend
    # labels are readable: no row label longer than the limit, no axis label an identifier
    assert all(len(t.get_text()) <= 64 for ax in axes for t in ax.get_yticklabels())


def test_claims_forest_plot_on_one_axes():
    table = pd.read_csv(ROOT / "reports" / "quick" / "claims.csv")
    gini = table[table["quantity"].str.contains("Gini")]
    fig, ax = plt.subplots()
    (drawn,) = plots.plot_claims(ax, gini)
    assert drawn is ax and len(ax.get_yticklabels()) == len(gini)
    plots.check_figure(fig)


def test_check_figure_accepts_an_axis_sharing_a_labelled_one():
    import matplotlib.pyplot as plt

    from spikehijack.reporting import plots

    fig, axes = plt.subplots(1, 2, sharey=True)
    for ax in axes:
        ax.plot([1, 2], [0.1, 0.2])
        ax.set_xlabel("document length M (patches)")
    axes[0].set_ylabel("Recall@1")
    assert plots.check_figure(fig) is fig  # the right panel shares the left one's y label
    plt.close(fig)
