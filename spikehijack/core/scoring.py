"""Batched late-interaction scoring: score(q, d) = sum_i phi(S_i1 .. S_iM), S_ij = q_i . d_j.

Shapes: queries Q [Nq, T, d] with q_mask [Nq, T]; documents D [Nd, M, d] with d_mask [Nd, M]
(True = real vector). Masked patches never win a pooling (they are filled with -inf, not multiplied by
zero); masked query tokens contribute nothing. Low-precision inputs are pooled and summed in float32.
Every pooling is scored the same way: similarity blocks [n, Nq, T, M] pooled by its ``Pooling.block``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .checks import check_mask, check_tensor
from .fused import fused_scores, resolve_backend
from .kernels import (
    block_size,
    document_blocks,
    pooled_dtype,
    scratch,
    similarity_block,
    sum_tokens,
    widen_low_precision,
)
from .pooling import Pooling, parse_pooling

__all__ = [
    "auto_chunk_size",
    "check_queries_documents",
    "pad",
    "pool_similarity_block",
    "score_matrix",
    "score_pairs",
    "similarities",
    "sum_tokens",
    "widen_low_precision",
]


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


def auto_chunk_size(Nd: int, M: int, rows: int, device: torch.device | str = "cpu") -> int:
    """Documents per chunk when ``chunk_size`` is None: ``kernels.block_size(Nd, M * rows, device)``."""
    return block_size(Nd, M * rows, device)


class _SelectedScores(torch.autograd.Function):
    """phi [n, R] with its Jacobian W = dphi/dS [n, R, M] precomputed (one-hot for MaxSim, 1/k on the top k,
    w (1 + (S - phi) / tau) for softmax): the backward is two GEMMs with dS = W g, autograd never keeps S.
    """

    @staticmethod
    def forward(ctx, Dc: Tensor, q: Tensor, W: Tensor, phi: Tensor) -> Tensor:
        ctx.save_for_backward(Dc, q, W)
        return phi.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        Dc, q, W = ctx.saved_tensors
        dS = (W * g.unsqueeze(-1)).to(Dc.dtype)  # [n, R, M]
        dD = torch.bmm(dS.transpose(1, 2), q.expand(Dc.shape[0], *q.shape)) if ctx.needs_input_grad[0] else None
        dq = torch.bmm(dS, Dc).sum(0) if ctx.needs_input_grad[1] else None
        return dD, dq, None, None


def _pool_documents(p: Pooling, Dc: Tensor, Q: Tensor, m: Tensor | None, grad: bool, buf: Tensor) -> Tensor:
    """phi [n, Nq, T] of documents Dc [n, M, d] (patch mask m [n, 1, 1, M]) for queries Q [Nq, T, d].

    S [n, Nq, T, M] lives in the reused scratch ``buf`` [2, >= n, Nq * T, M] and is pooled by ``p.block``
    without autograd. With a gradient, its W = dphi/dS becomes a two-GEMM backward (``_SelectedScores``):
    autograd keeps W, not the graph of every elementwise op on S. A declined block is recomputed and pooled by
    ``p.reference_block``; token-coupled poolings are differentiated by autograd through ``pool_tokens``.
    """
    n, (Nq, T, d) = Dc.shape[0], Q.shape
    q = Q.reshape(Nq * T, d)
    if grad and not p.token_wise:
        return p.pool_tokens(similarity_block(Dc, q).view(n, Nq, T, -1), m)

    def block() -> Tensor:  # S [n, Nq, T, M], written into buf[0]
        return similarity_block(Dc, q, buf[0, :n], p.patch_major(grad)).view(n, Nq, T, -1)

    with torch.no_grad():
        pooled = p.block(block(), m, grad, buf[1, :n].view(n, Nq, T, -1))
        if pooled is None:  # declined: the definition on a freshly computed block
            pooled = p.reference_block(block(), m, grad)
    phi, W = pooled
    if not grad:
        return phi
    return _SelectedScores.apply(Dc, q, W.reshape(n, Nq * T, -1), phi.reshape(n, Nq * T)).view(n, Nq, T)


def score_matrix(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Every query against every document: Q [Nq, T, d], D [Nd, M, d] -> scores [Nq, Nd].

    Documents are scored ``chunk_size`` at a time, so the similarity block held in memory is
    [chunk_size, Nq * T, M] rather than [Nd, Nq * T, M]; None picks a cache-sized chunk
    (``kernels.block_size``). Each block is pooled by the pooling's own kernel (``Pooling.block``).
    Differentiable (used for InfoNCE). ``backend`` ("auto", "torch", "triton"; ``fused.resolve_backend``): "auto"
    scores MaxSim, Top-k and softmax on CUDA with the fused kernels of ``core.fused`` (one pass, no block in
    memory, ``chunk_size`` unused) when Triton is installed, and everything else by the blocks above.
    """
    p = parse_pooling(pooling)
    check_queries_documents(Q, D, q_mask, d_mask)
    if resolve_backend(backend, p, Q, D) == "triton":
        masks = [None if m is None else m.unsqueeze(0) for m in (q_mask, d_mask)]
        return fused_scores(Q.unsqueeze(0), D.unsqueeze(0), p, *masks)[0]
    Nq, T, _ = Q.shape
    Nd, M, _ = D.shape
    grad = torch.is_grad_enabled() and (Q.requires_grad or D.requires_grad)
    step = block_size(Nd, Nq * T * M, Q.device, chunk_size, kept=2 * Nq * T * M)
    buf = scratch((2, step, Nq * T, M), pooled_dtype(Q.dtype), Q.device)  # the block and its kernel's scratch
    out = []
    for docs in document_blocks(Nd, Nq * T * M, Q.device, step):
        m = None if d_mask is None else d_mask[docs, None, None, :]  # [n, 1, 1, M]
        phi = _pool_documents(p, D[docs], Q, m, grad, buf)  # [n, Nq, T]
        out.append(sum_tokens(phi.permute(1, 2, 0), q_mask))
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
    S = widen_low_precision(torch.bmm(Q, D.transpose(1, 2)))  # [N, T, M]
    m = None if d_mask is None else d_mask.unsqueeze(1)
    return sum_tokens(p.pool_tokens(S, m), q_mask)


def similarities(Q: Tensor, D: Tensor) -> Tensor:
    """Token-to-patch similarities of aligned pairs: Q [N, T, d], D [N, M, d] -> S [N, T, M]."""
    check_queries_documents(Q, D, None, None)
    if Q.shape[0] != D.shape[0]:
        raise ValueError(f"Q and D must be aligned pairs, got {Q.shape[0]} queries and {D.shape[0]} documents")
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


def pool_similarity_block(pooling: str | Pooling, S: Tensor, mask: Tensor | None = None) -> Tensor:
    """phi of every (query, token, document) in a similarity block: S [Nq, T, n, M] -> [Nq, T, n].

    ``mask`` (bool, True = real patch) must be 4-D and broadcastable to [Nq, 1, n, M]. S is left unchanged: the
    pooling's definition (``pool_tokens``) sees it as [n, Nq, T, M], so token-coupled poolings work too.
    For chunk loops that build their own blocks (e.g. ragged corpora).
    """
    p = parse_pooling(pooling)
    if mask is not None and mask.ndim != 4:
        raise ValueError(f"mask must be 4-D, broadcastable to [Nq, 1, n, M], got shape {tuple(mask.shape)}")
    mm = None if mask is None else mask.permute(2, 0, 1, 3)
    return p.pool_tokens(S.permute(2, 0, 1, 3), mm).permute(1, 2, 0)
