"""DDIM (η ∈ [0, 1]) and DDPM ancestral sampling in σ-space (Song et al. 2021a; Ho et al. 2020).

On a grid σ_0 > σ_1 > … (a trailing 0 allowed), one step from σ to σ' with D = x + σ² s(x, σ):

    x' = D + σ_down (x - D)/σ + σ_up z,   σ_up = η σ'√(σ² - σ'²)/σ,   σ_down = √(σ'² - σ_up²)

η = 0 is Euler on the probability-flow ODE dx/dσ = (x - D)/σ; η = 1 samples the exact posterior
q(x_{σ'} | x_σ, x₀ = D), which is DDPM with the posterior variance β̃ on that subsequence. In VP
coordinates this is DDIM's update (Song et al. 2021a, eq. 12) divided by √ᾱ_{t'}.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..adapters import score_to_denoised
from ..utils import randn_like
from ._common import Callback, ScoreFn, add_noise, prepare_grid


def ddim_coefficients(s64: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(σ_down, σ_up) for every step of a float64 grid [n] -> two [n-1] tensors."""
    cur, nxt = s64[:-1], s64[1:]
    up = (eta * nxt * (cur**2 - nxt**2).clamp(min=0).sqrt() / cur).minimum(nxt)
    return (nxt**2 - up**2).clamp(min=0).sqrt(), up


def _posterior_step_loop(score: ScoreFn, x: Tensor, down: list[float], up: list[float], s64: Tensor,
                         sig_b: Tensor, generator: torch.Generator | None, callback: Callback) -> Tensor:
    """x ← D + (σ_down/σ)(x - D) + σ_up z over the grid (shared by ddim and ddpm_ancestral)."""
    cur = s64[:-1].tolist()
    for i in range(len(cur)):
        s = score(x, sig_b[i])
        # D + (σ_down/σ)(x - D) with D = x + σ² s, as one update: x + (1 - σ_down/σ) σ² s
        x_next = torch.add(x, s, alpha=(1 - down[i] / cur[i]) * cur[i] ** 2)
        if up[i] > 0:
            x_next = add_noise(x_next, up[i], generator)
        if callback is not None:
            d = score_to_denoised(x, s, cur[i])
            callback({"i": i, "sigma": sig_b[i][0], "sigma_next": sig_b[i + 1][0], "x": x_next, "denoised": d})
        x = x_next
    return x


def ddim(score: ScoreFn, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, generator: torch.Generator | None = None,
         callback: Callback = None, clip_denoised: bool = False,
         guidance: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """DDIM with stochasticity η ∈ [0, 1] on the σ grid `sigmas` [n] (descending; the last may be 0,
    then the result is the denoised sample). x: [B, ...] at sigmas[0]. NFE = n - 1.

    To reproduce DDIM on DDPM timesteps t_1 > … > t_N, pass `timesteps_to_sigmas(ᾱ, t)` (which
    appends 0) and start from x_T·√(1+σ_{t_1}²).

    clip_denoised: clamp D = x̂₀ to [-1, 1] and take the step from the clamped D, ε = (x - D)/σ
    (improved- / guided-diffusion `ddim_sample`, whose `p_mean_variance` clips by default).
    guidance: `g(x, sigma) -> w ∇ₓ log p(y | x, σ)` (σ-space, e.g. `ClassifierGuidance.guidance_grad`) of a
    score model passed without it, applied after the clamp as guided-diffusion's `condition_score`:
    ε' = ε - √(1-ᾱ) w∇_{x_t} log p re-derived from the clamped x̂₀, in σ-space D' = D + σ² g (D' not
    clamped again). Without clipping this equals passing the guided score (ClassifierGuidance's "score"
    convention).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    s64, sig_b = prepare_grid(sigmas, x)
    down, up = ddim_coefficients(s64, eta)
    if not clip_denoised and guidance is None:
        return _posterior_step_loop(score, x, down.tolist(), up.tolist(), s64, sig_b, generator, callback)
    return _ddim_denoised_loop(score, x, s64, sig_b, down.tolist(), up.tolist(), clip_denoised, guidance, generator,
                               callback)


def _ddim_denoised_loop(score: ScoreFn, x: Tensor, s64: Tensor, sig_b: list[Tensor], down: list[float],
                        up: list[float], clip: bool, guidance: Callable[[Tensor, Tensor], Tensor] | None,
                        generator: torch.Generator | None, callback: Callback) -> Tensor:
    """DDIM from an explicit x̂₀: D (clamped), then D + σ² g, then x' = D + (σ_down/σ)(x - D) + σ_up z."""
    cur = s64[:-1].tolist()
    for i in range(len(cur)):
        d = score_to_denoised(x, score(x, sig_b[i]), cur[i])
        if clip:
            d = d.clamp(-1, 1)
        if guidance is not None:  # condition_score: ε' = ε_clipped - σ g (σ-space), x̂₀' = x - σ ε'
            d = torch.add(d, guidance(x, sig_b[i]), alpha=cur[i] ** 2)
        x_next = torch.lerp(d, x, down[i] / cur[i])
        if up[i] > 0:
            x_next = add_noise(x_next, up[i], generator)
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "sigma_next": sig_b[i + 1][0], "x": x_next, "denoised": d})
        x = x_next
    return x


