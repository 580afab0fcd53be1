"""Predictor-corrector sampling (Song et al. 2021b, Algorithms 2-3), in σ-space (VE form).

A step from σ to σ' first runs the corrector at σ, then the predictor σ → σ'. Every predictor
moves x_mean = a·x + c·s(x, σ) and adds noise of std τ (a = 1 but for the VP ancestral step):

    reverse_diffusion   c = σ² - σ'²          τ = √(σ² - σ'²)        (eq. 46, VE)
    euler_maruyama      c = 2σ(σ - σ')        τ = √c                 (EM on dx = -d[σ²] s + √d[σ²] dw̄)
    ancestral           c = σ² - σ'²          τ = σ'√(σ² - σ'²)/σ    (eq. 47; = DDPM / ddim(η=1))
    ancestral, betas    score_sde's VP step x_t' = (x_t + β s_t)/√(1-β) + √β z in σ-space (eq. 47, VP)
    none                no predictor (corrector only)

A step to σ' = 0 is the Tweedie step x = x + σ² s(x, σ) for every predictor, so the sampler ends on
the denoised data (Euler–Maruyama's c = 2σ² there would keep noise of size σ_min).

Correctors: "langevin" (Algorithm 4, step ε = 2α(r‖z‖/‖s‖)² with batch-mean norms as in the
reference code), "ald" (annealed Langevin, ε = 2α(r σ)²), or "none"; α = 1 (VE) or, with `betas`,
α_i = 1 - β_i as score_sde's LangevinCorrector / AnnealedLangevinDynamics for VP / sub-VP. Both are
the x_t-space updates written in σ-space (x_σ = x_t/m(t), s_σ = m s_t), equal draw for draw.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils import randn_like
from ._common import Callback, Project, ScoreFn, add_noise, prepare_grid

F64 = torch.float64

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")


def predictor_coefficients(s64: Tensor, predictor: str,
                           betas: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(a, c, τ) per step for a float64 grid [n] -> three [n-1] tensors: x' = a x + c s + τ z.

    `betas` [n-1] (VP models): the ancestral predictor becomes score_sde's VP update
    (sampling.py `AncestralSamplingPredictor.vpsde_update_fn`) with x_t = m x_σ, m = 1/√(1+σ²):
    a = m/(m'√(1-β)), c = β/(m m'√(1-β)), τ = √β/m'. On a DDPM grid whose β are the respaced
    β = 1 - ᾱ_t/ᾱ_t' this is a = 1, c = σ² - σ'², τ² = (σ² - σ'²)(1 + σ'²)/(1 + σ²) (σ² = β).
    Every predictor's step to σ' = 0 is the Tweedie step (a, c, τ) = (1, σ², 0).
    """
    cur, nxt = s64[:-1], s64[1:]
    diff2 = cur**2 - nxt**2
    a = torch.ones_like(cur)
    if predictor == "reverse_diffusion":
        c, tau = diff2, diff2.sqrt()
    elif predictor == "euler_maruyama":
        c = 2 * cur * (cur - nxt)
        tau = c.sqrt()
    elif predictor == "ancestral" and betas is None:
        c, tau = diff2, nxt * diff2.sqrt() / cur
    elif predictor == "ancestral":
        b = torch.as_tensor(betas, dtype=F64).cpu()
        if b.shape != cur.shape:
            raise ValueError(f"betas must have one entry per step ({cur.shape[0]}), got shape {tuple(b.shape)}")
        m, m_next = (1 + cur**2).rsqrt(), (1 + nxt**2).rsqrt()
        r = 1 / (m_next * (1 - b).sqrt())
        a, c, tau = m * r, b * r / m, b.sqrt() / m_next
    elif predictor == "none":
        return a, torch.zeros_like(cur), torch.zeros_like(cur)
    else:
        raise ValueError(f"unknown predictor {predictor!r}; expected one of {', '.join(PREDICTORS)}")
    last = nxt == 0
    return a.masked_fill(last, 1.0), torch.where(last, cur**2, c), tau.masked_fill(last, 0.0)


def _norm_mean(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).mean()


def corrector_step(score: ScoreFn, x: Tensor, sigma_b: Tensor, sigma: float, corrector: str, snr: float,
                   generator: torch.Generator | None, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """One corrector update at σ with score_sde's factor α (1 - β_i for VP / sub-VP, 1 for VE).
    Returns (x, x_mean)."""
    g = score(x, sigma_b)
    z = randn_like(x, generator)
    if corrector == "langevin":
        step = 2 * alpha * (snr * _norm_mean(z) / _norm_mean(g)) ** 2
    else:  # "ald"
        step = torch.tensor(2 * alpha * (snr * sigma) ** 2, dtype=x.dtype, device=x.device)
    x_mean = x + step * g
    return x_mean + (2 * step).sqrt() * z, x_mean


def pc_sampler(score: ScoreFn, x: Tensor, sigmas: Tensor, *, predictor: str = "reverse_diffusion",
               corrector: str = "langevin", snr: float = 0.16, n_corrector_steps: int = 1, denoise: bool = True,
               generator: torch.Generator | None = None, callback: Callback = None, project: Project = None,
               betas: Tensor | None = None) -> Tensor:
    """Predictor-corrector sampler on the σ grid `sigmas` [n] (descending, the last may be 0).

    x: [B, ...] at sigmas[0]. With `denoise` the noise-free mean of the last update is returned
    (score_sde's `noise_removal`). NFE = (n - 1)(1 + n_corrector_steps) (the predictor "none" saves one
    per step). score_sde CIFAR-10 VE: reverse_diffusion + langevin, snr 0.16, 1 corrector step,
    1000 levels from 50 to 0.01 and a final 0. `project(x, σ)`, when given, is applied to x (and to
    the noise-free mean, at σ = 0) after every update, at the level x is then at (inpainting).
    `betas` [n-1]: the discrete β_i of each step's level for models of a VP / sub-VP SDE (score_sde's
    `sde.discrete_betas[timestep]`): correctors take α_i = 1 - β_i and "ancestral" is the VP update
    (VP only; score_sde has no sub-VP ancestral step). score_sde CIFAR-10 DDPM++ (VP):
    euler_maruyama, no corrector, 1000 levels σ(t) at t uniform from 1 to 1e-3, then 0.
    """
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; expected one of {', '.join(CORRECTORS)}")
    s64, sig_b = prepare_grid(sigmas, x)
    a, c, tau = (v.tolist() for v in predictor_coefficients(s64, predictor, betas))
    alphas = [1.0] * len(c) if betas is None else (1 - torch.as_tensor(betas, dtype=F64)).tolist()
    levels = s64.tolist()
    x_mean = x
    for i in range(len(levels) - 1):
        if corrector != "none":
            for _ in range(n_corrector_steps):
                x, x_mean = corrector_step(score, x, sig_b[i], levels[i], corrector, snr, generator, alphas[i])
                if project is not None:
                    x, x_mean = project(x, levels[i]), project(x_mean, 0.0)
        if predictor != "none":
            x_mean = torch.add(x if a[i] == 1 else a[i] * x, score(x, sig_b[i]), alpha=c[i])
            x = add_noise(x_mean, tau[i], generator) if tau[i] > 0 else x_mean
            if project is not None:
                x, x_mean = project(x, levels[i + 1]), project(x_mean, 0.0)
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "x": x, "x_mean": x_mean})
    return x_mean if denoise else x
