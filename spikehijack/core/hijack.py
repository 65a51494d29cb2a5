"""Scoring under injection, and where the query tokens' selections go (PAPER.md sections 3-4).

Shapes: queries Q [Nq, T, d] with q_mask [Nq, T]; documents D [Nd, M, d] with d_mask [Nd, M]; injected
patches [Nq, K, d] (query-specific: query a's K patches go into every non-gold document of query a, and only
for query a); gold is a LongTensor [Nq] (one gold document per query) or a bool relevance mask [Nq, Nd].
The injected patches are built by ``spikehijack.core.inject``, which re-exports everything here.

- ``score_with_injection``: scores [Nq, Nd] as if every query saw its own injected corpus (never built).
- ``hijack_rate`` (arg-max share on injected patches, every pooling) / ``argmax_shift`` / ``selection_mass``
  (the pooling's weights on injected patches): where the query tokens' selections go after injection.

Similarity blocks are those of ``score_matrix``: S [n, Nq, T, M] by ``kernels.similarity_block``, in blocks
of documents from ``kernels.document_blocks``; the injected part S_inj [Nq, T, K] is shared by every document.

>>> Q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                 # one query, two tokens
>>> D = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])               # doc 0 (gold), doc 1
>>> injected = Q.clone()                                         # copies of the two query tokens
>>> score_with_injection(Q, D, "maxsim", injected, gold=torch.tensor([0]))
tensor([[1., 2.]])
>>> hijack_rate(Q, D, "maxsim", injected, gold=torch.tensor([0])).item()
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .checks import check_mask, check_tensor
from .kernels import concat_parts, document_blocks, similarity_block, sum_tokens, widen_low_precision
from .metrics import Reduction, apply_reduction, relevance_mask
from .pooling import Pooling, parse_pooling
from .scoring import check_queries_documents, score_matrix

Documents = Literal["top", "all"]


def check_injected(injected: object, Nq: int, d: int, D: Tensor) -> Tensor:
    """injected must be a finite float tensor [Nq, K, d], K >= 0, on D's device with D's dtype."""
    if not isinstance(injected, Tensor):
        raise TypeError(f"injected must be a torch.Tensor [Nq, K, d], got {type(injected).__name__}")
    if not injected.is_floating_point():
        raise TypeError(f"injected must be a floating-point tensor, got dtype {injected.dtype}")
    if injected.ndim != 3 or injected.shape[0] != Nq or injected.shape[2] != d:
        raise ValueError(f"injected must have shape [Nq={Nq}, K, d={d}] (K >= 0), got {tuple(injected.shape)}")
    if injected.device != D.device or injected.dtype != D.dtype:
        raise ValueError(
            f"injected must match the documents' device and dtype ({D.device}, {D.dtype}), "
            f"got {injected.device}, {injected.dtype}"
        )
    if injected.numel() and not bool(torch.isfinite(injected).all()):
        raise ValueError("injected contains NaN or inf")
    return injected


def _validate(
    Q: Tensor, D: Tensor, injected: Tensor, gold: Tensor, q_mask: Tensor | None, d_mask: Tensor | None
) -> Tensor:
    """Validate every input; return the relevance mask [Nq, Nd] (True = gold, never injected).

    A bool mask may leave a query without any gold document in D (e.g. D is one chunk of a larger corpus):
    all of that query's documents are then injected."""
    check_queries_documents(Q, D, q_mask, d_mask)
    check_injected(injected, Q.shape[0], Q.shape[2], D)
    Nq, Nd = Q.shape[0], D.shape[0]
    if isinstance(gold, Tensor) and gold.dtype == torch.bool:
        if tuple(gold.shape) != (Nq, Nd):
            raise ValueError(f"gold mask must have shape {(Nq, Nd)}, got {tuple(gold.shape)}")
        return gold.to(D.device)
    return relevance_mask(Q.new_zeros(Nq, Nd), gold)


def _injected_similarities(Q: Tensor, injected: Tensor) -> Tensor:
    """S_inj [Nq, T, K]: each query's tokens against its own injected patches (pooled in float32 or wider)."""
    return widen_low_precision(torch.bmm(Q, injected.transpose(1, 2)))


def injected_summary(Q: Tensor, pooling: str | Pooling, injected: Tensor) -> Tensor:
    """The pooling's summary (``Pooling.injected_summary``) of each query's tokens Q [Nq, T, d] against its own
    injected patches [Nq, K, d] -> [Nq, T, W]: what ``score_with_injection`` merges into every block (pass it as
    ``summary`` to score the same queries and patches over several corpora; ``worlds.tasks.injection_scores_many``
    merges its summaries itself, in one pass over a ragged corpus)."""
    return parse_pooling(pooling).injected_summary(_injected_similarities(Q, injected))


