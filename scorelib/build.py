"""The only module that reads configs: config -> networks, score models, noise levels, losses,
samplers, optimisers, data, and the typed run settings (`TrainSettings`, `SampleSettings`,
`EvalSettings`, `DataSpec`) that train.py, tasks.py and bench.py use instead of config fields.
Explicit if/elif on names; no registries.

Every section is read here (see scorelib/defaults.py for every field): seed, device, data, model,
noise, training, sampling, optim, eval, classifier.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import losses
from .adapters import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    ContinuousEpsToScore,
    EpsToScore,
    IndexedScore,
    VPClassifier,
)
from .data import ImageData, load_cifar10, load_digits, load_image_folder, load_mnist
from .samplers import (
    annealed_langevin,
    ddim,
    ddpm_ancestral,
    dpm_solver_pp,
    fast_sample,
    heun,
    pc_sampler,
    probability_flow,
    unipc,
)
from .schedules import (
    VESDE,
    VPSDE,
    DDPMSchedule,
    SubVPSDE,
    append_zero,
    geometric_sigmas,
    karras_sigmas,
    respace_timesteps,
    timesteps_to_sigmas,
)
from .utils import append_dims

MODEL_NAMES = ("mlp", "conv", "ncsn", "ncsnv2", "ddpm", "iddpm", "adm", "ncsnpp", "ddpmpp")
NOISE_KINDS = ("ve", "ve_continuous", "ddpm", "vp", "subvp")
SAMPLING_METHODS = ("ald", "pc", "ddpm", "ddim", "ode", "heun", "dpm_solver", "unipc", "fast")
DATASETS = ("cifar10", "mnist", "folder", "digits", "toy")
DEVICES = ("auto", "cpu", "cuda")
TRAINING_TARGETS = ("model", "classifier")
BETA_SCHEDULES = ("linear", "cosine")
LOSSES = ("dsm", "ssm", "eps", "hybrid", "vlb")
DDPM_LOSSES = ("eps", "hybrid", "vlb")
TIMESTEP_SAMPLERS = ("uniform", "importance")
GUIDANCE = ("none", "cfg", "classifier")
OPTIMIZERS = ("adam", "adamw")
INITS = ("uniform", "gaussian")
SPACINGS = ("uniform", "leading", "trailing", "quadratic")  # schedules.respace_timesteps
VARIANCES = ("small", "large", "learned")  # samplers.ddpm_ancestral
GUIDANCE_CONVENTIONS = ("auto", "mean", "score")
ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's adaptive solvers
SOLVER_ORDERS = (1, 2, 3)  # dpm_solver_pp, unipc
FAST_DEFAULT_NFE = 10  # sampling.method=fast with sampling.n_steps=0: the README's 10-NFE budget
# The sampling.* fields each method reads besides the grid (sampling.n_steps, spacing) and the shared
# ones (init, batch_size, n_samples, guidance, ...); describe_sampler prints them, validate warns
# when one set on the command line is ignored by the chosen method.
SAMPLER_FIELDS: dict[str, tuple[str, ...]] = {
    "ald": ("n_steps_each", "step_lr", "denoise"), "pc": ("predictor", "corrector", "snr", "n_corrector_steps"),
    "ddpm": ("variance", "clip_denoised"), "ddim": ("eta",), "ode": ("ode_method", "rtol", "atol"), "heun": ("rho",),
    "dpm_solver": ("order", "rho"), "unipc": ("order", "rho"), "fast": ("data_diameter",)}


class ConfigError(ValueError):
    """A config value that cannot be built; the message names the field."""


def _choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not one of: {', '.join(allowed)}")
    return value


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def create_model(config: Any) -> nn.Module:
    """The network the config describes (not yet wrapped as a σ-space score model)."""
    m, d = config.model, config.data
    name = _choice(m.name, MODEL_NAMES, "model.name")
    if name == "mlp":
        from .models.mlp import MLPScore

        return MLPScore(d.channels * d.image_size**2 if d.dataset != "toy" else d.channels, hidden=m.nf,
                        n_layers=m.num_res_blocks, embed_dim=m.embed_dim, data_std=m.data_std)
    if name == "conv":
        from .models.conv import ConvScore

        return ConvScore(in_channels=d.channels, image_size=d.image_size, ch=m.nf, ch_mult=tuple(m.ch_mult),
                         num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                         dropout=m.dropout, sigma_min=config.noise.sigma_min, sigma_max=config.noise.sigma_max,
                         data_std=m.data_std)
    if name == "ncsn":
        from .models.ncsn import NCSN

        return NCSN(channels=d.channels, image_size=d.image_size, ngf=m.nf, num_classes=config.noise.num_scales,
                    norm=m.normalization, activation=m.nonlinearity, centered_input=d.centered)
    if name == "ncsnv2":
        from .models.ncsnv2 import NCSNv2

        return NCSNv2(channels=d.channels, image_size=d.image_size, ngf=m.nf, variant=m.variant,
                      norm=m.normalization, activation=m.nonlinearity, centered_input=d.centered)
    if name == "ddpm":
        from .models.ddpm_unet import DDPMUNet

        return DDPMUNet(in_channels=d.channels, out_channels=d.channels * (2 if m.learn_sigma else 1), ch=m.nf,
                        ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                        attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                        resamp_with_conv=m.resamp_with_conv, image_size=d.image_size)
    if name in ("iddpm", "adm"):
        from .models.adm import ADMUNet

        conditional = is_class_conditional(config)
        return ADMUNet(image_size=d.image_size, in_channels=d.channels, model_channels=m.nf,
                       channel_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                       attention_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                       num_heads=m.num_heads, num_head_channels=m.num_head_channels,
                       use_scale_shift_norm=m.use_scale_shift_norm, resblock_updown=m.resblock_updown,
                       learn_sigma=m.learn_sigma, num_classes=d.num_classes if conditional else None,
                       null_label=conditional and m.class_dropout > 0, class_dropout=m.class_dropout if conditional
                       else 0.0, use_new_attention_order=m.use_new_attention_order)
    # ncsnpp / ddpmpp
    from .models.ncsnpp import NCSNpp

    ve = name == "ncsnpp"
    # score_sde's discrete VE NCSN++ (configs/ve/cifar10_ncsnpp.py): positional embedding of the level index,
    # output divided by that level's σ.
    levels = create_sigmas(config) if ve and m.embedding_type == "positional" else None
    return NCSNpp(image_size=d.image_size, in_channels=d.channels, nf=m.nf, ch_mult=tuple(m.ch_mult),
                  num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                  resamp_with_conv=m.resamp_with_conv, fir=m.fir, skip_rescale=True, resblock_type=m.resblock_type,
                  progressive=m.progressive, progressive_input=m.progressive_input,
                  progressive_combine=m.progressive_combine, embedding_type=m.embedding_type,
                  fourier_scale=m.fourier_scale, scale_by_sigma=ve, centered=d.centered, level_sigmas=levels)


def is_class_conditional(config: Any) -> bool:
    """Whether the network takes class labels (ADM with data.num_classes > 0)."""
    return config.model.name == "adm" and config.data.num_classes > 0


def uses_labels(config: Any) -> bool:
    """Whether training feeds class labels (a conditional model, or the noisy classifier)."""
    return is_class_conditional(config) or config.training.target == "classifier"


def network_family(config: Any) -> str:
    """What `create_network` builds, in a word: model.name, or "classifier" for the noisy classifier."""
    target = _choice(config.training.target, TRAINING_TARGETS, "training.target")
    return _choice(config.model.name, MODEL_NAMES, "model.name") if target == "model" else "classifier"


def network_variant(config: Any) -> str:
    """model.variant (the NCSN / NCSNv2 depth: base | deeper | deepest)."""
    return config.model.variant


def create_network(config: Any) -> nn.Module:
    """What `training.target` trains: the score network ("model") or the noisy classifier ("classifier")."""
    target = _choice(config.training.target, TRAINING_TARGETS, "training.target")
    return create_model(config) if target == "model" else create_classifier(config)


def create_classifier(config: Any) -> nn.Module:
    """The ADM noisy-image classifier of `config.classifier` (for classifier guidance)."""
    from .models.adm import ADMClassifier

    c, d = config.classifier, config.data
    return ADMClassifier(image_size=d.image_size, in_channels=d.channels, model_channels=c.nf,
                         num_classes=d.num_classes, channel_mult=tuple(c.ch_mult), num_res_blocks=c.num_res_blocks,
                         attention_resolutions=tuple(c.attn_resolutions), num_head_channels=c.num_head_channels,
                         use_scale_shift_norm=True, resblock_updown=True, pool=c.pool)


# ---------------------------------------------------------------------------------------------
# Noise processes
# ---------------------------------------------------------------------------------------------


def create_sigmas(config: Any) -> Tensor:
    """The geometric NCSN noise levels σ_1 > … > σ_L (float64 [L]) of a VE config."""
    n = config.noise
    return geometric_sigmas(n.sigma_max, n.sigma_min, n.num_scales)


def create_schedule(config: Any) -> DDPMSchedule:
    """The discrete DDPM schedule of a `noise.kind = "ddpm"` config."""
    n = config.noise
    kind = _choice(n.beta_schedule, BETA_SCHEDULES, "noise.beta_schedule")
    if kind == "linear":
        return DDPMSchedule.linear(n.num_scales, n.beta_start, n.beta_end)
    return DDPMSchedule.cosine(n.num_scales)


def create_sde(config: Any) -> VESDE | VPSDE | SubVPSDE:
    """The continuous SDE of a ve_continuous / vp / subvp config."""
    n = config.noise
    kind = _choice(n.kind, NOISE_KINDS, "noise.kind")
    if kind in ("ve", "ve_continuous"):
        return VESDE(n.sigma_min, n.sigma_max, eps=n.eps)
    if kind == "vp":
        return VPSDE(n.beta_min, n.beta_max, eps=n.eps, sampling_eps=n.sampling_eps)
    if kind == "subvp":
        return SubVPSDE(n.beta_min, n.beta_max, eps=n.eps, sampling_eps=n.sampling_eps)
    raise ConfigError("noise.kind='ddpm' has a discrete schedule, not an SDE")


def sigma_range(config: Any) -> tuple[float, float]:
    """(σ_max, σ_min) the config's samplers run over. VP / sub-VP: σ(1) down to σ(noise.sampling_eps)
    (score_sde run_lib.py samples from t = 1e-3; it trains and computes likelihoods from 1e-5)."""
    n = config.noise
    if n.kind in ("ve", "ve_continuous"):
        return float(n.sigma_max), float(n.sigma_min)
    if n.kind == "ddpm":
        s = create_schedule(config).sigmas
        return float(s[-1]), float(s[0])
    sde = create_sde(config)
    return float(sde.sigma(1.0)), float(sde.sigma(sde.sampling_eps))


def likelihood_sigma_range(config: Any) -> tuple[float, float]:
    """(σ_max, σ_min) of the probability-flow likelihood: VP / sub-VP integrate from t = noise.eps
    (score_sde likelihood.py `get_likelihood_fn(eps=1e-5)`), the others over `sigma_range`."""
    if config.noise.kind not in ("vp", "subvp"):
        return sigma_range(config)
    sde = create_sde(config)
    return float(sde.sigma(1.0)), float(sde.sigma(sde.eps))


def create_score_model(config: Any, model: nn.Module | None = None) -> nn.Module:
    """The network as a σ-space score model `score(x, sigma)` (docs/design.md §1); `model` defaults to a
    new `create_model(config)`. NCSN: index lookup; NCSNv2/NCSN++/MLP/conv: direct; DDPM family:
    `EpsToScore`; continuous VP / sub-VP: `ContinuousEpsToScore`."""
    net = create_model(config) if model is None else model
    name, kind = config.model.name, _choice(config.noise.kind, NOISE_KINDS, "noise.kind")
    if name == "ncsn" or (name == "ncsnpp" and config.model.embedding_type == "positional"):
        return IndexedScore(net, create_sigmas(config))
    if name in ("ncsnv2", "mlp", "conv", "ncsnpp"):
        return net
    if kind == "ddpm":
        return EpsToScore(net, create_schedule(config).alphas_cumprod, rescale_timesteps=config.model.rescale_timesteps,
                          learned_variance=config.model.learn_sigma)
    if kind in ("vp", "subvp"):
        return ContinuousEpsToScore(net, create_sde(config), label_scale=999.0)
    raise ConfigError(f"model.name={name!r} cannot be used with noise.kind={kind!r}")


def create_sigma_model(config: Any, net: nn.Module) -> nn.Module:
    """`net` (what `create_network` built) in σ-space: the score model, or for the noisy classifier
    (training.target = "classifier") the σ-space classifier(x, sigma) -> logits [B, K]."""
    if network_family(config) == "classifier":
        return VPClassifier(net, create_schedule(config).alphas_cumprod)
    return create_score_model(config, net)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


@dataclass
class LossFn:
    """Per-example training loss of a config: `loss(model, x, y, generator) -> [B]`.

    `timesteps` is the DDPM timestep sampler (its state belongs in checkpoints), None otherwise.
    """

    fn: Callable[..., Tensor]
    timesteps: losses.UniformTimesteps | None = None

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None, generator: torch.Generator) -> Tensor:
        return self.fn(model, x, y, generator)


def _labels_kwargs(y: Tensor | None) -> dict[str, Tensor]:
    return {} if y is None else {"y": y}


def create_loss(config: Any) -> LossFn:
    """The training objective of the config, operating on the *network* (as returned by create_network)."""
    t, kind = config.training, _choice(config.noise.kind, NOISE_KINDS, "noise.kind")
    if config.training.target == "classifier":
        return _classifier_loss(config)
    loss_name = _choice(t.loss, LOSSES, "training.loss")
    if kind == "ddpm":
        if loss_name not in DDPM_LOSSES:
            raise ConfigError(f"training.loss={loss_name!r} needs a score model; DDPM configs use eps, hybrid or vlb")
        sched = create_schedule(config)
        sampler_name = _choice(t.timestep_sampler, TIMESTEP_SAMPLERS, "training.timestep_sampler")
        ts = (losses.UniformTimesteps(sched.T) if sampler_name == "uniform"
              else losses.ImportanceTimesteps(sched.T, history=10, uniform_prob=0.001))

        def ddpm_loss(model: nn.Module, x: Tensor, y: Tensor | None, g: torch.Generator) -> Tensor:
            tt, w = ts.sample(x.shape[0], x.device, g)
            noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            kw = _labels_kwargs(y)
            if loss_name == "eps":
                per = losses.eps_loss(model, x, sched, tt, noise, **kw)
            elif loss_name == "hybrid":
                per = losses.hybrid_loss(model, x, sched, tt, noise, lambda_vlb=t.lambda_vlb, **kw)
            else:
                per = losses.vlb_loss(model, x, sched, tt, noise, **kw)
            ts.update(tt, per)
            return per * w.to(per.dtype)

        return LossFn(ddpm_loss, ts)

    if loss_name not in ("dsm", "ssm"):
        raise ConfigError(f"training.loss={loss_name!r} needs a DDPM config (noise.kind='ddpm')")
    sample_sigma = create_sigma_sampler(config)

    def score_loss(model: nn.Module, x: Tensor, y: Tensor | None, g: torch.Generator) -> Tensor:
        score = create_score_model(config, model)
        sigma = sample_sigma(x.shape[0], g, x.device, x.dtype)
        if loss_name == "ssm":
            x_tilde = x + append_dims(sigma, x.ndim) * torch.randn(x.shape, generator=g, device=x.device,
                                                                   dtype=x.dtype)
            return losses.ssm_loss_at(score, x_tilde, sigma, n_projections=t.n_projections,
                                      anneal_power=t.anneal_power, generator=g)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return losses.dsm_loss_at(score, x, sigma, noise, anneal_power=t.anneal_power, reduce_mean=t.reduce_mean)

    return LossFn(score_loss)


def _classifier_loss(config: Any) -> LossFn:
    """Cross-entropy of the noisy classifier on x_t at uniform t (Dhariwal & Nichol 2021, §4)."""
    if config.noise.kind != "ddpm":
        raise ConfigError("training.target='classifier' needs noise.kind='ddpm' (the classifier takes DDPM timesteps)")
    sched = create_schedule(config)

    def ce(model: nn.Module, x: Tensor, y: Tensor | None, g: torch.Generator) -> Tensor:
        if y is None:
            raise ConfigError("training.target='classifier' needs a labelled data set")
        t = torch.randint(sched.T, (x.shape[0],), generator=g, device=x.device)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return nn.functional.cross_entropy(model(sched.q_sample(x, t, noise), t), y, reduction="none")

    return LossFn(ce)


def create_sigma_sampler(config: Any) -> Callable[..., Tensor]:
    """σ per training example: uniform over the NCSN levels (ve) or σ(t) with t ~ U(ε, 1) for the
    continuous SDEs (score_sde). Returns `sample(batch, generator, device, dtype) -> [B]`."""
    kind = config.noise.kind
    if kind == "ve":
        sigmas = create_sigmas(config)
        return lambda b, g, device, dtype: losses.sample_sigmas(sigmas, b, g, device, dtype)
    sde = create_sde(config)

    def sample(b: int, g: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
        t = torch.rand(b, generator=g, device=device, dtype=torch.float64) * (1 - sde.eps) + sde.eps
        return sde.sigma(t).to(dtype)

    return sample


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def sampling_grid(config: Any) -> Tensor:
    """The descending σ grid (float64, with a final 0 where the method ends on the denoiser)."""
    s, kind = config.sampling, config.noise.kind
    method = _choice(s.method, SAMPLING_METHODS, "sampling.method")
    if method == "ald":
        n = s.n_steps if s.n_steps > 0 else config.noise.num_scales
        return create_sigmas(config) if kind == "ve" else geometric_sigmas(*sigma_range(config), n)
    if kind == "ddpm" and method in ("ddim", "ddpm", "pc"):
        sched = create_schedule(config)
        return timesteps_to_sigmas(sched.alphas_cumprod, _respaced(config, sched))
    n = s.n_steps if s.n_steps > 0 else config.noise.num_scales
    if method == "pc" and kind in ("vp", "subvp"):
        return append_zero(create_sde(config).sigma(_score_sde_times(config, n)))
    sigma_max, sigma_min = sigma_range(config)
    if method in ("pc", "ddpm", "ddim"):
        return append_zero(geometric_sigmas(sigma_max, sigma_min, n))
    return append_zero(karras_sigmas(sigma_max, sigma_min, n, s.rho))


def _respaced(config: Any, sched: DDPMSchedule) -> Tensor:
    """The descending DDPM timesteps the sampler visits (sampling.n_steps of them, sampling.spacing)."""
    s = config.sampling
    return respace_timesteps(sched.T, sched.T if s.n_steps <= 0 else s.n_steps, s.spacing)


def _score_sde_times(config: Any, n: int) -> Tensor:
    """score_sde's PC time grid `torch.linspace(sde.T, eps, sde.N)` (sampling.py `get_pc_sampler`),
    float64 [n], t from 1 down to noise.sampling_eps."""
    return torch.linspace(1.0, create_sde(config).sampling_eps, n, dtype=torch.float64)


def pc_betas(config: Any) -> Tensor | None:
    """The discrete β_i at each PC step's level for VP-type models, None for VE (`pc_sampler(betas=)`).

    vp / subvp: score_sde's `sde.discrete_betas[(t (N-1)/T).long()]` with discrete_betas =
    linspace(β_min/N, β_max/N, N) (sde_lib.py VPSDE / subVPSDE) on the grid `_score_sde_times`.
    ddpm: the respaced β = 1 - ᾱ_t/ᾱ_t' of consecutive kept timesteps (improved-diffusion respace.py),
    with which the ancestral predictor is DDPM's σ² = β step.
    """
    kind, s = config.noise.kind, config.sampling
    if kind == "ddpm":
        abar = create_schedule(config).alphas_cumprod[_respaced(config, create_schedule(config))]
        return 1 - abar / torch.cat([abar[1:], abar.new_ones(1)])
    if kind not in ("vp", "subvp"):
        return None
    n, nz = config.noise, s.n_steps if s.n_steps > 0 else config.noise.num_scales
    table = torch.linspace(n.beta_min / nz, n.beta_max / nz, nz, dtype=torch.float64)
    return table[(_score_sde_times(config, nz) * (nz - 1)).long()]


def create_sampler(config: Any) -> Callable[[Callable[..., Tensor], tuple[int, ...], torch.Generator, torch.device],
                                             Tensor]:
    """`sample(score, shape, generator, device) -> x` drawing from the config's initial noise and
    running the config's sampler (`sampling.method`)."""
    s = config.sampling
    method = _choice(s.method, SAMPLING_METHODS, "sampling.method")
    grid = sampling_grid(config)
    sigma_max, sigma_min = sigma_range(config)
    betas = pc_betas(config) if method == "pc" else None
    variance = _choice(s.variance, VARIANCES, "sampling.variance")
    if method == "ddpm" and variance == "learned" and not config.model.learn_sigma:
        raise ConfigError("sampling.variance='learned' needs a network with a learned variance (model.learn_sigma)")
    if method == "pc" and s.predictor == "ancestral" and config.noise.kind == "subvp":
        raise ConfigError("sampling.predictor='ancestral' has no sub-VP form (score_sde's AncestralSamplingPredictor "
                          "supports VE and VP only)")
    labelled = is_class_conditional(config) or s.guidance == "classifier"

    def init(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
        if s.init == "uniform":  # NCSN / NCSNv2: U[0,1] images (centred when the data is)
            u = torch.rand(shape, generator=g, device=device)
            return 2 * u - 1 if config.data.centered else u
        return float(grid[0]) * torch.randn(shape, generator=g, device=device)

    def sample(score: Callable[..., Tensor], shape: tuple[int, ...], g: torch.Generator,
               device: torch.device) -> Tensor:
        x = init(shape, g, device)
        if method == "ald":
            return annealed_langevin(score, x, grid, s.n_steps_each, s.step_lr, s.denoise, generator=g)
        if method == "pc":
            return pc_sampler(score, x, grid, s.predictor, s.corrector, s.snr, s.n_corrector_steps, s.denoise,
                              generator=g, betas=betas)
        if method == "ddpm":
            mean_guided = getattr(score, "convention", "score") == "mean"  # guided-diffusion condition_mean
            return ddpm_ancestral(score, x, grid, variance, generator=g, clip_denoised=s.clip_denoised,
                                  guidance=score.guidance_grad if mean_guided else None)
        if method == "ddim":
            return ddim(score, x, grid, s.eta, generator=g)
        if method == "ode":
            return probability_flow(score, x, sigma_max, sigma_min, s.ode_method, s.rtol, s.atol, s.denoise)
        if method == "heun":
            return heun(score, x, grid, generator=g)
        if method == "dpm_solver":
            return dpm_solver_pp(score, x, grid, order=s.order)
        if method == "unipc":
            return unipc(score, x, grid, order=s.order)
        # a class-conditional score binds one label per row, so fast_sample cannot add its probe rows
        return fast_sample(score, x, sigma_max, sigma_min, fast_budget(config),
                           data_diameter=s.data_diameter if s.data_diameter > 0 else None, probe=not labelled)

    return sample


def guided_score(config: Any, score: nn.Module, y: Tensor | None, classifier: nn.Module | None = None) -> Callable:
    """The score the sampler runs: class-conditional on labels y [B] when the model is, with
    `sampling.guidance` = none | cfg (classifier-free, scale w) | classifier (∇ log p_φ(y | x, σ))."""
    s = config.sampling
    kind = _choice(s.guidance, GUIDANCE, "sampling.guidance")
    if not is_class_conditional(config) and kind != "classifier":
        return score
    if kind == "cfg":
        if config.model.class_dropout <= 0:
            raise ConfigError("sampling.guidance='cfg' needs a model trained with a null label "
                              "(model.class_dropout > 0)")
        return ClassifierFreeGuidance(score, y, s.guidance_scale, null_label=config.data.num_classes)
    base = _Labelled(score, y) if is_class_conditional(config) else score
    if kind == "none":
        return base
    if classifier is None:
        raise ConfigError("sampling.guidance='classifier' needs a trained classifier (classifier.workdir)")
    return ClassifierGuidance(base, VPClassifier(classifier, create_schedule(config).alphas_cumprod), y,
                              s.guidance_scale, convention=guidance_convention(config))


def guidance_convention(config: Any) -> str:
    """How classifier guidance applies its scale (sampling.guidance_convention): "mean" shifts the DDPM
    ancestral mean by Σ w∇ log p (guided-diffusion `condition_mean`, its `p_sample`), "score" shifts the
    score (`condition_score`, its `ddim_sample`); "auto" picks guided-diffusion's pairing: mean for
    sampling.method='ddpm', score for every other sampler."""
    s = config.sampling
    conv = _choice(s.guidance_convention, GUIDANCE_CONVENTIONS, "sampling.guidance_convention")
    if conv == "auto":
        return "mean" if s.method == "ddpm" else "score"
    if conv == "mean" and s.method != "ddpm":
        raise ConfigError(f"sampling.guidance_convention='mean' needs sampling.method='ddpm' (got {s.method!r}); "
                          "other samplers take the score convention")
    return conv


class _Labelled(nn.Module):
    """A class-conditional score model with its labels bound: score(x, sigma) = model(x, sigma, y=y)
    (and its learned variance, when it has one)."""

    def __init__(self, model: nn.Module, y: Tensor | None):
        super().__init__()
        self.model, self.y = model, y

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.model(x, sigma, y=self.y)

    def score_and_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.score_and_variance(x, sigma, y=self.y)


def sampling_nfe(config: Any) -> int:
    """Score evaluations per sample of the configured sampler (the ODE's is adaptive: -1)."""
    s = config.sampling
    grid = sampling_grid(config)
    positive = int((grid > 0).sum())
    if s.method == "ald":
        return positive * s.n_steps_each + int(s.denoise)
    if s.method == "pc":
        return (len(grid) - 1) * (1 + s.n_corrector_steps)
    if s.method == "heun":
        return 2 * (len(grid) - 1) - int(float(grid[-1]) == 0)
    if s.method == "ode":
        return -1
    if s.method == "fast":
        return fast_budget(config)
    return len(grid) - 1


def fast_budget(config: Any) -> int:
    """The NFE budget of `sampling.method=fast`: sampling.n_steps, or FAST_DEFAULT_NFE when it is 0."""
    n = config.sampling.n_steps
    return n if n > 0 else FAST_DEFAULT_NFE


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------


def create_optimizer(config: Any, params: Any) -> torch.optim.Optimizer:
    """Adam / AdamW with the config's lr, β1, β2, ε and weight decay."""
    o = config.optim
    name = _choice(o.optimizer, OPTIMIZERS, "optim.optimizer")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)


