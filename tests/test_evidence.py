"""Claims 5-8 evidence (spikehijack.reporting.evidence) and the synthetic oracle: bootstrap, floors, rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spikehijack.reporting import claims, evidence
from spikehijack.worlds.synthetic import SyntheticConfig, expected_recall_at_1, generate, oracle_scores


def table(hits: dict[tuple[str, str, int], float], seeds=(0, 1, 2), n=200, hijack=0.0, seed=0) -> pd.DataFrame:
    """Per-query rows with hit rates ``hits[(kind, pooling, K)]`` (Bernoulli draws), the same queries in every arm."""
    rng = np.random.default_rng(seed)
    rows = [{"seed": s, "query": q, "kind": k, "K": K, "pooling": p, "hit": float(rng.random() < rate),
             "hijack_rate": hijack if K else 0.0} for (k, p, K), rate in hits.items() for s in seeds for q in range(n)]
    return pd.DataFrame(rows)


def test_bootstrap_is_paired_and_hierarchical():
    t = table({("spike", "maxsim", 0): 0.5, ("spike", "maxsim", 100): 0.5})
    ev = evidence.Injection(t, "synthetic", "test")
    a, ra = ev.mean("spike", "maxsim", 0)
    assert ra.shape == (evidence.N_BOOT,) and abs(ra.mean() - a) < 0.01
    same = t[t.K == 0].assign(K=7)  # an identical arm: every replicate of the difference is exactly 0
    ev2 = evidence.Injection(pd.concat([t, same]), "synthetic", "test")
    np.testing.assert_array_equal(ev2.mean("spike", "maxsim", 0)[1], ev2.mean("spike", "maxsim", 7)[1])
    with pytest.raises(ValueError, match="no complete"):
        ev.mean("gaussian", "maxsim", 0)


def test_collapse_floor_and_seed_cap():
    hits = {("spike", "maxsim", 0): 0.4, ("spike", "maxsim", 100): 0.02,
            ("spike", "topk:4", 0): 0.01, ("spike", "topk:4", 100): 0.0}
    rows = evidence.collapse(evidence.Injection(table(hits, n=300), "real", "t"), ["maxsim", "topk:4"], 100, {})
    assert rows[0]["verdict"] == "reproduced" and rows[0]["ci_high"] < 0.5
    assert rows[1]["verdict"] == "untestable here" and rows[1]["base_hits"] < claims.MIN_BASE_HITS
    few = evidence.collapse(evidence.Injection(table(hits, seeds=(0, 1)), "synthetic", "t"), ["maxsim"], 100, {})
    assert few[0]["verdict"] == "indicative" and few[0]["n_seeds"] == 2  # decided, but over 2 trained seeds


def test_keeps_more_separates_robustness_from_a_length_effect():
    """Softmax keeps more recall under spikes, but Gaussian patches raise it as much: a length effect."""
    hits = {("spike", "maxsim", 0): 0.5, ("spike", "maxsim", 100): 0.05, ("gaussian", "maxsim", 100): 0.5,
            ("spike", "softmax:0.1", 0): 0.4, ("spike", "softmax:0.1", 100): 0.3,
            ("gaussian", "softmax:0.1", 100): 0.95}
    rows = evidence.keeps_more(evidence.Injection(table(hits, n=300), "real", "t"), "softmax:0.1", ["maxsim"], 100, "")
    raw, equal = rows
    assert raw["verdict"] == "reproduced" and equal["link"].endswith("at equal length")
    assert equal["ours"] == pytest.approx(0.3 / 0.95 - 0.05 / 0.5, abs=0.05)
    reading = evidence.length_effect_reading(pd.DataFrame(rows))
    assert "survives the equal-length control" in reading


def test_length_neutral_is_two_sided_and_argmax_thresholds():
    t = table({("gaussian", "softmax:1", 0): 0.2, ("gaussian", "softmax:1", 100): 0.6, ("gaussian", "maxsim", 0): 0.5})
    t = pd.concat([t, t[t.pooling == "maxsim"].assign(K=100)])  # Gaussian patches change no MaxSim ranking
    rows = evidence.length_neutral(evidence.Injection(t, "real", "t"), ["softmax:1", "maxsim"], 100, "")
    assert rows[0]["verdict"] == "not reproduced" and rows[0]["ours"] > 2  # a rise is a length effect too
    assert rows[1]["verdict"] == "reproduced"
    h = {("spike", "maxsim", 100): 0.1, ("gaussian", "maxsim", 100): 0.1}
    rows = evidence.argmax_moves(evidence.Injection(table(h, hijack=0.8), "real", "t"), ["maxsim"], 100, "~0.70")
    assert [r["verdict"] for r in rows] == ["reproduced", "not reproduced"]  # 0.8 > 0.5, but 0.8 is not < 0.15


def test_oracle_ranks_by_concepts_and_expected_recall_handles_ties():
    w = generate(SyntheticConfig(n_train=1, n_eval=64, length=32, n_support=11))
    docs, gold = w.eval.corpus()
    r = expected_recall_at_1(oracle_scores(w.eval, w.concepts), gold)
    assert r.mean() > 0.8  # short documents: the positive's support concepts stand out
    s = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 1.0, 0.0]])
    torch.testing.assert_close(expected_recall_at_1(s, torch.tensor([0, 1, 1])), torch.tensor([0.5, 0.5, 0.0]))


def test_oracle_scores_tie_exactly_for_the_same_count_profile():
    """Integer log-counts: a document and a permutation of its patches score bit-for-bit the same."""
    w = generate(SyntheticConfig(n_train=1, n_eval=32, length=64, n_support=11))
    ev = w.eval
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    ev.negatives, ev.neg_kind = ev.positives[:, perm], ev.pos_kind[:, perm]  # negatives: shuffled positives
    s = oracle_scores(ev, w.concepts)
    n = len(ev)
    assert torch.equal(s[:, :n], s[:, n:])
    assert (expected_recall_at_1(s, torch.arange(n)) <= 0.5).all()  # the shuffled twin always ties the gold


def arms(hits: list[np.ndarray], shifts: dict[int, np.ndarray]) -> pd.DataFrame:
    """A spike/maxsim table: clean hits[s] [Q] per seed s at K = 0, and at each K of ``shifts`` the clean hits
    with ``shifts[K][s]`` (a 0/1 mask [Q]) kept."""
    rows = [{"seed": s, "query": q, "kind": "spike", "K": K, "pooling": "maxsim", "hit": float(h[q] * keep[s][q]),
             "hijack_rate": 0.0} for K, keep in {0: [np.ones_like(h) for h in hits], **shifts}.items()
            for s, h in enumerate(hits) for q in range(h.size)]
    return pd.DataFrame(rows)


def bits(S: int, Q: int, p: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random(Q) < p).astype(float) for _ in range(S)]


@given(st.integers(1, 25), st.floats(0.05, 1.0), st.integers(0, 2**16))
def test_one_seed_retained_is_the_pooled_ratio_with_the_old_replicates(Q, p, seed):
    """One seed (the real world): the mean of per-seed ratios is the pooled ratio, replicates bit for bit the
    pooled replicates of the draws ``Injection`` made before ``stats.Resampler``."""
    clean, keep = bits(1, Q, p, seed), bits(1, Q, 0.5, seed + 1)
    ev = evidence.Injection(arms(clean, {100: keep}), "real", "t", n_boot=64, seed=seed)
    point, reps, hits = ev.retained("spike", "maxsim", 100)
    a, b = (clean[0] * keep[0])[None], clean[0][None]  # [S, Q]
    rng = np.random.default_rng(seed)
    s, q = rng.integers(0, 1, size=(64, 1))[:, :, None], rng.integers(0, Q, size=(64, 1, Q))
    ra, rb = a[s, q].mean(axis=(1, 2)), b[s, q].mean(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        old = np.where(rb > 0, ra / rb, np.nan)
    assert hits == b.sum()
    if b.mean() > 0:
        assert point == a.mean() / b.mean()
    else:
        assert np.isnan(point)
    np.testing.assert_array_equal(reps, old)
    np.testing.assert_array_equal(ev.mean("spike", "maxsim", 100)[1], ra)


@given(st.integers(2, 5), st.integers(1, 15), st.floats(0.05, 0.9), st.integers(0, 2**16))
def test_retained_is_the_mean_of_per_seed_ratios(S, Q, p, seed):
    """Seeds of equal size: the point is the mean of each seed's ratio (a seed without clean hits left out, as in
    ``ch03_tradeoff.injection_summary``), each replicate the mean of its positions' ratios."""
    clean, keep = bits(S, Q, p, seed), bits(S, Q, 0.5, seed + 1)
    ev = evidence.Injection(arms(clean, {100: keep}), "synthetic", "t", n_boot=32, seed=seed)
    point, reps, _ = ev.retained("spike", "maxsim", 100)
    ratios = [(c * k).mean() / c.mean() for c, k in zip(clean, keep, strict=True) if c.sum() > 0]
    assert point == pytest.approx(np.mean(ratios)) if ratios else np.isnan(point)
    a, b = np.array([c * k for c, k in zip(clean, keep, strict=True)]), np.array(clean)
    for r in range(32):
        s, u = ev.boot.seeds[r], ev.boot.units[r]
        per = [a[s[i], u[i]].mean() / b[s[i], u[i]].mean() for i in range(S) if b[s[i], u[i]].sum() > 0]
        assert reps[r] == pytest.approx(np.mean(per)) if per else np.isnan(reps[r])


@given(st.integers(1, 4), st.integers(1, 15), st.integers(0, 2**16))
def test_identical_arms_differ_by_exactly_zero_in_every_replicate(S, Q, seed):
    """Paired: every arm is averaged over the same draws, so two identical arms give the same replicates."""
    clean, keep = bits(S, Q, 0.6, seed), bits(S, Q, 0.5, seed + 1)
    ev = evidence.Injection(arms(clean, {100: keep, 7: keep}), "synthetic", "t", n_boot=50, seed=seed)
    for f in (ev.retained, ev.mean):
        x, y = f("spike", "maxsim", 100)[1], f("spike", "maxsim", 7)[1]
        ok = np.isfinite(x)
        np.testing.assert_array_equal(ok, np.isfinite(y))
        assert (x[ok] - y[ok] == 0).all()
