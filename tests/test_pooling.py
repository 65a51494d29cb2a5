"""Mathematical properties of the poolings phi (spikehijack.core.pooling), in float64."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pooling_cases import (
    assert_masked_values_are_ignored,
    assert_patch_permutation_invariant,
    autograd_jacobian,
    make_mask,
    make_S,
    seeds,
    shapes,
)

from spikehijack.core.pooling import available_poolings, jacobian, parse_pooling, pool, selection

SPECS = ["maxsim", "topk:1", "topk:3", "topk:50", "softmax:0.05", "softmax:1", "softmax:20", "mean"]

@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from(SPECS))
def test_permuting_patches_leaves_pool_unchanged(shape, seed, spec):
    B, T, M = shape
    assert_patch_permutation_invariant(make_S(B, T, M, seed), make_mask(B, M, seed), spec, seed, tol=1e-12)


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from(SPECS), st.sampled_from([-1e30, -1e6, 0.0, 3.0, 1e6, 1e30]))
def test_masked_patches_with_any_value_change_nothing(shape, seed, spec, junk):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    assert_masked_values_are_ignored(S, mask, spec, junk)


@settings(max_examples=30)
@given(shapes, seeds, st.booleans())
def test_top1_is_maxsim_and_topM_is_mean(shape, seed, masked):
    B, T, M = shape
    S = make_S(B, T, M, seed)
    mask = make_mask(B, M, seed) if masked else None
    torch.testing.assert_close(pool(S, "topk:1", mask), pool(S, "maxsim", mask), rtol=0, atol=1e-14)
    for k in (M, M + 1, 10 * M):  # k >= number of valid patches: the mean over the valid ones
        torch.testing.assert_close(pool(S, f"topk:{k}", mask), pool(S, "mean", mask), rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(shapes, seeds, st.booleans())
def test_ordering_maxsim_topk_softmax_mean(shape, seed, masked):
    B, T, M = shape
    S = make_S(B, T, M, seed)
    mask = make_mask(B, M, seed) if masked else None
    eps = 1e-12
    chain = [pool(S, "maxsim", mask)] + [pool(S, f"topk:{k}", mask) for k in range(2, M + 2)] + [pool(S, "mean", mask)]
    for hi, lo in zip(chain, chain[1:], strict=False):
        assert bool((hi >= lo - eps).all())
    # softmax pooling is monotone in tau: d phi / d(1/tau) = Var_w(S) >= 0
    soft = [pool(S, f"softmax:{t}", mask) for t in (1e-3, 0.1, 1.0, 10.0, 1e3)]
    chain = [pool(S, "maxsim", mask), *soft, pool(S, "mean", mask)]
    for hi, lo in zip(chain, chain[1:], strict=False):
        assert bool((hi >= lo - eps).all())


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from([1e-2, 1e-3, 1e-5]))
def test_softmax_tends_to_maxsim_as_tau_to_zero(shape, seed, tau):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    gap = pool(S, "maxsim", mask) - pool(S, f"softmax:{tau}", mask)
    # sum_j w_j (max - S_j) with w_j <= exp(-(max - S_j) / tau): each term <= tau / e
    assert bool((gap >= -1e-12).all()) and bool((gap <= (M - 1) * tau / math.e + 1e-12).all())


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from([1e2, 1e4, 1e8]))
def test_softmax_tends_to_mean_as_tau_to_infinity(shape, seed, tau):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    diff = pool(S, f"softmax:{tau}", mask) - pool(S, "mean", mask)
    # phi(1/tau) - phi(0) = int_0^{1/tau} Var_w(S) <= (range of S)^2 / (4 tau)
    rng = S.amax(-1) - S.amin(-1)  # >= the range over the valid patches
    assert bool((diff >= -1e-12).all())
    assert bool((diff <= rng**2 / (4 * tau) + 1e-12).all())


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("masked", [False, True])
def test_closed_form_jacobian_equals_autograd(spec, masked):
    B, T, M = 3, 4, 7
    S = make_S(B, T, M, 11)
    mask = make_mask(B, M, 11) if masked else None
    torch.testing.assert_close(jacobian(S, spec, mask), autograd_jacobian(S, spec, mask), rtol=1e-10, atol=1e-12)


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from(SPECS))
def test_selection_weights_are_a_distribution_over_valid_patches(shape, seed, spec):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    w = selection(S, spec, mask)
    assert w.shape == S.shape
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(B, T, dtype=w.dtype), rtol=0, atol=1e-12)
    assert bool((w.masked_select(~mask.unsqueeze(1).expand_as(w)) == 0).all())


def test_closed_forms_by_hand():
    S = torch.tensor([[0.9, 0.1, 0.5, 0.3]], dtype=torch.float64)
    assert pool(S, "maxsim").item() == pytest.approx(0.9)
    assert pool(S, "topk:2").item() == pytest.approx(0.7)
    assert pool(S, "mean").item() == pytest.approx(0.45)
    w = torch.softmax(S / 0.5, -1)
    phi = (w * S).sum()
    assert pool(S, "softmax:0.5").item() == pytest.approx(phi.item())
    torch.testing.assert_close(jacobian(S, "softmax:0.5"), w * (1 + (S - phi) / 0.5))
    torch.testing.assert_close(jacobian(S, "maxsim"), torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64))
    torch.testing.assert_close(jacobian(S, "topk:2"), torch.tensor([[0.5, 0, 0.5, 0]], dtype=torch.float64))
    # Top-k with fewer valid patches than k averages the valid ones
    mask = torch.tensor([False, True, False, True])
    assert pool(S, "topk:3", mask).item() == pytest.approx(0.2)


def test_parse_pooling_round_trip_and_registry():
    assert set(available_poolings()) >= {"maxsim", "topk", "softmax", "mean"}
    for spec in SPECS:
        p = parse_pooling(spec)
        assert parse_pooling(p.spec) == p
        assert parse_pooling(p) is p
        assert isinstance(p.label, str) and str(p) == p.spec
    assert parse_pooling(" MaxSim ").spec == "maxsim"
