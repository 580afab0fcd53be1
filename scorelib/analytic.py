"""Gaussian mixtures with exact scores, denoisers, ε and log-densities at every noise level.

For p = Σ_k w_k N(μ_k, Σ_k), the σ-perturbed density is p_σ = Σ_k w_k N(μ_k, Σ_k + σ² I), so
score, Tweedie denoiser and log-density are closed-form at every σ. These are the oracles that
tests and benchmarks check samplers, losses, adapters and likelihoods against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .adapters import score_to_denoised
from .schedules import vp_sigmas
from .utils import batch_sigma

F64 = torch.float64


class GaussianMixture:
    """Σ_k w_k N(μ_k, Σ_k) in D dimensions, usable as a σ-space score model `gmm(x, sigma)`.

    means: [K, D]; covs: [K, D, D] (symmetric PSD; zero eigenvalues = point masses are allowed);
    weights: [K] (normalised). Inputs x may have any shape [B, ...] with prod(...) = D.
    Arithmetic in float64; outputs in x's dtype.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None):
        means = torch.as_tensor(means, dtype=F64)
        covs = torch.as_tensor(covs, dtype=F64)
        if means.ndim != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ValueError("means must be [K, D] and covs [K, D, D]")
        K = means.shape[0]
        w = torch.full((K,), 1.0 / K, dtype=F64) if weights is None else torch.as_tensor(weights, dtype=F64)
        self.means = means
        self.covs = 0.5 * (covs + covs.transpose(1, 2))
        self.weights = w / w.sum()
        evals, evecs = torch.linalg.eigh(self.covs)
        self.evals = evals.clamp(min=0)  # [K, D]
        self.evecs = evecs  # [K, D, D], columns are eigenvectors

    @staticmethod
    def isotropic(means: Tensor, std: float | Tensor, weights: Tensor | None = None) -> GaussianMixture:
        """Components N(μ_k, std_k² I). std: float or [K]."""
        means = torch.as_tensor(means, dtype=F64)
        K, D = means.shape
        std = torch.as_tensor(std, dtype=F64).expand(K)
        covs = std[:, None, None] ** 2 * torch.eye(D, dtype=F64).expand(K, D, D)
        return GaussianMixture(means, covs, weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Tensor:
        """E[x], float64 [D]."""
        return self.weights @ self.means

    def covariance(self, sigma: float = 0.0) -> Tensor:
        """Cov[x_σ], float64 [D, D]."""
        mu = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :]))
        return second.sum(0) - mu[:, None] * mu[None, :] + sigma**2 * torch.eye(self.dim, dtype=F64)

    # --- per-component quantities at σ ------------------------------------------------------

    def _components(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k N(x; μ_k, Σ_k+σ²I) [B, K], (Σ_k+σ²I)^{-1}(μ_k - x) [B, K, D], and x flat [B, D]."""
        xf = x.reshape(x.shape[0], -1).to(F64)
        if xf.shape[1] != self.dim:
            raise ValueError(f"input has {xf.shape[1]} dimensions per example, the mixture has {self.dim}")
        s2 = batch_sigma(sigma, xf).to(F64)[:, None, None] ** 2  # [B, 1, 1]
        dev = xf.device
        means, evecs, evals = self.means.to(dev), self.evecs.to(dev), self.evals.to(dev)
        diff = means[None] - xf[:, None]  # [B, K, D]
        proj = torch.einsum("kdj,bkd->bkj", evecs, diff)  # coordinates in each eigenbasis
        var = evals[None] + s2  # [B, K, D]
        quad = (proj**2 / var).sum(-1)
        logdet = var.log().sum(-1)
        log_w = self.weights.to(dev).log()[None]
        logpk = log_w - 0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        prec_diff = torch.einsum("kdj,bkj->bkd", evecs, proj / var)
        return logpk, prec_diff, xf

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_σ(x) per example, [B] (float64)."""
        logpk, _, _ = self._components(x, sigma)
        return torch.logsumexp(logpk, dim=1)

    def responsibilities(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Posterior component probabilities p(k | x_σ), [B, K] (float64)."""
        logpk, _, _ = self._components(x, sigma)
        return torch.softmax(logpk, dim=1)

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """∇ₓ log p_σ(x) = Σ_k r_k (Σ_k+σ²I)^{-1}(μ_k - x); x's shape and dtype."""
        logpk, prec_diff, _ = self._components(x, sigma)
        r = torch.softmax(logpk, dim=1)
        return (r[..., None] * prec_diff).sum(1).reshape(x.shape).to(x.dtype)

    __call__ = score

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """E[x₀ | x_σ = x] = x + σ² s (Tweedie), x's shape and dtype."""
        s, x64 = batch_sigma(sigma, x).to(F64), x.to(F64)
        return score_to_denoised(x64, self.score(x64, s), s).to(x.dtype)

    def eps(self, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
        """Exact DDPM ε-prediction E[ε | x_t] at integer timesteps t [B] of the schedule ᾱ."""
        sig = vp_sigmas(alphas_cumprod).to(x_t.device)[t]
        x64 = x_t.to(F64).reshape(x_t.shape[0], -1)
        x_sigma = x64 * (1 + sig[:, None] ** 2).sqrt()
        eps = -sig[:, None] * self.score(x_sigma, sig).reshape(x64.shape)
        return eps.reshape(x_t.shape).to(x_t.dtype)

    def sample(self, n: int, sigma: float = 0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """n samples of p_σ, [n, D]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=F64)
        root = self.evecs * self.evals.sqrt()[:, None, :]  # Σ_k = root rootᵀ
        x = self.means[k] + torch.einsum("nij,nj->ni", root[k], z)
        if sigma:
            x = x + sigma * torch.randn(n, self.dim, generator=generator, dtype=F64)
        return x.to(dtype)
