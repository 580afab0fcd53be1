"""Layers shared by the NCSN and NCSNv2 score networks.

Both networks are a RefineNet (Lin et al., 2017) on top of a residual encoder whose deeper
stages trade striding for dilated convolutions (Song & Ermon 2019, "Generative Modeling by
Estimating Gradients of the Data Distribution", App. A; Song & Ermon 2020, "Improved
Techniques for Training Score-Based Generative Models", App. B). Layer structure, channel
counts and initialisation follow the reference code, ermongroup/ncsn
`models/cond_refinenet_dilated.py` and ermongroup/ncsnv2 `models/{layers,normalization}.py`,
so parameter counts agree exactly and released checkpoints load through
`convert_reference_state_dict`.

Every normalisation layer is called as ``norm(x, y)``: ``y`` holds int64 noise-level indices
[B] for the conditional layers of NCSN and is ``None`` for the unconditional layers of
NCSNv2, so one set of blocks serves both networks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelib.utils import append_dims

NormFactory = Callable[[int], nn.Module]
"""Builds a normalisation layer for a given number of channels."""

_EPS = 1e-5  # the reference's epsilon in every normalisation layer

# --------------------------------------------------------------------------- normalisation


class _ChannelNorm(nn.Module):
    """Normalisation that reduces to a per-(sample, channel) affine map ``x * scale + shift``.

    Subclasses return ``scale, shift`` of shape [B, C] from `_scale_shift`; the statistics and
    the affine map run in float32 (also under autocast) and the result is cast back to x's dtype.
    With ``num_classes`` the affine parameters are rows of an embedding indexed by the noise
    level (conditional normalisation, NCSN); without, they are plain per-channel parameters.
    """

    def __init__(self, num_features: int, num_classes: int | None) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes

    def _rows(self, y: Tensor | None, n_chunks: int) -> tuple[Tensor, ...]:
        """The noise-level rows of ``self.embed`` ([B, n_chunks * C]) split into n_chunks [B, C]."""
        if y is None:
            raise ValueError(f"{type(self).__name__} is conditional: pass noise-level indices y [B]")
        return self.embed(y).float().chunk(n_chunks, dim=-1)

    def _scale_shift(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W], y: int64 [B] (conditional) or None -> [B, C, H, W]."""
        xf = x.float()
        scale, shift = self._scale_shift(xf, y)
        return torch.addcmul(append_dims(shift, 4), xf, append_dims(scale, 4)).to(x.dtype)


