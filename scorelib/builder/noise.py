"""The noise process of a config (noise.*), as one value object `Noise`: its kind, the NCSN levels, the
DDPM schedule or the SDE, the σ ranges of the samplers and of the likelihood, and how training draws σ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..schedules import VESDE, VPSDE, DDPMSchedule, SubVPSDE, geometric_sigmas
from .declare import ConfigError, show

# ve: NCSN's geometric levels; ve_continuous / vp / subvp: score_sde's SDEs; ddpm: a discrete schedule;
# edm: continuous σ in [sigma_min, sigma_max], trained with ln σ ~ N(P_mean, P_std²) (Karras et al. 2022)
NOISE_KINDS = ("ve", "ve_continuous", "ddpm", "vp", "subvp", "edm")
BETA_SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True, eq=False)
class Noise:
    """The noise process. `levels`: NCSN σ_1 > … > σ_L (ve); `schedule`: the DDPM schedule (ddpm); `sde`:
    the continuous SDE (ve_continuous / vp / subvp). (σ_max, σ_min) the samplers run over; the likelihood's."""

    kind: str
    num_scales: int  # noise.num_scales: the NCSN levels / DDPM T / the samplers' default number of steps
    sigma_max: float
    sigma_min: float
    likelihood_range: tuple[float, float]
    levels: Tensor | None = None
    schedule: DDPMSchedule | None = None
    sde: VESDE | VPSDE | SubVPSDE | None = None
    P_mean: float = -1.2
    P_std: float = 1.2

    @property
    def sigma_range(self) -> tuple[float, float]:
        return self.sigma_max, self.sigma_min

    def sample_sigma(self, batch: int, generator: torch.Generator, device: torch.device,
                     dtype: torch.dtype) -> Tensor:
        """σ [B] for training examples: uniform over the NCSN levels (ve), σ(t) with t ~ U(ε, 1) for the
        continuous SDEs (score_sde losses.py), exp(N(P_mean, P_std²)) for edm (EDM training/loss.py
        `EDMLoss`), σ_t at uniform t for ddpm (the timestep samplers draw t themselves)."""
        if self.kind == "ve":
            idx = torch.randint(len(self.levels), (batch,), generator=generator, device=device)
            return self.levels.to(device=device, dtype=dtype)[idx]
        if self.kind == "edm":
            z = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
            return (z * self.P_std + self.P_mean).exp().to(dtype)
        if self.kind == "ddpm":
            t = torch.randint(self.schedule.T, (batch,), generator=generator, device=device)
            return self.schedule.sigmas.to(device)[t].to(dtype)
        sde = self.sde
        t = torch.rand(batch, generator=generator, device=device, dtype=torch.float64) * (1 - sde.eps) + sde.eps
        return sde.sigma(t).to(dtype)


def _above(n: Any, hi: str, lo: str) -> None:
    if getattr(n, hi) <= getattr(n, lo):
        raise ConfigError(f"noise.{hi}: {show(getattr(n, hi))} is not above noise.{lo}={show(getattr(n, lo))} "
                          f"({hi} > {lo})")


def make_noise(n: Any) -> Noise:
    """The `Noise` of the noise.* record `n` (σ_max > σ_min, and β rising where β's are read)."""
    kind = n.kind
    _above(n, "sigma_max", "sigma_min")
    if kind == "ddpm" and n.beta_schedule == "linear":
        _above(n, "beta_end", "beta_start")
        if n.beta_end * 1000.0 / n.num_scales >= 1:  # β's given at T = 1000, rescaled by 1000/T (linear_betas)
            raise ConfigError(f"noise.num_scales: {n.num_scales} is too few for noise.beta_end={show(n.beta_end)} "
                              f"(β_T = beta_end·1000/num_scales must stay below 1)")
    if kind in ("vp", "subvp"):
        _above(n, "beta_max", "beta_min")
    if kind == "ve":
        return Noise(kind, n.num_scales, n.sigma_max, n.sigma_min, (n.sigma_max, n.sigma_min),
                     levels=geometric_sigmas(n.sigma_max, n.sigma_min, n.num_scales))
    if kind == "edm":
        return Noise(kind, n.num_scales, n.sigma_max, n.sigma_min, (n.sigma_max, n.sigma_min), P_mean=n.P_mean,
                     P_std=n.P_std)
    if kind == "ddpm":
        sched = (DDPMSchedule.linear(n.num_scales, n.beta_start, n.beta_end) if n.beta_schedule == "linear"
                 else DDPMSchedule.cosine(n.num_scales))
        s = sched.sigmas
        return Noise(kind, n.num_scales, float(s[-1]), float(s[0]), (float(s[-1]), float(s[0])), schedule=sched)
    if kind == "ve_continuous":
        sde = VESDE(n.sigma_min, n.sigma_max, eps=n.eps)
        return Noise(kind, n.num_scales, n.sigma_max, n.sigma_min, (n.sigma_max, n.sigma_min), sde=sde)
    if kind not in ("vp", "subvp"):
        raise ConfigError(f"noise.kind: {kind!r} is not allowed (one of: {', '.join(NOISE_KINDS)})")
    sde = (VPSDE if kind == "vp" else SubVPSDE)(n.beta_min, n.beta_max, eps=n.eps, sampling_eps=n.sampling_eps)
    # score_sde run_lib.py samples from t = sampling_eps (1e-3); likelihood.py integrates from eps (1e-5)
    return Noise(kind, n.num_scales, float(sde.sigma(1.0)), float(sde.sigma(sde.sampling_eps)),
                 (float(sde.sigma(1.0)), float(sde.sigma(sde.eps))), sde=sde)
