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


# ---------------------------------------------------------------- intervals, paper values, labels (issue 14)


def _quick(name: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / "reports" / "quick" / name)


def _overlapping(boxes) -> list:
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
            if min(ba.x1, bb.x1) - max(ba.x0, bb.x0) > 1 and min(ba.y1, bb.y1) - max(ba.y0, bb.y0) > 1]


def test_injection_curves_match_the_summary_and_stay_in_range():
    from spikehijack.chapters import ch03_tradeoff as ch03
    from spikehijack.reporting import evidence

    inj = _quick("synthetic_injection.csv")
    bands = evidence.curves(inj)
    summ = ch03.injection_summary(inj).groupby(["kind", "pooling", "K"])[["retained", "hijack_rate"]].mean()
    both = bands.set_index(["kind", "pooling", "K"]).join(summ.add_suffix("_table"))
    assert np.allclose(both["retained"], both["retained_table"], equal_nan=True)  # the figure draws the table
    assert np.allclose(both["hijack_rate"], both["hijack_rate_table"])
    assert (bands["hijack_rate_low"] >= 0).all() and (bands["hijack_rate_high"] <= 1).all()
    assert (bands["retained_low"] >= 0).all()
    assert (bands["retained_low"] <= bands["retained"] + 1e-12).all()


def test_injection_figure_has_bands_pooling_colours_and_a_log_retained_axis():
    from spikehijack.reporting import evidence

    inj = _quick("synthetic_injection.csv")
    fig, (a, b) = plt.subplots(1, 2)
    plots.plot_injection(a, evidence.curves(inj), "retained", "retained", legend=False, xscale="symlog")
    plots.plot_injection(b, evidence.curves(inj), "hijack_rate", "hijack")
    plots.check_figure(fig)
    assert a.get_yscale() == "symlog"  # one series reaches 10x: linear to 1, log above
    assert len(a.collections) == 6 and len(b.collections) == 6  # a band per (pooling, kind)
    assert {line.get_color() for line in a.lines if line.get_label().startswith("MaxSim")} == {
        plots.color_for("MaxSim")}
    assert b.get_ylim()[1] <= 1.05 and all(not plots.looks_like_identifier(t.get_text())
                                           for t in b.get_legend().get_texts())


def test_real_injection_figure_takes_per_query_rows_for_its_bands():
    from spikehijack.chapters import ch04_real as ch04

    inj = _quick("real_injection_04.csv")
    inj = inj[inj["pooling"].isin(["MaxSim", "Top-4"])]
    fig, ax = plt.subplots()
    plots.plot_injection(ax, ch04.retained(inj), "retained", "retained", per_query=inj)
    plots.check_figure(fig)
    assert len(ax.collections) == 4 and ax.get_yscale() == "linear"


def test_frontier_draws_intervals_labels_without_overlap_and_no_zigzag():
    from spikehijack.chapters import ch05_findings as f5

    quality, per_seed = _quick("beyond_quality_05.csv"), _quick("beyond_per_seed_05.csv")
    table = f5.frontier_table(per_seed, "synthetic", 64)
    ci = f5.seed_intervals(quality, None, "synthetic", 64)
    mx = ci[ci["train"] == "maxsim"].set_index("pooling")
    assert np.allclose(mx.loc[table["pooling"], "spike_r1"], table["spike_r1"])  # same point as the table
    fig, ax = plt.subplots(figsize=(6, 4))
    plots.plot_frontier(ax, table, "gini", "spike_r1", "frontier", intervals=ci[ci["train"] == "maxsim"])
    plots.check_figure(fig)
    labels = next(a for a in ax.artists if isinstance(a, plots.PlacedLabels))
    assert len(labels.placed) == len(table) and not _overlapping(labels.placed)
    assert not [line for line in ax.lines if len(line.get_xdata()) > 2]  # points, no line through them
    assert len(ax.containers) == len(table)  # one error bar per pooling
    assert ax.get_ylim()[0] >= -0.05  # the axis does not suggest a negative recall


