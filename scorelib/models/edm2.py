"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", config G: §2, Appendix B and Figure 21) with its learned loss uncertainty u(σ) (eq. 21).

Every layer is designed so that activations, weights and weight updates keep unit magnitude on expectation:

* no biases and no group normalisation; the main path of every encoder block is pixel-normalised
  (each pixel's channel vector rescaled to unit RMS);
* `MPConv`: each output channel's weight vector is normalised to unit norm in the forward pass and
  scaled by gain/√fan_in (eq. 47); during training the stored weights are themselves rescaled to unit
  RMS before each use, *forced weight normalisation* (eq. 66), so their norm cannot grow and the
  effective learning rate stays constant;
* `mp_silu` (eq. 81), `mp_sum` (eq. 88), `mp_cat` (eq. 103) and `MPFourier` (eq. 75) rescale their
  outputs back to unit variance for unit-variance inputs;
* cosine attention: queries, keys and values pixel-normalised per head;
* two learned scalar gains start at zero: the embedding's modulation of each block and the output.

`EDM2Network` holds the U-Net (`unet`) and the uncertainty head (`logvar_fourier`, `logvar_linear`), with
the module names of EDM2's training/networks_edm2.py `Precond` (which wraps its `UNet`), so a state_dict
of an EDM2 network loads with `load_state_dict` unchanged. The conditioning (c_skip, c_out, c_in,
c_noise = ln(σ)/4, σ_data) is `scorelib.precond.EDM2Precond`'s business, not the network's.

The presets hold EDM2's published configurations (train_edm2.py): `EDM2Network(**EDM2_IMG64_S)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import append_dims, frozen

__all__ = [
    "EDM2_DIGITS",
    "EDM2_IMG64_L",
    "EDM2_IMG64_M",
    "EDM2_IMG64_S",
    "EDM2_IMG64_XL",
    "EDM2_IMG64_XS",
    "EDM2_IMG512_L",
    "EDM2_IMG512_M",
    "EDM2_IMG512_S",
    "EDM2_IMG512_XL",
    "EDM2_IMG512_XS",
    "EDM2_IMG512_XXL",
    "EDM2Network",
    "MPBlock",
    "MPConv",
    "MPFourier",
    "MPUNet",
    "edm2_learning_rate",
    "mp_cat",
    "mp_normalize",
    "mp_normalize_",
    "mp_silu",
    "mp_sum",
]

# ----------------------------------------------------------------------------------------------
# Magnitude-preserving primitives
# ----------------------------------------------------------------------------------------------

# E[silu(z)²]^½ for z ~ N(0, 1), the divisor of MP-SiLU (eq. 81)
SILU_RMS = 0.596


def mp_normalize(x: Tensor, dim: int | Sequence[int] | None = None, eps: float = 1e-4) -> Tensor:
    """x with every slice over `dim` (default: all but the first) rescaled to unit RMS, x/(eps + RMS).

    The weight normalisation of eq. 47 / 66 (per output channel) and the pixel norm (dim=1). The RMS is
    computed in at least float32 (EDM2 training/networks_edm2.py `normalize`, the same ε placement).
    """
    dims = tuple(range(1, x.ndim)) if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    n = math.prod(x.shape[d] for d in dims)
    acc = torch.promote_types(x.dtype, torch.float32)
    rms = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=acc) / math.sqrt(n)
    return x / (rms + eps).to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    """Magnitude-preserving SiLU (eq. 81): silu(x)/0.596, unit RMS for x ~ N(0, 1)."""
    return F.silu(x) / SILU_RMS


