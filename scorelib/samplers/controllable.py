"""Controllable generation: inpainting / imputation and latent interpolation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..utils import append_dims
from ._common import ScoreFn, add_noise
from .langevin import annealed_langevin
from .ode import encode, probability_flow
from .pc import pc_sampler


def known_projector(known: Tensor, mask: Tensor, generator: torch.Generator | None = None,
                    once_per_level: bool = True):
    """x ↦ mask·(y + σz) + (1 - mask)·x: known values y replaced by their noised versions at the level σ.

    known: [B, ...] data (its masked-out entries are ignored); mask: 1 where known, broadcastable to
    known. `once_per_level` draws z once per σ (NCSN's inpainting); otherwise fresh at every call
    (score_sde's inpainter). σ = 0 inserts the clean known values.
    """
    mask = mask.to(known.dtype).expand_as(known)
    cache: dict[float, Tensor] = {}

    def project(x: Tensor, sigma: float) -> Tensor:
        if sigma == 0:
            y = known
        elif once_per_level and sigma in cache:
            y = cache[sigma]
        else:
            y = add_noise(known, sigma, generator)
            if once_per_level:
                cache.clear()
                cache[sigma] = y
        return torch.lerp(x, y, mask)

    return project


def inpaint_langevin(score: ScoreFn, x: Tensor, sigmas: Tensor, known: Tensor, mask: Tensor, *,
                     n_steps_each: int = 100, step_lr: float = 2e-5, denoise: bool = True,
                     generator: torch.Generator | None = None) -> Tensor:
    """Imputation with annealed Langevin dynamics (Song & Ermon 2019, Appendix B.3): at each level the
    known entries are set to y + σ_i z and re-imposed after every step. x: [B, ...] initial noise.
    The result carries the clean known values where mask = 1."""
    project = known_projector(known, mask, generator, once_per_level=True)
    x = annealed_langevin(score, x, sigmas, n_steps_each=n_steps_each, step_lr=step_lr, denoise=denoise,
                          generator=generator, project=project)
    return project(x, 0.0)


def inpaint_pc(score: ScoreFn, x: Tensor, sigmas: Tensor, known: Tensor, mask: Tensor, *,
               generator: torch.Generator | None = None, **pc_kwargs: Any) -> Tensor:
    """Imputation with the predictor-corrector sampler (Song et al. 2021b, Appendix I.2): after every
    update the known entries are replaced by y + σ z at the level x has reached; `generator` draws both."""
    project = known_projector(known, mask, generator, once_per_level=False)
    return project(pc_sampler(score, x, sigmas, project=project, generator=generator, **pc_kwargs), 0.0)


def slerp(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """Spherical interpolation per example between a and b ([B, ...]) at fraction alpha."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta).clamp(min=1e-8)
    wa = torch.where(theta < 1e-4, 1 - alpha, torch.sin((1 - alpha) * theta) / sin)
    wb = torch.where(theta < 1e-4, torch.full_like(theta, alpha), torch.sin(alpha * theta) / sin)
    return append_dims(wa, a.ndim) * a + append_dims(wb, a.ndim) * b


def interpolate(score: ScoreFn, x_a: Tensor, x_b: Tensor, n: int, sigma_max: float, sigma_min: float,
                **ode_kwargs: Any) -> Tensor:
    """Latent interpolation through the probability-flow ODE (Song et al. 2021b, §4.3): encode x_a and
    x_b ([B, ...], taken as points at σ_min) to their latents at σ_max, slerp the latents, decode each
    back to σ_min (no final denoising, so the end frames reproduce x_a and x_b). Returns [n, B, ...]."""
    za = encode(score, x_a, sigma_min, sigma_max, **ode_kwargs)
    zb = encode(score, x_b, sigma_min, sigma_max, **ode_kwargs)
    frames = [probability_flow(score, slerp(za, zb, float(t)), sigma_max, sigma_min, denoise=False, **ode_kwargs)
              for t in torch.linspace(0, 1, n).tolist()]
    return torch.stack(frames)
