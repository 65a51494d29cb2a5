"""The real-benchmark protocol on fixtures and small random tasks (no model load: a hashing phrase encoder)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from spikehijack.chapters import ch04_real as real
from spikehijack.chapters import ch04_views as views
from spikehijack.core import inject
from spikehijack.core.metrics import gini
from spikehijack.core.scoring import pad, score_matrix
from spikehijack.runner import heads
from spikehijack.worlds import hpo, tasks

FIX = Path(__file__).parent / "fixtures" / "hpo"
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scoring.py"


class HashPhrases:
    """A deterministic stand-in for MiniLMPhrases: each phrase -> a fixed random unit vector."""

    name, dim = "hash", 16

    def _vec(self, text: str) -> torch.Tensor:
        seed = int(hashlib.md5(text.encode()).hexdigest()[:8], 16)
        return F.normalize(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)), dim=0)

    def encode_queries(self, items):
        return [torch.stack([self._vec(p) for p in item]) for item in items]

    encode_documents = encode_queries


@pytest.fixture(scope="module")
def H() -> hpo.HPO:
    return hpo.load_hpo(FIX)


def random_task(nq=5, nd=12, d=8, seed=0) -> tasks.RealTask:
    g = torch.Generator().manual_seed(seed)
    qs = [F.normalize(torch.randn(int(t), d, generator=g), dim=-1) for t in torch.randint(2, 5, (nq,), generator=g)]
    ds = [F.normalize(torch.randn(int(m), d, generator=g), dim=-1) for m in torch.randint(1, 9, (nd,), generator=g)]
    gold = torch.randperm(nd, generator=g)[:nq]
    return tasks.RealTask("rand", qs, ds, gold, [f"q{i}" for i in range(nq)], [f"d{j}" for j in range(nd)])


def test_build_hpo_dx_gold_retrievable(H):
    task = tasks.build_hpo_dx(H, HashPhrases(), n_queries=2, n_distractors=None, n_gold=2, n_noise=1, seed=0)
    assert sorted(task.query_ids) == ["OMIM:100001", "ORPHA:2"]
    assert sorted(task.doc_ids) == ["DECIPHER:3", "OMIM:100001", "ORPHA:2"]
    for qid, g, q, qt in zip(task.query_ids, task.gold, task.queries, task.query_text, strict=True):
        assert task.doc_ids[int(g)] == qid  # the gold disease is in the corpus at its index
        assert q.shape == (3, 16) and len(qt) == 3
    for did, doc in zip(task.doc_ids, task.documents, strict=True):
        assert doc.shape[0] == len(H.diseases[did].phenotypes)
    again = tasks.build_hpo_dx(H, HashPhrases(), n_queries=2, n_distractors=None, n_gold=2, n_noise=1, seed=0)
    assert again.query_text == task.query_text
    with pytest.raises(ValueError, match="n_queries"):
        tasks.build_hpo_dx(H, HashPhrases(), n_queries=5)


def test_train_diseases_disjoint(H):
    task = tasks.build_hpo_dx(H, HashPhrases(), n_queries=1, n_distractors=0, n_noise=1, seed=1)
    tr = tasks.train_diseases(H, task, None)
    assert tr and not set(tr) & set(task.doc_ids)


def test_build_syn2def(H):
    task = tasks.build_syn2def(H, HashPhrases(), n_queries=3, n_distractors=2, seed=0)
    assert len(task.documents) == 5
    for t, g, qt in zip(task.query_ids, task.gold, task.query_text, strict=True):
        assert task.doc_ids[int(g)] == t and qt[0].lower() != H.terms[t].name.lower()


def test_score_ragged_matches_score_matrix():
    task = random_task()
    Q, qm = pad(task.queries)
    D, dm = pad(task.documents)
    specs = ["maxsim", "topk:4", "softmax:0.1"]
    many = tasks.score_ragged_many(task.queries, task.documents, specs, docs_per_chunk=5)
    for s in specs:
        torch.testing.assert_close(many[s], score_matrix(Q, D, s, qm, dm))


def test_evaluate_and_per_query():
    task = random_task()
    ev = real.evaluate(task, ["maxsim", "topk:2"])
    assert set(ev.metric) == {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@5"}
    pq = real.per_query(task, ["maxsim"])
    assert len(pq) == 5 and set(pq.gold_len) <= set(task.doc_lengths.tolist())
    mrr = ev[(ev.spec == "maxsim") & (ev.metric == "mrr")].value.item()
    assert mrr == pytest.approx(pq.rr.mean())


def test_pick_tau():
    sw = real.sweep_tau(random_task(), [0.05, 0.5])
    assert real.pick_tau(sw) in (0.05, 0.5)


@pytest.mark.parametrize("spec", ["maxsim", "topk:3", "softmax:0.2"])
def test_injection_only_touches_non_gold(spec):
    task = random_task(seed=2)
    inj = inject.spike_patches(pad(task.queries)[0], 6, spike_size=2, q_mask=pad(task.queries)[1],
                               generator=torch.Generator().manual_seed(0))
    clean = tasks.score_ragged(task.queries, task.documents, spec)
    after = tasks.injection_scores(task, spec, inj, docs_per_chunk=4)
    rows = torch.arange(len(task.gold))
    torch.testing.assert_close(after[rows, task.gold], clean[rows, task.gold], rtol=0, atol=1e-6)
    # non-gold entries equal an explicit per-query corpus with the patches appended
    D, dm = pad(task.documents)
    for a in range(len(task.queries)):
        targets = torch.ones(len(task.documents), dtype=torch.bool)
        targets[task.gold[a]] = False
        D2, m2 = inject.inject_corpus(D, dm, inj[a], targets)
        ref = score_matrix(task.queries[a][None], D2, spec, None, m2)[0]
        torch.testing.assert_close(after[a], ref, rtol=1e-5, atol=1e-5)
    if spec == "maxsim":  # spikes can only raise MaxSim scores of non-gold documents
        assert bool((after >= clean - 1e-6).all())


def test_injection_scores_many_is_one_pass_of_single_jobs():
    """Several (pooling, injected) jobs in one corpus pass = each job alone; K = 0 and gold entries are the
    clean ragged scores bit for bit (the same blocks pooled the same way)."""
    task = random_task(seed=4)
    Q, qm = pad(task.queries)
    g = torch.Generator().manual_seed(1)
    spikes = inject.spike_patches(Q, 5, spike_size=2, q_mask=qm, generator=g)
    gauss = inject.gaussian_patches(len(Q), 3, Q.shape[-1], generator=g, dtype=Q.dtype)
    jobs = [(spec, inj) for spec in ("maxsim", "topk:3", "softmax:0.2", "mean")
            for inj in (spikes[:, :0], spikes, spikes[:, :2], gauss)]
    many = tasks.injection_scores_many(task, jobs, docs_per_chunk=3)
    rows = torch.arange(len(task.gold))
    for (spec, inj), got in zip(jobs, many, strict=True):
        clean = tasks.score_ragged(task.queries, task.documents, spec, docs_per_chunk=3)
        assert torch.equal(got[rows, task.gold], clean[rows, task.gold])
        if inj.shape[1] == 0:
            assert torch.equal(got, clean)
        torch.testing.assert_close(got, tasks.injection_scores(task, spec, inj, docs_per_chunk=5),
                                   rtol=1e-5, atol=1e-6)


def test_one_pass_sweep_equals_the_per_block_baseline_of_the_benchmark():
    """``make bench``'s baseline (each ragged block through core score_with_injection, the way before the
    one-pass sweep) gives the same scores as injection_scores_many, and its sweep section runs."""
    spec = importlib.util.spec_from_file_location("bench_scoring", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    task = random_task(seed=5)
    Q, qm = pad(task.queries)
    inj = inject.spike_patches(Q, 4, spike_size=2, q_mask=qm, generator=torch.Generator().manual_seed(2))
    for p in ("maxsim", "topk:3", "softmax:0.2"):
        torch.testing.assert_close(bench.per_block_injection(task, p, inj),
                                   tasks.injection_scores_many(task, [(p, inj)])[0], rtol=1e-5, atol=1e-6)
    df = bench.sweep_rows(1, Nq=3, Nd=6, d=8, Ks=(2,), poolings=("maxsim",))
    assert list(df.way) == ["per block", "per job", "one pass"] and df.x_one_pass.iloc[-1] == 1.0


def test_injection_experiment_shapes_and_k0():
    task = random_task(seed=3)
    df = real.injection_experiment(task, ["maxsim", "softmax:0.1"], Ks=(0, 3), spike_size=2)
    assert len(df) == 2 * 2 * 2 * 5
    k0 = df[df.K == 0]
    assert (k0.hijack_rate == 0).all() and (k0.selection_mass == 0).all()
    assert df.hijack_rate.between(0, 1).all() and df.selection_mass.between(0, 1).all()
    r = real.retained(df)
    assert np.allclose(r[r.K == 0].retained.dropna(), 1.0)


def test_spike_copies_hijack_maxsim():
    """spike_size=1 spikes are copies of query tokens: every token's arg-max moves to an injected patch."""
    task = random_task(seed=4)
    df = real.injection_experiment(task, ["maxsim"], Ks=(0, 20), kinds=("spike",), spike_size=1)
    top = df[df.K == 20]
    assert top.hijack_rate.min() == pytest.approx(1.0) and top.hit.sum() == 0


