"""Pieces every sampler shares: grid preparation, noise, callbacks, NFE counting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..adapters import score_to_denoised
from ..utils import ScoreFn, check_sigmas

Callback = Callable[[dict[str, Any]], None] | None
Project = Callable[[Tensor, float], Tensor] | None


def prepare_grid(sigmas: Tensor, x: Tensor, allow_zero_last: bool = True) -> tuple[Tensor, list[Tensor]]:
    """Validate a σ grid once, before a loop. Returns (float64 copy on the CPU for coefficient
    arithmetic, one contiguous batch σ [B] per level in x's dtype/device, passed to the score)."""
    sigmas = torch.as_tensor(sigmas)
    check_sigmas(sigmas, allow_zero_last)
    s64 = sigmas.detach().to("cpu", torch.float64)
    rows = s64.to(x.device, x.dtype)[:, None].expand(len(s64), x.shape[0]).contiguous().unbind(0)
    return s64, list(rows)


def add_noise(mean: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """mean + std·z, z ~ N(0, I) of mean's shape, dtype and device: the same draws as
    `mean + std * randn_like(mean, generator)` (utils) in one operator (the loops' per-step cost)."""
    return torch.normal(mean, std, generator=generator)


def denoised(score: ScoreFn, x: Tensor, sigma_b: Tensor, sigma: float) -> Tensor:
    """Tweedie D = x + σ² s(x, σ); sigma_b: [B] batch σ, sigma: the same level as a float."""
    return score_to_denoised(x, score(x, sigma_b), sigma)


class CountingScore:
    """Wraps a score model and counts evaluations (the NFE)."""

    def __init__(self, score: ScoreFn):
        self.score = score
        self.nfe = 0

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        self.nfe += 1
        return self.score(x, sigma, **kwargs)


class DryScore:
    """A zero score model that counts its calls (`calls`), with a learned variance of ½: the dry run that
    counts a sampler's network evaluations."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor, **kw: Any) -> Tensor:
        self.calls += 1
        return torch.zeros_like(x)

    def score_and_variance(self, x: Tensor, sigma: Tensor, **kw: Any) -> tuple[Tensor, Tensor]:
        return self(x, sigma), torch.full_like(x, 0.5)