def learning_rate(config: Any, step: int) -> float:
    """Linear warm-up over `optim.warmup` steps, then constant (score_sde / DDPM)."""
    o = config.optim
    return o.lr * min(1.0, (step + 1) / o.warmup) if o.warmup > 0 else o.lr


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


REFERENCE_SPLITS = ("train", "test")
# the preprocessing behind the reference features (evaluate.inception_features): part of the cache key
INCEPTION_PREPROCESSING = "uint8/255 -> [0,1], bilinear 299x299 (align_corners=False), 2x-1; pool3"


@dataclass(frozen=True)
class FidReference:
    """What the FID/KID reference of an evaluation is (`fid_reference`).

    file: eval.stats_path (a reference file, read-only) or "" when the statistics come from the data;
    split / count: the data split and how many of its images (0: all); cache: where the statistics of
    the data are cached (None with a file); description: one line for metrics.json.
    """

    file: str
    split: str
    count: int
    cache: Path | None
    description: str

    @property
    def full(self) -> bool:
        """The reference papers use: a reference file, or every image of the training split."""
        return bool(self.file) or (self.split == "train" and self.count == 0)


def fid_reference(config: Any, workdir: Any, split: str | None = None) -> FidReference:
    """The FID/KID reference of the config: eval.stats_path if set, else `split` (default eval.reference_split)
    of the data set, the first eval.reference_count images of it (0: all). The cache file in WORKDIR/eval is
    keyed by everything the statistics depend on (data set, resolved root, split, count, image size / crop /
    channels, the folder split, preprocessing, Inception weights), so a different data.root or split never
    reuses stale statistics."""
    from .evaluate import cache_key, inception_weights_path

    d, e = data_spec(config), config.eval
    if e.stats_path:
        return FidReference(e.stats_path, "", 0, None, f"file {e.stats_path}")
    split = _choice(e.reference_split if split is None else split, REFERENCE_SPLITS, "eval.reference_split")
    if e.reference_count < 0:
        raise ConfigError(f"eval.reference_count={e.reference_count} must be >= 0 (0: the whole split)")
    count = e.reference_count
    weights = inception_weights_path(e.inception_path or None)
    key = cache_key(dataset=d.dataset, root=Path(d.root).expanduser().resolve(), split=split, count=count,
                    image_size=d.image_size, channels=d.channels, crop=d.crop,
                    test_fraction=d.test_fraction if d.dataset == "folder" else "",
                    preprocessing=INCEPTION_PREPROCESSING, weights=weights.name,
                    weights_bytes=weights.stat().st_size if weights.is_file() else -1)
    cache = Path(workdir) / "eval" / f"fid_stats_{d.dataset}_{split}_{key}.npz"
    what = "all" if count == 0 else f"the first {count}"
    return FidReference("", split, count, cache, f"{what} of the {split} split of {d.dataset} at {d.root}")


