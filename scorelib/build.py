"""The only module that reads configs: config -> networks, score models, noise levels, losses,
samplers, optimisers. Explicit if/elif on names; no registries.

Config sections read here (see configs/default.py for every field):
    data.{channels, image_size, centered, num_classes}
    model.{name, ...architecture}, noise.{kind, ...}, training.{loss, ...}, sampling.{method, ...},
    optim.{lr, beta1, beta2, eps, weight_decay, warmup}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    return NCSNpp(image_size=d.image_size, in_channels=d.channels, nf=m.nf, ch_mult=tuple(m.ch_mult),
                  num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                  resamp_with_conv=m.resamp_with_conv, fir=m.fir, skip_rescale=True, resblock_type="biggan",
                  progressive="none", progressive_input=m.progressive_input, embedding_type=m.embedding_type,
                  fourier_scale=m.fourier_scale, scale_by_sigma=ve, centered=d.centered)


def is_class_conditional(config: Any) -> bool:
    """Whether the network takes class labels (ADM with data.num_classes > 0)."""
    return config.model.name == "adm" and config.data.num_classes > 0


def uses_labels(config: Any) -> bool:
    """Whether training feeds class labels (a conditional model, or the noisy classifier)."""
    return is_class_conditional(config) or config.training.target == "classifier"


def create_network(config: Any) -> nn.Module:
    """What `training.target` trains: the score network ("model") or the noisy classifier ("classifier")."""
    target = _choice(config.training.target, ("model", "classifier"), "training.target")
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
    kind = _choice(n.beta_schedule, ("linear", "cosine"), "noise.beta_schedule")
    if kind == "linear":
        return DDPMSchedule.linear(n.num_scales, n.beta_start, n.beta_end)
    return DDPMSchedule.cosine(n.num_scales)


def create_sde(config: Any) -> VESDE | VPSDE | SubVPSDE:
    """The continuous SDE of a ve_continuous / vp / subvp config."""
    n = config.noise
    kind = _choice(n.kind, NOISE_KINDS, "noise.kind")
    if kind in ("ve", "ve_continuous"):
        return VESDE(n.sigma_min, n.sigma_max)
    if kind == "vp":
        return VPSDE(n.beta_min, n.beta_max)
    if kind == "subvp":
        return SubVPSDE(n.beta_min, n.beta_max)
    raise ConfigError("noise.kind='ddpm' has a discrete schedule, not an SDE")


def sigma_range(config: Any) -> tuple[float, float]:
    """(σ_max, σ_min) the config's score model covers."""
    n = config.noise
    if n.kind in ("ve", "ve_continuous"):
        return float(n.sigma_max), float(n.sigma_min)
    if n.kind == "ddpm":
        s = create_schedule(config).sigmas
        return float(s[-1]), float(s[0])
    sde = create_sde(config)
    return float(sde.sigma(torch.tensor(1.0))), float(sde.sigma(torch.tensor(sde.eps)))


class _EpsHead(nn.Module):
    """The ε channels of a network that also outputs a learned variance (2C channels)."""

    def __init__(self, net: nn.Module, channels: int):
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.net(x, t, **kwargs)[:, : self.channels]


def create_score_model(config: Any, model: nn.Module | None = None) -> nn.Module:
    """The network as a σ-space score model `score(x, sigma)` (DESIGN.md §1); `model` defaults to a
    new `create_model(config)`. NCSN: index lookup; NCSNv2/NCSN++/MLP/conv: direct; DDPM family:
    `EpsToScore`; continuous VP / sub-VP: `ContinuousEpsToScore`."""
    net = create_model(config) if model is None else model
    name, kind = config.model.name, _choice(config.noise.kind, NOISE_KINDS, "noise.kind")
    if name == "ncsn":
        return IndexedScore(net, create_sigmas(config))
    if name in ("ncsnv2", "mlp", "conv", "ncsnpp"):
        return net
    if kind == "ddpm":
        head = _EpsHead(net, config.data.channels) if config.model.learn_sigma else net
        return EpsToScore(head, create_schedule(config).alphas_cumprod)
    if kind in ("vp", "subvp"):
        return ContinuousEpsToScore(net, create_sde(config), label_scale=999.0)
    raise ConfigError(f"model.name={name!r} cannot be used with noise.kind={kind!r}")


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
    loss_name = _choice(t.loss, ("dsm", "ssm", "eps", "hybrid", "vlb"), "training.loss")
    if kind == "ddpm":
        if loss_name not in ("eps", "hybrid", "vlb"):
            raise ConfigError(f"training.loss={loss_name!r} needs a score model; DDPM configs use eps, hybrid or vlb")
        sched = create_schedule(config)
        sampler_name = _choice(t.timestep_sampler, ("uniform", "importance"), "training.timestep_sampler")
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
        return losses.dsm_loss_at(score, x, sigma, noise, anneal_power=t.anneal_power)

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
        return create_sigmas(config) if kind == "ve" else geometric_sigmas(*sigma_range(config), s.n_steps)
    if kind == "ddpm" and method in ("ddim", "ddpm", "pc"):
        sched = create_schedule(config)
        steps = sched.T if s.n_steps <= 0 else s.n_steps
        return timesteps_to_sigmas(sched.alphas_cumprod, respace_timesteps(sched.T, steps, s.spacing))
    sigma_max, sigma_min = sigma_range(config)
    n = s.n_steps if s.n_steps > 0 else config.noise.num_scales
    if method in ("pc", "ddpm", "ddim"):
        return append_zero(geometric_sigmas(sigma_max, sigma_min, n))
    return append_zero(karras_sigmas(sigma_max, sigma_min, n, s.rho))


