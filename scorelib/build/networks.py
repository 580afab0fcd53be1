"""Config -> networks and their σ-space adapters (docs/design.md §1).

`network_factory` turns the model / classifier fields into a constructor with its keyword arguments
bound (a `functools.partial`), once; `score_adapter` into the map from that network to a σ-space
score model. Explicit if/elif on names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from ..models.adm import ADMClassifier, ADMUNet
from ..models.conv import ConvScore
from ..models.ddpm_unet import DDPMUNet
from ..models.mlp import MLPScore
from ..models.ncsn import NCSN
from ..models.ncsnpp import NCSNpp
from ..models.ncsnv2 import NCSNv2
from ..precond import ContinuousEpsToScore, EpsToScore, IndexedScore, ScorePrecond, VPClassifier
from .names import MODEL_NAMES, NOISE_KINDS, TRAINING_TARGETS, ConfigError, choice
from .noise import create_schedule, create_sde, create_sigmas


def is_class_conditional(config: Any) -> bool:
    """Whether the network takes class labels (ADM with data.num_classes > 0)."""
    return config.model.name == "adm" and config.data.num_classes > 0


def uses_labels(config: Any) -> bool:
    """Whether training feeds class labels (a conditional model, or the noisy classifier)."""
    return is_class_conditional(config) or config.training.target == "classifier"


def network_family(config: Any) -> str:
    """What `create_network` builds, in a word: model.name, or "classifier" for the noisy classifier."""
    target = choice(config.training.target, TRAINING_TARGETS, "training.target")
    return choice(config.model.name, MODEL_NAMES, "model.name") if target == "model" else "classifier"


def network_variant(config: Any) -> str:
    """model.variant (the NCSN / NCSNv2 depth: base | deeper | deepest)."""
    return config.model.variant


def model_factory(config: Any) -> Callable[[], nn.Module]:
    """The constructor of the score network the config describes, its arguments bound."""
    m, d = config.model, config.data
    name = choice(m.name, MODEL_NAMES, "model.name")
    if name == "mlp":
        return functools.partial(MLPScore, d.channels * d.image_size**2 if d.dataset != "toy" else d.channels,
                                 hidden=m.nf, n_layers=m.num_res_blocks, embed_dim=m.embed_dim, data_std=m.data_std)
    if name == "conv":
        return functools.partial(ConvScore, in_channels=d.channels, image_size=d.image_size, ch=m.nf,
                                 ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                                 attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                                 sigma_min=config.noise.sigma_min, sigma_max=config.noise.sigma_max,
                                 data_std=m.data_std)
    if name == "ncsn":
        return functools.partial(NCSN, channels=d.channels, image_size=d.image_size, ngf=m.nf,
                                 num_classes=config.noise.num_scales, norm=m.normalization,
                                 activation=m.nonlinearity, centered_input=d.centered)
    if name == "ncsnv2":
        return functools.partial(NCSNv2, channels=d.channels, image_size=d.image_size, ngf=m.nf, variant=m.variant,
                                 norm=m.normalization, activation=m.nonlinearity, centered_input=d.centered)
    if name == "ddpm":
        out_channels = d.channels * (2 if m.learn_sigma else 1)
        return functools.partial(DDPMUNet, in_channels=d.channels, out_channels=out_channels, ch=m.nf,
                                 ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                                 attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                                 resamp_with_conv=m.resamp_with_conv, image_size=d.image_size)
    if name in ("iddpm", "adm"):
        conditional = is_class_conditional(config)
        return functools.partial(
            ADMUNet, image_size=d.image_size, in_channels=d.channels, model_channels=m.nf,
            channel_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
            attention_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, num_heads=m.num_heads,
            num_head_channels=m.num_head_channels, use_scale_shift_norm=m.use_scale_shift_norm,
            resblock_updown=m.resblock_updown, learn_sigma=m.learn_sigma,
            num_classes=d.num_classes if conditional else None, null_label=conditional and m.class_dropout > 0,
            class_dropout=m.class_dropout if conditional else 0.0, use_new_attention_order=m.use_new_attention_order)
    # ncsnpp / ddpmpp
    ve = name == "ncsnpp"
    # score_sde's discrete VE NCSN++ (configs/ve/cifar10_ncsnpp.py): positional embedding of the level index,
    # output divided by that level's σ.
    levels = create_sigmas(config) if ve and m.embedding_type == "positional" else None
    return functools.partial(
        NCSNpp, image_size=d.image_size, in_channels=d.channels, nf=m.nf, ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv, fir=m.fir, skip_rescale=True, resblock_type=m.resblock_type,
        progressive=m.progressive, progressive_input=m.progressive_input, progressive_combine=m.progressive_combine,
        embedding_type=m.embedding_type, fourier_scale=m.fourier_scale, scale_by_sigma=ve, centered=d.centered,
        level_sigmas=levels)


def classifier_factory(config: Any) -> Callable[[], nn.Module]:
    """The constructor of the ADM noisy-image classifier of `config.classifier` (classifier guidance)."""
    c, d = config.classifier, config.data
    return functools.partial(ADMClassifier, image_size=d.image_size, in_channels=d.channels, model_channels=c.nf,
                             num_classes=d.num_classes, channel_mult=tuple(c.ch_mult),
                             num_res_blocks=c.num_res_blocks, attention_resolutions=tuple(c.attn_resolutions),
                             num_head_channels=c.num_head_channels, use_scale_shift_norm=True,
                             resblock_updown=True, pool=c.pool)


def network_factory(config: Any) -> Callable[[], nn.Module]:
    """What `training.target` trains: the score network ("model") or the noisy classifier ("classifier")."""
    return model_factory(config) if network_family(config) != "classifier" else classifier_factory(config)


def create_model(config: Any) -> nn.Module:
    """The network the config describes (not yet wrapped as a σ-space score model)."""
    return model_factory(config)()


def create_classifier(config: Any) -> nn.Module:
    """The ADM noisy-image classifier of `config.classifier` (for classifier guidance)."""
    return classifier_factory(config)()


def create_network(config: Any) -> nn.Module:
    """What `training.target` trains: the score network ("model") or the noisy classifier ("classifier")."""
    return network_factory(config)()


def _identity(net: nn.Module) -> nn.Module:
    return net


def score_adapter(config: Any) -> Callable[[nn.Module], nn.Module]:
    """The map from the config's network to its σ-space score model `score(x, sigma)` (docs/design.md
    §1). NCSN: index lookup; NCSNv2/NCSN++/MLP/conv: the network itself; DDPM family: `EpsToScore`;
    continuous VP / sub-VP: `ContinuousEpsToScore`."""
    name, kind = config.model.name, choice(config.noise.kind, NOISE_KINDS, "noise.kind")
    if name == "ncsn" or (name == "ncsnpp" and config.model.embedding_type == "positional"):
        return functools.partial(IndexedScore, sigmas=create_sigmas(config))
    if name in ("ncsnv2", "mlp", "conv", "ncsnpp"):
        return ScorePrecond
    if kind == "ddpm":
        return functools.partial(EpsToScore, alphas_cumprod=create_schedule(config).alphas_cumprod,
                                 rescale_timesteps=config.model.rescale_timesteps,
                                 learned_variance=config.model.learn_sigma)
    if kind in ("vp", "subvp"):
        return functools.partial(ContinuousEpsToScore, sde=create_sde(config), label_scale=999.0)
    raise ConfigError(f"model.name={name!r} cannot be used with noise.kind={kind!r}")


def sigma_adapter(config: Any) -> Callable[[nn.Module], nn.Module]:
    """The map from what `network_factory` builds to σ-space: the score adapter, or for the noisy
    classifier (training.target = "classifier") the σ-space classifier(x, sigma) -> logits [B, K]."""
    if network_family(config) == "classifier":
        return functools.partial(VPClassifier, alphas_cumprod=create_schedule(config).alphas_cumprod)
    return score_adapter(config)


def create_score_model(config: Any, model: nn.Module | None = None) -> nn.Module:
    """The network as a σ-space score model `score(x, sigma)`; `model` defaults to a new
    `create_model(config)`."""
    return score_adapter(config)(create_model(config) if model is None else model)


def create_sigma_model(config: Any, net: nn.Module) -> nn.Module:
    """`net` (what `create_network` built) in σ-space (see `sigma_adapter`)."""
    return sigma_adapter(config)(net)
