"""The real benchmark, offline: HPO-Dx and HPO-Syn2Def with all-MiniLM-L6-v2 (PAPER.md section 4 restated).

A ``RealTask`` holds ragged multi-vector queries [T_i, d] and documents [M_j, d] and one gold document per query.
Scoring is ragged-aware: documents are sorted by length and scored in chunks padded to the chunk's own
length, so a corpus of 2,000 diseases (1 to ~200 patches) never becomes one [Nd, 209, d] block.

On top: the evaluation protocol (Recall@1/5/10, MRR, nDCG@5 per pooling), a MaxSim-trained projection head
(384 -> 128, in-batch InfoNCE on simulated patients of diseases disjoint from the evaluation corpus), the
per-query document-patch gradient Gini of gold pairs, quality against the gold document's length, a
neutral length sweep and spike / Gaussian injection via ``spikehijack.core.inject``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core import inject
from ..core.checks import check_positive_int
from ..core.metrics import gini, gold_rank, infonce_loss, patch_gradient_norms, retrieval_metrics
from ..core.pooling import Pooling, parse_pooling
from ..core.scoring import check_queries_documents, pad, pool_similarity_block, score_matrix, sum_tokens
from ..worlds import hpo as hpo_mod

#: Poolings compared on the real benchmark (PAPER.md section 4): MaxSim, Top-k for k in 1, 4, 5, 16, softmax.
TOPK_REAL = (1, 4, 5, 16)


@dataclass
class RealTask:
    """Ragged multi-vector retrieval problem: queries [T_i, d], documents [M_j, d], gold [Nq] (doc index).

    With several relevant documents per query, ``gold`` holds the first one and ``meta["relevance"]`` the full
    bool mask [Nq, Nd]; metrics and injection use ``relevance(task)``.
    """

    name: str
    queries: list[Tensor]
    documents: list[Tensor]
    gold: Tensor
    query_ids: list[str]
    doc_ids: list[str]
    query_text: list[list[str]] = field(default_factory=list)
    doc_text: list[list[str]] = field(default_factory=list)
    release: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.gold) or len(self.documents) != len(self.doc_ids):
            raise ValueError("RealTask: queries/gold and documents/doc_ids must have matching lengths")
        if self.gold.dtype != torch.int64 or bool(((self.gold < 0) | (self.gold >= len(self.documents))).any()):
            raise ValueError(f"RealTask.gold must be int64 indices in [0, {len(self.documents)})")

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.array([len(d) for d in self.documents])

    @property
    def query_lengths(self) -> np.ndarray:
        return np.array([len(q) for q in self.queries])

    def project(self, head: nn.Module | None) -> RealTask:
        """The same task with every vector passed through ``head`` (None: unchanged)."""
        if head is None:
            return self
        with torch.no_grad():
            q = _apply_ragged(head, self.queries)
            d = _apply_ragged(head, self.documents)
        return replace(self, queries=q, documents=d, name=f"{self.name}+head")


def relevance(task: RealTask) -> Tensor:
    """Relevance mask [Nq, Nd] (bool): ``task.meta["relevance"]`` when the task has several relevant documents
    per query (ViDoRe), else one-hot of ``task.gold``."""
    R = task.meta.get("relevance")
    if R is not None:
        return R
    return torch.zeros(len(task.gold), len(task.documents), dtype=torch.bool).scatter_(1, task.gold[:, None], True)


def _apply_ragged(fn: nn.Module, items: list[Tensor]) -> list[Tensor]:
    lengths = [len(x) for x in items]
    out = fn(torch.cat(items))
    return list(torch.split(out, lengths))


# ----------------------------------------------------------------------------------------------------------
# Building the tasks


def _split_corpus(candidates: Sequence[str], others: Sequence[str], n_queries: int, n_distractors: int | None,
                  seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    if n_queries > len(candidates):
        raise ValueError(f"n_queries={n_queries} exceeds the {len(candidates)} eligible gold items")
    golds = [str(x) for x in rng.choice(np.array(candidates), size=n_queries, replace=False)]
    rest = sorted(set(others) - set(golds))
    if n_distractors is None or n_distractors >= len(rest):
        distract = rest
    else:
        distract = [str(x) for x in rng.choice(np.array(rest), size=n_distractors, replace=False)]
    return golds, distract


def build_hpo_dx(
    hpo: hpo_mod.HPO,
    encoder,
    n_queries: int = 160,
    n_distractors: int | None = 2000,
    n_gold: int = 5,
    n_noise: int = 2,
    p_imprecise: float = 0.3,
    min_phenotypes: int = 3,
    seed: int = 0,
    query_seed: int | None = None,
    universe: Sequence[str] | None = None,
) -> RealTask:
    """HPO-Dx: ``n_queries`` simulated patients (distinct gold diseases with >= ``min_phenotypes``
    phenotypes) against the golds plus ``n_distractors`` other diseases (None: every annotated disease).

    ``seed`` picks the corpus, ``query_seed`` (default ``seed``) the patient simulation. ``encoder`` is a
    phrase encoder (``MiniLMPhrases``): a disease becomes [M, d] with one patch per annotated phenotype name.
    ``universe`` restricts golds and distractors to these diseases (e.g. a validation split).
    """
    check_positive_int("n_queries", n_queries)
    allowed = set(hpo.diseases) if universe is None else set(universe) & set(hpo.diseases)
    golds, distract = _split_corpus([d for d in hpo_mod.eligible_diseases(hpo, min_phenotypes) if d in allowed],
                                    sorted(allowed), n_queries, n_distractors, seed)
    doc_ids = sorted(golds + distract)
    index = {d: i for i, d in enumerate(doc_ids)}
    patients = hpo_mod.simulate_patients(hpo, golds, n_gold, n_noise, p_imprecise, seed=seed if query_seed is None
                                         else query_seed)
    doc_text = [hpo_mod.disease_phrases(hpo, d) for d in doc_ids]
    query_text = [list(p.phrases) for p in patients]
    return RealTask(
        name="hpo-dx",
        queries=encoder.encode_queries(query_text),
        documents=encoder.encode_documents(doc_text),
        gold=torch.tensor([index[d] for d in golds], dtype=torch.int64),
        query_ids=golds, doc_ids=doc_ids, query_text=query_text, doc_text=doc_text, release=hpo.release,
        meta={"sources": [p.sources for p in patients], "n_gold": n_gold, "n_noise": n_noise,
              "p_imprecise": p_imprecise, "seed": seed, "query_seed": query_seed},
    )


def build_syn2def(
    hpo: hpo_mod.HPO, encoder, n_queries: int = 160, n_distractors: int | None = 1000, seed: int = 0
) -> RealTask:
    """HPO-Syn2Def: a synonym of a term (layperson first) as the query, term definitions as documents.

    ``encoder`` is a token encoder (``MiniLMTokens``): texts become token sets [n_tokens, d].
    """
    check_positive_int("n_queries", n_queries)
    cands = hpo_mod.syn2def_candidates(hpo)
    others = [t for t in sorted(hpo.terms) if hpo.terms[t].definition and not hpo.terms[t].obsolete]
    golds, distract = _split_corpus(cands, others, n_queries, n_distractors, seed)
    doc_ids = sorted(golds + distract)
    index = {d: i for i, d in enumerate(doc_ids)}
    rng = np.random.default_rng(seed + 1)
    qs = [hpo_mod.syn2def_query(hpo, t, rng) for t in golds]
    doc_text = [hpo.terms[t].definition for t in doc_ids]
    return RealTask(
        name="hpo-syn2def",
        queries=encoder.encode_queries([q.text for q in qs]),
        documents=encoder.encode_documents(doc_text),
        gold=torch.tensor([index[t] for t in golds], dtype=torch.int64),
        query_ids=golds, doc_ids=doc_ids, query_text=[[q.text] for q in qs], doc_text=[[t] for t in doc_text],
        release=hpo.release, meta={"kinds": [q.kind for q in qs], "seed": seed},
    )


# ----------------------------------------------------------------------------------------------------------
# Scoring and evaluation


def score_ragged_many(
    queries: Sequence[Tensor],
    documents: Sequence[Tensor],
    poolings: Sequence[str | Pooling],
    docs_per_chunk: int = 128,
) -> dict[str, Tensor]:
    """Scores [Nq, Nd] of ragged queries [T_i, d] against ragged documents [M_j, d] for several poolings.

    Documents are sorted by length and padded per chunk of ``docs_per_chunk`` (padding is masked with -inf,
    so the numbers equal one big ``score_matrix`` call); each similarity block [Nq, T, n, M] is computed once
    and pooled by every pooling. Returns {pooling spec: scores}.
    """
    ps = [parse_pooling(p) for p in poolings]
    Q, qm = pad(list(queries))
    order = torch.argsort(torch.tensor([len(d) for d in documents]), stable=True)
    acc = torch.promote_types(Q.dtype, torch.float32)  # accumulate in float32 or wider
    out = {p.spec: torch.empty(len(queries), len(documents), dtype=acc) for p in ps}
    q_flat = Q.reshape(-1, Q.shape[-1])
    for s in range(0, len(documents), docs_per_chunk):
        idx = order[s : s + docs_per_chunk]
        D, dm = pad([documents[int(i)] for i in idx])
        check_queries_documents(Q, D, qm, dm)
        n, M, d = D.shape
        S = (q_flat @ D.reshape(n * M, d).T).view(Q.shape[0], Q.shape[1], n, M).to(acc)
        for p in ps:
            out[p.spec][:, idx] = sum_tokens(pool_similarity_block(p, S, dm[None, None]), qm).to(acc)
    return out


def score_ragged(queries: Sequence[Tensor], documents: Sequence[Tensor], pooling: str | Pooling,
                 docs_per_chunk: int = 128) -> Tensor:
    """``score_ragged_many`` for one pooling -> [Nq, Nd]."""
    return next(iter(score_ragged_many(queries, documents, [pooling], docs_per_chunk).values()))


def evaluate(task: RealTask, poolings: Sequence[str], ks: tuple[int, ...] = (1, 5, 10)) -> pd.DataFrame:
    """Tidy table (task, pooling, metric, value) of Recall@k, MRR and nDCG@5 for each pooling."""
    rows = []
    scores = score_ragged_many(task.queries, task.documents, poolings)
    for spec in poolings:
        p = parse_pooling(spec)
        for metric, value in retrieval_metrics(scores[p.spec], relevance(task), ks).items():
            rows.append({"task": task.name, "pooling": p.label, "spec": p.spec, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def per_query(task: RealTask, poolings: Sequence[str]) -> pd.DataFrame:
    """Per-query gold rank, Recall@1 and reciprocal rank with the gold document's length and the length of
    the top-1 document (for length-bias readings)."""
    rows = []
    lengths = task.doc_lengths
    scores = score_ragged_many(task.queries, task.documents, poolings)
    for spec in poolings:
        p = parse_pooling(spec)
        S = scores[p.spec]
        rank = gold_rank(S, relevance(task)).numpy()
        top = S.argmax(1).numpy()
        for i in range(len(task.queries)):
            rows.append({"task": task.name, "pooling": p.label, "spec": p.spec, "query": i, "rank": int(rank[i]),
                         "recall@1": float(rank[i] == 1), "rr": 1.0 / rank[i],
                         "gold_len": int(lengths[int(task.gold[i])]), "top1_len": int(lengths[top[i]]),
                         "query_len": len(task.queries[i])})
    return pd.DataFrame(rows)


def sweep_tau(task: RealTask, taus: Sequence[float], metric: str = "mrr") -> pd.DataFrame:
    """Softmax pooling quality for each tau: (tau, metric, value) rows."""
    rows = []
    scores = score_ragged_many(task.queries, task.documents, [f"softmax:{tau:g}" for tau in taus])
    for tau in taus:
        for m, v in retrieval_metrics(scores[f"softmax:{tau:g}"], relevance(task)).items():
            rows.append({"task": task.name, "tau": float(tau), "metric": m, "value": v})
    return pd.DataFrame(rows)


def pick_tau(sweep: pd.DataFrame, metric: str = "mrr") -> float:
    """The tau with the best ``metric`` in a ``sweep_tau`` table (smallest tau on ties)."""
    g = sweep[sweep.metric == metric].sort_values(["value", "tau"], ascending=[False, True])
    return float(g.iloc[0]["tau"])


# ----------------------------------------------------------------------------------------------------------
# MaxSim projection head


class ProjectionHead(nn.Module):
    """x [..., 384] -> l2-normalised [..., 128]: a linear map as ColBERT's, trained with MaxSim InfoNCE."""

    def __init__(self, in_dim: int = 384, out_dim: int = 128, seed: int = 0):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # orthonormal rows: a random isometry-like start
            w = torch.linalg.qr(torch.randn(in_dim, out_dim, generator=g))[0].T
            self.linear.weight.copy_(w)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=-1)