def evaluation_kwargs(config: Any, workdir: Any, real: Tensor | None, split: str | None = "test",
                      device: torch.device | str | None = None) -> dict[str, Any]:
    """Keyword arguments of `evaluate.evaluate_samples` for the config's data: the metric kind, value
    ranges, the real reference set (`real`: the `split` as loaded, None: eval.reference_split; the first
    eval.reference_count of it) or the file eval.stats_path, Inception on `device` in batches of
    eval.batch_size, caches inside WORKDIR/eval (see `fid_reference`)."""
    from .data import TOY_NAMES, toy_data, toy_mixture

    d, e = config.data, config.eval
    cache = Path(workdir) / "eval"
    value_range = (-1.0, 1.0) if d.centered else (0.0, 1.0)
    if d.dataset == "toy":
        _choice(d.toy, TOY_NAMES, "data.toy")
        reference = toy_data(d.toy, e.n_samples, torch.Generator().manual_seed(config.seed + 7))
        gmm = toy_mixture(d.toy) if d.toy in ("gmm8", "grid25", "two_modes") else None
        return {"kind": "toy", "real": reference, "gmm": gmm}
    if d.dataset == "digits":
        return {"kind": "digits", "value_range": value_range, "real": real, "cache_dir": cache}
    ref = fid_reference(config, workdir, split)
    if real is not None and ref.count:
        real = real[:ref.count]
    real = None if ref.file else real
    real_range = (0.0, 255.0) if real is not None and real.dtype == torch.uint8 else (0.0, 1.0)  # scaled per batch
    out = {"kind": "images", "metrics": tuple(e.metrics), "value_range": value_range, "real": real,
           "real_value_range": real_range, "inception_path": e.inception_path or None, "stats_path": ref.cache,
           "reference_path": ref.file or None, "batch_size": e.batch_size}
    if device is not None:
        out["device"] = device
    return out


