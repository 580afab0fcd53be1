"""The network table: per `model.name` its constructor, its conditioning (the σ-space wrapper every
path uses, docs/design.md §4a), what it can be trained with, and the published formats it reads.

Adding a network is its module under models/ plus one entry here; the names a config may use, the
rules that fit a network to a noise process and a data set, the wrappers, and which published
checkpoint layouts may be loaded into it all derive from the entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..models.adm import ADMClassifier, ADMUNet
from ..models.conv import ConvScore
from ..models.ddpm_unet import DDPMUNet
from ..models.edm import SONGUNET_VARIANTS, dhariwalunet_kwargs, songunet_kwargs
from ..models.edm2 import EDM2Network
from ..models.kdiff_v1 import KDiffusionV1
from ..models.mlp import MLPScore
from ..models.ncsn import NCSN
from ..models.ncsnpp import NCSNpp
from ..models.ncsnv2 import NCSNv2
from ..precond import (
    ContinuousEpsToScore,
    EDM2Precond,
    EDMPrecond,
    EpsToScore,
    IDDPMPrecond,
    IndexedScore,
    Precond,
    ScorePrecond,
    VEPrecond,
    VPClassifier,
    VPPrecond,
)
from ..schedules import Noise
from .declare import ConfigError

Wrap = Callable[[nn.Module], Precond]


@dataclass(frozen=True)
class Network:
    """One `model.name`. `build(f, noise)`: the network of the config records `f`; `wrap(f, noise)`: its own
    (native) conditioning, or None for a network that takes one of `preconds` (EDM's preconditionings,
    model.precond, the first by default); `noise`: the noise kinds the native conditioning fits; `output`:
    what the network returns (score | eps | denoised); `learned_variance`: it can also output improved
    DDPM's Σ; `conditional`: it can take class labels; `unet`: it halves the resolution per ch_mult entry
    (attention resolutions must exist); `toy`: it takes 2-D points; `formats`: the published checkpoint
    layouts it reads."""

    build: Callable[[Any, Noise], nn.Module]
    wrap: Callable[[Any, Noise], Wrap] | None
    noise: tuple[str, ...]
    output: str
    learned_variance: bool = False
    conditional: bool = False
    unet: bool = True
    toy: bool = False
    formats: tuple[str, ...] = ()
    preconds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conditioning:
    """One of EDM's preconditionings (Karras et al. 2022, Table 1; EDM2's): `make(f)` its wrapper class with
    the config's arguments bound, and the noise kinds it is trained and sampled on."""

    make: Callable[[Any], Wrap]
    noise: tuple[str, ...]


PRECONDS: dict[str, Conditioning] = {
    "edm": Conditioning(lambda f: functools.partial(EDMPrecond, sigma_data=f.model.sigma_data), ("edm",)),
    # EDM's VP column is score_sde's continuous VP (β_d = β_max - β_min, ε_t = noise.eps)
    "vp": Conditioning(lambda f: functools.partial(VPPrecond, beta_d=f.noise.beta_max - f.noise.beta_min,
                                                   beta_min=f.noise.beta_min, epsilon_t=f.noise.eps), ("vp",)),
    "ve": Conditioning(lambda f: functools.partial(VEPrecond, sigma_min=f.noise.sigma_min,
                                                   sigma_max=f.noise.sigma_max), ("ve_continuous",)),
    "iddpm": Conditioning(lambda f: IDDPMPrecond, ("edm",)),  # EDM's baseline ADM (improved DDPM, converted)
    "edm2": Conditioning(lambda f: functools.partial(EDM2Precond, sigma_data=f.model.sigma_data), ("edm",)),
}


def _score(f: Any, noise: Noise) -> Wrap:
    return ScorePrecond


def _indexed(f: Any, noise: Noise) -> Wrap:
    return lambda net: IndexedScore(net, noise.levels)


