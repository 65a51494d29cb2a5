"""Adversarial length expansion: inject patches into non-gold documents and measure what they hijack.

Everything here is generic tensor code in representation space (PAPER.md sections 3-4). The synthetic world
builds raw injected patches with ``spike_patches`` / ``gaussian_patches`` and encodes them with its encoder
before scoring; the real benchmark builds them directly from embeddings.

Shapes: queries Q [Nq, T, d] with q_mask [Nq, T]; documents D [Nd, M, d] with d_mask [Nd, M]; injected
patches [Nq, K, d] (query-specific: query a's K patches go into every non-gold document of query a, and only
for query a); gold is a LongTensor [Nq] (one gold document per query) or a bool relevance mask [Nq, Nd].

- ``spike_patches``: token-targeted hard-negative patches, normalize(mean of ``spike_size`` query tokens).
- ``gaussian_patches``: the control, unit-norm isotropic Gaussian vectors.
- ``pad_documents``: neutral padding with vectors drawn from a pool (unrelated patches or random concepts).
- ``score_with_injection``: scores [Nq, Nd] as if every query saw its own injected corpus (never built).
- ``hijack_rate`` / ``argmax_shift``: where the query tokens' selections go after injection.

>>> Q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                 # one query, two tokens
>>> D = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])               # doc 0 (gold), doc 1
>>> spikes = spike_patches(Q, n_patches=2, spike_size=1)         # copies of the two query tokens
>>> score_with_injection(Q, D, "maxsim", spikes, gold=torch.tensor([0]))
tensor([[1., 2.]])
>>> hijack_rate(Q, D, "maxsim", spikes, gold=torch.tensor([0])).item()
1.0
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_mask, check_positive_int, check_tensor
from .metrics import Reduction, apply_reduction, relevance_mask
from .pooling import MaxSim, Mean, Pooling, Softmax, TopK, parse_pooling
from .scoring import (
    check_queries_documents,
    pool_similarity_block,
    score_matrix,
    sum_tokens,
    widen_low_precision,
)

Documents = Literal["top", "all"]

#: Automatic chunking (``chunk_size=None``): documents per chunk such that the similarity block
#: [Nq, T, chunk, M (+ K)] holds at most this many elements (2**22 floats = 16 MiB in float32; larger blocks
#: measured slower on CPU, smaller ones pay Python overhead per chunk).
BLOCK_ELEMENTS = 2**22


# ----------------------------------------------------------------------------------------------------------
# Building injected patches


def _rand_device(generator: torch.Generator | None) -> torch.device:
    """Random numbers are drawn on the generator's device (CPU by default), then moved: same seed, same draw."""
    return torch.device("cpu") if generator is None else generator.device


