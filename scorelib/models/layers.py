"""Small building blocks shared by the score networks (DDPM U-Net, NCSN++, ADM, ...).

Conventions follow Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM), Appendix B,
and its reference TensorFlow code: GroupNorm with 32 groups and ε = 1e-6, swish (SiLU)
nonlinearities, sinusoidal timestep embeddings (Vaswani et al. 2017, §3.5, tensor2tensor
variant), "fan_avg" uniform initialisation, and zero-initialised output layers of every
residual branch so that each block starts as the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import append_dims

__all__ = [
    "AttnBlock",
    "Downsample",
    "ResnetBlock",
    "Upsample",
    "conv2d",
    "default_init_",
    "dense",
    "group_norm",
    "timestep_embedding",
]


def timestep_embedding(
    t: Tensor,
    dim: int,
    *,
    max_period: float = 10000.0,
    freq_shift: float = 1.0,
    cos_first: bool = False,
    divide_last: bool = False,
) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Frequencies are ω_i = max_period^(-i / (dim/2 - freq_shift)), i = 0 … dim/2-1, and the
    result is [sin(t ω), cos(t ω)] (or [cos, sin] when `cos_first`), zero-padded when `dim` is odd.
    The defaults reproduce DDPM / tensor2tensor (diffusion_tf/nn.py `get_timestep_embedding`) and
    score_sde's layers.py (`freq_shift=1`, sin first); improved-diffusion's nn.py
    `timestep_embedding` and ADM are `freq_shift=0, cos_first=True, divide_last=True`.
    `divide_last` only sets the float32 rounding of the exponent: -log(max_period)·i / (dim/2 -
    freq_shift) in that order (improved-diffusion), instead of i · (-log(max_period) / (dim/2 -
    freq_shift)) with the quotient taken in float64 (DDPM).

    Args:
        t: [B] timesteps, integer or float (fractional timesteps embed smoothly).
        dim: embedding width.

    Returns:
        float32 [B, dim]. Computed in float32 even under autocast: t up to ~1000 times ω
        needs the mantissa.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of timesteps, got shape {tuple(t.shape)}")
    half = dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"embedding dim {dim} is too small for freq_shift={freq_shift}")
    steps = torch.arange(half, dtype=torch.float32, device=t.device)
    if divide_last:
        freqs = torch.exp(-math.log(max_period) * steps / (half - freq_shift))  # [half]
    else:
        freqs = torch.exp(steps * (-math.log(max_period) / (half - freq_shift)))  # [half]
    args = append_dims(t.to(torch.float32), 2) * freqs  # [B, 1] * [half] -> [B, half]
    parts = (torch.cos(args), torch.sin(args)) if cos_first else (torch.sin(args), torch.cos(args))
    emb = torch.cat(parts, dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def default_init_(weight: Tensor, scale: float = 1.0, *, tiny_at_zero: bool = False) -> Tensor:
    """DDPM initialisation, in place: variance scaling with mode "fan_avg", uniform distribution.

    weight: [out, in, *kernel]; fan_avg = (in + out)·prod(kernel)/2 and the bound is
    √(3·scale / fan_avg) (diffusion_tf/nn.py `default_init`, TF's variance_scaling; Xavier-uniform
    with gain √scale). The reference's `scale=0` means 1e-10, i.e. zero up to rounding: by default
    it gives exact zeros and draws nothing from the RNG (the DDPM U-Net); `tiny_at_zero` uses 1e-10
    and draws, as score_sde's layers.py `default_init` (NCSN++). Works on the meta device.
    """
    if scale == 0.0:
        if not tiny_at_zero:
            return nn.init.zeros_(weight)
        scale = 1e-10
    fan_avg = (weight.shape[0] + weight.shape[1]) * math.prod(weight.shape[2:]) / 2
    bound = math.sqrt(3.0 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(
    in_ch: int,
    out_ch: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    init_scale: float = 1.0,
) -> nn.Conv2d:
    """Conv2d with DDPM initialisation (`default_init_` weights, zero bias); 3×3 "same" by default."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_features: int, out_features: int, init_scale: float = 1.0) -> nn.Linear:
    """Linear layer with DDPM initialisation (`default_init_` weights, zero bias)."""
    lin = nn.Linear(in_features, out_features)
    default_init_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin


