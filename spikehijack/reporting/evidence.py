"""Claims 5-8 from per-query injection tables: one set of rules for the synthetic and the real world.

Input: a tidy table, one row per (seed, query, kind, K, pooling) with ``hit`` (1 when the gold document ranks
first, so its mean is Recall@1) and ``hijack_rate`` (share of the query's tokens whose arg-max patch is an
injected one, ``inject.hijack_rate``); ``kind`` is "spike" or "gaussian", ``pooling`` a pooling spec. The
real world has one seed (its queries are the unit); the synthetic world has one trained model per seed.

"Retained" is the mean over seeds of each seed's ratio Recall@1 after / Recall@1 before (clean, K = 0, the same
queries), a seed without clean hits left out: the estimator of the tables printed beside the claims
(``ch03_tradeoff.injection_summary``, ``ch05_findings``) and of ``curves``. With one seed (the real world) it
is the pooled ratio. Intervals come from one hierarchical bootstrap (``stats.Resampler``: resample seeds, then
queries within each drawn seed), with the same draws for every arm (pooling, kind, K), so differences and
ratios of arms are paired; a replicate's retained is the mean over its seed positions of per-position ratios.
A retained ratio is judged only with ``claims.MIN_BASE_HITS`` clean hits; with fewer than
``claims.MIN_SEEDS`` trained seeds a synthetic verdict is indicative at best (the bootstrap cannot see the
variance between trainings it did not run).

>>> t = pd.DataFrame([{"seed": 0, "query": q, "kind": k, "K": K, "pooling": "maxsim", "hit": float(K == 0 or q < 5),
...                    "hijack_rate": 0.0} for q in range(20) for k in ("spike", "gaussian") for K in (0, 100)])
>>> round(Injection(t, "real", "doc").retained("spike", "maxsim", 100)[0], 2)
0.25
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from ..core.pooling import parse_pooling
from . import claims
from .stats import Resampler, seed_bootstrap

#: Bootstrap replicates and the level of every interval.
N_BOOT, LEVEL = 2000, 0.95
#: "Gaussian patches barely change recall" (claim 7): retained within 1 +- this margin (two-sided: a ratio far
#: above 1 is a length effect too, PAPER.md's "semantic, not length-driven").
LENGTH_NEUTRAL_MARGIN = 0.1
#: Claim 8: "most" arg-max selections, and the paper's bound for Gaussian patches.
MOST, FEW = 0.5, 0.15


def label(spec: str) -> str:
    return parse_pooling(spec).label


def interval(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval at ``level`` of bootstrap replicates [B], NaN replicates left out; (NaN, NaN) when
    every replicate is NaN.

    >>> [round(x, 6) for x in interval(np.array([np.nan, *range(101)]))]
    [2.5, 97.5]
    """
    ok = reps[np.isfinite(reps)]
    if not ok.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


