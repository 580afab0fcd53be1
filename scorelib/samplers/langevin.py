"""Langevin samplers of Song & Ermon (2019, 2020): plain and annealed Langevin dynamics, and the
NCSNv2 rules for choosing the noise levels and step size from data."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize
from scipy.stats import norm
from torch import Tensor

from ..adapters import score_to_denoised
from ._common import Callback, Project, ScoreFn, add_noise, prepare_grid


def annealed_langevin(score: ScoreFn, x: Tensor, sigmas: Tensor, *, n_steps_each: int = 100, step_lr: float = 2e-5,
                      denoise: bool = True, generator: torch.Generator | None = None,
                      callback: Callback = None, project: Project = None) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1, in the reference-code convention):

        for σ_i in σ_1 > … > σ_L:  α_i = step_lr · (σ_i/σ_L)²
            repeat n_steps_each:   x ← x + α_i s(x, σ_i) + √(2α_i) z
        optionally (NCSNv2):       x ← x + σ_L² s(x, σ_L)     (Tweedie denoising)

    x: [B, ...] at the first level (e.g. σ_1·randn, or uniform noise as in NCSN). sigmas: [L]
    descending, positive. NCSN CIFAR-10: σ 1→0.01, L = 10, 100 steps, step_lr 2e-5, no denoise.
    NCSNv2 CIFAR-10: σ 50→0.01, L = 232, 5 steps, 6.2e-6, denoise. NFE = L·n_steps_each (+1).
    callback receives {"i", "step", "sigma", "x"} after every update. `project(x, σ)`, when given,
    is applied before each level and after every update (inpainting: see `controllable`).
    """
    s64, sig_b = prepare_grid(sigmas, x, allow_zero_last=False)
    alphas = (step_lr * (s64 / s64[-1]) ** 2).tolist()  # host floats, computed once
    levels = s64.tolist()
    for i, alpha in enumerate(alphas):
        noise_scale = math.sqrt(2 * alpha)
        if project is not None:
            x = project(x, levels[i])
        for step in range(n_steps_each):
            g = score(x, sig_b[i])
            x = add_noise(torch.add(x, g, alpha=alpha), noise_scale, generator)
            if project is not None:
                x = project(x, levels[i])
            if callback is not None:
                callback({"i": i, "step": step, "sigma": sig_b[i][0], "x": x})
    if denoise:
        x = score_to_denoised(x, score(x, sig_b[-1]), levels[-1])
        if project is not None:
            x = project(x, 0.0)
    return x


def langevin(score: ScoreFn, x: Tensor, sigma: float, *, n_steps: int = 1000, step_size: float = 0.05,
             generator: torch.Generator | None = None, callback: Callback = None) -> Tensor:
    """Plain (unadjusted) Langevin dynamics at one noise level: x ← x + ε s(x, σ) + √(2ε) z. x: [B, ...]."""
    sig_b = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    noise_scale = math.sqrt(2 * step_size)
    for step in range(n_steps):
        x = add_noise(torch.add(x, score(x, sig_b), alpha=step_size), noise_scale, generator)
        if callback is not None:
            callback({"i": 0, "step": step, "sigma": sig_b[0], "x": x})
    return x


# ---------------------------------------------------------------------------------------------
# NCSNv2 hyper-parameter rules (Song & Ermon 2020, Techniques 1, 2 and 4)
# ---------------------------------------------------------------------------------------------


def max_pairwise_distance(data: Tensor, chunk: int = 1024) -> float:
    """Largest Euclidean distance between two rows of `data` [N, ...] (Technique 1: σ_1), in chunks."""
    flat = data.reshape(data.shape[0], -1).double()
    sq = (flat**2).sum(1)
    best = 0.0
    for start in range(0, flat.shape[0], chunk):
        block = flat[start : start + chunk]
        d2 = sq[start : start + chunk, None] + sq[None, :] - 2 * block @ flat.T
        best = max(best, float(d2.max()))
    return math.sqrt(max(best, 0.0))


