"""The loss table (one entry per `training.loss`), and the optimiser and learning rate of a config.

Every loss evaluates the network through its σ-space wrapper (docs/design.md §4a): `LossFn.bind(net)`
wraps it once, so the labels and input scaling of training are those of sampling and likelihoods.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import losses
from ..augment import EDM_AUGMENT, AugmentPipe
from ..models.edm2 import edm2_learning_rate
from ..schedules import Noise
from ..utils import append_dims, randn_like

TIMESTEP_SAMPLERS = ("uniform", "importance")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "edm2")

# loss(wrapper, x, cond, generator, ctx) -> [B]; ctx carries the noise process, the training fields and
# the DDPM timestep sampler
LossCall = Callable[[nn.Module, Tensor, dict[str, Tensor], torch.Generator, "LossFn"], Tensor]


@dataclass(frozen=True)
class Loss:
    """One training.loss: `call`, the noise kinds it fits, and whether it needs a learned variance
    (hybrid, vlb) or DDPM timesteps."""

    call: LossCall
    noise: tuple[str, ...]
    learned_variance: bool = False


@dataclass
class LossFn:
    """The configured training objective: `loss.bind(net)(x, y, generator) -> [B]`.

    `wrap` is the network's conditioning; `timesteps` the DDPM timestep sampler, whose state (importance
    sampling's loss history) belongs in checkpoints (None for the other losses); `fresh()` is a copy with
    its own timestep state.
    """

    loss: Loss
    wrap: Callable[[nn.Module], nn.Module]
    noise: Noise
    f: Any  # the config records
    timesteps: losses.UniformTimesteps | None = None
    augment: AugmentPipe | None = None  # EDM's non-leaky augmentation (data.augment_p > 0)

    @property
    def t(self) -> Any:
        return self.f.training

    def bind(self, net: nn.Module) -> Callable[[Tensor, Tensor | None, torch.Generator], Tensor]:
        model = self.wrap(net)
        return lambda x, y, generator: self.loss.call(model, x, {} if y is None else {"y": y}, generator, self)

    def fresh(self) -> LossFn:
        return dataclasses.replace(self, timesteps=copy.deepcopy(self.timesteps))


def _dsm(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
    sigma = ctx.noise.sample_sigma(x.shape[0], g, x.device, x.dtype)
    return losses.dsm_loss_at(lambda xx, ss: model(xx, ss, **cond), x, sigma, randn_like(x, g),
                              anneal_power=ctx.t.anneal_power, reduce_mean=ctx.t.reduce_mean)


def _ssm(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
    sigma = ctx.noise.sample_sigma(x.shape[0], g, x.device, x.dtype)
    x_tilde = x + append_dims(sigma, x.ndim) * randn_like(x, g)
    return losses.ssm_loss_at(lambda xx, ss: model(xx, ss, **cond), x_tilde, sigma,
                              n_projections=ctx.t.n_projections, anneal_power=ctx.t.anneal_power, generator=g)


def _ddpm_loss(which: str) -> LossCall:
    """L_simple, the hybrid loss or the VLB at uniform or importance-sampled timesteps (improved DDPM)."""

    def call(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
        sched = ctx.noise.schedule
        t, w = ctx.timesteps.sample(x.shape[0], x.device, g)
        noise = randn_like(x, g)
        if which == "eps":
            per = losses.eps_loss(model, x, sched, t, noise, **cond)
        elif which == "hybrid":
            per = losses.hybrid_loss(model, x, sched, t, noise, lambda_vlb=ctx.t.lambda_vlb, **cond)
        else:
            per = losses.vlb_loss(model, x, sched, t, noise, **cond)
        ctx.timesteps.update(t, per)
        return per * w.to(per.dtype)

    return call


def _classifier(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
    """Cross-entropy of the noisy classifier on x_σ at uniform t (Dhariwal & Nichol 2021, §4), through its
    σ-space wrapper (the inputs it is sampled with)."""
    sigma = ctx.noise.sample_sigma(x.shape[0], g, x.device, x.dtype)
    logits = model(x + append_dims(sigma, x.ndim) * randn_like(x, g), sigma)
    return nn.functional.cross_entropy(logits, cond["y"], reduction="none")


def _edm(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
    """EDM's loss (training/loss.py `EDMLoss`): ln σ ~ N(P_mean, P_std²), λ(σ) = (σ² + σ_d²)/(σσ_d)²."""
    n = ctx.noise
    return losses.edm_loss(model, x, n.P_mean, n.P_std, ctx.f.model.sigma_data, generator=g, augment=ctx.augment,
                           **cond)


