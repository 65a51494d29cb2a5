"""Poolings beyond the paper (spikehijack.core.robust): properties, limits, gradients and validation, in float64."""

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
from spikehijack.core.robust import Capacity, expected_max_normal, expected_max_normal_tensor
from spikehijack.core.scoring import pad, score_matrix, score_pairs

SPECS = [
    "lcmaxsim", "lcmaxsim:0.25", "trimmed:1:0", "trimmed:4:1", "trimmed:3:2", "medtopk:1", "medtopk:4",
    "medtopk:5", "capacity:1:0.1:15", "capacity:2:0.05:10", "capacity:0.5:0.2:5",
]
TOKEN_WISE = [s for s in SPECS if not s.startswith("capacity")]

# --- registry, specs, labels ------------------------------------------------------------------------------
def test_registered_and_specs_round_trip():
    assert {"lcmaxsim", "capacity", "trimmed", "medtopk"} <= set(available_poolings())
    for spec in SPECS + ["capacity", "capacity:1", "trimmed:4", "lcmaxsim:auto"]:
        p = parse_pooling(spec)
        assert parse_pooling(p.spec) == p
        assert isinstance(p.label, str) and p.label
    assert parse_pooling("trimmed:4").spec == "trimmed:4:1"
    assert parse_pooling("capacity:1") == Capacity(1.0, 0.05, 20)
    assert parse_pooling("lcmaxsim:auto").spec == "lcmaxsim"


@pytest.mark.parametrize(
    "spec",
    ["lcmaxsim:0", "lcmaxsim:-1", "lcmaxsim:x", "lcmaxsim:1:2", "trimmed", "trimmed:2:2", "trimmed:0",
     "trimmed:4:-1", "trimmed:a", "trimmed:4:1:1", "medtopk", "medtopk:0", "medtopk:2.5", "capacity:0",
     "capacity:1:0", "capacity:1:0.1:-1", "capacity:1:x", "capacity:1:0.1:5:5", "capacity:nan", "capacity:1::5"],
)
def test_bad_specs_raise_value_error(spec):
    with pytest.raises(ValueError):
        parse_pooling(spec)


def test_bad_inputs_raise_like_the_core_poolings():
    S = torch.randn(2, 3, 4)
    for spec in ["lcmaxsim", "capacity:1", "trimmed:3", "medtopk:3"]:
        with pytest.raises(TypeError):
            pool(S.long(), spec)
        with pytest.raises(ValueError):
            pool(torch.randn(4), spec)
        with pytest.raises(ValueError):
            pool(S.masked_fill(S > 1, float("nan")).index_fill(-1, torch.tensor([0]), float("nan")), spec)
        with pytest.raises(TypeError):
            pool(S, spec, mask=torch.ones(2, 4))
        with pytest.raises(ValueError):
            pool(S, spec, mask=torch.ones(2, 5, dtype=torch.bool))
        with pytest.raises(ValueError):
            pool(S, spec, mask=torch.tensor([[True] * 4, [False] * 4]))


# --- invariances ------------------------------------------------------------------------------------------
@settings(max_examples=25)
@given(shapes, seeds, st.sampled_from(SPECS))
def test_permuting_patches_leaves_pool_unchanged(shape, seed, spec):
    B, T, M = shape
    assert_patch_permutation_invariant(make_S(B, T, M, seed), make_mask(B, M, seed), spec, seed, tol=1e-10)


@settings(max_examples=25)
@given(shapes, seeds, st.sampled_from(SPECS))
def test_permuting_query_tokens_permutes_the_output(shape, seed, spec):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(pool(S[:, perm], spec, mask), pool(S, spec, mask)[:, perm], rtol=1e-10, atol=1e-10)


@settings(max_examples=25)
@given(shapes, seeds, st.sampled_from(SPECS), st.sampled_from([-1e30, -1e6, 0.0, 3.0, 1e6, 1e30]))
def test_masked_patches_with_any_value_change_nothing(shape, seed, spec, junk):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    assert_masked_values_are_ignored(S, mask, spec, junk)


