"""Noise-extreme closed forms and controlled gradient-concentration experiments (spikehijack.chapters.ch01_theory)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from spikehijack.chapters import ch01_theory as th
from spikehijack.core.metrics import gini


def sample_noise(n: int, M: int, d: int, seed: int) -> torch.Tensor:
    """S [n, M]: one random unit query against M random unit patches in R^d, n times."""
    g = torch.Generator().manual_seed(seed)
    q = th.random_unit(n, 1, d, generator=g)
    return (q @ th.random_unit(n, M, d, generator=g).transpose(1, 2))[:, 0]


def test_noise_law_has_mean_zero_variance_one_over_d():
    for d in (3, 16, 128):
        law = th.noise_similarity_law(d)
        assert law.mean() == pytest.approx(0.0, abs=1e-12) and law.var() == pytest.approx(1 / d)
    S = sample_noise(4000, 8, 16, seed=0).flatten().numpy()
    assert S.var() == pytest.approx(1 / 16, rel=0.05)


@pytest.mark.parametrize("M,d", [(2, 16), (10, 16), (1000, 16), (300, 128)])
def test_exact_max_equals_the_order_statistic_integral(M, d):
    law = th.noise_similarity_law(d)
    ref, _ = integrate.quad(lambda s: s * M * law.pdf(s) * law.cdf(s) ** (M - 1), -1, 1, limit=400, points=[0.5])
    assert th.expected_max_noise(M, d) == pytest.approx(ref, abs=1e-7)


@pytest.mark.parametrize("M,k", [(1, 1), (2, 1), (16, 1), (64, 1), (64, 4), (200, 16)])
def test_exact_topk_matches_monte_carlo(M, k):
    d, n = 16, 4000
    S = sample_noise(n, M, d, seed=M + k)
    mc = S.topk(k, dim=-1).values.mean(-1).numpy()
    se = mc.std(ddof=1) / math.sqrt(n) + 1e-12
    assert abs(th.expected_topk_noise(M, k, d) - mc.mean()) < 4 * se


def test_topk_properties():
    assert th.expected_topk_noise(5, 5, 16) == 0.0 and th.expected_topk_noise(5, 9, 16) == 0.0
    assert th.expected_topk_noise(64, 1, 16) == pytest.approx(th.expected_max_noise(64, 16))
    vals = [th.expected_topk_noise(256, k, 16) for k in (1, 2, 4, 16, 64, 255)]
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False)) and vals[-1] > 0
    # the top-k mean of M patches is below the max of M/k patches' expectation... but grows with M all the same
    assert th.expected_topk_noise(1024, 4, 16) > th.expected_topk_noise(256, 4, 16)


def test_max_approximations():
    Ms = np.array([2, 10, 100, 1000, 10000])
    exact = th.expected_max_noise(Ms, 1024)
    assert exact.shape == Ms.shape and np.all(np.diff(exact) > 0)
    # at large d the similarities are nearly Gaussian: the Gaussian forms are close to the exact law
    assert th.expected_max_noise(Ms, 1024, "normal") == pytest.approx(exact, rel=0.02)
    assert th.expected_max_noise(Ms[1:], 1024, "gumbel") == pytest.approx(exact[1:], rel=0.08)
    # the leading term sqrt(2 ln M / d) overestimates and converges slowly
    lead = th.expected_max_noise(Ms, 1024, "leading")
    assert np.all(lead > exact) and lead[-1] / exact[-1] < lead[1] / exact[1]
    assert th.expected_max_noise(Ms, 1024, "leading") == pytest.approx(np.sqrt(2 * np.log(Ms) / 1024))
    # at small d the bounded law grows slower than any Gaussian form
    assert th.expected_max_noise(4096, 16) < th.expected_max_noise(4096, 16, "normal")
    assert all(th.expected_max_noise(1, 16, m) == 0.0 for m in th.MAX_METHODS)
    with pytest.raises(ValueError, match="method must be one of"):
        th.expected_max_noise(4, 16, "asymptotic")
    with pytest.raises(ValueError, match="^d must be an integer >= 2"):
        th.expected_max_noise(4, 1)
    with pytest.raises(ValueError, match="^M must be an integer >= 1"):
        th.expected_max_noise(0, 16)


def test_softmax_limit():
    assert th.softmax_noise_limit(128, 1.0) == pytest.approx(1 / 128, rel=0.01)  # about 1 / (d tau)
    assert th.softmax_noise_limit(16, 0.1) < 1 / (16 * 0.1)  # the bounded law tilts less than a Gaussian
    mc = th.noise_pool_monte_carlo(["softmax:1"], [2048], d=16, n_trials=400, seed=0)
    assert mc["mean"].item() == pytest.approx(th.softmax_noise_limit(16, 1.0), abs=0.003)
    with pytest.raises(ValueError, match="^tau must be"):
        th.softmax_noise_limit(16, 0.0)


def test_noise_pool_monte_carlo_table():
    df = th.noise_pool_monte_carlo(["maxsim", "topk:4", "mean"], [1, 8, 64], d=16, n_trials=300, seed=1)
    assert len(df) == 9 and set(df.columns) >= {"pooling", "spec", "M", "mean", "ci_low", "ci_high", "n"}
    wide = df.pivot(index="M", columns="spec", values="mean")
    assert np.all(wide["maxsim"] >= wide["topk:4"] - 1e-12) and np.all(wide["topk:4"] >= wide["mean"] - 1e-12)
    assert wide.loc[1, "maxsim"] == pytest.approx(wide.loc[1, "mean"])
    again = th.noise_pool_monte_carlo(["maxsim", "topk:4", "mean"], [1, 8, 64], d=16, n_trials=300, seed=1)
    assert df.equals(again)


def test_closed_form_errors_are_at_rounding_level():
    df = th.closed_form_errors(["maxsim", "topk:3", "topk:50", "softmax:0.05", "softmax:2", "mean"], N=3, M=12)
    assert (df[["dphi/dS", "dscore/dD", "dscore/dQ"]].to_numpy() < 1e-10).all()


def test_random_pair_gini_and_sweep():
    T, M = 8, 40
    g = th.random_pair_gini("maxsim", T, M, 16, n_pairs=20, seed=0)
    assert g.shape == (20,) and np.all(g >= 1 - T / M - 1e-6)
    assert np.allclose(th.random_pair_gini("mean", T, M, 16, n_pairs=5), 0.0, atol=1e-6)
    # the "pair" reading is scale-free: the batch size does not matter
    assert np.allclose(th.random_pair_gini("topk:4", T, M, 16, 12, batch=4),
                       th.random_pair_gini("topk:4", T, M, 16, 12, batch=12), atol=1e-6)
    df = th.gini_sweep(["maxsim", "topk:4", "softmax:1"], [32, 64], T=8, d=16, n_pairs=8)
    assert len(df) == 6 and df["maxsim_bound"].tolist() == [0.75] * 3 + [0.875] * 3
    wide = df.pivot(index="M", columns="spec", values="mean")
    assert np.all(wide["maxsim"] > wide["topk:4"]) and np.all(wide["topk:4"] > wide["softmax:1"])


def test_paper_printed_gini_is_the_standard_gini_minus_one_over_M():
    for M in (1, 32, 766):
        x = torch.rand(4, M, generator=torch.Generator().manual_seed(M), dtype=torch.float64)
        torch.testing.assert_close(th.paper_printed_gini(x), gini(x).double() - 1 / M, rtol=0, atol=1e-6)
        assert th.paper_printed_gini(torch.ones(M)).item() == pytest.approx(-1 / M)
    with pytest.raises(ValueError, match="non-negative"):
        th.paper_printed_gini(torch.tensor([1.0, -1.0]))
