"""Claims 5-8 evidence (spikehijack.reporting.evidence) and the synthetic oracle: bootstrap, floors, rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

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
