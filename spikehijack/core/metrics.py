"""Gradient-concentration instruments and retrieval metrics.

``gini`` is the standard Gini coefficient (PAPER.md section 2): 0 when all patches get equal gradient,
(M - 1) / M when one patch gets all of it, 0 for an all-zero vector. The paper's printed formula equals
this minus 1/M.

Retrieval metrics take a score matrix [Nq, Nd] and gold documents, either one index per query
(LongTensor [Nq]) or a relevance mask (bool [Nq, Nd]). Ties are broken against the relevant documents
(a pessimistic rank), so a constant scorer never looks good. ``reduction="none"`` returns per-query
values for confidence intervals and paired tests.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_mask, check_positive_int, check_tensor
from .pooling import Pooling, parse_pooling
from .scoring import check_queries_documents, score_matrix, score_pairs

Reduction = Literal["mean", "none"]


def gini(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    """Standard Gini coefficient of non-negative ``x`` along ``dim`` (masked entries excluded).

    G = 2 sum_i i x_(i) / (n sum_i x_i) - (n + 1) / n, x_(i) ascending, i = 1..n.

    >>> round(gini(torch.tensor([0., 0., 0., 1.])).item(), 4), gini(torch.ones(5)).item()
    (0.75, 0.0)
    """
    check_tensor("x", x, min_ndim=1)
    if bool((x < 0).any()):
        raise ValueError("gini: x must be non-negative (e.g. gradient norms)")
    x = x.movedim(dim, -1).double()
    if mask is not None:
        mask = check_mask("mask", mask.movedim(dim, -1), tuple(x.shape), "row")
        x = x.masked_fill(~mask, 0.0)
        n = mask.sum(-1).double()
    else:
        n = torch.full(x.shape[:-1], x.shape[-1], dtype=torch.float64, device=x.device)
    xs, _ = x.sort(-1)  # masked zeros come first; rank among valid entries = i - (#masked)
    ranks = torch.arange(1, x.shape[-1] + 1, dtype=torch.float64, device=x.device)
    ranks = ranks - (x.shape[-1] - n).unsqueeze(-1)
    total = xs.sum(-1)
    g = 2 * (ranks * xs).sum(-1) / (n * total.clamp_min(1e-300)) - (n + 1) / n
    return torch.where(total > 0, g, torch.zeros_like(g)).clamp_min(0.0).float()


def infonce_loss(Z: Tensor) -> Tensor:
    """In-batch InfoNCE: Z [B, B] with Z_ab = score(q_a, d_b); positives on the diagonal -> scalar."""
    if Z.ndim != 2 or Z.shape[0] != Z.shape[1]:
        raise ValueError(f"Z must be a square [B, B] score matrix, got {tuple(Z.shape)}")
    return F.cross_entropy(Z, torch.arange(Z.shape[0], device=Z.device))


def patch_gradient_norms(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    loss: Literal["pair", "infonce"] = "pair",
) -> Tensor:
    """g_j = || dL / d d_j || for each patch of each positive document: Q [B, T, d], D [B, M, d] -> [B, M].

    Row a is the positive pair (q_a, d_a) of an in-batch InfoNCE batch (PAPER.md section 2), and
    ``loss`` picks which loss the gradient comes from:
    - ``"pair"``: the pair's own term L_a = -log softmax_b(Z_ab)[a]; its gradient at d_a is
      (p_aa - 1) d score(q_a, d_a) / d d_a, so its Gini is that of the pooling alone.
    - ``"infonce"``: the whole batch loss mean_a L_a, where d_a also receives gradient as a negative
      of every other query.
    Masked patches get 0. Computed by autograd on detached copies; the callers' graphs are untouched.
    """
    p = parse_pooling(pooling)
    check_queries_documents(Q, D, q_mask, d_mask)
    if Q.shape[0] != D.shape[0]:
        raise ValueError(f"Q and D must be aligned pairs, got {Q.shape[0]} queries and {D.shape[0]} documents")
    Qd = Q.detach()
    with torch.enable_grad():
        Dd = D.detach().requires_grad_(True)
        Z = score_matrix(Qd, Dd, p, q_mask, d_mask)
        if loss == "infonce":
            objective = infonce_loss(Z)
        elif loss == "pair":
            coef = torch.softmax(Z.detach(), dim=1).diagonal() - 1  # dL_a / dZ_aa (Z is fp32 or wider)
            objective = (coef.to(Z.dtype) * score_pairs(Qd, Dd, p, q_mask, d_mask)).sum()
        else:
            raise ValueError(f"loss must be 'pair' or 'infonce', got {loss!r}")
        (grad,) = torch.autograd.grad(objective, Dd)
    g = grad.norm(dim=-1)
    return g if d_mask is None else g.masked_fill(~d_mask, 0.0)


def relevance_mask(scores: Tensor, gold: Tensor) -> Tensor:
    check_tensor("scores", scores, ndim=2)
    if not isinstance(gold, Tensor):
        raise TypeError(f"gold must be a LongTensor [Nq] or a bool tensor [Nq, Nd], got {type(gold).__name__}")
    Nq, Nd = scores.shape
    if gold.dtype == torch.bool:
        if tuple(gold.shape) != (Nq, Nd):
            raise ValueError(f"gold mask must have shape {(Nq, Nd)}, got {tuple(gold.shape)}")
        if bool((~gold.any(1)).any()):
            raise ValueError("gold: every query needs at least one relevant document")
        return gold.to(scores.device)
    if gold.dtype not in (torch.int64, torch.int32) or tuple(gold.shape) != (Nq,):
        raise ValueError(f"gold must be int indices of shape ({Nq},) or a bool mask {(Nq, Nd)}")
    if bool(((gold < 0) | (gold >= Nd)).any()):
        raise ValueError(f"gold indices must lie in [0, {Nd}), got min {int(gold.min())}, max {int(gold.max())}")
    rel = torch.zeros(Nq, Nd, dtype=torch.bool, device=scores.device)
    return rel.scatter_(1, gold.long().view(-1, 1).to(scores.device), True)


def ranked_relevance(scores: Tensor, gold: Tensor) -> Tensor:
    """Relevance of the documents in ranked order [Nq, Nd] (bool); ties ranked non-relevant first."""
    rel = relevance_mask(scores, gold)
    order = torch.sort(rel.to(torch.uint8), dim=1, stable=True).indices  # non-relevant first
    order = order.gather(1, torch.sort(-scores.gather(1, order), dim=1, stable=True).indices)
    return rel.gather(1, order)


def apply_reduction(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def gold_rank(scores: Tensor, gold: Tensor) -> Tensor:
    """1-based rank of the first relevant document per query [Nq] (pessimistic on ties)."""
    return _first_rank(ranked_relevance(scores, gold).float())


def _first_rank(rr: Tensor) -> Tensor:
    return rr.argmax(1) + 1


def _recall(rr: Tensor, k: int) -> Tensor:
    return rr[:, :k].sum(1) / rr.sum(1)


def _ndcg(rr: Tensor, k: int) -> Tensor:
    k_eff = min(k, rr.shape[1])
    disc = 1.0 / torch.log2(torch.arange(2, k_eff + 2, dtype=torch.float32, device=rr.device))
    dcg = (rr[:, :k_eff] * disc).sum(1)
    n_rel = rr.sum(1).clamp(max=k_eff).long()
    idcg = torch.cumsum(disc, 0)[n_rel - 1]
    return dcg / idcg


def recall_at_k(scores: Tensor, gold: Tensor, k: int = 1, reduction: Reduction = "mean") -> Tensor:
    """Share of each query's relevant documents found in the top k (hit rate for one gold)."""
    check_positive_int("k", k)
    return apply_reduction(_recall(ranked_relevance(scores, gold).float(), k), reduction)


def mrr(scores: Tensor, gold: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Mean reciprocal rank of the first relevant document."""
    return apply_reduction(1.0 / gold_rank(scores, gold).float(), reduction)


def ndcg_at_k(scores: Tensor, gold: Tensor, k: int = 5, reduction: Reduction = "mean") -> Tensor:
    """nDCG@k with binary relevance."""
    check_positive_int("k", k)
    return apply_reduction(_ndcg(ranked_relevance(scores, gold).float(), k), reduction)


def retrieval_metrics(scores: Tensor, gold: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k for each k, MRR and nDCG@5 as plain floats (for tidy result tables); one ranking for all."""
    rr = ranked_relevance(scores, gold).float()
    out = {f"recall@{k}": float(_recall(rr, check_positive_int("k", k)).mean()) for k in ks}
    out["mrr"] = float((1.0 / _first_rank(rr).float()).mean())
    out["ndcg@5"] = float(_ndcg(rr, 5).mean())
    return out