def mp_sum(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """Magnitude-preserving blend (eq. 88): ((1 - t)a + t b)/√((1 - t)² + t²)."""
    dtype = torch.promote_types(a.dtype, b.dtype)  # mixed under autocast (bf16 branch, float32 skip)
    return torch.lerp(a.to(dtype), b.to(dtype), t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: Tensor, b: Tensor, dim: int = 1, t: float = 0.5) -> Tensor:
    """Magnitude-preserving concatenation along `dim` (eq. 103): a and b weighted (1 - t) : t, each
    scaled by 1/√(its width), the whole rescaled to unit RMS for unit-RMS inputs."""
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    dtype = torch.promote_types(a.dtype, b.dtype)
    return torch.cat([a.to(dtype) * (scale * (1 - t) / math.sqrt(na)), b.to(dtype) * (scale * t / math.sqrt(nb))],
                     dim=dim)


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features of a scalar (eq. 75): √2 cos(2π(f x + φ)) with random
    frequencies f ~ N(0, bandwidth²) and phases φ ~ U[0, 1), fixed (buffers `freqs` = 2πf and
    `phases` = 2πφ, as EDM2 stores them). [B] -> [B, channels]."""

    def __init__(self, channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * bandwidth * torch.randn(channels))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels))

    def forward(self, x: Tensor) -> Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)
        angle = torch.outer(x.to(acc), self.freqs.to(acc)) + self.phases.to(acc)
        return (math.sqrt(2) * torch.cos(angle)).to(x.dtype)


class MPConv(nn.Module):
    """A bias-free convolution (kernel [k, k]) or linear layer (kernel []) with normalised weights.

    forward(x, gain): weights normalised per output channel to unit norm, times gain/√fan_in (eq. 47),
    so unit-variance inputs give unit-variance outputs (times gain). In training mode the stored
    weights are first rescaled to unit RMS in place (forced weight normalisation, eq. 66).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = ()):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    @torch.no_grad()
    def force_normalize_(self) -> None:
        """Rescale the stored weight to unit RMS per output channel (forced weight normalisation)."""
        self.weight.copy_(mp_normalize(self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))))

    def forward(self, x: Tensor, gain: float | Tensor = 1.0) -> Tensor:
        if self.training:
            self.force_normalize_()
        w = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))
        w = mp_normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def mp_normalize_(model: nn.Module) -> nn.Module:
    """Forced weight normalisation (eq. 66) of every `MPConv` in `model`, in place; returns `model`.

    The layers do this themselves before each training-mode forward (as EDM2 does), so a training loop
    needs no extra call; this is for an explicit step (after loading unnormalised weights, say).
    """
    for m in model.modules():
        if isinstance(m, MPConv):
            m.force_normalize_()
    return model


def _resample(x: Tensor, mode: str) -> Tensor:
    """'down': 2×2 box filter with stride 2; 'up': nearest ×2 (EDM2's resample with filter [1, 1])."""
    if mode == "keep":
        return x
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    raise ValueError(f"resample mode must be 'keep', 'down' or 'up', got {mode!r}")


# ----------------------------------------------------------------------------------------------
# The U-Net
# ----------------------------------------------------------------------------------------------


