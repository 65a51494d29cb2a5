"""The reproduction report: every claims table of the book in one place, and the README's results table.

Each chapter writes ``claims_NN.csv`` (rows from ``reporting.claims.row``, verdicts decided there) into
``io.results_dir(profile)``. This module stacks them into one tidy ``claims.csv`` per profile, ties each row to a
claim of PAPER.md section 5 (or to a finding of notebook 05) and renders the tables that notebook 06 shows and
that ``scripts/update_readme_results.py`` writes into README.md between the markers below. Tables written before
the claims registry (``LEGACY_COLUMNS``, e.g. the committed paper profile) are read as they are, their verdicts
marked as under the old rules.

The README is generated from the *tracked* copies under ``reports/quick/`` (``sync_tables`` copies them
from ``results/quick/``), so a fresh clone can check README against tables before any notebook runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ..io import REPO_ROOT, REPORTS, atomic_write, results_dir, write_csv
from ..reporting import claims

#: README markers per profile: the quick block (``make reproduce``) and the paper block (``make paper``).
MARKERS = {"quick": ("<!-- results:start -->", "<!-- results:end -->"),
           "paper": ("<!-- paper-results:start -->", "<!-- paper-results:end -->")}
START, END = MARKERS["quick"]
#: Where each profile's claims tables are tracked in git (the README is generated from these).
TRACKED = {"quick": REPO_ROOT / REPORTS["quick"], "paper": REPO_ROOT / REPORTS["paper"] / "tables"}
_INTRO = {
    "quick": "Quick profile (`make reproduce`, CPU). Paper: the number the paper reports; ours: mean with its 95 % "
             "confidence interval; the full report with figures is "
             "[notebooks/06_reproduction_report.ipynb](notebooks/06_reproduction_report.ipynb). Verdicts "
             "(rules in `spikehijack/reporting/claims.py`): reproduced / partly / not reproduced; indicative (fewer "
             "than 3 trained seeds, or notebook 04's one trained head: an interval over queries cannot see the "
             "variance between trainings); untestable here (too few base hits: a floor); calibrated "
             "(a calibration target); mechanism (untrained inputs); findings: supported / not supported / "
             "inconclusive.",
    "paper": "Paper profile (`make paper`: PAPER.md settings, 5 seeds, 100 epochs; run on a 2-core CPU and "
             "committed). The executed notebooks 01-06 with every figure are under [reports/paper/](reports/paper/), "
             "their trained weights and per-run tables under `reports/paper/cache/`, so a change of analysis "
             "re-evaluates without retraining (`scripts/rejudge_paper.py` re-judges claims 1-4 and the real side "
             "from the committed tables). The rows below are the notebooks' claims tables: 01's derivation, the "
             "synthetic world of 02 and 03, both real views of 04 (phenotype phrases and the token view at the "
             "paper's lengths) and 05's findings beyond the paper. The phrase view rests on one trained projection "
             "head, so its decided verdicts are indicative; the token view is zero-shot and decides per query.",
}
#: The columns of claims tables written before the registry (verdicts under the old rules).
LEGACY_COLUMNS = ["claim", "quantity", "paper", "ours", "ci_low", "ci_high", "verdict", "where"]
LEGACY_VERDICTS = ("refuted",)
VERDICTS = [*claims.VERDICTS, *LEGACY_VERDICTS]
VERDICT_MARK = {"reproduced": "✅", "partly reproduced": "🟡", "not reproduced": "❌", "indicative": "🔹",
                "untestable here": "⬜", "calibrated": "🎯", "mechanism": "⚙️", "supported": "✅",
                "not supported": "❌", "inconclusive": "⬜", "refuted": "⛔"}
PAPER_CLAIMS = claims.PAPER_CLAIMS

# Fallback keywords when a claim's text does not start with its number (checked in this order).
_KEYWORDS: list[tuple[int, tuple[str, ...]]] = [
    (6, ("larger k",)),
    (7, ("gaussian",)),
    (8, ("argmax", "hijack")),
    (2, ("early", "stable")),
    (5, ("injection", "inject")),
    (4, ("length", "large m", "with m", "vs m", "vs. m")),
    (1, ("gini",)),
    (3, ("recall@1", "similar recall", "clean recall")),
]
_NUMBER = re.compile(r"^\s*(?:claim\s*|c)?([1-8])(?![0-9])", re.IGNORECASE)


def claim_number(text: str, notebook: str | None = None) -> str:
    """The report key of a claims row: "1".."8" (PAPER.md section 5), "B" (a notebook-05 finding) or "other".

    A leading number ("3", "3.", "C3", "claim 3: ...") wins; otherwise keywords decide. Rows of notebook 05
    are findings beyond the paper unless they name a paper claim by number.
    """
    text = str(text)
    m = _NUMBER.match(text)
    if m:
        return m.group(1)
    if notebook == "05":
        return "B"
    low = text.lower()
    for number, words in _KEYWORDS:
        if any(w in low for w in words):
            return str(number)
    return "other"


def _key_order(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else ((9, "") if key == "B" else (10, key))


def claims_files(tables_dir: str | os.PathLike) -> list[Path]:
    """The ``claims_NN.csv`` files of a folder, in notebook order (empty when the folder does not exist)."""
    d = Path(tables_dir)
    return sorted(d.glob("claims_[0-9][0-9].csv")) if d.is_dir() else []


def stack_claims(tables_dir: str | os.PathLike) -> pd.DataFrame:
    """Every chapter's claims table of a folder, stacked (``claims.COLUMNS``), with ``notebook`` ("02"), ``key``
    (see ``claim_number``) and ``legacy`` (True for tables written before the claims registry).

    Raises ValueError naming the file when a table lacks a column of ``reporting.claims.row``.
    """
    frames = []
    for path in claims_files(tables_dir):
        df = pd.read_csv(path, dtype={"paper": str, "where": str, "claim": str, "quantity": str, "link": str,
                                      "world": str})
        legacy = "link" not in df.columns
        missing = [c for c in (LEGACY_COLUMNS if legacy else claims.COLUMNS) if c not in df.columns]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {missing}; expected {claims.COLUMNS}")
        nb = path.stem.split("_")[1]
        df = df.reindex(columns=claims.COLUMNS).assign(notebook=nb, legacy=legacy)
        df["key"] = [claim_number(c, nb) for c in df["claim"]]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=claims.COLUMNS + ["notebook", "legacy", "key"])
    return _ordered(pd.concat(frames, ignore_index=True))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    table = table.assign(_order=[_key_order(k) for k in table["key"]])
    return table.sort_values(["_order", "notebook"], kind="stable").drop(columns="_order").reset_index(drop=True)


def load_claims(tables_dir: str | os.PathLike) -> pd.DataFrame:
    """A profile's claims: its ``claims.csv`` (written by notebook 06) when the folder has one, else the chapters'
    tables stacked (``stack_claims``)."""
    path = Path(tables_dir) / "claims.csv"
    if not path.exists():
        return stack_claims(tables_dir)
    df = pd.read_csv(path, dtype={"paper": str, "where": str, "claim": str, "quantity": str, "link": str,
                                  "world": str, "notebook": str})
    df = df.assign(legacy=False, key=[claim_number(c, nb) for c, nb in zip(df["claim"], df["notebook"], strict=True)])
    return _ordered(df)


def write_claims(claims_table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The one tidy table of a profile (``claims.csv``: ``claims.COLUMNS`` plus notebook), written atomically."""
    return write_csv(claims_table[[*claims.COLUMNS, "notebook"]], path)


