"""Regenerate README.md's results table (between <!-- results:start --> and <!-- results:end -->).

    python scripts/update_readme_results.py          # README from the tracked tables in reports/quick/
    python scripts/update_readme_results.py --sync   # first copy results/quick/claims_*.csv to reports/quick/
    python scripts/update_readme_results.py --check  # exit 1 when README is stale (changes nothing)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spikehijack.io import REPO_ROOT
from spikehijack.report import compare_tables, extract_block, readme_block, sync_tables, update_readme


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sync", action="store_true", help="copy results/quick/claims_*.csv into reports/quick/ first")
    ap.add_argument("--check", action="store_true", help="only check that README is up to date")
    ap.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    ap.add_argument("--tables", type=Path, default=REPO_ROOT / "reports" / "quick")
    ap.add_argument("--results", type=Path, default=REPO_ROOT / "results" / "quick")
    args = ap.parse_args(argv)
    if args.check:
        stale = extract_block(args.readme.read_text()) != readme_block(args.tables).strip()
        problems = compare_tables(args.results, args.tables) if args.results.is_dir() else []
        for p in problems:
            print(f"results/quick vs {args.tables.name}: {p}")
        print("README results table is", "STALE" if stale else "up to date")
        return int(stale or bool(problems))
    if args.sync:
        copied = sync_tables(args.results, args.tables)
        print(f"copied {len(copied)} claims table(s) into {args.tables}")
    changed = update_readme(args.readme, args.tables)
    print("README.md updated" if changed else "README.md already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
