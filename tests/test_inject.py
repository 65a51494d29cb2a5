"""Injection: only non-gold documents change, equality with an explicit-corpus reference, spikes, hijack rates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spikehijack.core.inject import (
    ArgmaxShift,
    argmax_shift,
    gaussian_patches,
    hijack_rate,
    inject_corpus,
    injected_summary,
    pad_documents,
    score_with_injection,
    selected_patches,
    selection_mass,
    spike_patches,
    top_nongold_documents,
)
from spikehijack.core.pooling import MaxSim, Mean, Pooling, Softmax, TopK, parse_pooling, selection
from spikehijack.core.robust import MedianTopK, Trimmed
from spikehijack.core.scoring import pool_similarity_block, score_matrix


class Coupled(Pooling):
    """A token-coupled test pooling (not registered): each token's max minus half the mean max over tokens."""

    name = "coupled-test"
    token_wise = False

    def pool_tokens(self, S, mask=None):
        m = MaxSim().reduce(S, mask)
        return m - 0.5 * m.mean(-1, keepdim=True)


POOLINGS = ["maxsim", "topk:3", "softmax:0.5", "mean", Coupled()]


class Generic:
    """Mixin: the base class's kernels (the definition on the concatenated block), not the pooling's own."""

    block = Pooling.block
    injected_summary = Pooling.injected_summary
    merged_many = Pooling.merged_many


class SlowMaxSim(Generic, MaxSim):
    pass


class SlowTopK(Generic, TopK):
    pass


class SlowSoftmax(Generic, Softmax):
    pass


class SlowMean(Generic, Mean):
    pass


class SlowTrimmed(Generic, Trimmed):
    pass


class SlowMedianTopK(Generic, MedianTopK):
    pass


def _world(integer: bool, Nq=4, T=5, Nd=7, M=6, K=3, d=8, seed=0):
    """Random queries/documents/injections with masks. ``integer``: small integers, so every dot product is
    exact and the comparison with the reference can be bit-exact."""
    g = torch.Generator().manual_seed(seed)
    if integer:
        r = lambda *s: torch.randint(-3, 4, s, generator=g).float()
    else:
        r = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)
    Q, D, inj = r(Nq, T, d), r(Nd, M, d), r(Nq, K, d)
    q_mask = torch.arange(T) < torch.randint(1, T + 1, (Nq,), generator=g)[:, None]
    d_mask = torch.arange(M) < torch.randint(1, M + 1, (Nd,), generator=g)[:, None]
    d_mask[0, 1] = False  # an interior hole, not only trailing padding
    d_mask[0, 0] = True
    return Q, D, inj, q_mask, d_mask


def _reference(Q, D, pooling, inj, rel, q_mask, d_mask):
    """Brute force: one (query, document) pair at a time, the document built explicitly."""
    Nq, Nd = Q.shape[0], D.shape[0]
    out = torch.empty(Nq, Nd, dtype=Q.dtype)
    for a in range(Nq):
        for j in range(Nd):
            qm = None if q_mask is None else q_mask[a : a + 1]
            if rel[a, j]:
                doc, dm = D[j : j + 1], None if d_mask is None else d_mask[j : j + 1]
            else:
                doc = torch.cat([D[j], inj[a]])[None]
                base = torch.ones(D.shape[1], dtype=torch.bool) if d_mask is None else d_mask[j]
                dm = torch.cat([base, torch.ones(inj.shape[1], dtype=torch.bool)])[None]
            out[a, j] = score_matrix(Q[a : a + 1], doc, pooling, qm, dm)[0, 0]
    return out


def _rel(Nq, Nd, gold):
    if gold.dtype == torch.bool:
        return gold
    return torch.zeros(Nq, Nd, dtype=torch.bool).scatter_(1, gold[:, None], True)


GOLDS = {
    "index": torch.tensor([0, 3, 6, 3]),
    "mask": torch.tensor([[1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 1, 1, 0]])
    .bool(),
}


