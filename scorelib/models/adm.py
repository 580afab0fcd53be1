"""Improved-DDPM / ADM U-Net and the ADM noisy-image classifier.

One U-Net class, :class:`ADMUNet`, covers both

* improved DDPM (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models",
  Sec. 2-3, App. A): the DDPM U-Net with multi-head attention, scale-shift norm and a learned
  output variance interpolation v (Eq. 15), and
* ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", Sec. 3):
  attention at 32, 16 and 8 px, 64 channels per head, BigGAN residual up/down sampling,
  adaptive group normalisation AdaGN(h, y) = y_s GroupNorm(h) + y_b, class conditioning.

:class:`ADMClassifier` is the ADM noisy-image classifier p_φ(y | x_t, t) (Sec. 4): the encoder
half of the U-Net followed by attention pooling; its input gradient ∇ₓ log p_φ(y | x_t) drives
classifier guidance (Algorithm 1).

Module and parameter names follow the reference implementations (openai/improved-diffusion,
openai/guided-diffusion), so their state_dicts load with `load_state_dict(..., strict=True)`
(except a null-label row, which the reference does not have).

The networks see the DDPM timestep t exactly as given (int or fractional float). Timestep
respacing (improved-diffusion's `rescale_timesteps`, t ↦ t · 1000 / T) is the adapter's business,
not the network's.

Module-level presets (:data:`IDDPM_CIFAR10`, :data:`ADM_IMAGENET64`, ...) hold the constructor
kwargs of the published configurations: `ADMUNet(**ADM_IMAGENET64)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scorelib.models.layers import timestep_embedding
from scorelib.utils import append_dims, frozen

__all__ = [
    "ADM_CIFAR10",
    "ADM_CLASSIFIER_64",
    "ADM_CLASSIFIER_128",
    "ADM_CLASSIFIER_256",
    "ADM_IMAGENET64",
    "ADM_IMAGENET128",
    "ADM_IMAGENET256",
    "ADM_IMAGENET256_UNCOND",
    "ADM_IMAGENET512",
    "IDDPM_CIFAR10",
    "IDDPM_IMAGENET64",
    "ADMClassifier",
    "ADMUNet",
]


# ----------------------------------------------------------------------------------------------
# Building blocks (private). Every block takes (x, emb) so the containers need no type dispatch.
# ----------------------------------------------------------------------------------------------


def _timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, t: [B] -> [B, dim] float32.

    improved-diffusion's nn.py `timestep_embedding`: `layers.timestep_embedding` with ω_i =
    max_period^(-i / (dim/2)), cosines first, in that code's float32 rounding.
    """
    return timestep_embedding(t, dim, max_period=max_period, freq_shift=0.0, cos_first=True, divide_last=True)