# ---------------------------------------------------------------------------------------------
# Run settings: the typed values the training loop, the CLI modes and the benchmark read
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """The config's data set (data.*): what to load and how to prepare a batch of it."""

    dataset: str
    root: str
    download: bool
    image_size: int
    channels: int
    crop: int
    toy: str
    random_flip: bool
    uniform_dequantization: bool
    centered: bool
    num_classes: int
    test_fraction: float  # folder: the share held out as the test split (data.in_test_split)

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape: (C,) for the 2-D toys, (C, H, W) for images."""
        return (self.channels,) if self.dataset == "toy" else (self.channels, self.image_size, self.image_size)


def data_spec(config: Any) -> DataSpec:
    """The data fields of the config."""
    d = config.data
    return DataSpec(d.dataset, d.root, d.download, d.image_size, d.channels, d.crop, d.toy, d.random_flip,
                    d.uniform_dequantization, d.centered, d.num_classes, d.test_fraction)


def create_dataset(config: Any, train: bool = True) -> ImageData | None:
    """The config's data set, training or test split (None for the 2-D toys, sampled fresh each step)."""
    d = data_spec(config)
    if d.dataset == "toy":
        return None
    if d.dataset == "cifar10":
        return load_cifar10(d.root, train, d.download)
    if d.dataset == "mnist":
        data = load_mnist(d.root, train, d.download)
        if d.image_size != 28:
            data.images = nn.functional.interpolate(data.images.float(), size=d.image_size, mode="bilinear",
                                                    antialias=True).round().clamp(0, 255).to(torch.uint8)
        return data
    if d.dataset == "folder":  # a deterministic split by file name, so test images are never trained on
        if not 0 < d.test_fraction < 1:
            raise ConfigError(f"data.test_fraction={d.test_fraction} must be in (0, 1) for data.dataset=folder")
        return load_image_folder(d.root, d.image_size, d.channels, d.crop, "train" if train else "test",
                                 d.test_fraction)
    if d.dataset == "digits":
        return load_digits(train)
    raise ConfigError(f"data.dataset={d.dataset!r} is not one of: {', '.join(DATASETS)}")


