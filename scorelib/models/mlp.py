"""A σ-conditioned MLP score network for low-dimensional data (2-D toys, small mixtures)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..utils import append_dims, batch_sigma


def log_sigma_embedding(sigma: Tensor, dim: int, max_freq: float = 8.0) -> Tensor:
    """Sinusoidal features of log σ at geometric frequencies 1..max_freq: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(max_freq), half, device=sigma.device, dtype=sigma.dtype))
    arg = sigma.log()[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class MLPScore(nn.Module):
    """s_θ(x, σ) for flat data: input scaled by c_in = 1/√(σ² + σ_data²) (Karras et al. 2022, Table 1),
    log σ embedded sinusoidally, SiLU MLP, output divided by σ (the NCSNv2 technique 3
    parameterisation s = f/σ, so the σ²-weighted DSM target has unit scale).

    forward(x: [B, ...], sigma: [B]) -> score, x's shape.
    """

    def __init__(self, dim: int, hidden: int = 128, n_layers: int = 3, embed_dim: int = 64,
                 data_std: float = 1.0):
        super().__init__()
        self.dim = dim
        self.embed_dim = embed_dim
        self.data_std = data_std
        layers: list[nn.Module] = []
        width = dim + embed_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_sigma(sigma, x)
        flat = x.reshape(x.shape[0], -1)
        c_in = append_dims(torch.rsqrt(sigma**2 + self.data_std**2), 2)
        h = torch.cat([flat * c_in, log_sigma_embedding(sigma, self.embed_dim)], dim=1)
        out = self.net(h) / append_dims(sigma, 2)
        return out.reshape(x.shape)