def _doc_blocks(
    Q: Tensor, D: Tensor, d_mask: Tensor | None, extra: int, chunk_size: int | None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Blocks of documents: (S [n, Nq, T, M], mask [n, 1, 1, M] or None), S computed as ``score_matrix`` does;
    blocks are sized for M + ``extra`` patches per document (what the pooling appends)."""
    Nq, T, d = Q.shape
    Nd, M, _ = D.shape
    q = Q.reshape(Nq * T, d)
    for docs in document_blocks(Nd, Nq * T * (M + extra), Q.device, chunk_size):
        S = similarity_block(D[docs], q).view(-1, Nq, T, M)
        yield S, None if d_mask is None else d_mask[docs, None, None, :]


def _token_mean(x: Tensor, q_mask: Tensor | None) -> Tensor:
    """Mean over valid query tokens: x [Nq, T, ...] -> [Nq, ...]."""
    n = x.shape[1] if q_mask is None else q_mask.sum(1).view(q_mask.shape[:1] + (1,) * (x.ndim - 2))
    return sum_tokens(x.to(torch.promote_types(x.dtype, torch.float32)), q_mask) / n


@torch.no_grad()
def score_with_injection(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    injected: Tensor,
    gold: Tensor,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    chunk_size: int | None = None,
    clean_scores: Tensor | None = None,
    summary: Tensor | None = None,
) -> Tensor:
    """Scores [Nq, Nd] after appending query a's injected patches [Nq, K, d] to every non-gold document of a.

    The same numbers as scoring each query with ``score_matrix`` against its own explicit corpus
    (``inject_corpus``: every non-gold document holds its M patches, masked ones staying masked, plus the K
    injected ones), up to floating-point summation order. Gold documents are untouched: their entries are
    those of ``score_matrix(Q, D, pooling, q_mask, d_mask, chunk_size)`` bit for bit (pass that matrix as
    ``clean_scores`` when you already have it). The corpus is never built: each block of documents is pooled
    with the query's injected similarities by ``Pooling.merged`` (the concatenation by default, so any
    registered pooling works, token-coupled ones included; MaxSim, Top-k, the rank windows, softmax and mean
    merge per-part statistics, ``Pooling.injected_summary``, at a cost per block that does not grow with K).
    ``chunk_size=None`` sizes blocks by ``kernels.block_size``. K = 0 returns the clean scores. ``summary``:
    ``injected_summary(Q, pooling, injected)``, when the caller already has it. Evaluation only: computed without
    gradient.
    """
    p = parse_pooling(pooling)
    rel = _validate(Q, D, injected, gold, q_mask, d_mask)
    Nq, Nd = Q.shape[0], D.shape[0]
    if clean_scores is None:
        clean_scores = score_matrix(Q, D, p, q_mask, d_mask, chunk_size=chunk_size)
    elif not isinstance(clean_scores, Tensor) or tuple(clean_scores.shape) != (Nq, Nd):
        raise ValueError(f"clean_scores must be the score_matrix output [Nq, Nd] = {(Nq, Nd)}")
    if injected.shape[1] == 0:
        return clean_scores.clone()
    if summary is None:
        summary = injected_summary(Q, p, injected)  # [Nq, T, W], once for every block
    elif tuple(summary.shape[:2]) != tuple(Q.shape[:2]):
        raise ValueError(f"summary must be injected_summary(Q, pooling, injected) [Nq, T, W] with (Nq, T) = "
                         f"{tuple(Q.shape[:2])}, got shape {tuple(summary.shape)}")
    after = torch.cat([sum_tokens(p.merged(S, m, summary).permute(1, 2, 0), q_mask)  # [Nq, n]
                       for S, m in _doc_blocks(Q, D, d_mask, summary.shape[-1], chunk_size)], dim=1)
    return torch.where(rel.to(after.device), clean_scores.to(after.dtype), after)


# ----------------------------------------------------------------------------------------------------------
# Where the selections go


#: Scores within this many units in the last place of the best count as tied (``top_nongold_documents``).
TIE_ULPS = 64


def top_nongold_documents(scores: Tensor, gold: Tensor) -> Tensor:
    """Index of each query's highest-scoring non-gold document: scores [Nq, Nd] -> LongTensor [Nq].

    Ties go to the lowest index, and so do near-ties within ``TIE_ULPS`` units in the last place of the best score:
    documents that tie in exact arithmetic (e.g. every injected document under a pooling that sees only the
    spikes) differ in their last bits with the summation order of a BLAS call, which can change from run to run.
    Raises if a query has no non-gold document.

    >>> top_nongold_documents(torch.tensor([[1.0, 2.0, 2.0 + 1e-7, 0.5]]), torch.tensor([3])).tolist()
    [1]
    """
    rel = relevance_mask(scores, gold)
    if bool(rel.all(1).any()):
        raise ValueError("gold: every query needs at least one non-gold document")
    s = scores.masked_fill(rel, float("-inf")).to(torch.promote_types(scores.dtype, torch.float32))  # bf16 -> fp32
    best = s.amax(1, keepdim=True)
    tol = TIE_ULPS * torch.finfo(s.dtype).eps * best.abs().clamp_min(1.0)
    return (s >= best - tol).to(torch.uint8).argmax(1)  # first near-maximal document


def _top_doc_similarities(
    Q: Tensor, D: Tensor, injected: Tensor, d_mask: Tensor | None, top: Tensor
) -> tuple[Tensor, Tensor]:
    """S_ext [Nq, T, M + K] of each query against its own document ``top`` [Nq] with its injected patches
    appended, and the patch mask [Nq, 1, M + K]."""
    Nq, M = Q.shape[0], D.shape[1]
    S = torch.cat([torch.bmm(Q, D[top].transpose(1, 2)), torch.bmm(Q, injected.transpose(1, 2))], dim=-1)
    base = torch.ones(Nq, M, dtype=torch.bool, device=D.device) if d_mask is None else d_mask[top]
    mask = torch.cat([base, torch.ones(Nq, injected.shape[1], dtype=torch.bool, device=D.device)], dim=1)
    return widen_low_precision(S), mask.unsqueeze(1)


def _check_documents(documents: str) -> None:
    if documents not in ("top", "all"):
        raise ValueError(f"documents must be 'top' or 'all', got {documents!r}")


def _top_after(
    Q: Tensor, D: Tensor, p: Pooling, injected: Tensor, gold: Tensor, q_mask: Tensor | None,
    d_mask: Tensor | None, scores: Tensor | None, chunk_size: int | None,
) -> Tensor:
    if scores is None:
        scores = score_with_injection(Q, D, p, injected, gold, q_mask, d_mask, chunk_size)
    elif tuple(scores.shape) != (Q.shape[0], D.shape[0]):
        raise ValueError(f"scores must be the injected scores [Nq, Nd] = {(Q.shape[0], D.shape[0])}, "
                         f"got {tuple(scores.shape)}")
    return top_nongold_documents(scores, gold)


def _nongold_mean(per_doc: list[Tensor], rel: Tensor) -> Tensor:
    """Average per-(query, document) values, blocks [Nq, n] concatenated to [Nq, Nd], over each query's
    non-gold documents -> [Nq]."""
    x = torch.cat(per_doc, dim=1).masked_fill(rel, 0.0)
    n = (~rel).sum(1)
    if bool((n == 0).any()):
        raise ValueError("gold: every query needs at least one non-gold document")
    return x.sum(1) / n


def _ext_blocks(
    Q: Tensor, D: Tensor, injected: Tensor, d_mask: Tensor | None, chunk_size: int | None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Blocks of documents with every query's injected patches appended (gold documents included):
    (S_ext [n, Nq, T, M + K], mask_ext [n, 1, 1, M + K] or None)."""
    S_inj = _injected_similarities(Q, injected)
    for S, m in _doc_blocks(Q, D, d_mask, injected.shape[1], chunk_size):
        yield concat_parts(S, m, S_inj)


