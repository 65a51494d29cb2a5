"""Pieces shared by the block kernels of the poolings and by the chunk loops of scoring and injection.

A *similarity block* holds every query token against every patch of a few documents: S [n, Nq, T, M], a free
view of the ``bmm`` output [n, Nq * T, M] (``similarity_block``), with the patch mask [n, 1, 1, M] (True = real
patch). Poolings pool such blocks in place (``Pooling.block``); this module holds what their kernels share (the
CPU scratch, the Top-k tournament and its ``torch.topk`` fallback) and the one rule that sizes blocks on every
device (``block_size``, ``document_blocks``). A pooling whose kernel works on whole patch rows
(``Pooling.patch_major``: Top-k) gets the same S as a view of patch-major storage [n, M, Nq * T], where each
patch's row of similarities is contiguous.

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
from collections.abc import Iterator, Sequence
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


def block_size(Nd: int, per_document: int, device: torch.device | str = "cpu", chunk_size: int | None = None,
               kept: int = 0) -> int:
    """Documents per block: ``chunk_size`` when given (validated), else as many as keep the block within
    ``block_budget(device)`` entries when each document adds ``per_document`` (e.g. Nq * T * M); 1 <= . <= Nd.
    ``kept``: entries per document of the CPU scratch (``scratch``) the block lives in; on CPU no more documents
    than fit ``SCRATCH_KEEP_ELEMENTS`` (a scratch kept between calls: fresh pages cost as much as the GEMM).

    >>> block_size(Nd=100, per_document=1, device="cpu", kept=SCRATCH_KEEP_ELEMENTS // 8)
    8
    """
    if chunk_size is not None:
        return check_positive_int("chunk_size", chunk_size)
    n = block_budget(device) // max(1, per_document)
    if kept > 0 and torch.device(device).type == "cpu":
        n = min(n, SCRATCH_KEEP_ELEMENTS // kept)
    return max(1, min(Nd, n))


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
    order) and S is its transposed view, for kernels that work on whole patch rows (``top_k_block``)."""
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


def top_k_mean_sorted(S: Tensor, k: int, weights: Tensor | None = None) -> Tensor | None:
    """Mean of the k largest entries of S [..., M] -> [...] by one ``torch.topk``, the k values added largest first
    (the bits of ``top_k_tournament``'s sum). Masked patches are -inf. ``weights`` (zeros shaped like S) receives the
    selection, 1/k on each chosen patch. None when a row has fewer than k real patches, or when ``weights`` is
    asked for and a tie makes the choice ambiguous: callers then use the reference selection. S is unchanged."""
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


def patch_major_view(S: Tensor) -> Tensor | None:
    """The [n, M, R] storage under a block S [n, Nq, T, M] written by ``similarity_block(patch_major=True)``
    (R = Nq * T), or None when S is stored token-major."""
    if S.ndim != 4 or S.stride(-1) == 1:  # token-major (or M = 1 / R = 1, where the layouts coincide)
        return None
    P = S.permute(0, 3, 1, 2)
    return P.view(*P.shape[:2], -1) if P.is_contiguous() else None


def _bitonic(P: list[Tensor], spare: Tensor) -> Tensor:
    """Sort a bitonic list of planes (its length a power of 2) into descending order, in place, by compare-exchanges
    (elementwise max / min) whose min goes to ``spare`` (a plane of the same shape); returns the plane left free."""
    L, s = len(P), len(P) // 2
    while s:
        for i in (i for i in range(L) if not i & s):
            torch.minimum(P[i], P[i + s], out=spare)
            torch.maximum(P[i], P[i + s], out=P[i])
            P[i + s], spare = spare, P[i + s]
        s //= 2
    return spare


def _merge(A: list[Tensor], B: list[Tensor], kp: int, spare: Tensor) -> tuple[list[Tensor], Tensor]:
    """The largest min(2L, kp) of two descending lists of L planes each (L and kp powers of 2), descending, and the
    plane left free: a full bitonic merge while 2L <= kp, else max(A_i, B_(L-1-i)), the top L, sorted."""
    L = len(A)
    if 2 * L <= kp:
        return (P := A + B[::-1]), _bitonic(P, spare)
    for i in range(L):
        torch.maximum(A[i], B[L - 1 - i], out=A[i])
    return A, _bitonic(A, spare)


def top_k_tournament(St: Tensor, k: int, scratch: Tensor) -> Tensor:
    """The k largest of every column of St [n, M, R] (2 <= k <= M), sorted: [k, n, R]. St is left unchanged;
    ``scratch`` needs n * M * R entries. A tournament over the patches: each round merges the first half of the
    patch axis with the second as sorted lists of kp planes (kp the power of 2 >= k; an odd patch waits for the
    end), by elementwise max / min over whole half-blocks. log2(M) rounds of O(kp log kp) tensor ops each, rather
    than a loop over M patches. Equal values are kept as often as they occur, so the values are exact.

    >>> St = torch.tensor([[[0.25, 5.0], [0.75, 1.0], [0.5, 5.0]]])  # n = 1, M = 3 patches, R = 2 tokens
    >>> top_k_tournament(St, 2, torch.empty(3 * 2)).tolist()
    [[[0.75, 5.0]], [[0.5, 5.0]]]
    """
    n, M, R = St.shape
    kp, m, waiting = 1 << (k - 1).bit_length(), M - M % 2, []
    if M % 2:
        waiting.append([St[:, m:].clone()])
    h = m // 2  # the first round writes into scratch, so St survives
    hi, lo = scratch.view(-1)[: 2 * n * h * R].view(2, n, h, R)
    torch.maximum(St[:, :h], St[:, h:m], out=hi)
    torch.minimum(St[:, :h], St[:, h:m], out=lo)
    P, spare = [hi, lo], St.new_empty(n, max(1, h // 2), R)
    while h > 1:
        if h % 2:
            waiting.append([p[:, h - 1:].clone() for p in P])
        m, h = h - h % 2, h // 2
        P, spare = _merge([p[:, :h] for p in P], [p[:, h:m] for p in P], kp, spare[:, :h])
    for w in waiting:  # small [n, 1, R] lists: padded with -inf to a common length, merged
        L = max(len(P), len(w))
        P, _ = _merge(*([*X, *(torch.full_like(X[0], float("-inf")) for _ in range(L - len(X)))] for X in (P, w)),
                      kp, torch.empty_like(P[0]))
    return torch.stack([p[:, 0] for p in P[:k]])


def _top_k_patch_major(S: Tensor, St: Tensor, k: int, grad: bool, scratch: Tensor) -> Pooled | None:
    """``top_k_block`` on a patch-major block (``patch_major_view``): the same contract and, without ties, the same
    bits (the k values are added largest first). W is 1/k where S >= the k-th largest; None when a row has
    fewer than k real patches, or with ``grad`` when a tie at the k-th value makes the choice ambiguous."""
    n, Nq, T, M = S.shape
    if k == 1:
        top = St.amax(1, keepdim=True).movedim(1, 0)  # [1, n, R]
    else:
        top = top_k_tournament(St, k, scratch)
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
    None when a row has fewer than k real patches or a tie makes the choice ambiguous (see ``top_k_mean_sorted``).
    A patch-major block (``similarity_block(patch_major=True)``) is pooled by a tournament over its patches
    (``top_k_tournament``), a token-major one by ``torch.topk``."""
    fill_masked_(S, mask, float("-inf"))
    St = patch_major_view(S)
    if St is not None and scratch.numel() >= St.numel():
        return _top_k_patch_major(S, St, k, grad, scratch)
    W = torch.zeros_like(S) if grad else None
    phi = top_k_mean_sorted(S, k, W)
    return None if phi is None else (phi, W)


def largest(X: Tensor, k: int) -> Tensor:
    """The min(k, K) largest entries of X [..., K], in descending order (k = 1: ``amax``) -> [..., min(k, K)]."""
    return X.amax(-1, keepdim=True) if k == 1 else X.topk(min(k, X.shape[-1]), dim=-1).values


def top_of_parts(S: Tensor, mask: Tensor | None, inj_tops: Sequence[Tensor], k: int) -> list[Tensor]:
    """The k largest similarities of each part, side by side: S [n, Nq, T, M] (mask [n, 1, 1, M]) cut by
    ``largest`` once, and each injected part already cut, inj_top = ``largest(S_inj, k)`` [Nq, T, k']
    -> one [n, Nq, T, min(k, M) + k'] per inj_top, masked entries -inf.

    A pooling that only ever selects among the k largest similarities of a row (MaxSim, Top-k, rank windows)
    gives the same value on this as on the concatenation [n, Nq, T, M + K], at a cost independent of K."""
    top_o = largest(fill_masked(S, mask, float("-inf")), k)
    return [torch.cat([top_o, t.expand(S.shape[0], *t.shape)], dim=-1) for t in inj_tops]


def concat_parts(S: Tensor, mask: Tensor | None, S_inj: Tensor) -> tuple[Tensor, Tensor | None]:
    """The explicit injected block: S [n, Nq, T, M] with S_inj [Nq, T, K] appended to every document ->
    (S_ext [n, Nq, T, M + K], mask_ext [n, 1, 1, M + K] or None)."""
    n, K = S.shape[0], S_inj.shape[-1]
    S_ext = torch.cat([S, S_inj.expand(n, *S_inj.shape)], dim=-1)
    if mask is None:
        return S_ext, None
    real = torch.ones(n, 1, 1, K, dtype=torch.bool, device=mask.device)
    return S_ext, torch.cat([mask.expand(n, 1, 1, mask.shape[-1]), real], dim=-1)
