"""Batched late-interaction scoring: score(q, d) = sum_i phi(S_i1 .. S_iM), S_ij = q_i . d_j.

Shapes: queries Q [Nq, T, d] with q_mask [Nq, T]; documents D [Nd, M, d] with d_mask [Nd, M]
(True = real vector). Masked patches never win a pooling (they are filled with -inf, not multiplied by
zero); masked query tokens contribute nothing. Low-precision inputs are pooled and summed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_mask, check_positive_int, check_tensor
from .pooling import Pooling, parse_pooling


def check_queries_documents(
    Q: Tensor, D: Tensor, q_mask: Tensor | None, d_mask: Tensor | None
) -> None:
    """Validate Q [Nq, T, d], D [Nd, M, d] and their masks; raise ValueError/TypeError naming the argument."""
    check_tensor("Q", Q, ndim=3)
    check_tensor("D", D, ndim=3)
    if Q.shape[-1] != D.shape[-1]:
        raise ValueError(f"Q and D must share the embedding dim d: Q {tuple(Q.shape)}, D {tuple(D.shape)}")
    if Q.device != D.device:
        raise ValueError(f"Q and D must be on the same device, got {Q.device} and {D.device}")
    check_mask("q_mask", q_mask, tuple(Q.shape[:2]), "query")
    check_mask("d_mask", d_mask, tuple(D.shape[:2]), "document")


def _sum_tokens(phi: Tensor, q_mask: Tensor | None) -> Tensor:
    """phi [Nq, T, ...] -> [Nq, ...], dropping padded query tokens, accumulated in float32 or wider."""
    if phi.dtype in (torch.float16, torch.bfloat16):
        phi = phi.float()
    if q_mask is not None:
        shape = q_mask.shape + (1,) * (phi.ndim - 2)
        phi = torch.where(q_mask.view(shape), phi, torch.zeros((), dtype=phi.dtype, device=phi.device))
    return phi.sum(1)


def _pool_low_precision(S: Tensor) -> Tensor:
    return S.float() if S.dtype in (torch.float16, torch.bfloat16) else S


def score_matrix(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Every query against every document: Q [Nq, T, d], D [Nd, M, d] -> scores [Nq, Nd].

    With ``chunk_size`` documents are scored ``chunk_size`` at a time, so the similarity block held in
    memory is [Nq, T, chunk_size, M] rather than [Nq, T, Nd, M]. Differentiable (used for InfoNCE).
    """
    p = parse_pooling(pooling)
    check_queries_documents(Q, D, q_mask, d_mask)
    Nq, T, d = Q.shape
    Nd, M, _ = D.shape
    step = Nd if chunk_size is None else check_positive_int("chunk_size", chunk_size)
    q_flat = Q.reshape(Nq * T, d)
    out = []
    for start in range(0, Nd, step):
        Dc = D[start : start + step]
        n = Dc.shape[0]
        S = _pool_low_precision((q_flat @ Dc.reshape(n * M, d).T).view(Nq, T, n, M))
        m = None if d_mask is None else d_mask[start : start + step]  # [n, M] broadcasts over [Nq, T]
        if p.token_wise:
            phi = p.reduce(S, m)  # [Nq, T, n]
        else:  # poolings that couple tokens need S as [Nq, n, T, M]
            mm = None if m is None else m[None, :, None, :]
            phi = p.pool_tokens(S.permute(0, 2, 1, 3), mm).permute(0, 2, 1)
        out.append(_sum_tokens(phi, q_mask))
    return torch.cat(out, dim=1)


def score_pairs(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
) -> Tensor:
    """Aligned pairs: query n against document n. Q [N, T, d], D [N, M, d] -> scores [N]."""
    p = parse_pooling(pooling)
    check_queries_documents(Q, D, q_mask, d_mask)
    if Q.shape[0] != D.shape[0]:
        raise ValueError(f"score_pairs needs as many queries as documents, got Q {Q.shape[0]}, D {D.shape[0]}")
    S = _pool_low_precision(torch.bmm(Q, D.transpose(1, 2)))  # [N, T, M]
    m = None if d_mask is None else d_mask.unsqueeze(1)
    return _sum_tokens(p.pool_tokens(S, m), q_mask)


def similarities(Q: Tensor, D: Tensor) -> Tensor:
    """Token-to-patch similarities of aligned pairs: Q [N, T, d], D [N, M, d] -> S [N, T, M]."""
    check_tensor("Q", Q, ndim=3)
    check_tensor("D", D, ndim=3)
    return torch.bmm(Q, D.transpose(1, 2))


def pad(vectors: Sequence[Tensor], length: int | None = None) -> tuple[Tensor, Tensor]:
    """Stack variable-length [n_i, d] tensors into ([N, L, d] zero-padded, mask [N, L] bool).

    ``length`` defaults to the longest n_i; an empty item raises (a document needs a vector).
    """
    if len(vectors) == 0:
        raise ValueError("vectors is empty: need at least one [n, d] tensor")
    d = vectors[0].shape[-1]
    for i, v in enumerate(vectors):
        if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] != d:
            raise ValueError(f"vectors[{i}] must have shape [n >= 1, d={d}], got {tuple(v.shape)}")
    L = max(v.shape[0] for v in vectors) if length is None else length
    if L < max(v.shape[0] for v in vectors):
        raise ValueError(f"length={L} is shorter than the longest item ({max(v.shape[0] for v in vectors)})")
    out = vectors[0].new_zeros(len(vectors), L, d)
    mask = torch.zeros(len(vectors), L, dtype=torch.bool, device=vectors[0].device)
    for i, v in enumerate(vectors):
        out[i, : v.shape[0]] = v
        mask[i, : v.shape[0]] = True
    return out, mask