def _edm_vp(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
    """EDM's VP training distribution (`VPLoss`): t ~ U(ε_t, 1), λ = 1/σ²."""
    n = ctx.f.noise
    return losses.vp_loss(model, x, n.beta_max - n.beta_min, n.beta_min, n.eps, generator=g, augment=ctx.augment,
                          **cond)


def _edm_ve(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
    """EDM's VE training distribution (`VELoss`): ln σ ~ U(ln σ_min, ln σ_max), λ = 1/σ²."""
    n = ctx.f.noise
    return losses.ve_loss(model, x, n.sigma_min, n.sigma_max, generator=g, augment=ctx.augment, **cond)


def _edm2_loss(model: nn.Module, x: Tensor, cond: dict[str, Tensor], g: torch.Generator, ctx: LossFn) -> Tensor:
    """EDM2's loss with the learned uncertainty u(σ) (Karras et al. 2024, eq. 21)."""
    n = ctx.noise
    return losses.edm2_loss(model, x, n.P_mean, n.P_std, ctx.f.model.sigma_data, generator=g, **cond)


LOSSES: dict[str, Loss] = {
    "dsm": Loss(_dsm, ("ve", "ve_continuous", "vp", "subvp", "edm")),
    "ssm": Loss(_ssm, ("ve", "ve_continuous", "vp", "subvp", "edm")),
    "eps": Loss(_ddpm_loss("eps"), ("ddpm",)),
    "hybrid": Loss(_ddpm_loss("hybrid"), ("ddpm",), learned_variance=True),
    "vlb": Loss(_ddpm_loss("vlb"), ("ddpm",), learned_variance=True),
    "edm": Loss(_edm, ("edm",)),
    "edm_vp": Loss(_edm_vp, ("vp",)),
    "edm_ve": Loss(_edm_ve, ("ve_continuous",)),
    "edm2": Loss(_edm2_loss, ("edm",)),
}
AUGMENTED = ("edm", "edm_vp", "edm_ve")  # the losses that take EDM's augmentation
CLASSIFIER_LOSS = Loss(_classifier, ("ddpm",))


def loss_fn(name: str, wrap: Callable[[nn.Module], nn.Module], noise: Noise, f: Any) -> LossFn:
    """The training objective `name` (or the noisy classifier's cross-entropy, name "classifier")."""
    loss = CLASSIFIER_LOSS if name == "classifier" else LOSSES[name]
    timesteps = augment = None
    if noise.kind == "ddpm" and name != "classifier":
        T = noise.schedule.T
        timesteps = (losses.UniformTimesteps(T) if f.training.timestep_sampler == "uniform"
                     else losses.ImportanceTimesteps(T, history=10, uniform_prob=0.001))
    if name in AUGMENTED and f.data.augment_p > 0:
        augment = AugmentPipe(p=f.data.augment_p, **EDM_AUGMENT)  # EDM's CIFAR-10 / 64x64 pipeline
    return LossFn(loss, wrap, noise, f, timesteps, augment)


def optimizer_factory(o: Any) -> Callable[[Iterable[Any]], torch.optim.Optimizer]:
    """`make(params)`: the optim.* record's Adam / AdamW (lr, β1, β2, ε, weight decay) over `params`."""
    cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
    return lambda params: cls(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)


@dataclass(frozen=True)
class LearningRate:
    """`rate(step) -> lr`: linear warm-up over `warmup` steps (score_sde / DDPM / EDM's ramp-up), then
    constant; or schedule "edm2": EDM2's ramp-up over `warmup` steps' images and inverse square root decay
    after `ref_images` training images (EDM2 eq. 7, `models.edm2.edm2_learning_rate`; `batch` per step)."""

    lr: float
    warmup: int
    schedule: str = "constant"
    ref_images: float = 0.0
    batch: int = 1

    def __call__(self, step: int) -> float:
        if self.schedule == "edm2":  # evaluated with the images seen before the step, as EDM2's training loop
            return edm2_learning_rate(step * self.batch, self.batch, self.lr, self.ref_images / self.batch,
                                      self.warmup * self.batch)
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else self.lr


def learning_rate(o: Any, batch: int) -> LearningRate:
    """The optim.* record's learning-rate schedule for a global batch of `batch` images."""
    return LearningRate(o.lr, o.warmup, o.schedule, o.lr_ref_kimg * 1000.0, batch)
