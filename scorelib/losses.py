"""Training objectives. Every loss returns one value per example, shape [B]; the trainer reduces.

Every loss takes the network's σ-space wrapper (`scorelib.precond`, docs/design.md §4a), never the raw
network, so the network sees in training exactly the inputs it sees in sampling and in likelihoods.
Score-model losses (DSM, sliced score matching) need only `score(x, sigma)`; the DDPM losses (L_simple,
VLB, hybrid) draw x_σ = x₀ + σ_t ε at the timesteps t of a `DDPMSchedule` and read ε (and the learned
variance) from the wrapper; EDM's losses (`edm_loss`, `vp_loss`, `ve_loss`, `edm2_loss`) read its `denoise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .schedules import DDPMSchedule
from .utils import ScoreFn, append_dims, mean_flat, randn_like, sum_flat

LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# Score matching (NCSN)
# ---------------------------------------------------------------------------------------------


def sample_sigmas(sigmas: Tensor, batch: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """σ drawn uniformly from the L levels of `sigmas`, one per example: [B]."""
    idx = torch.randint(len(sigmas), (batch,), generator=generator, device=device)
    return sigmas.to(device=device, dtype=dtype)[idx]


def dsm_loss_at(score_model: ScoreFn, x: Tensor, sigma: Tensor, noise: Tensor,
                anneal_power: float = 2.0, reduce_mean: bool = False) -> Tensor:
    """Denoising score matching at given σ [B] and noise z (x's shape) (Song & Ermon 2019, eq. 5-6):

        ½ λ(σ) ‖s(x̃, σ) + (x̃ - x)/σ²‖²,   x̃ = x + σ z,   λ(σ) = σ^anneal_power.

    Sums over data dimensions with the ½ (NCSN's convention, score_sde's reduce_mean=False); with
    `reduce_mean` the squared error is averaged over dimensions without the ½ (score_sde losses.py
    `get_sde_loss_fn(reduce_mean=True)`, its VP / sub-VP configs). Returns [B].
    """
    s = append_dims(sigma, x.ndim)
    x_tilde = x + s * noise
    target = -noise / s
    err = score_model(x_tilde, sigma) - target
    per = mean_flat(err**2) if reduce_mean else 0.5 * sum_flat(err**2)
    return per * sigma**anneal_power


def dsm_loss(score_model: ScoreFn, x: Tensor, sigmas: Tensor, anneal_power: float = 2.0,
             generator: torch.Generator | None = None) -> Tensor:
    """NCSN training loss: DSM with σ uniform over the levels `sigmas` [L]. x: [B, ...]; returns [B]."""
    sigma = sample_sigmas(sigmas, x.shape[0], generator, x.device, x.dtype)
    return dsm_loss_at(score_model, x, sigma, randn_like(x, generator), anneal_power)


def _projections(x: Tensor, n: int, kind: str, generator: torch.Generator | None) -> Tensor:
    v = torch.randn((n, *x.shape), generator=generator, dtype=x.dtype, device=x.device)
    if kind == "rademacher":
        return v.sign()
    if kind != "gaussian":
        raise ValueError(f"unknown projection distribution {kind!r}; expected gaussian or rademacher")
    return v


def ssm_loss_at(score_model: ScoreFn, x: Tensor, sigma: Tensor, n_projections: int = 1,
                variance_reduction: bool = True, anneal_power: float = 2.0, projection: str = "gaussian",
                generator: torch.Generator | None = None) -> Tensor:
    """Sliced score matching (Song et al. 2019, eq. 8) at the points `x` (already noisy) and σ [B]:

        λ(σ) E_v [ vᵀ ∇ₓ(vᵀ s(x, σ)) + ½ (vᵀ s)² ]

    With `variance_reduction` (SSM-VR, Gaussian v) the second term is replaced by its expectation
    ½ ‖s‖². Averages over `n_projections` vectors. Builds a graph for training. Returns [B].
    """
    if variance_reduction and projection != "gaussian":
        raise ValueError("variance reduction needs Gaussian projections (E[vvᵀ] = I)")
    x = x.detach().requires_grad_(True)
    s = score_model(x, sigma)
    vs = _projections(x, n_projections, projection, generator)
    total = x.new_zeros(x.shape[0])
    for v in vs:
        sv = sum_flat(v * s)
        (grad_sv,) = torch.autograd.grad(sv.sum(), x, create_graph=True)
        second = 0.5 * sum_flat(s**2) if variance_reduction else 0.5 * sv**2
        total = total + sum_flat(v * grad_sv) + second
    return total / n_projections * sigma**anneal_power


def ssm_loss(score_model: ScoreFn, x: Tensor, sigmas: Tensor, n_projections: int = 1,
             variance_reduction: bool = True, anneal_power: float = 2.0, projection: str = "gaussian",
             generator: torch.Generator | None = None) -> Tensor:
    """Annealed sliced score matching (NCSN's SSM variant): perturb x with σ uniform over `sigmas`,
    then `ssm_loss_at` on the perturbed points. Returns [B]."""
    sigma = sample_sigmas(sigmas, x.shape[0], generator, x.device, x.dtype)
    x_tilde = x + append_dims(sigma, x.ndim) * randn_like(x, generator)
    return ssm_loss_at(score_model, x_tilde, sigma, n_projections, variance_reduction, anneal_power,
                       projection, generator)


# ---------------------------------------------------------------------------------------------
# DDPM: L_simple, VLB terms, learned variance, hybrid
# ---------------------------------------------------------------------------------------------


def predicted_eps(model: ScoreFn, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
    """ε̂(x, σ) of a σ-space model: its `eps` when it has one (a `Precond` returns an ε-network's output
    exactly), else -σ·s(x, σ)."""
    eps = getattr(model, "eps", None)
    return eps(x, sigma, **cond) if eps is not None else -append_dims(sigma, x.ndim) * model(x, sigma, **cond)


def eps_loss(model: ScoreFn, x0: Tensor, schedule: DDPMSchedule, t: Tensor, noise: Tensor, **cond: Tensor) -> Tensor:
    """L_simple (Ho et al. 2020, eq. 14) in σ-space: mean over dims of ‖ε - ε̂(x₀ + σ_t ε, σ_t)‖² = ‖ε + σ_t s‖²,
    the same numbers as in x_t coordinates. model: a σ-space wrapper (`EpsToScore`); t: int64 [B]. Returns [B].
    """
    sigma = schedule.sigmas.to(x0.device)[t].to(x0.dtype)
    x = x0 + append_dims(sigma, x0.ndim) * noise
    return mean_flat((noise - predicted_eps(model, x, sigma, **cond)) ** 2)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_normal_mass(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) - Φ(a)) for a < b, stable in both tails (use the tail where the masses are small)."""
    flip = a > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi).clamp(max=-1e-30))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor,
                                        n_bins: int = 256) -> Tensor:
    """log P(x) of a Gaussian N(mean, e^{2 log_scale}) discretised to `n_bins` bins on [-1, 1]
    (Ho et al. 2020, eq. 13): bin edges at x ± 1/(n_bins-1), the outermost bins extended to ±∞.

    x: data on the bin centres in [-1, 1]. Elementwise, nats. Exact normal CDF (not the tanh
    approximation of the reference code).
    """
    half = 1.0 / (n_bins - 1)
    inv = torch.exp(-log_scale)
    lower = torch.where(x < -1 + half / 2, torch.full_like(x, -math.inf), (x - half - mean) * inv)
    upper = torch.where(x > 1 - half / 2, torch.full_like(x, math.inf), (x + half - mean) * inv)
    return _log_normal_mass(lower, upper)


