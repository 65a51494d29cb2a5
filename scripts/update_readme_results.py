"""Regenerate README.md's results tables (between <!-- results:start/end --> and <!-- paper-results:start/end -->).

    python scripts/update_readme_results.py          # both blocks from the tracked tables (reports/quick/,
                                                     # reports/paper/tables/)
    python scripts/update_readme_results.py --sync   # first copy results/quick/*.csv to reports/quick/
    python scripts/update_readme_results.py --check  # exit 1 when README is stale (changes nothing)

The paper profile writes its tables straight into the tracked reports/paper/tables/ (``make paper``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spikehijack.chapters.ch06_report import MARKERS, TRACKED, extract_block, readme_block, sync_tables, update_readme
from spikehijack.io import REPO_ROOT, results_dir
from spikehijack.reporting.regeneration import compare_tables


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sync", action="store_true", help="copy results/quick/*.csv into reports/quick/ first")
    ap.add_argument("--check", action="store_true", help="only check that README is up to date")
    ap.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    ap.add_argument("--tables", type=Path, default=TRACKED["quick"], help="tracked quick-profile tables")
    ap.add_argument("--paper-tables", type=Path, default=TRACKED["paper"], help="tracked paper-profile tables")
    ap.add_argument("--results", type=Path, default=results_dir("quick"))
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    blocks = {"quick": args.tables, "paper": args.paper_tables}
    blocks = {k: v for k, v in blocks.items() if MARKERS[k][0] in text or k == "quick"}  # paper block optional
    if args.check:
        stale = [k for k, tables in blocks.items() if extract_block(text, k) != readme_block(tables, k).strip()]
        problems = compare_tables(args.tables, args.results, common=True) if args.results.is_dir() else []
        for p in problems:
            print(f"results/quick vs {args.tables.name}: {p}")
        print("README results tables:", f"STALE ({', '.join(stale)})" if stale else "up to date")
        return int(bool(stale) or bool(problems))
    if args.sync:
        copied = sync_tables(args.results, args.tables)
        print(f"copied {len(copied)} table(s) into {args.tables}")
    for profile, tables in blocks.items():
        changed = update_readme(args.readme, tables, profile)
        print(f"README.md {profile} block", "updated" if changed else "already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