@pytest.mark.parametrize("spec", SPECS)
def test_padding_documents_changes_no_score(spec):
    g = torch.Generator().manual_seed(3)
    Q = torch.nn.functional.normalize(torch.randn(4, 5, 8, generator=g, dtype=torch.float64), dim=-1)
    docs = [torch.nn.functional.normalize(torch.randn(m, 8, generator=g, dtype=torch.float64), dim=-1)
            for m in (3, 7, 12)]
    D, mask = pad(docs)
    D2, mask2 = pad(docs, length=20)
    D2 = D2 + (~mask2).unsqueeze(-1) * 5.0  # junk in the padding
    full = score_matrix(Q, D, spec, d_mask=mask)
    torch.testing.assert_close(score_matrix(Q, D2, spec, d_mask=mask2), full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score_matrix(Q, D2, spec, d_mask=mask2, chunk_size=2), full, rtol=1e-10, atol=1e-10)
    for i, d in enumerate(docs):  # one document alone, unpadded
        alone = score_matrix(Q, d.unsqueeze(0), spec)[:, 0]
        torch.testing.assert_close(full[:, i], alone, rtol=1e-10, atol=1e-10)
    pairs = score_pairs(Q[:3], D2, spec, d_mask=mask2)
    torch.testing.assert_close(pairs, full[:3].diagonal(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spec", SPECS)
def test_zero_padded_query_tokens_change_nothing(spec):
    g = torch.Generator().manual_seed(4)
    q = torch.nn.functional.normalize(torch.randn(1, 5, 8, generator=g, dtype=torch.float64), dim=-1)
    D = torch.nn.functional.normalize(torch.randn(6, 4, 8, generator=g, dtype=torch.float64), dim=-1)
    Qp, q_mask = pad([q[0]], length=9)
    torch.testing.assert_close(score_matrix(Qp, D, spec, q_mask=q_mask), score_matrix(q, D, spec))


# --- reductions to known poolings ---------------------------------------------------------------------------
@settings(max_examples=25)
@given(shapes, seeds)
def test_limits_reduce_to_known_poolings(shape, seed):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    close = lambda a, b, tol=1e-10: torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    close(pool(S, "trimmed:1:0", mask), pool(S, "maxsim", mask))
    close(pool(S, "trimmed:3:0", mask), pool(S, "topk:3", mask))
    close(pool(S, "medtopk:1", mask), pool(S, "maxsim", mask))
    close(pool(S, "lcmaxsim:1e-12", mask), pool(S, "maxsim", mask))
    # capacity never binding (C >= T): exactly softmax pooling with tau = eps
    close(pool(S, f"capacity:{T}:0.3:7", mask), pool(S, "softmax:0.3", mask))
    close(selection(S, f"capacity:{T}:0.3:7", mask), selection(S, "softmax:0.3", mask))
    # zero iterations: softmax whatever the capacity
    close(pool(S, "capacity:0.5:0.3:0", mask), pool(S, "softmax:0.3", mask))


def test_trimmed_and_median_by_hand():
    S = torch.tensor([[[0.9, 0.1, 0.5, 0.3, 0.7]]], dtype=torch.float64)
    assert pool(S, "trimmed:3:1").item() == pytest.approx((0.7 + 0.5) / 2)
    assert pool(S, "trimmed:5:2").item() == pytest.approx((0.5 + 0.3 + 0.1) / 3)
    assert pool(S, "medtopk:3").item() == pytest.approx(0.7)
    assert pool(S, "medtopk:4").item() == pytest.approx((0.7 + 0.5) / 2)
    mask = torch.tensor([[True, False, True, False, False]])  # valid: 0.9, 0.5
    assert pool(S, "trimmed:4:1", mask).item() == pytest.approx(0.5)
    assert pool(S, "trimmed:4:3", mask).item() == pytest.approx(0.5)  # the smallest valid entry remains
    assert pool(S, "medtopk:5", mask).item() == pytest.approx(0.7)
    assert selection(S, "trimmed:3:1")[0, 0].tolist() == pytest.approx([0, 0, 0.5, 0, 0.5])


def test_trimmed_ignores_a_single_spike_that_maxsim_follows():
    S = torch.tensor([[[0.2, 0.3, 0.25, 0.28]]], dtype=torch.float64)
    spiked = torch.cat([S, torch.tensor([[[5.0]]], dtype=torch.float64)], -1)
    assert pool(spiked, "maxsim").item() == 5.0
    assert pool(spiked, "trimmed:3:1").item() == pytest.approx(pool(S, "topk:2").item())


def test_capacity_hard_assignment_limit():
    # Two tokens both prefer patch 0; with capacity 1 and small eps the second token must take patch 1.
    S = torch.tensor([[[0.9, 0.5, 0.0], [0.8, 0.0, 0.6]]], dtype=torch.float64)
    phi = pool(S, "capacity:1:0.005:300")
    # optimal assignment: token0->patch1 (0.5)+token1->patch0 (0.8)=1.3 vs token0->0 (0.9)+token1->2 (0.6)=1.5
    torch.testing.assert_close(phi, torch.tensor([[0.9, 0.6]], dtype=torch.float64), atol=1e-3, rtol=0)
    assert pool(S, "maxsim").tolist() == [[0.9, 0.8]]


@settings(max_examples=20)
@given(shapes, seeds, st.sampled_from([0.5, 1.0, 2.0]))
def test_capacity_plan_is_feasible(shape, seed, cap):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed)
    P = Capacity(cap, eps=0.5, iters=300).plan(S, mask.unsqueeze(1))
    torch.testing.assert_close(P.sum(-1), torch.ones(B, T, dtype=torch.float64))
    limit = torch.clamp(torch.full((B,), cap, dtype=torch.float64), min=T / mask.sum(-1))
    assert bool((P.sum(-2) <= limit.unsqueeze(-1) + 1e-3).all())
    assert bool((P.masked_select(~mask.unsqueeze(1).expand_as(P)) == 0).all())


@settings(max_examples=20)
@given(shapes, seeds, st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from([0.05, 0.3]))
def test_capacity_log_domain_and_scaling_forms_agree(shape, seed, cap, eps):
    B, T, M = shape
    S, mask = make_S(B, T, M, seed), make_mask(B, M, seed).unsqueeze(1)
    p = Capacity(cap, eps, 12)
    torch.testing.assert_close(p.plan(S, mask, log_domain=True), p.plan(S, mask, log_domain=False))
    S_ = S.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad((p.plan(S_, mask, log_domain=True) * S).sum(), S_)
    (g2,) = torch.autograd.grad((p.plan(S_, mask, log_domain=False) * S).sum(), S_)
    torch.testing.assert_close(g1, g2)


def test_capacity_limits_how_many_tokens_one_spike_answers():
    # Patch 0 is a spike close to all four tokens; MaxSim lets it answer all four, capacity 1 about one.
    S = torch.full((1, 4, 6), 0.1, dtype=torch.float64)
    S[..., 0] = 0.9
    S[0, torch.arange(4), torch.arange(1, 5)] = 0.7
    sel_max = selection(S, "maxsim")[..., 0].sum().item()
    sel_cap = selection(S, "capacity:1:0.02:200")[..., 0].sum().item()
    assert sel_max == 4.0
    assert sel_cap == pytest.approx(1.0, abs=0.05)


# --- length calibration -----------------------------------------------------------------------------------
def test_expected_max_normal_values():
    assert expected_max_normal(1) == 0.0
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)
    assert expected_max_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-9)
    vals = [expected_max_normal(n) for n in (1, 2, 8, 64, 766, 5000)]
    assert vals == sorted(vals)
    g = torch.Generator().manual_seed(0)
    mc = torch.randn(20000, 64, generator=g, dtype=torch.float64).amax(-1).mean().item()
    assert expected_max_normal(64) == pytest.approx(mc, abs=0.01)
    t = expected_max_normal_tensor(torch.tensor([[1.0, 2.0], [64.0, 2.0]]))
    assert t.shape == (2, 2) and t[0, 1] == t[1, 1]
    with pytest.raises(ValueError):
        expected_max_normal(0)
    with pytest.raises(ValueError):
        expected_max_normal_tensor(torch.tensor([0.0]))


