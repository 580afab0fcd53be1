"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H).

One U-Net class, `NCSNpp`, covers both architectures; they differ only in constructor arguments:

* NCSN++ (VE SDE): Gaussian Fourier embedding of log σ, FIR resampling, BigGAN blocks, a
  "residual" input pyramid, output divided by σ (`scale_by_sigma`). Defaults of this class are the
  NCSN++ CIFAR-10 continuous configuration.
* DDPM++ (VP SDE): sinusoidal embedding of the time label t·999, no FIR, no pyramid, no σ scaling,
  data already in [-1, 1] (`centered=True`).

The time input `time_cond` ([B] float) and the meaning of the output depend on this choice:

* VE + `embedding_type="fourier"` + `scale_by_sigma=True`: `time_cond` is σ itself (> 0; the network
  embeds log σ) and the output is the score ∇ₓ log p_σ(x) directly, i.e. already a scorelib score
  model `score(x, sigma)`. When `centered=False` (score_sde's VE CIFAR-10 setting) x lives in the
  [0, 1] data range plus noise; the network maps it by 2x - 1 internally, the score is still w.r.t. x.
* VP + `embedding_type="positional"`: `time_cond` is the label t·999 for continuous time t ∈ (0, 1]
  (or the integer step for discrete DDPM). The output is ε-prediction: score_sde's VP wrapper forms
  score = -output / std(t) with std(t) the marginal standard deviation at t, so output ≈ ε.

Layer structure and initialisation follow score_sde's `models/ncsnpp.py` so parameter counts agree
(see tests/test_models_ncsnpp.py for the measured reference numbers). Activation is SiLU ("swish").

Module-level presets hold the constructor kwargs of the published CIFAR-10 configurations
(score_sde `configs/ve/cifar10_ncsnpp*_continuous.py`, `configs/vp/cifar10_ddpmpp*_continuous.py`):
`NCSNpp(**NCSNPP_CIFAR10)`, `NCSNpp(**DDPMPP_DEEP_CIFAR10)`, ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelib.models.layers import default_init_, timestep_embedding
from scorelib.models.ncsnpp_layers import (
    SQRT_HALF,
    AttnBlockpp,
    Combine,
    Downsample,
    GaussianFourierProjection,
    ResnetBlockBigGANpp,
    ResnetBlockDDPMpp,
    Upsample,
    conv3x3,
    group_norm,
    linear,
)
from scorelib.utils import append_dims, frozen

__all__ = ["DDPMPP_CIFAR10", "DDPMPP_DEEP_CIFAR10", "NCSNPP_CIFAR10", "NCSNPP_DEEP_CIFAR10", "NCSNpp"]

_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


class _BlockFactory:
    """Builds the residual / resampling blocks of one network so every block shares its settings."""

    def __init__(
        self,
        *,
        resblock_type: str,
        temb_dim: int | None,
        dropout: float,
        fir: bool,
        fir_kernel: Sequence[float],
        skip_rescale: bool,
        init_scale: float,
        resamp_with_conv: bool,
    ) -> None:
        self.biggan = resblock_type == "biggan"
        self.temb_dim, self.dropout, self.fir, self.fir_kernel = temb_dim, dropout, fir, tuple(fir_kernel)
        self.skip_rescale, self.init_scale, self.resamp_with_conv = skip_rescale, init_scale, resamp_with_conv

    def res(self, in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
        """A residual block [B, in, H, W] -> [B, out, H', W'] (up/down only for BigGAN blocks)."""
        common = dict(
            temb_dim=self.temb_dim, dropout=self.dropout, skip_rescale=self.skip_rescale, init_scale=self.init_scale
        )
        if self.biggan:
            return ResnetBlockBigGANpp(
                in_ch, out_ch, up=up, down=down, fir=self.fir, fir_kernel=self.fir_kernel, **common
            )
        return ResnetBlockDDPMpp(in_ch, out_ch, **common)

    def attn(self, channels: int) -> AttnBlockpp:
        """Self-attention block [B, C, H, W] -> same."""
        return AttnBlockpp(channels, skip_rescale=self.skip_rescale, init_scale=self.init_scale)

    def down(self, ch: int) -> nn.Module:
        """Level-to-level downsampling: a BigGAN down block, or (DDPM blocks) a Downsample layer."""
        if self.biggan:
            return self.res(ch, down=True)
        return Downsample(ch, with_conv=self.resamp_with_conv, fir=self.fir, fir_kernel=self.fir_kernel)

    def up(self, ch: int) -> nn.Module:
        """Level-to-level upsampling: a BigGAN up block, or (DDPM blocks) an Upsample layer."""
        if self.biggan:
            return self.res(ch, up=True)
        return Upsample(ch, with_conv=self.resamp_with_conv, fir=self.fir, fir_kernel=self.fir_kernel)


class _DownLevel(nn.Module):
    """One encoder resolution: residual blocks (+ attention), then downsampling and the input pyramid.

    forward(h [B, C_in, H, W], temb, skips, pyramid) appends every intermediate feature map to `skips`
    and returns (h at the next resolution, or this one for the last level; updated pyramid image).
    """

    def __init__(
        self,
        make: _BlockFactory,
        in_ch: int,
        out_ch: int,
        num_res_blocks: int,
        use_attn: bool,
        last: bool,
        progressive_input: str,
        combine_method: str,
        pyramid_ch: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        for _ in range(num_res_blocks):
            self.blocks.append(make.res(in_ch, out_ch))
            self.attns.append(make.attn(out_ch) if use_attn else nn.Identity())
            in_ch = out_ch
        self.downsample = None if last else make.down(out_ch)
        self.down_takes_temb = make.biggan
        self.progressive_input = "none" if last else progressive_input
        self.pyramid_down: nn.Module | None = None
        self.combine: Combine | None = None
        if self.progressive_input == "input_skip":
            self.pyramid_down = Downsample(pyramid_ch, fir=make.fir, fir_kernel=make.fir_kernel)
            self.combine = Combine(pyramid_ch, out_ch, method=combine_method)
        elif self.progressive_input == "residual":
            self.pyramid_down = Downsample(pyramid_ch, out_ch, with_conv=True, fir=make.fir, fir_kernel=make.fir_kernel)
        self.out_ch = 2 * out_ch if (self.progressive_input == "input_skip" and combine_method == "cat") else out_ch

    def forward(
        self, h: Tensor, temb: Tensor | None, skips: list[Tensor], pyramid: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """See class docstring. pyramid: [B, C_p, H, W] (None without an input pyramid)."""
        for block, attn in zip(self.blocks, self.attns, strict=True):
            h = attn(block(h, temb))
            skips.append(h)
        if self.downsample is None:
            return h, pyramid
        h = self.downsample(h, temb) if self.down_takes_temb else self.downsample(h)
        if self.progressive_input == "input_skip":
            pyramid = self.pyramid_down(pyramid)
            h = self.combine(pyramid, h)
        elif self.progressive_input == "residual":
            # Input pyramid, "residual" variant (App. H, after StyleGAN2's residual input branch): a
            # strided conv of the previous pyramid joins the features with a rescaled skip; the sum is
            # the new pyramid.
            pyramid = (self.pyramid_down(pyramid) + h) * SQRT_HALF
            h = pyramid
        skips.append(h)
        return h, pyramid


class _UpLevel(nn.Module):
    """One decoder resolution: num_res_blocks + 1 blocks on [h, skip], attention, output pyramid, upsampling.

    forward(h, temb, skips, pyramid) pops its skip connections from `skips` and returns (h at the next
    finer resolution, or this one for the finest level; updated output pyramid).
    """

    def __init__(
        self,
        make: _BlockFactory,
        in_ch: int,
        out_ch: int,
        skip_chs: list[int],
        use_attn: bool,
        coarsest: bool,
        finest: bool,
        progressive: str,
        image_channels: int,
        pyramid_ch: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for skip_ch in skip_chs:
            self.blocks.append(make.res(in_ch + skip_ch, out_ch))
            in_ch = out_ch
        self.attn = make.attn(out_ch) if use_attn else nn.Identity()
        self.act = nn.SiLU()
        self.progressive = progressive
        self.coarsest = coarsest
        # Output pyramid (App. H): "output_skip" sums per-resolution RGB predictions, upsampled;
        # "residual" carries a feature-space pyramid that is upsampled with a conv and added to h.
        self.pyramid_norm: nn.GroupNorm | None = None
        self.pyramid_conv: nn.Conv2d | None = None
        self.pyramid_up: nn.Module | None = None
        self.pyramid_ch = pyramid_ch
        if progressive == "output_skip":
            self.pyramid_norm = group_norm(out_ch)
            self.pyramid_conv = conv3x3(out_ch, image_channels, init_scale=make.init_scale)
            if not coarsest:
                self.pyramid_up = Upsample(image_channels, fir=make.fir, fir_kernel=make.fir_kernel)
            self.pyramid_ch = image_channels
        elif progressive == "residual":
            if coarsest:
                self.pyramid_norm = group_norm(out_ch)
                self.pyramid_conv = conv3x3(out_ch, out_ch)
            else:
                self.pyramid_up = Upsample(pyramid_ch, out_ch, with_conv=True, fir=make.fir, fir_kernel=make.fir_kernel)
            self.pyramid_ch = out_ch
        self.upsample = None if finest else make.up(out_ch)
        self.up_takes_temb = make.biggan

    def forward(
        self, h: Tensor, temb: Tensor | None, skips: list[Tensor], pyramid: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """See class docstring."""
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
        h = self.attn(h)
        if self.progressive == "output_skip":
            out = self.pyramid_conv(self.act(self.pyramid_norm(h)))
            pyramid = out if self.coarsest else self.pyramid_up(pyramid) + out
        elif self.progressive == "residual":
            if self.coarsest:
                pyramid = self.pyramid_conv(self.act(self.pyramid_norm(h)))
            else:
                pyramid = (self.pyramid_up(pyramid) + h) * SQRT_HALF
                h = pyramid
        if self.upsample is not None:
            h = self.upsample(h, temb) if self.up_takes_temb else self.upsample(h)
        return h, pyramid


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net (Song et al. 2021, App. H). forward(x [B,C,H,W], time_cond [B]) -> [B,C,H,W].

    Args (all keyword-only; defaults = NCSN++ continuous VE CIFAR-10):
        image_size: H = W the network is built for; `attn_resolutions` refer to it. Inputs must be
            this size.
        in_channels: image channels C (input and output).
        nf: base width; level i has nf · ch_mult[i] channels; the time embedding has 4·nf.
        ch_mult, num_res_blocks, attn_resolutions, dropout: the usual U-Net settings; attention is
            always used once in the middle.
        resamp_with_conv: convs in the DDPM-block Upsample/Downsample layers.
        conditional: time conditioning on/off (off: time_cond only feeds `scale_by_sigma`).
        fir, fir_kernel: FIR (StyleGAN2) resampling with these taps instead of nearest / average pool.
        skip_rescale: multiply every residual sum by 1/√2.
        resblock_type: "biggan" (blocks resample) or "ddpm" (separate resampling layers).
        progressive: output pyramid, "none" | "output_skip" | "residual".
        progressive_input: input pyramid, "none" | "input_skip" | "residual".
        progressive_combine: how "input_skip" joins the pyramid, "sum" | "cat".
        embedding_type: "fourier" (time_cond = σ, embeds log σ) | "positional" (time_cond = label).
        fourier_scale: std of the Fourier frequencies.
        init_scale: init scale of the last conv of each block / attention / the output conv (0 → 1e-10).
        scale_by_sigma: divide the output by time_cond (= σ); with embedding_type="positional" (score_sde's
            discrete VE NCSN++, time_cond = the level index) by level_sigmas[time_cond] instead.
        level_sigmas: the descending NCSN levels σ_0 > … > σ_{N-1} a positional `scale_by_sigma` network
            divides by (score_sde models/ncsnpp.py: `used_sigmas = self.sigmas[time_cond.long()]`).
        centered: input already in [-1, 1]; if False, x → 2x - 1 first (data in [0, 1]).
        fourier_of_log: the Fourier features embed log(time_cond) (score_sde: time_cond = σ); False embeds
            time_cond as given (EDM's SongUNet, whose wrapper passes its noise label c_noise, already a log).
        noise_channels: width of the noise embedding (EDM's model_channels · channel_mult_noise); default
            2·nf for "fourier" (nf frequencies) and nf for "positional", score_sde's widths.
        channel_mult_emb: the embedding MLP has channel_mult_emb · nf channels (4 in score_sde).
        label_dim: class-conditional with this many classes (EDM's SongUNet `map_label`): the embedding
            gains W·(√label_dim · onehot(y)) + b before the MLP. y = label_dim (or y=None) is "no class", the
            zero one-hot vector (EDM evaluates a conditional model without labels on zeros).
        augment_dim: width of the augmentation labels (`scorelib.augment`, 9 for EDM's pipeline); the
            embedding gains a bias-free linear map of them (EDM's `map_augment`); None labels add nothing.
        class_dropout: during training, each label becomes "no class" with this probability (EDM's
            `label_dropout`, for classifier-free guidance).
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        in_channels: int = 3,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
        fir: bool = True,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        resblock_type: str = "biggan",
        progressive: str = "none",
        progressive_input: str = "residual",
        progressive_combine: str = "sum",
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
        scale_by_sigma: bool = True,
        centered: bool = False,
        level_sigmas: Sequence[float] | Tensor | None = None,
        fourier_of_log: bool = True,
        noise_channels: int | None = None,
        channel_mult_emb: int = 4,
        label_dim: int = 0,
        augment_dim: int = 0,
        class_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_levels = len(ch_mult)
        if resblock_type not in ("biggan", "ddpm"):
            raise ValueError(f"resblock_type must be 'biggan' or 'ddpm', got {resblock_type!r}")
        if progressive not in _PROGRESSIVE:
            raise ValueError(f"progressive must be one of {_PROGRESSIVE}, got {progressive!r}")
        if progressive_input not in _PROGRESSIVE_INPUT:
            raise ValueError(f"progressive_input must be one of {_PROGRESSIVE_INPUT}, got {progressive_input!r}")
        if progressive_combine not in ("sum", "cat"):
            raise ValueError(f"progressive_combine must be 'sum' or 'cat', got {progressive_combine!r}")
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if scale_by_sigma and embedding_type != "fourier" and level_sigmas is None:
            raise ValueError(
                "scale_by_sigma needs embedding_type='fourier' (time_cond = σ); with positional labels "
                "divide the output by σ outside the network"
            )
        if (label_dim or augment_dim) and not conditional:
            raise ValueError("label_dim / augment_dim need conditional=True (they join the time embedding)")
        if class_dropout and not label_dim:
            raise ValueError("class_dropout needs label_dim > 0")
        if num_levels < 1 or image_size % 2 ** (num_levels - 1) != 0:
            raise ValueError(f"image_size {image_size} must be divisible by 2^(len(ch_mult)-1)")

        self.image_size, self.in_channels, self.nf = image_size, in_channels, nf
        self.conditional, self.embedding_type = conditional, embedding_type
        self.scale_by_sigma, self.centered, self.progressive = scale_by_sigma, centered, progressive
        self.progressive_input = progressive_input
        self.fourier_of_log, self.label_dim, self.class_dropout = fourier_of_log, label_dim, class_dropout
        self.act = nn.SiLU()
        self.register_buffer("level_sigmas", None if level_sigmas is None else
                             torch.as_tensor(level_sigmas, dtype=torch.float32), persistent=False)

        # Time / noise-level embedding (+ class and augmentation labels), then a 2-layer MLP to
        # channel_mult_emb·nf (DDPM; App. H; EDM's SongUNet adds the labels before the MLP).
        temb_dim = channel_mult_emb * nf if conditional else None
        if noise_channels is None:
            noise_channels = 2 * nf if embedding_type == "fourier" else nf
        if embedding_type == "fourier" and noise_channels % 2:
            raise ValueError(f"Fourier features need an even noise_channels, got {noise_channels}")
        self.noise_channels = noise_channels
        self.fourier: GaussianFourierProjection | None = None
        self.temb_mlp: nn.Sequential | None = None
        self.label_emb: nn.Linear | None = None
        self.augment_emb: nn.Linear | None = None
        if conditional:
            if embedding_type == "fourier":
                self.fourier = GaussianFourierProjection(noise_channels // 2, scale=fourier_scale)
            if label_dim:
                self.label_emb = linear(label_dim, noise_channels)
            if augment_dim:
                self.augment_emb = nn.Linear(augment_dim, noise_channels, bias=False)
                default_init_(self.augment_emb.weight)
            self.temb_mlp = nn.Sequential(linear(noise_channels, temb_dim), nn.SiLU(), linear(temb_dim, temb_dim))

        make = _BlockFactory(
            resblock_type=resblock_type,
            temb_dim=temb_dim,
            dropout=dropout,
            fir=fir,
            fir_kernel=fir_kernel,
            skip_rescale=skip_rescale,
            init_scale=init_scale,
            resamp_with_conv=resamp_with_conv,
        )
        resolutions = [image_size // 2**i for i in range(num_levels)]
        attn_at = [r in attn_resolutions for r in resolutions]

        # Encoder.
        self.conv_in = conv3x3(in_channels, nf)
        skip_chs, ch, pyramid_ch = [nf], nf, in_channels
        self.down = nn.ModuleList()
        for i in range(num_levels):
            out_ch = nf * ch_mult[i]
            level = _DownLevel(
                make,
                ch,
                out_ch,
                num_res_blocks,
                attn_at[i],
                i == num_levels - 1,
                progressive_input,
                progressive_combine,
                pyramid_ch,
            )
            self.down.append(level)
            skip_chs += [out_ch] * num_res_blocks
            ch = level.out_ch
            if i != num_levels - 1:
                skip_chs.append(ch)
                pyramid_ch = out_ch if progressive_input == "residual" else pyramid_ch

        # Middle: block, attention, block.
        self.mid_block1 = make.res(ch)
        self.mid_attn = make.attn(ch)
        self.mid_block2 = make.res(ch)

        # Decoder.
        self.up = nn.ModuleList()
        pyramid_ch = 0
        for i in reversed(range(num_levels)):
            out_ch = nf * ch_mult[i]
            level_skips = [skip_chs.pop() for _ in range(num_res_blocks + 1)]
            level = _UpLevel(
                make,
                ch,
                out_ch,
                level_skips,
                attn_at[i],
                i == num_levels - 1,
                i == 0,
                progressive,
                in_channels,
                pyramid_ch,
            )
            self.up.append(level)
            ch, pyramid_ch = out_ch, level.pyramid_ch
        assert not skip_chs

        self.norm_out: nn.GroupNorm | None = None
        self.conv_out: nn.Conv2d | None = None
        if progressive != "output_skip":
            self.norm_out = group_norm(ch)
            self.conv_out = conv3x3(ch, in_channels, init_scale=init_scale)

    def class_vector(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """√label_dim · onehot(y) [B, label_dim] (float32); y = label_dim or None gives zeros (no class)."""
        k = self.label_dim
        if y is None:
            return torch.zeros(batch, k, device=device)
        if y.dtype not in (torch.int64, torch.int32) or y.shape != (batch,):
            raise ValueError(f"y must be int64 class indices of shape [{batch}], got {y.dtype} {tuple(y.shape)}")
        if self.training and self.class_dropout > 0:
            y = y.masked_fill(torch.rand(y.shape, device=y.device) < self.class_dropout, k)
        return F.one_hot(y.long(), k + 1)[:, :k].float() * math.sqrt(k)

    def embed_time(self, time_cond: Tensor, y: Tensor | None = None,
                   augment_labels: Tensor | None = None) -> Tensor | None:
        """time_cond [B] (+ class indices y [B], augmentation labels [B, augment_dim]) -> embedding
        [B, channel_mult_emb·nf] (None when not conditional)."""
        if self.temb_mlp is None:
            if y is not None or augment_labels is not None:
                raise ValueError("labels given to a network without a time embedding (conditional=False)")
            return None
        if self.fourier is not None:
            # Fourier features of log σ (App. H), or of the wrapper's label as given (EDM)
            emb = self.fourier(torch.log(time_cond) if self.fourier_of_log else time_cond)
        else:
            emb = timestep_embedding(time_cond, self.noise_channels)
        if self.label_emb is not None:
            emb = emb + self.label_emb(self.class_vector(y, time_cond.shape[0], time_cond.device))
        elif y is not None:
            raise ValueError("y given to an unconditional network (label_dim=0)")
        if self.augment_emb is not None and augment_labels is not None:
            emb = emb + self.augment_emb(augment_labels.to(emb.dtype))
        elif augment_labels is not None and self.augment_emb is None:
            raise ValueError("augment_labels given to a network without augment_dim")
        return self.temb_mlp(emb)

    def forward(self, x: Tensor, time_cond: Tensor, y: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W]; time_cond: [B] float (σ for "fourier", the time label for "positional", the
        wrapper's noise label with `fourier_of_log=False`; a 0-d tensor is broadcast to the batch); y: int64
        class indices [B] (label_dim > 0); augment_labels: [B, augment_dim] -> [B, C, H, W]: the score
        ∇ₓ log p_σ(x) when `scale_by_sigma`, else the raw output (ε for VP; EDM's F).
        """
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} inputs, got {tuple(x.shape)}")
        if time_cond.ndim == 0:
            time_cond = time_cond.expand(x.shape[0])
        temb = self.embed_time(time_cond, y, augment_labels)
        if not self.centered:
            x = 2 * x - 1  # data in [0, 1] -> [-1, 1]

        pyramid = x if self.progressive_input != "none" else None
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            h, pyramid = level(h, temb, skips, pyramid)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)

        pyramid = None
        for level in self.up:
            h, pyramid = level(h, temb, skips, pyramid)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.conv_out(self.act(self.norm_out(h)))
        if self.scale_by_sigma:
            used = time_cond if self.level_sigmas is None else self.level_sigmas[time_cond.long()]
            h = h / append_dims(used, h.ndim)  # s(x, σ) = net(x, σ) / σ (NCSNv2, Song & Ermon 2020, Technique 3)
        return h


# ----------------------------------------------------------------------------------------------
# Published configurations (constructor kwargs; read-only mappings: `NCSNpp(**NCSNPP_CIFAR10)`)
# ----------------------------------------------------------------------------------------------


_CIFAR10_COMMON: dict[str, Any] = dict(
    image_size=32,
    in_channels=3,
    nf=128,
    ch_mult=(1, 2, 2, 2),
    attn_resolutions=(16,),
    dropout=0.1,
    resamp_with_conv=True,
    conditional=True,
    fir_kernel=(1, 3, 3, 1),
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_combine="sum",
    fourier_scale=16.0,
    init_scale=0.0,
)

# NCSN++ (VE SDE, continuous): time_cond = σ, output = score. 62.76M parameters.
NCSNPP_CIFAR10 = frozen(
    **_CIFAR10_COMMON,
    num_res_blocks=4,
    fir=True,
    progressive_input="residual",
    embedding_type="fourier",
    scale_by_sigma=True,
    centered=False,
)
# NCSN++ deep (VE SDE, continuous): 107.59M parameters.
NCSNPP_DEEP_CIFAR10 = frozen(**{**NCSNPP_CIFAR10, "num_res_blocks": 8})
# DDPM++ (VP SDE, continuous): time_cond = 999·t, output = ε-prediction. 61.80M parameters.
DDPMPP_CIFAR10 = frozen(
    **_CIFAR10_COMMON,
    num_res_blocks=4,
    fir=False,
    progressive_input="none",
    embedding_type="positional",
    scale_by_sigma=False,
    centered=True,
)
# DDPM++ deep (VP SDE, continuous): 106.63M parameters.
DDPMPP_DEEP_CIFAR10 = frozen(**{**DDPMPP_CIFAR10, "num_res_blocks": 8})