def _per_document(x: Tensor, q_mask: Tensor | None) -> Tensor:
    """Token mean of per-token values x [n, Nq, T] -> [Nq, n]."""
    return _token_mean(x.permute(1, 2, 0), q_mask)


def _token_means_after_injection(
    Q: Tensor, D: Tensor, p: Pooling, injected: Tensor, gold: Tensor, q_mask: Tensor | None, d_mask: Tensor | None,
    documents: str, scores: Tensor | None, chunk_size: int | None,
    measure: Callable[[Tensor, Tensor | None], tuple[Tensor, ...]],
) -> tuple[Tensor, ...]:
    """Per-query means [Nq] over valid tokens of the values ``measure(S_ext, mask)`` gives per token (each
    shaped like S_ext [..., T, M + K] without its last axis), in each query's top non-gold document after
    injection (``documents="top"``) or averaged over all its non-gold documents (``"all"``)."""
    _check_documents(documents)
    rel = _validate(Q, D, injected, gold, q_mask, d_mask)
    if documents == "top":
        top = _top_after(Q, D, p, injected, gold, q_mask, d_mask, scores, chunk_size)
        return tuple(_token_mean(x, q_mask) for x in measure(*_top_doc_similarities(Q, D, injected, d_mask, top)))
    per_block = [[_per_document(x, q_mask) for x in measure(S_ext, m)]  # [Nq, n] each
                 for S_ext, m in _ext_blocks(Q, D, injected, d_mask, chunk_size)]
    return tuple(_nongold_mean(list(parts), rel) for parts in zip(*per_block, strict=True))


