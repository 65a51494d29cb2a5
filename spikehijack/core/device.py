"""Device choice and determinism: one place for both."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (or a torch dtype) -> torch dtype; anything else is a ValueError."""
    out = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if out not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return out


@contextmanager
def default_dtype(dtype: str | torch.dtype) -> Iterator[torch.dtype]:
    """Within the block, tensors created without a dtype (data, weights) use ``dtype``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(as_dtype(dtype))
    try:
        yield torch.get_default_dtype()
    finally:
        torch.set_default_dtype(old)


def set_determinism(seed: int = 0, threads: int | None = 2, dtype: str | torch.dtype | None = None) -> torch.Generator:
    """Seed python, numpy and torch, pin thread counts and ask torch for deterministic kernels.

    Float32 reductions depend on the thread count, so notebooks and tests pin it (default 2). ``dtype`` (e.g.
    ``profiles.get(profile).precision``) sets torch's default floating dtype for the session.
    Returns a CPU ``torch.Generator`` seeded with ``seed`` for code that wants an explicit one.
    """
    if dtype is not None:
        torch.set_default_dtype(as_dtype(dtype))
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seed the legacy global RNG for third-party code)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)