@pytest.mark.parametrize("pooling", POOLINGS, ids=str)
@pytest.mark.parametrize("gold_kind, masks", [("mask", True), ("index", False)])
def test_equals_brute_force_reference(pooling, gold_kind, masks):
    """Same numbers as scoring each (query, document) pair with the document built explicitly: to float64
    round-off in general (summation order over tokens depends on the block shape); bit for bit where the
    arithmetic is exact: see test_bit_exact_on_exact_arithmetic."""
    gold = GOLDS[gold_kind]
    for integer in (True, False):
        Q, D, inj, q_mask, d_mask = _world(integer=integer, seed=3)
        Q, D, inj = Q.double(), D.double(), inj.double()
        if not masks:
            q_mask = d_mask = None
        ref = _reference(Q, D, pooling, inj, _rel(4, 7, gold), q_mask, d_mask)
        for chunk in (None, 1, 3):
            got = score_with_injection(Q, D, pooling, inj, gold, q_mask, d_mask, chunk_size=chunk)
            assert got.shape == (4, 7)
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pooling", ["maxsim", "topk:4"])
def test_bit_exact_on_exact_arithmetic(pooling):
    Q, D, inj, q_mask, d_mask = _world(integer=True)
    for chunk in (None, 1, 3):
        got = score_with_injection(Q, D, pooling, inj, GOLDS["mask"], q_mask, d_mask, chunk_size=chunk)
        assert torch.equal(got, _reference(Q, D, pooling, inj, GOLDS["mask"], q_mask, d_mask))


