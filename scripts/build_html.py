"""Render executed notebooks to a static HTML book: one page per notebook plus an index page."""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

from nbconvert import HTMLExporter


def title_of(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("# ").strip()
    return nb_path.stem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("build/html"))
    ap.add_argument("--first", default=None, help="stem of the notebook listed first (e.g. the report)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    nbs = sorted(args.notebooks, key=lambda p: (p.stem != args.first, p.name))
    items = []
    for nb in nbs:
        body, _ = exporter.from_filename(str(nb))
        (args.out / f"{nb.stem}.html").write_text(body)
        items.append(f'<li><a href="{nb.stem}.html">{html.escape(title_of(nb))}</a> <code>{nb.name}</code></li>')
    index = (
        "<!doctype html><html><head><meta charset='utf-8'><title>spikehijack</title>"
        "<style>body{font-family:sans-serif;max-width:48em;margin:3em auto;line-height:1.5}</style></head><body>"
        "<h1>spikehijack: an executable reproduction of <em>Spike Hijacking in Late-Interaction Retrieval</em></h1>"
        f"<ol>{''.join(items)}</ol></body></html>"
    )
    (args.out / "index.html").write_text(index)
    print(f"wrote {len(items)} notebooks to {args.out}/index.html")


if __name__ == "__main__":
    main()