@dataclass(frozen=True)
class TrainSettings:
    """What the training loop reads (training.*, optim.grad_clip, model.ema_rate, seed, device)."""

    seed: int
    device: str  # auto | cpu | cuda
    threads: int  # CPU threads for torch (0: torch's default)
    batch_size: int  # global, over all processes
    n_iters: int
    log_freq: int
    snapshot_freq: int
    snapshot_samples: int
    keep_checkpoints: int
    amp: bool
    compile: bool
    eval_at_end: bool
    target: str  # model | classifier
    uses_labels: bool
    ema_rate: float
    grad_clip: float  # math.inf: no clipping


def train_settings(config: Any) -> TrainSettings:
    """The training-loop settings of the config."""
    t, clip = config.training, config.optim.grad_clip
    return TrainSettings(config.seed, _choice(config.device, DEVICES, "device"), t.threads,
                         t.batch_size, t.n_iters, t.log_freq, t.snapshot_freq, t.snapshot_samples, t.keep_checkpoints,
                         t.amp, t.compile, t.eval_at_end, _choice(t.target, TRAINING_TARGETS, "training.target"),
                         uses_labels(config), config.model.ema_rate, clip if clip > 0 else math.inf)


@dataclass(frozen=True)
class SampleSettings:
    """What drawing samples reads besides the sampler itself (sampling.*, classifier.workdir, seed)."""

    seed: int
    method: str
    n_samples: int
    batch_size: int
    checkpoint: str  # "" : the newest checkpoint in WORKDIR/checkpoints
    guidance: str  # none | cfg | classifier
    labelled: bool  # whether the score takes class labels (a conditional model or classifier guidance)
    class_label: int  # -1: uniform random labels
    num_classes: int
    classifier_workdir: str


