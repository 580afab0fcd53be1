"""Layers of NCSN++ / DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H).

Contents: the DDPM initialiser, FIR up/down-sampling (StyleGAN2's `upfirdn2d`, Karras et al. 2020,
"Analyzing and Improving the Image Quality of StyleGAN", App. B), time embeddings (Gaussian Fourier
features of Tancik et al. 2020; sinusoidal positions of Vaswani et al. 2017), self-attention, the
DDPM++ and BigGAN residual blocks (Brock et al. 2019) and the progressive-growing combiners.

Parameter shapes follow score_sde's `layerspp.py` so that parameter counts agree with the reference.
All tensors are NCHW.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelib.models.layers import default_init_
from scorelib.utils import append_dims

SQRT_HALF = 1.0 / math.sqrt(2.0)  # the `skip_rescale` factor: keeps Var(x + h) ≈ Var(x) (App. H)


# --------------------------------------------------------------------------------------------
# Initialisation and small constructors
# --------------------------------------------------------------------------------------------


def conv3x3(in_ch: int, out_ch: int, init_scale: float = 1.0, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    """3x3 convolution with DDPM initialisation (zero bias)."""
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding)
    default_init_(conv.weight, init_scale, tiny_at_zero=True)  # score_sde: scale 0 means 1e-10
    nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution (score_sde's `NIN` / `conv1x1`) with DDPM initialisation (zero bias)."""
    conv = nn.Conv2d(in_ch, out_ch, 1)
    default_init_(conv.weight, init_scale, tiny_at_zero=True)  # score_sde: scale 0 means 1e-10
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int) -> nn.Linear:
    """Dense layer with DDPM initialisation (zero bias)."""
    layer = nn.Linear(in_features, out_features)
    default_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm as in NCSN++: min(C // 4, 32) groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


# --------------------------------------------------------------------------------------------
# FIR resampling (StyleGAN2 upfirdn2d), pure PyTorch
# --------------------------------------------------------------------------------------------


def fir_kernel_2d(taps: Sequence[float]) -> Tensor:
    """Separable 2-D FIR kernel from 1-D taps: outer(k, k) / sum, float32 [K, K], summing to 1."""
    k = torch.as_tensor(taps, dtype=torch.float64)
    if k.ndim != 1 or k.numel() < 1:
        raise ValueError(f"FIR taps must be a non-empty 1-D sequence, got {taps!r}")
    k2 = torch.outer(k, k)
    return (k2 / k2.sum()).to(torch.float32)


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Zero-insertion upsampling by `up`, FIR filtering, then keeping every `down`-th sample.

    Each spatial axis: insert `up - 1` zeros after every sample, zero-pad `pad = (before, after)`,
    convolve (true convolution, kernel flipped) with `kernel` keeping only fully overlapping
    positions, subsample by `down`. Same definition as StyleGAN2's `upfirdn2d`.

    x: [B, C, H, W]; kernel: [kh, kw]. Returns [B, C, (H·up + before + after - kh) // down + 1, ...].
    """
    if pad[0] < 0 or pad[1] < 0:
        raise ValueError(f"upfirdn2d only supports non-negative padding, got {pad}")
    c, (kh, kw) = x.shape[1], kernel.shape
    k = kernel.to(dtype=x.dtype, device=x.device)
    if up == 1:
        # Depthwise true convolution (flipped kernel) of the padded input, strided by `down`.
        x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
        return F.conv2d(x, k.flip(0, 1).expand(c, 1, kh, kw), stride=down, groups=c)
    # A stride-`up` transposed depthwise conv is the full convolution of the zero-inserted signal,
    # without materialising the zeros; output n of upfirdn is its sample n + K - 1 - before.
    full = F.conv_transpose2d(x, k.expand(c, 1, kh, kw), stride=up, groups=c)
    crops = []
    for n, kn, lf in ((x.shape[-1], kw, full.shape[-1]), (x.shape[-2], kh, full.shape[-2])):
        start, length = kn - 1 - pad[0], n * up + pad[0] + pad[1] - kn + 1
        crops += [-start, start + length - lf]  # negative padding crops
    y = F.pad(full, crops)
    return y[..., ::down, ::down] if down > 1 else y


def upsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR upsampling: [B, C, H, W] -> [B, C, H·factor, W·factor].

    `kernel` is a normalised 2-D FIR kernel (sum 1, see `fir_kernel_2d`); it is scaled by factor²
    so that the interior of a constant image stays constant. Outside the image is zero, so the
    outermost rows/columns are attenuated (for [1, 3, 3, 1]: edge ×3/4, corner ×9/16).
    """
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR (anti-aliased) downsampling: [B, C, H, W] -> [B, C, H // factor, W // factor].

    For [1, 3, 3, 1] each output is Σ k_i k_j x[2r-1+i, 2c-1+j] / 64 (zero outside the image).
    """
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling: [B, C, H, W] -> [B, C, H·factor, W·factor]."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def naive_downsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Average pooling: [B, C, H, W] -> [B, C, H // factor, W // factor]."""
    return F.avg_pool2d(x, factor, stride=factor)


class FIRConv2d(nn.Module):
    """3x3 (odd k) convolution fused with FIR up- or downsampling by 2 (StyleGAN2 `Conv2d`).

    up:   transposed conv with stride 2 (= zero insertion + conv with `weight`), then FIR blur.
    down: FIR blur, then conv with stride 2. [B, in, H, W] -> [B, out, 2H, 2W] or [B, out, H/2, W/2].
    Parameters: weight [out, in, k, k] (DDPM init) and bias [out] (zeros), like a plain conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        up: bool = False,
        down: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d needs exactly one of up=True or down=True")
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.up = up
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        default_init_(self.weight)
        # persistent, so that meta-device construction + load_state_dict restores it
        self.register_buffer("fir", fir_kernel_2d(fir_kernel))

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in, H, W] -> [B, out, 2H, 2W] (up) or [B, out, H/2, W/2] (down)."""
        factor, ks, kf = 2, self.weight.shape[-1], self.fir.shape[0]
        if self.up:
            # Transposed conv whose kernel is the flipped, in/out-swapped weight equals zero
            # insertion followed by an ordinary (cross-correlation) conv with `weight`.
            w = self.weight.flip(-1, -2).transpose(0, 1)
            x = F.conv_transpose2d(x, w, stride=factor)  # [B, out, 2H - 2 + ks]
            p = (kf - factor) - (ks - 1)
            x = upfirdn2d(x, self.fir * factor**2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
        else:
            p = (kf - factor) + (ks - 1)
            x = upfirdn2d(x, self.fir, pad=((p + 1) // 2, p // 2))
            x = F.conv2d(x, self.weight, stride=factor)
        return x + append_dims(self.bias, 3)


class Upsample(nn.Module):
    """×2 upsampling: FIR or nearest, optionally with a conv (fused with FIR). [B,in,H,W] -> [B,out,2H,2W]."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("changing the channel count needs with_conv=True")
        self.conv: nn.Module | None = None
        if with_conv:
            self.conv = FIRConv2d(in_ch, out_ch, up=True, fir_kernel=fir_kernel) if fir else conv3x3(in_ch, out_ch)
        # persistent, so that meta-device construction + load_state_dict restores it
        self.register_buffer("fir", fir_kernel_2d(fir_kernel) if fir else None)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in, H, W] -> [B, out, 2H, 2W]."""
        if self.fir is not None:
            return self.conv(x) if self.conv is not None else upsample_2d(x, self.fir)
        x = naive_upsample_2d(x)
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """×2 downsampling: FIR or average pool, optionally with a conv. [B,in,H,W] -> [B,out,H/2,W/2]."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("changing the channel count needs with_conv=True")
        self.conv: nn.Module | None = None
        if with_conv:
            if fir:
                self.conv = FIRConv2d(in_ch, out_ch, down=True, fir_kernel=fir_kernel)
            else:
                self.conv = conv3x3(in_ch, out_ch, stride=2, padding=0)
        # persistent, so that meta-device construction + load_state_dict restores it
        self.register_buffer("fir", fir_kernel_2d(fir_kernel) if fir else None)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in, H, W] -> [B, out, H/2, W/2]."""
        if self.fir is not None:
            return self.conv(x) if self.conv is not None else downsample_2d(x, self.fir)
        if self.conv is None:
            return naive_downsample_2d(x)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # TF "SAME" padding for a stride-2 3x3 conv


# --------------------------------------------------------------------------------------------
# Time / noise-level embeddings
# --------------------------------------------------------------------------------------------


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin 2πWv, cos 2πWv], W ~ N(0, scale²) fixed (Tancik et al. 2020).

    NCSN++ feeds v = log σ (App. H). W is a buffer, not a parameter:
    it is never trained. [B] -> [B, 2·embedding_size], computed in float32.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(embedding_size) * scale)

    def forward(self, v: Tensor) -> Tensor:
        """v: [B] -> [B, 2·embedding_size]."""
        proj = append_dims(v.float(), 2) * self.W.float() * (2 * math.pi)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class Combine(nn.Module):
    """Progressive-input combiner: 1x1 conv of the pyramid image, then concatenated or summed with h.

    x: [B, dim1, H, W], h: [B, dim2, H, W] -> [B, 2·dim2, H, W] ("cat") or [B, dim2, H, W] ("sum").
    """

    def __init__(self, dim1: int, dim2: int, method: str = "cat") -> None:
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {method!r}")
        self.conv = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """x: pyramid image [B, dim1, H, W]; h: features [B, dim2, H, W]."""
        y = self.conv(x)
        return torch.cat([y, h], dim=1) if self.method == "cat" else y + h


class AttnBlockpp(nn.Module):
    """Single-head spatial self-attention with a residual connection (DDPM's AttnBlock).

    Uses `F.scaled_dot_product_attention` (scale 1/√C). [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1x1(channels, channels, init_scale=0.1)
        self.k = conv1x1(channels, channels, init_scale=0.1)
        self.v = conv1x1(channels, channels, init_scale=0.1)
        self.proj_out = conv1x1(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # [B, HW, C]
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.proj_out(h.transpose(1, 2).reshape(b, c, height, width))
        return (x + h) * SQRT_HALF if self.skip_rescale else x + h


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block (GroupNorm-SiLU-conv, + time bias, GroupNorm-SiLU-dropout-conv).

    The shortcut is a 1x1 conv when the channel count changes. [B, in, H, W] -> [B, out, H, W].
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_dim: int | None = None,
        dropout: float = 0.1,
        skip_rescale: bool = False,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.act = nn.SiLU()
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv3x3(in_ch, out_ch)
        self.temb_proj = linear(temb_dim, out_ch) if temb_dim is not None else None
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.shortcut = conv1x1(in_ch, out_ch, init_scale=0.1) if in_ch != out_ch else None
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """x: [B, in, H, W], temb: [B, temb_dim] or None -> [B, out, H, W]."""
        h = self.conv0(self.act(self.norm0(x)))
        if self.temb_proj is not None and temb is not None:
            h = h + append_dims(self.temb_proj(self.act(temb)), h.ndim)
        h = self.conv1(self.dropout(self.act(self.norm1(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return (x + h) * SQRT_HALF if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block that can also resample by 2 (Brock et al. 2019; App. H).

    The resampling (FIR or nearest/average) is applied after the first norm+SiLU on the residual
    path and to the shortcut, which gets a 1x1 conv whenever channels change or it resamples.
    [B, in, H, W] -> [B, out, H', W'] with H' = 2H (up), H/2 (down) or H.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a block cannot both upsample and downsample")
        out_ch = out_ch or in_ch
        self.act = nn.SiLU()
        self.norm0 = group_norm(in_ch)
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(in_ch, fir=fir, fir_kernel=fir_kernel)
        elif down:
            self.resample = Downsample(in_ch, fir=fir, fir_kernel=fir_kernel)
        self.conv0 = conv3x3(in_ch, out_ch)
        self.temb_proj = linear(temb_dim, out_ch) if temb_dim is not None else None
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.shortcut = conv1x1(in_ch, out_ch) if (in_ch != out_ch or up or down) else None
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """x: [B, in, H, W], temb: [B, temb_dim] or None -> [B, out, H', W']."""
        h = self.act(self.norm0(x))
        if self.resample is not None:
            h = self.resample(h)
            x = self.resample(x)
        h = self.conv0(h)
        if self.temb_proj is not None and temb is not None:
            h = h + append_dims(self.temb_proj(self.act(temb)), h.ndim)
        h = self.conv1(self.dropout(self.act(self.norm1(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return (x + h) * SQRT_HALF if self.skip_rescale else x + h
