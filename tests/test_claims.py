"""The verdict rules (spikehijack.reporting.claims): what an interval and its base evidence allow a row to say."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spikehijack.reporting import claims

bounds = st.tuples(st.floats(-1, 1), st.floats(0, 1)).map(lambda t: (t[0], t[0] + t[1]))


@given(bounds, st.floats(-0.5, 0.5), st.integers(1, 10))
def test_direction_never_says_more_than_its_interval(iv, threshold, n):
    low, high = iv
    v = claims.direction(low, high, threshold, n_seeds=n)
    if v == "reproduced":
        assert low > threshold
    if v == "not reproduced" and n >= claims.MIN_SEEDS:
        assert high <= threshold or low <= threshold  # never "not reproduced" for an interval above
    if low > threshold and not (low == high and n <= 1):
        assert v == "reproduced"
    below = claims.direction(-high, -low, -threshold, above=False, n_seeds=n)  # the mirror image
    assert below == v


def test_undecided_intervals_are_indicative_only_with_few_seeds():
    assert claims.direction(-0.1, 0.2, n_seeds=2) == "indicative"
    assert claims.direction(-0.1, 0.2, n_seeds=5) == "not reproduced"
    assert claims.direction(-0.1, 0.2) == "not reproduced"  # intervals over queries
    assert claims.direction(0.3, 0.3, n_seeds=1) == "indicative"  # one run, no interval
    assert claims.direction(float("nan"), 0.2) == "untestable here"


@given(bounds, st.floats(0.01, 0.3))
def test_similar_is_an_equivalence_test(iv, margin):
    low, high = iv
    v = claims.similar(low, high, margin, n_seeds=5)
    assert (v == "reproduced") == (-margin <= low and high <= margin)
    if v == "not reproduced":
        assert high < -margin or low > margin or not (-margin <= low and high <= margin)


def test_floors_are_untestable_and_findings_inconclusive():
    assert claims.floor(3) and claims.floor(None) and claims.floor(math.nan) and not claims.floor(10)
    assert claims.finding(0.0, 0.0, +1, base_hits=0) == "inconclusive"  # both arms at zero
    assert claims.finding(0.1, 0.3, +1, base_hits=50) == "supported"
    assert claims.finding(0.1, 0.3, -1, base_hits=50) == "not supported"
    assert claims.finding(-0.1, 0.3, +1) == "inconclusive"


def test_row_vocabulary():
    r = claims.row("5", "spikes collapse MaxSim", "synthetic", "retained", "0.278", 0.0623456, 0.0, 0.15,
                   "untestable here", "nb 03", n_seeds=2, n_queries=64, base_hits=4.0)
    assert list(r) == claims.COLUMNS and r["ours"] == 0.0623 and r["base_hits"] == 4.0
    with pytest.raises(ValueError, match="^verdict must be one of"):
        claims.row("5", "l", "w", "q", "p", 0.1, 0.0, 0.2, "refuted", "nb")