def sample_settings(config: Any) -> SampleSettings:
    """The sampling settings of the config."""
    s = config.sampling
    guidance = _choice(s.guidance, GUIDANCE, "sampling.guidance")
    return SampleSettings(config.seed, s.method, s.n_samples, s.batch_size, s.checkpoint, guidance,
                          is_class_conditional(config) or guidance == "classifier", s.class_label,
                          config.data.num_classes, config.classifier.workdir)


def sampling_labels(config: Any, n: int, generator: torch.Generator, device: torch.device) -> Tensor | None:
    """Class labels [n] for n samples when the score takes them: `sampling.class_label`, or uniform
    random labels from `generator` when it is -1; None for unconditional sampling."""
    s = sample_settings(config)
    if not s.labelled:
        return None
    if s.class_label >= 0:
        return torch.full((n,), s.class_label, device=device)
    return torch.randint(s.num_classes, (n,), generator=generator, device=device)


@dataclass(frozen=True)
class EvalSettings:
    """What `--mode=eval` / `likelihood` read (eval.*, seed) and the discrete VLB's variance."""

    seed: int
    n_samples: int
    batch_size: int
    likelihood: bool
    likelihood_batches: int
    likelihood_rtol: float
    exact_trace: bool
    vlb_variance: str | None  # DDPM models: learned | small | large; None: no discrete VLB
    metrics: tuple[str, ...]  # requested: fid | kid | is (the data kind decides what is computed)
    inception_path: str  # "" : $SCORELIB_INCEPTION or torch hub's checkpoint folder
    stats_path: str  # a reference statistics file; "": statistics of reference_split
    reference_split: str  # train | test
    reference_count: int  # 0: the whole split
    vlb_clip_denoised: bool = False  # x̂₀ clamped to [-1, 1] in the VLB (sampling.clip_denoised, as improved-diffusion)


