"""Poolings beyond the paper, designed to keep MaxSim's discrimination while resisting spikes.

All three are registered in the pooling registry (``parse_pooling``), validate their inputs like the core
poolings and never let a masked patch influence a value or a gradient.

- ``"lcmaxsim"`` / ``"lcmaxsim:SIGMA"``: length-calibrated MaxSim,
  phi = max_j S_j - sigma * e(M_valid), with e(n) the expected maximum of n standard normals. The subtracted
  term is what the max of M_valid pure-noise similarities (std sigma) reaches by chance, so a long document
  no longer wins just by having more patches. ``sigma`` is given, or (no argument) estimated per token and
  document as the standard deviation of the valid similarities. The calibration term is a constant for
  training (stop-gradient): the gradient, and hence the Gini, is MaxSim's.
- ``"capacity:C[:EPS[:ITERS]]"``: capacity-limited matching. Each query token spreads one unit of mass over
  the patches, each patch can absorb at most C units (C = 1: a patch serves about one token), with entropy
  eps: a few rounds of log-domain Sinkhorn (exact block-coordinate ascent on the dual) give a transport
  plan P [T, M] and phi_i = sum_j P_ij S_ij. C >= T recovers ``softmax:EPS``, eps -> 0 with C >= T MaxSim.
  The pooling couples the tokens of a query (``token_wise = False``).
- ``"trimmed:K[:DROP]"``: mean of the top-K similarities after discarding the DROP (default 1) largest;
  ``"medtopk:K"``: the median of the top-K. ``trimmed:K:0`` is ``topk:K``, ``medtopk:1`` is MaxSim.

>>> S = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
>>> round(pool(S, "trimmed:3").item(), 3), round(pool(S, "medtopk:3").item(), 3)
(0.4, 0.5)
>>> round(expected_max_normal(2), 4)  # 1 / sqrt(pi)
0.5642
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch
from torch import Tensor

from .checks import check_positive_float, check_positive_int
from .kernels import Pooled, fill_masked, largest, top_of_parts, valid_count
from .pooling import (
    MaxSim,
    Pooling,
    pool,  # noqa: F401  (used by the doctests)
    register,
)

__all__ = [
    "Capacity",
    "LengthCalibratedMaxSim",
    "MedianTopK",
    "Trimmed",
    "expected_max_normal",
    "expected_max_normal_tensor",
]


# ----------------------------------------------------------------------------------------------------------
# Extreme values of Gaussian noise
# ----------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def expected_max_normal(n: int) -> float:
    """e(n) = E[max of n iid N(0, 1)] = int x n phi(x) Phi(x)^(n-1) dx, by quadrature (float64, ~1e-10).

    e(1) = 0, e(2) = 1/sqrt(pi), e(n) ~ sqrt(2 log n) for large n.
    """
    n = check_positive_int("n", n)
    if n == 1:
        return 0.0
    x = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
    log_pdf = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    dens = torch.exp(math.log(n) + log_pdf + (n - 1) * torch.special.log_ndtr(x))
    return float(torch.trapezoid(x * dens, x))


def expected_max_normal_tensor(n: Tensor) -> Tensor:
    """Elementwise e(n) for a tensor of positive (integer-valued) counts; same shape and dtype as ``n``."""
    flat = n.detach().reshape(-1).round().long()
    if bool((flat < 1).any()):
        raise ValueError("n: counts must be >= 1")
    uniq, inv = torch.unique(flat.cpu(), return_inverse=True)
    vals = torch.tensor([expected_max_normal(int(u)) for u in uniq], dtype=torch.float64)
    return vals[inv].to(device=n.device, dtype=n.dtype if n.is_floating_point() else torch.float32).view(n.shape)


def _parse_numbers(name: str, arg: str | None, n_max: int, usage: str) -> list[str]:
    parts = [] if arg is None else arg.split(":")
    if len(parts) > n_max or any(p.strip() == "" for p in parts):
        raise ValueError(f"pooling {name!r}: expected {usage}, got {name}:{arg}")
    return [p.strip() for p in parts]


def _to_float(name: str, field: str, text: str, usage: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"pooling {name!r}: {field} must be a number ({usage}), got {text!r}") from None


def _to_int(name: str, field: str, text: str, usage: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"pooling {name!r}: {field} must be an integer ({usage}), got {text!r}") from None


# ----------------------------------------------------------------------------------------------------------
# Length-calibrated MaxSim
# ----------------------------------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class LengthCalibratedMaxSim(Pooling):
    """phi = max_j S_j - sigma * e(M_valid): MaxSim minus the max that M_valid noise similarities reach by chance.

    ``sigma=None`` estimates the noise scale per row as the standard deviation of the valid similarities
    (0 for a single patch). The subtracted term is stop-gradient: d phi / d S is MaxSim's one-hot.
    """

    sigma: float | None = None
    name: ClassVar[str] = "lcmaxsim"
    _usage: ClassVar[str] = "'lcmaxsim' (sigma estimated) or 'lcmaxsim:SIGMA', e.g. 'lcmaxsim:0.25'"

    def __post_init__(self) -> None:
        if self.sigma is not None:
            object.__setattr__(self, "sigma", check_positive_float("sigma", self.sigma))

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        parts = _parse_numbers(cls.name, arg, 1, cls._usage)
        if not parts or parts[0] == "auto":
            return cls()
        return cls(_to_float(cls.name, "sigma", parts[0], cls._usage))

    @property
    def spec(self) -> str:
        return self.name if self.sigma is None else f"{self.name}:{self.sigma:g}"

    @property
    def label(self) -> str:
        return "LC-MaxSim σ=auto" if self.sigma is None else f"LC-MaxSim σ={self.sigma:g}"

    def noise_scale(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        """sigma per row [...]: the given constant, or the std of the valid entries of S [..., M] (detached)."""
        if self.sigma is not None:
            return torch.full(S.shape[:-1], self.sigma, dtype=S.dtype, device=S.device)
        S = S.detach()
        n = valid_count(S, mask)
        mean = fill_masked(S, mask, 0.0).sum(-1) / n
        dev = fill_masked(S - mean.unsqueeze(-1), mask, 0.0)
        return ((dev**2).sum(-1) / (n - 1).clamp_min(1)).sqrt()

    def calibration(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        """The subtracted term sigma * e(M_valid), shaped like S without its last axis (no gradient)."""
        return self.noise_scale(S, mask) * expected_max_normal_tensor(valid_count(S, mask))

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return MaxSim().reduce(S, mask) - self.calibration(S, mask)

    def jacobian(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return MaxSim().jacobian(S, mask)


# ----------------------------------------------------------------------------------------------------------
# Trimmed and median-of-top-k
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RankWindow(Pooling):
    """Mean of the sorted (descending) valid similarities whose 0-based rank lies in a per-row window [lo, hi)."""

    def window(self, n: Tensor) -> tuple[Tensor, Tensor]:
        """(lo, hi) rank bounds [...] for rows with n [...] valid patches (long), 0 <= lo < hi <= n."""
        raise NotImplementedError

    @property
    def max_rank(self) -> int:
        """The window never reaches past this rank, so only the top ``max_rank`` entries are sorted."""
        raise NotImplementedError

    def _weights_sorted(self, S: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        k = min(self.max_rank, S.shape[-1])
        vals, idx = fill_masked(S, mask, float("-inf")).topk(k, dim=-1)  # descending, masked last
        n = valid_count(S, mask).long()
        lo, hi = self.window(n)
        r = torch.arange(k, device=S.device)
        inside = (r >= lo.unsqueeze(-1)) & (r < hi.unsqueeze(-1))
        w = inside.to(S.dtype) / (hi - lo).unsqueeze(-1).to(S.dtype)
        return vals, idx, w

    def reference_block(self, S: Tensor, mask: Tensor | None, grad: bool) -> Pooled:
        """phi and, with ``grad``, W from one partial sort of S [..., M]."""
        vals, idx, w = self._weights_sorted(S, mask)
        phi = (w * torch.where(w > 0, vals, torch.zeros_like(vals))).sum(-1)
        return phi, torch.zeros_like(S).scatter_(-1, idx, w) if grad else None

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.reference_block(S, mask, False)[0]

    def jacobian(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.reference_block(S, mask, True)[1]

    def selection(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.jacobian(S, mask)

    # The window depends on the n real entries only through min(n, max_rank) and the top max_rank values;
    # cutting each part to its own top max_rank keeps both: same window, same sorted values, same bits.
    def injected_summary(self, S_inj: Tensor) -> Tensor:
        return largest(S_inj, self.max_rank)

    def merged_many(self, S: Tensor, mask: Tensor | None, summaries: Sequence[Tensor]) -> list[Tensor]:
        return [self.reduce(top, torch.isfinite(top)) for top in top_of_parts(S, mask, summaries, self.max_rank)]


@register
@dataclass(frozen=True)
class Trimmed(_RankWindow):
    """phi = mean of S_(drop+1) .. S_(k) (descending order): the top-k without its ``drop`` largest entries.

    With n < k valid patches the window is cut at n; at least the smallest valid entry always remains.
    """

    k: int = 4
    drop: int = 1
    name: ClassVar[str] = "trimmed"
    _usage: ClassVar[str] = "'trimmed:K' or 'trimmed:K:DROP' with K > DROP >= 0, e.g. 'trimmed:4:1'"

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_positive_int("drop", self.drop, minimum=0)
        if self.drop >= self.k:
            raise ValueError(f"trimmed pooling needs k > drop, got k={self.k}, drop={self.drop}")

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        parts = _parse_numbers(cls.name, arg, 2, cls._usage)
        if not parts:
            raise ValueError(f"pooling 'trimmed' needs k: {cls._usage}")
        vals = [_to_int(cls.name, f, p, cls._usage) for f, p in zip(("k", "drop"), parts, strict=False)]
        return cls(*vals)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.k}:{self.drop}"

    @property
    def label(self) -> str:
        return f"Trimmed-{self.k}/{self.drop}"

    @property
    def max_rank(self) -> int:
        return self.k

    def window(self, n: Tensor) -> tuple[Tensor, Tensor]:
        hi = n.clamp(max=self.k)
        lo = torch.minimum(torch.full_like(n, self.drop), hi - 1)
        return lo, hi


@register
@dataclass(frozen=True)
class MedianTopK(_RankWindow):
    """phi = median of the top-k similarities (the mean of the two middle ones for even k; k cut at n valid)."""

    k: int = 5
    name: ClassVar[str] = "medtopk"

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        usage = "'medtopk:K', e.g. 'medtopk:5'"
        parts = _parse_numbers(cls.name, arg, 1, usage)
        if not parts:
            raise ValueError(f"pooling 'medtopk' needs k: {usage}")
        return cls(_to_int(cls.name, "k", parts[0], usage))

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.k}"

    @property
    def label(self) -> str:
        return f"Median-top-{self.k}"

    @property
    def max_rank(self) -> int:
        return self.k

    def window(self, n: Tensor) -> tuple[Tensor, Tensor]:
        k = n.clamp(max=self.k)
        lo = (k - 1) // 2
        return lo, lo + 2 - k % 2


# ----------------------------------------------------------------------------------------------------------
# Capacity-limited matching (entropic optimal transport with patch capacities)
# ----------------------------------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Capacity(Pooling):
    """Capacity-limited matching: phi_i = sum_j P_ij S_ij with P the entropic plan of

        max_P  sum_ij P_ij S_ij + eps H(P)   s.t.  sum_j P_ij = 1 (each token),  sum_i P_ij <= C (each patch).

    P_ij = softmax_j((S_ij - g_j) / eps) with patch prices g_j >= 0, found by ``iters`` rounds of exact
    block-coordinate ascent on the dual (log-domain Sinkhorn): g_j <- max(0, g_j + eps log(sum_i P_ij / C)).
    A price rises only on a patch that more than C tokens want, so a spike can answer about C tokens, not all.
    C is raised to T/M_valid when smaller (the problem must be feasible). Query tokens whose similarity row is
    identically zero (zero-padded vectors, as ``scoring.pad`` makes) carry no mass: padding never uses capacity.
    Gradients flow by autograd through the unrolled iterations.
    """

    capacity: float = 1.0
    eps: float = 0.05
    iters: int = 20
    name: ClassVar[str] = "capacity"
    token_wise: ClassVar[bool] = False
    _usage: ClassVar[str] = "'capacity:C', 'capacity:C:EPS' or 'capacity:C:EPS:ITERS', e.g. 'capacity:1:0.05:20'"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capacity", check_positive_float("capacity", self.capacity))
        object.__setattr__(self, "eps", check_positive_float("eps", self.eps))
        check_positive_int("iters", self.iters, minimum=0)

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        parts = _parse_numbers(cls.name, arg, 3, cls._usage)
        if not parts:
            return cls()
        kw: dict[str, float | int] = {"capacity": _to_float(cls.name, "C", parts[0], cls._usage)}
        if len(parts) > 1:
            kw["eps"] = _to_float(cls.name, "EPS", parts[1], cls._usage)
        if len(parts) > 2:
            kw["iters"] = _to_int(cls.name, "ITERS", parts[2], cls._usage)
        return cls(**kw)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.capacity:g}:{self.eps:g}:{self.iters}"

    @property
    def label(self) -> str:
        return f"Capacity C={self.capacity:g} ε={self.eps:g}"

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError("capacity pooling couples query tokens: use pool_tokens(S [..., T, M], mask)")

    def plan(self, S: Tensor, mask: Tensor | None = None, log_domain: bool | None = None) -> Tensor:
        """The transport plan P [..., T, M] (rows sum to 1, masked patches 0) for S [..., T, M].

        Two equal computations: prices in the log domain (``log_domain=True``; an exp per entry and round) or
        scaling factors h_j = exp(-g_j) in (0, 1] on E = exp((S - rowmax) / eps) (two mat-vec products per
        round, several times faster). ``None`` takes the scaling form only while no entry of E or h can
        underflow (the valid similarities span less than 60 eps in float32, 600 eps in float64).
        """
        valid = torch.ones_like(S, dtype=torch.bool) if mask is None else mask.expand_as(S)
        patch_ok = valid.any(-2, keepdim=True)  # [..., 1, M]
        mass = (fill_masked(S.detach(), valid, 0.0) != 0).any(-1, keepdim=True).to(S.dtype)  # [..., T, 1]
        n_patch = patch_ok.sum(-1, keepdim=True).to(S.dtype)  # [..., 1, 1]
        cap = torch.maximum(torch.full_like(n_patch, self.capacity), mass.sum(-2, keepdim=True) / n_patch)
        logits = fill_masked(S, valid, float("-inf")) / self.eps
        tiny = torch.finfo(S.dtype).tiny
        if log_domain is None:
            Sd = S.detach()
            span = (fill_masked(Sd, valid, float("-inf")).amax() - fill_masked(Sd, valid, float("inf")).amin())
            log_domain = bool(span / self.eps >= (60.0 if S.dtype != torch.float64 else 600.0))
        if log_domain:
            g = torch.zeros_like(S[..., :1, :])  # patch prices / eps, [..., 1, M]
            log_cap = cap.log()
            for _ in range(self.iters):
                P = torch.softmax(logits - g, dim=-1)
                col = (mass * P).sum(-2, keepdim=True)
                g = (g + col.clamp_min(tiny).log() - log_cap).clamp_min(0.0)
            return torch.softmax(logits - g, dim=-1)
        E = torch.exp(logits - logits.amax(-1, keepdim=True))  # [..., T, M], 0 on masked patches
        h = torch.ones_like(S[..., :1, :])  # exp(-g), [..., 1, M]
        for _ in range(self.iters):
            r = E @ h.transpose(-1, -2)  # [..., T, 1] row normalisers
            col = h * ((mass / r).transpose(-1, -2) @ E)  # [..., 1, M] patch loads
            h = torch.minimum(torch.ones_like(h), h * cap / col.clamp_min(tiny))
        P = E * h
        return P / P.sum(-1, keepdim=True)

    def pool_tokens(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        P = self.plan(S, mask)
        valid = None if mask is None else mask.expand_as(S)
        return (P * fill_masked(S, valid, 0.0)).sum(-1)

    def selection(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.plan(S.detach(), mask)


def robust_poolings() -> list[str]:
    """Default specs of this module's poolings (for sweeps)."""
    return ["lcmaxsim", "capacity:1:0.05:20", "trimmed:4:1", "medtopk:5"]

