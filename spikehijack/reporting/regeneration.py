"""The regeneration contract: what a rerun must give back exactly, what within a tolerance, and the tolerances.

Readers rerun the book on Intel and AMD CPUs, Apple silicon and GPUs, where the same float arithmetic is summed in
another order. So a rerun is checked at two levels (README, "Results that regenerate on any machine"):

- exact: every word, table layout, verdict, integer count and figure structure of every stored output (nbval
  compares the text with each decimal number masked by ``tests/nbval_sanitize.cfg``, integers kept);
- statistical: every decimal number, in the notebooks' outputs (``tests/nbval_numbers.py``) and in the result
  tables they write (``compare_tables``: ``results/quick/`` against the committed ``reports/quick/``), within
  the tolerance of its quantity in ``TOLERANCES``.

Tolerances are data, each with the reason for its size; ``spread`` measures what they must cover (the largest
difference between runs of the book under different CPU code paths or devices: ``scripts/regeneration.py``).

>>> numbers_close("0.433", "0.4330000001", atol=1e-9)
True
>>> numbers_close("0.433", "0.434", atol=1e-9)  # one unit of the last printed digit: a rounding flip
True
>>> numbers_close("0.433", "0.435", atol=1e-9)
False
>>> compare_text("R@1 0.433 (n=64)", "R@1 0.4331 (n=64)", atol=1e-3)
[]
>>> compare_text("R@1 0.433 (n=64)", "R@1 0.433 (n=65)", atol=1e-3)
['integer 64 became 65 (integers regenerate exactly)']
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: A number in text: integers, decimals, scientific notation (an optional sign when it follows a non-word char).
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")


@dataclass(frozen=True)
class Tolerance:
    """How far a regenerated number may lie from its committed value: ``|a - b| <= atol + rtol * max(|a|, |b|)``
    (in notebook text also one unit of the last printed digit: a value next to a rounding boundary flips it).

    ``table`` and ``column`` are shell patterns matched against a result table's file name and column name.
    """

    table: str
    column: str
    atol: float
    rtol: float
    reason: str


#: The tolerance table, first match wins. Sizes come from the spread measured across CPU code paths
#: (ATEN_CPU_CAPABILITY default / avx2 / avx512, MKL_CBWR) and a CUDA GPU: reports/regeneration_spread.csv.
TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance("claims_*.csv", "*", 1.01e-4, 0.0, "claims tables round ours and its interval to 4 decimals "
              "(stats.claim_row): a value next to a rounding boundary moves by one unit, 1e-4"),
    Tolerance("noise_growth_mc_01.csv", "*", 1e-5, 1e-5, "Monte Carlo of untrained noise maxima drawn in float32 "
              "(theory.noise_pool_monte_carlo, for speed): float32 means of thousands of draws, 2.5e-9 measured; 1e-5 "
              "leaves room for other vector widths and stays far below the printed 3 decimals"),
    Tolerance("*", "*", 1e-6, 1e-6, "float64 end to end in the quick profile (profiles.py): every other number "
              "agreed to 6.5e-13 or better across 3 CPU code paths, a second CPU with torch 2.11 and an H200; 1e-6 "
              "keeps every printed digit while a real change fails"),
)

#: Decimal numbers in notebook outputs (nbval): the catch-all row above, stated for text.
TEXT_TOLERANCE = TOLERANCES[-1]


def tolerance_for(table: str, column: str) -> Tolerance:
    """The first row of ``TOLERANCES`` matching a table file name and a column name."""
    for tol in TOLERANCES:
        if fnmatch.fnmatch(table, tol.table) and fnmatch.fnmatch(column, tol.column):
            return tol
    raise LookupError(f"no tolerance for {table}:{column}")  # unreachable while the catch-all row exists


def _decimals(s: str) -> int | None:
    """Digits after the point of a plainly printed decimal ("0.4330" -> 4); None for integers and 1e-5 forms."""
    s = s.strip()
    if "e" in s.lower() or "." not in s:
        return None
    return len(s.split(".")[1])


def numbers_close(a: str, b: str, atol: float, rtol: float = 0.0, printed: bool = True) -> bool:
    """Whether two numbers agree within ``atol + rtol * max|.|``, plus one unit of their last printed digit when
    ``printed`` (text rounded for the reader; a table cell holds the full value, ``printed=False``)."""
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    places = [d for d in (_decimals(a), _decimals(b)) if d is not None]
    unit = 10.0 ** -min(places) if places and printed else 0.0
    return abs(x - y) <= atol + rtol * max(abs(x), abs(y)) + unit * (1 + 1e-9)


def _is_integer(s: str) -> bool:
    return "." not in s and "e" not in s.lower()


def compare_text(ref: str, test: str, atol: float = TEXT_TOLERANCE.atol, rtol: float = TEXT_TOLERANCE.rtol
                 ) -> list[str]:
    """Differences between two outputs: the words must be equal, integers equal, decimals within tolerance."""
    words_ref, words_test = NUMBER.split(ref), NUMBER.split(test)
    if words_ref != words_test:
        return ["the text around the numbers differs"]
    problems = []
    for a, b in zip(NUMBER.findall(ref), NUMBER.findall(test), strict=True):
        if _is_integer(a) and _is_integer(b):
            if a != b:
                problems.append(f"integer {a} became {b} (integers regenerate exactly)")
        elif not numbers_close(a, b, atol, rtol):
            problems.append(f"{a} became {b} (tolerance {atol:g} + {rtol:g} relative + one printed unit)")
    return problems


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def compare_table(committed: str | os.PathLike, regenerated: str | os.PathLike) -> list[str]:
    """Differences between one committed result table and its regenerated copy, cell by cell.

    Columns and row order must be equal; a cell that is text in either copy (verdicts, labels) must be equal;
    numeric cells follow ``TOLERANCES`` for (file name, column).
    """
    a, b = Path(committed), Path(regenerated)
    x, y = _read(a), _read(b)
    name = a.name
    if list(x.columns) != list(y.columns):
        return [f"{name}: columns {list(x.columns)} became {list(y.columns)}"]
    if len(x) != len(y):
        return [f"{name}: {len(x)} rows became {len(y)}"]
    problems = []
    for col in x.columns:
        tol = tolerance_for(name, col)
        bad = []
        for i, (u, v) in enumerate(zip(x[col], y[col], strict=True)):
            if u == v:
                continue
            if not (_is_number(u) and _is_number(v)) or (_is_integer(u) and _is_integer(v)):
                bad.append(f"row {i}: {u!r} became {v!r}")
            elif not numbers_close(u, v, tol.atol, tol.rtol, printed=False):
                bad.append(f"row {i}: {u} became {v}")
        if bad:
            problems.append(f"{name}, column {col!r} (tolerance atol {tol.atol:g}, rtol {tol.rtol:g}): "
                            + "; ".join(bad[:3]) + (f"; ... {len(bad)} cells" if len(bad) > 3 else ""))
    return problems


def compare_tables(committed: str | os.PathLike, regenerated: str | os.PathLike, common: bool = False) -> list[str]:
    """``compare_table`` for every CSV of two folders; with ``common`` only the tables present in both."""
    fa = {p.name: p for p in sorted(Path(committed).glob("*.csv"))}
    fb = {p.name: p for p in sorted(Path(regenerated).glob("*.csv"))}
    problems = []
    for name in sorted(set(fa) & set(fb) if common else set(fa) | set(fb)):
        if name not in fa or name not in fb:
            problems.append(f"{name}: only in the {'committed' if name in fa else 'regenerated'} folder")
            continue
        problems += compare_table(fa[name], fb[name])
    return problems


def _as_text(col: pd.Series) -> list[str]:
    return col.astype(object).where(col.notna(), "").astype(str).tolist()


def spread(folders: Sequence[str | os.PathLike], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """The largest difference of every numeric column of every table between runs of the book.

    ``folders`` hold the result tables of one run each (same code, different code paths or devices); the first
    is the reference. Rows: table, column, tolerance (atol, rtol), then per other run the max |difference| (NaN:
    the run lacks the table) and whether the table's text cells (verdicts, labels) were identical (None: lacks it).
    """
    labels = list(labels) if labels is not None else [Path(f).name for f in folders]
    rows, same = [], {label: {} for label in labels[1:]}
    for path in sorted(Path(folders[0]).glob("*.csv")):
        base = pd.read_csv(path)
        others = {label: pd.read_csv(Path(f) / path.name) if (Path(f) / path.name).exists() else None
                  for f, label in zip(folders[1:], labels[1:], strict=True)}
        text = [c for c in base.columns if not pd.api.types.is_numeric_dtype(base[c])]
        for label, other in others.items():
            same[label][path.name] = None if other is None else len(other) == len(base) and all(
                c in other and _as_text(base[c]) == _as_text(other[c]) for c in text)
        for col in base.columns:
            if col in text:
                continue
            tol = tolerance_for(path.name, col)
            row = {"table": path.name, "column": col, "atol": tol.atol, "rtol": tol.rtol}
            for label, other in others.items():
                if other is None or col not in other or len(other) != len(base):
                    row[label] = float("nan")
                    continue
                d = (base[col].astype(float) - other[col].astype(float)).abs()
                both_nan = base[col].isna() & other[col].isna()
                row[label] = float(d[~both_nan].max()) if bool((~both_nan).any()) else 0.0
            rows.append(row)
    out = pd.DataFrame(rows)
    for label, tables in same.items():
        out[f"{label}_text_equal"] = out["table"].map(tables)
    return out