def test_neutral_pool_and_pad_task(H):
    task = tasks.build_hpo_dx(H, HashPhrases(), n_queries=1, n_distractors=None, n_gold=1, n_noise=0, seed=0)
    pool = tasks.neutral_pool(task)
    banned = {p for j in task.gold.tolist() for p in task.doc_text[j]} | set(task.query_text[0])
    enc = HashPhrases()
    allowed = torch.stack([enc._vec(p) for j, t in enumerate(task.doc_text) for p in t if p not in banned])
    for v in pool:
        assert bool(((allowed - v).abs().sum(1) < 1e-6).any())
    rt = random_task(seed=5)
    padded = tasks.pad_task(rt, 3, torch.cat(rt.documents), seed=0, docs_per_chunk=4)
    for a, b in zip(rt.documents, padded.documents, strict=True):
        assert len(b) == 3 * len(a)
        torch.testing.assert_close(b[: len(a)], a)
    assert tasks.pad_task(rt, 1, torch.cat(rt.documents)) is rt


def test_gold_pair_gini_bound():
    task = random_task(nq=6, nd=10, seed=6)
    df = real.gold_pair_gini(task, ["maxsim", "softmax:1"], losses=("pair",))
    mx = df[df.spec == "maxsim"]
    assert (mx.gini >= mx.bound - 1e-6).all()  # MaxSim's gradient reaches at most T of the M patches
    sm = df[df.spec == "softmax:1"]
    assert sm.gini.mean() < mx.gini.mean()
    Q, qm = pad(task.queries)
    assert float(gini(torch.ones(4))) == 0.0 and len(df) == 12 and Q.shape[0] == 6