def format_estimate(ours: float, low: float, high: float, digits: int = 3) -> str:
    """"0.783 [0.771, 0.795]"; a zero-width interval (n = 1) prints the number alone; NaN prints "n/a"."""
    if pd.isna(ours):
        return "n/a"
    if pd.isna(low) or pd.isna(high) or (low == ours == high):
        return f"{ours:.{digits}f}"
    return f"{ours:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def report_table(claims_table: pd.DataFrame) -> pd.DataFrame:
    """Display rows: #, claim (paper wording for 1-8), link (what the row tests), world, paper, ours (95% CI),
    verdict (legacy rows: "(old rules)"), where."""
    rows = []
    for r in claims_table.itertuples(index=False):
        where = str(r.where) if isinstance(r.where, str) and r.where else f"notebook {r.notebook}"
        if f"{r.notebook}" not in where:
            where = f"{where} (nb {r.notebook})"
        link = r.quantity if r.legacy or not isinstance(r.link, str) else f"{r.link}: {r.quantity}"
        rows.append({
            "#": r.key if r.key != "other" else "–",
            "claim": PAPER_CLAIMS.get(r.key, r.claim),
            "link": link,
            "world": "" if not isinstance(r.world, str) else r.world,
            "paper": "" if pd.isna(r.paper) else str(r.paper),
            "ours (95% CI)": format_estimate(r.ours, r.ci_low, r.ci_high),
            "verdict": f"{VERDICT_MARK.get(r.verdict, '')} {r.verdict}".strip() + (" (old rules)" if r.legacy else ""),
            "where": where,
        })
    return pd.DataFrame(rows, columns=["#", "claim", "link", "world", "paper", "ours (95% CI)", "verdict", "where"])


