"""The probability-flow ODE (Song et al. 2021b, eq. 13) in σ-space, solved with torchdiffeq.

dx/dσ = -σ s(x, σ) = (x - D)/σ. We integrate in log σ, dx/d log σ = -σ² s(x, σ) = x - D, which
keeps adaptive step sizes even across many decades of σ. Everything stays on x's device: no host
copy per evaluation (score_sde's scipy path copies to the CPU at every call).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from ..adapters import score_to_denoised
from ._common import Callback, CountingScore, ScoreFn


def _check_levels(sigma_from: float, sigma_to: float) -> None:
    if not (sigma_from > 0 and sigma_to > 0 and math.isfinite(sigma_from) and math.isfinite(sigma_to)):
        raise ValueError(f"noise levels must be positive and finite, got {sigma_from} and {sigma_to}")


def integrate_flow(score: ScoreFn, x: Tensor, sigma_from: float, sigma_to: float, method: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, options: dict[str, Any] | None = None,
                   callback: Callback = None) -> tuple[Tensor, int]:
    """Move x [B, ...] from σ_from to σ_to (either direction) along the probability-flow ODE.
    Returns (x at σ_to, number of score evaluations)."""
    _check_levels(sigma_from, sigma_to)
    counting = CountingScore(score)
    batch = x.shape[0]

    def f(log_sigma: Tensor, y: Tensor) -> Tensor:
        sigma = log_sigma.exp().to(y.dtype)
        s = counting(y, sigma.expand(batch))
        if callback is not None:
            callback({"nfe": counting.nfe, "sigma": sigma, "x": y})
        return -(sigma**2) * s

    t = torch.tensor([math.log(sigma_from), math.log(sigma_to)], dtype=x.dtype, device=x.device)
    out = odeint(f, x, t, rtol=rtol, atol=atol, method=method, options=options)[-1]
    return out, counting.nfe


def probability_flow(score: ScoreFn, x: Tensor, sigma_max: float, sigma_min: float, *, method: str = "dopri5",
                     rtol: float = 1e-5, atol: float = 1e-5, denoise: bool = True,
                     options: dict[str, Any] | None = None, return_nfe: bool = False, callback: Callback = None,
                     generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, int]:
    """Deterministic sampling: solve the probability-flow ODE from x [B, ...] at σ_max down to σ_min
    with any torchdiffeq `method` (fixed-step ones take `options`, e.g. {"step_size": 0.1} in log σ),
    then, with `denoise`, one Tweedie step x + σ_min² s(x, σ_min).

    Returns x, or (x, NFE) with `return_nfe`; `callback` sees {"nfe", "sigma", "x"} at every evaluation.
    `generator` is accepted as by every sampler and unused: the ODE draws nothing.
    """
    out, nfe = integrate_flow(score, x, sigma_max, sigma_min, method, rtol, atol, options, callback)
    if denoise:
        sig = torch.full((x.shape[0],), sigma_min, dtype=x.dtype, device=x.device)
        out = score_to_denoised(out, score(out, sig), sigma_min)
        nfe += 1
    return (out, nfe) if return_nfe else out


def encode(score: ScoreFn, x: Tensor, sigma_min: float, sigma_max: float, method: str = "dopri5",
           rtol: float = 1e-5, atol: float = 1e-5, options: dict[str, Any] | None = None) -> Tensor:
    """The latent of data x [B, ...]: the probability-flow ODE run upwards from σ_min to σ_max
    (the inverse of `probability_flow` without its final denoising step)."""
    return integrate_flow(score, x, sigma_min, sigma_max, method, rtol, atol, options)[0]
