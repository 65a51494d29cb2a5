"""Chapter 05 (notebook 05), the findings: per-seed metrics with intervals, the frontier, paired comparisons
with MaxSim, length robustness, the retraining table and the claims rows of notebook 05.

Reads the tidy ``quality`` and ``gini`` tables of ``ch05_beyond`` (one row per world, length, train, pooling,
mode, seed and query or pair).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..core.pooling import parse_pooling
from ..profiles import NEW_POOLINGS
from ..reporting import claims
from ..reporting.stats import bootstrap_ci, mean_ci, seed_bootstrap
from .ch05_beyond import KEYS

# ----------------------------------------------------------------------------------------------------------
# Summaries: per-seed metrics, CIs, the frontier, and "does anything beat MaxSim?"
# ----------------------------------------------------------------------------------------------------------


def seed_metrics(quality: pd.DataFrame, gini_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (world, length, train, pooling, mode, seed): clean R@1 and MRR, R@1 under each injection,
    retained = injected / clean R@1, hijack rates, mean Gini."""
    q = quality.copy()
    piv = q.pivot_table(index=KEYS, columns="condition", values=["recall@1", "rr"], aggfunc="mean")
    out = pd.DataFrame(index=piv.index)
    out["clean_r1"] = piv[("recall@1", "clean")]
    out["clean_mrr"] = piv[("rr", "clean")]
    for cond in ("spike", "gaussian"):
        if ("recall@1", cond) in piv.columns:
            out[f"{cond}_r1"] = piv[("recall@1", cond)]
            out[f"{cond}_retained"] = (out[f"{cond}_r1"] / out["clean_r1"]).replace([np.inf, -np.inf], np.nan)
    if "hijack" in q.columns:
        h = q.dropna(subset=["hijack"]).pivot_table(index=KEYS, columns="condition", values="hijack", aggfunc="mean")
        for cond in h.columns:
            out[f"{cond}_hijack"] = h[cond]
    if gini_rows is not None and len(gini_rows):
        out["gini"] = gini_rows.groupby(KEYS)["gini"].mean()
    return out.reset_index()


