"""Input validation shared by every public function: clear errors naming the argument and what was expected."""

from __future__ import annotations

import torch
from torch import Tensor


def check_tensor(name: str, x: object, ndim: int | None = None, min_ndim: int | None = None) -> Tensor:
    """Raise unless ``x`` is a finite floating tensor of the given rank."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    lo, hi = torch.aminmax(x.detach())  # one read pass, no bool copy of x; nan propagates to both
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_mask(name: str, mask: Tensor | None, shape: tuple[int, ...], what: str) -> Tensor | None:
    """Raise unless ``mask`` is a bool tensor of exactly ``shape`` with at least one True per row.

    ``what`` names a row in the error message ("document", "query").
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = real vector), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):
        idx = torch.nonzero(empty).flatten()[:5].tolist()
        raise ValueError(f"{name}: {int(empty.sum())} {what}(s) have no valid vector (e.g. rows {idx})")
    return mask


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive_float(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0) or v != v or v == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v
