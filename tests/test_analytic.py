"""The oracle itself against autograd, scipy and sampling."""

import numpy as np
import pytest
import torch
from oracles import F64, gaussian, gaussian_score, mixture
from scipy.stats import multivariate_normal

from scorelib import linear_betas
from scorelib.schedules import alphas_cumprod_from_betas


@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0, 10.0])
def test_log_prob_matches_scipy(sigma):
    gmm = mixture(d=3, k=4, seed=1)
    x = torch.randn(50, 3, dtype=F64) * 3
    want = np.log(sum(
        float(w) * multivariate_normal(m.numpy(), (c + sigma**2 * torch.eye(3, dtype=F64)).numpy()).pdf(x.numpy())
        for w, m, c in zip(gmm.weights, gmm.means, gmm.covs, strict=True)
    ))
    np.testing.assert_allclose(gmm.log_prob(x, sigma).numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 20.0])
def test_score_is_gradient_of_log_prob(sigma):
    gmm = mixture(d=4, k=3, seed=2)
    x = (torch.randn(32, 4, dtype=F64) * 2).requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(gmm.score(x.detach(), sigma), grad, rtol=1e-9, atol=1e-10)


def test_score_any_rank_and_dtype():
    gmm = mixture(d=12, k=2, seed=3)
    x = torch.randn(5, 3, 2, 2)
    s = gmm(x, torch.full((5,), 0.5))
    assert s.shape == x.shape and s.dtype == torch.float32
    torch.testing.assert_close(s.reshape(5, -1), gmm.score(x.reshape(5, -1).double(), 0.5).float())


def test_single_gaussian_score_and_denoiser_closed_form():
    g = gaussian(d=3, seed=4)
    x = torch.randn(20, 3, dtype=F64)
    sigma = 0.8
    torch.testing.assert_close(g.score(x, sigma), gaussian_score(x, g.means[0], g.covs[0], sigma))
    # E[x0 | x] = μ + Σ(Σ + σ²I)⁻¹(x - μ)
    c = g.covs[0] + sigma**2 * torch.eye(3, dtype=F64)
    want = g.means[0] + (g.covs[0] @ torch.linalg.solve(c, (x - g.means[0]).T)).T
    torch.testing.assert_close(g.denoise(x, sigma), want)


def test_exact_eps_of_gaussian():
    """E[ε | x_t] for x_t = √ᾱ x0 + √(1-ᾱ) ε, x0 ~ N(μ, Σ): √(1-ᾱ) C⁻¹ (x_t - √ᾱ μ), C = ᾱΣ + (1-ᾱ)I."""
    g = gaussian(d=3, seed=5)
    abar = alphas_cumprod_from_betas(linear_betas(1000))
    t = torch.tensor([0, 10, 500, 999] * 5)
    xt = torch.randn(20, 3, dtype=F64)
    a = abar[t][:, None, None]
    c = a * g.covs[0] + (1 - a) * torch.eye(3, dtype=F64)
    want = (1 - abar[t])[:, None].sqrt() * torch.linalg.solve(c, xt - abar[t][:, None].sqrt() * g.means[0])
    torch.testing.assert_close(g.eps(xt, t, abar), want)


def test_sampling_moments():
    gmm = mixture(d=2, k=3, seed=6)
    x = gmm.sample(200_000, sigma=0.5, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(x.mean(0), gmm.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gmm.covariance(0.5), atol=0.1, rtol=0.02)
