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


def summarize(df: pd.DataFrame, by: Sequence[str], value: str = "value", level: float = 0.95) -> pd.DataFrame:
    """Group a tidy table and give n, mean and the t-interval of ``value`` per group."""
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        m, lo, hi = mean_ci(g[value].to_numpy(), level)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n": len(g), "mean": m, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


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