def train_head(
    hpo: hpo_mod.HPO,
    encoder,
    diseases: Sequence[str],
    pooling: str = "maxsim",
    out_dim: int = 128,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    temperature: float = 0.1,
    n_views: int = 4,
    n_gold: int = 5,
    n_noise: int = 2,
    p_imprecise: float = 0.3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ProjectionHead, pd.DataFrame]:
    """Train a projection head with in-batch InfoNCE on Z_ab = score(q_a, d_b) / temperature.

    ``diseases`` must be disjoint from the evaluation corpus (the caller's job; see ``train_diseases``).
    ``n_views`` simulated patients per disease (seeds seed+1..seed+n_views) are drawn once; each step samples
    ``batch_size`` distinct diseases and one view each. Returns the head and the loss history (step, loss).
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size, minimum=2)
    diseases = list(diseases)
    if len(diseases) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} training diseases, got {len(diseases)}")
    views = [hpo_mod.simulate_patients(hpo, diseases, n_gold, n_noise, p_imprecise, seed=seed + 1 + v)
             for v in range(n_views)]
    docs = encoder.encode_documents([hpo_mod.disease_phrases(hpo, d) for d in diseases])
    qs = [encoder.encode_queries([list(p.phrases) for p in view]) for view in views]
    head = ProjectionHead(docs[0].shape[-1], out_dim, seed=seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for step in tqdm(range(steps), desc="train head", disable=not progress):
        idx = rng.choice(len(diseases), size=batch_size, replace=False)
        v = rng.integers(n_views, size=batch_size)
        Q, qm = pad([qs[int(vi)][int(i)] for i, vi in zip(idx, v, strict=True)])
        D, dm = pad([docs[int(i)] for i in idx])
        Z = score_matrix(head(Q), head(D), pooling, qm, dm) / temperature
        loss = infonce_loss(Z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"step": step, "loss": float(loss.detach())})
    head.eval()
    return head, pd.DataFrame(history)


def train_diseases(hpo: hpo_mod.HPO, task: RealTask, n: int | None, min_phenotypes: int = 3,
                   seed: int = 0) -> list[str]:
    """Up to ``n`` eligible diseases outside the task's corpus (None: all of them), sorted."""
    pool = sorted(set(hpo_mod.eligible_diseases(hpo, min_phenotypes)) - set(task.doc_ids))
    if n is None or n >= len(pool):
        return pool
    rng = np.random.default_rng(seed + 7)
    return sorted(str(x) for x in rng.choice(np.array(pool), size=n, replace=False))


