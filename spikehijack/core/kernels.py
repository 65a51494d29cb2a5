"""Pieces shared by the block kernels of the poolings and by the chunk loops of scoring and injection.

A *similarity block* holds every query token against every patch of a few documents: S [n, Nq, T, M], a free
view of the ``bmm`` output [n, Nq * T, M] (``similarity_block``), with the patch mask [n, 1, 1, M] (True = real
patch). Poolings pool such blocks in place (``Pooling.block``); this module holds what their kernels share (the
CPU scratch, the Top-k passes and sweep) and the one rule that sizes blocks on every device (``block_size``,
``document_blocks``). A pooling that sweeps patches (``Pooling.patch_major``: Top-k) gets the same S
as a view of patch-major storage [n, M, Nq * T], where each patch's row of similarities is contiguous.

Block sizes follow the cache the machine reports, not a constant measured on one CPU: on CPU a block holds as
many float32 entries as the L2 caches of the threads that pool it (L2 per core x ``torch.get_num_threads()``),
so it is still in cache when the pooling reads it back; accelerators take large blocks (kernel launches are
the cost there).

>>> block_size(Nd=10, per_document=4, device="cuda")  # the accelerator budget holds the whole corpus
10
>>> [(s.start, s.stop) for s in document_blocks(5, per_document=1, chunk_size=2)]
[(0, 2), (2, 4), (4, 5)]
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from .checks import check_positive_int

#: CPU budget (float32 entries, 8 MiB) when the machine reports no L2 size.
FALLBACK_CPU_BLOCK_ELEMENTS = 1 << 21
#: Accelerator budget (512 MiB of float32): fewer, larger blocks keep kernel launches rare.
ACCELERATOR_BLOCK_ELEMENTS = 1 << 27
#: Set to an int to fix the CPU budget (tests, benchmarks); None derives it from the L2 size.
CPU_BLOCK_ELEMENTS: int | None = None
#: Largest CPU scratch kept between calls (float32 entries): fresh pages cost about as much as the GEMM.
SCRATCH_KEEP_ELEMENTS = 1 << 24
#: Added to a found maximum so that later passes of ``top_k_mean`` skip it.
REMOVED = -3.0e38

#: What a block kernel returns: phi [n, Nq, T] and, when a gradient is asked for, W = dphi/dS like S.
Pooled = tuple[Tensor, Tensor | None]


@lru_cache(maxsize=1)
def l2_cache_bytes() -> int | None:
    """The L2 (per core) size the machine reports: ``sysconf``, else Linux's sysfs; None when it reports none."""
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (ValueError, OSError, AttributeError):
        size = 0
    if size > 0:
        return int(size)
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2" and (index / "type").read_text().strip() != "Instruction":
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                return int(text.rstrip("KMG")) * scale
        except (OSError, ValueError):
            continue
    return None


