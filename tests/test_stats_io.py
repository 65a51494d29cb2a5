"""Persistence (spikehijack.io), statistics (reporting.stats) and cached sweeps (runner.sweeps)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spikehijack import io
from spikehijack.reporting import stats
from spikehijack.runner.sweeps import load_cached, run_grid, run_key

# ---------------------------------------------------------------- io


def test_atomic_write_leaves_nothing_when_the_writer_raises(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with pytest.raises(RuntimeError, match="boom"), io.atomic_write(target, "w") as fh:
        fh.write("half a line")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind either


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "t.json"
    io.write_json({"a": 1}, target)
    with pytest.raises(KeyboardInterrupt), io.atomic_write(target, "w") as fh:
        fh.write("{ broken")
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_round_trips(tmp_path):
    df = pd.DataFrame({"pooling": ["maxsim", "topk:4"], "gini": [0.78, 0.45]})
    pd.testing.assert_frame_equal(pd.read_csv(io.write_csv(df, tmp_path / "a.csv")), df)
    arrays = {"g": np.arange(6.0).reshape(2, 3), "idx": np.array([3, 1])}
    back = io.read_npz(io.write_npz(tmp_path / "a.npz", **arrays))
    assert set(back) == {"g", "idx"} and all(np.array_equal(back[k], v) for k, v in arrays.items())
    assert json.loads(io.write_json({"b": [1, 2]}, tmp_path / "a.json").read_text()) == {"b": [1, 2]}


def test_read_npz_refuses_corrupt_and_pickled_files(tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="corrupt or unreadable npz"):
        io.read_npz(bad)
    good = io.write_npz(tmp_path / "good.npz", x=np.ones(1000))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or unreadable npz"):
        io.read_npz(truncated)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="corrupt or unreadable npz"):
        io.read_npz(pickled)


def test_config_hash_is_order_independent_and_sensitive_to_values():
    a = {"pooling": "maxsim", "M": 64, "seed": 0, "nested": {"x": 1, "y": 2}}
    b = {"seed": 0, "nested": {"y": 2, "x": 1}, "M": 64, "pooling": "maxsim"}
    assert io.config_hash(a) == io.config_hash(b) == run_key(b)
    assert len(io.config_hash(a)) == 16 and len(io.config_hash(a, length=8)) == 8
    assert io.config_hash(a) != io.config_hash({**a, "M": 128})
    assert io.config_hash(a) != io.config_hash({**a, "seed": 1})


def test_cached_csv_computes_once_and_recomputes_a_corrupt_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"x": [1, 2]})

    path = tmp_path / "c.csv"
    io.cached_csv(path, compute)
    pd.testing.assert_frame_equal(io.cached_csv(path, compute), pd.DataFrame({"x": [1, 2]}))
    assert len(calls) == 1
    path.write_bytes(b"")  # an empty (corrupt) cache file
    io.cached_csv(path, compute)
    assert len(calls) == 2


def test_results_dir(tmp_path):
    assert io.results_dir("quick", root=tmp_path) == tmp_path / "results" / "quick"
    assert io.results_dir("paper", root=tmp_path) == tmp_path / "reports" / "paper" / "tables"
    assert (tmp_path / "reports" / "paper" / "tables").is_dir()


def test_cache_dir_commits_the_paper_profile(tmp_path, monkeypatch):
    """Quick caches follow $SPIKEHIJACK_RESULTS (git-ignored); the paper profile's live in reports/paper/cache."""
    monkeypatch.setenv("SPIKEHIJACK_RESULTS", str(tmp_path))
    assert io.cache_dir("synthetic") == tmp_path / "cache" / "synthetic"
    assert io.cache_dir("synthetic", "paper") == io.REPO_ROOT / "reports" / "paper" / "cache" / "synthetic"


# ---------------------------------------------------------------- stats


def test_mean_ci_on_known_data():
    m, lo, hi = stats.mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * np.sqrt(2.5) / np.sqrt(5)  # t_{0.975, 4} * sd / sqrt(n)
    assert (m, lo, hi) == pytest.approx((3.0, 3.0 - half, 3.0 + half))
    assert stats.mean_ci([2.5]) == (2.5, 2.5, 2.5)
    assert stats.mean_ci([1.0, float("nan"), 3.0])[0] == pytest.approx(2.0)  # NaN dropped
    m, lo, hi = stats.mean_ci([1, 2, 3, 4, 5], level=0.5)
    assert hi - lo < 2 * half / 2