def summarize_seeds(per_seed: pd.DataFrame, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Mean and 95 % t-interval over seeds of each metric: rows (world, length, train, pooling, mode, metric)."""
    keys = [k for k in KEYS if k != "seed"]
    metrics = [m for m in (metrics or per_seed.columns) if m not in KEYS]
    rows = []
    for key, g in per_seed.groupby(keys, sort=False):
        for m in metrics:
            vals = g[m].replace([np.inf, -np.inf], np.nan).dropna().to_numpy()
            if len(vals):
                mean, lo, hi = mean_ci(vals)
                rows.append({**dict(zip(keys, key, strict=True)), "metric": m, "n": len(vals), "mean": mean,
                             "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def paired_difference(
    quality: pd.DataFrame, a: Mapping[str, str], b: Mapping[str, str], condition: str, metric: str = "recall@1",
    seed: int = 0, other: str | None = None,
) -> tuple[float, float, float]:
    """Mean and bootstrap 95 % CI of metric(a) - metric(b) over paired (seed, query) units under ``condition``
    (``b`` under ``other`` when given, e.g. injected minus clean for the same model and pooling).

    ``a`` and ``b`` select rows by column values (e.g. {"train": "maxsim", "pooling": "capacity:1:0.05:20"}).
    """
    def pick(sel: Mapping[str, str], cond: str) -> pd.Series:
        m = quality["condition"] == cond
        for k, v in sel.items():
            m &= quality[k] == v
        return quality[m].set_index(["world", "length", "seed", "query"])[metric]

    xa, xb = pick(a, condition), pick(b, other or condition)
    xa, xb = xa.align(xb, join="inner")
    if xa.empty:
        raise ValueError(f"no paired rows for {dict(a)} vs {dict(b)} under {condition!r}")
    return bootstrap_ci((xa - xb).to_numpy(), seed=seed)


def frontier_table(per_seed: pd.DataFrame, world: str, length: int, train: str = "maxsim") -> pd.DataFrame:
    """Seed means per pooling on one model (default: the MaxSim-trained one): gini, clean_r1, spike_r1,
    spike_retained, gaussian_retained, spike_hijack, and ``pareto`` (no other pooling is at least as good on
    both clean_r1 and spike_r1 and better on one)."""
    sub = per_seed[(per_seed["world"] == world) & (per_seed["length"] == length) & (per_seed["train"] == train)]
    cols = [c for c in ("gini", "clean_r1", "clean_mrr", "spike_r1", "spike_retained", "gaussian_retained",
                        "spike_hijack") if c in sub.columns]
    tab = sub.groupby("pooling", sort=False)[cols].mean()
    if {"clean_r1", "spike_r1"} <= set(tab.columns):
        x, y = tab["clean_r1"].to_numpy(), tab["spike_r1"].to_numpy()
        dominated = [bool(((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))).any()) for i in range(len(tab))]
        tab["pareto"] = [not d for d in dominated]
    return tab.reset_index()


def seed_intervals(quality: pd.DataFrame, gini_rows: pd.DataFrame | None, world: str, length: int,
                   metrics: Sequence[str] = ("clean_r1", "spike_r1", "spike_retained", "gini")) -> pd.DataFrame:
    """The figures' intervals: per (train, pooling, mode) at one length, each metric of ``seed_metrics`` as the
    mean over seeds (the value of ``frontier_table`` and ``retraining_table``) with a 95 % hierarchical-bootstrap
    interval over seeds, then queries (gini: training pairs) within each seed (``stats.seed_bootstrap``), so the
    real world's single seed still gets an interval over its queries. ``X_retained`` is Recall@1 under X over
    the clean Recall@1 of the same queries. Columns train, pooling, mode, then ``m``, ``m_low``, ``m_high``."""
    keys = ["train", "pooling", "mode"]
    q = quality[(quality["world"] == world) & (quality["length"] == length)]
    g = None if gini_rows is None else gini_rows[(gini_rows["world"] == world) & (gini_rows["length"] == length)]
    rows = []
    for key, sub in q.groupby(keys, sort=False):
        by = {c: {s: x.sort_values("query")["recall@1"].to_numpy() for s, x in sc.groupby("seed")}
              for c, sc in sub.groupby("condition")}
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for m in metrics:
            cond, _, what = m.partition("_")
            if m == "gini":
                if g is None:
                    continue
                gs = g[(g["train"] == key[0]) & (g["pooling"] == key[1]) & (g["mode"] == key[2])]
                units = [x["gini"].to_numpy() for _, x in gs.groupby("seed")]
                est = seed_bootstrap(units) if units else None
            elif cond not in by:
                continue
            elif what == "retained":
                seeds = sorted(set(by[cond]) & set(by.get("clean", {})))
                est = seed_bootstrap([by[cond][s] for s in seeds], [by["clean"][s] for s in seeds]) if seeds else None
            else:
                est = seed_bootstrap([by[cond][s] for s in sorted(by[cond])])
            if est is not None:
                row.update(dict(zip((m, f"{m}_low", f"{m}_high"), est, strict=True)))
        rows.append(row)
    return pd.DataFrame(rows)


def beats_maxsim(
    quality: pd.DataFrame, world: str, length: int, poolings: Sequence[str], train: str = "maxsim",
    margin: float = 0.0,
) -> pd.DataFrame:
    """Paired comparison of each pooling with MaxSim on the same model: clean and spike-injected Recall@1.

    A pooling *beats MaxSim on the frontier* when its injected Recall@1 is higher (95 % CI above 0) and its
    clean Recall@1 is not lower (CI of the difference reaches above -``margin``). Rows: pooling, d_clean,
    d_clean_low, d_clean_high, d_spike, d_spike_low, d_spike_high, beats.
    """
    sub = quality[(quality["world"] == world) & (quality["length"] == length) & (quality["train"] == train)]
    rows = []
    ref = {"pooling": parse_pooling("maxsim").spec}
    for spec in poolings:
        spec = parse_pooling(spec).spec
        if spec == ref["pooling"]:
            continue
        row: dict[str, Any] = {"pooling": spec}
        for cond, name in (("clean", "d_clean"), ("spike", "d_spike")):
            m, lo, hi = paired_difference(sub, {"pooling": spec}, ref, cond)
            row.update({name: m, f"{name}_low": lo, f"{name}_high": hi})
        row["beats"] = bool(row["d_spike_low"] > 0 and row["d_clean_high"] > -margin)
        rows.append(row)
    return pd.DataFrame(rows)


def length_robustness(quality: pd.DataFrame, world: str = "synthetic") -> pd.DataFrame:
    """Clean Recall@1 per seed at each length (synthetic: trained length M; real: padding factor), and its
    ratio to the shortest length ("retained"); only (train, pooling) pairs measured at the shortest length.
    Rows: train, pooling, mode, seed, length, clean_r1, retained."""
    sub = quality[(quality["world"] == world) & (quality["condition"] == "clean")]
    tab = sub.groupby(["train", "pooling", "mode", "seed", "length"], sort=False)["recall@1"].mean().rename(
        "clean_r1").reset_index()
    shortest = tab["length"].min()
    keep = tab.groupby(["train", "pooling", "seed"])["length"].transform("min") == shortest
    tab = tab[keep & (tab.groupby(["train", "pooling", "seed"])["length"].transform("nunique") > 1)]
    base = tab[tab["length"] == shortest].set_index(["train", "pooling", "seed"])["clean_r1"]
    tab = tab.assign(retained=[r / base[(t, p, s)] if base[(t, p, s)] > 0 else float("nan")
                               for t, p, s, r in zip(tab["train"], tab["pooling"], tab["seed"], tab["clean_r1"],
                                                     strict=True)])
    return tab.reset_index(drop=True)


def closing_note(vs_maxsim: Mapping[str, pd.DataFrame], frontier: Mapping[str, pd.DataFrame],
                 new_poolings: Sequence[str] = NEW_POOLINGS) -> list[str]:
    """One sentence per world: which new pooling beats MaxSim on the frontier (and by how much), and whether
    the win survives the Gaussian control (``gaussian_retained`` <= 1), read from the tables."""
    new = {parse_pooling(p).spec for p in new_poolings}
    lines = []
    for world, t in vs_maxsim.items():
        f = frontier[world].set_index("pooling")
        wins = t[t["beats"] & t["pooling"].isin(new)]
        if wins.empty:
            lines.append(f"{world}: no new pooling beats MaxSim on the frontier.")
        for r in wins.itertuples(index=False):
            g = float(f.loc[r.pooling, "gaussian_retained"])
            why = "and the Gaussian control does not raise it (genuine)"
            if g > 1:
                why = f"but Gaussian patches raise its Recall@1 too (retained {g:.2f} > 1): a length penalty"
            lines.append(f"{world}: {r.pooling} beats MaxSim: Recall@1 under spikes {r.d_spike:+.3f} "
                         f"[{r.d_spike_low:+.3f}, {r.d_spike_high:+.3f}], clean {r.d_clean:+.3f} "
                         f"[{r.d_clean_low:+.3f}, {r.d_clean_high:+.3f}], {why}.")
        for r in t[t["pooling"].isin(new) & ~t["beats"]].itertuples(index=False):
            lines.append(f"{world}: {r.pooling} does not: spikes {r.d_spike:+.3f} [{r.d_spike_low:+.3f}, "
                         f"{r.d_spike_high:+.3f}], clean {r.d_clean:+.3f} [{r.d_clean_low:+.3f}, "
                         f"{r.d_clean_high:+.3f}].")
    return lines


# ----------------------------------------------------------------------------------------------------------
# Section 1 table and the findings (claims rows) of notebook 05
# ----------------------------------------------------------------------------------------------------------
def retraining_table(per_seed: pd.DataFrame, world: str, length: int,
                     metrics: Sequence[str] = ("clean_r1", "gini", "spike_retained", "gaussian_retained",
                                               "spike_hijack")) -> pd.DataFrame:
    """Swap vs retrained for every trained pooling at one length: mean [95 % CI over seeds] of each metric.

    Rows: pooling, mode (swap: the MaxSim-trained model scored with the pooling; retrained: trained with it),
    then ``metric``, ``metric_low``, ``metric_high`` columns.
    """
    sub = per_seed[(per_seed["world"] == world) & (per_seed["length"] == length)]
    trained = [t for t in sub["train"].unique()]
    rows = []
    for p in trained:
        for mode, train in (("swap", "maxsim"), ("retrained", p)):
            if p == "maxsim" and mode == "swap":
                continue
            g = sub[(sub["train"] == train) & (sub["pooling"] == p)]
            if g.empty:
                continue
            row: dict[str, Any] = {"pooling": p, "mode": mode, "n_seeds": len(g)}
            for m in metrics:
                vals = g[m].replace([np.inf, -np.inf], np.nan).dropna() if m in g.columns else pd.Series([])
                if len(vals):
                    row[m], row[f"{m}_low"], row[f"{m}_high"] = mean_ci(vals.to_numpy())
            rows.append(row)
    return pd.DataFrame(rows)


def _hits(quality: pd.DataFrame, sel: Mapping[str, str], condition: str) -> float:
    """Recall@1 hits of the rows selected by ``sel`` under ``condition``, summed over seeds and queries."""
    m = quality["condition"] == condition
    for k, v in sel.items():
        m &= quality[k] == v
    return float(quality.loc[m, "recall@1"].sum())


def _finding(sub: pd.DataFrame, world: str, where: str, claim: str, link: str, quantity: str, paper: str,
             a: Mapping[str, str], b: Mapping[str, str], condition: str, sign: int,
             other: str | None = None, strict: bool = True) -> dict[str, object]:
    """One findings row: the paired difference a - b (``paired_difference``) and its verdict
    (``claims.finding``: the expected ``sign``; inconclusive on too few hits in the two arms together)."""
    m, lo, hi = paired_difference(sub, a, b, condition, other=other)
    hits = _hits(sub, a, condition) + _hits(sub, b, other or condition)
    verdict = claims.finding(lo, hi, sign, base_hits=hits, strict=strict)
    return claims.row(claim, link, world, quantity, paper, m, lo, hi, verdict,
                      where, n_seeds=int(sub["seed"].nunique()), n_queries=int(sub["query"].nunique()),
                      base_hits=hits)


def findings(quality: pd.DataFrame, lengths: Mapping[str, int], smooth: Mapping[str, str],
             new_poolings: Sequence[str] = NEW_POOLINGS, where: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The findings of notebook 05 (``reporting.claims`` rows, verdicts supported / not supported /
    inconclusive) for each world in ``lengths``.

    ``smooth[world]`` is the smooth pooling whose retraining is tested (softmax). Differences are paired over
    (seed, query) with bootstrap 95 % CIs: B1 retraining with the smooth pooling raises Recall@1 under spike
    injection compared with the swap (B1': compared with MaxSim); B2 it costs clean Recall@1; B3 each new
    pooling beats MaxSim on the frontier (robust under spikes without losing clean Recall@1, ``beats_maxsim``);
    B4 its Recall@1 does not rise when K Gaussian patches are appended (a rise means its gain under injection is
    a length penalty, not spike resistance). A difference whose two arms have fewer than
    ``claims.MIN_BASE_HITS`` hits together is inconclusive.
    """
    where = where or {}
    rows = []
    for world, length in lengths.items():
        sub = quality[(quality["world"] == world) & (quality["length"] == length)]
        sm = parse_pooling(smooth[world]).spec
        loc = where.get(world, "notebook 05")
        retrained, swap, maxsim = ({"train": sm, "pooling": sm}, {"train": "maxsim", "pooling": sm},
                                   {"train": "maxsim", "pooling": "maxsim"})
        rows += [
            _finding(sub, world, loc, "B1", f"retraining with {sm} buys spike robustness over the swap",
                     f"R@1 under spikes, retrained - swap ({sm})", "expected by the authors (future work)",
                     retrained, swap, "spike", +1),
            _finding(sub, world, loc, "B2", f"retraining with {sm} costs clean quality",
                     f"clean R@1, retrained - swap ({sm})", "price expected (not quantified)", retrained, swap,
                     "clean", -1),
            _finding(sub, world, loc, "B1'", f"retrained {sm} is more robust than MaxSim",
                     f"R@1 under spikes, retrained {sm} - MaxSim", "expected by the authors (future work)",
                     retrained, maxsim, "spike", +1),
        ]
        for r in beats_maxsim(sub, world, length, new_poolings).itertuples(index=False):
            new = {"train": "maxsim", "pooling": r.pooling}
            b3 = _finding(sub, world, loc, "B3", f"{r.pooling} beats MaxSim on the frontier",
                          f"R@1 under spikes, {r.pooling} - MaxSim (clean R@1 diff {r.d_clean:+.3f} "
                          f"[{r.d_clean_low:+.3f}, {r.d_clean_high:+.3f}])", "n/a (new)", new, maxsim, "spike", +1)
            if b3["verdict"] == "supported" and r.d_clean_high <= 0:  # robust, but clearly worse when clean
                b3["verdict"] = "not supported"
            # Appending K patches makes non-gold documents longer: a pooling that penalises length gains under
            # any appended patches. The Gaussian control separates that from resisting spikes.
            b4 = _finding(sub, world, loc, "B4", f"{r.pooling}: Gaussian patches do not raise its R@1 (no "
                          "length-penalty artefact)", f"R@1 with K Gaussian patches - clean R@1 ({r.pooling})",
                          "n/a (new)", new, new, "gaussian", -1, other="clean", strict=False)
            rows += [b3, b4]
    return pd.DataFrame(rows)
