"""Late-interaction scoring (spikehijack.core.scoring) against an independent brute-force reference, in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikehijack.core.kernels import top_k_mean_sorted, top_k_tournament
from spikehijack.core.pooling import parse_pooling
from spikehijack.core.scoring import pad, score_matrix, score_pairs, similarities

SPECS = ["maxsim", "topk:1", "topk:2", "topk:40", "softmax:0.1", "softmax:2", "mean"]

# (Nq, Nd, T, M, d)
shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 6), st.integers(1, 5))
seeds = st.integers(0, 2**31 - 1)


def make_batch(Nq, Nd, T, M, d, seed, dtype=torch.float64):
    """Random Q [Nq, T, d], D [Nd, M, d] and masks with at least one valid vector per row."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(Nq, T, d, generator=g, dtype=dtype)
    D = torch.randn(Nd, M, d, generator=g, dtype=dtype)
    q_mask = torch.rand(Nq, T, generator=g) < 0.7
    q_mask[torch.arange(Nq), torch.randint(0, T, (Nq,), generator=g)] = True
    d_mask = torch.rand(Nd, M, generator=g) < 0.6
    d_mask[torch.arange(Nd), torch.randint(0, M, (Nd,), generator=g)] = True
    return Q, D, q_mask, d_mask


def phi_reference(sims: list[float], spec: str) -> float:
    """phi of one token written from the definitions, on a plain python list of valid similarities."""
    name, _, arg = spec.partition(":")
    if name == "maxsim":
        return max(sims)
    if name == "mean":
        return sum(sims) / len(sims)
    if name == "topk":
        top = sorted(sims, reverse=True)[: int(arg)]
        return sum(top) / len(top)
    if name == "softmax":
        tau = float(arg)
        m = max(sims)
        e = [torch.tensor((s - m) / tau, dtype=torch.float64).exp().item() for s in sims]
        return sum(ei * s for ei, s in zip(e, sims, strict=True)) / sum(e)
    raise AssertionError(spec)


def brute_force(Q, D, spec, q_mask=None, d_mask=None):
    """Explicit loops over queries, documents, tokens and patches."""
    Nq, T, d = Q.shape
    Nd, M, _ = D.shape
    out = torch.zeros(Nq, Nd, dtype=torch.float64)
    for a in range(Nq):
        for b in range(Nd):
            total = 0.0
            for i in range(T):
                if q_mask is not None and not q_mask[a, i]:
                    continue
                sims = []
                for j in range(M):
                    if d_mask is not None and not d_mask[b, j]:
                        continue
                    sims.append(sum(Q[a, i, c].item() * D[b, j, c].item() for c in range(d)))
                total += phi_reference(sims, spec)
            out[a, b] = total
    return out


@settings(max_examples=25)
@given(shapes, seeds, st.sampled_from(SPECS), st.booleans())
def test_score_matrix_equals_brute_force(shape, seed, spec, masked):
    Q, D, qm, dm = make_batch(*shape, seed)
    qm, dm = (qm, dm) if masked else (None, None)
    ref = brute_force(Q, D, spec, qm, dm)
    torch.testing.assert_close(score_matrix(Q, D, spec, qm, dm), ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from(SPECS), st.integers(1, 7))
def test_chunked_equals_unchunked(shape, seed, spec, chunk):
    Q, D, qm, dm = make_batch(*shape, seed)
    full = score_matrix(Q, D, spec, qm, dm)
    torch.testing.assert_close(score_matrix(Q, D, spec, qm, dm, chunk_size=chunk), full, rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from(SPECS))
