"""The noise process of a config (noise.*), built once as a `schedules.Noise`: its kind, the NCSN levels,
the DDPM schedule or the SDE, the σ ranges of the samplers and of the likelihood, and how training draws σ."""

from __future__ import annotations

from typing import Any

from ..schedules import NOISE_KINDS, VESDE, VPSDE, DDPMSchedule, Noise, SubVPSDE, geometric_sigmas
from .declare import ConfigError, show


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