def create_sampler(config: Any) -> Callable[[Callable[..., Tensor], tuple[int, ...], torch.Generator, torch.device],
                                             Tensor]:
    """`sample(score, shape, generator, device) -> x` drawing from the config's initial noise and
    running the config's sampler (`sampling.method`)."""
    s = config.sampling
    method = _choice(s.method, SAMPLING_METHODS, "sampling.method")
    grid = sampling_grid(config)
    sigma_max, sigma_min = sigma_range(config)

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
                              generator=g)
        if method == "ddpm":
            return ddpm_ancestral(score, x, grid, s.variance, generator=g)
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
        return fast_sample(score, x, sigma_max, sigma_min, s.n_steps,
                           data_diameter=s.data_diameter if s.data_diameter > 0 else None)

    return sample


def guided_score(config: Any, score: nn.Module, y: Tensor | None, classifier: nn.Module | None = None) -> Callable:
    """The score the sampler runs: class-conditional on labels y [B] when the model is, with
    `sampling.guidance` = none | cfg (classifier-free, scale w) | classifier (∇ log p_φ(y | x, σ))."""
    s = config.sampling
    kind = _choice(s.guidance, ("none", "cfg", "classifier"), "sampling.guidance")
    if not is_class_conditional(config) and kind != "classifier":
        return score
    if kind == "cfg":
        if config.model.class_dropout <= 0:
            raise ConfigError("sampling.guidance='cfg' needs a model trained with a null label "
                              "(model.class_dropout > 0)")
        return ClassifierFreeGuidance(score, y, s.guidance_scale, null_label=config.data.num_classes)
    base = (lambda x, sigma: score(x, sigma, y=y)) if is_class_conditional(config) else score
    if kind == "none":
        return base
    if classifier is None:
        raise ConfigError("sampling.guidance='classifier' needs a trained classifier (classifier.workdir)")
    return ClassifierGuidance(base, VPClassifier(classifier, create_schedule(config).alphas_cumprod), y,
                              s.guidance_scale)


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
        return s.n_steps
    return len(grid) - 1


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------


def create_optimizer(config: Any, params: Any) -> torch.optim.Optimizer:
    """Adam / AdamW with the config's lr, β1, β2, ε and weight decay."""
    o = config.optim
    name = _choice(o.optimizer, ("adam", "adamw"), "optim.optimizer")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)


def learning_rate(config: Any, step: int) -> float:
    """Linear warm-up over `optim.warmup` steps, then constant (score_sde / DDPM)."""
    o = config.optim
    return o.lr * min(1.0, (step + 1) / o.warmup) if o.warmup > 0 else o.lr


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluation_kwargs(config: Any, workdir: Any, real: Tensor | None) -> dict[str, Any]:
    """Keyword arguments of `evaluate.evaluate_samples` for the config's data: the metric kind, value
    ranges, the real reference set (test split; `real` is it as loaded), caches inside WORKDIR/eval."""
    from pathlib import Path

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
    ref = None if real is None else (real.float() / 255.0 if real.dtype == torch.uint8 else real.float())
    return {"kind": "images", "metrics": tuple(e.metrics), "value_range": value_range, "real": ref,
            "inception_path": e.inception_path or None, "stats_path": cache / f"fid_stats_{d.dataset}_test.npz",
            "batch_size": 50}