# ----------------------------------------------------------------------------------------------------------
# Gradient concentration of gold pairs


def gold_pair_gini(task: RealTask, poolings: Sequence[str], losses: Sequence[str] = ("pair", "infonce"),
                   batch_size: int | None = None) -> pd.DataFrame:
    """Per-query Gini of the document-patch gradient norms at the gold document (metrics.patch_gradient_norms).

    The queries and their gold documents form in-batch InfoNCE batches (all queries at once by default, or
    ``batch_size`` consecutive queries). Rows: pooling, loss, query, gini, gold_len, query_len and the MaxSim
    structural bound max(0, 1 - T/M).
    """
    n = len(task.queries)
    step = n if batch_size is None else check_positive_int("batch_size", batch_size, minimum=2)
    rows = []
    for spec in poolings:
        p = parse_pooling(spec)
        for loss in losses:
            for s in range(0, n, step):
                ids = list(range(s, min(n, s + step)))
                Q, qm = pad([task.queries[i] for i in ids])
                D, dm = pad([task.documents[int(task.gold[i])] for i in ids])
                g = patch_gradient_norms(Q, D, p, qm, dm, loss=loss)
                G = gini(g, mask=dm)
                for j, i in enumerate(ids):
                    T, M = int(qm[j].sum()), int(dm[j].sum())
                    rows.append({"pooling": p.label, "spec": p.spec, "loss": loss, "query": i, "gini": float(G[j]),
                                 "gold_len": M, "query_len": T, "bound": max(0.0, 1 - T / M)})
    return pd.DataFrame(rows)