def respaced_betas(s64: Tensor) -> tuple[Tensor, Tensor]:
    """(β, β̃) of each step of a σ grid [n] as a DDPM on those levels, float64 [n-1] each.

    The respaced process of improved-diffusion (respace.py `SpacedDiffusion`): β = 1 - ᾱ_t/ᾱ_t' of
    consecutive kept levels, in σ-space β = (σ² - σ'²)/(1 + σ²), and β̃ = β (1 - ᾱ_t')/(1 - ᾱ_t)
    = (σ² - σ'²)σ'²/(σ²(1 + σ'²)); β̃ of a final step to σ' = 0 is clipped to the step before's
    (`posterior_log_variance_clipped`).
    """
    cur, nxt = s64[:-1], s64[1:]
    beta = (cur**2 - nxt**2) / (1 + cur**2)
    beta_tilde = (cur**2 - nxt**2) * nxt**2 / (cur**2 * (1 + nxt**2))
    if len(cur) > 1 and float(nxt[-1]) == 0:
        beta_tilde = torch.cat([beta_tilde[:-1], beta_tilde[-2:-1]])
    return beta, beta_tilde


def ddpm_ancestral(score: ScoreFn, x: Tensor, sigmas: Tensor, *, variance: str = "small",
                   generator: torch.Generator | None = None, callback: Callback = None, clip_denoised: bool = False,
                   guidance: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on a σ grid, in σ-space.

    Mean: the posterior mean μ̃ = D + (σ'²/σ²)(x - D). Variance Σ (of x_t' in DDPM coordinates):
    "small" = β̃ (the posterior, = `ddim(eta=1)`), "large" = β (Ho et al.'s σ_t² = β_t, VP-specific: in
    σ-space (σ² - σ'²)(1 + σ'²)/(1 + σ²)), "learned" = exp(v log β + (1 - v) log β̃) with v from
    `score.score_and_variance` (`EpsToScore(..., learned_variance=True)`), β and β̃ those of the respaced
    grid (`respaced_betas`), exactly as improved-diffusion's `p_mean_variance` / `p_sample` on a
    `SpacedDiffusion`. No noise is added on a final step to σ' = 0, whose result is D.

    clip_denoised: clamp D = x̂₀ to [-1, 1] before the posterior mean (improved-diffusion's
    `clip_denoised=True`, its sampling default). guidance: `g(x, sigma) -> w ∇ₓ log p(y | x, σ)`
    (σ-space, e.g. `ClassifierGuidance.guidance_grad`) shifts the mean by Σ w∇_{x_t} log p as
    guided-diffusion's `condition_mean`. x: [B, ...] at sigmas[0] (x_T·√(1+σ_T²)).
    """
    if variance not in ("small", "large", "learned"):
        raise ValueError(f"variance must be 'small', 'large' or 'learned', got {variance!r}")
    s64, sig_b = prepare_grid(sigmas, x)
    cur, nxt = s64[:-1], s64[1:]
    down_small, up_small = ddim_coefficients(s64, 1.0)
    if variance != "learned" and not clip_denoised and guidance is None:
        if variance == "small":
            up = up_small
        else:
            up = ((cur**2 - nxt**2) * (1 + nxt**2) / (1 + cur**2)).sqrt() * (nxt > 0)
        # the same posterior mean for both (σ_down/σ = σ'²/σ²), only the noise differs
        return _posterior_step_loop(score, x, down_small.tolist(), up.tolist(), s64, sig_b, generator, callback)
    if variance == "learned" and not hasattr(score, "score_and_variance"):
        raise ValueError("variance='learned' needs a score model with a learned variance "
                         "(EpsToScore(..., learned_variance=True))")
    return _ancestral_loop(score, x, s64, sig_b, variance, clip_denoised, guidance, generator, callback)


def _ancestral_loop(score: ScoreFn, x: Tensor, s64: Tensor, sig_b: list[Tensor], variance: str, clip: bool,
                    guidance: Callable[[Tensor, Tensor], Tensor] | None, generator: torch.Generator | None,
                    callback: Callback) -> Tensor:
    """The general ancestral step: per-element learned Σ, x̂₀ clipping, mean guidance."""
    beta, beta_tilde = respaced_betas(s64)
    cur, nxt = s64[:-1], s64[1:]
    if variance == "small":  # `variance` of p_mean_variance: β̃ unclipped (0 on a last step to σ' = 0)
        fixed = (cur**2 - nxt**2) * nxt**2 / (cur**2 * (1 + nxt**2))
    else:  # "large": β, and β̃ of the step before on a last step to 0 (FIXED_LARGE's β̃_1 at t = 0)
        fixed = torch.where(nxt == 0, beta_tilde, beta)
    log_b, log_bt = beta.log().tolist(), beta_tilde.log().tolist()
    levels, ratio, fixed = s64.tolist(), (nxt**2 / cur**2).tolist(), fixed.tolist()
    # σ-space factors: x_σ' = x_t'/m', m = 1/√(1+σ²): noise variance Σ(1+σ'²), mean shift Σ g_σ/(m m')
    to_sigma = (1 + nxt**2).tolist()
    shift = ((1 + cur**2) * (1 + nxt**2)).sqrt().tolist()
    for i in range(len(levels) - 1):
        sigma = levels[i]
        if variance == "learned":
            s, v = score.score_and_variance(x, sig_b[i])
            var = torch.exp(v * log_b[i] + (1 - v) * log_bt[i])  # p_mean_variance, LEARNED_RANGE
        else:
            s, var = score(x, sig_b[i]), fixed[i]
        d = score_to_denoised(x, s, sigma)
        if clip:
            d = d.clamp(-1, 1)
        mean = torch.lerp(d, x, ratio[i])  # D + (σ'²/σ²)(x - D): q_posterior_mean_variance
        if guidance is not None:  # guided-diffusion condition_mean: μ + Σ ∇_{x_t} log p
            mean = mean + (var * shift[i]) * guidance(x, sig_b[i])
        x_next = mean
        if levels[i + 1] > 0:
            std = (var * to_sigma[i]) ** 0.5
            x_next = mean + std * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "sigma_next": sig_b[i + 1][0], "x": x_next, "denoised": d})
        x = x_next
    return x
