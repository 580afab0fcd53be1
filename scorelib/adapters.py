"""Conversions between score, ε, denoised x̂₀ and v-prediction, and model adapters into σ-space.

σ-space (docs/design.md §1): x_σ = x₀ + σz, score s = ∇ₓ log p_σ(x). Tweedie:
    D = x + σ² s,   ε = -σ s,   x_t = √ᾱ x_σ with ᾱ = 1/(1+σ²).
Every function takes `sigma` as a [B] tensor (or a float) and broadcasts it with `append_dims`.
"""

from __future__ import annotations

from collections.abc import Callable

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


# --- model adapters ---------------------------------------------------------------------------


class EpsToScore(nn.Module):
    """A DDPM ε-network ε(x_t, t) as a σ-space score model (docs/design.md §1):

        s(x, σ) = -ε(x/√(1+σ²), t(σ)) / σ

    t(σ) is the table index at table values and is interpolated in log σ between them (a float
    tensor; pass `quantize=True` to round to int64 for networks that only accept integers).
    `rescale_timesteps=True` feeds t · 1000/T instead (T = len(alphas_cumprod)), as improved-diffusion
    does with its default `rescale_timesteps=True` (gaussian_diffusion.py `_scale_timesteps`; respace.py
    `_WrappedModel` rescales the original timestep the same way).
    Extra keyword arguments (e.g. class labels `y`) are passed to the network.

    `learned_variance`: the network returns [ε, raw] with 2C channels (improved-diffusion's
    LEARNED_RANGE); the score uses ε, and `score_and_variance` also returns the interpolation
    fraction v = (raw + 1)/2 of log Σ = v log β + (1 - v) log β̃ for `ddpm_ancestral(variance="learned")`.
    """

    def __init__(self, eps_model: nn.Module, alphas_cumprod: Tensor, learned_variance: bool = False, *,
                 quantize: bool = False, rescale_timesteps: bool = False):
        super().__init__()
        self.eps_model = eps_model
        self.quantize = quantize
        self.rescale_timesteps = rescale_timesteps
        self.learned_variance = learned_variance
        self.register_buffer("sigmas", vp_sigmas(alphas_cumprod), persistent=False)

    def _output(self, x: Tensor, sigma: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        """The network's raw output at x_t = x/√(1+σ²), t(σ), and σ broadcast against x."""
        sigma = batch_sigma(sigma, x)
        t = sigma_to_timestep(sigma, self.sigmas)
        t = t.round().long() if self.quantize else t.to(x.dtype)
        if self.rescale_timesteps:
            t = t.to(x.dtype) * (1000.0 / self.sigmas.shape[0])
        s = append_dims(sigma, x.ndim)
        return self.eps_model(x / (1 + s**2).sqrt(), t, **kwargs), s

    def forward(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        """x: [B, ...] at noise level sigma: [B] (or a float). Returns the score, x's shape."""
        eps, s = self._output(x, sigma, **kwargs)
        if self.learned_variance:
            eps = eps[:, : x.shape[1]]
        return -eps / s

    def score_and_variance(self, x: Tensor, sigma: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        """(score, v), both x's shape: v = (raw + 1)/2 ∈ [0, 1] weights log β against log β̃
        (improved-diffusion gaussian_diffusion.py `p_mean_variance`, LEARNED_RANGE)."""
        if not self.learned_variance:
            raise ValueError("score_and_variance needs EpsToScore(..., learned_variance=True)")
        out, s = self._output(x, sigma, **kwargs)
        c = x.shape[1]
        return -out[:, :c] / s, (out[:, c:] + 1) / 2


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


class ContinuousEpsToScore(nn.Module):
    """A score_sde continuous-time VP / sub-VP network as a σ-space score model.

    score_sde evaluates `out = model(x_t, t · label_scale)` (label_scale = 999 for its continuous
    DDPM++ / NCSN++ VP models) and the score as -out/std(t). With x_t = m(t) x_σ the σ-space score is
    m · ∇_{x_t} log p_t = -out · m/std = -out/σ for both VP and sub-VP, with t = t(σ) from the SDE.
    """

    def __init__(self, model: nn.Module, sde: SDE, label_scale: float = 999.0):
        super().__init__()
        self.model = model
        self.sde = sde
        self.label_scale = label_scale

    def forward(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        sigma = batch_sigma(sigma, x)
        t = self.sde.t_of_sigma(sigma.to(_hp(x.device)))
        m = append_dims(self.sde.mean_scale(t).to(x.dtype), x.ndim)
        out = self.model(m * x, (t * self.label_scale).to(x.dtype), **kwargs)
        return -out / append_dims(sigma, x.ndim)


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


class IndexedScore(nn.Module):
    """A network conditioned on a noise-level *index* (NCSN: labels into σ_1 > … > σ_L) as a σ-space
    score model: σ maps to the nearest level in log σ. `net(x, labels: int64 [B]) -> score`."""

    def __init__(self, net: nn.Module, sigmas: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("sigmas", sigmas.to(torch.float64), persistent=False)

    def forward(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        sigma = batch_sigma(sigma, x).to(_hp(x.device))
        dist = (sigma.log()[:, None] - self.sigmas.to(sigma)[None, :].log()).abs()
        return self.net(x, dist.argmin(dim=1), **kwargs)


# --- guidance: score-model transformers ---------------------------------------------------------


class ClassifierGuidance(nn.Module):
    """s(x | y) = s(x, σ) + w ∇ₓ log p_φ(y | x, σ) (Dhariwal & Nichol 2021, Song et al. 2021b eq. 14).

    `classifier(x, sigma) -> logits [B, K]` is σ-space (wrap a DDPM noisy classifier with
    `VPClassifier`); y: int64 [B]; w: the guidance scale (w = 1 is the exact conditional score).

    The scale convention of guided-diffusion: `convention="score"` shifts the score (its
    `condition_score`, used for DDIM: ε' = ε - √(1-ᾱ) w∇ log p, the same as above); `convention="mean"`
    leaves the score as it is and `ddpm_ancestral(..., guidance=self.guidance_grad)` shifts the
    ancestral mean by Σ w∇ log p (its `condition_mean`, used by `p_sample`), so the published scales
    of both samplers carry over.
    """

    def __init__(self, score_model: ScoreFn, classifier: Callable[[Tensor, Tensor], Tensor], y: Tensor, w: float,
                 convention: str = "score"):
        super().__init__()
        if convention not in ("score", "mean"):
            raise ValueError(f"convention must be 'score' or 'mean', got {convention!r}")
        self.score_model, self.classifier, self.w, self.convention = score_model, classifier, w, convention
        self.register_buffer("y", y, persistent=False)

    def classifier_grad(self, x: Tensor, sigma: Tensor) -> Tensor:
        """∇ₓ log p_φ(y | x, σ), x's shape."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.classifier(xg, sigma)
            # at least float32 (AMP logits), float64 kept: guided-diffusion's log_softmax of the logits
            logp = torch.log_softmax(logits.float() if logits.element_size() < 4 else logits, dim=-1)
            picked = logp.gather(1, self.y[:, None].to(logp.device)).sum()
            (grad,) = torch.autograd.grad(picked, xg)
        return grad

    def guidance_grad(self, x: Tensor, sigma: Tensor) -> Tensor:
        """w ∇ₓ log p_φ(y | x, σ) in σ-space coordinates, x's shape."""
        return self.w * self.classifier_grad(x, batch_sigma(sigma, x))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_sigma(sigma, x)
        base = self.score_model(x, sigma)
        return base if self.convention == "mean" else base + self.guidance_grad(x, sigma)

    def score_and_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(guided score, v) of a learned-variance base model (see `EpsToScore.score_and_variance`)."""
        sigma = batch_sigma(sigma, x)
        score, v = self.score_model.score_and_variance(x, sigma)
        return (score if self.convention == "mean" else score + self.guidance_grad(x, sigma)), v


class ClassifierFreeGuidance(nn.Module):
    """s = (1 + w) s(x, σ, y) - w s(x, σ, ∅) (Ho & Salimans 2022, eq. 6), both in one batched call.

    `model(x, sigma, y=labels)` is a conditional σ-space score model; `null_label` is its ∅ class.
    """

    def __init__(self, model: Callable[..., Tensor], y: Tensor, w: float, null_label: int):
        super().__init__()
        self.model, self.w, self.null_label = model, w, null_label
        self.register_buffer("y", y, persistent=False)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_sigma(sigma, x)
        y = self.y.to(x.device)
        labels = torch.cat([y, torch.full_like(y, self.null_label)])
        out = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), y=labels)
        cond, uncond = out.chunk(2)
        return torch.lerp(uncond, cond, 1 + self.w)


class VPClassifier(nn.Module):
    """A DDPM noisy-image classifier `classifier(x_t, t)` as a σ-space classifier(x, σ): it sees
    x_t = x/√(1+σ²) at t(σ), so autograd gives ∇ of log p(y | x_σ) in σ-space coordinates."""

    def __init__(self, classifier: nn.Module, alphas_cumprod: Tensor, quantize: bool = False):
        super().__init__()
        self.classifier, self.quantize = classifier, quantize
        self.register_buffer("sigmas", vp_sigmas(alphas_cumprod), persistent=False)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_sigma(sigma, x)
        t = sigma_to_timestep(sigma, self.sigmas)
        t = t.round().long() if self.quantize else t.to(x.dtype)
        return self.classifier(x / append_dims(1 + sigma**2, x.ndim).sqrt(), t)
