"""The DDPM U-Net of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", App. B).

A PixelCNN++-style U-Net: `num_res_blocks` residual blocks per resolution, channel widths
`ch * ch_mult[level]`, single-head self-attention at the resolutions in `attn_resolutions`, a
middle stage (res block, attention, res block), and a decoder with one extra res block per level
that consumes the encoder's skip activations. Every res block receives a timestep embedding:
sinusoidal (Vaswani et al. 2017, §3.5) -> Linear(ch, 4ch) -> swish -> Linear(4ch, 4ch).

The network predicts ε (Ho et al. 2020, Eq. 14 / Algorithm 1); set `out_channels=2*in_channels`
for the learned-variance head of Nichol & Dhariwal 2021. Module and parameter names follow the
reference code (and the PyTorch port of Song et al., "DDIM"), so its checkpoints load with
`load_state_dict` directly.

Published configurations:
    CIFAR-10 32 px (35.7M):   ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                              dropout=0.1, image_size=32
    CelebA-HQ / LSUN 256 px (114M): ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                              attn_resolutions=(16,), dropout=0.0, image_size=256
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    AttnBlock,
    Downsample,
    ResnetBlock,
    Upsample,
    conv2d,
    dense,
    group_norm,
    timestep_embedding,
)

__all__ = ["DDPMUNet"]


class _Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks, optional attention, optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    """Bottleneck at the lowest resolution: res block, self-attention, res block."""

    def __init__(self, channels: int, temb_channels: int, dropout: float, num_groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(
            channels, channels, temb_channels=temb_channels, dropout=dropout, num_groups=num_groups
        )
        self.attn_1 = AttnBlock(channels, num_groups=num_groups)
        self.block_2 = ResnetBlock(
            channels, channels, temb_channels=temb_channels, dropout=dropout, num_groups=num_groups
        )


class _TimestepMLP(nn.Module):
    """Sinusoidal embedding [B, ch] -> Linear -> swish -> Linear -> [B, 4·ch] (Ho et al. 2020, App. B)."""

    def __init__(self, ch: int, temb_channels: int) -> None:
        super().__init__()
        self.dense = nn.ModuleList([dense(ch, temb_channels), dense(temb_channels, temb_channels)])

    def forward(self, emb: Tensor) -> Tensor:
        return self.dense[1](F.silu(self.dense[0](emb)))


class DDPMUNet(nn.Module):
    """ε-prediction U-Net of DDPM (Ho et al. 2020).

    Args:
        in_channels: image channels C.
        out_channels: output channels; `None` means C (ε); 2C gives ε and the variance
            interpolation v of improved DDPM.
        ch: base width; the timestep embedding has width 4·ch.
        ch_mult: width multiplier per resolution; len(ch_mult) - 1 downsamplings.
        num_res_blocks: residual blocks per resolution in the encoder (the decoder has one more).
        attn_resolutions: feature-map sizes (in pixels) at which self-attention follows each block.
        dropout: dropout rate inside the residual blocks.
        resamp_with_conv: 3×3 convs in the down/upsamplers (else average pooling / plain nearest).
        image_size: training resolution, which fixes where attention sits. Other sizes divisible by
            2^(len(ch_mult)-1) also run; attention stays at the same layers.
        num_groups: GroupNorm groups (32 in DDPM); every width must be divisible by it.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int | None = None,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        image_size: int = 32,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if not ch_mult or num_res_blocks < 1:
            raise ValueError("need at least one resolution level and one res block per level")
        if image_size % 2 ** (len(ch_mult) - 1) != 0:
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(ch_mult) - 1}")
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.ch = ch
        self.ch_mult = ch_mult
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = attn_resolutions
        self.image_size = image_size
        temb_ch = 4 * ch
        block_kw = {"temb_channels": temb_ch, "dropout": dropout, "num_groups": num_groups}

        self.temb = _TimestepMLP(ch, temb_ch)
        self.conv_in = conv2d(in_channels, ch)

        # Encoder: widths of every activation pushed onto the skip stack, in order.
        skip_widths = [ch]
        width, res = ch, image_size
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            stage = _Level()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(width, ch * mult, **block_kw))
                width = ch * mult
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(width, num_groups=num_groups))
                skip_widths.append(width)
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(width, resamp_with_conv)
                res //= 2
                skip_widths.append(width)
            self.down.append(stage)

        self.mid = _Mid(width, temb_ch, dropout, num_groups)

        # Decoder, built from the lowest resolution up; self.up[level] mirrors self.down[level].
        up: list[_Level] = []
        for level in reversed(range(len(ch_mult))):
            stage = _Level()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(width + skip_widths.pop(), ch * ch_mult[level], **block_kw))
                width = ch * ch_mult[level]
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(width, num_groups=num_groups))
            if level != 0:
                stage.upsample = Upsample(width, resamp_with_conv)
                res *= 2
            up.insert(0, stage)
        self.up = nn.ModuleList(up)

        self.norm_out = group_norm(width, num_groups)
        self.conv_out = conv2d(width, self.out_channels, init_scale=0.0)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict ε.

        Args:
            x: [B, C, H, W] noisy images x_t (H, W divisible by 2^(len(ch_mult)-1)).
            t: [B] timesteps, int64 or float (fractional timesteps are embedded smoothly, so
               t=5.0 and t=5 give the same output); a 0-d tensor is broadcast to the batch.

        Returns:
            [B, out_channels, H, W]: ε̂(x_t, t) (plus the variance channels when out_channels = 2C).
        """
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"x must be [B, C, H, W] with H, W divisible by {factor}, got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = timestep_embedding(t, self.ch).to(self.temb.dense[0].weight.dtype)
        temb = self.temb(emb)

        hs = [self.conv_in(x)]
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(hs[-1], temb)
                if len(stage.attn):
                    h = stage.attn[i](h)
                hs.append(h)
            if hasattr(stage, "downsample"):
                hs.append(stage.downsample(hs[-1]))

        h = self.mid.block_1(hs[-1], temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)

        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