def test_score_pairs_is_the_diagonal_of_score_matrix(shape, seed, spec):
    Nq, _, T, M, d = shape
    Q, D, qm, dm = make_batch(Nq, Nq, T, M, d, seed)
    torch.testing.assert_close(
        score_pairs(Q, D, spec, qm, dm), score_matrix(Q, D, spec, qm, dm).diagonal(), rtol=1e-12, atol=1e-12
    )


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from(SPECS))
def test_permuting_patches_and_tokens_leaves_scores_unchanged(shape, seed, spec):
    Q, D, qm, dm = make_batch(*shape, seed)
    g = torch.Generator().manual_seed(seed)
    pm, pt = torch.randperm(D.shape[1], generator=g), torch.randperm(Q.shape[1], generator=g)
    torch.testing.assert_close(
        score_matrix(Q[:, pt], D[:, pm], spec, qm[:, pt], dm[:, pm]),
        score_matrix(Q, D, spec, qm, dm), rtol=1e-12, atol=1e-12,
    )


def _scores_and_grads(Q, D, spec, qm, dm, chunk=None):
    Q_, D_ = Q.clone().requires_grad_(True), D.clone().requires_grad_(True)
    Z = score_matrix(Q_, D_, spec, qm, dm, chunk_size=chunk)
    w = torch.linspace(-1, 1, Z.numel(), dtype=Z.dtype).view_as(Z)  # a generic downstream loss
    gQ, gD = torch.autograd.grad((w * Z).sum(), (Q_, D_))
    return Z.detach(), gQ, gD


@settings(max_examples=30)
@given(shapes, seeds, st.sampled_from(SPECS), st.sampled_from([-1e8, -1.0, 0.0, 7.0, 1e8]))
def test_padded_vectors_with_any_values_change_no_score_and_no_gradient(shape, seed, spec, junk):
    Q, D, qm, dm = make_batch(*shape, seed)
    Q2 = torch.where(qm.unsqueeze(-1), Q, torch.full_like(Q, junk))
    D2 = torch.where(dm.unsqueeze(-1), D, torch.full_like(D, -junk))
    Z, gQ, gD = _scores_and_grads(Q, D, spec, qm, dm)
    Z2, gQ2, gD2 = _scores_and_grads(Q2, D2, spec, qm, dm, chunk=2)
    torch.testing.assert_close(Z2, Z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gQ2, gQ, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gD2, gD, rtol=1e-10, atol=1e-10)
    assert bool((gQ2[~qm] == 0).all()) and bool((gD2[~dm] == 0).all())


def test_maxsim_masked_patch_never_wins_when_all_real_similarities_are_negative():
    # the ColBERT issue-62 failure: zero-padding a patch lets it "win" a max over negative similarities
    Q = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    D = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    dm = torch.tensor([[True, False]])
    assert score_matrix(Q, D, "maxsim", d_mask=dm).item() == -1.0


def test_low_precision_inputs_are_summed_in_float32():
    Q, D, qm, dm = make_batch(2, 3, 4, 5, 8, 0, dtype=torch.float32)
    ref = score_matrix(Q, D, "maxsim", qm, dm)
    for dt in (torch.float16, torch.bfloat16):
        Z = score_matrix(Q.to(dt), D.to(dt), "maxsim", qm, dm)
        assert Z.dtype == torch.float32
        torch.testing.assert_close(Z, ref, rtol=0.05, atol=0.1)


def test_pad_and_similarities():
    vecs = [torch.ones(2, 3), 2 * torch.ones(4, 3)]
    X, mask = pad(vecs)
    assert X.shape == (2, 4, 3) and mask.tolist() == [[True, True, False, False], [True] * 4]
    assert bool((X[0, 2:] == 0).all())
    X, mask = pad(vecs, length=6)
    assert X.shape == (2, 6, 3)
    with pytest.raises(ValueError, match="length"):
        pad(vecs, length=3)
    Q, D, _, _ = make_batch(2, 2, 3, 4, 5, 1)
    torch.testing.assert_close(similarities(Q, D), torch.einsum("ntc,nmc->ntm", Q, D))