def _eps(f: Any, noise: Noise) -> Wrap:
    """DDPM ε-networks: on a discrete schedule `EpsToScore` (t·1000/T with model.rescale_timesteps);
    on score_sde's continuous VP / sub-VP SDEs `ContinuousEpsToScore` (label t·999)."""
    if noise.kind == "ddpm":
        abar, m = noise.schedule.alphas_cumprod, f.model
        return lambda net: EpsToScore(net, abar, learned_variance=m.learn_sigma,
                                      rescale_timesteps=m.rescale_timesteps)
    if noise.kind in ("vp", "subvp"):
        return lambda net: ContinuousEpsToScore(net, noise.sde, label_scale=999.0)
    raise ConfigError(f"noise.kind: {noise.kind!r} does not fit model.name={f.model.name!r} (an ε network)")


def _ncsnpp_wrap(f: Any, noise: Noise) -> Wrap:
    """NCSN++ (VE): score_sde's discrete configs embed the level index (configs/ve/cifar10_ncsnpp.py),
    the continuous ones σ itself; DDPM++ (VP): an ε network."""
    if f.model.name == "ddpmpp":
        return _eps(f, noise)
    return _indexed(f, noise) if f.model.embedding_type == "positional" else ScorePrecond


def _mlp(f: Any, noise: Noise) -> nn.Module:
    d, m = f.data, f.model
    return MLPScore(d.channels * d.image_size**2 if d.dataset != "toy" else d.channels, hidden=m.nf,
                    n_layers=m.num_res_blocks, embed_dim=m.embed_dim, data_std=m.data_std)


def _conv(f: Any, noise: Noise) -> nn.Module:
    d, m = f.data, f.model
    return ConvScore(in_channels=d.channels, image_size=d.image_size, ch=m.nf, ch_mult=tuple(m.ch_mult),
                     num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                     sigma_min=f.noise.sigma_min, sigma_max=f.noise.sigma_max, data_std=m.data_std)


def _ncsn(f: Any, noise: Noise) -> nn.Module:
    d, m = f.data, f.model
    return NCSN(channels=d.channels, image_size=d.image_size, ngf=m.nf, num_classes=f.noise.num_scales,
                norm=m.normalization, activation=m.nonlinearity, centered_input=d.centered)


def _ncsnv2(f: Any, noise: Noise) -> nn.Module:
    d, m = f.data, f.model
    return NCSNv2(channels=d.channels, image_size=d.image_size, ngf=m.nf, variant=m.variant, norm=m.normalization,
                  activation=m.nonlinearity, centered_input=d.centered)


def _ddpm(f: Any, noise: Noise) -> nn.Module:
    d, m = f.data, f.model
    return DDPMUNet(in_channels=d.channels, out_channels=d.channels * (2 if m.learn_sigma else 1), ch=m.nf,
                    ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                    attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                    resamp_with_conv=m.resamp_with_conv, image_size=d.image_size)


def _label_dim(f: Any) -> int:
    return f.data.num_classes if class_conditional(f) else 0


def _songunet(variant: str) -> Callable[[Any, Noise], nn.Module]:
    """EDM's SongUNet (train.py `--arch=ddpmpp` / `ncsnpp`) as scorelib's NCSNpp (models/edm.py)."""

    def build(f: Any, noise: Noise) -> nn.Module:
        d, m = f.data, f.model
        return NCSNpp(**songunet_kwargs(
            d.image_size, d.channels, d.channels, model_channels=m.nf, channel_mult=tuple(m.ch_mult),
            num_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
            label_dim=_label_dim(f), augment_dim=m.augment_dim, label_dropout=m.class_dropout,
            channel_mult_emb=m.channel_mult_emb, **SONGUNET_VARIANTS[variant]))

    return build


def _dhariwalunet(f: Any, noise: Noise) -> nn.Module:
    """EDM's DhariwalUNet (`--arch=adm`) as scorelib's ADMUNet; 2C outputs under the iDDPM conditioning."""
    d, m = f.data, f.model
    out = 2 * d.channels if m.precond == "iddpm" else d.channels
    return ADMUNet(**dhariwalunet_kwargs(
        d.image_size, d.channels, out, model_channels=m.nf, channel_mult=tuple(m.ch_mult),
        num_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
        label_dim=_label_dim(f), augment_dim=m.augment_dim, label_dropout=m.class_dropout,
        channel_mult_emb=m.channel_mult_emb))