def group_norm(channels: int, num_groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm as in DDPM (32 groups, ε = 1e-6, affine)."""
    return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=eps, affine=True)


class Downsample(nn.Module):
    """Halve the spatial size: 3×3 stride-2 conv, or 2×2 average pooling when `with_conv=False`.

    The conv pads by one row/column at the bottom/right only, which is TensorFlow's "SAME"
    padding for a stride-2 3×3 kernel on even sizes, so weights trained with the DDPM
    reference code give the same outputs. [B, C, H, W] -> [B, C, H/2, W/2].
    """

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double the spatial size: nearest-neighbour, then a 3×3 conv when `with_conv`.

    [B, C, H, W] -> [B, C, 2H, 2W].
    """

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = conv2d(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class ResnetBlock(nn.Module):
    """DDPM residual block (Ho et al. 2020, App. B; after Wide ResNet / PixelCNN++).

        h = conv1(swish(norm1(x))) + dense(swish(temb))       # timestep enters as a per-channel bias
        h = conv2(dropout(swish(norm2(h))))                    # conv2 starts at zero
        return shortcut(x) + h                                  # 1×1 (or 3×3) conv if channels change

    Shapes: x [B, C_in, H, W], temb [B, temb_channels] -> [B, C_out, H, W].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int,
        dropout: float = 0.0,
        conv_shortcut: bool = False,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = conv2d(in_channels, out_channels)
        self.temb_proj = dense(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv2d(out_channels, out_channels, init_scale=0.0)
        # Names match the reference code so its checkpoints load without renaming.
        self.use_conv_shortcut = conv_shortcut
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = conv2d(in_channels, out_channels)
            else:
                self.nin_shortcut = conv2d(in_channels, out_channels, 1, padding=0)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + append_dims(self.temb_proj(F.silu(temb)), h.ndim)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over spatial positions with a residual connection (DDPM uses one head).

        h = norm(x);  q, k, v = 1×1 convs of h
        out = x + proj_out(softmax(q kᵀ / √d) v)              # proj_out starts at zero

    Runs through `scaled_dot_product_attention`, which picks a fused kernel where one exists.
    Shapes: [B, C, H, W] -> [B, C, H, W]; C must be divisible by `num_heads`.
    """

    def __init__(self, channels: int, *, num_heads: int = 1, num_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.channels = channels
        self.num_heads = num_heads
        self.norm = group_norm(channels, num_groups)
        self.q = conv2d(channels, channels, 1, padding=0)
        self.k = conv2d(channels, channels, 1, padding=0)
        self.v = conv2d(channels, channels, 1, padding=0)
        self.proj_out = conv2d(channels, channels, 1, padding=0, init_scale=0.0)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        heads, d = self.num_heads, c // self.num_heads
        # The 1×1 convs are matmuls over channels; applying them to the token layout [B, HW, C]
        # (one fused GEMM for q, k, v) leaves q, k, v with unit stride in the feature dim, which
        # the fused CPU / GPU attention kernels require (otherwise SDPA falls back to plain math).
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        w_qkv = torch.cat([self.q.weight, self.k.weight, self.v.weight]).flatten(1)  # [3C, C]
        b_qkv = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        qkv = F.linear(tokens, w_qkv, b_qkv).view(b, height * width, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, HW, d]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v
        out = out.transpose(1, 2).reshape(b, height * width, c)
        out = F.linear(out, self.proj_out.weight.flatten(1), self.proj_out.bias)  # [B, HW, C]
        return x + out.transpose(1, 2).reshape(b, c, height, width)