class _GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) computed in float32 and cast back (stable under bf16/fp16 autocast)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def _norm(channels: int, min_group_channels: int | None = None) -> _GroupNorm32:
    """GroupNorm(32, C) (improved-/guided-diffusion); with `min_group_channels` = k, min(32, C // k) groups
    (EDM training/networks.py `GroupNorm`, k = 4), which also serves narrow networks."""
    groups = 32 if min_group_channels is None else max(1, min(32, channels // min_group_channels))
    if channels % groups:
        raise ValueError(f"GroupNorm({groups}) needs channels divisible by {groups}, got {channels}")
    return _GroupNorm32(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a module's parameters (the residual branch starts as the identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class _InputConv(nn.Conv2d):
    """The stem convolution, with the (x, emb) block signature."""

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(x)


class _Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, optionally followed by a 3×3 conv. [B,C,H,W] -> [B,C,2H,2W]."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class _Downsample(nn.Module):
    """Stride-2 3×3 conv or 2×2 average pooling. [B,C,H,W] -> [B,C,H/2,W/2]."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)
        )

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.op(x)


class _ResBlock(nn.Module):
    """Residual block conditioned on the embedding; optionally BigGAN-style up/down sampling.

    h = conv(SiLU(GN(x))); then either h = GN(h)·(1 + s) + b with (s, b) from the embedding
    (AdaGN, Dhariwal & Nichol 2021 Sec. 3; improved DDPM's `use_scale_shift_norm`) or
    h = GN(h + e); out = skip(x) + conv(dropout(SiLU(h))). With `up`/`down` both branches are
    resampled between the first norm-activation and the first conv (Brock et al. 2019, BigGAN).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        min_group_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = "up" if up else "down" if down else None
        self.in_layers = nn.Sequential(
            _norm(channels, min_group_channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels, min_group_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: [B, C, H, W], emb: [B, E] -> [B, C_out, H', W'] (H' = 2H, H/2 or H)."""
        norm, act, conv = self.in_layers
        h = act(norm(x))
        h, x = self._resample(h), self._resample(x)
        h = conv(h)
        e = append_dims(self.emb_layers(emb), h.ndim).to(h.dtype)
        out_norm, out_act, out_drop, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        h = out_conv(out_drop(out_act(h)))
        return self.skip_connection(x) + h


class _AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual connection.

    `new_order=False` reads the qkv projection per head as [q_h, k_h, v_h] (improved-diffusion
    layout, guided-diffusion's QKVAttentionLegacy); `True` as [q | k | v] split into heads
    afterwards (guided-diffusion's QKVAttention). Both have the same parameters; only the
    layout of a loaded checkpoint differs.
    """

    def __init__(
        self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False,
        min_group_channels: int | None = None,
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by head channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {self.num_heads}")
        self.new_order = new_order
        self.norm = _norm(channels, min_group_channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        b, c, *spatial = x.shape
        h = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(h))  # [B, 3C, T]
        n, d, length = self.num_heads, c // self.num_heads, h.shape[-1]
        if self.new_order:
            q, k, v = qkv.reshape(b, 3, n, d, length).unbind(1)
        else:
            q, k, v = qkv.reshape(b, n, 3, d, length).unbind(2)
        # softmax(qᵀk / √d) v (Vaswani et al. 2017, Eq. 1); tensors are [B, heads, T, d].
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        a = a.transpose(-1, -2).reshape(b, c, length)
        return x + self.proj_out(a).reshape(b, c, *spatial)


class _Block(nn.Sequential):
    """A sequence of blocks sharing the embedding: forward(x, emb)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


class _AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (Radford et al. 2021): [B, C, H, W] -> [B, out].

    A mean token is prepended to the H·W tokens, learned positional embeddings are added, and the
    mean token's multi-head attention output is projected to `output_dim`.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int) -> None:
        super().__init__()
        if embed_dim % num_head_channels:
            raise ValueError(f"channels {embed_dim} not divisible by num_head_channels {num_head_channels}")
        self.spatial_dim = spatial_dim
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, height, width = x.shape
        if height != self.spatial_dim or width != self.spatial_dim:
            raise ValueError(
                f"attention pooling was built for {self.spatial_dim}×{self.spatial_dim} features, "
                f"got {height}×{width}; build the classifier with the image_size you run it at"
            )
        h = x.reshape(b, c, -1)
        h = torch.cat([h.mean(dim=-1, keepdim=True), h], dim=-1)  # [B, C, 1 + HW]
        h = h + self.positional_embedding.to(h.dtype)
        n, d, length = self.num_heads, c // self.num_heads, h.shape[-1]
        q, k, v = self.qkv_proj(h).reshape(b, 3, n, d, length).unbind(1)
        q = q[..., :1]  # only the pooled (mean) token's output is used
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        a = a.transpose(-1, -2).reshape(b, c, 1)
        return self.c_proj(a)[:, :, 0]


def _attention_levels(
    image_size: int, channel_mult: Sequence[float], attention_resolutions: Sequence[int]
) -> set[int]:
    """Level indices whose feature resolution (image_size / 2^level) is in `attention_resolutions`."""
    resolutions = [image_size // 2**level for level in range(len(channel_mult))]
    unknown = set(attention_resolutions) - set(resolutions)
    if unknown:
        raise ValueError(
            f"attention_resolutions {sorted(unknown)} are not feature resolutions of this network "
            f"(image_size {image_size}, levels at {resolutions} px)"
        )
    return {level for level, r in enumerate(resolutions) if r in attention_resolutions}


def _check_input(x: Tensor, in_channels: int, factor: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected x of shape [B, {in_channels}, H, W], got {tuple(x.shape)}")
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"H and W must be multiples of {factor}, got {tuple(x.shape[-2:])}")


def _batch_t(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
    return t


class _Encoder(nn.Module):
    """Shared constructor of the time embedding and the downsampling half (input blocks + middle)."""

    def _build_encoder(
        self,
        *,
        image_size: int,
        in_channels: int,
        model_channels: int,
        channel_mult: Sequence[float],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float,
        num_heads: int,
        num_head_channels: int,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        conv_resample: bool,
        use_new_attention_order: bool,
        channel_mult_emb: int = 4,
        min_group_channels: int | None = None,
        middle_attention: bool = True,
    ) -> tuple[int, list[int], set[int], int]:
        """Build time_embed, input_blocks, middle_block; return (ch, skip chans, attn levels, emb dim)."""
        attn_levels = _attention_levels(image_size, channel_mult, attention_resolutions)
        emb_dim = channel_mult_emb * model_channels
        # DDPM time embedding: sinusoid -> Linear -> SiLU -> Linear (Ho et al. 2020, App. B).
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def attention(ch: int) -> _AttentionBlock:
            return _AttentionBlock(ch, num_heads, num_head_channels, use_new_attention_order, min_group_channels)

        def res(ch: int, out: int | None = None, **kw: bool) -> _ResBlock:
            return _ResBlock(ch, emb_dim, dropout, out, use_scale_shift_norm, min_group_channels=min_group_channels,
                             **kw)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([_Block(_InputConv(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = int(mult * model_channels)
                layers: list[nn.Module] = [res(ch, out)]
                ch = out
                if level in attn_levels:
                    layers.append(attention(ch))
                self.input_blocks.append(_Block(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, down=True) if resblock_updown else _Downsample(ch, conv_resample)
                self.input_blocks.append(_Block(down))
                skip_chans.append(ch)
        self.middle_block = _Block(res(ch), attention(ch), res(ch)) if middle_attention else _Block(res(ch), res(ch))
        return ch, skip_chans, attn_levels, emb_dim

    def _run(self, block: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)


# ----------------------------------------------------------------------------------------------
# Public networks
# ----------------------------------------------------------------------------------------------


class ADMUNet(_Encoder):
    """Improved-DDPM / ADM U-Net: ε_θ(x_t, t[, y]) and optionally the variance interpolation v.

    Args:
        image_size: the training resolution in pixels; only used to place attention layers
            (the network is convolutional and runs at any H, W divisible by 2^(levels-1)).
        in_channels: image channels C.
        model_channels: base width; level i has int(channel_mult[i] * model_channels) channels,
            all divisible by 32 (GroupNorm(32)). The time embedding has 4 * model_channels.
        channel_mult: width multipliers per resolution level; len(channel_mult) - 1 downsamplings.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature resolutions **in pixels** (e.g. (16, 8) for a 32-px
            model) at which self-attention follows each residual block; the reference scripts
            take the same numbers and convert them to downsampling factors image_size // r.
            The middle block always has attention.
        dropout: dropout rate inside the residual blocks.
        num_heads: attention heads when num_head_channels == -1.
        num_head_channels: channels per head (ADM uses 64); -1 = use num_heads.
        num_heads_upsample: heads in the upsampling half when num_head_channels == -1;
            -1 = num_heads.
        use_scale_shift_norm: AdaGN, GN(h)·(1 + s) + b, instead of adding the embedding.
        resblock_updown: residual blocks for up/down sampling (BigGAN) instead of plain ones.
        conv_resample: a conv after nearest upsampling / a strided conv for downsampling
            (else average pooling); ignored when resblock_updown.
        learn_sigma: output 2C channels, [ε | v], v the log-variance interpolation of improved
            DDPM Eq. 15: Σ = exp(v log β_t + (1 - v) log β̃_t) (v comes out unconstrained; the
            reference maps it by (v + 1) / 2).
        num_classes: class-conditional with this many classes (label embedding added to the time
            embedding, ADM Sec. 4); None = unconditional.
        null_label: add one extra label index `num_classes` meaning "no class", for
            classifier-free guidance (Ho & Salimans 2021); y=None then selects it.
        class_dropout: during training, replace each label by the null label with this
            probability (needs null_label); 0 leaves labels alone.
        use_new_attention_order: qkv laid out as [q | k | v] rather than per head (checkpoint
            layout only; same function class and parameters).
        use_checkpoint: gradient checkpointing of every block during training.
        augment_dim: width of the augmentation labels (`scorelib.augment`, 9 for EDM's pipeline); a
            bias-free linear map of them joins the sinusoidal embedding before `time_embed` (EDM's
            DhariwalUNet `map_augment`). 0 = none.
        channel_mult_emb: the embedding has channel_mult_emb · model_channels channels (4 in ADM).
        min_group_channels: GroupNorm with min(32, C // k) groups instead of 32 (EDM's GroupNorm, k = 4).
        middle_attention: attention in the middle block (EDM drops it, as every attention layer, where a
            level has fewer than 64 channels).

    Forward: `model(x, t, y=None, augment_labels=None)` with x: [B, C, H, W], t: [B] int64 or float
    timesteps (DDPM indices 0..T-1, fractional allowed; a scalar is broadcast), y: [B] int64 labels or
    None, augment_labels: [B, augment_dim] or None.
    Returns [B, C, H, W] ε, or [B, 2C, H, W] = ε and v concatenated along channels if learn_sigma.
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        model_channels: int = 128,
        channel_mult: Sequence[float] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.0,
        num_heads: int = 4,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        conv_resample: bool = True,
        learn_sigma: bool = False,
        num_classes: int | None = None,
        null_label: bool = False,
        class_dropout: float = 0.0,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
        augment_dim: int = 0,
        channel_mult_emb: int = 4,
        min_group_channels: int | None = None,
        middle_attention: bool = True,
    ) -> None:
        super().__init__()
        if class_dropout and not null_label:
            raise ValueError("class_dropout needs null_label=True")
        if null_label and num_classes is None:
            raise ValueError("null_label needs num_classes")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.model_channels = model_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.null_label = null_label
        self.class_dropout = class_dropout
        self.use_checkpoint = use_checkpoint
        self.downsample_factor = 2 ** (len(channel_mult) - 1)

        ch, skip_chans, attn_levels, emb_dim = self._build_encoder(
            image_size=image_size,
            in_channels=in_channels,
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            dropout=dropout,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            conv_resample=conv_resample,
            use_new_attention_order=use_new_attention_order,
            channel_mult_emb=channel_mult_emb,
            min_group_channels=min_group_channels,
            middle_attention=middle_attention,
        )
        # EDM's DhariwalUNet starts `map_augment` at zero (its init_zero), so training begins unaugmented
        self.augment_emb = _zero(nn.Linear(augment_dim, model_channels, bias=False)) if augment_dim else None
        self.label_emb = (
            nn.Embedding(num_classes + int(null_label), emb_dim) if num_classes is not None else None
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = int(mult * model_channels)
                layers: list[nn.Module] = [
                    _ResBlock(ch + skip_chans.pop(), emb_dim, dropout, out, use_scale_shift_norm,
                              min_group_channels=min_group_channels)
                ]
                ch = out
                if level in attn_levels:
                    layers.append(
                        _AttentionBlock(ch, num_heads_upsample, num_head_channels, use_new_attention_order,
                                        min_group_channels)
                    )
                if level and i == num_res_blocks:
                    layers.append(
                        _ResBlock(ch, emb_dim, dropout, None, use_scale_shift_norm, up=True,
                                  min_group_channels=min_group_channels)
                        if resblock_updown
                        else _Upsample(ch, conv_resample)
                    )
                self.output_blocks.append(_Block(*layers))

        self.out = nn.Sequential(
            _norm(ch, min_group_channels), nn.SiLU(), _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        )

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W], t: [B] (int or float), y: [B] int64 or None, augment_labels: [B, augment_dim]
        or None -> [B, out_channels, H, W]."""
        _check_input(x, self.in_channels, self.downsample_factor)
        t = _batch_t(t, x)
        emb = _timestep_embedding(t, self.model_channels)
        if augment_labels is not None:
            if self.augment_emb is None:
                raise ValueError("augment_labels given to a network without augment_dim")
            emb = emb + self.augment_emb(augment_labels.to(emb.dtype))
        emb = self.time_embed(emb)
        if self.label_emb is not None:
            assert self.num_classes is not None
            if y is None:
                if not self.null_label:
                    raise ValueError("this model is class-conditional without a null label: pass y")
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            elif self.training and self.class_dropout > 0:
                drop = torch.rand(y.shape, device=y.device) < self.class_dropout
                y = y.masked_fill(drop, self.num_classes)
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise ValueError("y given to an unconditional model (num_classes=None)")

        hs = []
        h = x
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class ADMClassifier(_Encoder):
    """ADM noisy-image classifier p_φ(y | x_t, t) (Dhariwal & Nichol 2021, Sec. 4).

    The downsampling half of :class:`ADMUNet` (input blocks and middle block, same kwargs and
    meaning), then GN -> SiLU -> a pooling head:

    * pool="attention" (the released classifiers): CLIP-style attention pooling with
      num_head_channels per head; fixes the feature size, so inputs must be image_size px.
    * pool="adaptive": global average pooling and a zero-initialised 1×1 conv.

    Forward: `classifier(x, t)` with x: [B, C, H, W], t: [B] int or float -> logits [B, num_classes].
    Classifier guidance uses ∇ₓ log softmax(logits)[y].
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        model_channels: int = 128,
        num_classes: int = 1000,
        channel_mult: Sequence[float] = (1, 2, 3, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.0,
        num_heads: int = 1,
        num_head_channels: int = 64,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        use_new_attention_order: bool = False,
        pool: str = "attention",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        ch, _, _, _ = self._build_encoder(
            image_size=image_size,
            in_channels=in_channels,
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            dropout=dropout,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            conv_resample=conv_resample,
            use_new_attention_order=use_new_attention_order,
        )
        if pool == "attention":
            if num_head_channels == -1:
                raise ValueError("attention pooling needs num_head_channels")
            head: nn.Module = _AttentionPool2d(
                image_size // self.downsample_factor, ch, num_head_channels, num_classes
            )
            self.out = nn.Sequential(_norm(ch), nn.SiLU(), head)
        elif pool == "adaptive":
            self.out = nn.Sequential(
                _norm(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                _zero(nn.Conv2d(ch, num_classes, 1)),
                nn.Flatten(),
            )
        else:
            raise ValueError(f"pool must be 'attention' or 'adaptive', got {pool!r}")

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """x: [B, C, H, W], t: [B] (int or float) -> logits [B, num_classes]."""
        _check_input(x, self.in_channels, self.downsample_factor)
        t = _batch_t(t, x)
        emb = self.time_embed(_timestep_embedding(t, self.model_channels))
        h = x
        for block in self.input_blocks:
            h = self._run(block, h, emb)
        h = self._run(self.middle_block, h, emb)
        return self.out(h)


# ----------------------------------------------------------------------------------------------
# Published configurations (constructor kwargs; read-only mappings: `ADMUNet(**IDDPM_CIFAR10)`)
# ----------------------------------------------------------------------------------------------


#: Improved DDPM, CIFAR-10 (Nichol & Dhariwal 2021, App. A; L_hybrid, cosine schedule, T=4000).
IDDPM_CIFAR10 = frozen(
    image_size=32, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
    attention_resolutions=(16, 8), dropout=0.3, num_heads=4, use_scale_shift_norm=True,
    learn_sigma=True,
)  # fmt: skip
#: Improved DDPM, unconditional ImageNet 64×64 (App. A, 128 channels, 3 blocks per level).
IDDPM_IMAGENET64 = frozen(
    image_size=64, model_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
    attention_resolutions=(16, 8), num_heads=4, use_scale_shift_norm=True, learn_sigma=True,
)  # fmt: skip
#: ADM, class-conditional ImageNet 64×64 (Dhariwal & Nichol 2021, Table 14; cosine schedule).
ADM_IMAGENET64 = frozen(
    image_size=64, model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
    attention_resolutions=(32, 16, 8), dropout=0.1, num_head_channels=64, use_scale_shift_norm=True,
    resblock_updown=True, use_new_attention_order=True, learn_sigma=True, num_classes=1000,
)  # fmt: skip
#: ADM, class-conditional ImageNet 128×128 (the released model uses 4 heads, not 64 ch/head).
ADM_IMAGENET128 = frozen(
    image_size=128, model_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2,
    attention_resolutions=(32, 16, 8), num_heads=4, use_scale_shift_norm=True, resblock_updown=True,
    learn_sigma=True, num_classes=1000,
)  # fmt: skip
#: ADM, class-conditional ImageNet 256×256.
ADM_IMAGENET256 = frozen(
    image_size=256, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
    attention_resolutions=(32, 16, 8), num_head_channels=64, use_scale_shift_norm=True,
    resblock_updown=True, learn_sigma=True, num_classes=1000,
)  # fmt: skip
#: ADM, unconditional ImageNet 256×256 (same net as the LSUN models, which add dropout 0.1).
ADM_IMAGENET256_UNCOND = frozen(**{**ADM_IMAGENET256, "num_classes": None})
#: ADM, class-conditional ImageNet 512×512.
ADM_IMAGENET512 = frozen(
    **{**ADM_IMAGENET256, "image_size": 512, "channel_mult": (0.5, 1, 1, 2, 2, 4, 4)}
)
#: Class-conditional CIFAR-10 ADM (our choice; not a published model): the improved-DDPM
#: CIFAR-10 depth and widths with ADM's architecture changes (64 channels per head, BigGAN
#: up/down sampling, AdaGN) plus a null label for classifier-free guidance.
ADM_CIFAR10 = frozen(
    image_size=32, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
    attention_resolutions=(16, 8), dropout=0.1, num_head_channels=64, use_scale_shift_norm=True,
    resblock_updown=True, learn_sigma=True, num_classes=10, null_label=True,
)  # fmt: skip
#: ADM noisy classifiers (guided-diffusion `classifier_defaults`), for 64, 128 and 256 px.
ADM_CLASSIFIER_64 = frozen(
    image_size=64, model_channels=128, num_classes=1000, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
    attention_resolutions=(32, 16, 8), num_head_channels=64, use_scale_shift_norm=True,
    resblock_updown=True, pool="attention",
)  # fmt: skip
ADM_CLASSIFIER_128 = frozen(**{**ADM_CLASSIFIER_64, "image_size": 128, "channel_mult": (1, 1, 2, 3, 4)})
ADM_CLASSIFIER_256 = frozen(
    **{**ADM_CLASSIFIER_64, "image_size": 256, "channel_mult": (1, 1, 2, 2, 4, 4)}
)