def block_budget(device: torch.device | str = "cpu") -> int:
    """Similarities per block: on CPU L2 bytes per core x threads / 4 (``FALLBACK_CPU_BLOCK_ELEMENTS`` when the
    L2 size is unknown, ``CPU_BLOCK_ELEMENTS`` when set), on accelerators ``ACCELERATOR_BLOCK_ELEMENTS``."""
    if torch.device(device).type != "cpu":
        return ACCELERATOR_BLOCK_ELEMENTS
    if CPU_BLOCK_ELEMENTS is not None:
        return CPU_BLOCK_ELEMENTS
    l2 = l2_cache_bytes()
    return FALLBACK_CPU_BLOCK_ELEMENTS if l2 is None else max(1 << 16, l2 * torch.get_num_threads() // 4)


def block_size(Nd: int, per_document: int, device: torch.device | str = "cpu", chunk_size: int | None = None) -> int:
    """Documents per block: ``chunk_size`` when given (validated), else as many as keep the block within
    ``block_budget(device)`` entries when each document adds ``per_document`` (e.g. Nq * T * M); 1 <= . <= Nd."""
    if chunk_size is not None:
        return check_positive_int("chunk_size", chunk_size)
    return max(1, min(Nd, block_budget(device) // max(1, per_document)))


def document_blocks(
    Nd: int, per_document: int, device: torch.device | str = "cpu", chunk_size: int | None = None
) -> Iterator[slice]:
    """Slices of the document axis [0, Nd), ``block_size(Nd, per_document, device, chunk_size)`` documents each."""
    step = block_size(Nd, per_document, device, chunk_size)
    for start in range(0, Nd, step):
        yield slice(start, min(start + step, Nd))


def ragged_blocks(lengths: Tensor, per_patch: int, device: torch.device | str = "cpu",
                  chunk_size: int | None = None) -> Iterator[Tensor]:
    """Ragged documents in blocks by the same rule: indices (LongTensor) of documents sorted by length (stable),
    each block as many as keep n * (its longest length) * ``per_patch`` within ``block_budget(device)`` (at
    least one), or ``chunk_size`` documents when given.

    >>> [b.tolist() for b in ragged_blocks(torch.tensor([3, 1, 2, 1]), per_patch=1, chunk_size=3)]
    [[1, 3, 2], [0]]
    """
    order = torch.argsort(lengths, stable=True)
    if chunk_size is not None:
        yield from torch.split(order, check_positive_int("chunk_size", chunk_size))
        return
    budget, sorted_lengths = block_budget(device), lengths[order].tolist()
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * max(1, sorted_lengths[stop]) * per_patch <= budget:
            stop += 1
        yield order[start:stop]
        start = stop


def pooled_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype similarities are pooled in: float32 or wider."""
    return torch.promote_types(dtype, torch.float32)


def widen_low_precision(S: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; other dtypes unchanged."""
    return S.float() if S.dtype in (torch.float16, torch.bfloat16) else S


def fill_masked(S: Tensor, mask: Tensor | None, value: float) -> Tensor:
    """S [..., M] with ``value`` on the masked patches (mask broadcastable to S, True = real): a new tensor, or S
    itself when ``mask`` is None."""
    return S if mask is None else S.masked_fill(~mask, value)


def fill_masked_(S: Tensor, mask: Tensor | None, value: float) -> Tensor:
    """``fill_masked`` in place: S is overwritten and returned."""
    return S if mask is None else S.masked_fill_(~mask, value)


def valid_count(S: Tensor, mask: Tensor | None) -> Tensor:
    """Number of valid patches, shaped like S without its last axis (float)."""
    if mask is None:
        return torch.full(S.shape[:-1], S.shape[-1], dtype=S.dtype, device=S.device)
    return mask.expand_as(S).sum(-1).to(S.dtype)


def sum_tokens(phi: Tensor, q_mask: Tensor | None) -> Tensor:
    """phi [Nq, T, ...] -> [Nq, ...], dropping padded query tokens, accumulated in float32 or wider."""
    phi = widen_low_precision(phi)
    if q_mask is not None:
        shape = q_mask.shape + (1,) * (phi.ndim - 2)
        phi = torch.where(q_mask.view(shape), phi, torch.zeros((), dtype=phi.dtype, device=phi.device))
    return phi.sum(1)


def similarity_block(D: Tensor, q: Tensor, out: Tensor | None = None, patch_major: bool = False) -> Tensor:
    """S [n, R, M] = q [R, d] against every patch of D [n, M, d]: one GEMM per document (``bmm``), written into
    ``out`` when given (low precision is then converted to out's float32), else widened to float32 or wider.
    Differentiable when ``out`` is None.

    ``patch_major``: the GEMM writes [n, M, R] (patch by patch, ``out`` then holds n * M * R entries in that
    order) and S is its transposed view, for kernels that sweep the patches (``top_k_block``)."""
    n = D.shape[0]
    if patch_major:
        a, b = D, q.T.expand(n, *q.T.shape)  # [n, M, d] @ [n, d, R]
        out = None if out is None else out.view(n, D.shape[1], q.shape[0])
    else:
        a, b = q.expand(n, *q.shape), D.transpose(1, 2)
    if out is None:
        S = widen_low_precision(torch.bmm(a, b))
    elif out.dtype != D.dtype:
        S = out.copy_(torch.bmm(a, b))
    else:
        S = torch.bmm(a, b, out=out)
    return S.transpose(1, 2) if patch_major else S


_SCRATCH = threading.local()


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor for a similarity block, reused across calls on CPU (per thread).

    Many small ``score_matrix`` calls (a training step scores each run) otherwise touch fresh memory every
    time, and first-touch page faults cost as much as the similarities themselves. The next call overwrites it.
    """
    numel = math.prod(shape)
    if device.type != "cpu" or numel > SCRATCH_KEEP_ELEMENTS:
        return torch.empty(shape, dtype=dtype, device=device)
    kept = getattr(_SCRATCH, "buf", None)
    if kept is None or kept.dtype != dtype or kept.numel() < numel:
        kept = _SCRATCH.buf = torch.empty(numel, dtype=dtype)
    return kept[:numel].view(shape)


def top_k_mean(S: Tensor, k: int, hit: Tensor, weights: Tensor | None = None) -> Tensor | None:
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
        S.add_(hit, alpha=REMOVED)
    out = total.squeeze(-1) / k
    return out if bool(torch.isfinite(out).all() and (out > REMOVED / (2 * k)).all()) else None


def top_k_mean_sorted(S: Tensor, k: int, weights: Tensor | None = None) -> Tensor | None:
    """``top_k_mean`` by one ``torch.topk``: the same contract and the same bits (the k values are added largest
    first, as the passes of ``top_k_mean`` add them). S is left unchanged."""
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


def _best_seconds(fn: Callable[[], object], device: torch.device) -> float:
    times = []
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def topk_is_faster(S: Tensor, k: int) -> bool:
    """Whether ``top_k_mean_sorted`` beats ``top_k_mean`` for blocks like S [..., M] (measured once per device
    type, dtype and M on a probe of about 2**20 entries)."""
    key = (S.device.type, S.dtype, S.shape[-1])
    if key not in _TOPK_FASTER:
        M = S.shape[-1]
        probe = torch.randn(max(1, (1 << 20) // M), M, dtype=S.dtype, device=S.device)
        hit, W, kk = torch.empty_like(probe), torch.zeros_like(probe), min(k, M)
        sorted_s = _best_seconds(lambda: top_k_mean_sorted(probe, kk, W), S.device)
        _TOPK_FASTER[key] = sorted_s < _best_seconds(lambda: top_k_mean(probe.clone(), kk, hit, W), S.device)
    return _TOPK_FASTER[key]


def patch_major_view(S: Tensor) -> Tensor | None:
    """The [n, M, R] storage under a block S [n, Nq, T, M] written by ``similarity_block(patch_major=True)``
    (R = Nq * T), or None when S is stored token-major."""
    if S.ndim != 4 or S.stride(-1) == 1:  # token-major (or M = 1 / R = 1, where the layouts coincide)
        return None
    P = S.permute(0, 3, 1, 2)
    return P.view(*P.shape[:2], -1) if P.is_contiguous() else None


def top_k_sweep(St: Tensor, k: int, scratch: Tensor) -> Tensor:
    """The k largest of every column of St [n, M, R] (k <= M), sorted: [k, n, R] (a view of ``scratch``, which
    needs (k + 1) * n * R entries). One sweep over the patches inserts each row St[:, m] into k running lists
    (a sorting network of 2k - 1 elementwise min / max per patch): a patch-major block is read once, with no
    comparison, ``where`` or sort over the whole block. Equal values are kept as often as they occur.

    >>> St = torch.tensor([[[0.25, 5.0], [0.75, 1.0], [0.5, 5.0]]])  # n = 1, M = 3 patches, R = 2 tokens
    >>> top_k_sweep(St, 2, torch.empty(3 * 2)).tolist()
    [[[0.75, 5.0]], [[0.5, 5.0]]]
    """
    n, M, R = St.shape
    lists = scratch.view(-1)[: (k + 1) * n * R].view(k + 1, n, R)
    top, tmp = lists[:k], lists[k]
    top[0].copy_(St[:, 0])
    top[1:].fill_(float("-inf"))
    for m in range(1, M):
        x = St[:, m]
        for j in range(k - 1, 0, -1):  # top[j] = max(top[j], min(top[j - 1], x)), lowest rank first
            torch.minimum(top[j - 1], x, out=tmp)
            torch.maximum(top[j], tmp, out=top[j])
        torch.maximum(top[0], x, out=top[0])
    return top


def _top_k_patch_major(S: Tensor, St: Tensor, k: int, grad: bool, scratch: Tensor) -> Pooled | None:
    """``top_k_block`` on a patch-major block (``patch_major_view``): the same contract and, without ties, the same
    bits (the k values are added largest first). W is 1/k where S >= the k-th largest; None when a row has
    fewer than k real patches, or with ``grad`` when a tie at the k-th value makes the choice ambiguous."""
    n, Nq, T, M = S.shape
    if k == 1:
        top = St.amax(1, keepdim=True).movedim(1, 0)  # [1, n, R]
    else:
        top = top_k_sweep(St, k, scratch)
    kth = top[k - 1]
    if not bool(torch.isfinite(kth).all()):
        return None
    phi = top[0].clone()
    for j in range(1, k):
        phi.add_(top[j])
    phi = (phi / k).view(n, Nq, T)
    if not grad:
        return phi, None
    W = torch.ge(St, kth.unsqueeze(1), out=torch.empty_like(St))  # 1.0 on the chosen (a float out: no bool pass)
    if not bool((W.sum(1) == k).all()):
        return None
    return phi, (W.div_(k) if k > 1 else W).transpose(1, 2).unflatten(1, (Nq, T))


def top_k_block(S: Tensor, mask: Tensor | None, k: int, grad: bool, scratch: Tensor) -> Pooled | None:
    """The Top-k kernel (k = 1: MaxSim with a gradient): phi = mean of the k largest of S [..., M] (masked
    patches -inf) and, with ``grad``, W = 1/k on the chosen patches. Overwrites S and ``scratch`` (like S);
    None when a row has fewer than k real patches or a tie makes the choice ambiguous (see ``top_k_mean``).
    A patch-major block (``similarity_block(patch_major=True)``) is swept patch by patch (``top_k_sweep``)."""
    fill_masked_(S, mask, float("-inf"))
    St = patch_major_view(S)
    if St is not None and scratch.numel() >= (k + 1) * St.shape[0] * St.shape[2]:
        return _top_k_patch_major(S, St, k, grad, scratch)
    W = torch.zeros_like(S) if grad else None
    if topk_is_faster(S, k):
        phi = top_k_mean_sorted(S, k, W)
    else:
        phi = top_k_mean(S, k, scratch, W)
    return None if phi is None else (phi, W)


def largest(X: Tensor, k: int) -> Tensor:
    """The min(k, K) largest entries of X [..., K], in descending order (k = 1: ``amax``) -> [..., min(k, K)]."""
    return X.amax(-1, keepdim=True) if k == 1 else X.topk(min(k, X.shape[-1]), dim=-1).values


def top_of_parts(S: Tensor, mask: Tensor | None, inj_top: Tensor, k: int) -> Tensor:
    """The k largest similarities of each part, side by side: S [n, Nq, T, M] (mask [n, 1, 1, M]) cut by
    ``largest``, and every document's injected part already cut, inj_top = ``largest(S_inj, k)`` [Nq, T, k']
    -> [n, Nq, T, min(k, M) + k'], masked entries -inf.

    A pooling that only ever selects among the k largest similarities of a row (MaxSim, Top-k, rank windows)
    gives the same value on this as on the concatenation [n, Nq, T, M + K], at a cost independent of K."""
    top_o = largest(fill_masked(S, mask, float("-inf")), k)
    return torch.cat([top_o, inj_top.expand(S.shape[0], *inj_top.shape)], dim=-1)


def concat_parts(S: Tensor, mask: Tensor | None, S_inj: Tensor) -> tuple[Tensor, Tensor | None]:
    """The explicit injected block: S [n, Nq, T, M] with S_inj [Nq, T, K] appended to every document ->
    (S_ext [n, Nq, T, M + K], mask_ext [n, 1, 1, M + K] or None)."""
    n, K = S.shape[0], S_inj.shape[-1]
    S_ext = torch.cat([S, S_inj.expand(n, *S_inj.shape)], dim=-1)
    if mask is None:
        return S_ext, None
    real = torch.ones(n, 1, 1, K, dtype=torch.bool, device=mask.device)
    return S_ext, torch.cat([mask.expand(n, 1, 1, mask.shape[-1]), real], dim=-1)