def length_bins(values: np.ndarray, edges: Sequence[int] = (1, 8, 16, 32, 64, 10_000)) -> list[str]:
    """Labels like '8-15' for integer lengths binned by ``edges`` (left-closed)."""
    labels = []
    for v in values:
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            if lo <= v < hi:
                labels.append(f"{lo}-{hi - 1}" if hi < 10_000 else f">={lo}")
                break
        else:
            raise ValueError(f"length {v} outside the bin edges {edges}")
    return labels


# ----------------------------------------------------------------------------------------------------------
# Neutral length sweep


def neutral_pool(task: RealTask) -> Tensor:
    """Patches unrelated to every query: vectors [P, d] of the non-gold documents, minus (for phrase
    documents) every phrase that occurs in a gold document or in a query. Duplicated phrases appear once."""
    gold = set(int(g) for g in task.gold)
    phrase_docs = len(task.doc_text) == len(task.documents) and all(
        len(t) == len(d) for t, d in zip(task.doc_text, task.documents, strict=True))
    if not phrase_docs:
        return torch.cat([d for j, d in enumerate(task.documents) if j not in gold])
    banned = {p for j in gold for p in task.doc_text[j]} | {p for q in task.query_text for p in q}
    seen: dict[str, Tensor] = {}
    for j, (texts, vecs) in enumerate(zip(task.doc_text, task.documents, strict=True)):
        if j in gold:
            continue
        for t, v in zip(texts, vecs, strict=True):
            if t not in banned and t not in seen:
                seen[t] = v
    if not seen:
        raise ValueError("neutral_pool: no patch is unrelated to every query")
    return torch.stack(list(seen.values()))