def interpolated_log_variance(v: Tensor, schedule: DDPMSchedule, t: Tensor) -> Tensor:
    """Learned variance (Nichol & Dhariwal 2021, eq. 15): log Σ = v log β_t + (1 - v) log β̃_t.

    v: interpolation coefficient, x's shape (≈ [0, 1]); t: int64 [B]. β̃_0 uses the clipped value.
    """
    log_beta = schedule.gather(torch.log(schedule.betas), t, v)
    log_beta_tilde = schedule.gather(schedule.posterior_log_variance_clipped, t, v)
    return v * log_beta + (1 - v) * log_beta_tilde


def vlb_term(schedule: DDPMSchedule, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor,
             log_var: Tensor, clip_denoised: bool = False) -> Tensor:
    """One term of the variational bound in bits/dim, per example [B] (Ho et al. 2020, eq. 5):

        t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x₀) ‖ p_θ(x_{t-1} | x_t)),
        t = 0: L_0 = -log p_θ(x₀ | x₁) under the discretised Gaussian decoder,

    with p_θ's mean from the predicted ε (μ_θ = μ̃(x̂₀(ε), x_t)) and log-variance `log_var`;
    `clip_denoised` clamps x̂₀ to [-1, 1] first (improved-diffusion `_vb_terms_bpd(clip_denoised=True)`,
    as its NLL script computes the bound; training uses no clipping).
    """
    true_mean, true_logvar = schedule.q_posterior(x0, x_t, t)
    x0_hat = schedule.predict_x0(x_t, t, eps)
    mean = schedule.q_posterior(x0_hat.clamp(-1, 1) if clip_denoised else x0_hat, x_t, t)[0]
    kl = mean_flat(normal_kl(true_mean, true_logvar, mean, log_var)) / LOG2
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / LOG2
    return torch.where(t == 0, nll, kl)