class InstanceNorm2dPlus(_ChannelNorm):
    """Instance normalisation++ (NCSN, App. A), conditional when ``num_classes`` is given.

    out = γ ⊙ (IN(x) + α ⊙ m̃) + β, where IN is instance norm and m̃ [B, C] are the per-channel
    spatial means of x standardised across channels, which plain instance norm would discard
    (the colour shift). γ, α ~ N(1, 0.02), β = 0 at initialisation, as in the reference;
    conditional: one [L, 3C] embedding holding (γ, α, β) per noise level.
    """

    def __init__(self, num_features: int, num_classes: int | None = None) -> None:
        super().__init__(num_features, num_classes)
        c = num_features
        if num_classes is None:
            self.alpha = nn.Parameter(torch.empty(c).normal_(1.0, 0.02))
            self.gamma = nn.Parameter(torch.empty(c).normal_(1.0, 0.02))
            self.beta = nn.Parameter(torch.zeros(c))
        else:
            self.embed = nn.Embedding(num_classes, 3 * c)
            with torch.no_grad():
                self.embed.weight[:, : 2 * c].normal_(1.0, 0.02)
                self.embed.weight[:, 2 * c :].zero_()

    def _scale_shift(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.num_classes is None:
            gamma, alpha, beta = self.gamma, self.alpha, self.beta
        else:
            gamma, alpha, beta = self._rows(y, 3)
        var, mean = torch.var_mean(x, dim=(2, 3), correction=0)  # [B, C], instance-norm statistics
        # Means standardised across channels; the unbiased variance matches the reference's torch.var.
        m_var, m_mean = torch.var_mean(mean, dim=1, keepdim=True)
        mean_std = (mean - m_mean) * torch.rsqrt(m_var + _EPS)
        inv_std = torch.rsqrt(var + _EPS)
        # γ((x - μ)/s + α m̃) + β folded into x * scale + shift.
        scale = gamma * inv_std
        return scale, beta + gamma * alpha * mean_std - scale * mean


def _gamma_beta_embedding(num_classes: int, num_features: int) -> nn.Embedding:
    """[L, 2C] rows (γ, β) per noise level, γ ~ U[0, 1), β = 0 at initialisation, as in the reference."""
    embed = nn.Embedding(num_classes, 2 * num_features)
    with torch.no_grad():
        embed.weight[:, :num_features].uniform_()
        embed.weight[:, num_features:].zero_()
    return embed


class InstanceNorm2d(_ChannelNorm):
    """Instance normalisation; conditional (γ, β per noise level) when ``num_classes`` is given.

    Unconditional: no parameters (the reference uses ``nn.InstanceNorm2d(affine=False)``).
    Conditional: [L, 2C] embedding, γ ~ U[0, 1), β = 0 at initialisation, as in the reference.
    """

    def __init__(self, num_features: int, num_classes: int | None = None) -> None:
        super().__init__(num_features, num_classes)
        if num_classes is not None:
            self.embed = _gamma_beta_embedding(num_classes, num_features)

    def _scale_shift(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
        scale = torch.rsqrt(var + _EPS)
        if self.num_classes is None:
            return scale, -scale * mean
        gamma, beta = self._rows(y, 2)
        scale = gamma * scale
        return scale, beta - scale * mean


class VarianceNorm2d(_ChannelNorm):
    """x / √(Var[x] + ε) per channel times γ ~ N(1, 0.02) (no centring, no bias); conditional γ per level.

    Var is the unbiased spatial variance, as the reference's ``torch.var``.
    """

    def __init__(self, num_features: int, num_classes: int | None = None) -> None:
        super().__init__(num_features, num_classes)
        if num_classes is None:
            self.alpha = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        else:
            self.embed = nn.Embedding(num_classes, num_features)
            with torch.no_grad():
                self.embed.weight.normal_(1.0, 0.02)

    def _scale_shift(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        gamma = self.alpha if self.num_classes is None else self._rows(y, 1)[0]
        scale = gamma * torch.rsqrt(torch.var(x, dim=(2, 3)) + _EPS)
        return scale, torch.zeros_like(scale)


class NoneNorm2d(_ChannelNorm):
    """No normalisation: identity, or γ x + β per noise level when conditional (γ ~ U[0, 1), β = 0)."""

    def __init__(self, num_features: int, num_classes: int | None = None) -> None:
        super().__init__(num_features, num_classes)
        if num_classes is not None:
            self.embed = _gamma_beta_embedding(num_classes, num_features)

    def _scale_shift(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._rows(y, 2)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        if self.num_classes is None:
            return x
        return super().forward(x, y)


def make_norm(name: str, num_features: int, num_classes: int | None = None) -> nn.Module:
    """A normalisation layer by name: 'instancenorm++', 'instancenorm', 'variancenorm' or 'none'.

    Conditional on the noise-level index when ``num_classes`` (the number of levels L) is given.
    """
    key = name.lower()
    if key == "instancenorm++":
        return InstanceNorm2dPlus(num_features, num_classes)
    elif key == "instancenorm":
        return InstanceNorm2d(num_features, num_classes)
    elif key == "variancenorm":
        return VarianceNorm2d(num_features, num_classes)
    elif key == "none":
        return NoneNorm2d(num_features, num_classes)
    raise ValueError(
        f"unknown normalisation {name!r}: use instancenorm++, instancenorm, variancenorm or none"
    )


def make_activation(name: str) -> nn.Module:
    """An activation by name: 'elu' (the reference default), 'relu', 'lrelu' (slope 0.2) or 'swish'."""
    key = name.lower()
    if key == "elu":
        return nn.ELU()
    elif key == "relu":
        return nn.ReLU()
    elif key == "lrelu":
        return nn.LeakyReLU(0.2)
    elif key in ("swish", "silu"):
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}: use elu, relu, lrelu or swish")


# --------------------------------------------------------------------------- convolutions


def _conv3x3(in_ch: int, out_ch: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """3×3 convolution that keeps the spatial size (padding = dilation)."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class ConvMeanPool(nn.Module):
    """Convolution followed by 2×2 mean pooling (halves H and W).

    ``adjust_padding`` zero-pads one row on top and one column on the left first, so an odd size
    H becomes ⌈H/2⌉ (the reference uses it for 28-px MNIST); without it, odd sizes floor.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, adjust_padding: bool = False) -> None:
        super().__init__()
        self.adjust_padding = adjust_padding
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in_ch, H, W] -> [B, out_ch, H/2, W/2]."""
        if self.adjust_padding:
            x = F.pad(x, (1, 0, 1, 0))
        return F.avg_pool2d(self.conv(x), 2)


# --------------------------------------------------------------------------- blocks


class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm → act → conv → norm → act → conv, plus a shortcut.

    ``down`` without dilation mean-pools (conv2 and the 1×1 shortcut are `ConvMeanPool`). ``down``
    with ``dilation > 1`` keeps the resolution, as in the reference: the dilated convolutions stand
    in for the stride, and the block differs from a plain one only in that conv2 changes the
    channels and the shortcut is always a (dilated 3×3) convolution.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        norm: NormFactory,
        act: nn.Module,
        down: bool = False,
        dilation: int = 1,
        adjust_padding: bool = False,
    ) -> None:
        super().__init__()
        self.act = act
        self.normalize1 = norm(in_ch)
        mid = in_ch if down else out_ch
        self.conv1 = _conv3x3(in_ch, mid, dilation)
        self.normalize2 = norm(mid)
        self.shortcut: nn.Module | None = None
        if down and dilation == 1:
            self.conv2 = ConvMeanPool(in_ch, out_ch, 3, adjust_padding)
            self.shortcut = ConvMeanPool(in_ch, out_ch, 1, adjust_padding)
        else:
            self.conv2 = _conv3x3(mid, out_ch, dilation)
            if down or in_ch != out_ch:
                self.shortcut = (
                    _conv3x3(in_ch, out_ch, dilation) if dilation > 1 else nn.Conv2d(in_ch, out_ch, 1)
                )

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x: [B, in_ch, H, W] -> [B, out_ch, H', W'] (H' = H/2 for a mean-pooling block, else H)."""
        h = self.conv1(self.act(self.normalize1(x, y)))
        h = self.conv2(self.act(self.normalize2(h, y)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class RCUBlock(nn.Module):
    """Residual conv unit (RefineNet): ``n_blocks`` residual blocks of ``n_stages`` × [norm] → act → conv.

    Convolutions are 3×3 without bias. ``norm=None`` drops the normalisation (NCSNv2).
    """

    def __init__(
        self, features: int, n_blocks: int, n_stages: int, norm: NormFactory | None, act: nn.Module
    ) -> None:
        super().__init__()
        self.act = act
        self.convs = nn.ModuleList(
            nn.ModuleList(_conv3x3(features, features, bias=False) for _ in range(n_stages))
            for _ in range(n_blocks)
        )
        self.norms = (
            None
            if norm is None
            else nn.ModuleList(
                nn.ModuleList(norm(features) for _ in range(n_stages)) for _ in range(n_blocks)
            )
        )

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        for i, convs in enumerate(self.convs):
            residual = x
            for j, conv in enumerate(convs):
                if self.norms is not None:
                    x = self.norms[i][j](x, y)
                x = conv(self.act(x))
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion (RefineNet): [norm] → 3×3 conv per input, bilinear resize, sum."""

    def __init__(self, in_planes: Sequence[int], features: int, norm: NormFactory | None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(c, features) for c in in_planes)
        self.norms = None if norm is None else nn.ModuleList(norm(c) for c in in_planes)

    def forward(self, xs: Sequence[Tensor], y: Tensor | None, size: Sequence[int]) -> Tensor:
        """xs[i]: [B, in_planes[i], H_i, W_i] -> [B, features, *size]."""
        out: Tensor | None = None
        for i, (conv, x) in enumerate(zip(self.convs, xs, strict=True)):
            h = x if self.norms is None else self.norms[i](x, y)
            h = conv(h)
            if tuple(h.shape[-2:]) != tuple(size):  # same size: the reference's resize is the identity
                h = F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=True)
            out = h if out is None else out + h
        assert out is not None
        return out


class CRPBlock(nn.Module):
    """Chained residual pooling (RefineNet): act, then ``n_stages`` × ([norm] → 5×5 pool → conv), summed.

    ``pool`` is 'max' (NCSNv2) or 'avg' (NCSN's conditional block; zero padding counted).
    """

    def __init__(
        self, features: int, n_stages: int, norm: NormFactory | None, act: nn.Module, pool: str
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.act = act
        self.pool = pool
        self.convs = nn.ModuleList(_conv3x3(features, features, bias=False) for _ in range(n_stages))
        self.norms = None if norm is None else nn.ModuleList(norm(features) for _ in range(n_stages))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        x = self.act(x)
        path = x
        for i, conv in enumerate(self.convs):
            if self.norms is not None:
                path = self.norms[i](path, y)
            if self.pool == "max":
                path = F.max_pool2d(path, 5, stride=1, padding=2)
            else:
                path = F.avg_pool2d(path, 5, stride=1, padding=2)
            path = conv(path)
            x = x + path
        return x


class RefineBlock(nn.Module):
    """RefineNet block: RCU per input (2×2) → fusion of inputs (if several) → CRP → RCU (1×2, 3×2 at end).

    The output has the resolution of the first input. ``norm=None`` gives NCSNv2's unconditional,
    normalisation-free block; NCSN passes its conditional norm.
    """

    def __init__(
        self,
        in_planes: Sequence[int],
        features: int,
        norm: NormFactory | None,
        act: nn.Module,
        end: bool = False,
        pool: str = "max",
    ) -> None:
        super().__init__()
        self.adapt_convs = nn.ModuleList(RCUBlock(c, 2, 2, norm, act) for c in in_planes)
        self.msf = MSFBlock(in_planes, features, norm) if len(in_planes) > 1 else None
        self.crp = CRPBlock(features, 2, norm, act, pool)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, norm, act)

    def forward(self, xs: Sequence[Tensor], y: Tensor | None = None) -> Tensor:
        """xs[i]: [B, in_planes[i], H_i, W_i] -> [B, features, H_0, W_0]."""
        hs = [rcu(x, y) for rcu, x in zip(self.adapt_convs, xs, strict=True)]
        h = hs[0] if self.msf is None else self.msf(hs, y, xs[0].shape[-2:])
        return self.output_convs(self.crp(h, y), y)


# --------------------------------------------------------------------------- the network


def stage_plan(variant: str) -> tuple[tuple[int, bool, int], ...]:
    """Encoder stages of a variant as (channel multiple of ngf, down, dilation).

    'base': NCSN's CondRefineNetDilated and NCSNv2 (32 px CIFAR-10, 64 px CelebA in the reference);
    'deeper': NCSNv2Deeper (LSUN 64-128 px); 'deepest': NCSNv2Deepest (FFHQ 256 px).
    Only 'down' stages without dilation halve the resolution: one in 'base' (32 px -> 16 px),
    two in 'deeper', three in 'deepest'; the dilated 'down' stages keep it.
    """
    if variant == "base":
        return ((1, False, 1), (2, True, 1), (2, True, 2), (2, True, 4))
    elif variant == "deeper":
        return ((1, False, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4))
    elif variant == "deepest":
        return ((1, False, 1), (2, True, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4))
    raise ValueError(f"unknown variant {variant!r}: use base, deeper or deepest")


class DilatedRefineNet(nn.Module):
    """The NCSN / NCSNv2 backbone: dilated residual encoder + RefineNet decoder, [B,C,H,W] -> [B,C,H,W].

    Encoder stage i is two `ResidualBlock`s with ``stage_plan(variant)[i]``; decoder block i
    (deepest first) refines stage i's features with the previous decoder output, RefineNet style.
    ``enc_norm`` builds the encoder norms, ``dec_norm`` the decoder norms (None: none). The
    subclasses add the input centring and the noise conditioning.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        ngf: int,
        variant: str,
        enc_norm: NormFactory,
        dec_norm: NormFactory | None,
        activation: str,
        crp_pool: str,
    ) -> None:
        super().__init__()
        plan = stage_plan(variant)
        self.act = make_activation(activation)
        self.begin_conv = nn.Conv2d(channels, ngf, 3, padding=1)
        self.stages = nn.ModuleList()
        widths = []
        in_ch, size = ngf, image_size
        for mult, down, dilation in plan:
            out_ch = mult * ngf
            pools = down and dilation == 1
            # An odd size is padded to ⌈H/2⌉, generalising the reference's 28-px MNIST fix.
            adjust = pools and size % 2 == 1
            block1 = ResidualBlock(in_ch, out_ch, enc_norm, self.act, down, dilation, adjust)
            block2 = ResidualBlock(out_ch, out_ch, enc_norm, self.act, False, dilation)
            self.stages.append(nn.ModuleList([block1, block2]))
            widths.append(out_ch)
            in_ch, size = out_ch, ((size + 1) // 2 if pools else size)
        self.refines = nn.ModuleList()
        for i in reversed(range(len(plan))):
            in_planes = [widths[i]] if i == len(plan) - 1 else [widths[i], widths[i]]
            features = widths[max(i - 1, 0)]
            self.refines.append(RefineBlock(in_planes, features, dec_norm, self.act, i == 0, crp_pool))
        self.normalizer = enc_norm(ngf)
        self.end_conv = nn.Conv2d(ngf, channels, 3, padding=1)

    def backbone(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        """h: [B, C, H, W] (already centred), y: int64 [B] or None -> [B, C, H, W]."""
        h = self.begin_conv(h)
        skips = []
        for stage in self.stages:
            for block in stage:
                h = block(h, y)
            skips.append(h)
        out: Tensor | None = None
        for refine, skip in zip(self.refines, reversed(skips), strict=True):
            out = refine([skip] if out is None else [skip, out], y)
        assert out is not None
        return self.end_conv(self.act(self.normalizer(out, y)))


def convert_reference_state_dict(state_dict: dict[str, Tensor], variant: str = "base") -> dict[str, Tensor]:
    """Rename a state_dict of the ermongroup reference models to this module's parameter names.

    Covers ermongroup/ncsn CondRefineNetDilated and ermongroup/ncsnv2 NCSN, NCSNv2, NCSNv2Deeper
    and NCSNv2Deepest (``variant`` 'base', 'deeper', 'deepest'). Drops a DataParallel ``module.``
    prefix and NCSNv2's ``sigmas`` buffer (our NCSNv2 takes σ itself). Mapping only; load with
    ``model.load_state_dict(...)`` so unexpected names still raise.
    """
    n = len(stage_plan(variant))
    # Reference encoder stages, shallowest first, and decoder blocks, deepest first.
    if n == 6:
        res_names = ["res1", "res2", "res3", "res31", "res4", "res5"]
        ref_names = ["refine1", "refine2", "refine31", "refine3", "refine4", "refine5"]
    else:
        res_names = [f"res{i + 1}" for i in range(n)]
        ref_names = [f"refine{i + 1}" for i in range(n)]
    res_index = {name: i for i, name in enumerate(res_names)}
    ref_index = {name: i for i, name in enumerate(ref_names)}
    rcu = re.compile(r"\.(\d+)_(\d+)_(conv|norm)\.")
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key == "sigmas":
            continue
        head, _, rest = key.partition(".")
        if head in res_index:
            key = f"stages.{res_index[head]}.{rest}"
        elif head in ref_index:
            key = f"refines.{ref_index[head]}.{rest}"
        key = rcu.sub(lambda m: f".{m[3]}s.{int(m[1]) - 1}.{int(m[2]) - 1}.", key)
        out[key] = value
    return out
