"""Gini coefficient, patch-gradient norms and retrieval metrics (spikehijack.core.metrics)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spikehijack.core.gradients import score_grad_documents
from spikehijack.core.metrics import (
    gini,
    gold_rank,
    mrr,
    ndcg_at_k,
    patch_gradient_norms,
    recall_at_k,
    retrieval_metrics,
)
from spikehijack.core.scoring import score_matrix

seeds = st.integers(0, 2**31 - 1)
lengths = st.integers(1, 40)


def nonneg(M: int, seed: int, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, M, generator=g, dtype=torch.float64)
    return x * (torch.rand(batch, M, generator=g) < 0.7)  # some exact zeros


def gini_reference(x: torch.Tensor) -> float:
    """Mean absolute difference form: G = sum_ij |x_i - x_j| / (2 n^2 mean(x)); 0 for an all-zero vector."""
    x = x.double()
    if float(x.sum()) == 0:
        return 0.0
    return float((x[:, None] - x[None, :]).abs().sum() / (2 * x.numel() ** 2 * x.mean()))


# ---------------------------------------------------------------- gini


@settings(max_examples=40)
@given(lengths, st.integers(0, 39))
def test_gini_one_hot_constant_zero(M, j):
    x = torch.zeros(M, dtype=torch.float64)
    assert gini(x).item() == 0.0
    assert gini(torch.full((M,), 3.5)).item() == pytest.approx(0.0, abs=1e-7)
    x[j % M] = 2.0
    assert gini(x).item() == pytest.approx(1 - 1 / M, abs=1e-6)


@settings(max_examples=40)
@given(lengths, st.integers(1, 40), seeds)
def test_gini_n_of_M_equal_shares(M, n, seed):
    n = min(n, M)
    x = torch.zeros(M, dtype=torch.float64)
    x[torch.randperm(M, generator=torch.Generator().manual_seed(seed))[:n]] = 0.7
    assert gini(x).item() == pytest.approx(1 - n / M, abs=1e-6)


@settings(max_examples=40)
@given(lengths, seeds, st.sampled_from([1e-8, 0.3, 1.0, 7.0, 1e6]))
def test_gini_matches_reference_and_is_scale_and_permutation_invariant(M, seed, c):
    x = nonneg(M, seed)[0]
    G = gini(x).item()
    assert G == pytest.approx(gini_reference(x), abs=1e-6)
    assert 0.0 <= G <= 1 - 1 / M + 1e-6
    assert gini(c * x).item() == pytest.approx(G, abs=1e-6)
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(seed))
    assert gini(x[perm]).item() == pytest.approx(G, abs=1e-6)


@settings(max_examples=40)
@given(lengths, seeds, st.integers(1, 4))
def test_gini_with_mask_equals_gini_of_the_valid_subvector(M, seed, B):
    x = nonneg(M, seed, batch=B) * 5
    g = torch.Generator().manual_seed(seed + 7)
    mask = torch.rand(B, M, generator=g) < 0.6
    mask[:, 0] = True
    got = gini(x, mask=mask)
    assert got.shape == (B,)
    for b in range(B):
        assert got[b].item() == pytest.approx(gini_reference(x[b][mask[b]]), abs=1e-6)


def test_gini_along_another_dim():
    x = nonneg(6, 0, batch=3)
    torch.testing.assert_close(gini(x.T, dim=0), gini(x, dim=-1))
    torch.testing.assert_close(gini(x.T, dim=0, mask=(x > 0).T | torch.eye(6, 3, dtype=torch.bool)),
                               gini(x, mask=(x > 0) | torch.eye(3, 6, dtype=torch.bool)))


# ---------------------------------------------------------------- retrieval metrics


def test_single_gold_metrics_by_hand_with_pessimistic_ties():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.8], [0.3, 0.3, 0.3]])
    gold = torch.tensor([0, 2, 1])  # ranks 1, 2 (tie), 3 (all tied)
    assert gold_rank(scores, gold).tolist() == [1, 2, 3]
    assert recall_at_k(scores, gold, 1).item() == pytest.approx(1 / 3)
    assert recall_at_k(scores, gold, 2).item() == pytest.approx(2 / 3)
    assert recall_at_k(scores, gold, 3).item() == pytest.approx(1.0)
    assert recall_at_k(scores, gold, 10).item() == pytest.approx(1.0)
    assert mrr(scores, gold).item() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert ndcg_at_k(scores, gold, 5, reduction="none").tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.5])
    assert ndcg_at_k(scores, gold, 2, reduction="none").tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.0])
    assert recall_at_k(scores, gold.int(), 1, reduction="none").tolist() == [1.0, 0.0, 0.0]
    m = retrieval_metrics(scores, gold, ks=(1, 2))
    assert m == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "mrr": 11 / 18,
                               "ndcg@5": (1 + 1 / math.log2(3) + 0.5) / 3})


def test_multi_relevant_bool_gold_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    gold = torch.tensor([[False, True, False, True], [True, True, True, True]])
    assert recall_at_k(scores, gold, 1, reduction="none").tolist() == [0.0, 0.25]
    assert recall_at_k(scores, gold, 2, reduction="none").tolist() == [0.5, 0.5]
    assert recall_at_k(scores, gold, 4, reduction="none").tolist() == [1.0, 1.0]
    assert mrr(scores, gold, reduction="none").tolist() == [0.5, 1.0]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert ndcg_at_k(scores, gold, 5, reduction="none").tolist() == pytest.approx([dcg / (1 + 1 / math.log2(3)), 1.0])
    assert ndcg_at_k(scores, gold, 1, reduction="none").tolist() == pytest.approx([0.0, 1.0])


def test_constant_scorer_gets_the_worst_rank():
    scores = torch.zeros(4, 10)
    gold = torch.tensor([0, 3, 5, 9])
    assert gold_rank(scores, gold).tolist() == [10] * 4
    assert recall_at_k(scores, gold, 5).item() == 0.0


# ---------------------------------------------------------------- patch gradient norms


def unit_batch(B, T, M, d, seed):
    g = torch.Generator().manual_seed(seed)
    Q = F.normalize(torch.randn(B, T, d, generator=g, dtype=torch.float64), dim=-1)
    D = F.normalize(torch.randn(B, M, d, generator=g, dtype=torch.float64), dim=-1)
    d_mask = torch.rand(B, M, generator=g) < 0.8
    d_mask[:, 0] = True
    q_mask = torch.rand(B, T, generator=g) < 0.8
    q_mask[:, 0] = True
    return Q, D, q_mask, d_mask


@pytest.mark.parametrize("spec", ["maxsim", "topk:4", "softmax:0.1", "mean"])
def test_pair_reading_is_p_aa_minus_one_times_the_score_gradient(spec):
    Q, D, qm, dm = unit_batch(6, 5, 20, 8, seed=1)
    g = patch_gradient_norms(Q, D, spec, qm, dm, loss="pair")
    p_aa = torch.softmax(score_matrix(Q, D, spec, qm, dm), dim=1).diagonal()
    expect = (1 - p_aa).unsqueeze(-1) * score_grad_documents(Q, D, spec, qm, dm).norm(dim=-1)
    torch.testing.assert_close(g, expect, rtol=1e-9, atol=1e-12)
    assert bool((g[~dm] == 0).all())


@pytest.mark.parametrize("T,M", [(4, 16), (16, 64), (3, 200)])
def test_maxsim_pair_gradient_support_and_gini_bound(T, M):
    Q, D, _, _ = unit_batch(5, T, M, 16, seed=T + M)
    g = patch_gradient_norms(Q, D, "maxsim", loss="pair")
    assert bool(((g > 0).sum(-1) <= T).all())
    assert bool((gini(g) >= 1 - T / M - 1e-6).all())


@pytest.mark.parametrize("spec", ["maxsim", "topk:3", "softmax:0.5"])
def test_infonce_reading_matches_autograd_of_the_full_loss(spec):
    Q, D, qm, dm = unit_batch(5, 4, 10, 6, seed=4)
    D_ = D.clone().requires_grad_(True)
    Z = score_matrix(Q, D_, spec, qm, dm)
    (grad,) = torch.autograd.grad(F.cross_entropy(Z, torch.arange(5)), D_)
    g = patch_gradient_norms(Q, D, spec, qm, dm, loss="infonce")
    torch.testing.assert_close(g, grad.norm(dim=-1).masked_fill(~dm, 0.0), rtol=1e-9, atol=1e-12)


def test_patch_gradient_norms_leave_the_callers_graph_alone():
    Q, D, _, _ = unit_batch(3, 2, 5, 4, seed=0)
    Q.requires_grad_(True)
    D.requires_grad_(True)
    g = patch_gradient_norms(Q, D, "maxsim")
    assert Q.grad is None and D.grad is None and not g.requires_grad
    with pytest.raises(ValueError, match="loss"):
        patch_gradient_norms(Q, D, "maxsim", loss="batch")
