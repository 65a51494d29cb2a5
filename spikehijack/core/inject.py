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
- ``inject_corpus``: one query's explicit injected corpus (for figures and checks).
- ``score_with_injection``, ``hijack_rate``, ``argmax_shift``, ...: scoring under injection and where the
  selections go, defined in ``spikehijack.core.hijack`` and re-exported here.

>>> Q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                 # one query, two tokens
>>> D = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])               # doc 0 (gold), doc 1
>>> spikes = spike_patches(Q, n_patches=2, spike_size=1)         # copies of the two query tokens
>>> score_with_injection(Q, D, "maxsim", spikes, gold=torch.tensor([0]))
tensor([[1., 2.]])
>>> hijack_rate(Q, D, "maxsim", spikes, gold=torch.tensor([0])).item()
1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_mask, check_positive_int, check_tensor
from .hijack import (
    ArgmaxShift,
    Documents,
    argmax_shift,
    check_injected,
    hijack_rate,
    injected_summary,
    score_with_injection,
    selected_patches,
    selection_mass,
    top_nongold_documents,
)

__all__ = [
    "ArgmaxShift",
    "Documents",
    "argmax_shift",
    "check_injected",
    "gaussian_patches",
    "hijack_rate",
    "inject_corpus",
    "injected_summary",
    "pad_documents",
    "score_with_injection",
    "selected_patches",
    "selection_mass",
    "spike_patches",
    "spike_token_indices",
    "top_nongold_documents",
]


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
    check_injected(injected.unsqueeze(0), 1, d, D)
    if targets.dtype != torch.bool or tuple(targets.shape) != (Nd,):
        raise ValueError(f"targets must be a bool tensor of shape ({Nd},), got {targets.dtype} {tuple(targets.shape)}")
    K = injected.shape[0]
    t = targets.to(D.device)
    extra = injected.unsqueeze(0).expand(Nd, K, d) * t[:, None, None].to(D.dtype)
    base_mask = torch.ones(Nd, M, dtype=torch.bool, device=D.device) if d_mask is None else d_mask
    return torch.cat([D, extra], dim=1), torch.cat([base_mask, t[:, None].expand(Nd, K)], dim=1)
