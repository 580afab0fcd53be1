"""Sample-quality metrics for low-dimensional (e.g. 2-D toy) distributions.

- Sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015):
  SW_p(P, Q) = (E_θ W_p^p(θ#P, θ#Q))^{1/p}, θ uniform on the unit sphere, estimated with random
  directions; each 1-D W_p is exact, from the sorted projections (the quantile functions).
- MMD² with a Gaussian RBF kernel, unbiased (Gretton et al. 2012, eq. 3), bandwidth by the
  median heuristic (Gretton et al. 2012, §8).
- Mean log-density of samples under a known mixture: an estimate of the cross-entropy -E_q log p.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..analytic import GaussianMixture

F64 = torch.float64


def _flat64(x: Tensor) -> Tensor:
    """[N, ...] -> [N, D] float64."""
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], -1).to(F64)


def wasserstein_1d(u: Tensor, v: Tensor, p: float = 2.0) -> Tensor:
    """Exact W_p^p between the empirical distributions in each row: u [P, n], v [P, m] -> [P].

    W_p^p = ∫₀¹ |F⁻¹(t) - G⁻¹(t)|^p dt; the quantile functions are piecewise constant between the
    breakpoints {i/n} ∪ {j/m}, so the integral is a finite sum (n = m: the mean of |u₍ᵢ₎ - v₍ᵢ₎|^p).
    """
    u, v = u.sort(-1).values, v.sort(-1).values
    n, m = u.shape[-1], v.shape[-1]
    if n == m:
        return (u - v).abs().pow(p).mean(-1)
    dev = u.device
    t = torch.cat([torch.arange(1, n + 1, device=dev, dtype=F64) / n,
                   torch.arange(1, m + 1, device=dev, dtype=F64) / m]).sort().values  # right ends
    w = torch.diff(t, prepend=t.new_zeros(1))  # interval lengths (zero for shared breakpoints)
    mid = t - w / 2
    iu = (mid * n).long().clamp(max=n - 1)
    iv = (mid * m).long().clamp(max=m - 1)
    return ((u[..., iu] - v[..., iv]).abs().pow(p) * w).sum(-1)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, p: float = 2.0,
                       generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein distance SW_p between samples x [N, ...] and y [M, ...] (N ≠ M allowed).

    Monte Carlo over `n_projections` directions θ uniform on the sphere S^{D-1} (from `generator`);
    float64. For a pure shift y = x + δ: SW_1 = ‖δ‖ E|θ₁| and SW_2 = ‖δ‖ / √D.
    """
    xf, yf = _flat64(x), _flat64(y)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"dimensions differ: {xf.shape[1]} vs {yf.shape[1]}")
    theta = torch.randn(n_projections, xf.shape[1], generator=generator, dtype=F64).to(xf.device)
    theta = theta / theta.norm(dim=1, keepdim=True)
    wp = wasserstein_1d(theta @ xf.T, theta @ yf.to(xf.device).T, p)  # [P]
    return float(wp.mean() ** (1 / p))


def median_bandwidth(x: Tensor, y: Tensor, max_points: int = 2000) -> float:
    """Median pairwise Euclidean distance of the pooled samples (at most `max_points`, evenly strided)."""
    z = torch.cat([_flat64(x), _flat64(y)])
    if len(z) > max_points:
        z = z[torch.linspace(0, len(z) - 1, max_points).long()]
    return float(torch.pdist(z).median())


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD² between x [N, ...] and y [M, ...], k(a, b) = exp(-‖a - b‖² / (2 h²)); float64.

    h = `bandwidth`, or the median heuristic `median_bandwidth(x, y)`. Can be slightly negative.
    """
    xf = _flat64(x)
    yf = _flat64(y).to(xf.device)
    n, m = len(xf), len(yf)
    if n < 2 or m < 2:
        raise ValueError("MMD needs at least 2 samples in each set")
    h = median_bandwidth(xf, yf) if bandwidth is None else bandwidth
    gamma = 1.0 / (2 * h**2)
    kxx = torch.exp(-gamma * torch.cdist(xf, xf).square())
    kyy = torch.exp(-gamma * torch.cdist(yf, yf).square())
    kxy = torch.exp(-gamma * torch.cdist(xf, yf).square())
    mmd2 = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(mmd2 - 2 * kxy.mean())


def mean_log_density(samples: Tensor, gmm: GaussianMixture) -> float:
    """Mean of log p(x) over samples [N, ...] under the mixture (nats); -H(p) when samples come from p."""
    return float(gmm.log_prob(_flat64(samples)).mean())


def toy_metrics(samples: Tensor, real: Tensor, gmm: GaussianMixture | None = None,
                generator: torch.Generator | None = None) -> dict[str, float]:
    """SW_2 (`sliced_wasserstein`), MMD² (`mmd_rbf`) of samples vs real [M, D], and with a known
    mixture the `mean_log_density` of the samples and, for reference, of the real set."""
    out = {"sliced_wasserstein": sliced_wasserstein(samples, real, generator=generator),
           "mmd_rbf": mmd_rbf(samples, real)}
    if gmm is not None:
        out["mean_log_density"] = mean_log_density(samples, gmm)
        out["mean_log_density_real"] = mean_log_density(real, gmm)
    return out