def pad_task(task: RealTask, factor: int, pool: Tensor, seed: int = 0, docs_per_chunk: int = 256) -> RealTask:
    """Every document grown to ``factor`` x its length with patches drawn from ``pool`` (inject.pad_documents,
    without replacement per document when the pool is large enough)."""
    check_positive_int("factor", factor)
    if factor == 1:
        return task
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.tensor([len(d) for d in task.documents]), stable=True)
    out: list[Tensor] = [None] * len(task.documents)  # type: ignore[list-item]
    for s in range(0, len(order), docs_per_chunk):
        idx = [int(i) for i in order[s : s + docs_per_chunk]]
        D, dm = pad([task.documents[i] for i in idx])
        extra = (factor - 1) * dm.sum(1)
        D2, m2 = inject.pad_documents(D, dm, extra, pool.to(D.dtype), generator=g,
                                      replace=bool(int(extra.max()) > len(pool)))
        for j, i in enumerate(idx):
            out[i] = D2[j][m2[j]]
    return replace(task, documents=out, name=f"{task.name}x{factor}")


def length_sweep(task: RealTask, poolings: Sequence[str], factors: Sequence[int] = (1, 2, 4, 8), seed: int = 0,
                 progress: bool = False) -> pd.DataFrame:
    """Retrieval quality when every document is padded to factor x its length with neutral real patches.

    Rows: factor, pooling, metric, value (tidy)."""
    pool = neutral_pool(task)
    frames = []
    for f in tqdm(factors, desc="length sweep", disable=not progress):
        t = pad_task(task, int(f), pool, seed=seed + int(f))
        ev = evaluate(t, poolings)
        frames.append(ev.assign(factor=int(f), task=task.name))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------------------
# Injection (spikes vs Gaussian control) via spikehijack.core.inject


def injection_scores(task: RealTask, pooling: str | Pooling, injected: Tensor, docs_per_chunk: int = 128) -> Tensor:
    """inject.score_with_injection over the ragged corpus: query a's patches injected [Nq, K, d] go into every
    non-gold document of a -> scores [Nq, Nd] (gold entries clean).

    Each length-sorted chunk is scored with a one-patch placeholder document appended and marked gold for
    every query (so each chunk's relevance mask has a gold per query); its column is dropped.
    """
    p = parse_pooling(pooling)
    Q, qm = pad(list(task.queries))
    order = torch.argsort(torch.tensor([len(d) for d in task.documents]), stable=True)
    out = torch.empty(len(task.queries), len(task.documents), dtype=torch.promote_types(Q.dtype, torch.float32))
    placeholder = torch.zeros(1, Q.shape[-1], dtype=Q.dtype)
    R = relevance(task)
    for s in range(0, len(order), docs_per_chunk):
        idx = order[s : s + docs_per_chunk]
        D, dm = pad([task.documents[int(i)] for i in idx] + [placeholder])
        rel = torch.cat([R[:, idx], torch.ones(len(Q), 1, dtype=torch.bool)], dim=1)
        sc = inject.score_with_injection(Q, D, p, injected.to(Q.dtype), rel, qm, dm)
        out[:, idx] = sc[:, :-1].to(out.dtype)
    return out


