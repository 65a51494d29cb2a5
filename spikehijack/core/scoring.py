"""Batched late-interaction scoring: score(q, d) = sum_i phi(S_i1 .. S_iM), S_ij = q_i . d_j.

Shapes: queries Q [Nq, T, d] with q_mask [Nq, T]; documents D [Nd, M, d] with d_mask [Nd, M]
(True = real vector). Masked patches never win a pooling (they are filled with -inf, not multiplied by
zero); masked query tokens contribute nothing. Low-precision inputs are pooled and summed in float32.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from .checks import check_mask, check_positive_int, check_tensor
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


def sum_tokens(phi: Tensor, q_mask: Tensor | None) -> Tensor:
    """phi [Nq, T, ...] -> [Nq, ...], dropping padded query tokens, accumulated in float32 or wider."""
    if phi.dtype in (torch.float16, torch.bfloat16):
        phi = phi.float()
    if q_mask is not None:
        shape = q_mask.shape + (1,) * (phi.ndim - 2)
        phi = torch.where(q_mask.view(shape), phi, torch.zeros((), dtype=phi.dtype, device=phi.device))
    return phi.sum(1)


def widen_low_precision(S: Tensor) -> Tensor:
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
        return widen_low_precision(torch.bmm(qn, Dc.transpose(1, 2)))
    if out.dtype != Dc.dtype:
        return out.copy_(torch.bmm(qn, Dc.transpose(1, 2)))
    return torch.bmm(qn, Dc.transpose(1, 2), out=out)


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


_REMOVED = -3.0e38  # added to a found maximum so that later passes skip it


_SCRATCH = threading.local()
#: Largest CPU scratch kept between calls (float32 entries): fresh pages cost about as much as the GEMM.
SCRATCH_KEEP_ELEMENTS = 1 << 24


def _scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor for the similarity block, reused across calls on CPU (per thread).

    Many small ``score_matrix`` calls (a training step scores each run) otherwise touch fresh memory
    every time, and first-touch page faults cost as much as the similarities themselves.
    """
    numel = math.prod(shape)
    if device.type != "cpu" or numel > SCRATCH_KEEP_ELEMENTS:
        return torch.empty(shape, dtype=dtype, device=device)
    kept = getattr(_SCRATCH, "buf", None)
    if kept is None or kept.dtype != dtype or kept.numel() < numel:
        kept = _SCRATCH.buf = torch.empty(numel, dtype=dtype)
    return kept[:numel].view(shape)


def _top_k(S: Tensor, k: int, hit: Tensor, weights: Tensor | None = None) -> Tensor | None:
    """Mean of the k largest entries of S [..., M] -> [...], by passes of ``amax`` that each remove their
    maximum in place (S is overwritten; ``hit`` is scratch shaped like S). Tied maxima count once each.
    ``weights`` (zeros shaped like S) receives the selection, 1/k on each chosen patch.

    Only float arithmetic touches the whole block (comparisons, ``torch.where`` and ``torch.topk`` are several
    times slower on CPU). Masked patches are -inf. Returns None when a row has fewer than k real patches, or
    when ``weights`` is asked for and a tie makes the choice ambiguous: callers then use the reference selection.
    """
    left = torch.full(S.shape[:-1] + (1,), float(k), dtype=S.dtype, device=S.device)
    total = torch.zeros_like(left)
    for _ in range(k):
        top = S.amax(-1, keepdim=True)
        torch.sub(S, top, out=hit).sign_().add_(1.0)  # 1 at each maximum (S <= top), 0 elsewhere
        count = hit.sum(-1, keepdim=True)
        if weights is not None and not bool((count == 1).all()):
            return None
        take = torch.minimum(count, left)  # nan where the row ran out of real patches (top = -inf)
        total.addcmul_(top, take)
        left.sub_(take)
        if weights is not None:
            weights.add_(hit, alpha=1.0 / k)
        if not bool((left > 0).any()):  # every pass takes >= 1 per real row: at most k passes
            break
        S.add_(hit, alpha=_REMOVED)
    out = total.squeeze(-1) / k
    return out if bool(torch.isfinite(out).all() and (out > _REMOVED / (2 * k)).all()) else None


def _top_k_sorted(S: Tensor, k: int, weights: Tensor | None = None) -> Tensor | None:
    """``_top_k`` by one ``torch.topk``: the same contract and the same bits (the k values are added largest
    first, as the passes of ``_top_k`` add them). S is left unchanged."""
    vals, idx = S.topk(min(k + 1, S.shape[-1]) if weights is not None else k, dim=-1)
    if weights is not None and not bool((vals[..., :-1] > vals[..., 1:]).all()):
        return None  # a tie among the k largest or at the k-th: the choice is ambiguous
    total = vals[..., 0].clone()
    for j in range(1, k):
        total.add_(vals[..., j])
    if not bool(torch.isfinite(total).all()):
        return None  # a row with fewer than k real patches
    if weights is not None:
        weights.scatter_(-1, idx[..., :k], 1.0 / k)
    return total / k


#: (device type, dtype, M) -> whether ``torch.topk`` beats the ``amax`` passes there, measured once per process:
#: which is faster depends on the CPU's vector width and the dtype (both give the same numbers).
_TOPK_FASTER: dict[tuple[str, torch.dtype, int], bool] = {}


