"""Closed-form gradients of the score (spikehijack.core.gradients) against autograd, in float64, with masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikehijack.core.gradients import pooling_jacobian, score_grad_documents, score_grad_queries
from spikehijack.core.scoring import score_pairs

SPECS = [
    "maxsim", "topk:1", "topk:2", "topk:5", "topk:100",
    "softmax:0.01", "softmax:0.1", "softmax:1", "softmax:10", "mean",
]


def make_pairs(N, T, M, d, seed):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(N, T, d, generator=g, dtype=torch.float64)
    D = torch.randn(N, M, d, generator=g, dtype=torch.float64)
    q_mask = torch.rand(N, T, generator=g) < 0.7
    q_mask[:, 0] = True
    d_mask = torch.rand(N, M, generator=g) < 0.6
    d_mask[:, -1] = True
    return Q, D, q_mask, d_mask


def autograd_grads(Q, D, spec, qm, dm):
    Q_, D_ = Q.clone().requires_grad_(True), D.clone().requires_grad_(True)
    return torch.autograd.grad(score_pairs(Q_, D_, spec, qm, dm).sum(), (Q_, D_))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("masked", [False, True])
def test_closed_form_equals_autograd(spec, masked):
    Q, D, qm, dm = make_pairs(5, 6, 9, 4, seed=3)
    qm, dm = (qm, dm) if masked else (None, None)
    gQ, gD = autograd_grads(Q, D, spec, qm, dm)
    torch.testing.assert_close(score_grad_documents(Q, D, spec, qm, dm), gD, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(score_grad_queries(Q, D, spec, qm, dm), gQ, rtol=1e-10, atol=1e-12)


@settings(max_examples=30)
@given(st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 8), st.integers(1, 4)),
       st.integers(0, 2**31 - 1), st.sampled_from(SPECS))
def test_closed_form_equals_autograd_any_shape(shape, seed, spec):
    Q, D, qm, dm = make_pairs(*shape, seed)
    gQ, gD = autograd_grads(Q, D, spec, qm, dm)
    torch.testing.assert_close(score_grad_documents(Q, D, spec, qm, dm), gD, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(score_grad_queries(Q, D, spec, qm, dm), gQ, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS)
def test_every_valid_token_distributes_exactly_one_unit(spec):
    # MaxSim: one-hot; Top-k: 1/k on k patches; mean: 1/M; softmax: sum_j w_j (1 + (S_j - phi)/tau) = 1
    Q, D, qm, dm = make_pairs(4, 5, 7, 3, seed=5)
    J = pooling_jacobian(Q, D, spec, qm, dm)
    torch.testing.assert_close(J.sum(-1), qm.to(J.dtype), rtol=0, atol=1e-12)
    assert bool((J.masked_select(~dm.unsqueeze(1).expand_as(J)) == 0).all())


def test_sparsity_of_the_jacobian():
    Q, D, qm, dm = make_pairs(6, 5, 12, 4, seed=7)
    n_valid = dm.sum(-1, keepdim=True)  # [N, 1]
    nnz = lambda J: (J != 0).sum(-1)  # noqa: E731
    assert bool((nnz(pooling_jacobian(Q, D, "maxsim", qm, dm)) == qm.long()).all())
    for k in (1, 3, 20):
        J = pooling_jacobian(Q, D, f"topk:{k}", qm, dm)
        expect = torch.minimum(n_valid, torch.tensor(k)) * qm.long()
        assert bool((nnz(J) == expect).all())
        share = (1.0 / torch.minimum(n_valid, torch.tensor(k))).to(J.dtype).unsqueeze(-1).expand_as(J)
        torch.testing.assert_close(J[J != 0], share[J != 0])
    # softmax reaches every valid patch of every valid token (generic inputs)
    J = pooling_jacobian(Q, D, "softmax:1", qm, dm)
    assert bool((nnz(J) == n_valid * qm.long()).all())


def test_softmax_jacobian_formula():
    Q, D, _, dm = make_pairs(3, 4, 6, 5, seed=9)
    tau = 0.3
    S = torch.einsum("ntc,nmc->ntm", Q, D).masked_fill(~dm.unsqueeze(1), float("-inf"))
    w = torch.softmax(S / tau, -1)
    S0 = S.masked_fill(~dm.unsqueeze(1), 0.0)
    phi = (w * S0).sum(-1, keepdim=True)
    torch.testing.assert_close(pooling_jacobian(Q, D, f"softmax:{tau}", d_mask=dm), w * (1 + (S0 - phi) / tau))


def test_maxsim_gradient_reaches_at_most_T_patches():
    N, T, M = 8, 4, 30
    Q, D, _, _ = make_pairs(N, T, M, 6, seed=2)
    g = score_grad_documents(Q, D, "maxsim").norm(dim=-1)  # [N, M]
    assert bool(((g > 0).sum(-1) <= T).all())
