"""DDIM (η ∈ [0, 1]) and DDPM ancestral sampling in σ-space (Song et al. 2021a; Ho et al. 2020).

On a grid σ_0 > σ_1 > … (a trailing 0 allowed), one step from σ to σ' with D = x + σ² s(x, σ):

    x' = D + σ_down (x - D)/σ + σ_up z,   σ_up = η σ'√(σ² - σ'²)/σ,   σ_down = √(σ'² - σ_up²)

η = 0 is Euler on the probability-flow ODE dx/dσ = (x - D)/σ; η = 1 samples the exact posterior
q(x_{σ'} | x_σ, x₀ = D), which is DDPM with the posterior variance β̃ on that subsequence. In VP
coordinates this is DDIM's update (Song et al. 2021a, eq. 12) divided by √ᾱ_{t'}.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
            d = torch.add(x, s, alpha=cur[i] ** 2)
            callback({"i": i, "sigma": sig_b[i][0], "sigma_next": sig_b[i + 1][0], "x": x_next, "denoised": d})
        x = x_next
    return x


def ddim(score: ScoreFn, x: Tensor, sigmas: Tensor, eta: float = 0.0, generator: torch.Generator | None = None,
         callback: Callback = None) -> Tensor:
    """DDIM with stochasticity η ∈ [0, 1] on the σ grid `sigmas` [n] (descending; the last may be 0,
    then the result is the denoised sample). x: [B, ...] at sigmas[0]. NFE = n - 1.

    To reproduce DDIM on DDPM timesteps t_1 > … > t_N, pass `timesteps_to_sigmas(ᾱ, t)` (which
    appends 0) and start from x_T·√(1+σ_{t_1}²).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    s64, sig_b = prepare_grid(sigmas, x)
    down, up = ddim_coefficients(s64, eta)
    return _posterior_step_loop(score, x, down.tolist(), up.tolist(), s64, sig_b, generator, callback)


def ddpm_ancestral(score: ScoreFn, x: Tensor, sigmas: Tensor, variance: str = "small",
                   generator: torch.Generator | None = None, callback: Callback = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on a σ grid, in σ-space.

    Mean: the posterior mean μ̃ = D + (σ'²/σ²)(x - D). Variance: "small" = β̃ (the posterior,
    = `ddim(eta=1)`), "large" = β (Ho et al.'s σ_t² = β_t, VP-specific: in σ-space
    (σ² - σ'²)(1 + σ'²)/(1 + σ²)). No noise is added on a final step to σ' = 0.
    """
    s64, sig_b = prepare_grid(sigmas, x)
    cur, nxt = s64[:-1], s64[1:]
    down_small, up_small = ddim_coefficients(s64, 1.0)
    if variance == "small":
        down, up = down_small, up_small
    elif variance == "large":
        up = ((cur**2 - nxt**2) * (1 + nxt**2) / (1 + cur**2)).sqrt() * (nxt > 0)
        down = down_small  # the same posterior mean (σ_down/σ = σ'²/σ²), only the noise differs
    else:
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    return _posterior_step_loop(score, x, down.tolist(), up.tolist(), s64, sig_b, generator, callback)