def test_train_head_tiny(H):
    tr = sorted(H.diseases)
    head, hist = heads.train_head(H, HashPhrases(), tr, out_dim=4, steps=5, batch_size=2, n_views=2, n_noise=1, seed=0)
    assert len(hist) == 5 and np.isfinite(hist.loss).all()
    y = head(torch.randn(3, 16))
    assert y.shape == (3, 4)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(3))
    task = random_task(d=16)
    proj = task.project(head)
    assert proj.queries[0].shape[-1] == 4 and task.queries[0].shape[-1] == 16


def test_length_bins():
    assert real.length_bins(np.array([1, 8, 15, 64, 200])) == ["1-7", "8-15", "8-15", ">=64", ">=64"]
    with pytest.raises(ValueError, match="outside"):
        real.length_bins(np.array([0]))


class HashTokens(HashPhrases):
    """A token view stand-in: a phrase -> one fixed vector per word (its ``phrase_sizes``), concatenated."""

    def _tokens(self, phrase: str) -> torch.Tensor:
        return torch.stack([self._vec(f"{phrase}#{i}") for i in range(len(phrase.split()))])

    def encode_queries(self, items):
        return [torch.cat([self._tokens(p) for p in item]) for item in items]

    encode_documents = encode_queries

    def phrase_sizes(self, items):
        return [[len(p.split()) for p in item] for item in items]


