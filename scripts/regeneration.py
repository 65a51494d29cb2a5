"""Measure what the regeneration tolerances must cover: run the book under several code paths, then compare.

    scripts/run_code_path.sh build/paths/native                                  # this CPU's own code path
    ATEN_CPU_CAPABILITY=avx2 scripts/run_code_path.sh build/paths/avx2
    ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE scripts/run_code_path.sh build/paths/default
    DEVICE=auto scripts/run_code_path.sh build/paths/cuda                        # on a machine with a GPU
    python scripts/regeneration.py build/paths/native build/paths/avx2 build/paths/default build/paths/cuda \\
        --out reports/regeneration_spread.csv

Prints, per table and column, the largest difference from the first run and the tolerance it must stay under,
checks every run against the committed tables, and exits 1 when a difference exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spikehijack.io import REPO_ROOT, REPORTS, write_csv
from spikehijack.reporting.regeneration import compare_tables, spread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="folders written by scripts/run_code_path.sh")
    ap.add_argument("--out", type=Path, help="write the spread table here (CSV)")
    ap.add_argument("--committed", type=Path, default=REPO_ROOT / REPORTS["quick"])
    args = ap.parse_args(argv)
    tables = [r / "results" / "quick" for r in args.runs]
    labels = [r.name for r in args.runs]
    s = spread(tables, labels)
    if args.out:
        write_csv(s, args.out)
    others = labels[1:]
    worst = s[others].max(axis=1)
    print(s.assign(worst=worst).sort_values("worst", ascending=False).head(25).to_string(index=False))
    print("\nlargest difference per run:", {k: float(s[k].max()) for k in others})
    print("text cells (verdicts, labels) identical:", {k: bool(s[f"{k}_text_equal"].all()) for k in others})
    failed = 0
    for label, t in zip(labels, tables, strict=True):
        problems = compare_tables(args.committed, t, common=True)
        failed += bool(problems)
        print(f"{label} vs committed:", "within tolerance" if not problems else "\n  " + "\n  ".join(problems))
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