@pytest.mark.parametrize("pooling", POOLINGS, ids=str)
def test_equals_explicit_corpus_float32(pooling):
    Q, D, inj, q_mask, d_mask = _world(integer=False, seed=3)
    gold = GOLDS["mask"]
    got = score_with_injection(Q, D, pooling, inj, gold, q_mask, d_mask, chunk_size=2)
    torch.testing.assert_close(got, _reference(Q, D, pooling, inj, gold, q_mask, d_mask), rtol=1e-6, atol=1e-6)
    # the same through inject_corpus: each query against its own explicit corpus, gold documents padded
    for a in range(4):
        Da, ma = inject_corpus(D, d_mask, inj[a], ~gold[a])
        ref = score_matrix(Q[a : a + 1], Da, pooling, q_mask[a : a + 1], ma)[0]
        torch.testing.assert_close(got[a], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", POOLINGS, ids=str)
def test_only_nongold_documents_change(pooling):
    Q, D, _, q_mask, d_mask = _world(integer=False, seed=1)
    inj = spike_patches(Q, 5, spike_size=1, q_mask=q_mask)  # a copy of every valid token: beats any patch
    gold = GOLDS["mask"]
    for chunk in (None, 3):  # gold documents: bit-identical to score_matrix with the same chunking
        clean = score_matrix(Q, D, pooling, q_mask, d_mask, chunk_size=chunk)
        after = score_with_injection(Q, D, pooling, inj, gold, q_mask, d_mask, chunk_size=chunk)
        assert torch.equal(after[gold], clean[gold])
    assert bool((after[~gold] != clean[~gold]).all())
    if str(pooling) == "maxsim":  # a max over a superset of patches can only grow
        assert bool((after >= clean).all())


def test_clean_scores_argument():
    Q, D, inj, q_mask, d_mask = _world(integer=False, seed=4)
    gold = GOLDS["mask"]
    clean = score_matrix(Q, D, "topk:3", q_mask, d_mask)
    a = score_with_injection(Q, D, "topk:3", inj, gold, q_mask, d_mask)
    b = score_with_injection(Q, D, "topk:3", inj, gold, q_mask, d_mask, clean_scores=clean)
    assert torch.equal(a, b)
    marked = score_with_injection(Q, D, "topk:3", inj, gold, q_mask, d_mask, clean_scores=clean + 100)
    assert torch.equal(marked[gold], clean[gold] + 100) and torch.equal(marked[~gold], a[~gold])
    with pytest.raises(ValueError, match="clean_scores"):
        score_with_injection(Q, D, "topk:3", inj, gold, clean_scores=clean[:2])


def test_summary_argument():
    """A summary computed once (injected_summary), as a caller scoring a ragged corpus block by block passes it,
    gives the scores score_with_injection computes itself; one of the wrong shape is refused."""
    Q, D, inj, q_mask, d_mask = _world(integer=False, seed=4)
    gold = GOLDS["mask"]
    whole = score_with_injection(Q, D, "topk:3", inj, gold, q_mask, d_mask)
    summary = injected_summary(Q, "topk:3", inj)
    assert torch.equal(score_with_injection(Q, D, "topk:3", inj, gold, q_mask, d_mask, summary=summary), whole)
    with pytest.raises(ValueError, match="summary must be"):
        score_with_injection(Q, D, "topk:3", inj, gold, summary=summary[:1])


@pytest.mark.parametrize("pooling", POOLINGS, ids=str)
def test_zero_patches_is_plain_scoring(pooling):
    Q, D, _, q_mask, d_mask = _world(integer=False, seed=2)
    empty = torch.zeros(4, 0, 8)
    got = score_with_injection(Q, D, pooling, empty, GOLDS["index"], q_mask, d_mask, chunk_size=2)
    # another code path (merged pooling over M + 0 patches): equal up to float32 summation order
    torch.testing.assert_close(got, score_matrix(Q, D, pooling, q_mask, d_mask, chunk_size=2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "fast, slow",
    [("maxsim", SlowMaxSim()), ("topk:3", SlowTopK(3)), ("topk:8", SlowTopK(8)), ("softmax:0.5", SlowSoftmax(0.5)),
     ("softmax:0.01", SlowSoftmax(0.01)), ("softmax:5", SlowSoftmax(5.0)), ("mean", SlowMean()),
     ("trimmed:4:1", SlowTrimmed(4, 1)), ("trimmed:9:2", SlowTrimmed(9, 2)), ("medtopk:5", SlowMedianTopK(5))],
)
@pytest.mark.parametrize("K", [1, 3, 12])
def test_shortcuts_equal_generic_concatenation(fast, slow, K):
    """MaxSim/Top-k/rank windows prune the injected similarities, softmax/mean merge partial sums: same numbers."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        Q, D, _, q_mask, d_mask = _world(integer=False, seed=K, K=K)
        inj = torch.cat([spike_patches(Q, K // 2, 1, q_mask=q_mask), gaussian_patches(4, K - K // 2, 8)], 1)
        Q, D, inj = Q.to(dtype), D.to(dtype), inj.to(dtype)
        a = score_with_injection(Q, D, fast, inj, GOLDS["mask"], q_mask, d_mask, chunk_size=3)
        b = score_with_injection(Q, D, slow, inj, GOLDS["mask"], q_mask, d_mask, chunk_size=3)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_queries_without_gold_in_a_chunk():
    """A bool gold mask may leave a query without gold in D (D = one chunk of a corpus): inject everywhere."""
    Q, D, inj, q_mask, d_mask = _world(integer=False, seed=5)
    gold = torch.zeros(4, 7, dtype=torch.bool)
    gold[1, 2] = True
    got = score_with_injection(Q, D, "maxsim", inj, gold, q_mask, d_mask)
    torch.testing.assert_close(got, _reference(Q, D, "maxsim", inj, gold, q_mask, d_mask))
    full = score_with_injection(Q, D, "maxsim", inj, GOLDS["mask"], q_mask, d_mask)
    chunks = [score_with_injection(Q, D[s:e], "maxsim", inj, GOLDS["mask"][:, s:e], q_mask, d_mask[s:e])
              for s, e in ((0, 2), (2, 5), (5, 7))]
    torch.testing.assert_close(torch.cat(chunks, 1), full)


def test_pool_similarity_block_matches_score_matrix():
    Q, D, _, q_mask, d_mask = _world(integer=False, seed=6)
    S = torch.einsum("atd,nmd->atnm", Q, D)  # [Nq, T, Nd, M]
    for pooling in POOLINGS:
        phi = pool_similarity_block(pooling, S, d_mask[None, None])
        torch.testing.assert_close((phi * q_mask[..., None]).sum(1), score_matrix(Q, D, pooling, q_mask, d_mask))
    with pytest.raises(ValueError, match="4-D"):
        pool_similarity_block("maxsim", S, d_mask)


def test_low_precision_inputs():
    Q, D, inj, q_mask, d_mask = _world(integer=False, seed=8)
    ref = score_with_injection(Q, D, "softmax:0.5", inj, GOLDS["index"], q_mask, d_mask)
    got = score_with_injection(Q.bfloat16(), D.bfloat16(), "softmax:0.5", inj.bfloat16(), GOLDS["index"], q_mask,
                               d_mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0.05)
    rate = hijack_rate(Q.bfloat16(), D.bfloat16(), "maxsim", inj.bfloat16(), GOLDS["index"], q_mask, d_mask)
    assert 0.0 <= rate.item() <= 1.0


@settings(max_examples=25)
@given(Nq=st.integers(1, 3), T=st.integers(1, 4), Nd=st.integers(2, 5), M=st.integers(1, 5), K=st.integers(0, 6),
       chunk=st.sampled_from([None, 1, 2]), pooling=st.sampled_from(["maxsim", "topk:2", "softmax:0.3", "mean"]),
       seed=st.integers(0, 1000))
def test_random_shapes_match_reference(Nq, T, Nd, M, K, chunk, pooling, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    Q, D, inj = r(Nq, T, 3), r(Nd, M, 3), r(Nq, K, 3)
    q_mask = torch.arange(T) < torch.randint(1, T + 1, (Nq,), generator=g)[:, None]
    d_mask = torch.arange(M) < torch.randint(1, M + 1, (Nd,), generator=g)[:, None]
    gold = torch.randint(Nd, (Nq,), generator=g)
    got = score_with_injection(Q, D, pooling, inj, gold, q_mask, d_mask, chunk_size=chunk)
    ref = _reference(Q, D, pooling, inj, _rel(Nq, Nd, gold), q_mask, d_mask)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_inject_corpus_counts():
    _, D, inj, _, d_mask = _world(integer=False)
    targets = torch.tensor([1, 0, 1, 1, 0, 1, 1]).bool()
    Da, ma = inject_corpus(D, d_mask, inj[0], targets)
    assert Da.shape == (7, 6 + 3, 8) and ma.shape == (7, 9)
    assert torch.equal(ma[:, 6:].sum(1), 3 * targets.long())  # K patches per non-gold document, 0 per gold
    assert torch.equal(ma[:, :6], d_mask) and torch.equal(Da[:, :6], D)
    assert torch.equal(Da[targets][:, 6:], inj[0].expand(5, 3, 8))


def test_auto_chunking_matches_single_block(monkeypatch):
    import spikehijack.core.kernels as kernels

    Q, D, inj, q_mask, d_mask = _world(integer=False)
    full = [score_with_injection(Q, D, p, inj, GOLDS["index"], q_mask, d_mask) for p in POOLINGS]
    monkeypatch.setattr(kernels, "CPU_BLOCK_ELEMENTS", 1)  # forces one document per chunk
    for p, f in zip(POOLINGS, full, strict=True):
        torch.testing.assert_close(f, score_with_injection(Q, D, p, inj, GOLDS["index"], q_mask, d_mask))


# ---------------------------------------------------------------------------------------------------------
# Spikes, Gaussian control, padding


def test_spike_is_normalised_mean_of_its_tokens():
    tokens = torch.randn(3, 10, 6)
    q_mask = torch.arange(10) < torch.tensor([10, 7, 4])[:, None]
    P, idx = spike_patches(tokens, 9, spike_size=3, q_mask=q_mask, generator=torch.Generator().manual_seed(0),
                           return_indices=True)
    assert P.shape == (3, 9, 6) and idx.shape == (3, 9, 3)
    torch.testing.assert_close(P.norm(dim=-1), torch.ones(3, 9))
    for a in range(3):
        for p in range(9):
            chosen = idx[a, p]
            assert len(set(chosen.tolist())) == 3  # distinct tokens
            assert bool(q_mask[a, chosen].all())  # never a padded token
            torch.testing.assert_close(P[a, p], F.normalize(tokens[a, chosen].mean(0), dim=0))


@given(T=st.integers(1, 12), s=st.integers(1, 12), n=st.integers(0, 30), seed=st.integers(0, 100))
def test_tokens_are_covered_evenly(T, s, n, seed):
    s = min(s, T)
    _, idx = spike_patches(torch.randn(2, T, 4), n, spike_size=s, generator=torch.Generator().manual_seed(seed),
                           return_indices=True)
    for a in range(2):
        counts = torch.bincount(idx[a].flatten(), minlength=T)
        assert int(counts.max() - counts.min()) <= 1  # as even as possible
        if n * s >= T:
            assert bool((counts > 0).all())  # every query token targeted


def test_spike_size_one_copies_tokens_and_nested_draws():
    tokens = F.normalize(torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0)), dim=-1)
    P, idx = spike_patches(tokens, 5, spike_size=1, return_indices=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(P, tokens.gather(1, idx.expand(2, 5, 7)))
    assert sorted(idx[0, :, 0].tolist()) == list(range(5))  # one cycle = one permutation of the tokens
    for noise in (0.0, 0.3):
        big, big_idx = spike_patches(tokens, 40, 3, noise=noise, generator=torch.Generator().manual_seed(4),
                                     return_indices=True)
        small, small_idx = spike_patches(tokens, 7, 3, noise=noise, generator=torch.Generator().manual_seed(4),
                                         return_indices=True)
        # a K sweep can take prefixes of one draw: the same token subsets exactly, the same vectors up to the
        # summation order of a differently shaped reduction (its last bits follow the CPU's vector width)
        assert torch.equal(big_idx[:, :7], small_idx)
        torch.testing.assert_close(big[:, :7], small, rtol=1e-6, atol=1e-6)


def test_spike_noise_and_determinism():
    tokens = torch.randn(2, 6, 16)
    a = spike_patches(tokens, 8, 2, noise=0.1, generator=torch.Generator().manual_seed(5))
    b = spike_patches(tokens, 8, 2, noise=0.1, generator=torch.Generator().manual_seed(5))
    clean = spike_patches(tokens, 8, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2, 8))
    cos = (a * clean).sum(-1)  # same subsets, perturbed
    assert bool((cos > 0.8).all()) and bool((cos < 1 - 1e-6).all())


def test_gaussian_patches():
    G = gaussian_patches(3, 50, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert G.shape == (3, 50, 32) and G.dtype == torch.float64
    torch.testing.assert_close(G.norm(dim=-1), torch.ones(3, 50, dtype=torch.float64))
    assert torch.equal(G, gaussian_patches(3, 50, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert gaussian_patches(2, 0, 4).shape == (2, 0, 4)
    assert abs(float(G.mean())) < 0.05


def test_pad_documents():
    D = torch.randn(4, 5, 3)
    d_mask = torch.arange(5) < torch.tensor([5, 2, 3, 1])[:, None]
    pool = torch.randn(20, 3)
    D2, m2 = pad_documents(D, d_mask, 6, pool, generator=torch.Generator().manual_seed(0))
    assert D2.shape == (4, 11, 3) and torch.equal(D2[:, :5], D) and torch.equal(m2[:, :5], d_mask)
    assert bool(m2[:, 5:].all())
    for i in range(4):
        rows = [int((pool == v).all(1).nonzero()) for v in D2[i, 5:]]  # each new vector is a pool row
        assert len(set(rows)) == 6  # without replacement
    # per-document counts: a x2 length sweep
    lengths = d_mask.sum(1)
    D3, m3 = pad_documents(D, d_mask, lengths, pool, generator=torch.Generator().manual_seed(0))
    assert D3.shape == (4, 5 + 5, 3)
    assert torch.equal(m3.sum(1), 2 * lengths)
    assert bool((D3[~m3] == 0).all() or True) and bool((D3[:, 5:][~m3[:, 5:]] == 0).all())
    D4, _ = pad_documents(D, None, 30, pool, generator=torch.Generator().manual_seed(0), replace=True)
    assert D4.shape == (4, 35, 3)
    with pytest.raises(ValueError, match="replace=True"):
        pad_documents(D, d_mask, 30, pool)
    with pytest.raises(ValueError, match="n_extra"):
        pad_documents(D, d_mask, -1, pool)
    with pytest.raises(ValueError, match="pool"):
        pad_documents(D, d_mask, 2, torch.randn(5, 4))


# ---------------------------------------------------------------------------------------------------------
# Hijack rate and argmax shift on hand-built cases


def _orthogonal_world():
    """T = 4 query tokens = basis vectors e0..e3 in d = 8. Gold doc holds them all; non-gold docs hold
    weak matches (0.1 to every token) and, for doc 2, one strong match for token 0."""
    Q = torch.eye(8)[:4][None]  # [1, 4, 8]
    weak = F.normalize(torch.tensor([0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0]) + torch.eye(8)[5] * 0.98, dim=0)
    D = torch.stack([torch.eye(8)[:4], weak.expand(4, 8), torch.stack([torch.eye(8)[0], weak, weak, weak])])
    return Q, D, torch.tensor([0])


def test_token_copies_hijack_every_token_under_maxsim():
    Q, D, gold = _orthogonal_world()
    spikes = spike_patches(Q, 4, spike_size=1)  # a copy of every query token
    assert hijack_rate(Q, D, "maxsim", spikes, gold).item() == 1.0
    shift = argmax_shift(Q, D, "maxsim", spikes, gold)
    assert isinstance(shift, ArgmaxShift)
    # the top non-gold document after injection is doc 1 (ties: lowest index); every token moves there
    assert shift.to_injected.item() == 1.0 and shift.moved.item() == 1.0
    # in doc 2, token 0 already had a perfect match (a tie keeps the original patch): 3 of 4 tokens move
    rates = argmax_shift(Q, D[[0, 2]], "maxsim", spikes, gold)
    assert rates.to_injected.item() == 0.75 and rates.moved.item() == 0.75
    assert hijack_rate(Q, D[[0, 2]], "maxsim", spikes, gold).item() == 0.75


def test_topk_and_softmax_selection_mass_by_hand():
    Q, D, gold = _orthogonal_world()
    spikes = spike_patches(Q, 4, spike_size=1)
    w = float(D[1, 0] @ Q[0, 0])  # each original patch of doc 1: the same similarity to every token
    # Top-2 in doc 1: the token's copy (1.0) and one original patch (w > 0 beats the other copies' 0)
    assert selection_mass(Q, D[:2], "topk:2", spikes, gold).item() == pytest.approx(0.5)
    # Top-8: all 4 copies and all 4 originals: half the mass
    assert selection_mass(Q, D[:2], "topk:8", spikes, gold).item() == pytest.approx(0.5)
    tau = 0.2
    e1, ew, e0 = math.exp(1 / tau), math.exp(w / tau), 1.0
    expected = (e1 + 3 * e0) / (e1 + 3 * e0 + 4 * ew)
    assert selection_mass(Q, D[:2], f"softmax:{tau}", spikes, gold).item() == pytest.approx(expected, rel=1e-5)


def test_gaussian_patches_rarely_hijack_in_high_dim():
    """Every document holds noisy copies (cosine about 0.55) of every query token; in d = 256 a random unit
    vector has cosine about 1/16 with a token, so 100 Gaussian patches almost never beat the real match,
    while spikes of two tokens (cosine about 0.7 with each) take almost every token."""
    g = torch.Generator().manual_seed(0)
    Nq, T, Nd, d = 4, 8, 10, 256
    Q = F.normalize(torch.randn(Nq, T, d, generator=g), dim=-1)
    copies = Q.reshape(1, Nq * T, d).repeat(1, 4, 1)  # four noisy copies of each token: Top-4 has real matches
    noise = F.normalize(torch.randn(Nd, 4 * Nq * T, d, generator=g), dim=-1)
    D = F.normalize(copies + 1.5 * noise, dim=-1)  # [Nd, M = 4 Nq T, d]
    gold = torch.arange(Nq)
    gauss = gaussian_patches(Nq, 100, d, generator=g)
    spikes = spike_patches(Q, 100, spike_size=2, generator=g)
    for pooling in ("maxsim", "topk:4"):
        assert hijack_rate(Q, D, pooling, gauss, gold).item() < 0.15
        assert argmax_shift(Q, D, pooling, gauss, gold).moved.item() < 0.15
        assert hijack_rate(Q, D, pooling, spikes, gold).item() > 0.9
        assert argmax_shift(Q, D, pooling, spikes, gold).moved.item() > 0.9


@pytest.mark.parametrize("pooling", POOLINGS, ids=str)
def test_all_documents_mode_matches_explicit_loop(pooling):
    Q, D, inj, q_mask, d_mask = _world(integer=False, seed=7, d=4)
    gold = GOLDS["mask"]
    p = parse_pooling(pooling)
    rate = selection_mass(Q, D, p, inj, gold, q_mask, d_mask, documents="all", reduction="none", chunk_size=3)
    shift = argmax_shift(Q, D, p, inj, gold, q_mask, d_mask, documents="all", reduction="none", chunk_size=2)
    top = top_nongold_documents(score_with_injection(Q, D, p, inj, gold, q_mask, d_mask), gold)
    rate_top = selection_mass(Q, D, p, inj, gold, q_mask, d_mask, reduction="none")
    hijack = hijack_rate(Q, D, p, inj, gold, q_mask, d_mask, documents="all", reduction="none", chunk_size=3)
    for a in range(4):
        Da, ma = inject_corpus(D, d_mask, inj[a], ~gold[a])
        S = torch.einsum("td,nmd->ntm", Q[a], Da)  # [Nd, T, M + K]
        sel = selection(S, p, ma)
        tok = q_mask[a]
        per_doc = sel[:, tok, 6:].sum(-1).mean(1)  # [Nd]
        assert rate[a].item() == pytest.approx(per_doc[~gold[a]].mean().item(), abs=1e-5)
        assert rate_top[a].item() == pytest.approx(per_doc[top[a]].item(), abs=1e-5)
        after = S.masked_fill(~ma[:, None], -math.inf).argmax(-1)[:, tok]
        moved = (after >= 6).float().mean(1)
        assert shift.to_injected[a].item() == pytest.approx(moved[~gold[a]].mean().item(), abs=1e-6)
    torch.testing.assert_close(shift.to_injected, shift.moved)
    torch.testing.assert_close(hijack, shift.to_injected)  # one definition of hijacking for every pooling
    if isinstance(p, MaxSim):  # MaxSim's selection is its arg-max: its mass is the hijack rate
        torch.testing.assert_close(rate, hijack)


def test_selected_patches_and_top_document():
    Q, D, gold = _orthogonal_world()
    spikes = spike_patches(Q, 4, spike_size=1, generator=torch.Generator().manual_seed(0))
    before, after = selected_patches(Q[0], D[2], spikes[0])
    assert before.tolist()[0] == 0 and after.tolist()[0] == 0  # token 0: perfect original match kept
    copies = spikes[0].argmax(-1)  # which token each spike copies
    for i in (1, 2, 3):
        assert int(after[i]) >= 4 and int(copies[int(after[i]) - 4]) == i
    b, a = selected_patches(Q[0], D[2], spikes[0], q_mask=torch.tensor([1, 1, 0, 1]).bool())
    assert b[2].item() == -1 and a[2].item() == -1
    scores = torch.tensor([[5.0, 1.0, 3.0], [0.0, 9.0, 2.0]])
    assert top_nongold_documents(scores, torch.tensor([0, 1])).tolist() == [2, 2]
    with pytest.raises(ValueError, match="non-gold"):
        top_nongold_documents(scores, torch.ones(2, 3, dtype=torch.bool))


def test_scores_argument_is_reused():
    Q, D, gold = _orthogonal_world()
    spikes = spike_patches(Q, 4, spike_size=1)
    fake = torch.tensor([[0.0, 0.0, 1.0]])  # pretend doc 2 ranks first
    assert hijack_rate(Q, D, "maxsim", spikes, gold, scores=fake).item() == 0.75
    with pytest.raises(ValueError, match="scores"):
        hijack_rate(Q, D, "maxsim", spikes, gold, scores=torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------------------
# Validation


def test_input_validation():
    Q, D, inj, q_mask, d_mask = _world(integer=False)
    gold = GOLDS["index"]
    with pytest.raises(ValueError, match="injected"):
        score_with_injection(Q, D, "maxsim", inj[:2], gold)
    with pytest.raises(ValueError, match="injected"):
        score_with_injection(Q, D, "maxsim", inj[..., :3], gold)
    with pytest.raises(ValueError, match="NaN"):
        score_with_injection(Q, D, "maxsim", inj.clone().fill_(math.nan), gold)
    with pytest.raises(ValueError, match="dtype"):
        score_with_injection(Q, D, "maxsim", inj.double(), gold)
    with pytest.raises(TypeError, match="injected"):
        score_with_injection(Q, D, "maxsim", inj.numpy(), gold)
    with pytest.raises(ValueError, match="gold"):
        score_with_injection(Q, D, "maxsim", inj, torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="gold"):
        score_with_injection(Q, D, "maxsim", inj, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="chunk_size"):
        score_with_injection(Q, D, "maxsim", inj, gold, chunk_size=0)
    with pytest.raises(ValueError, match="NaN"):
        score_with_injection(Q.clone().fill_(math.nan), D, "maxsim", inj, gold)
    with pytest.raises(ValueError, match="documents"):
        hijack_rate(Q, D, "maxsim", inj, gold, documents="best")
    with pytest.raises(ValueError, match="reduction"):
        hijack_rate(Q, D, "maxsim", inj, gold, reduction="sum")
    with pytest.raises(ValueError, match="non-gold"):
        argmax_shift(Q, D, "maxsim", inj, torch.ones(4, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-gold"):
        hijack_rate(Q, D, "maxsim", inj, torch.ones(4, 7, dtype=torch.bool), documents="all")
    with pytest.raises(ValueError, match="spike_size"):
        spike_patches(Q, 3, spike_size=0)
    with pytest.raises(ValueError, match=r"spike_size must lie in \[1, T_valid\]"):
        spike_patches(Q, 3, spike_size=5, q_mask=torch.arange(5) < torch.tensor([5, 5, 4, 5])[:, None])
    with pytest.raises(ValueError, match="n_patches"):
        spike_patches(Q, -1)
    with pytest.raises(ValueError, match="n_patches"):
        spike_patches(Q, 2.5)
    with pytest.raises(ValueError, match="noise"):
        spike_patches(Q, 3, 2, noise=-0.1)
    with pytest.raises(ValueError, match="noise"):
        spike_patches(Q, 3, 2, noise=math.nan)
    with pytest.raises(ValueError, match="q_mask"):
        spike_patches(Q, 3, 2, q_mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="d"):
        gaussian_patches(2, 3, 0)