def prior_bpd(schedule: DDPMSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x₀) ‖ N(0, I)) in bits/dim, [B]."""
    t = torch.full((x0.shape[0],), schedule.T - 1, dtype=torch.long, device=x0.device)
    a = schedule.gather(schedule.alphas_cumprod, t, x0)
    kl = normal_kl(a.sqrt() * x0, torch.log1p(-a), torch.zeros_like(x0), torch.zeros_like(x0))
    return mean_flat(kl) / LOG2


def _eps_and_log_variance(model: Any, x0: Tensor, schedule: DDPMSchedule, t: Tensor, noise: Tensor,
                          cond: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, ε̂, learned log Σ) of a learned-variance wrapper at timesteps t for x_σ = x₀ + σ_t ε."""
    sigma = schedule.sigmas.to(x0.device)[t].to(x0.dtype)
    eps, v = model.eps_and_variance(x0 + append_dims(sigma, x0.ndim) * noise, sigma, **cond)
    return schedule.q_sample(x0, t, noise), eps, interpolated_log_variance(v, schedule, t)


def vlb_loss(model: Any, x0: Tensor, schedule: DDPMSchedule, t: Tensor, noise: Tensor, **cond: Tensor) -> Tensor:
    """L_vlb for a learned-variance wrapper (`EpsToScore(..., learned_variance=True)`) estimated from the term
    at t as T·L_t, bits/dim [B]: improved-diffusion's RESCALED_KL (gaussian_diffusion.py `training_losses`:
    `terms["loss"] *= self.num_timesteps`), the sum over t in expectation under uniform t.

    Gradient reaches both the mean and the variance (the pure VLB objective of improved DDPM).
    """
    x_t, eps, log_var = _eps_and_log_variance(model, x0, schedule, t, noise, cond)
    return schedule.T * vlb_term(schedule, x0, x_t, t, eps, log_var)


def hybrid_loss(model: Any, x0: Tensor, schedule: DDPMSchedule, t: Tensor, noise: Tensor, lambda_vlb: float = 0.001,
                **cond: Tensor) -> Tensor:
    """L_hybrid = L_simple + λ L_vlb (Nichol & Dhariwal 2021, eq. 16), per example [B], for a learned-variance
    wrapper.

    L_vlb = Σ_t L_t is estimated from the sampled term as T·L_t; the stop-gradient on the mean
    inside L_vlb means the VLB trains only the variance, L_simple only the mean.
    """
    x_t, eps, log_var = _eps_and_log_variance(model, x0, schedule, t, noise, cond)
    mse = mean_flat((noise - eps) ** 2)
    return mse + lambda_vlb * schedule.T * vlb_term(schedule, x0, x_t, t, eps.detach(), log_var)


