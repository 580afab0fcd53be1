"""Likelihoods: the probability-flow ODE's exact log-density (Song et al. 2021b, App. D) and the
discrete variational bound of DDPM models (Ho et al. 2020; Nichol & Dhariwal 2021), in nats and bits/dim.

With x(σ) the probability-flow path from x(σ_min) = x up to σ_max (docs/design.md §2):

    log p_{σ_min}(x) = log N(x(σ_max); 0, σ_max² I) + ∫_{σ_min}^{σ_max} ∇·(dx/dσ) dσ

integrated in u = log σ together with the divergence (the instantaneous change of variables,
Chen et al. 2018), the divergence exact (D backward passes) or Hutchinson–Skilling (one per probe).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from .losses import interpolated_log_variance, predicted_eps, prior_bpd, vlb_term
from .schedules import DDPMSchedule, gaussian_logp
from .utils import ScoreFn, append_dims, randn_like, sum_flat


def _divergence_exact(f: Tensor, x: Tensor) -> Tensor:
    """Σ_i ∂f_i/∂x_i per example, by one backward pass per dimension. f, x: [B, ...]."""
    ff, total = f.flatten(1), torch.zeros(x.shape[0], dtype=f.dtype, device=f.device)
    for i in range(ff.shape[1]):
        (g,) = torch.autograd.grad(ff[:, i].sum(), x, retain_graph=True)
        total = total + g.flatten(1)[:, i]
    return total


def _divergence_hutchinson(f: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """E_v[vᵀ (∂f/∂x) v] estimated with the fixed probes [P, B, ...], one vector-Jacobian product each."""
    total = torch.zeros(x.shape[0], dtype=f.dtype, device=f.device)
    for v in probes:
        (g,) = torch.autograd.grad(f, x, v, retain_graph=True)
        total = total + sum_flat(g * v)
    return total / probes.shape[0]


def log_likelihood(score: ScoreFn, x: Tensor, sigma_max: float, sigma_min: float, method: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, exact_trace: bool = False, n_probes: int = 1,
                   generator: torch.Generator | None = None, probe: str = "rademacher",
                   return_nfe: bool = False) -> Tensor | tuple[Tensor, int]:
    """log p_{σ_min}(x) in nats per example, [B], for x: [B, ...] taken as a point at σ_min.

    exact_trace: exact divergence (D backward passes per evaluation; for small D), else Hutchinson
    with `n_probes` probe vectors drawn once from `generator`: Rademacher by default, as score_sde
    (likelihood.py `get_likelihood_fn(hutchinson_type='Rademacher')`), or "gaussian".
    With `return_nfe` also the number of score evaluations.
    """
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max} and {sigma_min}")
    batch = x.shape[0]
    probes = None
    if not exact_trace:
        probes = torch.randn((n_probes, *x.shape), generator=generator, dtype=x.dtype, device=x.device)
        if probe == "rademacher":
            probes = probes.sign()
        elif probe != "gaussian":
            raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    nfe = 0

    def f(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        y = state[0]
        sigma = u.exp().to(y.dtype)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            drift = -(sigma**2) * score(y, sigma.expand(batch))  # dx/du with u = log σ
            div = _divergence_exact(drift, y) if probes is None else _divergence_hutchinson(drift, y, probes)
        return drift.detach(), div.detach()

    u = torch.tensor([math.log(sigma_min), math.log(sigma_max)], dtype=x.dtype, device=x.device)
    x_end, delta = odeint(f, (x, torch.zeros(batch, dtype=x.dtype, device=x.device)), u, rtol=rtol, atol=atol,
                          method=method)
    logp = gaussian_logp(x_end[-1], sigma_max) + delta[-1]
    return (logp, nfe) if return_nfe else logp


def bits_per_dim(nats: Tensor, dims: int, bin_width: float) -> Tensor:
    """Bits per dimension of discrete data from a continuous log-density of its dequantised version.

    With x = (k + u)·bin_width (+ offset) and u ~ U[0, 1)^D, log P(k) ≥ log p(x) + D log(bin_width),
    so bpd = -(log p(x) + D log bin_width)/(D ln 2). 8-bit images in [0, 1]: bin_width = 1/256 (adds
    8 bits); in [-1, 1]: bin_width = 2/256 (adds 7).
    """
    return -(nats + dims * math.log(bin_width)) / (dims * math.log(2))


def uniform_dequantize(k: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation (k + u)/L of level indices k ∈ {0, …, L-1} (float [B, ...]) into [0, 1).

    u ~ U[0, 1) of k's shape in the default dtype, from `generator`; the arithmetic is in the
    promoted dtype of k and u (float64 for float64 k).
    """
    u = torch.rand(k.shape, generator=generator, device=k.device)
    return (k + u) / levels