class Injection:
    """Bootstrap view of one per-query injection table (module docstring) in one world.

    ``n_seeds`` of the rows it writes: the number of trained seeds in the synthetic world; in the real one
    ``trained``, the number of trained models behind the table (one projection head: 1, so a decided verdict is
    indicative, ``claims.few_seeds``), None for a zero-shot model (queries are the unit).
    """

    def __init__(self, table: pd.DataFrame, world: str, where: str, n_boot: int = N_BOOT, seed: int = 0,
                 trained: int | None = None):
        missing = {"seed", "query", "kind", "K", "pooling", "hit", "hijack_rate"} - set(table.columns)
        if missing:
            raise ValueError(f"table: missing columns {sorted(missing)}")
        self.table, self.world, self.where = table, world, where
        self.seeds = sorted(table["seed"].unique())
        self.queries = sorted(table["query"].unique())
        S, Q = len(self.seeds), len(self.queries)
        self.boot = Resampler([Q] * S, n_boot, seed)  # one set of draws for every arm: paired
        self.n_seeds = S if world == "synthetic" else trained
        self.n_queries = Q
        self._arr = cache(self._array)

    def _array(self, kind: str, pooling: str, K: int, col: str) -> np.ndarray:
        sub = self.table[(self.table["kind"] == kind) & (self.table["pooling"] == pooling) & (self.table["K"] == K)]
        wide = sub.pivot_table(index="seed", columns="query", values=col).reindex(index=self.seeds,
                                                                                  columns=self.queries)
        if sub.empty or wide.isna().any().any():
            raise ValueError(f"table: no complete (seed, query) grid for kind={kind!r}, pooling={pooling!r}, K={K}")
        return wide.to_numpy(float)  # [S, Q]

    def mean(self, kind: str, pooling: str, K: int, col: str = "hit") -> tuple[float, np.ndarray]:
        """(point, bootstrap replicates [B]) of the mean over seeds of per-seed means of ``col`` (the mean over
        seeds and queries: every seed has the same queries)."""
        return self.boot.estimate(self._arr(kind, pooling, K, col))

    def ratio(self, num: tuple[str, str, int], den: tuple[str, str, int]) -> tuple[float, np.ndarray]:
        """(point, replicates [B]) of the mean over seeds of per-seed ratios of Recall@1 in arm ``num`` over arm
        ``den`` (each (kind, pooling, K), the same queries): a seed, or a replicate's position, with no hit in
        ``den`` is left out; a replicate NaN when every position is."""
        return self.boot.estimate(self._arr(*num, "hit"), self._arr(*den, "hit"))

    def retained(self, kind: str, pooling: str, K: int) -> tuple[float, np.ndarray, float]:
        """(retained Recall@1 at K: the mean over seeds of Recall@1(K) / Recall@1(0), its replicates, clean hits)."""
        return *self.ratio((kind, pooling, K), (kind, pooling, 0)), self.hits(kind, pooling, 0)

    def hits(self, kind: str, pooling: str, K: int) -> float:
        """Hits (gold ranked first) summed over seeds and queries."""
        return float(self._arr(kind, pooling, K, "hit").sum())

    def row(self, claim: str, link: str, quantity: str, paper: str, point: float, reps: np.ndarray, rule,
            base_hits: float | None = None) -> dict[str, object]:
        """A claims row from a point estimate and its replicates; ``rule(low, high, n_seeds)`` gives the verdict
        (floors, NaN and the seed cap are applied here)."""
        lo, hi = interval(reps)
        if base_hits is not None and claims.floor(base_hits):
            verdict = "untestable here"
        else:
            verdict = claims.few_seeds(rule(float(lo), float(hi), self.n_seeds), self.n_seeds)
        return claims.row(claim, link, self.world, quantity, paper, point, float(lo), float(hi), verdict, self.where,
                          n_seeds=self.n_seeds, n_queries=self.n_queries, base_hits=base_hits)


def collapse(ev: Injection, poolings: list[str], K: int, paper: dict[str, str]) -> list[dict[str, object]]:
    """Claim 5, first links: spikes leave each of ``poolings`` under half its clean Recall@1."""
    rows = []
    for p in poolings:
        point, reps, hits = ev.retained("spike", p, K)
        rows.append(ev.row("5", f"spikes collapse {label(p)}", f"retained Recall@1, spikes K={K} (< 0.5)",
                           paper.get(p, ""), point, reps,
                           lambda lo, hi, n: claims.direction(lo, hi, 0.5, above=False, n_seeds=n), hits))
    return rows


def _minus_best(own: tuple[float, np.ndarray, float], others: list[tuple[float, np.ndarray, float]]
                ) -> tuple[float, np.ndarray]:
    """(point, replicates) of an arm minus the best of ``others`` (each (point, replicates, hits)), the best
    taken per replicate (NaN replicates of one arm ignored)."""
    return own[0] - max(o[0] for o in others), own[1] - np.fmax.reduce([o[1] for o in others])