def _check_nonneg_float(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not (0 <= v < float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def spike_token_indices(
    q_mask: Tensor, n_patches: int, spike_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """Which query tokens each spike averages: q_mask bool [Nq, T] (True = real token) -> LongTensor [Nq, n, s].

    Tokens are dealt like cards from a shuffled deck: each spike takes the ``spike_size`` distinct valid tokens
    used least so far, ties broken at random. Token use counts therefore never differ by more than one, so
    every valid token is targeted as soon as n_patches * spike_size >= T_valid, and the design is nested: the
    first K spikes of a draw of 400 are a balanced draw of K (prefixes can serve the whole K sweep).
    """
    Nq, T = q_mask.shape
    dev = q_mask.device
    u = torch.rand(n_patches, Nq, T, generator=generator, device=_rand_device(generator), dtype=torch.float64)
    u = u.to(dev).masked_fill(~q_mask, float("inf"))  # padded tokens are never chosen
    counts = torch.zeros(Nq, T, dtype=torch.float64, device=dev)
    out = torch.empty(Nq, n_patches, spike_size, dtype=torch.long, device=dev)
    ones = torch.ones(Nq, spike_size, dtype=torch.float64, device=dev)
    for p in range(n_patches):
        idx = (counts + u[p]).topk(spike_size, dim=1, largest=False).indices  # least used, random ties
        counts.scatter_add_(1, idx, ones)
        out[:, p] = idx
    return out


def spike_patches(
    tokens: Tensor,
    n_patches: int,
    spike_size: int = 4,
    q_mask: Tensor | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Token-targeted spikes: tokens [Nq, T, d] -> injected patches [Nq, n_patches, d], unit norm.

    Spike p of query a = normalize(mean of ``spike_size`` distinct valid tokens of query a), then, if
    ``noise`` > 0, normalize(spike + noise * N(0, I)). Token subsets are dealt evenly (see
    ``spike_token_indices``): every valid token is targeted once n_patches * spike_size >= T_valid.
    ``spike_size=1`` gives (normalised) copies of single query tokens, the strongest possible spike against
    MaxSim. Token subsets do not depend on ``noise``, and the first K patches of a draw of n > K (same
    generator state) equal a draw of K, so one draw of the largest K serves a whole K sweep.
    ``tokens`` may be raw query vectors or concepts (synthetic world: encode the result afterwards) or query
    embeddings (real world). With ``return_indices`` also returns the token indices [Nq, n_patches,
    spike_size] each spike averages.
    """
    check_tensor("tokens", tokens, ndim=3)
    Nq, T, d = tokens.shape
    check_mask("q_mask", q_mask, (Nq, T), "query")
    check_positive_int("n_patches", n_patches, minimum=0)
    check_positive_int("spike_size", spike_size)
    noise = _check_nonneg_float("noise", noise)
    mask = torch.ones(Nq, T, dtype=torch.bool, device=tokens.device) if q_mask is None else q_mask
    t_valid = int(mask.sum(1).min())
    if spike_size > t_valid:
        raise ValueError(
            f"spike_size must lie in [1, T_valid] = [1, {t_valid}] (fewest valid tokens of any query), "
            f"got {spike_size}"
        )
    gdev = _rand_device(generator)
    # The noise stream gets its own seed, drawn first, and one draw per patch: the token subsets do not depend
    # on ``noise`` and the first K patches of a draw of n > K equal a draw of K (nested K sweeps).
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gdev))
    idx = spike_token_indices(mask, n_patches, spike_size, generator)
    W = torch.zeros(Nq, n_patches, T, dtype=tokens.dtype, device=tokens.device)
    W.scatter_(2, idx, 1.0 / spike_size)  # distinct indices: each chosen token weighs 1/s
    patches = F.normalize(W @ tokens, dim=-1)
    if noise > 0 and n_patches > 0:
        g = torch.Generator(device=gdev).manual_seed(noise_seed)
        draws = [torch.randn(Nq, d, generator=g, device=gdev, dtype=tokens.dtype) for _ in range(n_patches)]
        eps = torch.stack(draws, dim=1)
        patches = F.normalize(patches + noise * eps.to(tokens.device), dim=-1)
    return (patches, idx) if return_indices else patches


def gaussian_patches(
    n_queries: int,
    n_patches: int,
    d: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The control: unit-norm isotropic Gaussian vectors [n_queries, n_patches, d] (uniform on the sphere);
    ``dtype`` defaults to torch's default dtype."""
    check_positive_int("n_queries", n_queries)
    check_positive_int("n_patches", n_patches, minimum=0)
    check_positive_int("d", d)
    x = torch.randn(n_queries, n_patches, d, generator=generator, device=_rand_device(generator), dtype=dtype)
    return F.normalize(x, dim=-1).to(device if device is not None else x.device)


def pad_documents(
    D: Tensor,
    d_mask: Tensor | None,
    n_extra: int | Tensor,
    pool: Tensor,
    generator: torch.Generator | None = None,
    replace: bool = False,
) -> tuple[Tensor, Tensor]:
    """Neutral padding: append vectors drawn from ``pool`` [P, d] to every document.

    D [Nd, M, d], d_mask [Nd, M] or None, n_extra an int (same for every document) or a LongTensor [Nd]
    (e.g. (factor - 1) * lengths for a x2 / x4 / x8 length sweep) -> (D' [Nd, M + max n_extra, d], mask').
    The new vectors go in an appended block at the end (after any padding slot of the original tensor, which
    stays masked); document i's block holds n_extra[i] valid vectors followed by masked zeros. Each document
    draws its own vectors, without replacement unless ``replace`` (needs P >= n_extra then). The pool should
    hold vectors unrelated to every query (patches of documents outside the corpus, random concepts).
    """
    check_tensor("D", D, ndim=3)
    check_tensor("pool", pool, ndim=2)
    Nd, M, d = D.shape
    check_mask("d_mask", d_mask, (Nd, M), "document")
    if pool.shape[1] != d:
        raise ValueError(f"pool must have shape [P, d={d}], got {tuple(pool.shape)}")
    if pool.device != D.device or pool.dtype != D.dtype:
        raise ValueError(
            f"pool must match D's device and dtype ({D.device}, {D.dtype}), got {pool.device}, {pool.dtype}"
        )
    if isinstance(n_extra, Tensor):
        if n_extra.dtype not in (torch.int32, torch.int64) or tuple(n_extra.shape) != (Nd,):
            raise ValueError(f"n_extra must be an int or an integer tensor of shape ({Nd},), got {n_extra}")
        if bool((n_extra < 0).any()):
            raise ValueError("n_extra must be >= 0 for every document")
        counts = n_extra.to(device=D.device, dtype=torch.long)
    else:
        check_positive_int("n_extra", n_extra, minimum=0)
        counts = torch.full((Nd,), n_extra, dtype=torch.long, device=D.device)
    E = int(counts.max()) if Nd else 0
    P = pool.shape[0]
    if not replace and E > P:
        raise ValueError(f"n_extra ({E}) exceeds the pool size P={P}; pass replace=True to draw with replacement")
    gdev = _rand_device(generator)
    if replace:
        idx = torch.randint(P, (Nd, E), generator=generator, device=gdev)
    else:
        idx = torch.stack([torch.randperm(P, generator=generator, device=gdev)[:E] for _ in range(Nd)]) if E else (
            torch.zeros(Nd, 0, dtype=torch.long, device=gdev)
        )
    idx = idx.to(D.device)
    new_mask = torch.arange(E, device=D.device) < counts[:, None]  # [Nd, E]
    extra = pool[idx] * new_mask[..., None].to(D.dtype)
    base_mask = torch.ones(Nd, M, dtype=torch.bool, device=D.device) if d_mask is None else d_mask
    return torch.cat([D, extra], dim=1), torch.cat([base_mask, new_mask], dim=1)


def inject_corpus(
    D: Tensor, d_mask: Tensor | None, injected: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """One query's explicit injected corpus: D [Nd, M, d], injected [K, d], targets bool [Nd] (the non-gold
    documents) -> (D' [Nd, M + K, d], mask' [Nd, M + K]). Target documents get the K patches appended; the
    others get K masked zeros. For figures and for checking; ``score_with_injection`` never builds this.
    """
    check_tensor("D", D, ndim=3)
    Nd, M, d = D.shape
    check_mask("d_mask", d_mask, (Nd, M), "document")
    _check_injected(injected.unsqueeze(0), 1, d, D)
    if targets.dtype != torch.bool or tuple(targets.shape) != (Nd,):
        raise ValueError(f"targets must be a bool tensor of shape ({Nd},), got {targets.dtype} {tuple(targets.shape)}")
    K = injected.shape[0]
    t = targets.to(D.device)
    extra = injected.unsqueeze(0).expand(Nd, K, d) * t[:, None, None].to(D.dtype)
    base_mask = torch.ones(Nd, M, dtype=torch.bool, device=D.device) if d_mask is None else d_mask
    return torch.cat([D, extra], dim=1), torch.cat([base_mask, t[:, None].expand(Nd, K)], dim=1)


# ----------------------------------------------------------------------------------------------------------
# Scoring under injection


def _check_injected(injected: object, Nq: int, d: int, D: Tensor) -> Tensor:
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
    _check_injected(injected, Q.shape[0], Q.shape[2], D)
    Nq, Nd = Q.shape[0], D.shape[0]
    if isinstance(gold, Tensor) and gold.dtype == torch.bool:
        if tuple(gold.shape) != (Nq, Nd):
            raise ValueError(f"gold mask must have shape {(Nq, Nd)}, got {tuple(gold.shape)}")
        return gold.to(D.device)
    return relevance_mask(Q.new_zeros(Nq, Nd), gold)


def _step(chunk_size: int | None, Nq: int, T: int, Nd: int, width: int) -> int:
    if chunk_size is not None:
        return check_positive_int("chunk_size", chunk_size)
    return max(1, min(Nd, BLOCK_ELEMENTS // max(1, Nq * T * width)))


def _injected_similarities(Q: Tensor, injected: Tensor) -> Tensor:
    """S_inj [Nq, T, K]: each query's tokens against its own injected patches (pooled in float32 or wider)."""
    return widen_low_precision(torch.bmm(Q, injected.transpose(1, 2)))


def _doc_blocks(Q: Tensor, D: Tensor, d_mask: Tensor | None, step: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Chunks of documents: (S [Nq, T, n, M], mask [n, M] or None), S computed as ``score_matrix`` does."""
    Nq, T, d = Q.shape
    Nd, M, _ = D.shape
    q_flat = Q.reshape(Nq * T, d)
    for start in range(0, Nd, step):
        Dc = D[start : start + step]
        n = Dc.shape[0]
        S = widen_low_precision((q_flat @ Dc.reshape(n * M, d).T).view(Nq, T, n, M))
        yield S, None if d_mask is None else d_mask[start : start + step]


def _blocks(
    Q: Tensor, D: Tensor, S_inj: Tensor, d_mask: Tensor | None, step: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Chunks of documents: (S_ext [Nq, T, n, M + K], mask_ext [1, 1, n, M + K] or None).

    S_ext appends every query's similarities to its own injected patches, S_inj [Nq, T, K], to every document
    of the chunk (which documents really get them is the caller's business: gold pairs are overwritten or
    skipped).
    """
    Nq, T, K = S_inj.shape
    for S, m in _doc_blocks(Q, D, d_mask, step):
        n = S.shape[2]
        S_ext = torch.cat([S, S_inj.unsqueeze(2).expand(Nq, T, n, K)], dim=-1)
        if m is not None:
            m = torch.cat([m, torch.ones(n, K, dtype=torch.bool, device=m.device)], dim=1)[None, None]
        yield S_ext, m


def _merged_softmax(Sm: Tensor, S: Tensor, S_inj: Tensor, tau: float) -> Tensor:
    """Softmax pooling over a document's patches plus the query's injected ones, without concatenating them:
    the partial sums Z = sum_j e^{S_j / tau} and N = sum_j e^{S_j / tau} S_j of the two parts are merged with a
    shared max shift, phi = (N_doc + N_inj) / (Z_doc + Z_inj). Sm [Nq, T, n, M] has -inf on masked patches,
    S is unmasked (finite: its masked entries meet a zero weight); S_inj [Nq, T, K] -> phi [Nq, T, n]."""
    top_o = Sm.amax(-1)  # [Nq, T, n]; every document has a valid patch
    E = ((Sm - top_o.unsqueeze(-1)) / tau).exp()  # 0 on masked patches
    Z_o, N_o = E.sum(-1), (E * S).sum(-1)
    top_i = S_inj.amax(-1)  # [Nq, T]
    E_i = ((S_inj - top_i.unsqueeze(-1)) / tau).exp()
    Z_i, N_i = E_i.sum(-1).unsqueeze(-1), (E_i * S_inj).sum(-1).unsqueeze(-1)
    top = torch.maximum(top_o, top_i.unsqueeze(-1))
    a, b = ((top_o - top) / tau).exp(), ((top_i.unsqueeze(-1) - top) / tau).exp()
    return (a * N_o + b * N_i) / (a * Z_o + b * Z_i)


def _merged_phi(p: Pooling, S: Tensor, m: Tensor | None, S_inj: Tensor) -> Tensor:
    """phi [Nq, T, n] of the built-in poolings over S [Nq, T, n, M] (mask [n, M]) plus S_inj [Nq, T, K].

    MaxSim and Top-k only ever select among the k largest similarities of each part, so each part is cut to
    its top k and the pooling itself is called on the small concatenation [Nq, T, n, <= 2k]; softmax and mean
    merge per-part sums. Exact (checked against the full concatenation in the tests); cost independent of K.
    """
    Nq, T, n, _ = S.shape
    kind = type(p)
    if kind is Mean:
        S0 = S if m is None else S.masked_fill(~m, 0.0)
        count = (S.shape[-1] if m is None else m.sum(-1).to(S.dtype)) + S_inj.shape[-1]
        return (S0.sum(-1) + S_inj.sum(-1).unsqueeze(-1)) / count
    Sm = S if m is None else S.masked_fill(~m, float("-inf"))
    if kind is Softmax:
        return _merged_softmax(Sm, S, S_inj, p.tau)
    k = 1 if kind is MaxSim else p.k
    top_o = Sm.amax(-1, keepdim=True) if k == 1 else Sm.topk(min(k, Sm.shape[-1]), dim=-1).values
    top_i = S_inj.amax(-1, keepdim=True) if k == 1 else S_inj.topk(min(k, S_inj.shape[-1]), dim=-1).values
    return p.reduce(torch.cat([top_o, top_i.unsqueeze(2).expand(Nq, T, n, top_i.shape[-1])], dim=-1))


_MERGED = (MaxSim, TopK, Softmax, Mean)


def _injected_scores(
    Q: Tensor, D: Tensor, p: Pooling, S_inj: Tensor, q_mask: Tensor | None, d_mask: Tensor | None,
    chunk_size: int | None,
) -> Tensor:
    """Scores [Nq, Nd] with every document injected (gold ones included; the caller restores those).

    The built-in poolings take exact shortcuts (``_merged_phi``); any other pooling gets the full
    concatenated block [Nq, T, chunk, M + K]."""
    Nq, T, K = S_inj.shape
    Nd, M = D.shape[:2]
    out = []
    if type(p) in _MERGED:
        for S, m in _doc_blocks(Q, D, d_mask, _step(chunk_size, Nq, T, Nd, M)):
            out.append(sum_tokens(_merged_phi(p, S, m, S_inj), q_mask))
    else:
        for S_ext, m in _blocks(Q, D, S_inj, d_mask, _step(chunk_size, Nq, T, Nd, M + K)):
            out.append(sum_tokens(pool_similarity_block(p, S_ext, m), q_mask))  # [Nq, n]
    return torch.cat(out, dim=1)


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
) -> Tensor:
    """Scores [Nq, Nd] after appending query a's injected patches [Nq, K, d] to every non-gold document of a.

    The same numbers as scoring each query with ``score_matrix`` against its own explicit corpus
    (``inject_corpus``: every non-gold document holds its M patches, masked ones staying masked, plus the K
    injected ones), up to floating-point summation order. Gold documents are untouched: their entries are
    those of ``score_matrix(Q, D, pooling, q_mask, d_mask, chunk_size)`` bit for bit (pass that matrix as
    ``clean_scores`` when you already have it). The corpus is never built: similarities to the injected
    patches are concatenated along the patch axis of each similarity block [Nq, T, chunk, M + K] and the
    pooling is called on that, so any registered pooling works, token-coupled ones included (MaxSim, Top-k,
    softmax and mean take exact shortcuts whose cost does not grow with K). ``chunk_size=None`` picks the
    chunk so a block holds at most ``BLOCK_ELEMENTS`` entries. K = 0 returns the clean scores. Evaluation
    only: computed without gradient.
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
    after = _injected_scores(Q, D, p, _injected_similarities(Q, injected), q_mask, d_mask, chunk_size)
    return torch.where(rel.to(after.device), clean_scores.to(after.dtype), after)


# ----------------------------------------------------------------------------------------------------------
# Where the selections go


def top_nongold_documents(scores: Tensor, gold: Tensor) -> Tensor:
    """Index of each query's highest-scoring non-gold document: scores [Nq, Nd] -> LongTensor [Nq].

    Ties go to the lowest index. Raises if a query has no non-gold document.
    """
    rel = relevance_mask(scores, gold)
    if bool(rel.all(1).any()):
        raise ValueError("gold: every query needs at least one non-gold document")
    return scores.masked_fill(rel, float("-inf")).argmax(1)


def _token_mean(x: Tensor, q_mask: Tensor | None) -> Tensor:
    """Mean over valid query tokens: x [Nq, T, ...] -> [Nq, ...]."""
    n = x.shape[1] if q_mask is None else q_mask.sum(1).view(q_mask.shape[:1] + (1,) * (x.ndim - 2))
    return sum_tokens(x.to(torch.promote_types(x.dtype, torch.float32)), q_mask) / n


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
    """Average per-(query, document) values [Nq, Nd] over each query's non-gold documents -> [Nq]."""
    x = torch.cat(per_doc, dim=1).masked_fill(rel, 0.0)
    n = (~rel).sum(1)
    if bool((n == 0).any()):
        raise ValueError("gold: every query needs at least one non-gold document")
    return x.sum(1) / n


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
    """Share of query-token selection mass that goes to injected patches, per query [Nq] (or its mean).

    rate(a) = mean over valid tokens i of sum_{j injected} w_ij, with w the pooling's selection weights
    (``Pooling.selection``: one-hot arg-max for MaxSim, 1/k on the top-k set, the softmax weights).
    ``documents="top"`` measures it in the non-gold document that ranks highest for query a after injection
    (pass ``scores`` from ``score_with_injection`` to skip recomputing them); ``"all"`` averages it over every
    non-gold document of query a.
    """
    p = parse_pooling(pooling)
    _check_documents(documents)
    rel = _validate(Q, D, injected, gold, q_mask, d_mask)
    M = D.shape[1]
    if documents == "top":
        top = _top_after(Q, D, p, injected, gold, q_mask, d_mask, scores, chunk_size)
        S, mask = _top_doc_similarities(Q, D, injected, d_mask, top)
        w = p.selection(S, mask)  # [Nq, T, M + K]
        return apply_reduction(_token_mean(w[..., M:].sum(-1), q_mask), reduction)
    step = _step(chunk_size, Q.shape[0], Q.shape[1], D.shape[0], M + injected.shape[1])
    per_doc = []
    for S_ext, m in _blocks(Q, D, _injected_similarities(Q, injected), d_mask, step):
        w = p.selection(S_ext.permute(0, 2, 1, 3), None if m is None else m.transpose(1, 2))  # [Nq, n, T, M+K]
        per_doc.append(_token_mean(w[..., M:].sum(-1).transpose(1, 2), q_mask))  # [Nq, n]
    return apply_reduction(_nongold_mean(per_doc, rel), reduction)


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

    Measured in the same document as ``hijack_rate``: the top non-gold document after injection under
    ``pooling`` (which only picks the document; the arg-max itself is pooling-free), or averaged over all
    non-gold documents with ``documents="all"``. Returns ``ArgmaxShift(to_injected, moved)``, each [Nq] or
    its mean.
    """
    p = parse_pooling(pooling)
    _check_documents(documents)
    rel = _validate(Q, D, injected, gold, q_mask, d_mask)
    M = D.shape[1]
    if documents == "top":
        top = _top_after(Q, D, p, injected, gold, q_mask, d_mask, scores, chunk_size)
        S, mask = _top_doc_similarities(Q, D, injected, d_mask, top)
        before, after = _argmax_before_after(S, mask, M)  # [Nq, T]
        to_inj, moved = _token_mean(after >= M, q_mask), _token_mean(after != before, q_mask)
    else:
        step = _step(chunk_size, Q.shape[0], Q.shape[1], D.shape[0], M + injected.shape[1])
        parts_inj, parts_moved = [], []
        for S_ext, m in _blocks(Q, D, _injected_similarities(Q, injected), d_mask, step):
            before, after = _argmax_before_after(S_ext, m, M)  # [Nq, T, n]
            parts_inj.append(_token_mean(after >= M, q_mask))
            parts_moved.append(_token_mean(after != before, q_mask))
        to_inj, moved = _nongold_mean(parts_inj, rel), _nongold_mean(parts_moved, rel)
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
    _check_injected(injected.unsqueeze(0) if isinstance(injected, Tensor) else injected, 1, q.shape[1], doc)
    S, mask = _top_doc_similarities(q[None], doc[None], injected[None], None if d_mask is None else d_mask[None],
                                    torch.zeros(1, dtype=torch.long, device=doc.device))
    before, after = (x[0] for x in _argmax_before_after(S, mask, M))
    if q_mask is not None:
        before, after = before.masked_fill(~q_mask, -1), after.masked_fill(~q_mask, -1)
    return before, after
