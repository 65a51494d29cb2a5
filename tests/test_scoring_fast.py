"""The fast chunked scoring path (patch-axis pooling, in-place when no gradient) against the plain definition."""

from __future__ import annotations

import pytest
import torch

import spikehijack.core.scoring as scoring
from spikehijack.core.pooling import parse_pooling
from spikehijack.core.scoring import score_matrix

SPECS = ["maxsim", "topk:1", "topk:3", "topk:50", "softmax:0.05", "softmax:1", "mean"]


def reference(Q, D, spec, q_mask=None, d_mask=None):
    """The whole block S [Nq, T, Nd, M] at once, pooled with ``Pooling.reduce`` over its last axis."""
    S = torch.einsum("qtc,nmc->qtnm", Q, D)
    S = S.float() if S.dtype in (torch.float16, torch.bfloat16) else S
    phi = parse_pooling(spec).reduce(S, d_mask)  # [Nq, T, Nd]
    if q_mask is not None:
        phi = torch.where(q_mask.unsqueeze(-1), phi, torch.zeros((), dtype=phi.dtype))
    return phi.sum(1)


def batch(Nq=3, Nd=7, T=4, M=9, d=6, seed=0, dtype=torch.float64, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integer vectors: many exactly equal similarities
        Q = torch.randint(-1, 2, (Nq, T, d), generator=g).to(dtype)
        D = torch.randint(-1, 2, (Nd, M, d), generator=g).to(dtype)
    else:
        Q, D = torch.randn(Nq, T, d, generator=g, dtype=dtype), torch.randn(Nd, M, d, generator=g, dtype=dtype)
    q_mask = torch.rand(Nq, T, generator=g) < 0.7
    q_mask[:, 0] = True
    d_mask = torch.rand(Nd, M, generator=g) < 0.5
    d_mask[:, -1] = True
    return Q, D, q_mask, d_mask


def grads(fn, Q, D):
    Q_, D_ = Q.clone().requires_grad_(True), D.clone().requires_grad_(True)
    Z = fn(Q_, D_)
    w = torch.linspace(-1, 2, Z.numel(), dtype=Z.dtype).view_as(Z)
    return (Z.detach(), *torch.autograd.grad((w * Z).sum(), (Q_, D_)))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_fast_path_equals_reference_without_grad(spec, masked, chunk):
    Q, D, qm, dm = batch()
    qm, dm = (qm, dm) if masked else (None, None)
    Q0, D0 = Q.clone(), D.clone()
    with torch.no_grad():
        Z = score_matrix(Q, D, spec, qm, dm, chunk_size=chunk)
    torch.testing.assert_close(Z, reference(Q, D, spec, qm, dm), rtol=1e-12, atol=1e-12)
    assert torch.equal(Q, Q0) and torch.equal(D, D0)  # in-place pooling never touches the inputs


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("ties", [False, True])
def test_fast_path_gradients_equal_reference(spec, ties):
    Q, D, qm, dm = batch(ties=ties)
    fast = grads(lambda q, d: score_matrix(q, d, spec, qm, dm, chunk_size=2), Q, D)
    ref = grads(lambda q, d: reference(q, d, spec, qm, dm), Q, D)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert bool((fast[1][~qm] == 0).all()) and bool((fast[2][~dm] == 0).all())


@pytest.mark.parametrize("spec", SPECS)
def test_float32_fast_path_matches_float64(spec):
    Q, D, qm, dm = batch(Nq=2, Nd=40, T=8, M=33, d=16, seed=1)
    Z32 = score_matrix(Q.float(), D.float(), spec, qm, dm)
    assert Z32.dtype == torch.float32
    torch.testing.assert_close(Z32.double(), reference(Q, D, spec, qm, dm), rtol=1e-5, atol=1e-5)


def test_automatic_chunk_is_cache_sized_and_does_not_change_scores(monkeypatch):
    n = scoring.auto_chunk_size(Nd=100_000, M=512, rows=32)
    assert n * 512 * 32 <= scoring.AUTO_CHUNK_ELEMENTS < (n + 1) * 512 * 32  # fills the budget
    assert scoring.auto_chunk_size(Nd=3, M=512, rows=32) == 3  # never more than the corpus
    assert scoring.auto_chunk_size(Nd=1000, M=4096, rows=4096) == 1  # at least one document
    Q, D, qm, dm = batch(Nd=11)
    full = score_matrix(Q, D, "softmax:0.1", qm, dm)
    monkeypatch.setattr(scoring, "AUTO_CHUNK_ELEMENTS", 50)  # a few documents per chunk
    torch.testing.assert_close(score_matrix(Q, D, "softmax:0.1", qm, dm), full, rtol=1e-12, atol=1e-12)


def test_grad_enabled_without_leaf_grads_takes_the_in_place_path_safely():
    Q, D, qm, dm = batch()
    Z = score_matrix(Q, D, "topk:3", qm, dm)  # grad mode on, nothing requires grad
    assert not Z.requires_grad
    torch.testing.assert_close(Z, reference(Q, D, "topk:3", qm, dm), rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        torch.testing.assert_close(score_matrix(Q, D, "maxsim", qm, dm), reference(Q, D, "maxsim", qm, dm))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_fast_path_pools_in_float32(dtype):
    Q, D, qm, dm = batch(dtype=torch.float32)
    for spec in ("maxsim", "topk:3", "softmax:0.5"):
        Z = score_matrix(Q.to(dtype), D.to(dtype), spec, qm, dm)
        assert Z.dtype == torch.float32
        torch.testing.assert_close(Z, reference(Q.to(dtype), D.to(dtype), spec, qm, dm), rtol=1e-3, atol=1e-3)


def test_softmax_is_stable_for_large_similarities_and_tiny_tau():
    Q, D, qm, dm = batch()
    Z = score_matrix(Q * 30, D * 30, "softmax:0.001", qm, dm)
    assert bool(torch.isfinite(Z).all())
    torch.testing.assert_close(Z, reference(Q * 30, D * 30, "softmax:0.001", qm, dm), rtol=1e-9, atol=1e-9)


def test_other_poolings_keep_their_own_path_and_chunking_does_not_change_them(monkeypatch):
    from spikehijack.core.robust import robust_poolings

    Q, D, qm, dm = batch(Nd=5)
    monkeypatch.setattr(scoring, "AUTO_CHUNK_ELEMENTS", 100)  # one or two documents per chunk
    for spec in robust_poolings():
        one_block = score_matrix(Q, D, spec, qm, dm, chunk_size=D.shape[0])
        torch.testing.assert_close(score_matrix(Q, D, spec, qm, dm), one_block, rtol=1e-12, atol=1e-12)
