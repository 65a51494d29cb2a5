"""Statistics for result tables: confidence intervals, one hierarchical bootstrap (``Resampler``: seeds, then units
within each drawn seed), paired tests and effect sizes (verdicts: ``claims``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95,
            bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high) with a Student-t interval over independent values (seeds, queries).

    One value gives a zero-width interval (stated as such in tables: n = 1). ``bounds`` clips the interval to
    the quantity's range (e.g. (0, 1) for a recall, (-1, 1) for a difference of two).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("mean_ci: values is empty (or all NaN)")
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    half = float(_st.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    low, high = m - half, m + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return m, low, high


def summarize(df: pd.DataFrame, by: Sequence[str], value: str = "value", level: float = 0.95,
              bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    """Group a tidy table and give n, mean and the t-interval of ``value`` per group (clipped to ``bounds``)."""
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        m, lo, hi = mean_ci(g[value].to_numpy(), level, bounds)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n": len(g), "mean": m, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


#: The range of each kind of quantity, by a word in its name: an interval never leaves it (``bounds_for``).
RANGES: tuple[tuple[str, tuple[float, float]], ...] = (
    ("retained", (0.0, float("inf"))),  # a ratio to the clean value: above 1 when injection helps
    ("recall", (0.0, 1.0)), ("r1", (0.0, 1.0)), ("mrr", (0.0, 1.0)), ("rr", (0.0, 1.0)), ("ndcg", (0.0, 1.0)),
    ("gini", (0.0, 1.0)), ("hijack", (0.0, 1.0)), ("selection", (0.0, 1.0)), ("share", (0.0, 1.0)),
)


def bounds_for(metric: str) -> tuple[float, float] | None:
    """The range of a metric from its name (``RANGES``), None when unbounded (a loss, a difference).

    >>> bounds_for("recall@1"), bounds_for("spike_retained"), bounds_for("gini_pair_mean"), bounds_for("loss")
    ((0.0, 1.0), (0.0, inf), (0.0, 1.0), None)
    """
    name = metric.lower()
    if name.startswith(("d_", "delta")):
        return None
    return next((b for word, b in RANGES if word in name), None)


def wilson_ci(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` of ``n`` independent binary outcomes (e.g. Recall@1 over n
    queries): inside [0, 1], and not zero-width at 0 or 1 as the normal approximation is.

    >>> [round(v, 3) for v in wilson_ci(0.5, 100)], wilson_ci(0.0, 10)[0]
    ([0.404, 0.596], 0.0)
    """
    if n <= 0 or not np.isfinite(p):
        return float("nan"), float("nan")
    z = float(_st.norm.ppf(0.5 + level / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired t-test of a vs b with the mean difference and Cohen's d_z (mean diff / sd of diffs)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"paired_test needs two equal-length samples of >= 2, got {a.shape} and {b.shape}")
    diff = a - b
    res = _st.ttest_rel(a, b)
    sd = diff.std(ddof=1)
    return {
        "mean_diff": float(diff.mean()),
        "t": float(res.statistic),
        "p": float(res.pvalue),
        "cohens_dz": float(diff.mean() / sd) if sd > 0 else float("inf") * np.sign(diff.mean()),
        "n": int(a.size),
    }


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high) with a percentile bootstrap over the values (for per-query metrics)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci: values is empty")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


class Resampler:
    """One hierarchical bootstrap: seeds drawn with replacement, then units (queries, pairs) within each drawn
    seed, drawn ONCE and reused for every array of units it averages, so estimates of two arms are paired.

    ``sizes[s]``: seed s's number of units (ragged allowed). ``seeds`` [B, S]: the seed drawn at each position of
    each replicate, ``rng.integers(0, S, (B, S))``. ``units`` [B, S, N]: the units drawn at each position, with
    N the largest size. Equal sizes Q draw ``rng.integers(0, Q, (B, S, Q))`` next from the same generator (the
    draws of ``evidence.Injection`` before it used this class); ragged sizes draw ``rng.integers(0, n, (B, S,
    N))`` with n the size of the seed drawn at that position, and a position keeps its first n units (n draws
    with replacement from its own seed's units; ``mask`` [B, S, N] marks them).

    >>> r = Resampler([3, 3], n_boot=4)
    >>> r.seeds.shape, r.units.shape, r.means([np.ones(3), np.zeros(3)]).shape
    ((4, 2), (4, 2, 3), (4, 2))
    """

    def __init__(self, sizes: Sequence[int], n_boot: int = 2000, seed: int = 0):
        self.sizes = np.asarray([int(n) for n in sizes], dtype=int)
        if self.sizes.size == 0 or (self.sizes < 1).any():
            raise ValueError("Resampler: every seed needs at least one unit")
        S, N = self.sizes.size, int(self.sizes.max())
        rng = np.random.default_rng(seed)
        self.seeds = rng.integers(0, S, size=(n_boot, S))  # [B, S]
        self.equal = bool((self.sizes == N).all())
        if self.equal:
            self.units, self.mask = rng.integers(0, N, size=(n_boot, S, N)), None  # [B, S, N]
        else:
            n = self.sizes[self.seeds][:, :, None]  # [B, S, 1]: the drawn seed's size
            self.units, self.mask = rng.integers(0, n, size=(n_boot, S, N)), np.arange(N) < n

    def _check(self, units: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        xs = [np.asarray(u, dtype=float) for u in units]
        if [x.size for x in xs] != self.sizes.tolist():
            raise ValueError(f"Resampler: unit arrays of sizes {[x.size for x in xs]}, drawn for {self.sizes.tolist()}")
        return xs

    def point(self, units: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Per-seed means [S] of per-seed unit arrays (a list, or an [S, Q] array when sizes are equal)."""
        return np.array([x.mean() for x in self._check(units)])

    def means(self, units: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Replicate means [B, S]: at each position, the mean of the drawn seed's drawn units."""
        xs = self._check(units)
        pad = np.zeros((len(xs), int(self.sizes.max())))
        for s, x in enumerate(xs):
            pad[s, :x.size] = x
        drawn = pad[self.seeds[:, :, None], self.units]  # [B, S, N]
        if self.equal:
            return drawn.mean(axis=2)
        return np.where(self.mask, drawn, 0.0).sum(axis=2) / self.sizes[self.seeds]

    def estimate(self, values: Sequence[np.ndarray] | np.ndarray, base: Sequence[np.ndarray] | np.ndarray | None = None
                 ) -> tuple[float, np.ndarray]:
        """(point, replicates [B]) of ``seed_mean``: per-seed means of ``values``, or per-seed ratios of means of
        ``values`` over ``base`` (paired unit by unit), averaged over seeds; a replicate NaN when every position
        is (left out of an interval)."""
        num, reps = self.point(values), self.means(values)
        den, den_reps = (None, None) if base is None else (self.point(base), self.means(base))
        return float(seed_mean(num, den)), seed_mean(reps, den_reps)


def seed_mean(num: np.ndarray, den: np.ndarray | None = None) -> np.ndarray:
    """The mean over seeds (last axis) of per-seed means ``num``, or of per-seed ratios ``num / den`` (NaN where
    ``den`` is 0): NaN seeds are left out, as in a table of per-seed ratios; NaN where every seed is NaN.

    >>> float(seed_mean(np.array([0.25, 0.75])))
    0.5
    >>> seed_mean(np.array([[1.0, 0.0], [1.0, 3.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [2.0, 1.0], [0.0, 0.0]]))
    array([0.5 , 1.75,  nan])
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num if den is None else np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        ok = np.isfinite(r)
        n = ok.sum(axis=-1)
        return np.where(n > 0, np.where(ok, r, 0.0).sum(axis=-1) / np.maximum(n, 1), np.nan)


def seed_bootstrap(
    values: Sequence[np.ndarray], base: Sequence[np.ndarray] | None = None, level: float = 0.95,
    n_boot: int = 2000, seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high) of the mean over seeds of a per-seed mean, or of a per-seed ratio of paired means
    (``base``: the denominator's units, paired with ``values`` unit by unit, e.g. the same queries clean),
    with a percentile interval from the hierarchical bootstrap of ``Resampler`` (seeds, then units within each
    drawn seed; the same ``seed`` and sizes give the same draws).

    ``values[s]`` holds seed s's units (queries, pairs). A seed whose denominator is 0 gives NaN and is left out
    of the mean over seeds, as in a table of per-seed ratios. With one seed it is the bootstrap over units. A
    percentile interval of means stays in the range of the values (a Recall@1 interval in [0, 1]).

    >>> seed_bootstrap([np.array([1.0, 0.0, 1.0, 1.0])])[0], seed_bootstrap([np.ones(5)], [2 * np.ones(5)])
    (0.75, (0.5, 0.5, 0.5))
    """
    vals = [np.asarray(v, dtype=float) for v in values]
    dens = None if base is None else [np.asarray(b, dtype=float) for b in base]
    if not vals or any(v.size == 0 for v in vals):
        raise ValueError("seed_bootstrap: every seed needs at least one unit")
    if dens is not None and [d.shape for d in dens] != [v.shape for v in vals]:
        raise ValueError("seed_bootstrap: base must pair with values unit by unit")
    point, reps = Resampler([v.size for v in vals], n_boot, seed).estimate(vals, dens)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)