def test_summarize_paired_test_bootstrap_and_bounds():
    df = pd.DataFrame({"pooling": ["a"] * 3 + ["b"] * 2, "value": [1.0, 2.0, 3.0, 5.0, 5.0]})
    s = stats.summarize(df, ["pooling"])
    assert s["n"].tolist() == [3, 2] and s["mean"].tolist() == pytest.approx([2.0, 5.0])
    assert s.loc[1, "ci_low"] == s.loc[1, "ci_high"] == 5.0
    t = stats.paired_test([2.0, 3.0, 5.0, 6.0], [1.0, 1.0, 2.0, 2.0])
    diffs = np.array([1.0, 2.0, 3.0, 4.0])
    assert t["mean_diff"] == pytest.approx(2.5) and t["n"] == 4
    assert t["cohens_dz"] == pytest.approx(2.5 / diffs.std(ddof=1))
    assert t["t"] == pytest.approx(2.5 / (diffs.std(ddof=1) / 2))
    m, lo, hi = stats.bootstrap_ci(np.arange(100.0), seed=1)
    assert m == 49.5 and lo < 49.5 < hi and stats.bootstrap_ci(np.arange(100.0), seed=1) == (m, lo, hi)
    assert stats.mean_ci([0.9, 1.0], bounds=(0, 1))[2] == 1.0  # clipped to the quantity's range


# ---------------------------------------------------------------- sweeps


def square(config):
    if config.get("fail"):
        raise RuntimeError(f"run {config['x']} failed on purpose")
    return pd.DataFrame({"y": [config["x"] ** 2]})


def test_run_grid_caches_resumes_and_reports_failures(tmp_path):
    configs = [{"x": 1}, {"x": 2, "fail": True}, {"x": 3}]
    res = run_grid(configs, square, tmp_path, progress=False)
    assert (res.n_cached, res.n_computed) == (0, 2)
    assert len(res.failures) == 1 and res.failures[0].config == {"x": 2, "fail": True}
    assert "failed on purpose" in res.failures[0].error
    assert sorted(res.table["y"]) == [1, 9] and set(res.table["run_key"]) == {run_key(c) for c in configs[::2]}
    with pytest.raises(RuntimeError, match=r"(?s)1 run\(s\) failed.*run 2 failed on purpose"):
        res.raise_for_failures()
    assert not (tmp_path / f"{run_key(configs[1])}.csv").exists()  # a failed run leaves no record

    # resume: the cached runs are skipped, a new config is computed
    configs = [{"x": 1}, {"x": 3}, {"x": 4}]
    res = run_grid(configs, square, tmp_path, progress=False).raise_for_failures()
    assert (res.n_cached, res.n_computed, res.failures) == (2, 1, [])
    assert sorted(res.table["y"]) == [1, 9, 16] and "x" in res.table.columns
    pd.testing.assert_frame_equal(load_cached(configs, tmp_path), res.table)


def test_run_grid_retries_and_rejects_non_frames(tmp_path):
    state = {"n": 0}

    def flaky(config):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("transient")
        return pd.DataFrame({"y": [config["x"]]})

    res = run_grid([{"x": 5}], flaky, tmp_path / "a", progress=False, retries=1)
    assert res.failures == [] and res.table["y"].tolist() == [5] and state["n"] == 2
    with pytest.raises(TypeError, match="run_fn must return a pandas DataFrame"):
        run_grid([{"x": 1}], lambda c: [1], tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="local executor takes no options"):
        run_grid([{"x": 1}], square, tmp_path / "c", progress=False, address="auto")


def test_intervals_respect_the_quantity_range():
    assert stats.bounds_for("recall@1") == (0.0, 1.0) and stats.bounds_for("gini_pair_mean") == (0.0, 1.0)
    assert stats.bounds_for("spike_retained") == (0.0, float("inf")) and stats.bounds_for("loss") is None
    assert stats.bounds_for("d_clean") is None  # a difference of two recalls may be negative
    lo, hi = stats.wilson_ci(0.0, 20)
    assert lo == 0.0 < hi < 0.2 and stats.wilson_ci(1.0, 20)[1] == 1.0
    rng = np.random.default_rng(0)
    hits = [(rng.random(30) < p).astype(float) for p in (0.02, 0.05)]  # near the floor: a t-interval crosses 0
    m, lo, hi = stats.seed_bootstrap(hits)
    assert 0.0 <= lo <= m <= hi <= 1.0
    assert m == pytest.approx(np.mean([h.mean() for h in hits]))  # mean over seeds of per-seed means


