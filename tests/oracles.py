"""Analytic oracles shared by the tests: Gaussians and Gaussian mixtures with exact scores,
ε and log-densities at every σ and every DDPM timestep (via scorelib.analytic.GaussianMixture,
itself checked against autograd and scipy in test_analytic.py)."""

from __future__ import annotations

import math

import torch

from scorelib.analytic import GaussianMixture

F64 = torch.float64


def random_spd(d: int, g: torch.Generator, scale: float = 1.0, floor: float = 0.05) -> torch.Tensor:
    """A random symmetric positive-definite [d, d] matrix with eigenvalues in [floor, floor + scale]."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    ev = floor + scale * torch.rand(d, generator=g, dtype=F64)
    return q @ torch.diag(ev) @ q.T


def gaussian(d: int = 3, seed: int = 0) -> GaussianMixture:
    """A single Gaussian with random mean and full covariance."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(1, d, generator=g, dtype=F64)
    return GaussianMixture(mean, random_spd(d, g)[None])


def mixture(d: int = 2, k: int = 3, seed: int = 0, spread: float = 3.0, scale: float = 0.5) -> GaussianMixture:
    """A k-component mixture with random means, full covariances and unequal weights."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, d, generator=g, dtype=F64)
    covs = torch.stack([random_spd(d, g, scale=scale) for _ in range(k)])
    weights = 0.5 + torch.rand(k, generator=g, dtype=F64)
    return GaussianMixture(means, covs, weights)


def sharp_mixture(d: int = 2, k: int = 4, std: float = 0.05, seed: int = 0) -> GaussianMixture:
    """Well-separated isotropic modes with small std: a hard case for few-step solvers."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=F64)
    means = means / means.norm(dim=1, keepdim=True)
    return GaussianMixture.isotropic(means, std)


def gaussian_score(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, sigma: float) -> torch.Tensor:
    """Independent closed form: ∇ log N(x; μ, Σ + σ² I) for x [B, D]."""
    c = cov + sigma**2 * torch.eye(cov.shape[0], dtype=F64)
    return torch.linalg.solve(c, (mean[None] - x.to(F64)).T).T


def standard_normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def gaussian_flow(g: GaussianMixture, x: torch.Tensor, s0: float, s1: float) -> torch.Tensor:
    """Exact probability-flow map of a single Gaussian N(μ, Σ) from level s0 to s1:
    x ↦ μ + U diag(√((λ+s1²)/(λ+s0²))) Uᵀ (x - μ)."""
    mu, lam, U = g.means[0], g.evals[0], g.evecs[0]
    scale = ((lam + s1**2) / (lam + s0**2)).sqrt()
    return mu + ((x.to(F64) - mu) @ U) * scale @ U.T
