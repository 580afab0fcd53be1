"""Config -> what training optimises: the per-example loss, the σ / t sampler, the optimiser and the
learning-rate schedule."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import losses
from ..utils import append_dims
from .names import DDPM_LOSSES, LOSSES, NOISE_KINDS, OPTIMIZERS, TIMESTEP_SAMPLERS, ConfigError, choice
from .networks import _identity, score_adapter
from .noise import create_schedule, create_sde, create_sigmas


@dataclass
class LossFn:
    """Per-example training loss of a config: `loss(model, x, y, generator) -> [B]` on the network.

    `fn(target, x, y, generator, timesteps)` is stateless; `timesteps` is the DDPM timestep sampler,
    whose state (importance sampling's loss history) belongs in checkpoints, None otherwise. `bind(model)`
    wraps the network once in what the loss evaluates (its σ-space score model for the score losses,
    the network itself otherwise), for a training loop; `fresh()` is a copy with its own timestep state.
    """

    fn: Callable[..., Tensor]
    timesteps: losses.UniformTimesteps | None = None
    adapter: Callable[[nn.Module], nn.Module] = _identity

    def bind(self, model: nn.Module) -> Callable[[Tensor, Tensor | None, torch.Generator], Tensor]:
        target, ts = self.adapter(model), self.timesteps
        return lambda x, y, generator: self.fn(target, x, y, generator, ts)

    def fresh(self) -> LossFn:
        return dataclasses.replace(self, timesteps=copy.deepcopy(self.timesteps))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None, generator: torch.Generator) -> Tensor:
        return self.bind(model)(x, y, generator)


def _labels_kwargs(y: Tensor | None) -> dict[str, Tensor]:
    return {} if y is None else {"y": y}


def create_loss(config: Any) -> LossFn:
    """The training objective of the config, operating on the *network* (as returned by create_network)."""
    t, kind = config.training, choice(config.noise.kind, NOISE_KINDS, "noise.kind")
    if config.training.target == "classifier":
        return _classifier_loss(config)
    loss_name = choice(t.loss, LOSSES, "training.loss")
    if kind == "ddpm":
        if loss_name not in DDPM_LOSSES:
            raise ConfigError(f"training.loss={loss_name!r} needs a score model; DDPM configs use eps, hybrid or vlb")
        return _ddpm_loss(config, loss_name)
    if loss_name not in ("dsm", "ssm"):
        raise ConfigError(f"training.loss={loss_name!r} needs a DDPM config (noise.kind='ddpm')")
    sample_sigma = create_sigma_sampler(config)
    anneal_power, reduce_mean, n_projections = t.anneal_power, t.reduce_mean, t.n_projections

    def score_loss(score: nn.Module, x: Tensor, y: Tensor | None, g: torch.Generator, ts: None) -> Tensor:
        sigma = sample_sigma(x.shape[0], g, x.device, x.dtype)
        if loss_name == "ssm":
            x_tilde = x + append_dims(sigma, x.ndim) * torch.randn(x.shape, generator=g, device=x.device,
                                                                   dtype=x.dtype)
            return losses.ssm_loss_at(score, x_tilde, sigma, n_projections=n_projections,
                                      anneal_power=anneal_power, generator=g)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return losses.dsm_loss_at(score, x, sigma, noise, anneal_power=anneal_power, reduce_mean=reduce_mean)

    return LossFn(score_loss, adapter=score_adapter(config))


def _ddpm_loss(config: Any, loss_name: str) -> LossFn:
    """L_simple, the hybrid loss or the VLB on uniform or importance-sampled timesteps (improved DDPM)."""
    t = config.training
    sched = create_schedule(config)
    sampler_name = choice(t.timestep_sampler, TIMESTEP_SAMPLERS, "training.timestep_sampler")
    timesteps = (losses.UniformTimesteps(sched.T) if sampler_name == "uniform"
                 else losses.ImportanceTimesteps(sched.T, history=10, uniform_prob=0.001))
    lambda_vlb = t.lambda_vlb

    def ddpm_loss(model: nn.Module, x: Tensor, y: Tensor | None, g: torch.Generator,
                  ts: losses.UniformTimesteps) -> Tensor:
        tt, w = ts.sample(x.shape[0], x.device, g)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        kw = _labels_kwargs(y)
        if loss_name == "eps":
            per = losses.eps_loss(model, x, sched, tt, noise, **kw)
        elif loss_name == "hybrid":
            per = losses.hybrid_loss(model, x, sched, tt, noise, lambda_vlb=lambda_vlb, **kw)
        else:
            per = losses.vlb_loss(model, x, sched, tt, noise, **kw)
        ts.update(tt, per)
        return per * w.to(per.dtype)

    return LossFn(ddpm_loss, timesteps)
def _classifier_loss(config: Any) -> LossFn:
    """Cross-entropy of the noisy classifier on x_t at uniform t (Dhariwal & Nichol 2021, §4)."""
    if config.noise.kind != "ddpm":
        raise ConfigError("training.target='classifier' needs noise.kind='ddpm' (the classifier takes DDPM timesteps)")
    sched = create_schedule(config)

    def ce(model: nn.Module, x: Tensor, y: Tensor | None, g: torch.Generator, ts: None) -> Tensor:
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


def create_optimizer(config: Any, params: Iterable[Any]) -> torch.optim.Optimizer:
    """Adam / AdamW with the config's lr, β1, β2, ε and weight decay."""
    return optimizer_factory(config)(params)


def optimizer_factory(config: Any) -> Callable[[Iterable[Any]], torch.optim.Optimizer]:
    """`make(params)`: the config's Adam / AdamW (lr, β1, β2, ε, weight decay) over `params`."""
    o = config.optim
    name = choice(o.optimizer, OPTIMIZERS, "optim.optimizer")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    lr, betas, eps, weight_decay = o.lr, (o.beta1, o.beta2), o.eps, o.weight_decay
    return lambda params: cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@dataclass(frozen=True)
class LearningRate:
    """Linear warm-up over `warmup` steps, then constant (score_sde / DDPM): `rate(step) -> lr`."""

    lr: float
    warmup: int

    def __call__(self, step: int) -> float:
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else self.lr


def learning_rate_schedule(config: Any) -> LearningRate:
    """The config's learning-rate schedule (optim.lr, optim.warmup)."""
    return LearningRate(config.optim.lr, config.optim.warmup)


def learning_rate(config: Any, step: int) -> float:
    """The learning rate of step `step` (see `LearningRate`)."""
    return learning_rate_schedule(config)(step)