# ---------------------------------------------------------------------------------------------
# EDM: denoiser losses with a training distribution of σ (Karras et al. 2022, eq. 8, Table 1)
# ---------------------------------------------------------------------------------------------

# `augment(x0, generator) -> (augmented x0, labels [B, augment_dim])`, e.g. `scorelib.augment.AugmentPipe`.
Augment = Callable[[Tensor, torch.Generator | None], tuple[Tensor, Tensor]]


def denoiser_loss_at(model: Any, x0: Tensor, sigma: Tensor, weight: Tensor, generator: torch.Generator | None = None,
                     augment: Augment | None = None, **cond: Any) -> Tensor:
    """Σ over dimensions of λ(σ)·‖D(y + σn; σ) - y‖², per example [B] (EDM training/loss.py).

    x0: [B, ...] clean data; sigma, weight: [B]; `model.denoise(x, sigma, **cond)` is the network's
    σ-space wrapper (`scorelib.precond`). With `augment`, y and its labels come from augment(x0, generator)
    and the labels reach the network as `augment_labels`; otherwise y = x0. The noise n is drawn after
    the augmentation (EDM's order: σ, augmentation, noise).
    """
    y, labels = augment(x0, generator) if augment is not None else (x0, None)
    if labels is not None:
        cond = {**cond, "augment_labels": labels}
    s = append_dims(sigma.to(y.dtype), y.ndim)
    d = model.denoise(y + randn_like(y, generator) * s, sigma.to(y.dtype), **cond)
    return sum_flat(append_dims(weight.to(y.dtype), y.ndim) * (d - y) ** 2)


