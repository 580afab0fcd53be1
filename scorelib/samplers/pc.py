"""Predictor-corrector sampling (Song et al. 2021b, Algorithms 2-3), in σ-space (VE form).

A step from σ to σ' first runs the corrector at σ, then the predictor σ → σ'. Every predictor
moves x_mean = x + c·s(x, σ) and adds noise of std τ:

    reverse_diffusion   c = σ² - σ'²          τ = √(σ² - σ'²)        (eq. 46, VE)
    euler_maruyama      c = 2σ(σ - σ')        τ = √c                 (EM on dx = -d[σ²] s + √d[σ²] dw̄)
    ancestral           c = σ² - σ'²          τ = σ'√(σ² - σ'²)/σ    (eq. 47; = DDPM / ddim(η=1))
    none                no predictor (corrector only)

Correctors: "langevin" (Algorithm 4, step ε = 2(r‖z‖/‖s‖)² with batch-mean norms as in the
reference code, α = 1 in σ-space), "ald" (annealed Langevin, ε = 2(r σ)²), or "none".
Models from VP SDEs run here through their σ-space adapter, so every predictor sees VE form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import Callback, Project, ScoreFn, add_noise, noise_like, prepare_grid

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")


def predictor_coefficients(s64: Tensor, predictor: str) -> tuple[Tensor, Tensor]:
    """(c, τ) per step for a float64 grid [n] -> two [n-1] tensors."""
    cur, nxt = s64[:-1], s64[1:]
    diff2 = cur**2 - nxt**2
    if predictor == "reverse_diffusion":
        return diff2, diff2.sqrt()
    if predictor == "euler_maruyama":
        c = 2 * cur * (cur - nxt)
        return c, c.sqrt()
    if predictor == "ancestral":
        return diff2, nxt * diff2.sqrt() / cur
    if predictor == "none":
        return torch.zeros_like(cur), torch.zeros_like(cur)
    raise ValueError(f"unknown predictor {predictor!r}; expected one of {', '.join(PREDICTORS)}")


def _norm_mean(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).mean()


def corrector_step(score: ScoreFn, x: Tensor, sigma_b: Tensor, sigma: float, corrector: str, snr: float,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One corrector update at σ. Returns (x, x_mean)."""
    g = score(x, sigma_b)
    z = noise_like(x, generator)
    if corrector == "langevin":
        step = 2 * (snr * _norm_mean(z) / _norm_mean(g)) ** 2
    else:  # "ald"
        step = torch.tensor(2 * (snr * sigma) ** 2, dtype=x.dtype, device=x.device)
    x_mean = x + step * g
    return x_mean + (2 * step).sqrt() * z, x_mean


def pc_sampler(score: ScoreFn, x: Tensor, sigmas: Tensor, predictor: str = "reverse_diffusion",
               corrector: str = "langevin", snr: float = 0.16, n_corrector_steps: int = 1, denoise: bool = True,
               generator: torch.Generator | None = None, callback: Callback = None, project: Project = None) -> Tensor:
    """Predictor-corrector sampler on the σ grid `sigmas` [n] (descending, the last may be 0).

    x: [B, ...] at sigmas[0]. With `denoise` the noise-free mean of the last update is returned
    (score_sde's `noise_removal`). NFE = (n - 1)(1 + n_corrector_steps) (the predictor "none" saves one
    per step). score_sde CIFAR-10 VE: reverse_diffusion + langevin, snr 0.16, 1 corrector step,
    1000 levels from 50 to 0.01 and a final 0. `project(x, σ)`, when given, is applied to x (and to
    the noise-free mean, at σ = 0) after every update, at the level x is then at (inpainting).
    """
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; expected one of {', '.join(CORRECTORS)}")
    s64, sig_b = prepare_grid(sigmas, x)
    c, tau = (v.tolist() for v in predictor_coefficients(s64, predictor))
    levels = s64.tolist()
    x_mean = x
    for i in range(len(levels) - 1):
        if corrector != "none":
            for _ in range(n_corrector_steps):
                x, x_mean = corrector_step(score, x, sig_b[i], levels[i], corrector, snr, generator)
                if project is not None:
                    x, x_mean = project(x, levels[i]), project(x_mean, 0.0)
        if predictor != "none":
            x_mean = torch.add(x, score(x, sig_b[i]), alpha=c[i])
            x = add_noise(x_mean, tau[i], generator) if tau[i] > 0 else x_mean
            if project is not None:
                x, x_mean = project(x, levels[i + 1]), project(x_mean, 0.0)
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "x": x, "x_mean": x_mean})
    return x_mean if denoise else x