def autograd_reference(Q, D, spec, q_mask, d_mask):
    """Scores from plain differentiable torch ops (no custom backward): S by einsum, phi from the definitions."""
    S = torch.einsum("atd,bmd->atbm", Q, D)
    valid = d_mask[None, None].expand_as(S)
    name, _, arg = spec.partition(":")
    if name == "maxsim":
        phi = S.masked_fill(~valid, float("-inf")).amax(-1)
    elif name == "mean":
        phi = S.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1)
    elif name == "topk":
        k = torch.clamp(valid.sum(-1, keepdim=True), max=int(arg))
        srt = S.masked_fill(~valid, float("-inf")).sort(-1, descending=True).values
        take = torch.arange(S.shape[-1]) < k
        phi = srt.masked_fill(~take, 0.0).sum(-1) / k.squeeze(-1)
    else:
        w = torch.softmax(S.masked_fill(~valid, float("-inf")) / float(arg), -1)
        phi = (w * S.masked_fill(~valid, 0.0)).sum(-1)
    return (phi * q_mask[:, :, None]).sum(1)


@settings(max_examples=40)
@given(shapes, seeds, st.sampled_from(SPECS), st.sampled_from([None, 1, 3]))
def test_gradients_equal_autograd_through_the_definitions(shape, seed, spec, chunk):
    """The closed-form backward of score_matrix (no autograd graph over S) against autograd on plain ops."""
    Q, D, qm, dm = make_batch(*shape, seed)
    Z, gQ, gD = _scores_and_grads(Q, D, spec, qm, dm, chunk)
    Q_, D_ = Q.clone().requires_grad_(True), D.clone().requires_grad_(True)
    ref = autograd_reference(Q_, D_, spec, qm, dm)
    w = torch.linspace(-1, 1, ref.numel(), dtype=ref.dtype).view_as(ref)
    rQ, rD = torch.autograd.grad((w * ref).sum(), (Q_, D_))
    torch.testing.assert_close(Z, ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gQ, rQ, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gD, rD, rtol=1e-10, atol=1e-10)


@settings(max_examples=60)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 12), seeds, st.booleans())
def test_sorted_top_k_equals_torch_topk_with_ties_and_masks(rows, M, k, seed, ties):
    """kernels.top_k_mean_sorted: the mean of the k largest (ties counted once each), its selection weights, and
    None exactly when a row has fewer than k real patches (or, with weights, when a tie makes the choice ambiguous)."""
    S, k = _tied_block(rows, M, k, seed, ties)
    real = torch.isfinite(S).sum(-1)
    got = top_k_mean_sorted(S, k)
    if bool((real < k).any()):
        assert got is None
        return
    torch.testing.assert_close(got, S.topk(k, -1).values.mean(-1), rtol=1e-12, atol=1e-12)
    W = torch.zeros_like(S)
    with_weights = top_k_mean_sorted(S, k, W)
    ref_W = parse_pooling("maxsim" if k == 1 else f"topk:{k}").jacobian(S)
    unique = bool((S.sort(-1, descending=True).values[:, : k + 1].diff(dim=-1) != 0).all())
    if with_weights is None:
        assert not unique
    else:
        torch.testing.assert_close(W, ref_W, rtol=0, atol=1e-15)


@settings(max_examples=60)
@given(st.integers(1, 6), st.integers(2, 40), st.integers(2, 12), seeds, st.booleans())
def test_tournament_gives_the_k_largest_in_order(rows, M, k, seed, ties):
    """kernels.top_k_tournament on a patch-major block St [n, M, R]: exactly torch.topk's sorted values (ties and
    -inf kept as often as they occur) for any M, odd or even, and St unchanged."""
    S, k = _tied_block(rows * 3, M, k, seed, ties)
    St = S.view(rows, 3, M).transpose(1, 2).contiguous()  # [n = rows, M, R = 3]
    before = St.clone()
    got = top_k_tournament(St, k, torch.empty(St.numel(), dtype=St.dtype))
    assert torch.equal(got, St.topk(k, dim=1).values.movedim(1, 0))
    assert torch.equal(St, before)


def _tied_block(rows: int, M: int, k: int, seed: int, ties: bool) -> tuple[torch.Tensor, int]:
    """S [rows, M] (float64, about 20 % masked to -inf; with ``ties`` few distinct values) and min(k, M)."""
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(rows, M, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: ties everywhere
        S = torch.round(S * 2) / 2
    return S.masked_fill(torch.rand(rows, M, generator=g) < 0.2, float("-inf")), min(k, M)