def test_frontier_connects_only_families_in_parameter_order():
    table = _quick("synthetic_frontier.csv")
    fig, ax = plt.subplots()
    plots.plot_frontier(ax, table, "gini", "recall@1", connect=True)
    lines = [line for line in ax.lines if len(line.get_xdata()) > 1]
    assert len(lines) == 2  # softmax by tau, Top-k by k; MaxSim alone
    soft = table[table["family"] == "softmax"].assign(tau=lambda t: t["pooling"].str.split(":").str[1].astype(float))
    xs = {tuple(np.round(line.get_xdata(), 6)) for line in lines}
    assert tuple(np.round(soft.sort_values("tau")["gini"], 6)) in xs


def test_swap_vs_retrained_bars_clip_intervals_and_name_poolings():
    from spikehijack.chapters import ch05_findings as f5

    per_seed = _quick("beyond_per_seed_05.csv")
    t = f5.retraining_table(per_seed, "synthetic", 64)
    fig, ax = plt.subplots()
    plots.plot_swap_vs_retrained(ax, t, "clean_r1", "clean")
    plots.check_figure(fig)
    assert ax.get_ylim()[0] == 0 and all(not plots.looks_like_identifier(x.get_text()) and ":" not in x.get_text()
                                         for x in ax.get_xticklabels())
    tops = [seg[1][1] for c in ax.collections for seg in c.get_segments()]  # error bar ends
    assert max(tops) <= 1.0 and min(seg[0][1] for c in ax.collections for seg in c.get_segments()) >= 0.0


def test_quality_bars_readable_with_intervals():
    quality = _quick("real_quality_04.csv")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    plots.plot_quality(ax, quality, "recall@1", n_queries=160)
    plots.check_figure(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ticks = [(t.get_text(), t.get_window_extent(r)) for t in ax.get_xticklabels()]
    assert not _overlapping(ticks)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend and all("(" not in s and "'" not in s for s in legend)  # no tuple entries
    assert sum(len(c.get_segments()) for c in ax.collections) >= len(ax.patches)  # an error bar per bar


def test_figure_2_panels_label_rows_alike_with_colour_bars():
    rng = np.random.default_rng(0)
    ex = {"S": rng.uniform(-0.2, 1, (4, 12)), "M": 6, "K": 6, "before": np.arange(4), "after": np.arange(4) + 6,
          "tokens": ["a phrase", "another phrase", "a third", "a fourth"]}
    fig, axes = plt.subplots(1, 2)
    plots.plot_token_selection(axes[0], ex, "spike", labels=True)
    plots.plot_token_selection(axes[1], ex, "gaussian", labels=False)
    plots.check_figure(fig)
    assert axes[0].get_ylabel() == axes[1].get_ylabel() and axes[0].images[0].colorbar is not None
    assert axes[0].get_legend() is None  # the markers' key sits above the panel, not on the cells


def test_paper_values_are_drawn_from_their_one_home():
    from spikehijack.chapters import ch02_spikes as ch02

    fig, ax = plt.subplots()
    ax.plot([0, 10], [0.5, 0.5])
    plots.paper_levels(ax, ch02.PAPER_GINI, "paper")
    plots.paper_range(ax, *ch02.PAPER_RECALL, "paper band")
    levels = {round(line.get_ydata()[0], 3): line.get_color() for line in ax.lines[1:] if len(line.get_ydata())}
    assert {v: plots.color_for(p) for p, v in ch02.PAPER_GINI.items()} == levels
    claims02 = _quick("claims_02.csv")
    assert set(claims02.loc[claims02["link"].str.startswith("level"), "paper"]) == {
        f"~{v}" for v in ch02.PAPER_GINI.values()}


def test_length_sweep_lines_match_the_table_with_wilson_bands():
    sweep = _quick("real_length_sweep_04.csv")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    plots.plot_length_sweep(ax, sweep, n_queries=160)
    plots.check_figure(fig)
    r1 = sweep[sweep.metric == "recall@1"].pivot_table(index="factor", columns="pooling", values="value")
    for line in ax.get_lines():
        np.testing.assert_allclose(line.get_ydata(), r1.loc[list(line.get_xdata()), line.get_label()].to_numpy())
    for band in ax.collections:  # one Wilson band per pooling, inside [0, 1]
        ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
        assert ys.min() >= 0 and ys.max() <= 1
    assert len(ax.collections) == r1.shape[1]