def test_token_view_neutral_pool_excludes_query_and_gold_phrases(H):
    enc = HashTokens()
    task = tasks.build_hpo_dx(H, enc, n_queries=1, n_distractors=None, n_gold=1, n_noise=0, seed=0)
    assert task.name == "hpo-dx-tokens"
    assert [len(d) for d in task.documents] == [sum(s) for s in task.meta["phrase_sizes"]]
    banned = {p for j in task.gold.tolist() for p in task.doc_text[j]} | set(task.query_text[0])
    allowed = {p for t in task.doc_text for p in t} - banned
    pool = tasks.neutral_pool(task)
    want = torch.cat([enc._tokens(p) for p in sorted(allowed)]) if allowed else torch.zeros(0, enc.dim)
    assert len(pool) == len(want)  # every token of every neutral phrase, once
    for v in pool:
        assert bool(((want - v).abs().sum(1) < 1e-6).any())


def test_view_evidence_and_compare_views():
    task = random_task(nq=12, nd=30, d=8, seed=7)
    ev = views.view_evidence(task, 0.1, Ks=[0, 5], factors=[1, 2], K=5, spike_size=2)
    assert set(ev.claims["world"]) == {"real rand"} and set(ev.claims["claim"]) >= {"1", "4", "5", "6", "7", "8"}
    assert set(ev.injection.spec) == {"maxsim", "topk:4", "softmax:0.1", "topk:1", "topk:16"}
    other = ev.claims.assign(world="real", link=ev.claims["link"].str.replace("τ=0.1", "τ=0.05"))
    both = views.compare_views(other, ev.claims)
    assert list(both.columns) == ["real", "real rand"] and not both.isna().any().any()


def test_second_view_names_its_choices(tmp_path):
    with pytest.raises(ValueError, match="view must be one of"):
        views.second_view("nope")
    with pytest.raises(ValueError, match="needs embeddings"):
        views.second_view("vidore-biomed", embeddings=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="needs hpo"):
        views.second_view("hpo-dx-tokens")


def test_neutral_pool_leaves_out_every_relevant_document():
    task = random_task(nq=2, nd=6, d=8, seed=3)
    R = torch.zeros(2, 6, dtype=torch.bool)
    R[0, [0, 1]] = R[1, 2] = True
    task = tasks.RealTask("multi", task.queries, task.documents, torch.tensor([0, 2]), task.query_ids, task.doc_ids,
                          meta={"relevance": R})
    torch.testing.assert_close(tasks.neutral_pool(task), torch.cat(task.documents[3:]))


def test_length_sweep_queries_agree_with_its_metrics():
    """One scoring pass per factor: the per-query Recall@1 averages to the corpus Recall@1 of the same factor."""
    sw = real.length_sweep(random_task(nq=6, nd=15, seed=3), ["maxsim", "topk:2"], factors=[1, 3])
    r1 = sw.metrics[sw.metrics.metric == "recall@1"].set_index(["factor", "pooling"])["value"]
    per = sw.queries.groupby(["factor", "pooling"])["recall@1"].mean()
    assert len(sw.queries) == 2 * 2 * 6 and np.allclose(per.loc[r1.index], r1)


def _sweep_queries(hits: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"pooling": p, "factor": f, "query": q, "recall@1": h}
                         for (p, f), hs in hits.items() for q, h in enumerate(hs)])