def keeps_more(ev: Injection, softmax: str, against: list[str], K: int, paper: str) -> list[dict[str, object]]:
    """Claim 5, last link, twice: retained Recall@1 of ``softmax`` minus the best of ``against`` under spikes,
    and the same at equal length (Recall@1 under K spikes over Recall@1 under K Gaussian patches: what spikes
    cost beyond what K more patches of any kind do). When only the first holds, softmax's robustness is a
    length effect."""

    def equal_length(p: str) -> tuple[float, np.ndarray, float]:  # per-seed ratios, averaged, as ``retained``
        return *ev.ratio(("spike", p, K), ("gaussian", p, K)), ev.hits("gaussian", p, K)

    names = "/".join(label(p) for p in against)
    rule = lambda lo, hi, n: claims.direction(lo, hi, n_seeds=n)  # noqa: E731
    own, others = ev.retained("spike", softmax, K), [ev.retained("spike", p, K) for p in against]
    rows = [ev.row("5", f"{label(softmax)} keeps more", f"retained, spikes K={K}: {label(softmax)} - best of {names}",
                   paper, *_minus_best(own, others), rule, own[2])]
    own, others = equal_length(softmax), [equal_length(p) for p in against]
    rows.append(ev.row("5", f"{label(softmax)} keeps more at equal length",
                       f"retained at equal length (R@1 under K={K} spikes / under K={K} Gaussian patches): "
                       f"{label(softmax)} - best of {names}", paper, *_minus_best(own, others), rule,
                       min(own[2], max(o[2] for o in others))))
    return rows


def larger_k(ev: Injection, topks: list[str], K: int, paper: str) -> list[dict[str, object]]:
    """Claim 6: the largest k gains at most 0.1 of retained Recall@1 over the smallest; untestable when a k has
    too few clean hits or every k has collapsed (a floor)."""
    ret = {p: ev.retained("spike", p, K) for p in topks}
    lo_k, hi_k = topks[0], topks[-1]
    gain, gain_reps = ret[hi_k][0] - ret[lo_k][0], ret[hi_k][1] - ret[lo_k][1]
    collapsed = max(r[0] for r in ret.values()) < claims.COLLAPSE_FLOOR  # all at the floor: no comparison

    def rule(lo: float, hi: float, n: int | None) -> str:
        return "untestable here" if collapsed else claims.direction(lo, hi, 2 * claims.SIMILAR_MARGIN, above=False,
                                                                    n_seeds=n)

    link = f"larger k does not help ({label(hi_k)} - {label(lo_k)} <= {2 * claims.SIMILAR_MARGIN:g})"
    return [ev.row("6", link, f"retained Recall@1 under K={K} spikes, {label(hi_k)} - {label(lo_k)} (retained: "
                   + ", ".join(f"{label(p)} {r[0]:.3f}" for p, r in ret.items()) + ")", paper, gain, gain_reps,
                   rule, min(r[2] for r in ret.values()))]


def length_neutral(ev: Injection, poolings: list[str], K: int, paper: str) -> list[dict[str, object]]:
    """Claim 7: K Gaussian patches leave Recall@1 within 1 +- ``LENGTH_NEUTRAL_MARGIN`` of its clean value."""
    rows = []
    for p in poolings:
        point, reps, hits = ev.retained("gaussian", p, K)
        rows.append(ev.row("7", f"Gaussian barely changes {label(p)}", f"retained Recall@1, Gaussian K={K} "
                           f"(within 1 +- {LENGTH_NEUTRAL_MARGIN:g})", paper, point, reps,
                           lambda lo, hi, n: claims.similar(lo, hi, LENGTH_NEUTRAL_MARGIN, 1.0, n_seeds=n), hits))
    return rows