def eval_settings(config: Any) -> EvalSettings:
    """The evaluation settings of the config."""
    e = config.eval
    vlb = None
    if config.noise.kind == "ddpm":
        vlb = "learned" if config.model.learn_sigma else config.sampling.variance
    return EvalSettings(config.seed, e.n_samples, e.batch_size, e.likelihood, e.likelihood_batches,
                        e.likelihood_rtol, e.exact_trace, vlb, tuple(e.metrics), e.inception_path, e.stats_path,
                        _choice(e.reference_split, REFERENCE_SPLITS, "eval.reference_split"), e.reference_count,
                        config.sampling.clip_denoised)


def noise_kind(config: Any) -> str:
    """noise.kind: ve | ve_continuous | ddpm | vp | subvp."""
    return _choice(config.noise.kind, NOISE_KINDS, "noise.kind")


def describe_model(config: Any) -> str:
    """The data set and network in a few words, e.g. "toy/gmm8, model mlp"."""
    d = data_spec(config)
    return f"{d.dataset}" + (f"/{d.toy}" if d.dataset == "toy" else "") + f", model {config.model.name}"


def format_value(v: Any) -> str:
    """A config value as a flag writes it (floats with %g)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_sampler(config: Any) -> str:
    """The configured sampler in a few words: method, grid length and the fields it reads."""
    s = config.sampling
    try:
        levels = f", {int((sampling_grid(config) > 0).sum())} levels" if s.method != "ode" else ""
    except ValueError:  # a config that cannot build a grid still gets described (its row reports why)
        levels = ""
    return f"{s.method}{levels}, " + ", ".join(f"{k}={format_value(s[k])}" for k in SAMPLER_FIELDS.get(s.method, ()))


def is_deterministic(config: Any) -> bool:
    """Whether the configured sampler draws no noise after its initial x (ODE solvers, DDIM with η = 0)."""
    s = config.sampling
    return s.method in ("ode", "heun", "dpm_solver", "unipc", "fast") or (s.method == "ddim" and s.eta == 0)


# ---------------------------------------------------------------------------------------------
# Derived configs
# ---------------------------------------------------------------------------------------------

ARCHITECTURE_DATA_FIELDS = ("dataset", "toy", "channels", "image_size", "centered", "num_classes")


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the config with dotted keys set, e.g. {"sampling.n_steps": 10}; an unknown key raises
    ConfigError naming it."""
    out = copy.deepcopy(config)
    with out.unlocked():
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                if part not in node:
                    raise ConfigError(f"unknown config key {key!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"unknown config key {key!r}")
            node[leaf] = value
    return out


def with_stored_model(config: Any, stored: Any) -> Any:
    """A copy of the config whose model, noise and the data fields that shape the network come from
    `stored` (a checkpoint's config), so sampling and evaluation flags still apply to a trained model."""
    out = copy.deepcopy(config)
    with out.unlocked():
        out.model, out.noise = copy.deepcopy(stored.model), copy.deepcopy(stored.noise)
        for key in ARCHITECTURE_DATA_FIELDS:
            out.data[key] = stored.data[key]
    return out


def sampling_fingerprint(config: Any, purpose: str) -> str:
    """The config fields a drawn sample depends on, as sorted JSON: everything but how many samples are
    drawn, where from and what is done with them (n_samples, sampling.checkpoint — the weights are
    fingerprinted separately —, data.root, training, optim, eval), tagged with `purpose`
    ("sample" / "eval"). Chunks of a sharded run are reused only under the same fingerprint."""
    import json

    fields = {k: v for k, v in config.to_dict().items() if k not in ("training", "optim", "eval")}
    fields["sampling"] = {k: v for k, v in fields["sampling"].items() if k not in ("n_samples", "checkpoint")}
    fields["data"] = {k: v for k, v in fields["data"].items() if k not in ("root", "download")}
    return json.dumps({"purpose": purpose, "config": fields}, sort_keys=True, default=str)


def for_evaluation(config: Any) -> Any:
    """The config with sampling.batch_size = eval.batch_size (evaluation draws in its own batches)."""
    return with_overrides(config, {"sampling.batch_size": config.eval.batch_size})