def test_length_claims_follow_the_synthetic_rules_with_query_intervals():
    n = 40
    q = _sweep_queries({("MaxSim", 1): [1.0] * 30 + [0.0] * 10, ("MaxSim", 8): [1.0] * 3 + [0.0] * 37,
                        ("Top-4", 1): [1.0] * 20 + [0.0] * 20, ("Top-4", 8): [1.0] * 15 + [0.0] * 25,
                        ("Softmax", 1): [1.0] * 20 + [0.0] * 20, ("Softmax", 8): [1.0] * 16 + [0.0] * 24})
    rows = {r["link"]: r for r in real.length_claims(q, ["MaxSim", "Top-4", "Softmax"], n_boot=500)}
    falls = rows["falls with M, MaxSim"]
    assert falls["ours"] == pytest.approx(3 / n - 30 / n) and falls["ci_low"] <= falls["ours"] <= falls["ci_high"]
    assert falls["verdict"] == "reproduced" and falls["base_hits"] == 30 and falls["n_queries"] == n
    fastest = rows["MaxSim falls fastest"]  # relative drops 0.9 vs 0.25 / 0.2
    assert fastest["ours"] == pytest.approx(0.9 - 0.25) and fastest["verdict"] == "reproduced"
    assert rows["Top-4 > MaxSim at large M"]["verdict"] == "reproduced"
    assert all(-1 <= r["ci_low"] <= r["ci_high"] <= 1 for r in rows.values())


def test_length_claims_call_floors_untestable():
    q = _sweep_queries({(p, f): [1.0] * (2 if f == 1 else 0) + [0.0] * (38 if f == 1 else 40)
                        for p in ("MaxSim", "Top-4", "Softmax") for f in (1, 8)})
    rows = real.length_claims(q, ["MaxSim", "Top-4", "Softmax"], n_boot=200)
    assert {r["verdict"] for r in rows} == {"untestable here"}  # 2 hits at factor 1, 0 at factor 8
    with pytest.raises(ValueError, match="no complete"):
        real.length_claims(q[(q["pooling"] != "Top-4") | (q["factor"] == 1)], ["MaxSim", "Top-4", "Softmax"])


def test_cached_head_trains_once_per_config(tmp_path):
    calls = []

    def train():
        calls.append(1)
        return heads.ProjectionHead(6, 4, seed=len(calls)), pd.DataFrame({"step": [0], "loss": [1.5]})

    h1, hist1 = heads.cached_head(tmp_path, {"seed": 0}, train)
    h2, hist2 = heads.cached_head(tmp_path, {"seed": 0}, train)  # loaded, not retrained
    assert len(calls) == 1 and torch.equal(h1.linear.weight, h2.linear.weight) and hist2.loss.tolist() == [1.5]
    x = torch.randn(3, 6)
    assert torch.equal(h1(x), h2(x))
    heads.cached_head(tmp_path, {"seed": 1}, train)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npz"))) == 2


def test_one_trained_head_makes_decided_real_verdicts_indicative():
    """A view behind one trained head (n_seeds=1) cannot decide: intervals over queries miss the variance between
    trainings; the same tables zero-shot (n_seeds None) keep their verdicts."""
    ev = views.view_evidence(random_task(nq=12, nd=30, d=8, seed=7), 0.1, Ks=[0, 5], factors=[1, 2], K=5,
                             spike_size=2)
    order = list(ev.gini["pooling"].unique())
    zero = real.claims_table(ev.gini, order, ev.sweep.queries, ev.injection, "softmax:0.1", K=5)
    one = real.claims_table(ev.gini, order, ev.sweep.queries, ev.injection, "softmax:0.1", K=5, n_seeds=1)
    decided = zero["verdict"].isin(["reproduced", "partly reproduced", "not reproduced"])
    assert decided.any() and (one.loc[decided, "verdict"] == "indicative").all()
    assert (one.loc[~decided, "verdict"] == zero.loc[~decided, "verdict"]).all() and (one["n_seeds"] == 1).all()