def argmax_moves(ev: Injection, poolings: list[str], K: int, paper: str) -> list[dict[str, object]]:
    """Claim 8: the hijack rate (arg-max share on injected patches) exceeds ``MOST`` under spikes and stays
    under ``FEW`` under Gaussian patches, in each pooling's top non-gold document."""
    rows = []
    for p in poolings:
        for kind, text, thr, above, pp in (("spike", "spikes take most arg-max selections", MOST, True, paper),
                                           ("gaussian", "Gaussian patches take few", FEW, False, "< 0.15")):
            point, reps = ev.mean(kind, p, K, "hijack_rate")
            rows.append(ev.row("8", f"{text}, {label(p)}", f"hijack rate (share of query tokens whose arg-max patch "
                               f"is injected), {kind} K={K} ({'>' if above else '<'} {thr})", pp, point, reps,
                               lambda lo, hi, n, t=thr, a=above: claims.direction(lo, hi, t, above=a, n_seeds=n)))
    return rows


def length_effect_reading(table: pd.DataFrame) -> str:
    """One sentence per softmax judged by ``keeps_more`` in a claims table: its retained-recall advantage under
    spikes, the same at equal length, and what the two intervals together say (indicative where they rest on
    fewer than ``claims.MIN_SEEDS`` trained seeds)."""
    out = []
    for link in table[table["link"].str.endswith(" keeps more")]["link"]:
        raw = table[table["link"] == link].iloc[0]
        eq = table[table["link"] == f"{link} at equal length"].iloc[0]
        if "untestable here" in (raw["verdict"], eq["verdict"]):
            what = f"too few hits to judge (at least {claims.MIN_BASE_HITS} needed)"
        elif raw["ci_low"] > 0 and eq["ci_low"] > 0:
            what = "the advantage survives the equal-length control"
        elif raw["ci_low"] > 0:
            what = "the advantage does not survive the equal-length control: a length effect, not robustness"
        else:
            what = "no advantage established under spikes"
        if "indicative" in (raw["verdict"], eq["verdict"]):
            what += f" (indicative: fewer than {claims.MIN_SEEDS} trained seeds or an undecided interval)"
        out.append(f"{link}: {raw['ours']:+.3f} [{raw['ci_low']:+.3f}, {raw['ci_high']:+.3f}] retained recall over "
                   f"the best hard pooling, {eq['ours']:+.3f} [{eq['ci_low']:+.3f}, {eq['ci_high']:+.3f}] at equal "
                   f"length; {what}.")
    return "\n".join(out)


def curves(table: pd.DataFrame, metrics: tuple[str, ...] = ("retained", "hijack_rate", "selection_mass"),
           n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per (kind, pooling, K) of a per-query injection table (module docstring; no ``seed`` column: one seed):
    the mean over seeds of each metric and its 95 % hierarchical-bootstrap interval (``stats.seed_bootstrap``:
    seeds, then queries), for the figures. ``retained`` is each seed's Recall@1 over its clean one (K = 0, the
    same queries), averaged over seeds as ``ch03.injection_summary`` does; ``recall@1`` is the mean hit. Columns
    kind, pooling, K, then ``m``, ``m_low``, ``m_high`` for each metric ``m``. Intervals stay in each metric's
    range (percentiles of means)."""
    t = table if "seed" in table.columns else table.assign(seed=0)
    rows = []
    for (kind, pooling), g in t.groupby(["kind", "pooling"], sort=False):
        by_k = {K: {s: gs.sort_values("query") for s, gs in gk.groupby("seed")} for K, gk in g.groupby("K")}
        clean = by_k.get(0)
        for K, seeds in by_k.items():
            row: dict[str, object] = {"kind": kind, "pooling": pooling, "K": K}
            for m in metrics:
                col = "hit" if m in ("retained", "recall@1") else m
                vals = [seeds[s][col].to_numpy() for s in seeds]
                if m == "retained":
                    if clean is None or set(clean) != set(seeds):
                        continue
                    base = [clean[s]["hit"].to_numpy() for s in seeds]
                    est = seed_bootstrap(vals, base, LEVEL, n_boot, seed)
                else:
                    est = seed_bootstrap(vals, None, LEVEL, n_boot, seed)
                row.update(dict(zip((m, f"{m}_low", f"{m}_high"), est, strict=True)))
            rows.append(row)
    return pd.DataFrame(rows)