def _topk_is_faster(S: Tensor, k: int) -> bool:
    key = (S.device.type, S.dtype, S.shape[-1])
    if key not in _TOPK_FASTER:
        M = S.shape[-1]
        probe = torch.randn(max(1, (1 << 20) // M), M, dtype=S.dtype, device=S.device)
        hit, W = torch.empty_like(probe), torch.zeros_like(probe)

        def best(fn) -> float:
            times = []
            for _ in range(3):
                if S.device.type == "cuda":
                    torch.cuda.synchronize(S.device)
                start = time.perf_counter()
                fn()
                if S.device.type == "cuda":
                    torch.cuda.synchronize(S.device)
                times.append(time.perf_counter() - start)
            return min(times)

        kk = min(k, M)
        _TOPK_FASTER[key] = best(lambda: _top_k_sorted(probe, kk, W)) < best(lambda: _top_k(probe.clone(), kk, hit, W))
    return _TOPK_FASTER[key]


def _pool_chunk(p: Pooling, Dc: Tensor, q: Tensor, m: Tensor | None, grad: bool, buf: Tensor) -> Tensor:
    """phi of MaxSim / Top-k / softmax / mean for documents Dc [n, M, d], query rows q [R, d] -> [n, R].

    S [n, R, M] lives in the reused scratch ``buf`` [2, >= n, R, M] and is pooled in place, without autograd;
    m [n, 1, M] masks patches. With a gradient the closed-form W = dphi/dS [n, R, M] is computed alongside
    (``Pooling.jacobian``) and ``_SelectedScores`` turns it into a two-GEMM backward: autograd keeps W, not
    the graph of every elementwise op on S.
    """
    n = Dc.shape[0]
    W = None
    with torch.no_grad():
        S = _similarities(Dc, q, buf[0, :n])
        if m is not None:
            S.masked_fill_(~m, 0.0 if isinstance(p, Mean) else float("-inf"))
        if isinstance(p, Mean):
            count = S.shape[-1] if m is None else m.sum(-1, keepdim=True).to(S.dtype)
            phi = S.sum(-1) / (count if m is None else count.squeeze(-1))
            if grad:
                W = (torch.ones_like(S) if m is None else m.expand_as(S).to(S.dtype)) / count
        elif isinstance(p, Softmax):  # phi = tau * sum_j w_j X_j with X = S / tau, w = softmax(X)
            X = S.div_(p.tau)
            w = torch.softmax(X, dim=-1) if grad else torch.softmax(X, dim=-1, out=buf[1, :n])
            wX = torch.mul(w, X, out=buf[1, :n]) if grad else w.mul_(X)
            if m is not None:  # masked patches: w = 0 and X = -inf, so make w X 0, not nan
                wX.masked_fill_(~m, 0.0)
            phi = p.tau * wX.sum(-1)
            if grad:  # dphi/dS_j = w_j (1 + X_j - phi / tau)
                W = w.mul_(X.sub_((phi / p.tau).unsqueeze(-1)).add_(1.0))
                if m is not None:
                    W.masked_fill_(~m, 0.0)
        elif isinstance(p, MaxSim) and not grad:
            phi = S.amax(-1)
        else:
            k = 1 if isinstance(p, MaxSim) else min(p.k, S.shape[-1])
            W = torch.zeros_like(S) if grad else None
            if _topk_is_faster(S, k):
                phi = _top_k_sorted(S, k, W)
            else:
                phi = _top_k(S, k, buf[1, :n], W)
            if phi is None:  # fewer than k real patches, or a tie with a gradient: the reference selection
                S = _similarities(Dc, q, buf[0, :n])
                if m is not None:
                    S.masked_fill_(~m, float("-inf"))
                phi = p.reduce(S)
                W = p.jacobian(S) if grad else None
    return _SelectedScores.apply(Dc, q, W, phi) if grad else phi


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
    if fast:  # the block and the scratch of softmax / _top_k, reused
        dtype = torch.promote_types(Q.dtype, torch.float32)  # low precision is pooled in float32
        buf = _scratch((2, min(step, Nd), Nq * T, M), dtype, Q.device)
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
            S = widen_low_precision((q_flat @ Dc.reshape(n * M, d).T).view(Nq, T, n, M))
            if p.token_wise:
                phi = p.reduce(S, m)  # [Nq, T, n]; m [n, M] broadcasts over [Nq, T]
            else:  # poolings that couple tokens need S as [Nq, n, T, M]
                mm = None if m is None else m[None, :, None, :]
                phi = p.pool_tokens(S.permute(0, 2, 1, 3), mm).permute(0, 2, 1)
        out.append(sum_tokens(phi, q_mask))
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

    ``mask`` (bool, True = real patch) must be 4-D and broadcastable to [Nq, 1, n, M]. Token-wise poolings
    reduce the last axis in place; token-coupled ones (``Pooling.token_wise`` False) see S as [Nq, n, T, M].
    Shared by the chunk loops that build their own blocks (e.g. ``spikehijack.core.inject``).
    """
    p = parse_pooling(pooling)
    if mask is not None and mask.ndim != 4:
        raise ValueError(f"mask must be 4-D, broadcastable to [Nq, 1, n, M], got shape {tuple(mask.shape)}")
    if p.token_wise:
        return p.reduce(S, mask)
    mm = None if mask is None else mask.transpose(1, 2)
    return p.pool_tokens(S.permute(0, 2, 1, 3), mm).permute(0, 2, 1)