def ncsnv2_ratio(dim: int) -> float:
    """γ = σ_{i-1}/σ_i solving Φ(√(2D)(γ-1) + 3γ) - Φ(√(2D)(γ-1) - 3γ) = 0.5 (Technique 2)."""
    c = math.sqrt(2 * dim)
    if c <= 3:  # then the difference of the two Φ's stays above 1/2 for every γ > 1
        raise ValueError(f"Technique 2 needs dimension D > 4.5 (√(2D) > 3); got D = {dim}")

    def f(g: float) -> float:
        return norm.cdf(c * (g - 1) + 3 * g) - norm.cdf(c * (g - 1) - 3 * g) - 0.5

    return float(optimize.brentq(f, 1.0 + 1e-9, 100.0))


def langevin_variance_ratio(eps: float, sigma_min: float, gamma: float, n_steps: int) -> float:
    """s_T²/σ_i² after T Langevin steps at one level started from the previous level (NCSNv2, eq. 7):

        (1 - ε/σ_L²)^{2T} (γ² - 2ε/(σ_L² - σ_L²(1 - ε/σ_L²)²)) + 2ε/(σ_L² - σ_L²(1 - ε/σ_L²)²)
    """
    e = eps / sigma_min**2
    stationary = 2 * e / (1 - (1 - e) ** 2)
    return (1 - e) ** (2 * n_steps) * (gamma**2 - stationary) + stationary


def _step_lr_at_ratio(gamma: float, sigma_min: float, n_steps_each: int) -> float:
    """step_lr = ε minimising |eq. 7 - 1| at level ratio γ and T = n_steps_each (Technique 4); bounded
    search over ε/σ_L² ∈ [1e-8, 1] to 1e-10."""
    res = optimize.minimize_scalar(
        lambda e: abs(langevin_variance_ratio(e * sigma_min**2, sigma_min, gamma, n_steps_each) - 1),
        bounds=(1e-8, 1.0), method="bounded", options={"xatol": 1e-10})
    return float(res.x) * sigma_min**2


def ncsnv2_step_lr(sigma_max: float, sigma_min: float, n_levels: int, n_steps_each: int) -> float:
    """NCSNv2's step size (Song & Ermon 2020, Technique 4) for the geometric grid of `n_levels` from
    σ_max to σ_min and T = n_steps_each: ε minimising |eq. 7 - 1| at the grid's ratio
    γ = (σ_max/σ_min)^(1/(L-1)) (σ_max/σ_min for L = 1). The number bench's grids use."""
    ratio = (sigma_max / sigma_min) ** (1.0 / max(n_levels - 1, 1))
    return _step_lr_at_ratio(ratio, sigma_min, n_steps_each)


def ncsnv2_settings(data: Tensor, sigma_min: float = 0.01, n_steps_each: int = 5,
                    max_points: int | None = 10_000) -> dict[str, float | int]:
    """Noise levels and step size from training data (Song & Ermon 2020): σ_1 = the largest pairwise
    distance (Technique 1), L from the geometric ratio γ of Technique 2, step_lr minimising
    |eq. 7 - 1| for T = n_steps_each (Technique 4). data: [N, ...]; `max_points` rows are used for σ_1.

    Returns {"sigma_max", "sigma_min", "n_levels", "ratio", "step_lr", "n_steps_each"}.
    """
    pts = data if max_points is None or data.shape[0] <= max_points else data[:max_points]
    sigma_max = max_pairwise_distance(pts)
    dim = int(np.prod(data.shape[1:]))
    gamma = ncsnv2_ratio(dim)
    n_levels = math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1
    grid_ratio = math.exp(math.log(sigma_max / sigma_min) / (n_levels - 1))  # ≤ γ after rounding L up
    return {"sigma_max": sigma_max, "sigma_min": sigma_min, "n_levels": n_levels, "ratio": grid_ratio,
            "step_lr": _step_lr_at_ratio(grid_ratio, sigma_min, n_steps_each), "n_steps_each": n_steps_each}
