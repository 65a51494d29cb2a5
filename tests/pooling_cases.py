"""Shared hypothesis strategies and builders for the pooling property tests (test_pooling, test_robust)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from spikehijack.core.pooling import pool

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 8))  # (B, T, M)
seeds = st.integers(0, 2**31 - 1)


def make_S(B: int, T: int, M: int, seed: int) -> torch.Tensor:
    """Random float64 similarities [B, T, M]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, M, generator=g, dtype=torch.float64)


def make_mask(B: int, M: int, seed: int) -> torch.Tensor:
    """A random patch mask [B, M] with at least one True per row."""
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(B, M, generator=g) < 0.6
    mask[torch.arange(B), torch.randint(0, M, (B,), generator=g)] = True
    return mask


def autograd_jacobian(S: torch.Tensor, spec: str, mask: torch.Tensor | None) -> torch.Tensor:
    """d pool / d S by autograd, the reference for every closed form."""
    S_ = S.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pool(S_, spec, mask).sum(), S_)
    return g


def assert_patch_permutation_invariant(S: torch.Tensor, mask: torch.Tensor, spec: str, seed: int, tol: float) -> None:
    """Permuting the M patches of S [B, T, M] (and the mask with them) leaves every token's pooled value unchanged."""
    perm = torch.randperm(S.shape[-1], generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(pool(S[..., perm], spec, mask[:, perm]), pool(S, spec, mask), rtol=tol, atol=tol)


def assert_masked_values_are_ignored(S: torch.Tensor, mask: torch.Tensor, spec: str, junk: float) -> None:
    """Filling the masked patches of S [B, T, M] with ``junk`` changes no value, gradient or selection."""
    from spikehijack.core.pooling import jacobian, selection

    S2 = S.masked_fill(~mask.unsqueeze(1), junk)
    torch.testing.assert_close(pool(S2, spec, mask), pool(S, spec, mask), rtol=1e-12, atol=1e-12)
    J, J2 = autograd_jacobian(S, spec, mask), autograd_jacobian(S2, spec, mask)
    torch.testing.assert_close(J2, J, rtol=1e-12, atol=1e-12)
    assert bool((J2.masked_select(~mask.unsqueeze(1).expand_as(J2)) == 0).all())
    torch.testing.assert_close(jacobian(S2, spec, mask), jacobian(S, spec, mask), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(selection(S2, spec, mask), selection(S, spec, mask), rtol=1e-12, atol=1e-12)