def _edm2(f: Any, noise: Noise) -> nn.Module:
    """EDM2's magnitude-preserving U-Net (config G) with its learned uncertainty head."""
    d, m = f.data, f.model
    return EDM2Network(d.image_size, d.channels, label_dim=_label_dim(f), model_channels=m.nf,
                       channel_mult=tuple(m.ch_mult), num_blocks=m.num_res_blocks,
                       attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                       logvar_channels=m.logvar_channels,
                       channels_per_head=m.num_head_channels if m.num_head_channels > 0 else 64)


def _kdiff_v1(f: Any, noise: Noise) -> nn.Module:
    """k-diffusion's ImageDenoiserModelV1: widths nf·ch_mult, num_res_blocks per level, attention at the levels
    listed in attn_resolutions, embedding width nf·channel_mult_emb, augmentation labels as its mapping
    condition, patch size 1."""
    d, m = f.data, f.model
    return KDiffusionV1(d.channels, m.nf * m.channel_mult_emb, depths=(m.num_res_blocks,) * len(m.ch_mult),
                        channels=tuple(m.nf * c for c in m.ch_mult),
                        self_attn_depths=tuple(d.image_size // 2**i in m.attn_resolutions
                                               for i in range(len(m.ch_mult))),
                        mapping_cond_dim=m.augment_dim, dropout=m.dropout)


def class_conditional(f: Any) -> bool:
    """Whether the network takes class labels: a conditional network with data.num_classes > 0."""
    return NETWORKS[f.model.name].conditional and f.data.num_classes > 0


def _adm(f: Any, noise: Noise) -> nn.Module:
    d, m = f.data, f.model
    cond = class_conditional(f)
    return ADMUNet(image_size=d.image_size, in_channels=d.channels, model_channels=m.nf,
                   channel_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                   attention_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, num_heads=m.num_heads,
                   num_head_channels=m.num_head_channels, use_scale_shift_norm=m.use_scale_shift_norm,
                   resblock_updown=m.resblock_updown, learn_sigma=m.learn_sigma,
                   num_classes=d.num_classes if cond else None, null_label=cond and m.class_dropout > 0,
                   class_dropout=m.class_dropout if cond else 0.0,
                   use_new_attention_order=m.use_new_attention_order)


def _ncsnpp(f: Any, noise: Noise) -> nn.Module:
    d, m = f.data, f.model
    ve = m.name == "ncsnpp"
    # score_sde's discrete VE NCSN++ (configs/ve/cifar10_ncsnpp.py): positional embedding of the level
    # index, output divided by that level's σ
    levels = noise.levels if ve and m.embedding_type == "positional" else None
    return NCSNpp(image_size=d.image_size, in_channels=d.channels, nf=m.nf, ch_mult=tuple(m.ch_mult),
                  num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                  resamp_with_conv=m.resamp_with_conv, fir=m.fir, skip_rescale=True, resblock_type=m.resblock_type,
                  progressive=m.progressive, progressive_input=m.progressive_input,
                  progressive_combine=m.progressive_combine, embedding_type=m.embedding_type,
                  fourier_scale=m.fourier_scale, scale_by_sigma=ve, centered=d.centered, level_sigmas=levels)


