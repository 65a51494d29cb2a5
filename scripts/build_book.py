"""Build the book (Jupyter Book 1.x, offline) from the executed notebooks' stored outputs into build/html.

1. stage book/ (config, table of contents, landing page) in build/book/, the quick-profile notebooks under
   chapters/ and the paper-profile copies (reports/paper/*.ipynb) under paper/ (their title marked "paper
   profile"); notebooks are never executed;
2. draw the claims figure (``plots.plot_claims``) of each profile's claims.csv to a PNG for the landing page;
3. write the landing page's numbers (verdict counts, a per-claim table, headline estimates) as MyST
   substitutions into the staged _config.yml: generated from reports/quick/claims.csv (and
   reports/paper/tables/claims.csv where it exists), never typed by hand;
4. copy MathJax 3 (the django-static-mathjax wheel, a pip dependency of the ``book`` extra) into _static so math
   renders with no network, then run ``jupyter-book build`` and move its HTML to build/html.

Usage: python scripts/build_book.py [--out build/html]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from spikehijack.io import REPORTS  # noqa: E402
from spikehijack.reporting import claims as registry  # noqa: E402
from spikehijack.reporting import plots  # noqa: E402

#: What each verdict means, in the landing page's sentence.
VERDICT_WORDS = {
    "reproduced": "reproduced",
    "partly reproduced": "partly reproduced",
    "not reproduced": "not reproduced",
    "indicative": "indicative (an interval over too few seeds to decide)",
    "untestable here": "untestable here (too little base evidence)",
    "calibrated": "a calibration target",
    "mechanism": "mechanisms shown on untrained inputs",
    "supported": "supported",
    "not supported": "not supported",
    "inconclusive": "inconclusive",
}
#: Headline estimates quoted on the landing page: (name, claim, link pattern, world, what it is).
HEADLINES = [
    ("gini_maxsim", "1", r"level, MaxSim", "synthetic", "final gradient Gini of MaxSim (synthetic world)"),
    ("gini_softmax", "1", r"level, Softmax", "synthetic", "final gradient Gini of softmax (synthetic world)"),
    ("retained_maxsim", "5", r"spikes collapse MaxSim", "real", "Recall@1 retained by MaxSim under 100 injected "
     "spikes (real benchmark)"),
    ("softmax_equal_length", "5", r"keeps more at equal length", "real", "softmax's retained-recall advantage over the "
     "best hard pooling at equal length (real benchmark)"),
    ("hijack_maxsim", "8", r"spikes take most arg-max selections, MaxSim", "real", "hijack rate: share of query "
     "tokens whose arg-max patch is an injected spike, MaxSim (real benchmark)"),
]


def counts_sentence(df: pd.DataFrame) -> str:
    """'Of the N links ... k reproduced, ...; of the M findings ...' from a claims table."""
    def phrase(sub: pd.DataFrame, order: tuple[str, ...]) -> str:
        counts = sub["verdict"].value_counts()
        parts = [f"{int(counts[v])} {VERDICT_WORDS[v]}" for v in order if v in counts]
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]

    is_finding = df["claim"].astype(str).str.startswith("B")
    paper, beyond = df[~is_finding], df[is_finding]
    text = (f"Of the {len(paper)} links tested for the paper's {paper['claim'].nunique()} claims, "
            f"{phrase(paper, registry.CLAIM_VERDICTS)}.")
    if len(beyond):
        text += (f" Of the {len(beyond)} tests of {beyond['claim'].nunique()} findings beyond the paper, "
                 f"{phrase(beyond, registry.FINDING_VERDICTS)}.")
    return text


def claims_table(df: pd.DataFrame) -> str:
    """A Markdown table: each paper claim, its text and how its links were judged."""
    rows = ["| claim | what the paper says | links judged |", "|---|---|---|"]
    for claim, text in registry.PAPER_CLAIMS.items():
        sub = df[df["claim"].astype(str) == claim]
        if sub.empty:
            continue
        counts = sub["verdict"].value_counts()
        judged = ", ".join(f"{int(counts[v])} {v}" for v in registry.CLAIM_VERDICTS if v in counts)
        rows.append(f"| {claim} | {text} | {judged} |")
    return "\n".join(rows)


def headline(df: pd.DataFrame) -> str:
    """One bullet per ``HEADLINES`` entry: our estimate [95 % CI] against the paper's number, with the verdict."""
    out = []
    for _, claim, pattern, world, what in HEADLINES:
        sub = df[(df["claim"].astype(str) == claim) & (df["world"] == world)
                 & df["link"].str.contains(pattern, regex=True)]
        if sub.empty:
            raise SystemExit(f"build_book: no claims row for claim {claim} / {pattern!r} / {world}")
        r = sub.iloc[0]
        out.append(f"- {what}: **{r.ours:.3f}** [{r.ci_low:.3f}, {r.ci_high:.3f}] (paper: {r.paper}; "
                   f"{r.verdict})")
    return "\n".join(out)


