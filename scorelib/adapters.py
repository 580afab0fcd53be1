"""Conversions between score, ε, denoised x̂₀ and v-prediction; timestep ↔ σ lookup; the inverse adapters
(a σ-space score model as a DDPM or score_sde network). The networks' own σ-space wrappers are in
`scorelib.precond`, guidance in `scorelib.guidance`.

σ-space (docs/design.md §1): x_σ = x₀ + σz, score s = ∇ₓ log p_σ(x). Tweedie:
    D = x + σ² s,   ε = -σ s,   x_t = √ᾱ x_σ with ᾱ = 1/(1+σ²).
Every function takes `sigma` as a [B] tensor (or a float) and broadcasts it with `append_dims`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .schedules import SDE, vp_sigmas
from .utils import ScoreFn, append_dims, batch_sigma


def _sig(sigma: Tensor | float, x: Tensor) -> Tensor:
    return append_dims(batch_sigma(sigma, x), x.ndim)


# --- pure conversions at a noise level σ --------------------------------------------------------


def score_to_denoised(x: Tensor, score: Tensor, sigma: Tensor | float) -> Tensor:
    """Tweedie's formula D = x + σ² s. x, score: [B, ...]; sigma: [B], or one level as a Python number.

    A number (a sampler's level, on the host) takes one fused `torch.add(x, s, alpha=σ²)`: the
    samplers' per-step form (docs/design.md §2), with no σ tensor built inside a loop.
    """
    if not isinstance(sigma, Tensor):
        return torch.add(x, score, alpha=sigma**2)
    return x + _sig(sigma, x) ** 2 * score


def denoised_to_score(x: Tensor, denoised: Tensor, sigma: Tensor | float) -> Tensor:
    """s = (D - x)/σ²."""
    return (denoised - x) / _sig(sigma, x) ** 2


def score_to_eps(score: Tensor, sigma: Tensor | float) -> Tensor:
    """ε = -σ s."""
    return -_sig(sigma, score) * score


def eps_to_score(eps: Tensor, sigma: Tensor | float) -> Tensor:
    """s = -ε/σ."""
    return -eps / _sig(sigma, eps)


def eps_to_denoised(x: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
    """D = x - σ ε."""
    return x - _sig(sigma, x) * eps


def v_to_denoised(x: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """v-prediction (Salimans & Ho 2022, v = √ᾱ ε - √(1-ᾱ) x₀) to D, in σ-space coordinates.

    With x_t = x/√(1+σ²): x₀ = √ᾱ x_t - √(1-ᾱ) v = x/(1+σ²) - σ v/√(1+σ²).
    """
    s = _sig(sigma, x)
    return x / (1 + s**2) - s * v / (1 + s**2).sqrt()


def denoised_to_v(x: Tensor, denoised: Tensor, sigma: Tensor | float) -> Tensor:
    """Inverse of `v_to_denoised`: v = (ε - σ x₀)/√(1+σ²) with ε = (x - x₀)/σ."""
    s = _sig(sigma, x)
    eps = (x - denoised) / s
    return (eps - s * denoised) / (1 + s**2).sqrt()


def v_to_score(x: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """s from a v-prediction at σ."""
    return denoised_to_score(x, v_to_denoised(x, v, sigma), sigma)


# --- timestep ↔ σ lookup for discrete schedules -------------------------------------------------


def _hp(device: torch.device) -> torch.dtype:
    """float64 where the device has it (not on Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sigma_to_timestep(sigma: Tensor, table: Tensor) -> Tensor:
    """Fractional timestep t(σ) for an ascending σ table [T]: exact index at table values,
    linear in log σ between entries, clamped to [0, T-1]. sigma: [B]; returns float [B] (high precision).

    The table is first rounded to `sigma`'s dtype, so σ that was cast from a table value maps to
    exactly that integer.
    """
    hp = _hp(sigma.device)
    tab = table.to(sigma.device, sigma.dtype).to(hp)
    s = sigma.to(hp).contiguous()
    hi = torch.searchsorted(tab, s).clamp(1, tab.shape[0] - 1)
    lo = hi - 1
    log_lo, log_hi = tab[lo].log(), tab[hi].log()
    w = (s.log() - log_lo) / (log_hi - log_lo)
    return (lo.to(hp) + w).clamp(0, tab.shape[0] - 1)


def timestep_to_sigma(t: Tensor, table: Tensor) -> Tensor:
    """σ at a (possibly fractional) timestep: the table entry at integers, log-σ interpolation between.

    t: [B] int or float; table: ascending σ [T]. Returns high-precision float [B].
    """
    hp = _hp(t.device)
    tab = table.to(t.device, hp)
    tf = t.to(hp).clamp(0, tab.shape[0] - 1)
    lo = tf.floor().long().clamp(max=tab.shape[0] - 2)
    w = tf - lo.to(hp)
    return torch.exp((1 - w) * tab[lo].log() + w * tab[lo + 1].log())


# --- inverse adapters: a σ-space score model as a DDPM / score_sde network ------------------------


class ScoreToEps(nn.Module):
    """A σ-space score model as a DDPM ε-network: ε(x_t, t) = -σ_t s(x_t √(1+σ_t²), σ_t).

    t: int64 [B] (table index) or float [B] (log-σ interpolation between entries, matching EpsToScore).
    """

    def __init__(self, score_model: ScoreFn, alphas_cumprod: Tensor):
        super().__init__()
        self.score_model = score_model
        self.register_buffer("sigmas", vp_sigmas(alphas_cumprod), persistent=False)

    def forward(self, x_t: Tensor, t: Tensor, **kwargs) -> Tensor:
        """x_t: [B, ...] DDPM-scaled input; t: [B]. Returns ε, x_t's shape."""
        exact = not t.is_floating_point()  # integer timesteps index the table directly
        sigma = (self.sigmas.to(x_t.device)[t] if exact else timestep_to_sigma(t, self.sigmas)).to(x_t.dtype)
        s = append_dims(sigma, x_t.ndim)
        return -s * self.score_model(x_t * (1 + s**2).sqrt(), sigma, **kwargs)



class ScoreToContinuousEps(nn.Module):
    """The inverse of `ContinuousEpsToScore`: a σ-space score model as a score_sde-style network
    out(x_t, label) = -σ(t) s(x_t/m(t), σ(t)) with t = label / label_scale."""

    def __init__(self, score_model: ScoreFn, sde: SDE, label_scale: float = 999.0):
        super().__init__()
        self.score_model = score_model
        self.sde = sde
        self.label_scale = label_scale

    def forward(self, x_t: Tensor, label: Tensor, **kwargs) -> Tensor:
        t = label.to(_hp(x_t.device)) / self.label_scale
        m = append_dims(self.sde.mean_scale(t).to(x_t.dtype), x_t.ndim)
        sigma = self.sde.sigma(t).to(x_t.dtype)
        return -append_dims(sigma, x_t.ndim) * self.score_model(x_t / m, sigma, **kwargs)
