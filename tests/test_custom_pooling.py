"""A pooling defined outside the package is scored like the built-ins: it only writes its definition (``reduce``
or ``pool_tokens``) and every path (chunked scoring, gradients, injection, hijack rates, the benchmark) works.

Two test poolings: ``LogSumExp`` (token-wise, registered under a test-only name for the duration of each test,
no closed-form Jacobian) and ``CenteredMax`` (token-coupled, used as an object).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikehijack.core.inject import hijack_rate, inject_corpus, score_with_injection, selection_mass, spike_patches
from spikehijack.core.kernels import fill_masked
from spikehijack.core.pooling import MaxSim, Pooling, parse_pooling, pool, register, selection, unregister
from spikehijack.core.scoring import score_matrix, score_pairs

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scoring.py"


@dataclass(frozen=True)
class LogSumExp(Pooling):
    """phi = tau log sum_j exp(S_j / tau) over the real patches: a smooth maximum, max <= phi <= max + tau log M."""

    tau: float = 0.5
    name: ClassVar[str] = "lse-test"

    @classmethod
    def from_arg(cls, arg: str | None) -> Pooling:
        return cls() if arg is None else cls(float(arg))

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.tau:g}"

    def reduce(self, S: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.tau * torch.logsumexp(fill_masked(S, mask, float("-inf")) / self.tau, dim=-1)


@dataclass(frozen=True)
class CenteredMax(Pooling):
    """Token-coupled: each token's max minus half the mean of the maxima of the query's tokens."""

    name: ClassVar[str] = "centered-test"
    token_wise: ClassVar[bool] = False

    def pool_tokens(self, S: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = MaxSim().reduce(S, mask)
        return m - 0.5 * m.mean(-1, keepdim=True)


@pytest.fixture(autouse=True)
def lse_registered():
    """``@register`` the test pooling for one test only, so other test modules never see it."""
    register(LogSumExp)
    yield
    unregister(LogSumExp.name)


def definition(Q: torch.Tensor, D: torch.Tensor, spec: str, q_mask: torch.Tensor | None,
               d_mask: torch.Tensor | None) -> torch.Tensor:
    """Scores [Nq, Nd] straight from the definitions, differentiable by plain autograd: S by einsum."""
    S = torch.einsum("atc,bmc->atbm", Q, D)  # [Nq, T, Nd, M]
    S = S.float() if S.dtype in (torch.float16, torch.bfloat16) else S
    Sm = S if d_mask is None else S.masked_fill(~d_mask[None, None], -math.inf)
    if spec == "centered":
        top = Sm.amax(-1)
        phi = top - 0.5 * top.mean(1, keepdim=True)
    else:
        tau = float(spec.partition(":")[2])
        phi = tau * torch.logsumexp(Sm / tau, dim=-1)
    return phi.sum(1) if q_mask is None else (phi * q_mask[:, :, None]).sum(1)


def pooling_of(spec: str) -> Pooling:
    return CenteredMax() if spec == "centered" else parse_pooling(spec)


def batch(Nq: int, Nd: int, T: int, M: int, d: int, seed: int, dtype=torch.float64):
    """Q [Nq, T, d], D [Nd, M, d] and masks with at least one real vector per row."""
    g = torch.Generator().manual_seed(seed)
    Q, D = torch.randn(Nq, T, d, generator=g, dtype=dtype), torch.randn(Nd, M, d, generator=g, dtype=dtype)
    q_mask = torch.rand(Nq, T, generator=g) < 0.7
    q_mask[:, 0] = True
    d_mask = torch.rand(Nd, M, generator=g) < 0.6
    d_mask[torch.arange(Nd), torch.randint(0, M, (Nd,), generator=g)] = True
    return Q, D, q_mask, d_mask


shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 6), st.integers(1, 5))
SPECS = ["lse-test:0.5", "lse-test:0.05", "centered"]


def test_registered_like_a_built_in():
    p = parse_pooling("lse-test:0.25")
    assert p == LogSumExp(0.25) and parse_pooling(p.spec) == p
    assert parse_pooling("LSE-test") == LogSumExp()


@settings(max_examples=30)
@given(st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 9)), st.integers(0, 2**31 - 1),
       st.sampled_from([0.05, 0.5, 3.0]))
def test_smooth_maximum_bounds_and_closed_form_selection(shape, seed, tau):
    """max <= phi <= max + tau log M_valid, and the generic Jacobian (autograd) is the softmax of S / tau."""
    B, T, M = shape
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(B, T, M, generator=g, dtype=torch.float64)
    mask = torch.rand(B, M, generator=g) < 0.6
    mask[:, 0] = True
    phi, top = pool(S, LogSumExp(tau), mask), pool(S, "maxsim", mask)
    n = mask.sum(-1, keepdim=True).double()
    assert bool((phi >= top - 1e-12).all()) and bool((phi <= top + tau * n.log() + 1e-12).all())
    w = torch.softmax(S.masked_fill(~mask[:, None], -math.inf) / tau, -1)
    torch.testing.assert_close(selection(S, LogSumExp(tau), mask), w, rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(shapes, st.integers(0, 2**31 - 1), st.sampled_from(SPECS), st.booleans())
def test_score_matrix_equals_the_definition_chunked_or_not(shape, seed, spec, masked):
    Q, D, qm, dm = batch(*shape, seed)
    qm, dm = (qm, dm) if masked else (None, None)
    ref = definition(Q, D, spec, qm, dm)
    for chunk in (None, 1, 2):
        torch.testing.assert_close(score_matrix(Q, D, pooling_of(spec), qm, dm, chunk_size=chunk), ref,
                                   rtol=1e-12, atol=1e-12)


@settings(max_examples=20)
@given(shapes, st.integers(0, 2**31 - 1), st.sampled_from(SPECS))
def test_score_pairs_is_the_diagonal(shape, seed, spec):
    Nq, _, T, M, d = shape
    Q, D, qm, dm = batch(Nq, Nq, T, M, d, seed)
    p = pooling_of(spec)
    torch.testing.assert_close(score_pairs(Q, D, p, qm, dm), score_matrix(Q, D, p, qm, dm, chunk_size=2).diagonal(),
                               rtol=1e-12, atol=1e-12)


def _grads(fn, Q: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    Q_, D_ = Q.clone().requires_grad_(True), D.clone().requires_grad_(True)
    Z = fn(Q_, D_)
    w = torch.linspace(-1, 2, Z.numel(), dtype=Z.dtype).view_as(Z)  # a generic downstream loss
    return (Z.detach(), *torch.autograd.grad((w * Z).sum(), (Q_, D_)))


@settings(max_examples=25)
@given(shapes, st.integers(0, 2**31 - 1), st.sampled_from(SPECS), st.sampled_from([None, 1, 2]))
def test_gradients_equal_autograd_of_the_definition(shape, seed, spec, chunk):
    """Token-wise: the two-GEMM backward built from the generic Jacobian; token-coupled: autograd."""
    Q, D, qm, dm = batch(*shape, seed)
    got = _grads(lambda q, d: score_matrix(q, d, pooling_of(spec), qm, dm, chunk_size=chunk), Q, D)
    ref = _grads(lambda q, d: definition(q, d, spec, qm, dm), Q, D)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert bool((got[2][~dm] == 0).all())  # masked patches never receive gradient
    if spec != "centered":  # a coupled pooling may use padded tokens (CenteredMax's mean does)
        assert bool((got[1][~qm] == 0).all())


def test_low_precision_is_pooled_in_float32():
    Q, D, qm, dm = batch(2, 5, 4, 6, 8, 0, dtype=torch.float32)
    Z = score_matrix(Q.bfloat16(), D.bfloat16(), "lse-test:0.5", qm, dm)
    assert Z.dtype == torch.float32
    torch.testing.assert_close(Z, definition(Q.bfloat16(), D.bfloat16(), "lse-test:0.5", qm, dm), rtol=1e-5,
                               atol=1e-5)


def _injection_world(seed: int, Nq: int = 3, Nd: int = 6, T: int = 4, M: int = 5, K: int = 3, d: int = 6):
    Q, D, qm, dm = batch(Nq, Nd, T, M, d, seed)
    inj = torch.randn(Nq, K, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    gold = torch.zeros(Nq, Nd, dtype=torch.bool)
    gold[torch.arange(Nq), torch.arange(Nq) % Nd] = True
    return Q, D, inj, qm, dm, gold


@settings(max_examples=20)
@given(st.integers(0, 2**31 - 1), st.sampled_from(SPECS), st.sampled_from([None, 1, 4]), st.integers(1, 7))
def test_score_with_injection_equals_the_explicit_injected_corpus(seed, spec, chunk, K):
    Q, D, inj, qm, dm, gold = _injection_world(seed, K=K)
    p = pooling_of(spec)
    got = score_with_injection(Q, D, p, inj, gold, qm, dm, chunk_size=chunk)
    for a in range(Q.shape[0]):
        Da, ma = inject_corpus(D, dm, inj[a], ~gold[a])
        ref = score_matrix(Q[a : a + 1], Da, p, qm[a : a + 1], ma)[0]
        torch.testing.assert_close(got[a], ref, rtol=1e-12, atol=1e-12)
    clean = score_matrix(Q, D, p, qm, dm, chunk_size=chunk)
    assert torch.equal(got[gold], clean[gold])  # gold documents: score_matrix bit for bit


@pytest.mark.parametrize("spec", SPECS)
def test_selection_mass_on_injected_patches_by_its_definition(spec):
    Q, D, inj, qm, dm, gold = _injection_world(0)
    p, M = pooling_of(spec), D.shape[1]
    per_doc = torch.empty(Q.shape[0], D.shape[0], dtype=torch.float64)
    for a in range(Q.shape[0]):
        Da, ma = inject_corpus(D, dm, inj[a], ~gold[a])
        w = selection(torch.einsum("td,nmd->ntm", Q[a], Da), p, ma)  # [Nd, T, M + K]
        per_doc[a] = w[:, qm[a], M:].sum(-1).mean(1)
    every = selection_mass(Q, D, p, inj, gold, qm, dm, documents="all", reduction="none", chunk_size=2)
    torch.testing.assert_close(every, per_doc.masked_fill(gold, 0).sum(1) / (~gold).sum(1), rtol=1e-12, atol=1e-12)
    scores = score_with_injection(Q, D, p, inj, gold, qm, dm)
    top = scores.masked_fill(gold, -math.inf).argmax(1)
    rate = selection_mass(Q, D, p, inj, gold, qm, dm, reduction="none", scores=scores)
    torch.testing.assert_close(rate, per_doc[torch.arange(Q.shape[0]), top], rtol=1e-12, atol=1e-12)
    assert bool(((rate >= 0) & (rate <= 1 + 1e-12)).all())


def test_token_copies_hijack_a_sharp_smooth_maximum():
    """Spikes that copy the query tokens take (almost) all of a sharp log-sum-exp's selection, as for MaxSim."""
    g = torch.Generator().manual_seed(0)
    Q = torch.nn.functional.normalize(torch.randn(4, 6, 64, generator=g), dim=-1)
    D = torch.nn.functional.normalize(torch.randn(8, 10, 64, generator=g), dim=-1)
    spikes = spike_patches(Q, 6, spike_size=1, generator=g)
    assert hijack_rate(Q, D, "lse-test:0.01", spikes, torch.arange(4)).item() > 0.99


def test_benchmark_harness_times_a_custom_pooling():
    spec = importlib.util.spec_from_file_location("bench_scoring", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    df = bench.pooling_rows([LogSumExp(0.5), "lse-test:0.1", CenteredMax()], T=4, N=6, M=5, d=8, Nq=2, K=3, runs=1)
    assert len(df) == 9 and set(df.path) == {"score", "train", "inject"}
    assert set(df.spec) == {"lse-test:0.5", "lse-test:0.1", "centered-test"}
    assert bool((df.median_ms > 0).all())
