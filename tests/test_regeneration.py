"""The regeneration contract (spikehijack.reporting.regeneration): exact words, numbers within declared tolerances."""

from __future__ import annotations

import pandas as pd
import pytest

from spikehijack.io import REPO_ROOT, results_dir
from spikehijack.reporting.regeneration import (
    TOLERANCES,
    compare_table,
    compare_tables,
    compare_text,
    numbers_close,
    spread,
    tolerance_for,
)

COMMITTED = REPO_ROOT / "reports" / "quick"


def test_every_tolerance_has_a_reason_and_a_catch_all_closes_the_table():
    assert all(t.reason and t.atol >= 0 and t.rtol >= 0 for t in TOLERANCES)
    assert (TOLERANCES[-1].table, TOLERANCES[-1].column) == ("*", "*")
    assert tolerance_for("anything.csv", "recall@1") is TOLERANCES[-1]


def test_numbers_close_allows_one_printed_unit_and_nothing_more():
    assert numbers_close("0.4999", "0.5000", atol=0)  # a rounding flip of the last digit
    assert not numbers_close("0.4999", "0.5002", atol=0)
    assert numbers_close("1e-13", "3e-13", atol=1e-9)
    assert not numbers_close("nan", "0.1", atol=1) and numbers_close("nan", "nan", atol=0)
    assert numbers_close("26.000", "26.0001", atol=0, rtol=1e-5) and not numbers_close("inf", "1e308", atol=1)


def test_compare_text_checks_words_and_integers_exactly():
    assert compare_text("Top-4 0.433 [0.40, 0.47] reproduced", "Top-4 0.433 [0.40, 0.47] reproduced") == []
    assert compare_text("0.433 reproduced", "0.433 not reproduced") == ["the text around the numbers differs"]
    assert compare_text("rows: 74", "rows: 75") == ["integer 74 became 75 (integers regenerate exactly)"]
    assert compare_text("0.433", "0.533")[0].startswith("0.433 became 0.533")


def _table(path, **cols):
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


def test_compare_table_text_cells_exact_numbers_within_tolerance(tmp_path):
    a = _table(tmp_path / "a.csv", pooling=["maxsim", "topk:4"], value=[0.25, 0.5], verdict=["reproduced"] * 2)
    b = _table(tmp_path / "b.csv", pooling=["maxsim", "topk:4"], value=[0.25 + 1e-9, 0.5], verdict=["reproduced"] * 2)
    assert compare_table(a, b) == []
    c = _table(tmp_path / "c.csv", pooling=["maxsim", "topk:4"], value=[0.25, 0.51], verdict=["reproduced"] * 2)
    assert "column 'value'" in compare_table(a, c)[0]
    d = _table(tmp_path / "d.csv", pooling=["maxsim", "topk:4"], value=[0.25, 0.5],
               verdict=["reproduced", "not reproduced"])
    assert "column 'verdict'" in compare_table(a, d)[0]
    assert "rows" in compare_table(a, _table(tmp_path / "e.csv", pooling=["maxsim"], value=[0.25],
                                             verdict=["reproduced"]))[0]


def test_spread_reports_the_largest_difference_per_column(tmp_path):
    for name, v in (("r1", 0.25), ("r2", 0.2501)):
        (tmp_path / name).mkdir()
        _table(tmp_path / name / "t.csv", pooling=["maxsim"], value=[v])
    s = spread([tmp_path / "r1", tmp_path / "r2"])
    assert s.loc[0, "column"] == "value" and s.loc[0, "r2"] == pytest.approx(1e-4) and bool(s.loc[0, "r2_text_equal"])


REGENERATED = results_dir("quick")


@pytest.mark.skipif(not any(REGENERATED.glob("*.csv")),
                    reason="no regenerated tables yet: `make test` runs this after nbval (or run `make reproduce`)")
def test_regenerated_tables_match_the_committed_ones():
    """Every committed quick-profile table comes back from the notebooks within its tolerance, verdicts exactly."""
    committed = sorted(p.name for p in COMMITTED.glob("*.csv"))
    assert committed, "reports/quick/ holds no tables"
    missing = [n for n in committed if not (REGENERATED / n).exists()]
    assert not missing, f"not regenerated: {missing}"
    problems = compare_tables(COMMITTED, REGENERATED, common=True)
    assert not problems, "\n".join(problems)


def test_precision_per_profile_and_the_default_dtype_switch():
    import torch

    from spikehijack.core.device import as_dtype, default_dtype
    from spikehijack.profiles import PROFILES

    assert {name: p.precision for name, p in PROFILES.items()} == {"quick": "float64", "paper": "float32"}
    for p in PROFILES.values():  # one source for the trainer
        assert {g.train.dtype for g in (p.synthetic.grid, p.synthetic.sweep, p.synthetic.frontier)} == {p.precision}
    before = torch.get_default_dtype()
    with default_dtype("float64") as dt:
        assert dt is torch.float64 and torch.zeros(1).dtype is torch.float64
    assert torch.get_default_dtype() is before
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        as_dtype("bfloat16")