NETWORKS: dict[str, Network] = {
    # σ-conditioned score networks of any continuous noise process
    "mlp": Network(_mlp, _score, ("ve", "ve_continuous", "vp", "subvp", "edm"), "score", unet=False, toy=True),
    "conv": Network(_conv, _score, ("ve", "ve_continuous", "vp", "subvp", "edm"), "score"),
    "ncsn": Network(_ncsn, _indexed, ("ve",), "score", unet=False, formats=("ncsn",)),
    "ncsnv2": Network(_ncsnv2, _score, ("ve", "ve_continuous"), "score", unet=False, formats=("ncsnv2",)),
    "ddpm": Network(_ddpm, _eps, ("ddpm", "vp", "subvp"), "eps", learned_variance=True, formats=("ddim",)),
    "iddpm": Network(_adm, _eps, ("ddpm", "vp", "subvp"), "eps", learned_variance=True, formats=("openai",)),
    "adm": Network(_adm, _eps, ("ddpm", "vp", "subvp"), "eps", learned_variance=True, conditional=True,
                   formats=("openai",)),
    "ncsnpp": Network(_ncsnpp, _ncsnpp_wrap, ("ve", "ve_continuous"), "score", formats=("score_sde",)),
    "ddpmpp": Network(_ncsnpp, _ncsnpp_wrap, ("ddpm", "vp", "subvp"), "eps", formats=("score_sde",)),
    # EDM's networks (Karras et al. 2022, App. F.2) under its preconditionings; their snapshots read safely
    "edm_ddpmpp": Network(_songunet("ddpmpp"), None, (), "denoised", conditional=True, formats=("edm",),
                          preconds=("edm", "vp", "ve")),
    "edm_ncsnpp": Network(_songunet("ncsnpp"), None, (), "denoised", conditional=True, formats=("edm",),
                          preconds=("edm", "vp", "ve")),
    "edm_adm": Network(_dhariwalunet, None, (), "denoised", conditional=True, formats=("edm",),
                       preconds=("edm", "iddpm")),
    # EDM2's magnitude-preserving U-Net (Karras et al. 2024, config G)
    "edm2": Network(_edm2, None, (), "denoised", conditional=True, formats=("edm2",), preconds=("edm2",)),
    # k-diffusion's ImageDenoiserModelV1 (crowsonkb/k-diffusion) under EDM's preconditioning (its `Denoiser`)
    "kdiff_v1": Network(_kdiff_v1, None, (), "denoised", preconds=("edm",)),
}


def build_classifier(f: Any, noise: Noise | None = None) -> nn.Module:
    """The ADM noisy-image classifier of the classifier.* section (classifier guidance)."""
    c, d = f.classifier, f.data
    return ADMClassifier(image_size=d.image_size, in_channels=d.channels, model_channels=c.nf,
                         num_classes=d.num_classes, channel_mult=tuple(c.ch_mult), num_res_blocks=c.num_res_blocks,
                         attention_resolutions=tuple(c.attn_resolutions), num_head_channels=c.num_head_channels,
                         use_scale_shift_norm=True, resblock_updown=True, pool=c.pool)


def wrap_classifier(noise: Noise) -> Callable[[nn.Module], nn.Module]:
    """The noisy classifier's conditioning: the DDPM inputs of `EpsToScore` (`VPClassifier`)."""
    if noise.kind != "ddpm":
        raise ConfigError("training.target: 'classifier' needs noise.kind='ddpm' (the classifier takes DDPM "
                          "timesteps)")
    return lambda net: VPClassifier(net, noise.schedule.alphas_cumprod)


def precond_name(f: Any) -> str:
    """The conditioning model.precond names: "native" for a network with its own, else one of EDM's
    preconditionings the network takes ("auto": its first)."""
    entry, p = NETWORKS[f.model.name], f.model.precond
    if not entry.preconds:
        if p not in ("auto", "native"):
            raise ConfigError(f"model.precond: {p!r} does not fit model.name={f.model.name!r}, which has its own "
                              "conditioning (auto, native)")
        return "native"
    if p == "auto":
        return entry.preconds[0]
    if p not in entry.preconds:
        raise ConfigError(f"model.precond: {p!r} does not fit model.name={f.model.name!r} "
                          f"({', '.join(entry.preconds)})")
    return p


def check_noise_kind(f: Any, kind: str) -> None:
    """ConfigError unless noise kind `kind` is one the config's network (or its preconditioning) is trained in."""
    entry, p = NETWORKS[f.model.name], precond_name(f)
    kinds = entry.noise if p == "native" else PRECONDS[p].noise
    if kind not in kinds:
        what = {"score": "a score network", "eps": "an ε network", "denoised": f"EDM's {p} preconditioning"}
        what = "indexed by the NCSN levels" if entry.noise == ("ve",) else what[entry.output]
        raise ConfigError(f"noise.kind: {kind!r} does not fit model.name={f.model.name!r} ({what}) "
                          f"({', '.join(kinds)})")


def wrapper(f: Any, noise: Noise) -> Wrap:
    """The one conditioning of the config's network: its native wrapper, or an EDM preconditioning."""
    check_noise_kind(f, noise.kind)
    p = precond_name(f)
    return NETWORKS[f.model.name].wrap(f, noise) if p == "native" else PRECONDS[p].make(f)