def render_claims(csv: Path, png: Path) -> pd.DataFrame:
    df = pd.read_csv(csv)
    plots.setup_style()
    fig = plt.figure()
    plots.plot_claims(fig, df)
    plots.check_figure(fig)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return df


def stage_notebook(src: Path, dst: Path, suffix: str = "") -> None:
    """Copy a notebook; with ``suffix``, append it to the first heading (so both profiles' titles differ)."""
    nb = json.loads(src.read_text())
    if suffix:
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                text = "".join(cell["source"])
                new = re.sub(r"^(# .+)$", rf"\1 {suffix}", text, count=1, flags=re.M)
                if new != text:
                    cell["source"] = new
                    break
    dst.write_text(json.dumps(nb, ensure_ascii=False, indent=1))


def mathjax_dir() -> Path:
    """The MathJax 3 ``es5`` folder shipped by the django-static-mathjax wheel (``pip install .[book]``)."""
    try:
        import mathjax
    except ImportError as e:
        raise SystemExit("build_book: MathJax is missing: pip install -e '.[book]' (django-static-mathjax)") from e
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").exists():
        raise SystemExit(f"build_book: no MathJax 3 tex-chtml.js under {es5}")
    return es5


def drop_repeated_inline_scripts(page: Path) -> None:
    """Keep the first of identical inline ``<script>`` lines: under Sphinx 7.4 sphinx-thebe and
    sphinx-togglebutton add their settings twice, and a second ``const THEBE_JS_URL`` is a console error."""
    seen: set[str] = set()
    lines = []
    for line in page.read_text().splitlines(keepends=True):
        key = line.strip()
        if key.startswith("<script>") and key.endswith("</script>"):
            if key in seen:
                continue
            seen.add(key)
        lines.append(line)
    page.write_text("".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "html")
    ap.add_argument("--stage", type=Path, default=ROOT / "build" / "book")
    args = ap.parse_args()
    t0 = time.perf_counter()
    src = args.stage
    shutil.rmtree(src, ignore_errors=True)
    (src / "chapters").mkdir(parents=True)
    (src / "paper").mkdir()
    for name in ("_config.yml", "_toc.yml", "index.md"):
        shutil.copy(ROOT / "book" / name, src / name)
    shutil.copy(ROOT / "book" / "paper_index.md", src / "paper" / "index.md")
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        stage_notebook(nb, src / "chapters" / nb.name)
    for nb in sorted((ROOT / REPORTS["paper"]).glob("[0-9][0-9]_*.ipynb")):
        stage_notebook(nb, src / "paper" / nb.name, suffix="(paper profile)")

    quick = render_claims(ROOT / REPORTS["quick"] / "claims.csv", src / "claims_quick.png")
    subs = {"quick_answer": counts_sentence(quick),
            "quick_headline": headline(quick) + "\n\n" + claims_table(quick)}
    paper_csv = ROOT / REPORTS["paper"] / "tables" / "claims.csv"
    if paper_csv.exists():
        paper = render_claims(paper_csv, src / "paper" / "claims_paper.png")
        shutil.copy(src / "paper" / "claims_paper.png", src / "claims_paper.png")
        subs["paper_answer"] = (f"**Answer (paper profile).** {counts_sentence(paper)}\n\n"
                                "![Claims of the paper profile: estimates, intervals and verdicts](claims_paper.png)")
    else:
        subs["paper_answer"] = ("The paper profile's claims table (`reports/paper/tables/claims.csv`) has not been "
                                "written by the claims registry yet (`make paper` writes it); its executed "
                                "notebooks are in the paper-profile part, their verdicts under the old rules.")
    config = yaml.safe_load((src / "_config.yml").read_text())
    config["parse"]["myst_substitutions"] = subs
    (src / "_config.yml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    shutil.copytree(mathjax_dir(), src / "_mathjax" / "mathjax" / "es5")

    out_root = args.stage.parent / "book_out"
    shutil.rmtree(out_root, ignore_errors=True)
    jb = Path(sys.executable).parent / "jupyter-book"
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    subprocess.run([str(jb), "build", str(src), "--path-output", str(out_root), "--builder", "html", "--quiet"],
                   check=True, env=env)
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.move(out_root / "_build" / "html", args.out)
    for page in args.out.rglob("*.html"):
        drop_repeated_inline_scripts(page)
    shutil.rmtree(out_root, ignore_errors=True)
    pages = len(list(args.out.rglob("*.html")))
    print(f"build_book: {pages} pages in {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
