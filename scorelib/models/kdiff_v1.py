"""k-diffusion's `ImageDenoiserModelV1` (crowsonkb/k-diffusion, k_diffusion/models/image_v1.py, MIT) as a
scorelib network: the convolutional U-Net Katherine Crowson trains under Karras et al.'s preconditioning.

The architecture (references are to k-diffusion 0.1.1's image_v1.py and layers.py):

* noise embedding: Fourier features of the noise label c_noise (a fixed random buffer, std 1;
  `layers.FourierFeatures`), plus a bias-free linear map of the optional mapping condition (EDM's
  augmentation labels here), through a two-layer GELU MLP (`MappingNet`, both layers end in GELU);
* a 1×1 input projection, then one down level per entry of `channels`: level i > 0 first halves the
  resolution with a fixed linear (bilinear [1, 3, 3, 1]/8) filter on reflect-padded input
  (`layers.Downsample2d`), then `depths[i]` residual blocks (`ResConvBlock`: AdaGN → GELU → 3×3 conv →
  Dropout2d, twice; a bias-free 1×1 skip conv where the width changes), each followed by self-attention
  where `self_attn_depths[i]` (`layers.SelfAttention2d`: AdaGN, fused 1×1 qkv conv, one head per
  `head_size` channels);
* the up path mirrors it deepest first: level i concatenates the skip of down level i (except the deepest
  level, which takes the down path's output as is), runs `depths[i]` blocks ending at width
  channels[i-1], and doubles the resolution with the transposed filter (`layers.Upsample2d`) where i > 0;
* a 1×1 output projection. AdaGN (`layers.AdaGN`) is group norm without affine parameters followed by a
  per-channel scale (1 + w) and shift b, both a linear map of the embedding; groups = width // group_size.

Initialisation is k-diffusion's, module for module in the same order, so the same seed gives the same
initial weights: the skip convs and the mapping MLP orthogonal, the AdaGN maps, the second conv of every
residual block, the attention output projections and the output projection zero.

Differences from `ImageDenoiserModelV1`, none of which changes a forward pass in evaluation:

* the network takes the noise label c_noise = ln(σ)/4 (computed by `scorelib.precond.EDMPrecond`), not σ:
  k-diffusion's forward computes `sigma.log() / 4` itself;
* the mapping condition is EDM's `augment_labels` [B, augment_dim] (`mapping_cond_dim`); no `unet_cond`,
  cross-attention, skip stages or variance output (the builder never asks for them);
* attention dropout applies in training only (k-diffusion passes `dropout_p` to
  `scaled_dot_product_attention` in evaluation too); Dropout2d is not in place;
* the resampling filters are applied as depthwise convolutions (k-diffusion builds a dense C×C weight
  with the filter on its diagonal: the same sums).

The module names are k-diffusion's, so `KDiffusionV1.load_state_dict(model.state_dict())` of an
`ImageDenoiserModelV1` built with the same arguments loads unchanged (the Fourier-feature and filter
buffers included): `timestep_embed.weight`, `mapping_cond.weight`, `mapping.{0,2}`, `proj_in`,
`proj_out`, `u_net.d_blocks.<level>.<j>` and `u_net.u_blocks.<deepest first>.<j>`, where index 0 of a
down block is its downsampler (or an identity) and the last index of an up block its upsampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaGN", "Downsample", "FourierFeatures", "KDiffusionV1", "ResConvBlock", "SelfAttention", "Upsample"]

# layers.py `_kernels["linear"]`: the 1-D filter of the fixed resamplers
_LINEAR = (1 / 8, 3 / 8, 3 / 8, 1 / 8)


def _orthogonal(module: nn.Linear | nn.Conv2d) -> nn.Linear | nn.Conv2d:
    """image_v1.py `orthogonal_`: the module with an orthogonal weight."""
    nn.init.orthogonal_(module.weight)
    return module


def _zero(module: nn.Linear | nn.Conv2d) -> nn.Linear | nn.Conv2d:
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class FourierFeatures(nn.Module):
    """layers.py `FourierFeatures(1, features)`: [cos 2πcW | sin 2πcW] of a scalar label c with fixed random
    frequencies W [features/2, 1] ~ N(0, 1) (a buffer). forward(c [B]) -> [B, features]."""

    def __init__(self, features: int):
        super().__init__()
        if features % 2:
            raise ValueError(f"features must be even (cos and sin), got {features}")
        self.register_buffer("weight", torch.randn(features // 2, 1))

    def forward(self, c: Tensor) -> Tensor:
        f = 2 * math.pi * c.to(self.weight.dtype)[:, None] @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class AdaGN(nn.Module):
    """Adaptive group norm (layers.py `AdaGN`): GroupNorm(num_groups) without affine parameters, then
    x·(1 + w) + b with [w | b] = mapper(emb). forward(x [B, C, H, W], emb [B, feats_in]) -> x's shape."""

    def __init__(self, feats_in: int, channels: int, num_groups: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.mapper = _zero(nn.Linear(feats_in, 2 * channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.mapper(emb).chunk(2, dim=-1)
        x = F.group_norm(x, self.num_groups, eps=self.eps)
        return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None] + 1)


class ResConvBlock(nn.Module):
    """image_v1.py `ResConvBlock`: main = [AdaGN, GELU, conv3×3, Dropout2d, AdaGN, GELU, conv3×3, Dropout2d]
    (the second conv zero at init), plus the input through a bias-free orthogonal 1×1 conv where
    c_in != c_out. forward(x [B, c_in, H, W], emb [B, feats_in]) -> [B, c_out, H, W]."""

    def __init__(self, feats_in: int, c_in: int, c_mid: int, c_out: int, group_size: int = 32,
                 dropout: float = 0.0):
        super().__init__()
        # k-diffusion creates the skip first: keep the order of the random draws
        skip = None if c_in == c_out else _orthogonal(nn.Conv2d(c_in, c_out, 1, bias=False))
        self.main = nn.ModuleList([
            AdaGN(feats_in, c_in, max(1, c_in // group_size)), nn.GELU(), nn.Conv2d(c_in, c_mid, 3, padding=1),
            nn.Dropout2d(dropout),
            AdaGN(feats_in, c_mid, max(1, c_mid // group_size)), nn.GELU(),
            _zero(nn.Conv2d(c_mid, c_out, 3, padding=1)), nn.Dropout2d(dropout),
        ])
        self.skip = skip if skip is not None else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = x
        for layer in self.main:
            h = layer(h, emb) if isinstance(layer, AdaGN) else layer(h)
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """layers.py `SelfAttention2d`: x + out_proj(attention(qkv_proj(AdaGN(x)))) over the H·W positions,
    `n_head` heads; the fused qkv channels are [q | k | v], each n_head blocks of C/n_head channels; the
    output projection is zero at init. forward(x [B, C, H, W], emb [B, feats_in]) -> x's shape."""

    def __init__(self, feats_in: int, channels: int, n_head: int, num_groups: int, dropout: float = 0.0):
        super().__init__()
        if channels % n_head:
            raise ValueError(f"{channels} channels do not split into {n_head} heads")
        self.norm_in = AdaGN(feats_in, channels, num_groups)
        self.n_head, self.dropout = n_head, dropout
        self.qkv_proj = nn.Conv2d(channels, 3 * channels, 1)
        self.out_proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv_proj(self.norm_in(x, emb)).reshape(b, 3 * self.n_head, c // self.n_head, h * w)
        q, k, v = qkv.transpose(2, 3).chunk(3, dim=1)  # each [B, heads, HW, C/heads]
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return x + self.out_proj(y.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """layers.py `Downsample2d` (linear kernel, reflect padding): the 4×4 outer product of [1, 3, 3, 1]/8
    per channel, stride 2. forward(x [B, C, H, W]) -> [B, C, H/2, W/2]."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([_LINEAR])
        self.register_buffer("kernel", k.T @ k)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel.to(x).expand(c, 1, 4, 4), stride=2, groups=c)


class Upsample(nn.Module):
    """layers.py `Upsample2d` (linear kernel, reflect padding): the transposed stride-2 convolution with the
    outer product of [1, 3, 3, 1]/4 per channel. forward(x [B, C, H, W]) -> [B, C, 2H, 2W]."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([_LINEAR]) * 2
        self.register_buffer("kernel", k.T @ k)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv_transpose2d(x, self.kernel.to(x).expand(c, 1, 4, 4), stride=2, padding=3, groups=c)


def _blocks(n_layers: int, feats_in: int, c_in: int, c_mid: int, c_out: int, self_attn: bool, group_size: int,
            head_size: int, dropout: float) -> list[nn.Module]:
    """The residual blocks (each followed by self-attention if `self_attn`) of one level: image_v1.py `DBlock` /
    `UBlock`; the first takes c_in, the last gives c_out, the rest c_mid."""
    modules: list[nn.Module] = []
    for i in range(n_layers):
        my_in, my_out = c_in if i == 0 else c_mid, c_mid if i < n_layers - 1 else c_out
        modules.append(ResConvBlock(feats_in, my_in, c_mid, my_out, group_size, dropout))
        if self_attn:
            modules.append(SelfAttention(feats_in, my_out, max(1, my_out // head_size),
                                         max(1, my_out // group_size), dropout))
    return modules


class _Level(nn.ModuleList):
    """One level's modules in order (image_v1.py `DBlock` / `UBlock`, a `ConditionedSequential`): the residual
    and attention blocks take the embedding, the resamplers and identities do not."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, emb) if isinstance(module, ResConvBlock | SelfAttention) else module(x)
        return x


class _UNet(nn.Module):
    """layers.py `UNet` (skip_stages 0): `d_blocks` finest first, `u_blocks` deepest first. Up level i > 0
    concatenates [h, skip] with the output of the matching down level. forward(h, emb) -> h's shape."""

    def __init__(self, d_blocks: list[_Level], u_blocks: list[_Level]):
        super().__init__()
        self.d_blocks = nn.ModuleList(d_blocks)
        self.u_blocks = nn.ModuleList(u_blocks)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        skips = []
        for block in self.d_blocks:
            h = block(h, emb)
            skips.append(h)
        for i, (block, skip) in enumerate(zip(self.u_blocks, reversed(skips), strict=True)):
            h = block(h if i == 0 else torch.cat([h, skip], dim=1), emb)
        return h


class KDiffusionV1(nn.Module):
    """k-diffusion's `ImageDenoiserModelV1` (image_v1.py), the F of D = c_skip x + c_out F(c_in x, c_noise).

    c_in: image channels; feats_in: embedding width; depths[i] / channels[i] / self_attn_depths[i]: residual
    blocks, width and self-attention of level i (level i works at 1/2^i of the input resolution);
    mapping_cond_dim: width of the mapping condition (EDM's augmentation labels; 0: none);
    dropout: k-diffusion's dropout_rate; patch_size: pixels per side folded into channels before the
    U-Net (pixel_unshuffle); group_size / head_size: channels per norm group / attention head (k-diffusion's
    fixed 32 / 64).

    forward(x [B, c_in, H, W] (the preconditioning's scaled input c_in(σ)·x), c_noise [B] (ln(σ)/4), augment_labels
    [B, mapping_cond_dim] or None (the zero condition)) -> [B, c_in, H, W]; H and W multiples of
    patch_size · 2^(levels - 1).
    """

    def __init__(self, c_in: int, feats_in: int, depths: Sequence[int], channels: Sequence[int],
                 self_attn_depths: Sequence[bool], mapping_cond_dim: int = 0, dropout: float = 0.0,
                 patch_size: int = 1, group_size: int = 32, head_size: int = 64):
        super().__init__()
        if not (len(depths) == len(channels) == len(self_attn_depths)) or not depths:
            raise ValueError("depths, channels and self_attn_depths need one entry per level")
        self.c_in, self.patch_size, self.mapping_cond_dim = c_in, patch_size, mapping_cond_dim
        self.downsample_factor = patch_size * 2 ** (len(depths) - 1)
        self.timestep_embed = FourierFeatures(feats_in)
        if mapping_cond_dim > 0:
            self.mapping_cond = nn.Linear(mapping_cond_dim, feats_in, bias=False)
        self.mapping = nn.Sequential(_orthogonal(nn.Linear(feats_in, feats_in)), nn.GELU(),
                                     _orthogonal(nn.Linear(feats_in, feats_in)), nn.GELU())
        self.proj_in = nn.Conv2d(c_in * patch_size**2, channels[0], 1)
        self.proj_out = _zero(nn.Conv2d(channels[0], c_in * patch_size**2, 1))
        args = dict(group_size=group_size, head_size=head_size, dropout=dropout)
        d_blocks, u_blocks = [], []
        for i, (depth, width, attn) in enumerate(zip(depths, channels, self_attn_depths, strict=True)):
            blocks = _blocks(depth, feats_in, channels[max(0, i - 1)], width, width, bool(attn), **args)
            d_blocks.append(_Level([Downsample() if i > 0 else nn.Identity(), *blocks]))
        for i, (depth, width, attn) in enumerate(zip(depths, channels, self_attn_depths, strict=True)):
            c_level_in = 2 * width if i < len(depths) - 1 else width
            blocks = _blocks(depth, feats_in, c_level_in, width, channels[max(0, i - 1)], bool(attn), **args)
            u_blocks.append(_Level([*blocks, Upsample() if i > 0 else nn.Identity()]))
        self.u_net = _UNet(d_blocks, u_blocks[::-1])

    def embedding(self, c_noise: Tensor, augment_labels: Tensor | None = None) -> Tensor:
        """The embedding [B, feats_in] of c_noise [B] and the mapping condition [B, mapping_cond_dim]."""
        emb = self.timestep_embed(c_noise)
        if augment_labels is not None:
            if self.mapping_cond_dim == 0:
                raise ValueError("augment_labels given to a network without mapping_cond_dim")
            emb = emb + self.mapping_cond(augment_labels.to(emb.dtype))
        return self.mapping(emb)

    def forward(self, x: Tensor, c_noise: Tensor, augment_labels: Tensor | None = None,
                y: Tensor | None = None) -> Tensor:
        """See the class docstring; `y` (class labels) must be None: the network is unconditional."""
        if y is not None:
            raise ValueError("kdiff_v1 takes no class labels")
        if x.ndim != 4 or x.shape[1] != self.c_in:
            raise ValueError(f"expected x of shape [B, {self.c_in}, H, W], got {tuple(x.shape)}")
        if x.shape[-1] % self.downsample_factor or x.shape[-2] % self.downsample_factor:
            raise ValueError(f"H and W must be multiples of {self.downsample_factor}, got {tuple(x.shape[-2:])}")
        c_noise = torch.as_tensor(c_noise, device=x.device)
        emb = self.embedding(c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise, augment_labels)
        h = F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x
        h = self.proj_out(self.u_net(self.proj_in(h), emb))
        return F.pixel_shuffle(h, self.patch_size) if self.patch_size > 1 else h
