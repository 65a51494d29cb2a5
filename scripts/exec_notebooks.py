"""Run notebooks' code cells as plain Python (no Jupyter needed), with papermill-style parameters.

    python scripts/exec_notebooks.py -p device auto notebooks/02_synthetic_gradient_spikes.ipynb ...

Each notebook runs in a fresh namespace with ``notebooks/`` as working directory; a ``-p NAME VALUE`` pair
overrides NAME after the cell tagged ``parameters`` (only in notebooks that define NAME there), as papermill
does. Figures go to the non-interactive backend. Used where Jupyter is not installed (e.g. the GPU check of
``scripts/run_code_path.sh``); the stored outputs are not touched.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path


def run(path: Path, params: dict[str, str]) -> float:
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    ns: dict[str, object] = {"__name__": "__main__", "display": print}
    start = time.perf_counter()
    for cell in cells:
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}", "exec"), ns)  # noqa: S102 (the book's own cells)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            for name, value in params.items():
                if name in ns:
                    try:
                        ns[name] = ast.literal_eval(value)
                    except (ValueError, SyntaxError):
                        ns[name] = value
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("notebooks", nargs="+", type=Path)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    params = dict(args.parameter)
    root = Path.cwd()
    for nb in args.notebooks:
        os.chdir(root / "notebooks")
        sys.path.insert(0, str(root))
        print(f"== {nb.name}: {run(root / nb, params):.1f} s", flush=True)
        os.chdir(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
