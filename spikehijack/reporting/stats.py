"""Statistics for result tables: confidence intervals, paired tests and effect sizes (verdicts: ``claims``)."""

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


def seed_bootstrap(
    values: Sequence[np.ndarray], base: Sequence[np.ndarray] | None = None, level: float = 0.95,
    n_boot: int = 2000, seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high) of the mean over seeds of a per-seed mean, or of a per-seed ratio of paired means
    (``base``: the denominator's units, paired with ``values`` unit by unit, e.g. the same queries clean),
    with a hierarchical percentile bootstrap: draw seeds with replacement, then units within each drawn seed.

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

    def stat(num: np.ndarray, den: np.ndarray | None) -> np.ndarray:
        if den is None:
            return num
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    point_per_seed = stat(np.array([v.mean() for v in vals]),
                          None if dens is None else np.array([d.mean() for d in dens]))
    point = float(np.nanmean(point_per_seed)) if np.isfinite(point_per_seed).any() else float("nan")
    rng = np.random.default_rng(seed)
    S = len(vals)
    draws = rng.integers(0, S, size=(n_boot, S))
    reps = np.empty((n_boot, S))
    for p in range(S):  # position p of a replicate: its drawn seed, with fresh unit draws
        for s in range(S):
            idx = rng.integers(0, vals[s].size, size=(n_boot, vals[s].size))
            here = draws[:, p] == s
            reps[here, p] = stat(vals[s][idx[here]].mean(1), None if dens is None else dens[s][idx[here]].mean(1))
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(reps).any(1)
        reps = np.nanmean(np.where(ok[:, None], reps, 0.0), axis=1)[ok] if ok.any() else np.array([])
    if reps.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)
