"""Config -> noise process: the NCSN levels, the DDPM schedule, the continuous SDEs and the σ ranges
the samplers and likelihoods run over."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..schedules import VESDE, VPSDE, DDPMSchedule, SubVPSDE, geometric_sigmas
from .names import BETA_SCHEDULES, NOISE_KINDS, ConfigError, choice


def noise_kind(config: Any) -> str:
    """noise.kind: ve | ve_continuous | ddpm | vp | subvp."""
    return choice(config.noise.kind, NOISE_KINDS, "noise.kind")


def create_sigmas(config: Any) -> Tensor:
    """The geometric NCSN noise levels σ_1 > … > σ_L (float64 [L]) of a VE config."""
    n = config.noise
    return geometric_sigmas(n.sigma_max, n.sigma_min, n.num_scales)


def create_schedule(config: Any) -> DDPMSchedule:
    """The discrete DDPM schedule of a `noise.kind = "ddpm"` config."""
    n = config.noise
    kind = choice(n.beta_schedule, BETA_SCHEDULES, "noise.beta_schedule")
    if kind == "linear":
        return DDPMSchedule.linear(n.num_scales, n.beta_start, n.beta_end)
    return DDPMSchedule.cosine(n.num_scales)


def create_sde(config: Any) -> VESDE | VPSDE | SubVPSDE:
    """The continuous SDE of a ve_continuous / vp / subvp config."""
    n = config.noise
    kind = noise_kind(config)
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