def dequantize(images: Tensor, centered: bool, generator: torch.Generator | None = None,
               levels: int = 256) -> Tensor:
    """Uniformly dequantised images in [0, 1] or [-1, 1]: 8-bit images (uint8 [B, ...]) as (k + u)/256
    (·2 - 1), in float64 before the cast; float images in [0, 1] with `levels` levels (e.g. the digits' 17)
    as (x·(L - 1) + u)/L."""
    if levels == 256:
        x = uniform_dequantize(images.double(), 256, generator)
        return (2 * x - 1 if centered else x).float()
    u = torch.rand(images.shape, generator=generator, device=images.device)
    x = (images.float() * (levels - 1) + u) / levels
    return 2 * x - 1 if centered else x


def ddpm_vlb(model: Any, x0: Tensor, schedule: DDPMSchedule, variance: str = "learned",
             generator: torch.Generator | None = None, clip_denoised: bool = False,
             **cond: Tensor) -> tuple[Tensor, Tensor]:
    """The full variational bound of a DDPM model on data x0 ∈ [-1, 1] (8-bit bins), in bits/dim:

        L = L_T + Σ_{t≥1} L_{t-1} + L_0     (Ho et al. 2020, eq. 5; improved DDPM's calc_bpd_loop)

    model: the network's σ-space wrapper (`EpsToScore`), evaluated at x_σ = x₀ + σ_t ε, so the network sees
    the labels it was trained and is sampled with (improved-diffusion feeds t·1000/T here too).
    variance: "learned" (Σ = exp(v log β + (1-v) log β̃) from the wrapper), "small" (β̃) or "large"
    (β, with β̃_1 at t = 0 as in Ho et al.). One network evaluation per timestep (T in all).
    `clip_denoised`: x̂₀ clamped to [-1, 1] in every term (improved-diffusion `calc_bpd_loop`'s default).
    Returns (total [B], terms [B, T] with terms[:, t] = L_t of timestep index t (L_0 at 0)).
    """
    if variance not in ("learned", "small", "large"):
        raise ValueError(f"variance must be learned, small or large, got {variance!r}")
    sigmas = schedule.sigmas.to(x0.device)
    terms = []
    for t_val in range(schedule.T):
        t = torch.full((x0.shape[0],), t_val, dtype=torch.long, device=x0.device)
        noise = randn_like(x0, generator)
        x_t = schedule.q_sample(x0, t, noise)
        sigma = sigmas[t].to(x0.dtype)
        x = x0 + append_dims(sigma, x0.ndim) * noise
        with torch.no_grad():
            if variance == "learned":
                eps, v = model.eps_and_variance(x, sigma, **cond)
                log_var = interpolated_log_variance(v, schedule, t)
            else:
                eps = predicted_eps(model, x, sigma, **cond)
                table = (schedule.posterior_log_variance_clipped if variance == "small" else
                         torch.log(torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]])))
                log_var = schedule.gather(table, t, x0).expand_as(x0)
        terms.append(vlb_term(schedule, x0, x_t, t, eps, log_var, clip_denoised))
    per_t = torch.stack(terms, dim=1)
    return per_t.sum(1) + prior_bpd(schedule, x0), per_t
