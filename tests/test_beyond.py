"""Notebook 05's experiment logic (spikehijack.chapters.ch05_beyond) on tiny problems: tables, summaries, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from spikehijack.chapters import ch05_beyond as beyond
from spikehijack.chapters import ch05_findings as findings
from spikehijack.core import inject
from spikehijack.core.metrics import recall_at_k
from spikehijack.core.scoring import score_matrix
from spikehijack.worlds.model import StackedEncoder
from spikehijack.worlds.synthetic import SyntheticConfig, generate

POOLS = ["maxsim", "softmax:1", "capacity:1:0.05:10", "trimmed:3:1"]


def _problem(seed: int = 0, nq: int = 6, T: int = 4, M: int = 5, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    Q = F.normalize(torch.randn(nq, T, d, generator=g), dim=-1)
    D = F.normalize(torch.randn(2 * nq, M, d, generator=g), dim=-1)
    D[:nq, 0] = Q[:, 0]  # the gold shares one token exactly
    spikes = inject.spike_patches(Q, 3, spike_size=2, generator=g)
    return Q, D, torch.arange(nq), spikes


def test_evaluate_quality_matches_core_metrics():
    Q, D, gold, spikes = _problem()
    q = beyond.evaluate_quality(Q, D, gold, POOLS, {"spike": spikes})
    assert set(q["condition"]) == {"clean", "spike"} and len(q) == len(POOLS) * 2 * len(gold)
    for spec in POOLS:
        spec = beyond.parse_pooling(spec).spec
        clean = q[(q.pooling == spec) & (q.condition == "clean")]["recall@1"].mean()
        assert clean == pytest.approx(float(recall_at_k(score_matrix(Q, D, spec), gold, 1)))
        inj = q[(q.pooling == spec) & (q.condition == "spike")]
        S = inject.score_with_injection(Q, D, spec, spikes, gold)
        assert inj["recall@1"].mean() == pytest.approx(float(recall_at_k(S, gold, 1)))
        assert inj["hijack"].between(0, 1).all() and (inj["K"] == 3).all()


def _tables():
    frames, ginis = [], []
    for seed in (0, 1):
        Q, D, gold, spikes = _problem(seed)
        for train in ("maxsim", "softmax:1"):
            evals = POOLS if train == "maxsim" else [train]
            q = beyond.evaluate_quality(Q, D, gold, evals, {"spike": spikes, "gaussian": spikes.flip(-1)})
            frames.append(beyond._tag(q, "toy", 5, train, seed))
            g = beyond.evaluate_gini(Q[:, :, :], D[: len(Q)], evals, batch_size=4)
            ginis.append(beyond._tag(g, "toy", 5, train, seed))
    return pd.concat(frames, ignore_index=True), pd.concat(ginis, ignore_index=True)


def test_summaries_and_frontier():
    quality, ginis = _tables()
    ps = findings.seed_metrics(quality, ginis)
    assert {"clean_r1", "spike_r1", "spike_retained", "gaussian_retained", "spike_hijack", "gini"} <= set(ps.columns)
    assert set(ps["mode"]) == {"retrained", "swap"}
    assert (ps[(ps.train == "softmax:1") & (ps.pooling == "softmax:1")]["mode"] == "retrained").all()
    maxsim_gini = ps[ps.pooling == "maxsim"]["gini"]
    assert (maxsim_gini >= 1 - 4 / 5 - 1e-6).all()  # at most T of M patches get gradient
    front = findings.frontier_table(ps, "toy", 5)
    assert set(front["pooling"]) == {beyond.parse_pooling(p).spec for p in POOLS} and front["pareto"].any()
    rt = findings.retraining_table(ps, "toy", 5)
    assert set(zip(rt["pooling"], rt["mode"], strict=True)) == {("maxsim", "retrained"), ("softmax:1", "swap"),
                                                                 ("softmax:1", "retrained")}
    s = findings.summarize_seeds(ps, ["clean_r1"])
    assert (s["n"] == 2).all() and (s["ci_low"] <= s["mean"]).all()
    vs = findings.beats_maxsim(quality, "toy", 5, POOLS)
    assert len(vs) == len(POOLS) - 1 and vs["beats"].dtype == bool
    claims = findings.findings(quality, {"toy": 5}, {"toy": "softmax:1"}, new_poolings=["capacity:1:0.05:10",
                                                                                         "trimmed:3:1"])
    assert len(claims) == 3 + 2 * 2 and claims["claim"].str.startswith(("B1", "B2", "B3", "B4")).all()


def test_paired_difference():
    df = pd.DataFrame({"world": "w", "length": 1, "seed": 0, "query": np.tile(np.arange(50), 2),
                       "condition": "clean", "pooling": np.repeat(["a", "b"], 50),
                       "recall@1": np.r_[np.ones(50), np.zeros(50)]})
    assert findings.paired_difference(df, {"pooling": "a"}, {"pooling": "b"}, "clean") == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        findings.paired_difference(df, {"pooling": "a"}, {"pooling": "c"}, "clean")


def test_synthetic_run_on_an_untrained_encoder():
    world = generate(SyntheticConfig(length=16, n_support=4, n_train=64, n_eval=16, seed=3))
    q, g = beyond.synthetic_run(StackedEncoder([3]), world, "maxsim", ["maxsim", "lcmaxsim"], 8, 5, 4, 16,
                                batch_size=8)
    assert set(q["condition"]) == {"clean", "spike", "gaussian"} and (q["world"] == "synthetic").all()
    assert len(q) == 2 * 3 * 8 and len(g) == 2 * 16
    assert g["gini"].between(0, 1).all()


def test_length_robustness():
    rows = []
    for length, r in ((32, 0.5), (256, 0.25)):
        rows.append(pd.DataFrame({"world": "synthetic", "length": length, "train": "maxsim", "pooling": "maxsim",
                                  "mode": "retrained", "seed": 0, "condition": "clean", "query": range(4),
                                  "recall@1": [r * 2, 0, r * 2, 0]}))
    t = findings.length_robustness(pd.concat(rows))
    assert t.set_index("length")["retained"].to_dict() == {32: 1.0, 256: 0.5}