def edm_loss(model: Any, x0: Tensor, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5,
             generator: torch.Generator | None = None, augment: Augment | None = None, **cond: Any) -> Tensor:
    """EDM's training loss (Karras et al. 2022, eq. 8 with Table 1's "EDM" column), per example [B]:

        ln σ ~ N(P_mean, P_std²),  λ(σ) = (σ² + σ_d²)/(σ σ_d)²,  loss = Σ_dims λ(σ) ‖D(y + σn; σ) - y‖².

    model: a σ-space wrapper with `denoise` (`EDMPrecond`); x0: [B, ...]; cond: network keywords (`y`).
    Draws from `generator`: σ ([B] normals), then `augment`'s draws, then the noise (x0's shape), the
    order of EDM training/loss.py `EDMLoss` with torch's global RNG. The value is the sum over
    dimensions of EDM's elementwise loss, so the mean over the batch is EDM's training objective
    (training_loop.py: `loss.sum() / batch_size`) and its learning rates carry over.
    """
    z = torch.randn(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = torch.exp(z.to(torch.float64) * P_std + P_mean)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return denoiser_loss_at(model, x0, sigma, weight, generator, augment, **cond)


def vp_loss(model: Any, x0: Tensor, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5,
            generator: torch.Generator | None = None, augment: Augment | None = None, **cond: Any) -> Tensor:
    """EDM's VP training distribution (training/loss.py `VPLoss`; Table 1 "VP" column), per example [B]:
    t ~ U(ε_t, 1), σ = √(exp(½β_d t² + β_min t) - 1), λ(σ) = 1/σ², otherwise as `edm_loss` (draws: t,
    augmentation, noise). With `VPPrecond` this is score_sde's continuous VP DSM objective."""
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    t = 1 + u.to(torch.float64) * (epsilon_t - 1)
    sigma = torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()
    return denoiser_loss_at(model, x0, sigma, 1 / sigma**2, generator, augment, **cond)


def ve_loss(model: Any, x0: Tensor, sigma_min: float = 0.02, sigma_max: float = 100.0,
            generator: torch.Generator | None = None, augment: Augment | None = None, **cond: Any) -> Tensor:
    """EDM's VE training distribution (training/loss.py `VELoss`; Table 1 "VE" column), per example [B]:
    ln σ ~ U(ln σ_min, ln σ_max), λ(σ) = 1/σ², otherwise as `edm_loss` (draws: σ, augmentation, noise)."""
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = sigma_min * (sigma_max / sigma_min) ** u.to(torch.float64)
    return denoiser_loss_at(model, x0, sigma, 1 / sigma**2, generator, augment, **cond)


# ---------------------------------------------------------------------------------------------
# Timestep samplers
# ---------------------------------------------------------------------------------------------


class UniformTimesteps:
    """t uniform over 0..T-1, importance weights all 1."""

    def __init__(self, T: int):
        self.T = T

    def probabilities(self) -> Tensor:
        return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)

    def sample(self, batch: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Returns t: int64 [B] and weights 1/(T p_t): float32 [B] (multiply the losses by them), on `device`.

        The draw happens where `generator` lives (a CUDA training generator draws on the GPU), so the
        same seed gives the same t whatever `device` is.
        """
        p = self.probabilities()
        where = generator.device if generator is not None else torch.device("cpu")
        t = torch.multinomial(p.to(where), batch, replacement=True, generator=generator).to(device)
        w = (1.0 / (self.T * p.to(t.device)[t])).float()
        return t, w

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record losses [B] at timesteps t [B] (a no-op for the uniform sampler)."""


class ImportanceTimesteps(UniformTimesteps):
    """Importance sampling p_t ∝ √E[L_t²] (Nichol & Dhariwal 2021, eq. 18), mixed with
    `uniform_prob` of the uniform distribution; uniform until every t has `history` losses.

    Keeps the last `history` losses per t. `state_dict`/`load_state_dict` make it resumable.
    """

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(T)
        self.history = history
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(T, history, dtype=torch.float64)
        self.counts = torch.zeros(T, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.counts >= self.history).all())

    def probabilities(self) -> Tensor:
        if not self.warmed_up():
            return super().probabilities()
        w = (self.losses**2).mean(1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def update(self, t: Tensor, losses: Tensor) -> None:
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            slot = int(self.counts[ti]) % self.history
            self.losses[ti, slot] = li
            self.counts[ti] += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.losses.copy_(state["losses"])
        self.counts.copy_(state["counts"])


# ---------------------------------------------------------------------------------------------
# EDM2: the denoising loss weighted by a learned uncertainty
# ---------------------------------------------------------------------------------------------


def edm2_loss(model: Any, x0: Tensor, P_mean: float = -0.4, P_std: float = 1.0, sigma_data: float = 0.5,
              generator: torch.Generator | None = None, **cond: Any) -> Tensor:
    """EDM2's training loss (Karras et al. 2024, eqs. 14-16 and 21), per example [B]:

        Σ_dims [ λ(σ)/e^u(σ) · (D(x₀ + σn; σ) - x₀)² + u(σ) ],   λ(σ) = (σ² + σ_d²)/(σ σ_d)²,
        ln σ ~ N(P_mean, P_std²),   n ~ N(0, I),

    u the learned log-variance. `model.denoise_and_logvar(x, sigma, **cond) -> (D, u [B])` (`EDM2Precond`);
    `cond` (class labels `y`) goes to it. From `generator`: the normal of ln σ ([B]), then n (x0's shape),
    EDM2's order (training/training_loop.py `EDM2Loss`). Summed over dimensions: EDM2's loop sums the
    per-pixel losses and divides by the batch size, i.e. the batch mean of these values. EDM2's presets:
    P_mean = -0.4, P_std = 1.0 for ImageNet-512 (latents), -0.8 and 1.6 for ImageNet-64.
    """
    z = torch.randn((x0.shape[0],), generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = (z * P_std + P_mean).exp()
    noisy = x0 + append_dims(sigma, x0.ndim) * randn_like(x0, generator)
    denoised, logvar = model.denoise_and_logvar(noisy, sigma, **cond)
    weight = append_dims((sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2, x0.ndim)
    u = append_dims(logvar, x0.ndim)
    return sum_flat(weight * torch.exp(-u) * (denoised - x0) ** 2 + u)
