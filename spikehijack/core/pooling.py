"""Pooling operators phi: how a query token's similarities to the M document patches become one number.

A pooling reduces the last axis of a similarity tensor ``S [..., M]`` under a patch mask ``[..., M]``
(True = real patch, broadcastable to S). Masked patches never influence the value or its gradient.

Specs are strings (``"maxsim"``, ``"topk:4"``, ``"softmax:0.1"``, ``"mean"``) or ``Pooling`` objects;
``parse_pooling`` turns one into the other. A new pooling is one subclass decorated with ``@register``: its
``reduce`` (or ``pool_tokens``) is all scoring and injection need; ``jacobian`` / ``selection`` and the block
kernels ``block`` / ``merged`` (used by ``score_matrix`` and ``score_with_injection``) have correct defaults
built from it, which the built-ins override with fast closed forms.

>>> S = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
>>> round(pool(S, "maxsim").item(), 3), round(pool(S, "topk:2").item(), 3), round(pool(S, "mean").item(), 3)
(0.9, 0.7, 0.45)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .checks import check_positive_float, check_positive_int, check_tensor
from .kernels import Pooled, concat_parts, fill_masked, fill_masked_, largest, top_k_block, top_of_parts, valid_count

_REGISTRY: dict[str, Callable[[str | None], Pooling]] = {}


def register(cls: type[Pooling]) -> type[Pooling]:
    """Class decorator: make ``cls`` reachable from ``parse_pooling(cls.name[:arg])``."""
    _REGISTRY[cls.name] = cls.from_arg
    return cls


def unregister(name: str) -> None:
    """Undo ``register``: ``parse_pooling`` no longer knows ``name`` (e.g. a pooling defined by a test)."""
    _REGISTRY.pop(name, None)


def available_poolings() -> list[str]:
    """Names accepted by ``parse_pooling`` (the part before the colon)."""
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class Pooling:
    """Base class. Subclasses implement ``reduce`` (or ``pool_tokens``) and, where one exists, the closed-form
    ``jacobian``; the block kernels (``block``; ``injected_summary`` with ``merged``) only for speed."""

    name: ClassVar[str] = ""
    #: False for poolings that couple query tokens (e.g. capacity-limited matching): they implement
    #: ``pool_tokens`` on S [..., T, M] instead of the per-token ``reduce``.
    token_wise: ClassVar[bool] = True

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        if arg is not None:
            raise ValueError(f"pooling {cls.name!r} takes no argument, got {cls.name}:{arg}")
        return cls()

    @property
    def spec(self) -> str:
        """The string that ``parse_pooling`` maps back to this object."""
        return self.name

    @property
    def label(self) -> str:
        """A human-readable name for plots and tables."""
        return self.name

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        """phi over the last axis: S [..., M], mask broadcastable to S -> [...]."""
        raise NotImplementedError

    def pool_tokens(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        """phi for every query token: S [..., T, M], mask broadcastable to S -> [..., T]."""
        return self.reduce(S, mask)

    def jacobian(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        """d phi_i / d S_ij for S [..., T, M]: how a token's gradient is shared among the patches.

        The default uses autograd; poolings with a closed form override it.
        """
        with torch.enable_grad():
            S_ = S.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.pool_tokens(S_, mask).sum(), S_)
        return grad

    def selection(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        """Which patches a token "selects": non-negative weights over M summing to 1, S [..., T, M].

        One-hot for MaxSim, 1/k on the top-k set, the softmax weights for softmax pooling. Used for hijack
        rates. The default normalises |jacobian|.
        """
        J = self.jacobian(S, mask).abs()
        return J / J.sum(-1, keepdim=True).clamp_min(torch.finfo(J.dtype).tiny)

    # Block kernels: S [n, Nq, T, M] holds the query tokens of Nq queries against the M patches of n documents
    # (a free view of the [n, Nq * T, M] similarity GEMM), mask [n, 1, 1, M] or None (True = real patch).

    def block(self, S: Tensor, mask: Tensor | None, grad: bool, scratch: Tensor) -> Pooled | None:
        """Pool a similarity block, in place if it helps: -> (phi [n, Nq, T], W = dphi/dS like S or None).

        S and ``scratch`` (a tensor like S) may be overwritten; phi and W must be new tensors. W is asked for
        (``grad``) only of token-wise poolings: token-coupled ones are differentiated by autograd. Returning
        None declines the block (e.g. a tie with a gradient): the caller recomputes S and uses
        ``reference_block``. The default is the reference itself.
        """
        return self.reference_block(S, mask, grad)

    def patch_major(self, grad: bool) -> bool:
        """Whether ``block`` is fastest on S stored patch-major (``kernels.similarity_block``); same numbers."""
        return False

    def reference_block(self, S: Tensor, mask: Tensor | None, grad: bool) -> Pooled:
        """The definition on any block S [..., T, M]: (``pool_tokens``, ``jacobian`` when ``grad``). S unchanged."""
        return self.pool_tokens(S, mask), self.jacobian(S, mask) if grad else None

    def injected_summary(self, S_inj: Tensor) -> Tensor:
        """What ``merged`` needs of the injected similarities S_inj [Nq, T, K], K >= 1, computed once for all
        blocks: [Nq, T, W] (blocks are sized as if it were W more patches). The default is S_inj itself."""
        return S_inj

    def merged(self, S: Tensor, mask: Tensor | None, summary: Tensor) -> Tensor:
        """phi [n, Nq, T] over each document's patches S [n, Nq, T, M] (S unchanged) plus its query's injected
        ones, given as ``injected_summary(S_inj)`` [Nq, T, W]: ``merged_many`` with one summary."""
        return self.merged_many(S, mask, [summary])[0]

    def merged_many(self, S: Tensor, mask: Tensor | None, summaries: Sequence[Tensor]) -> list[Tensor]:
        """``merged`` for several injected sets at once (e.g. K = 25, 100, 400; spikes and Gaussian patches):
        one phi [n, Nq, T] per summary. The default pools each concatenation [n, Nq, T, M + K]; poolings that
        merge per-part statistics override it, computing the documents' part once per block, so that the cost
        per block grows neither with K nor (beyond a [n, Nq, T, W] merge) with the number of summaries."""
        return [self.pool_tokens(*concat_parts(S, mask, s)) for s in summaries]

    def __str__(self) -> str:
        return self.spec


@register
@dataclass(frozen=True)
class MaxSim(Pooling):
    """phi = max_j S_j. All of a token's gradient goes to its arg-max patch (first one on ties)."""

    name: ClassVar[str] = "maxsim"

    @property
    def label(self) -> str:
        return "MaxSim"

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        # .max (not .amax): autograd then routes the gradient to the same single index as `jacobian`.
        return fill_masked(S, mask, float("-inf")).max(-1).values

    def jacobian(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        idx = fill_masked(S, mask, float("-inf")).max(-1, keepdim=True).indices
        return torch.zeros_like(S).scatter_(-1, idx, 1.0)

    def block(self, S: Tensor, mask: Tensor | None, grad: bool, scratch: Tensor) -> Pooled | None:
        if grad:  # the Top-1 kernel: W one-hot, None on a tie (the reference then takes the first index)
            return top_k_block(S, mask, 1, grad, scratch)
        return fill_masked_(S, mask, float("-inf")).amax(-1), None

    def patch_major(self, grad: bool) -> bool:
        return grad  # W from one comparison per patch row; without a gradient, amax over contiguous patches

    def injected_summary(self, S_inj: Tensor) -> Tensor:
        return largest(S_inj, 1)

    def merged_many(self, S: Tensor, mask: Tensor | None, summaries: Sequence[Tensor]) -> list[Tensor]:
        return [self.reduce(top) for top in top_of_parts(S, mask, summaries, 1)]


@register
@dataclass(frozen=True)
class TopK(Pooling):
    """phi = mean of the k largest S_j. With fewer than k valid patches, the mean over all valid ones."""

    k: int = 4
    name: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        if arg is None:
            raise ValueError("pooling 'topk' needs k, e.g. 'topk:4'")
        try:
            k = int(arg)
        except ValueError:
            raise ValueError(f"pooling 'topk' needs an integer k, got 'topk:{arg}'") from None
        return cls(k)

    @property
    def spec(self) -> str:
        return f"topk:{self.k}"

    @property
    def label(self) -> str:
        return f"Top-{self.k}"

    def _top(self, S: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        k = min(self.k, S.shape[-1])
        vals, idx = fill_masked(S, mask, float("-inf")).topk(k, dim=-1)
        valid = torch.isfinite(vals)
        return vals, idx, valid

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        vals, _, valid = self._top(S, mask)
        total = torch.where(valid, vals, torch.zeros_like(vals)).sum(-1)
        return total / valid.sum(-1).to(S.dtype)

    def jacobian(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        _, idx, valid = self._top(S, mask)
        share = valid.to(S.dtype) / valid.sum(-1, keepdim=True).to(S.dtype)
        return torch.zeros_like(S).scatter_(-1, idx, share)

    def block(self, S: Tensor, mask: Tensor | None, grad: bool, scratch: Tensor) -> Pooled | None:
        return top_k_block(S, mask, min(self.k, S.shape[-1]), grad, scratch)

    def patch_major(self, grad: bool) -> bool:
        return True

    def injected_summary(self, S_inj: Tensor) -> Tensor:
        return largest(S_inj, self.k)

    def merged_many(self, S: Tensor, mask: Tensor | None, summaries: Sequence[Tensor]) -> list[Tensor]:
        return [self.reduce(top) for top in top_of_parts(S, mask, summaries, self.k)]


@register
@dataclass(frozen=True)
class Softmax(Pooling):
    """phi = sum_j w_j S_j with w = softmax(S / tau). tau -> 0 gives MaxSim, tau -> inf the mean.

    d phi / d S_j = w_j (1 + (S_j - phi) / tau): every valid patch receives gradient.
    """

    tau: float = 1.0
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", check_positive_float("tau", self.tau))

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        if arg is None:
            raise ValueError("pooling 'softmax' needs tau, e.g. 'softmax:0.1'")
        try:
            tau = float(arg)
        except ValueError:
            raise ValueError(f"pooling 'softmax' needs a number tau, got 'softmax:{arg}'") from None
        return cls(tau)

    @property
    def spec(self) -> str:
        return f"softmax:{self.tau:g}"

    @property
    def label(self) -> str:
        return f"Softmax τ={self.tau:g}"

    def weights(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        """w_j = softmax_j(S_j / tau) over valid patches (0 on masked ones)."""
        return torch.softmax(fill_masked(S, mask, float("-inf")) / self.tau, dim=-1)

    def selection(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.weights(S, mask)

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return (self.weights(S, mask) * fill_masked(S, mask, 0.0)).sum(-1)

    def jacobian(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        w = self.weights(S, mask)
        phi = (w * fill_masked(S, mask, 0.0)).sum(-1, keepdim=True)
        return w * (1 + (fill_masked(S, mask, 0.0) - phi) / self.tau)

    def block(self, S: Tensor, mask: Tensor | None, grad: bool, scratch: Tensor) -> Pooled | None:
        # phi = tau * sum_j w_j X_j with X = S / tau, w = softmax(X)
        X = fill_masked_(S, mask, float("-inf")).div_(self.tau)
        w = torch.softmax(X, dim=-1) if grad else torch.softmax(X, dim=-1, out=scratch)
        wX = fill_masked_(torch.mul(w, X, out=scratch) if grad else w.mul_(X), mask, 0.0)  # masked: w X = 0, not nan
        phi = self.tau * wX.sum(-1)
        if not grad:
            return phi, None
        return phi, fill_masked_(w.mul_(X.sub_((phi / self.tau).unsqueeze(-1)).add_(1.0)), mask, 0.0)

    def injected_summary(self, S_inj: Tensor) -> Tensor:
        """The injected part's max, Z = sum_j e^{(S_j - max) / tau} and N = sum_j e^{(S_j - max) / tau} S_j:
        [Nq, T, 3]."""
        top = S_inj.amax(-1, keepdim=True)
        E = ((S_inj - top) / self.tau).exp()
        return torch.cat([top, E.sum(-1, keepdim=True), (E * S_inj).sum(-1, keepdim=True)], dim=-1)

    def merged_many(self, S: Tensor, mask: Tensor | None, summaries: Sequence[Tensor]) -> list[Tensor]:
        """The partial sums Z and N of the two parts merged with a shared max shift:
        phi = (N_doc + N_inj) / (Z_doc + Z_inj); the documents' part once for every summary."""
        Sm = fill_masked(S, mask, float("-inf"))
        top_o = Sm.amax(-1)  # [n, Nq, T]; every document has a real patch
        E = ((Sm - top_o.unsqueeze(-1)) / self.tau).exp()  # 0 on masked patches (S there is finite)
        N_o, Z_o = (E * S).sum(-1), E.sum(-1)
        out = []
        for summary in summaries:
            top_i, Z_i, N_i = summary.unbind(-1)  # [Nq, T] each
            top = torch.maximum(top_o, top_i)
            a, b = ((top_o - top) / self.tau).exp(), ((top_i - top) / self.tau).exp()
            out.append((a * N_o + b * N_i) / (a * Z_o + b * Z_i))
        return out


@register
@dataclass(frozen=True)
class Mean(Pooling):
    """phi = mean of the valid S_j: gradient spread evenly (Gini 0)."""

    name: ClassVar[str] = "mean"

    @property
    def label(self) -> str:
        return "Mean"

    def reduce(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        return fill_masked(S, mask, 0.0).sum(-1) / valid_count(S, mask)

    def jacobian(self, S: Tensor, mask: Tensor | None = None) -> Tensor:
        ones = torch.ones_like(S) if mask is None else mask.expand_as(S).to(S.dtype)
        return ones / valid_count(S, mask).unsqueeze(-1)

    def block(self, S: Tensor, mask: Tensor | None, grad: bool, scratch: Tensor) -> Pooled | None:
        count = S.shape[-1] if mask is None else mask.sum(-1, keepdim=True).to(S.dtype)  # [n, 1, 1, 1]
        phi = fill_masked_(S, mask, 0.0).sum(-1) / (count if mask is None else count.squeeze(-1))
        if not grad:
            return phi, None
        return phi, (torch.ones_like(S) if mask is None else mask.expand_as(S).to(S.dtype)) / count

    def injected_summary(self, S_inj: Tensor) -> Tensor:
        """The injected part's sum and count: [Nq, T, 2]."""
        return torch.stack([S_inj.sum(-1), torch.full_like(S_inj[..., 0], S_inj.shape[-1])], dim=-1)

    def merged_many(self, S: Tensor, mask: Tensor | None, summaries: Sequence[Tensor]) -> list[Tensor]:
        own, n = fill_masked(S, mask, 0.0).sum(-1), S.shape[-1] if mask is None else mask.sum(-1)
        return [(own + total) / (n + count) for total, count in (s.unbind(-1) for s in summaries)]


def parse_pooling(spec: str | Pooling) -> Pooling:
    """``"maxsim" | "topk:K" | "softmax:TAU" | "mean" | ...`` (or a Pooling, returned as is) -> Pooling."""
    if isinstance(spec, Pooling):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"pooling must be a string spec or a Pooling, got {type(spec).__name__}")
    name, _, arg = spec.strip().lower().partition(":")
    if name not in _REGISTRY:
        raise ValueError(f"unknown pooling {spec!r}; valid names: {', '.join(available_poolings())}")
    return _REGISTRY[name](arg or None)


def _broadcast_mask(S: Tensor, mask: Tensor | None) -> Tensor | None:
    """Validate a patch mask [..., M] against S [..., T, M] and insert the T axis."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor [..., M] (True = real patch)")
    if mask.ndim < 1 or mask.shape[-1] != S.shape[-1]:
        raise ValueError(f"mask must have last dim M={S.shape[-1]}, got shape {tuple(mask.shape)}")
    m = mask.unsqueeze(-2)
    try:
        if torch.broadcast_shapes(m.shape, S.shape) != S.shape:  # a mask may not add batch dims to S
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not broadcast to S [..., T, M] = {tuple(S.shape)}"
        ) from None
    if bool((~mask.any(-1)).any()):
        raise ValueError("mask: a document has no valid patch (every entry False)")
    return m


def pool(S: Tensor, pooling: str | Pooling, mask: Tensor | None = None) -> Tensor:
    """Apply phi per query token: S [..., T, M], mask bool [..., M] (broadcastable) -> [..., T]."""
    p = parse_pooling(pooling)
    check_tensor("S", S, min_ndim=2)
    return p.pool_tokens(S, _broadcast_mask(S, mask))


def jacobian(S: Tensor, pooling: str | Pooling, mask: Tensor | None = None) -> Tensor:
    """Closed-form d phi_i / d S_ij for every token i: S [..., T, M] -> [..., T, M]."""
    p = parse_pooling(pooling)
    check_tensor("S", S, min_ndim=2)
    return p.jacobian(S, _broadcast_mask(S, mask))


def selection(S: Tensor, pooling: str | Pooling, mask: Tensor | None = None) -> Tensor:
    """Selection weights of every token over the patches (rows sum to 1): S [..., T, M] -> [..., T, M]."""
    p = parse_pooling(pooling)
    check_tensor("S", S, min_ndim=2)
    return p.selection(S, _broadcast_mask(S, mask))