def test_seed_bootstrap_of_a_ratio_and_of_one_seed():
    rng = np.random.default_rng(1)
    clean = [(rng.random(50) < 0.6).astype(float) for _ in range(3)]
    after = [c * (rng.random(50) < 0.5) for c in clean]
    m, lo, hi = stats.seed_bootstrap(after, clean)
    assert m == pytest.approx(np.mean([a.mean() / c.mean() for a, c in zip(after, clean, strict=True)]))
    assert 0.0 <= lo < m < hi
    one = stats.seed_bootstrap([after[0]], seed=3)
    assert one == pytest.approx(stats.bootstrap_ci(after[0], seed=3), abs=0.03)  # one seed: over its units
    zero = stats.seed_bootstrap([np.zeros(5), np.ones(5)], [np.zeros(5), np.ones(5)])
    assert zero[0] == 1.0  # a seed without clean hits is left out, as NaN in a table of per-seed ratios
    with pytest.raises(ValueError, match="pair"):
        stats.seed_bootstrap([np.ones(3)], [np.ones(4)])


@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 40), st.integers(0, 2**16))
def test_resampler_rectangular_draws_are_the_old_injection_draws(S, Q, B, seed):
    """Equal sizes: seeds first, then units, from one generator, exactly as ``evidence.Injection`` drew them."""
    r = stats.Resampler([Q] * S, n_boot=B, seed=seed)
    rng = np.random.default_rng(seed)
    np.testing.assert_array_equal(r.seeds, rng.integers(0, S, size=(B, S)))
    np.testing.assert_array_equal(r.units, rng.integers(0, Q, size=(B, S, Q)))
    x = np.random.default_rng(seed + 1).random((S, Q))
    old = x[r.seeds[:, :, None], r.units].mean(axis=(1, 2))  # the old replicates: one mean over seeds and queries
    new = r.estimate(x)[1]  # a mean of per-position means: the same up to rounding, bit for bit with one seed
    (np.testing.assert_array_equal if S == 1 else np.testing.assert_allclose)(new, old)


@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 2**16))
def test_resampler_ragged_means_are_means_of_the_drawn_seeds_units(sizes, seed):
    r = stats.Resampler(sizes, n_boot=30, seed=seed)
    rng = np.random.default_rng(seed + 1)
    xs = [rng.random(n) for n in sizes]
    got = r.means(xs)
    for b in range(30):
        for p in range(len(sizes)):
            s = r.seeds[b, p]
            idx = r.units[b, p, :sizes[s]]
            assert (r.units[b, p, :sizes[s]] < sizes[s]).all()
            assert got[b, p] == pytest.approx(xs[s][idx].mean(), rel=1e-12)
    point, reps = r.estimate(xs)
    assert point == pytest.approx(np.mean([x.mean() for x in xs])) and reps.shape == (30,)


@given(st.lists(st.integers(2, 12), min_size=1, max_size=4), st.integers(0, 2**16))
def test_seed_bootstrap_is_the_resampler_statistic(sizes, seed):
    """The wrapper: the same draws for the same sizes and seed, a ratio per seed, NaN seeds and replicates out."""
    rng = np.random.default_rng(seed)
    base = [(rng.random(n) < 0.3).astype(float) for n in sizes]
    vals = [b * (rng.random(b.size) < 0.5) for b in base]
    point, lo, hi = stats.seed_bootstrap(vals, base, n_boot=200, seed=seed)
    p, reps = stats.Resampler(sizes, 200, seed).estimate(vals, base)
    by_hand = [v.mean() / b.mean() for v, b in zip(vals, base, strict=True) if b.sum() > 0]
    assert point == p or (np.isnan(point) and np.isnan(p))
    if by_hand:
        assert point == pytest.approx(np.mean(by_hand))
        assert np.nanquantile(reps, 0.025) == pytest.approx(lo) and 0.0 <= lo <= hi <= 1.0
    else:
        assert np.isnan(point) and np.isnan(lo) and np.isnan(reps).all()