class MPBlock(nn.Module):
    """An encoder ('enc') or decoder ('dec') block of Figure 21: optional resampling, the residual
    branch conv → modulation by the embedding → conv, an MP-sum with the main path, optional cosine
    self-attention, and clipping of the activations.

    Encoder blocks project the skip first (1×1 conv when the width changes) and pixel-normalise the main
    path; decoder blocks take the concatenated input and project it after the residual branch.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", resample_filter: Sequence[int] = (1, 1), attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0.0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"flavor must be 'enc' or 'dec', got {flavor!r}")
        if tuple(resample_filter) != (1, 1):
            raise ValueError(f"only the [1, 1] resampling filter (EDM2's) is implemented, got {resample_filter}")
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # registration order = EDM2's state_dict order
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, ())
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, 3 * out_channels, (1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1)) if self.num_heads else None

    def _attention(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # channels of attn_qkv's output are laid out (head, channel, q|k|v)
        qkv = self.attn_qkv(x).reshape(b, self.num_heads, c // self.num_heads, 3, h * w)
        q, k, v = mp_normalize(qkv, dim=2).unbind(3)  # cosine attention: unit-RMS per head and pixel
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return self.attn_proj(out.transpose(-1, -2).reshape(b, c, h, w))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = _resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = mp_normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * append_dims(scale, y.ndim).to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x), self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x


class MPUNet(nn.Module):
    """EDM2's U-Net F(x, c_noise, class vector) of Figure 21 (config G), its `UNet` with the same names.

    Levels i = 0 … L-1 at resolution img_resolution/2^i with model_channels·channel_mult[i] channels and
    `num_blocks` blocks each (one more per level in the decoder); self-attention at `attn_resolutions`
    and in the first block of the bottleneck. The embedding: MP Fourier features of c_noise → linear,
    MP-summed with a linear map of the class vector (`label_balance`), then MP-SiLU. The input gets a
    constant channel of ones. forward(x [B, C, H, W], noise_labels [B], class_labels [B, label_dim] or
    None) -> [B, C, H, W].
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, **block_kwargs: Any):
        super().__init__()
        widths = [model_channels * m for m in channel_mult]
        noise_ch = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        emb_ch = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.label_dim = label_dim
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(noise_ch)
        self.emb_noise = MPConv(noise_ch, emb_ch, ())
        self.emb_label = MPConv(label_dim, emb_ch, ()) if label_dim else None

        def block(cin: int, cout: int, **kw: Any) -> MPBlock:
            return MPBlock(cin, cout, emb_ch, **kw, **block_kwargs)

        self.enc = nn.ModuleDict()
        ch = img_channels + 1
        for level, width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(ch, width, (3, 3))
                ch = width
            else:
                self.enc[f"{res}x{res}_down"] = block(ch, ch, flavor="enc", resample_mode="down")
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = block(ch, width, flavor="enc", attention=res in attn_resolutions)
                ch = width
        skips = [m.out_channels for m in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level in reversed(range(len(widths))):
            res = img_resolution >> level
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = block(ch, ch, flavor="dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(ch, ch, flavor="dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(ch, ch, flavor="dec", resample_mode="up")
            for i in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{i}"] = block(ch + skips.pop(), widths[level], flavor="dec",
                                                          attention=res in attn_resolutions)
                ch = widths[level]
        self.out_conv = MPConv(ch, img_channels, (3, 3))

    def embedding(self, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        """The block embedding [B, emb_channels] of c_noise [B] and the class vectors [B, label_dim]."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if class_labels is None:  # no class: the zero vector
                class_labels = emb.new_zeros(1, self.label_dim)
            labels = class_labels.to(emb.dtype) * math.sqrt(self.label_dim)
            emb = mp_sum(emb, self.emb_label(labels), self.label_balance)
        return mp_silu(emb)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.embedding(noise_labels, class_labels)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for layer in self.enc.values():
            x = layer(x) if isinstance(layer, MPConv) else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = layer(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class EDM2Network(nn.Module):
    """The EDM2 network: the U-Net F and the uncertainty head u(c_noise) (eq. 21), EDM2's `Precond`
    without its conditioning (which is `scorelib.precond.EDM2Precond`).

    The constructor takes EDM2's `Precond` keyword arguments except `sigma_data` and `use_fp16`
    (the conditioning's): img_resolution, img_channels, label_dim (0 = unconditional),
    logvar_channels, and the U-Net's (model_channels, channel_mult, ..., dropout, ...).

    forward(x_in [B, C, H, W], noise_labels [B], y=None) -> F, x_in's shape. `y`: int64 class indices [B]
    (one-hot; the index `label_dim` means no class: a zero vector, EDM2's `class_labels=None`), or float
    class vectors [B, label_dim] as EDM2 takes them, or None (zero vectors). `logvar(noise_labels)` -> [B].
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, logvar_channels: int = 128,
                 **unet_kwargs: Any):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.unet = MPUNet(img_resolution, img_channels, label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, ())

    def class_vectors(self, y: Tensor | None, batch: int, like: Tensor) -> Tensor | None:
        """[B, label_dim] float class vectors from `y` (see the class docstring); None if unconditional."""
        if not self.label_dim:
            return None
        if y is None:
            return like.new_zeros(batch, self.label_dim)
        if y.is_floating_point():
            return y.to(like.dtype).reshape(-1, self.label_dim)
        return F.one_hot(y.long(), self.label_dim + 1)[:, : self.label_dim].to(like.dtype)

    def forward(self, x: Tensor, noise_labels: Tensor, y: Tensor | None = None) -> Tensor:
        return self.unet(x, noise_labels, self.class_vectors(y, x.shape[0], noise_labels))

    def logvar(self, noise_labels: Tensor) -> Tensor:
        """The learned log-variance u of the loss at c_noise [B] (eq. 21): [B]."""
        return self.logvar_linear(self.logvar_fourier(noise_labels)).reshape(-1)


# ----------------------------------------------------------------------------------------------
# Training schedule
# ----------------------------------------------------------------------------------------------


def edm2_learning_rate(images: float, batch_size: int, ref_lr: float = 0.01, ref_batches: float = 70e3,
                       rampup_images: float = 10e6) -> float:
    """EDM2's learning rate after `images` training images (§2, learning-rate decay; train_edm2.py):

        α = ref_lr / √max(images / (ref_batches · batch_size), 1) · min(images / rampup_images, 1)

    i.e. constant after a linear ramp-up over `rampup_images`, then inverse-square-root decay once
    `ref_batches` batches are done. EDM2 evaluates it before each step with the images seen so far (0
    on the first step, whose rate is then 0); ref_batches = 0 or rampup_images = 0 disable either part.
    """
    lr = ref_lr
    if ref_batches > 0:
        lr /= math.sqrt(max(images / (ref_batches * batch_size), 1.0))
    if rampup_images > 0:
        lr *= min(images / rampup_images, 1.0)
    return lr


# ----------------------------------------------------------------------------------------------
# Presets (train_edm2.py `config_presets`; the network arguments its training_loop passes)
# ----------------------------------------------------------------------------------------------

def _preset(img_channels: int, model_channels: int, dropout: float) -> Any:
    return frozen(img_resolution=64, img_channels=img_channels, label_dim=1000, model_channels=model_channels,
                  dropout=dropout)


# ImageNet 64×64 in pixel space (3 channels); trained with P_mean = -0.8, P_std = 1.6, ref_batches = 35k
EDM2_IMG64_XS = _preset(3, 128, 0.0)
EDM2_IMG64_S = _preset(3, 192, 0.0)
EDM2_IMG64_M = _preset(3, 256, 0.1)
EDM2_IMG64_L = _preset(3, 320, 0.1)
EDM2_IMG64_XL = _preset(3, 384, 0.1)
# ImageNet 512×512 in the 64×64×4 latent space of the Stable Diffusion VAE; P_mean = -0.4, P_std = 1.0,
# ref_batches = 70k
EDM2_IMG512_XS = _preset(4, 128, 0.0)
EDM2_IMG512_S = _preset(4, 192, 0.0)
EDM2_IMG512_M = _preset(4, 256, 0.1)
EDM2_IMG512_L = _preset(4, 320, 0.1)
EDM2_IMG512_XL = _preset(4, 384, 0.1)
EDM2_IMG512_XXL = _preset(4, 448, 0.1)
# Not EDM2's: the network at the scale of the 8×8 one-channel digits (10 classes), for quick recipes
EDM2_DIGITS = frozen(img_resolution=8, img_channels=1, label_dim=10, model_channels=32, channel_mult=(1, 2),
                     num_blocks=1, attn_resolutions=(4,), channels_per_head=32, logvar_channels=32)