def selection_mass(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    injected: Tensor,
    gold: Tensor,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    documents: Documents = "top",
    scores: Tensor | None = None,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Share of the pooling's selection mass on injected patches, per query [Nq] (or its mean).

    mass(a) = mean over valid tokens i of sum_{j injected} w_ij, with w the pooling's selection weights
    (``Pooling.selection``: one-hot arg-max for MaxSim, 1/k on the top-k set, the softmax weights). For MaxSim
    it equals ``hijack_rate``; for softmax it tracks the length share K / (M + K) of any injected patches, so it
    compares poolings' *weights*, not hijacking. ``documents="top"`` measures it in the non-gold document that
    ranks highest for query a after injection (pass ``scores`` from ``score_with_injection`` to skip
    recomputing them); ``"all"`` averages it over every non-gold document of query a.
    """
    p, M = parse_pooling(pooling), D.shape[1]
    (rate,) = _token_means_after_injection(Q, D, p, injected, gold, q_mask, d_mask, documents, scores, chunk_size,
                                           lambda S, mask: (p.selection(S, mask)[..., M:].sum(-1),))
    return apply_reduction(rate, reduction)


def hijack_rate(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    injected: Tensor,
    gold: Tensor,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    documents: Documents = "top",
    scores: Tensor | None = None,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """The hijack rate, one definition for every pooling: share of each query's valid tokens whose arg-max
    patch is an injected one, per query [Nq] (or its mean).

    PAPER.md section 4: "share of query tokens whose selection goes to an injected patch" (~0.70) and Figure 2's
    "token-wise argmax selections [that] move to injected patches" (~0.83). The pooling only picks the document
    (its top non-gold one after injection, ``documents="top"``; ``"all"`` averages over every non-gold
    document); each pooling's weights on injected patches are ``selection_mass``.
    """
    return argmax_shift(Q, D, pooling, injected, gold, q_mask, d_mask, documents, scores, chunk_size,
                        reduction).to_injected


class ArgmaxShift(NamedTuple):
    """Per-query shares of valid query tokens (or their means): arg-max moved to an injected patch, and moved
    at all. They agree by construction (original patches are unchanged; ties keep the original patch)."""

    to_injected: Tensor
    moved: Tensor


def _argmax_before_after(S_ext: Tensor, mask: Tensor | None, M: int) -> tuple[Tensor, Tensor]:
    """Arg-max patch per token over the original M patches and over all M + K (first index on ties)."""
    S_ext = S_ext if mask is None else S_ext.masked_fill(~mask, float("-inf"))
    return S_ext[..., :M].max(-1).indices, S_ext.max(-1).indices


def argmax_shift(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    injected: Tensor,
    gold: Tensor,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    documents: Documents = "top",
    scores: Tensor | None = None,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> ArgmaxShift:
    """Share of each query's tokens whose arg-max patch moves after injection (PAPER.md Figure 2).

    ``to_injected`` is ``hijack_rate``. Measured in the top non-gold document after injection under
    ``pooling`` (which only picks the document; the arg-max itself is pooling-free), or averaged over all
    non-gold documents with ``documents="all"``. Returns ``ArgmaxShift(to_injected, moved)``, each [Nq] or
    its mean.
    """
    M = D.shape[1]

    def moves(S: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        before, after = _argmax_before_after(S, mask, M)
        return after >= M, after != before

    to_inj, moved = _token_means_after_injection(Q, D, parse_pooling(pooling), injected, gold, q_mask, d_mask,
                                                 documents, scores, chunk_size, moves)
    return ArgmaxShift(apply_reduction(to_inj, reduction), apply_reduction(moved, reduction))


def selected_patches(
    q: Tensor,
    doc: Tensor,
    injected: Tensor,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token -> arg-max patch for one query q [T, d] and one document doc [M, d], before and after appending
    injected [K, d]: two LongTensors [T]. Indices >= M are injected patches (M + k); padded tokens get -1.
    For a Figure-2 style picture; pick the document with ``top_nongold_documents``.
    """
    check_tensor("q", q, ndim=2)
    check_tensor("doc", doc, ndim=2)
    T, M = q.shape[0], doc.shape[0]
    check_mask("q_mask", None if q_mask is None else q_mask[None], (1, T), "query")
    check_mask("d_mask", None if d_mask is None else d_mask[None], (1, M), "document")
    check_injected(injected.unsqueeze(0) if isinstance(injected, Tensor) else injected, 1, q.shape[1], doc)
    S, mask = _top_doc_similarities(q[None], doc[None], injected[None], None if d_mask is None else d_mask[None],
                                    torch.zeros(1, dtype=torch.long, device=doc.device))
    before, after = (x[0] for x in _argmax_before_after(S, mask, M))
    if q_mask is not None:
        before, after = before.masked_fill(~q_mask, -1), after.masked_fill(~q_mask, -1)
    return before, after