def _top_subcorpus(task: RealTask, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gold and top non-gold document of every query as one padded sub-corpus:
    (D [2Nq, M, d], d_mask, relevance [Nq, 2Nq], sub-scores [Nq, 2Nq], doc ids [2Nq])."""
    R = relevance(task)
    top = inject.top_nongold_documents(scores, R)
    ids = torch.cat([task.gold, top])
    D, dm = pad([task.documents[int(i)] for i in ids])
    rel = R[:, ids]
    return D, dm, rel, scores[:, ids], ids


def injection_experiment(
    task: RealTask,
    poolings: Sequence[str],
    Ks: Sequence[int] = (0, 25, 50, 100, 200, 400),
    kinds: Sequence[str] = ("spike", "gaussian"),
    spike_size: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Inject K patches per query into every non-gold document and measure, per query and pooling:
    hit@1 (gold ranked first), reciprocal rank, hijack rate and arg-max shift to injected patches (both in the
    top non-gold document after injection, as in inject.hijack_rate / argmax_shift with documents="top").

    Spikes: inject.spike_patches of the query's own vectors (normalised mean of ``spike_size`` of them); the
    control: inject.gaussian_patches (unit-norm Gaussian). Patches are drawn once with max(Ks) and sliced
    (nested). Tidy rows: kind, K, pooling, query, hit, rr, hijack, argmax_shift.
    """
    Q, qm = pad(list(task.queries))
    Kmax = max(Ks)
    g = torch.Generator().manual_seed(seed)
    patches = {}
    for kind in kinds:
        if kind == "spike":
            patches[kind] = inject.spike_patches(Q, Kmax, spike_size=spike_size, q_mask=qm, generator=g)
        elif kind == "gaussian":
            patches[kind] = inject.gaussian_patches(len(Q), Kmax, Q.shape[-1], generator=g, dtype=Q.dtype)
        else:
            raise ValueError(f"kinds: expected 'spike' or 'gaussian', got {kind!r}")
    clean = score_ragged_many(task.queries, task.documents, poolings)
    rows = []
    jobs = [(kind, K, spec) for kind in kinds for K in Ks for spec in poolings]
    for kind, K, spec in tqdm(jobs, desc="injection", disable=not progress):
        p = parse_pooling(spec)
        inj = patches[kind][:, :K]
        S = clean[p.spec] if K == 0 else injection_scores(task, p, inj)
        rank = gold_rank(S, relevance(task))
        if K == 0:
            hij = torch.zeros(len(Q))
            shift = torch.zeros(len(Q))
        else:
            D, dm, rel, sub, _ = _top_subcorpus(task, S)
            hij = inject.hijack_rate(Q, D, p, inj, rel, qm, dm, scores=sub, reduction="none")
            shift = inject.argmax_shift(Q, D, p, inj, rel, qm, dm, scores=sub, reduction="none").to_injected
        for i in range(len(Q)):
            rows.append({"task": task.name, "kind": kind, "K": int(K), "pooling": p.label, "spec": p.spec,
                         "query": i, "hit": float(rank[i] == 1), "rr": float(1.0 / rank[i]),
                         "hijack": float(hij[i]), "argmax_shift": float(shift[i])})
    return pd.DataFrame(rows)


def retained(inj: pd.DataFrame, value: str = "hit") -> pd.DataFrame:
    """Mean ``value`` per (kind, K, pooling) and its share of the K = 0 value ("retained")."""
    m = inj.groupby(["kind", "pooling", "K"], sort=False)[[value, "hijack", "argmax_shift"]].mean().reset_index()
    base = m[m.K == 0].set_index(["kind", "pooling"])[value]
    m["retained"] = [v / base[(k, p)] if base[(k, p)] > 0 else float("nan")
                     for k, p, v in zip(m.kind, m.pooling, m[value], strict=True)]
    return m


def selection_example(task: RealTask, query: int, injected: Tensor, scores: Tensor) -> dict[str, object]:
    """Figure-2 data for one query: its top non-gold document after injection and the arg-max patch of every
    query token before and after (inject.selected_patches). injected [K, d] are the query's patches."""
    top = int(inject.top_nongold_documents(scores[query : query + 1], relevance(task)[query : query + 1])[0])
    before, after = inject.selected_patches(task.queries[query], task.documents[top], injected.to(
        task.documents[top].dtype))
    S = torch.cat([task.queries[query] @ task.documents[top].T, task.queries[query] @ injected.T], dim=1)
    return {"doc": top, "M": len(task.documents[top]), "K": len(injected), "before": before.numpy(),
            "after": after.numpy(), "S": S.numpy(), "tokens": task.query_text[query] if task.query_text else []}


# ----------------------------------------------------------------------------------------------------------
# Summaries with intervals and the claims table


def retained_ci(inj: pd.DataFrame, kind: str, pooling: str, K: int, value: str = "hit", n_boot: int = 2000,
                seed: int = 0) -> tuple[float, float, float]:
    """Retained share mean(value at K) / mean(value at K = 0) with a paired percentile bootstrap over queries."""
    base = inj[(inj.kind == kind) & (inj.pooling == pooling) & (inj.K == 0)].sort_values("query")[value].to_numpy()
    after = inj[(inj.kind == kind) & (inj.pooling == pooling) & (inj.K == K)].sort_values("query")[value].to_numpy()
    if len(base) == 0 or len(base) != len(after):
        raise ValueError(f"no paired rows for kind={kind!r}, pooling={pooling!r}, K={K}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(n_boot, len(base)))
    b, a = base[idx].mean(1), after[idx].mean(1)
    ratios = np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)
    lo, hi = np.nanquantile(ratios, [0.025, 0.975])
    return float(after.mean() / base.mean()) if base.mean() > 0 else float("nan"), float(lo), float(hi)


def gini_tests(gi: pd.DataFrame, order: Sequence[str], loss: str = "pair") -> pd.DataFrame:
    """Paired t-tests (stats.paired_test) of per-query Gini between consecutive poolings in ``order``
    (labels), for one loss reading."""
    from ..reporting.stats import paired_test

    rows = []
    g = gi[gi.loss == loss]
    for a, b in zip(order[:-1], order[1:], strict=True):
        x = g[g.pooling == a].sort_values("query").gini.to_numpy()
        y = g[g.pooling == b].sort_values("query").gini.to_numpy()
        rows.append({"loss": loss, "a": a, "b": b, **paired_test(x, y)})
    return pd.DataFrame(rows)


def claims_table(gi: pd.DataFrame, gini_order: Sequence[str], sweep: pd.DataFrame, inj: pd.DataFrame,
                 maxsim: str, topk: str, softmax: str, topks: Sequence[str], K: int = 100,
                 loss: str = "pair", where: str = "04 real") -> pd.DataFrame:
    """Claims 1 and 4-8 of PAPER.md section 5 on the real benchmark, with pre-stated verdict rules:

    1. per-query Gini ordering gini_order[0] > [1] > [2] (both paired t-tests p < 0.05, in that direction;
       only the first above both others: partly);
    4. Recall@1 falls from x1 to the largest padding factor for every pooling, MaxSim falls most and Top-k beats
       MaxSim at the largest factor (all three: reproduced; the fall alone: partly);
    5. spike injection at K: MaxSim and Top-k keep < 50 % of Recall@1 and softmax keeps >= 20 points more;
    6. the Top-k family (``topks``) retains within 10 points of each other at K;
    7. Gaussian patches at K keep >= 90 % of MaxSim Recall@1 with a hijack rate < 0.15;
    8. under spikes at K > 50 % of MaxSim arg-max selections move to injected patches (Gaussian < 15 %).
    """
    from ..reporting.stats import claim_row, mean_ci

    rows = []
    g = gi[gi.loss == loss]
    tests = gini_tests(gi, gini_order, loss)
    ordered = bool(((tests.mean_diff > 0) & (tests.p < 0.05)).all())
    top = pd.concat([gini_tests(gi, [gini_order[0], b], loss) for b in gini_order[1:]])
    first = bool(((top.mean_diff > 0) & (top.p < 0.05)).all())  # MaxSim above both others
    v1 = "reproduced" if ordered else ("partly reproduced" if first else "not reproduced")
    for lab, paper in zip(gini_order, ("0.983", "0.951", "0.883"), strict=False):
        m, lo, hi = mean_ci(g[g.pooling == lab].gini)
        rows.append(claim_row("1", f"gold-pair patch-gradient Gini, {lab} ({loss} loss)", paper, m, lo, hi, v1, where))
    r1 = sweep[sweep.metric == "recall@1"].pivot_table(index="factor", columns="pooling", values="value")
    f0, f1 = r1.index.min(), r1.index.max()
    drop = r1.loc[f0] - r1.loc[f1]
    falls = bool((drop > 0).all())
    fastest = bool(drop[maxsim] >= drop.max() - 1e-12)
    topk_wins = bool(r1.loc[f1, topk] > r1.loc[f1, maxsim])
    v4 = "reproduced" if falls and fastest and topk_wins else ("partly reproduced" if falls else "not reproduced")
    for lab in (maxsim, topk, softmax):
        rows.append(claim_row("4", f"Recall@1 drop x{f0} -> x{f1} neutral padding, {lab}",
                              "falls for all; MaxSim fastest; Top-4 > MaxSim at large M",
                              float(drop[lab]), float(drop[lab]), float(drop[lab]), v4, where))
    ret = {lab: retained_ci(inj, "spike", lab, K) for lab in (maxsim, topk, softmax)}
    collapse = ret[maxsim][0] < 0.5 and ret[topk][0] < 0.5
    keeps = ret[softmax][0] - max(ret[maxsim][0], ret[topk][0]) >= 0.2
    v5 = "reproduced" if collapse and keeps else ("partly reproduced" if collapse else "not reproduced")
    for lab, paper in zip((maxsim, topk, softmax), ("0.278", "0.293", "0.676"), strict=True):
        rows.append(claim_row("5", f"Recall@1 retained, spikes K={K}, {lab}", paper, *ret[lab], v5, where))
    for lab in (maxsim, topk):
        h = inj[(inj.kind == "spike") & (inj.pooling == lab) & (inj.K == K)].hijack
        rows.append(claim_row("5", f"hijack rate, spikes K={K}, {lab}", "~0.70", *mean_ci(h), v5, where))
    rk = {lab: retained_ci(inj, "spike", lab, K) for lab in topks}
    spread = max(v[0] for v in rk.values()) - min(v[0] for v in rk.values())
    v6 = "reproduced" if spread <= 0.1 and max(v[0] for v in rk.values()) < 0.5 else "not reproduced"
    for lab in topks:
        rows.append(claim_row("6", f"Recall@1 retained, spikes K={K}, {lab}", "0.28-0.30", *rk[lab], v6, where))
    gret = retained_ci(inj, "gaussian", maxsim, K)
    ghij = inj[(inj.kind == "gaussian") & (inj.pooling == maxsim) & (inj.K == K)].hijack
    v7 = "reproduced" if gret[0] >= 0.9 and ghij.mean() < 0.15 else "not reproduced"
    rows.append(claim_row("7", f"Recall@1 retained, Gaussian K={K}, {maxsim}", "~0.97", *gret, v7, where))
    rows.append(claim_row("7", f"hijack rate, Gaussian K={K}, {maxsim}", "< 0.15", *mean_ci(ghij), v7, where))
    sh = inj[(inj.kind == "spike") & (inj.pooling == maxsim) & (inj.K == K)].argmax_shift
    gsh = inj[(inj.kind == "gaussian") & (inj.pooling == maxsim) & (inj.K == K)].argmax_shift
    v8 = "reproduced" if sh.mean() > 0.5 and gsh.mean() < 0.15 else "not reproduced"
    rows.append(claim_row("8", f"arg-max selections moved to spikes, K={K}, {maxsim}", "~0.83", *mean_ci(sh), v8,
                          where))
    return pd.DataFrame(rows)


def figure2_examples(task: RealTask, K: int = 100, spike_size: int = 4, seed: int = 0,
                     pooling: str = "maxsim") -> dict[str, dict[str, object]]:
    """Figure-2 data for one query, spikes and Gaussian patches (the construction of
    ``injection_experiment``): the first query whose gold ranks first before injection and not after spike
    injection (else query 0). Returns {"spike": selection_example, "gaussian": selection_example}."""
    Q, qm = pad(list(task.queries))
    g = torch.Generator().manual_seed(seed)
    spikes = inject.spike_patches(Q, K, spike_size=spike_size, q_mask=qm, generator=g)
    gauss = inject.gaussian_patches(len(Q), K, Q.shape[-1], generator=g, dtype=Q.dtype)
    clean = score_ragged(task.queries, task.documents, pooling)
    after = injection_scores(task, pooling, spikes)
    lost = (gold_rank(clean, relevance(task)) == 1) & (gold_rank(after, relevance(task)) > 1)
    q = int(torch.nonzero(lost)[0]) if bool(lost.any()) else 0
    out = {"spike": selection_example(task, q, spikes[q], after)}
    out["gaussian"] = selection_example(task, q, gauss[q], injection_scores(task, pooling, gauss))
    return out


def add_cli(sub: argparse._SubParsersAction) -> None:  # pragma: no cover - thin wrapper
    p = sub.add_parser("real", help="HPO real benchmark: baseline quality per pooling (prints a table)")
    p.add_argument("--task", choices=["hpo-dx", "hpo-syn2def"], default="hpo-dx")
    p.add_argument("--profile", choices=["quick", "paper"], default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cli_real)


def _cli_real(args: argparse.Namespace) -> int:  # pragma: no cover
    from ..io import results_dir, write_csv
    from ..worlds.encoders import MiniLMPhrases, MiniLMTokens

    H = hpo_mod.load_hpo()
    n_dis = 2000 if args.profile == "quick" else None
    if args.task == "hpo-dx":
        task = build_hpo_dx(H, MiniLMPhrases(release=H.release, progress=True), n_distractors=n_dis, seed=args.seed)
    else:
        task = build_syn2def(H, MiniLMTokens(release=H.release, progress=True),
                             n_distractors=1000 if args.profile == "quick" else None, seed=args.seed)
    specs = ["maxsim", *[f"topk:{k}" for k in TOPK_REAL], "softmax:0.05"]
    table = evaluate(task, specs)
    print(table.pivot_table(index="pooling", columns="metric", values="value", sort=False).round(4).to_string())
    path = write_csv(table, results_dir(args.profile) / f"real_cli_{args.task}.csv")
    print(f"wrote {path}")
    return 0
