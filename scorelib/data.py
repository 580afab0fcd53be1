"""Data sets: 2-D toy distributions (with exact mixtures where they are Gaussian mixtures)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .analytic import GaussianMixture

F64 = torch.float64
TOY_NAMES = ("gmm8", "grid25", "two_modes", "rings", "swissroll", "moons", "checkerboard")


def toy_mixture(name: str) -> GaussianMixture:
    """The exact Gaussian mixture behind a mixture-type toy (gmm8, grid25, two_modes)."""
    if name == "gmm8":  # 8 modes on a circle of radius 4, std 0.5
        ang = torch.arange(8, dtype=F64) * (2 * math.pi / 8)
        return GaussianMixture.isotropic(4 * torch.stack([ang.cos(), ang.sin()], 1), 0.5)
    if name == "grid25":  # 5x5 grid, spacing 2, std 0.2
        g = torch.arange(-2, 3, dtype=F64) * 2
        means = torch.cartesian_prod(g, g)
        return GaussianMixture.isotropic(means, 0.2)
    if name == "two_modes":  # Song & Ermon 2019, Fig. 3: 1/5 N((-5,-5), I) + 4/5 N((5,5), I)
        means = torch.tensor([[-5.0, -5.0], [5.0, 5.0]], dtype=F64)
        return GaussianMixture.isotropic(means, 1.0, torch.tensor([0.2, 0.8], dtype=F64))
    raise ValueError(f"{name!r} is not a mixture toy; mixture toys are gmm8, grid25, two_modes")


def toy_data(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n samples of a 2-D toy distribution, float32 [n, 2]. Names: see TOY_NAMES."""
    g = generator
    if name in ("gmm8", "grid25", "two_modes"):
        return toy_mixture(name).sample(n, generator=g)
    if name == "rings":  # two concentric circles, radii 2 and 4, radial std 0.1
        r = torch.where(torch.rand(n, generator=g) < 0.5, 2.0, 4.0) + 0.1 * torch.randn(n, generator=g)
        a = 2 * math.pi * torch.rand(n, generator=g)
        return torch.stack([r * a.cos(), r * a.sin()], 1)
    if name == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
        x = torch.stack([t * t.cos(), t * t.sin()], 1) / 3
        return x + 0.1 * torch.randn(n, 2, generator=g)
    if name == "moons":
        a = math.pi * torch.rand(n, generator=g)
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper[:, None], torch.stack([a.cos(), a.sin()], 1),
                        torch.stack([1 - a.cos(), 0.5 - a.sin()], 1))
        return 2 * (x - torch.tensor([0.5, 0.25])) + 0.1 * torch.randn(n, 2, generator=g)
    if name == "checkerboard":  # 4x4 board on [-4, 4]², the 8 black squares
        u = torch.rand(n, 2, generator=g) * 2
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + col % 2
        return torch.stack([u[:, 0] + 2 * col - 4, u[:, 1] + 2 * row - 4], 1)
    raise ValueError(f"unknown toy data set {name!r}; known: {', '.join(TOY_NAMES)}")
