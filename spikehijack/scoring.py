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
from .pooling import MaxSim, Mean, Pooling, Softmax, TopK, parse_pooling


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


#: Similarities per automatic chunk on CPU (8 MiB of float32): the block is pooled while it is still in cache.
AUTO_CHUNK_ELEMENTS = 1 << 21
#: On accelerators fewer, larger blocks (512 MiB of float32) keep kernel launches rare.
AUTO_CHUNK_ELEMENTS_ACCELERATOR = 1 << 27


def auto_chunk_size(Nd: int, M: int, rows: int, device: torch.device | str = "cpu") -> int:
    """Documents per chunk when ``chunk_size`` is None: about AUTO_CHUNK_ELEMENTS similarities, at least 1."""
    budget = AUTO_CHUNK_ELEMENTS if torch.device(device).type == "cpu" else AUTO_CHUNK_ELEMENTS_ACCELERATOR
    return max(1, min(Nd, budget // max(1, M * rows)))


def _similarities(Dc: Tensor, q: Tensor, out: Tensor | None = None) -> Tensor:
    """S [n, R, M] = q [R, d] against every patch of Dc [n, M, d]: one GEMM per document (``bmm``), written into
    ``out`` when given (low precision is then converted to out's float32)."""
    qn = q.expand(Dc.shape[0], *q.shape)
    if out is None:
        return _pool_low_precision(torch.bmm(qn, Dc.transpose(1, 2)))
    if out.dtype != Dc.dtype:
        return out.copy_(torch.bmm(qn, Dc.transpose(1, 2)))
    return torch.bmm(qn, Dc.transpose(1, 2), out=out)


def _selected_similarities(Dc: Tensor, q: Tensor, idx: Tensor) -> Tensor:
    """q_r . Dc[n, idx[n, r, k]] recomputed with gradient: Dc [n, M, d], q [R, d], idx [n, R, k] -> [n, R, k]."""
    n, M, d = Dc.shape
    rows = (idx + M * torch.arange(n, device=idx.device).view(n, 1, 1)).flatten()
    picked = Dc.reshape(n * M, d).index_select(0, rows).view(*idx.shape, d)  # backward: index_add, fast
    return _pool_low_precision(torch.einsum("nrkd,rd->nrk", picked, q))


def _pool_chunk(p: Pooling, Dc: Tensor, q: Tensor, m: Tensor | None, grad: bool, buf: Tensor | None) -> Tensor:
    """phi of MaxSim / Top-k / softmax / mean for documents Dc [n, M, d], query rows q [R, d] -> [n, R].

    S is [n, R, M]; m [n, 1, M] masks patches. Without a gradient S lives in the reused buffer ``buf`` and is
    pooled in place. With one, MaxSim and Top-k pick their patches without gradient and recompute only those
    similarities (autograd keeps [n, R, k], not [n, R, M]); softmax and mean differentiate through S.
    """
    fill = 0.0 if isinstance(p, Mean) else float("-inf")
    if buf is None:  # softmax or mean with gradient
        S = _similarities(Dc, q)
        S = S if m is None else S.masked_fill(~m, fill)
        if isinstance(p, Mean):
            return S.sum(-1) / (S.shape[-1] if m is None else m.sum(-1).to(S.dtype))
        top = S.amax(-1, keepdim=True).detach()  # softmax in one stable pass, as below
        X = (S - top) / p.tau
        E = X.exp()
        X = X if m is None else X.masked_fill(~m, 0.0)
        return top.squeeze(-1) + p.tau * (E * X).sum(-1) / E.sum(-1)
    n = Dc.shape[0]
    with torch.no_grad():
        S = _similarities(Dc, q, buf[0, :n])
        if m is not None:
            S.masked_fill_(~m, fill)
        if isinstance(p, Mean):
            return S.sum(-1) / (S.shape[-1] if m is None else m.sum(-1).to(S.dtype))
        if isinstance(p, Softmax):  # phi = tau * sum_j w_j (S_j / tau), w = softmax(S / tau): one fused kernel
            X = S.div_(p.tau)
            wX = torch.softmax(X, dim=-1, out=buf[1, :n]).mul_(X)
            if m is not None:  # masked patches: w = 0 and X = -inf, so make w X 0, not nan
                wX.masked_fill_(~m, 0.0)
            return p.tau * wX.sum(-1)
        if isinstance(p, MaxSim):
            if not grad:
                return S.amax(-1)
            vals, idx = None, S.argmax(-1, keepdim=True)  # the first arg-max, like MaxSim.reduce
        else:
            vals, idx = S.topk(min(p.k, S.shape[-1]), dim=-1, sorted=False)
    valid = None if m is None or vals is None else torch.isfinite(vals)  # fewer than k real patches
    if grad:
        vals = _selected_similarities(Dc, q, idx)
    if valid is None:
        return vals.mean(-1)
    return torch.where(valid, vals, 0.0).sum(-1) / valid.sum(-1).to(vals.dtype)


def score_matrix(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Every query against every document: Q [Nq, T, d], D [Nd, M, d] -> scores [Nq, Nd].

    Documents are scored ``chunk_size`` at a time, so the similarity block held in memory is
    [chunk_size, Nq * T, M] rather than [Nd, Nq * T, M]; None picks a cache-sized chunk (``auto_chunk_size``).
    MaxSim, Top-k, softmax and mean are pooled by ``_pool_chunk``; other poolings get the block as
    [Nq, T, n, M] and their own ``reduce`` / ``pool_tokens``. Differentiable (used for InfoNCE).
    """
    p = parse_pooling(pooling)
    check_queries_documents(Q, D, q_mask, d_mask)
    Nq, T, d = Q.shape
    Nd, M, _ = D.shape
    if chunk_size is None:
        step = auto_chunk_size(Nd, M, Nq * T, Q.device)
    else:
        step = check_positive_int("chunk_size", chunk_size)
    grad = torch.is_grad_enabled() and (Q.requires_grad or D.requires_grad)
    fast = type(p) in (MaxSim, TopK, Softmax, Mean)
    buf = None
    if fast and not (grad and type(p) in (Softmax, Mean)):  # the block (and softmax's exponentials), reused
        dtype = torch.promote_types(Q.dtype, torch.float32)  # low precision is pooled in float32
        n_buf = 2 if type(p) is Softmax else 1
        buf = torch.empty(n_buf, min(step, Nd), Nq * T, M, dtype=dtype, device=Q.device)
    q_flat = Q.reshape(Nq * T, d)
    out = []
    for start in range(0, Nd, step):
        Dc = D[start : start + step]
        n = Dc.shape[0]
        m = None if d_mask is None else d_mask[start : start + step]  # [n, M]
        if fast:
            phi = _pool_chunk(p, Dc, q_flat, None if m is None else m.unsqueeze(1), grad, buf)
            phi = phi.view(n, Nq, T).permute(1, 2, 0)  # [Nq, T, n]
        else:
            S = _pool_low_precision((q_flat @ Dc.reshape(n * M, d).T).view(Nq, T, n, M))
            if p.token_wise:
                phi = p.reduce(S, m)  # [Nq, T, n]; m [n, M] broadcasts over [Nq, T]
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

    ``mask`` (bool, True = real patch) must be 4-D and broadcastable to [Nq, 1, n, M]. Token-wise poolings
    reduce the last axis in place; token-coupled ones (``Pooling.token_wise`` False) see S as [Nq, n, T, M].
    Shared by the chunk loops that build their own blocks (e.g. ``spikehijack.inject``).
    """
    p = parse_pooling(pooling)
    if mask is not None and mask.ndim != 4:
        raise ValueError(f"mask must be 4-D, broadcastable to [Nq, 1, n, M], got shape {tuple(mask.shape)}")
    if p.token_wise:
        return p.reduce(S, mask)
    mm = None if mask is None else mask.transpose(1, 2)
    return p.pool_tokens(S.permute(0, 2, 1, 3), mm).permute(0, 2, 1)