def test_length_calibration_removes_the_long_document_advantage():
    # Pure-noise documents of growing length: MaxSim's mean score grows with M, LC-MaxSim's stays flat.
    g = torch.Generator().manual_seed(1)
    sigma, T = 0.25, 16
    means = {}
    for spec in ["maxsim", f"lcmaxsim:{sigma}", "lcmaxsim"]:
        means[spec] = [pool(sigma * torch.randn(400, T, M, generator=g, dtype=torch.float64), spec).mean().item()
                       for M in (8, 64, 512)]
    assert means["maxsim"][2] - means["maxsim"][0] > 0.4
    for spec in [f"lcmaxsim:{sigma}", "lcmaxsim"]:
        assert max(means[spec]) - min(means[spec]) < 0.05, means[spec]


def test_lcmaxsim_equal_lengths_rank_like_maxsim():
    g = torch.Generator().manual_seed(2)
    Q, D = torch.randn(5, 4, 8, generator=g), torch.randn(7, 6, 8, generator=g)
    diff = score_matrix(Q, D, "maxsim") - score_matrix(Q, D, "lcmaxsim:0.3")
    torch.testing.assert_close(diff, torch.full_like(diff, 4 * 0.3 * expected_max_normal(6)))


# --- gradients ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", TOKEN_WISE)
def test_closed_form_jacobian_matches_autograd(spec):
    for seed in range(5):
        S, mask = make_S(2, 3, 7, seed), make_mask(2, 7, seed)
        torch.testing.assert_close(jacobian(S, spec, mask), autograd_jacobian(S, spec, mask), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", [s for s in SPECS if s != "lcmaxsim"])
def test_gradient_matches_finite_differences(spec):
    # Generic points (no ties), float64: autograd against central differences. (Estimated-sigma LC-MaxSim
    # is excluded by design: its calibration term is stop-gradient, see the next test.)
    for seed in range(3):
        S, mask = make_S(2, 3, 6, seed), make_mask(2, 6, seed)
        p = parse_pooling(spec)
        f = lambda x, p=p, mask=mask: pool(x, p, mask)
        assert torch.autograd.gradcheck(f, (S.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_lcmaxsim_trains_with_maxsim_gradient():
    S, mask = make_S(2, 3, 7, 5), make_mask(2, 7, 5)
    for spec in ["lcmaxsim", "lcmaxsim:0.2"]:
        torch.testing.assert_close(autograd_jacobian(S, spec, mask), autograd_jacobian(S, "maxsim", mask))


@pytest.mark.parametrize("spec", ["lcmaxsim", "trimmed:4:1", "medtopk:5", "capacity:1:0.05:20"])
def test_selection_rows_are_distributions(spec):
    S, mask = make_S(3, 4, 9, 0), make_mask(3, 9, 0)
    sel = selection(S, spec, mask)
    assert bool((sel >= 0).all())
    torch.testing.assert_close(sel.sum(-1), torch.ones(3, 4, dtype=torch.float64))


def test_capacity_is_stable_in_float32_at_small_eps():
    S = torch.randn(2, 16, 300) * 3
    S.requires_grad_(True)
    out = pool(S, "capacity:1:0.001:30")
    out.sum().backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(S.grad).all())
