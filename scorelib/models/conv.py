"""A small σ-conditioned convolutional score network (for the 8×8 digits demo and small images)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..utils import append_dims, batch_sigma
from .ddpm_unet import DDPMUNet


class ConvScore(nn.Module):
    """s_θ(x, σ) = F(c_in·x, c_noise(σ)) / σ with F a small DDPM U-Net.

    c_in = 1/√(σ² + σ_data²) (Karras et al. 2022, Table 1) keeps the input at unit scale; the
    noise label c_noise = 999·(log σ - log σ_min)/(log σ_max - log σ_min) feeds the U-Net's sinusoidal
    embedding; dividing by σ is NCSNv2's technique 3. forward(x: [B,C,H,W], sigma: [B]) -> score.
    """

    def __init__(self, *, in_channels: int = 1, image_size: int = 8, ch: int = 32, ch_mult: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, attn_resolutions: Sequence[int] = (), dropout: float = 0.0,
                 sigma_min: float = 0.01, sigma_max: float = 10.0, data_std: float = 0.5):
        super().__init__()
        self.net = DDPMUNet(in_channels=in_channels, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                            attn_resolutions=tuple(attn_resolutions), dropout=dropout, image_size=image_size,
                            num_groups=min(32, ch // 4))
        self.log_min, self.log_max = math.log(sigma_min), math.log(sigma_max)
        self.data_std = data_std
        # the reference initialisation zeroes the output conv; a small random one lets σ-scaling act at once
        nn.init.normal_(self.net.conv_out.weight, std=1e-3)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_sigma(sigma, x)
        s = append_dims(sigma, x.ndim)
        label = 999.0 * (sigma.log() - self.log_min) / (self.log_max - self.log_min)
        return self.net(x * torch.rsqrt(s**2 + self.data_std**2), label) / s
