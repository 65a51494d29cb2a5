"""The reproduction report (spikehijack.chapters.ch06_report) and the README results table generated from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from spikehijack.chapters.ch06_report import (
    END,
    START,
    claim_number,
    coverage,
    extract_block,
    format_estimate,
    load_claims,
    markdown_table,
    readme_block,
    report_table,
    stack_claims,
    sync_tables,
    update_readme,
    verdict_summary,
    write_claims,
)
from spikehijack.io import REPO_ROOT, write_csv
from spikehijack.reporting.claims import COLUMNS, row
from spikehijack.reporting.regeneration import compare_tables

TRACKED = REPO_ROOT / "reports" / "quick"
TRACKED_BY_PROFILE = {"quick": TRACKED, "paper": REPO_ROOT / "reports" / "paper" / "tables"}


def _write_tables(folder: Path) -> None:
    write_csv(pd.DataFrame([
        row("1", "MaxSim > Top-4", "synthetic", "Gini gap", "> 0", 0.07, 0.06, 0.08, "reproduced", "nb 02, Fig. 2",
            n_seeds=5),
        row("4", "Top-4 > MaxSim at large M", "synthetic", "R@1 gap at M=256", "> 0", -0.01, -0.03, 0.01,
            "not reproduced", "notebook 02, Figure 4", n_seeds=5),
    ]), folder / "claims_02.csv")
    write_csv(pd.DataFrame([
        row("7", "Gaussian barely hurts", "real", "retained R@1", "97 %", 0.95, 0.95, 0.95, "indicative", "",
            n_seeds=1, base_hits=80),
        row("8", "spikes take most", "real", "share", "83 %", 0.8, 0.7, 0.9, "reproduced", "Fig 3", n_queries=160),
    ]), folder / "claims_04.csv")
    write_csv(pd.DataFrame([
        row("B3", "capacity beats MaxSim | frontier", "synthetic", "retained R@1", "n/a (new)", 0.4, 0.3, 0.5,
            "supported", "notebook 05, Figure 6", n_seeds=2, base_hits=40),
    ]), folder / "claims_05.csv")


def _write_legacy(folder: Path) -> None:
    """A claims table written before the registry (the committed paper profile's format)."""
    pd.DataFrame([{"claim": "5", "quantity": "retained", "paper": "0.278", "ours": 0.1, "ci_low": 0.0,
                   "ci_high": 0.2, "verdict": "refuted", "where": "nb 03"}]).to_csv(folder / "claims_03.csv",
                                                                                    index=False)


def test_claim_number_reads_numbers_then_keywords():
    assert claim_number("3. MaxSim and Top-4 reach similar Recall@1") == "3"
    assert claim_number("C5: collapse") == "5"
    assert claim_number("claim 7 gaussian") == "7"
    assert claim_number("Larger k does not restore robustness") == "6"
    assert claim_number("Gaussian control") == "7"
    assert claim_number("Spike hijack rate ~0.7") == "8"
    assert claim_number("Gini ordering in training") == "1"
    assert claim_number("Retraining with softmax buys robustness", notebook="05") == "B"
    assert claim_number("something else entirely") == "other"
    assert claim_number("12 apples") == "other"


def test_load_and_render(tmp_path):
    _write_tables(tmp_path)
    _write_legacy(tmp_path)
    claims = load_claims(tmp_path)
    assert list(claims["key"]) == ["1", "4", "5", "7", "8", "B"]
    assert list(claims["notebook"]) == ["02", "02", "03", "04", "04", "05"]
    assert list(claims["legacy"]) == [False, False, True, False, False, False]
    table = report_table(claims)
    assert table.loc[0, "ours (95% CI)"] == "0.070 [0.060, 0.080]"
    assert table.loc[0, "link"] == "MaxSim > Top-4: Gini gap" and table.loc[0, "world"] == "synthetic"
    assert table.loc[2, "verdict"] == "⛔ refuted (old rules)" and table.loc[2, "link"] == "retained"
    assert table.loc[3, "ours (95% CI)"] == "0.950"  # zero-width interval (n = 1)
    assert table.loc[3, "where"] == "notebook 04"
    assert table.loc[4, "where"] == "Fig 3 (nb 04)"
    assert table.loc[1, "claim"].startswith("Recall falls with M")  # the paper's wording for claim 4
    md = markdown_table(table)
    assert md.count("\n") == len(table) + 1 and "beats MaxSim \\| frontier" in md
    summary = verdict_summary(claims)
    assert summary.loc["paper claims"].sum() == 5 and summary.loc["beyond the paper", "supported"] == 1
    cov = coverage(claims)
    assert cov.set_index("#").loc["4", "rows"] == 1 and cov.set_index("#").loc["2", "rows"] == 0


def test_one_tidy_claims_csv_is_what_the_report_reads(tmp_path):
    _write_tables(tmp_path)
    stacked = stack_claims(tmp_path)
    write_claims(stacked, tmp_path / "claims.csv")
    assert list(pd.read_csv(tmp_path / "claims.csv").columns) == [*COLUMNS, "notebook"]
    (tmp_path / "claims_02.csv").unlink()  # the report now reads claims.csv, not the chapters' tables
    pd.testing.assert_frame_equal(load_claims(tmp_path), stacked, check_dtype=False)


def test_format_estimate():
    assert format_estimate(0.5, 0.4, 0.6) == "0.500 [0.400, 0.600]"
    assert format_estimate(float("nan"), 0, 0) == "n/a"


def test_update_readme_and_sync(tmp_path):
    src, dst = tmp_path / "results", tmp_path / "tracked"
    src.mkdir()
    _write_tables(src)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\ntail\n")
    assert [p.name for p in sync_tables(src, dst)] == ["claims_02.csv", "claims_04.csv", "claims_05.csv"]
    assert compare_tables(dst, src) == []
    (dst / "claims_09.csv").write_text((dst / "claims_02.csv").read_text())
    assert compare_tables(dst, src) == ["claims_09.csv: only in the committed folder"]
    assert compare_tables(dst, src, common=True) == []
    (dst / "claims_09.csv").unlink()
    assert update_readme(readme, dst) is True
    assert update_readme(readme, dst) is False  # idempotent
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith("\n\ntail\n")
    assert extract_block(text) == readme_block(dst).strip()
    # a changed number is detected by the table comparison
    df = pd.read_csv(src / "claims_02.csv")
    df.loc[0, "ours"] += 0.1
    df.to_csv(src / "claims_02.csv", index=False)
    assert any("column 'ours'" in p for p in compare_tables(dst, src))
    with pytest.raises(ValueError):
        extract_block("no markers here")


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_readme_results_table_matches_tracked_tables(profile):
    """README.md's generated blocks equal what the tracked tables give (reports/quick/, reports/paper/tables/)."""
    readme = (REPO_ROOT / "README.md").read_text()
    assert extract_block(readme, profile) == readme_block(TRACKED_BY_PROFILE[profile], profile).strip(), (
        f"README {profile} results table is stale: run `python scripts/update_readme_results.py`"
    )


def test_script_check_mode_runs(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "update_readme_results.py"), "--readme", str(readme),
           "--tables", str(tmp_path / "none"), "--results", str(tmp_path / "none")]
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 1
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 0
