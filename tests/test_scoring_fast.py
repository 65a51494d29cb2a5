"""The block kernels of scoring and injection (in place when no gradient) against the plain definition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spikehijack.core.kernels as kernels
import spikehijack.core.scoring as scoring
from spikehijack.core.pooling import Pooling, parse_pooling
from spikehijack.core.robust import robust_poolings
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
    assert n * 512 * 32 <= kernels.block_budget("cpu") < (n + 1) * 512 * 32  # fills the budget
    assert scoring.auto_chunk_size(Nd=3, M=512, rows=32) == 3  # never more than the corpus
    assert scoring.auto_chunk_size(Nd=1000, M=4096, rows=4096) == 1  # at least one document
    Q, D, qm, dm = batch(Nd=11)
    full = score_matrix(Q, D, "softmax:0.1", qm, dm)
    monkeypatch.setattr(kernels, "CPU_BLOCK_ELEMENTS", 50)  # a few documents per chunk
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


def test_chunking_does_not_change_the_robust_poolings(monkeypatch):
    Q, D, qm, dm = batch(Nd=5)
    monkeypatch.setattr(kernels, "CPU_BLOCK_ELEMENTS", 100)  # one or two documents per chunk
    for spec in robust_poolings():
        one_block = score_matrix(Q, D, spec, qm, dm, chunk_size=D.shape[0])
        torch.testing.assert_close(score_matrix(Q, D, spec, qm, dm), one_block, rtol=1e-12, atol=1e-12)


ALL = SPECS + robust_poolings() + ["trimmed:9:2", "medtopk:2"]


def block_world(n, Nq, T, M, K, seed, ties):
    """A similarity block S [n, Nq, T, M] with a patch mask [n, 1, 1, M] and injected similarities [Nq, T, K]."""
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(n, Nq, T, M, generator=g, dtype=torch.float64)
    S_inj = torch.randn(Nq, T, K, generator=g, dtype=torch.float64)
    if ties:
        S, S_inj = torch.round(S * 2) / 2, torch.round(S_inj * 2) / 2
    mask = torch.rand(n, 1, 1, M, generator=g) < 0.6
    mask[..., 0] = True
    return S, mask, S_inj


@settings(max_examples=40)
@given(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 6)),
       st.integers(0, 2**31 - 1), st.sampled_from(ALL), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_block_kernels_equal_the_definition(shape, seed, spec, ties, grad, masked, patch_major):
    """Pooling.block either declines or gives reference_block's phi and W (token-wise poolings only get grad),
    on blocks stored token-major or patch-major (a [n, Nq, T, M] view of [n, M, Nq * T] storage)."""
    n, Nq, T, M, _ = shape
    S, mask, _ = block_world(*shape, seed, ties)
    mask = mask if masked else None
    p = parse_pooling(spec)
    grad = grad and p.token_wise
    phi_ref, W_ref = p.reference_block(S, mask, grad)
    block = S.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) if patch_major else S.clone()
    assert (kernels.patch_major_view(block) is not None) == (patch_major and Nq * T > 1 and M > 1)
    got = p.block(block, mask, grad, torch.empty_like(S))
    if got is None:  # only the Top-k kernels decline: an ambiguous selection with a gradient, or < k real patches
        k = 1 if spec == "maxsim" else min(int(spec.partition(":")[2]), M)
        real = M if mask is None else int(mask.sum(-1).min())
        assert spec.startswith(("maxsim", "topk")) and ((ties and grad) or real < k)
        return
    torch.testing.assert_close(got[0], phi_ref, rtol=1e-12, atol=1e-12)
    if grad:
        torch.testing.assert_close(got[1], W_ref, rtol=1e-12, atol=1e-12)


def test_patch_major_blocks_come_from_the_transposed_gemm():
    """similarity_block(patch_major=True) gives the same S, stored patch by patch, and scoring with either
    layout gives the same scores and gradients (the layout is a pooling's choice, not a result)."""
    g = torch.Generator().manual_seed(3)
    D, q = torch.randn(4, 9, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    S = kernels.similarity_block(D, q, patch_major=True)
    torch.testing.assert_close(S, kernels.similarity_block(D, q), rtol=1e-14, atol=1e-14)
    assert kernels.patch_major_view(S.view(4, 2, 3, 9)) is not None
    Q, D, q_mask, d_mask = batch(Nq=4, Nd=9, T=5, M=11)
    for spec in ("maxsim", "topk:3"):
        cls = type(parse_pooling(spec))
        fn = lambda Q_, D_, spec=spec: score_matrix(Q_, D_, spec, q_mask, d_mask)  # noqa: E731
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cls, "patch_major", lambda self, grad: False)
            token_major = grads(fn, Q, D)
        for a, b in zip(grads(fn, Q, D), token_major, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@settings(max_examples=40)
@given(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 12)),
       st.integers(0, 2**31 - 1), st.sampled_from(ALL), st.booleans())
def test_merged_kernels_equal_pooling_the_concatenation(shape, seed, spec, ties):
    """Pooling.merged on the injected summary = the definition on [n, Nq, T, M + K] (Pooling's default), and
    merged_many with several injected sets (here K and its first half) = merged on each, bit for bit."""
    S, mask, S_inj = block_world(*shape, seed, ties)
    p = parse_pooling(spec)
    got = p.merged(S, mask, p.injected_summary(S_inj))
    torch.testing.assert_close(got, Pooling.merged_many(p, S, mask, [S_inj])[0], rtol=1e-12, atol=1e-12)
    parts = [S_inj, S_inj[..., : max(1, S_inj.shape[-1] // 2)]]
    many = p.merged_many(S, mask, [p.injected_summary(x) for x in parts])
    for x, phi in zip(parts, many, strict=True):
        assert torch.equal(phi, p.merged(S, mask, p.injected_summary(x)))


@settings(max_examples=60)
@given(st.integers(1, 500), st.integers(1, 10**6), st.sampled_from([None, 1, 3, 1000]),
       st.sampled_from(["cpu", "cuda"]))
def test_document_blocks_cover_the_corpus_within_the_budget(Nd, per_document, chunk, device):
    size = kernels.block_size(Nd, per_document, device, chunk)
    blocks = list(kernels.document_blocks(Nd, per_document, device, chunk))
    assert blocks[0].start == 0 and blocks[-1].stop == Nd
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:], strict=False))
    assert all(0 < b.stop - b.start <= size for b in blocks)
    if chunk is None:  # as many documents as the budget allows, at least one, never more than the corpus
        assert 1 <= size <= Nd
        assert size == 1 or size * per_document <= kernels.block_budget(device)
        assert size == Nd or (size + 1) * per_document > kernels.block_budget(device)


def test_cpu_budget_follows_the_reported_l2_cache(monkeypatch):
    l2 = kernels.l2_cache_bytes()
    assert l2 is None or l2 > 0
    monkeypatch.setattr(kernels, "l2_cache_bytes", lambda: 1 << 20)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert kernels.block_budget("cpu") == (1 << 20) * 4 // 4  # float32 entries filling the threads' L2 caches
    monkeypatch.setattr(kernels, "l2_cache_bytes", lambda: None)
    assert kernels.block_budget("cpu") == kernels.FALLBACK_CPU_BLOCK_ELEMENTS
    assert kernels.block_budget("cuda") == kernels.ACCELERATOR_BLOCK_ELEMENTS