def verdict_summary(claims_table: pd.DataFrame) -> pd.DataFrame:
    """Rows per verdict for the paper's claims (keys 1-8) and for the findings beyond it (verdicts that occur)."""
    keys = claims_table["key"]
    part = claims_table.assign(part=["paper claims" if k.isdigit() else "beyond the paper" for k in keys])
    tab = pd.crosstab(part["part"], part["verdict"])
    tab = tab.reindex(columns=[v for v in VERDICTS if v in tab.columns], fill_value=0)
    return tab.reindex([p for p in ("paper claims", "beyond the paper") if p in tab.index])


def coverage(claims_table: pd.DataFrame) -> pd.DataFrame:
    """For each claim 1-8: how many rows test it and the verdicts they reached (empty string: untested yet)."""
    rows = []
    for n, text in PAPER_CLAIMS.items():
        sub = claims_table[claims_table["key"] == n]
        rows.append({"#": n, "claim": text, "rows": len(sub), "verdicts": ", ".join(sorted(set(sub["verdict"])))})
    return pd.DataFrame(rows)


def _cell(x: object) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no pandas/tabulate dependency, deterministic)."""
    head = "| " + " | ".join(_cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def readme_block(tables_dir: str | os.PathLike | None = None, profile: str = "quick") -> str:
    """The text between a profile's README markers, generated from its tracked claims tables."""
    tables_dir = Path(tables_dir) if tables_dir is not None else TRACKED[profile]
    table = load_claims(tables_dir)
    source = TRACKED[profile].relative_to(REPO_ROOT).as_posix()
    name = "claims.csv" if (Path(tables_dir) / "claims.csv").exists() else "claims_*.csv"
    lines = [f"<!-- generated by scripts/update_readme_results.py from {source}/{name}: do not edit -->", ""]
    if table.empty:
        run = "make reproduce" if profile == "quick" else "make paper"
        lines.append(f"_No results yet: run `{run}`, then `python scripts/update_readme_results.py --sync`._")
        return "\n".join(lines)
    lines += [_INTRO[profile], ""]
    table = report_table(table)
    repeat = table["claim"].eq(table["claim"].shift()) & table["#"].eq(table["#"].shift())
    table.loc[repeat, "claim"] = "〃"  # the claim of the row above, written once per group
    lines.append(markdown_table(table))
    return "\n".join(lines)


def extract_block(text: str, profile: str = "quick") -> str:
    """The text between a profile's README markers (stripped); ValueError when they are missing or misordered."""
    start, end = MARKERS[profile]
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"README must contain {start} followed by {end}")
    return text[i + len(start) : j].strip()


def update_readme(
    readme: str | os.PathLike | None = None, tables_dir: str | os.PathLike | None = None, profile: str = "quick"
) -> bool:
    """Rewrite a profile's README block from its tables; return True when the file changed."""
    readme = Path(readme) if readme is not None else REPO_ROOT / "README.md"
    text = readme.read_text()
    extract_block(text, profile)  # validates the markers
    start, end = MARKERS[profile]
    i, j = text.find(start), text.find(end)
    new = text[: i + len(start)] + "\n" + readme_block(tables_dir, profile) + "\n" + text[j:]
    if new == text:
        return False
    readme.write_text(new)
    return True


def sync_tables(src: str | os.PathLike | None = None, dst: str | os.PathLike | None = None) -> list[Path]:
    """Copy every result table (``*.csv``) from ``results/quick/`` (src) into the tracked ``reports/quick/`` (dst),
    byte for byte: the committed copies that ``make test`` compares a rerun with (``regeneration``).

    Tables of dst without a counterpart in src are kept (a chapter not rerun keeps its last table).
    """
    src = Path(src) if src is not None else results_dir("quick")
    dst = Path(dst) if dst is not None else TRACKED["quick"]
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted(src.glob("*.csv")):
        with atomic_write(dst / path.name) as fh:
            fh.write(path.read_bytes())
        out.append(dst / path.name)
    return out
