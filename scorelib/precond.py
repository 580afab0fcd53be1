"""One conditioning per network (docs/design.md §4a): a σ-space wrapper that owns how a network sees
a noise level and what its output means, so training, sampling and likelihoods cannot disagree.

A wrapper turns x [B, ...] at σ [B] into the network's inputs (`inputs`: the scaled x, the noise label
and keyword arguments such as class labels) and the network's output into one of three kinds
(`output`): the score s, the noise ε, or the denoised D. Every other quantity follows from Tweedie's
identities (docs/design.md §1): D = x + σ² s, ε = -σ s. So

    wrapper(x, sigma)           -> score, x's shape      (a score model: every sampler takes it)
    wrapper.denoise(x, sigma)   -> D                     (EDM's D(x; σ), the EDM loss)
    wrapper.eps(x, sigma)       -> ε                     (L_simple, the VLB)
    wrapper.raw(x, sigma)       -> the network's output  (all channels, learned variance included)

each computed from the output kind directly (ε → score is -ε/σ, never through D), so no path loses
digits at small σ. Extra keyword arguments (class labels `y`, EDM's `augment_labels`) go to the network.

The wrappers of scorelib's networks live here: `ScorePrecond` (the network takes σ and returns the
score), `IndexedScore` (NCSN: the level index), `EpsToScore` (DDPM ε-networks on a discrete
schedule), `ContinuousEpsToScore` (score_sde VP / sub-VP), and EDM's Table 1 (`EDMPrecond`, `VPPrecond`,
`VEPrecond`, `IDDPMPrecond`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import _hp, sigma_to_timestep
from .schedules import SDE, VPSDE, alphas_cumprod_from_betas, cosine_betas, vp_sigmas
from .utils import append_dims, batch_sigma

OUTPUT_KINDS = ("score", "eps", "denoised")


def convert(x: Tensor, sigma: Tensor, value: Tensor, kind: str, to: str) -> Tensor:
    """`value`, a prediction of kind `kind` for x at σ [B], as kind `to` (Tweedie: D = x + σ²s = x - σε)."""
    if kind == to:
        return value
    s = append_dims(sigma, x.ndim)
    if kind == "score":
        return -s * value if to == "eps" else x + s**2 * value
    if kind == "eps":
        return -value / s if to == "score" else x - s * value
    if kind == "denoised":
        return (value - x) / s**2 if to == "score" else (x - value) / s
    raise ValueError(f"unknown output kind {kind!r} (one of {', '.join(OUTPUT_KINDS)})")


class Precond(nn.Module):
    """The base of every network's σ-space wrapper.

    Subclasses set `output` (score | eps | denoised) and implement `inputs`; `predict` turns the raw
    output into that kind (the first C channels by default; EDM's c_skip·x + c_out·F overrides it).
    `learned_variance`: the network returns 2C channels, the last C the interpolation fraction of the
    improved-DDPM variance (`score_and_variance`).
    """

    output = "score"

    def __init__(self, net: nn.Module | Any, learned_variance: bool = False):
        super().__init__()
        self.net = net
        self.learned_variance = learned_variance

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """(network input, noise label, keyword arguments) for x [B, ...] at sigma [B]."""
        raise NotImplementedError

    def round_sigma(self, sigma: Tensor) -> Tensor:
        """The nearest σ the network is defined at (EDM's `round_sigma`; the identity for continuous σ)."""
        return sigma

    def raw(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        """The network's raw output for x [B, ...] at sigma [B] (or a float)."""
        x_in, label, kw = self.inputs(x, batch_sigma(sigma, x), **cond)
        return self.net(x_in, label, **kw)

    def predict(self, x: Tensor, sigma: Tensor, raw: Tensor) -> Tensor:
        """The prediction of kind `output` from the raw output (its first C channels)."""
        return raw[:, : x.shape[1]] if self.learned_variance else raw

    def _as(self, to: str, x: Tensor, sigma: Tensor | float, cond: dict[str, Any]) -> Tensor:
        sigma = batch_sigma(sigma, x)
        return convert(x, sigma, self.predict(x, sigma, self.raw(x, sigma, **cond)), self.output, to)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        """The score ∇ₓ log p_σ(x), x's shape."""
        return self._as("score", x, sigma, cond)

    def denoise(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        """D(x; σ) = E[x₀ | x], x's shape."""
        return self._as("denoised", x, sigma, cond)

    def eps(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        """ε(x; σ) = (x - D)/σ, x's shape."""
        return self._as("eps", x, sigma, cond)

    def prediction_and_variance(self, x: Tensor, sigma: Tensor | float, to: str,
                                **cond: Any) -> tuple[Tensor, Tensor]:
        """(prediction of kind `to`, v), both x's shape: v = (raw + 1)/2 weights log β against log β̃
        (improved-diffusion gaussian_diffusion.py `p_mean_variance`, LEARNED_RANGE)."""
        if not self.learned_variance:
            raise ValueError(f"{type(self).__name__} has no learned variance (learned_variance=False)")
        sigma = batch_sigma(sigma, x)
        raw = self.raw(x, sigma, **cond)
        c = x.shape[1]
        return convert(x, sigma, self.predict(x, sigma, raw), self.output, to), (raw[:, c:] + 1) / 2

    def score_and_variance(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        """(score, v) of a learned-variance network (`ddpm_ancestral(variance="learned")`)."""
        return self.prediction_and_variance(x, sigma, "score", **cond)

    def eps_and_variance(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        """(ε, v) of a learned-variance network (the VLB and hybrid losses)."""
        return self.prediction_and_variance(x, sigma, "eps", **cond)


class ScorePrecond(Precond):
    """A network that takes σ itself and returns the score: `net(x, sigma, **cond) -> s` (NCSNv2,
    score_sde's continuous VE NCSN++, the toy MLP and conv nets, which scale by σ inside)."""

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return x, sigma, cond


class IndexedScore(Precond):
    """A network conditioned on a noise-level *index* (NCSN: labels into σ_1 > … > σ_L; score_sde's
    discrete VE NCSN++): σ maps to the nearest level in log σ. `net(x, labels: int64 [B]) -> score`."""

    def __init__(self, net: nn.Module | Any, sigmas: Tensor):
        super().__init__(net)
        self.register_buffer("sigmas", sigmas.to(torch.float64), persistent=False)

    def level(self, sigma: Tensor) -> Tensor:
        """The index [B] (int64) of the level nearest to σ [B] in log σ."""
        s = sigma.to(_hp(sigma.device))
        return (s.log()[:, None] - self.sigmas.to(s)[None, :].log()).abs().argmin(dim=1)

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.sigmas.to(sigma.device)[self.level(sigma)].to(sigma.dtype)

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return x, self.level(sigma), cond


class EpsToScore(Precond):
    """A DDPM ε-network ε(x_t, t) on a discrete schedule as a σ-space model (docs/design.md §1):

        x_t = x/√(1+σ²),   label t(σ),   s(x, σ) = -ε/σ

    t(σ) is the table index at table values and is interpolated in log σ between them (a float
    tensor; `quantize=True` rounds to int64 for networks that only accept integers).
    `rescale_timesteps=True` feeds t · 1000/T instead (T = len(alphas_cumprod)), as improved-diffusion
    does with its default `rescale_timesteps=True` (gaussian_diffusion.py `_scale_timesteps`, in its
    training losses, its samplers and `calc_bpd_loop` alike; respace.py `_WrappedModel`).
    `learned_variance`: the network returns [ε, raw] with 2C channels (improved-diffusion's LEARNED_RANGE).
    """

    output = "eps"

    def __init__(self, eps_model: nn.Module | Any, alphas_cumprod: Tensor, learned_variance: bool = False, *,
                 quantize: bool = False, rescale_timesteps: bool = False):
        super().__init__(eps_model, learned_variance)
        self.quantize = quantize
        self.rescale_timesteps = rescale_timesteps
        self.register_buffer("sigmas", vp_sigmas(alphas_cumprod), persistent=False)

    def timestep(self, sigma: Tensor) -> Tensor:
        """The network's time label for σ [B]: t(σ) (rounded with `quantize`), times 1000/T with
        `rescale_timesteps`; float in σ's dtype, or int64 when quantised and not rescaled."""
        t = sigma_to_timestep(sigma, self.sigmas)
        t = t.round().long() if self.quantize else t.to(sigma.dtype)
        if self.rescale_timesteps:
            t = t.to(sigma.dtype) * (1000.0 / self.sigmas.shape[0])
        return t

    def round_sigma(self, sigma: Tensor) -> Tensor:
        if not self.quantize:
            return sigma
        t = sigma_to_timestep(sigma, self.sigmas).round().long()
        return self.sigmas.to(sigma.device)[t].to(sigma.dtype)

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return x / append_dims(1 + sigma**2, x.ndim).sqrt(), self.timestep(sigma), cond


class ContinuousEpsToScore(Precond):
    """A score_sde continuous-time VP / sub-VP network as a σ-space model.

    score_sde evaluates `out = model(x_t, t · label_scale)` (label_scale = 999 for its continuous
    DDPM++ / NCSN++ VP models) and the score as -out/std(t). With x_t = m(t) x_σ the σ-space score is
    m · ∇_{x_t} log p_t = -out · m/std = -out/σ for both VP and sub-VP, with t = t(σ) from the SDE:
    the network's output is ε.
    """

    output = "eps"

    def __init__(self, model: nn.Module | Any, sde: SDE, label_scale: float = 999.0):
        super().__init__(model)
        self.sde = sde
        self.label_scale = label_scale

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        t = self.sde.t_of_sigma(sigma.to(_hp(x.device)))
        m = append_dims(self.sde.mean_scale(t).to(x.dtype), x.ndim)
        return m * x, (t * self.label_scale).to(x.dtype), cond


class VPClassifier(nn.Module):
    """A DDPM noisy-image classifier `classifier(x_t, t) -> logits [B, K]` as a σ-space classifier(x, σ).

    It sees exactly the inputs `EpsToScore` gives an ε-network on the same schedule (x_t = x/√(1+σ²) at
    t(σ)), the one conditioning of both, so autograd gives ∇ of log p(y | x_σ) in σ-space coordinates.
    """

    def __init__(self, classifier: nn.Module | Any, alphas_cumprod: Tensor, quantize: bool = False):
        super().__init__()
        self.classifier = classifier
        self.conditioning = EpsToScore(None, alphas_cumprod, quantize=quantize)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        x_in, t, kw = self.conditioning.inputs(x, batch_sigma(sigma, x))
        return self.classifier(x_in, t, **kw)


# ---------------------------------------------------------------------------------------------
# EDM's preconditionings (Karras et al. 2022, Table 1): D(x; σ) = c_skip x + c_out F(c_in x; c_noise).
# One class per column of Table 1; EDM training/networks.py `EDMPrecond`, `VPPrecond`, `VEPrecond`,
# `iDDPMPrecond` define the same coefficients. The wrappers pass class labels (`y`) and augmentation
# labels (`augment_labels` [B, 9]) through to the network untouched.
# ---------------------------------------------------------------------------------------------


class EDMPrecond(Precond):
    """EDM's own preconditioning (Table 1, "EDM" column), for a network F(c_in x, c_noise, **cond):

        c_skip = σ_d²/(σ² + σ_d²),  c_out = σ σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),  c_noise = ¼ ln σ.

    `output` is "denoised"; ε and the score are computed from F directly (ε = (x - D)/σ =
    σx/(σ² + σ_d²) - σ_d F/√(σ² + σ_d²)), so neither loses digits at small or large σ.
    `sigma_min` / `sigma_max` are the levels the network supports (EDM's sampler clamps its grid to
    them; 0 and ∞ as in EDM). Coefficients are computed in float64 and cast to x's dtype.
    """

    output = "denoised"

    def __init__(self, net: nn.Module | Any, sigma_data: float = 0.5, *, sigma_min: float = 0.0,
                 sigma_max: float = math.inf):
        super().__init__(net)
        self.sigma_data = float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def noise_label(self, sigma: Tensor) -> Tensor:
        """c_noise = ¼ ln σ, float64 [B]."""
        return sigma.to(_hp(sigma.device)).log() / 4

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        s = sigma.to(_hp(x.device))
        c_in = (s**2 + self.sigma_data**2).rsqrt()
        return append_dims(c_in.to(x.dtype), x.ndim) * x, self.noise_label(sigma).to(x.dtype), cond

    def _as(self, to: str, x: Tensor, sigma: Tensor | float, cond: dict[str, Any]) -> Tensor:
        sigma = batch_sigma(sigma, x)
        return self.from_raw(to, x, sigma, self.raw(x, sigma, **cond))

    def from_raw(self, to: str, x: Tensor, sigma: Tensor, raw: Tensor) -> Tensor:
        """D, ε or the score (`to`) of x [B, ...] at σ [B] from the network's output F."""
        s, sd2 = sigma.to(_hp(x.device)), self.sigma_data**2
        norm = (s**2 + sd2).rsqrt()

        def coef(v: Tensor) -> Tensor:
            return append_dims(v.to(x.dtype), x.ndim)

        if to == "denoised":
            return coef(sd2 * norm**2) * x + coef(s * self.sigma_data * norm) * raw
        eps = coef(s * norm**2) * x - coef(self.sigma_data * norm) * raw
        if to == "eps":
            return eps
        if to == "score":
            return -eps / coef(s)
        raise ValueError(f"unknown output kind {to!r} (one of {', '.join(OUTPUT_KINDS)})")


class VPPrecond(ContinuousEpsToScore):
    """EDM's VP preconditioning (Table 1, "VP" column): c_skip = 1, c_out = -σ, c_in = 1/√(σ² + 1),
    c_noise = (M - 1) t(σ), with σ(t) = √(exp(½β_d t² + β_min t) - 1).

    This is score_sde's continuous VP network convention, so it is `ContinuousEpsToScore` on the VP SDE
    with β(t) = β_min + β_d t (β_max = β_min + β_d) and label scale M - 1 (999): the network's output
    is ε, D = x - σε. `sigma_min` = σ(ε_t) and `sigma_max` = σ(1) are the levels it was trained on
    (EDM's sampler clamps its grid to them); ε_t is also the smallest t of `vp_loss`.
    """

    def __init__(self, net: nn.Module | Any, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5):
        sde = VPSDE(beta_min=beta_min, beta_max=beta_min + beta_d, eps=epsilon_t)
        super().__init__(net, sde, label_scale=M - 1)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = float(beta_d), float(beta_min), int(M), float(epsilon_t)
        self.sigma_min = float(sde.sigma(epsilon_t))
        self.sigma_max = float(sde.sigma(1.0))


class VEPrecond(Precond):
    """EDM's VE preconditioning (Table 1, "VE" column): c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(½σ).

    D = x + σF, so F = -ε: the wrapper's output kind is "eps" with ε = -F (exact), and the score is
    F/σ. `sigma_min` / `sigma_max` (0.02, 100) are EDM's supported range, used by its sampler and by
    `ve_loss`'s defaults.
    """

    output = "eps"

    def __init__(self, net: nn.Module | Any, *, sigma_min: float = 0.02, sigma_max: float = 100.0):
        super().__init__(net)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return x, (sigma.to(_hp(x.device)) / 2).log().to(x.dtype), cond

    def predict(self, x: Tensor, sigma: Tensor, raw: Tensor) -> Tensor:
        return -raw


def iddpm_alphas_cumprod(C_1: float = 0.001, C_2: float = 0.008, M: int = 1000) -> Tensor:
    """ᾱ_t (t = 0..M-1, float64) of EDM's iDDPM preconditioning (Table 1, "iDDPM" column): the levels
    u_j, u_M = 0, u_{j-1} = √((u_j² + 1)/max(ᾱ(j-1)/ᾱ(j), C_1) - 1) with ᾱ(j) = sin²(π j/(2M(C_2 + 1))),
    are the σ_t = √(1/ᾱ_t - 1) of improved DDPM's cosine schedule with s = C_2 and β clipped at
    1 - C_1 (t = M - 1 - j), so they come from `cosine_betas`."""
    return alphas_cumprod_from_betas(cosine_betas(M, s=C_2, max_beta=1 - C_1))


class IDDPMPrecond(EpsToScore):
    """EDM's iDDPM preconditioning (Table 1, "iDDPM" column): c_skip = 1, c_out = -σ, c_in = 1/√(σ² + 1),
    c_noise = M - 1 - j(σ), j(σ) the index of the level u_j nearest to σ (EDM training/networks.py
    `iDDPMPrecond.round_sigma`: nearest in σ, not in log σ).

    An improved-DDPM ε-network on the cosine schedule of `iddpm_alphas_cumprod`: `EpsToScore` with the
    timestep rounded to the nearest level. The network returns [ε, v] (2C channels, the learned variance
    of improved DDPM) when `learned_variance` (EDM's ADM models do; D uses the first C channels).
    `round_sigma` maps σ to the nearest u_j with j < M: EDM's grid also holds u_M = 0, which only σ
    below u_{M-1}/2 ≈ 0.0032 would round to; here those round to u_{M-1}, the smallest level the
    network was trained at. `sigma_min` = u_{M-1}, `sigma_max` = u_0.
    """

    def __init__(self, net: nn.Module | Any, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                 learned_variance: bool = True):
        super().__init__(net, iddpm_alphas_cumprod(C_1, C_2, M), learned_variance=learned_variance)
        self.C_1, self.C_2, self.M = float(C_1), float(C_2), int(M)
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def level_index(self, sigma: Tensor) -> Tensor:
        """t(σ) = the index (int64 [B]) of the table level nearest to σ [B]."""
        s = sigma.to(_hp(sigma.device))
        tab = self.sigmas.to(s.device, s.dtype)
        return (s[:, None] - tab[None, :]).abs().argmin(dim=1)

    def timestep(self, sigma: Tensor) -> Tensor:
        """c_noise = M - 1 - j(σ) = t(σ) as σ's float dtype (EDM passes a float label)."""
        return self.level_index(sigma).to(sigma.dtype)

    def round_sigma(self, sigma: Tensor) -> Tensor:
        """The level nearest to σ (any shape), in σ's dtype and device."""
        flat = torch.as_tensor(sigma).reshape(-1)
        return self.sigmas.to(flat.device)[self.level_index(flat)].to(flat.dtype).reshape(torch.as_tensor(sigma).shape)



# ---------------------------------------------------------------------------------------------
# EDM2 (Karras et al. 2024): EDM's preconditioning and the learned uncertainty of the loss
# ---------------------------------------------------------------------------------------------


class EDM2Precond(EDMPrecond):
    """EDM2's network (`scorelib.models.edm2.EDM2Network`) as a σ-space model: EDM's preconditioning with
    c_noise = ln(σ)/4 (EDM2 training/networks_edm2.py `Precond`), plus the learned log-variance u(σ) that
    weights the loss (EDM2 eq. 21): `denoise_and_logvar`. Keyword arguments (class labels `y`) go to the
    network. `use_fp16`: run the network in float16 on CUDA, as EDM2 samples its released models (D is
    returned in x's dtype)."""

    def __init__(self, net: nn.Module | Any, sigma_data: float = 0.5, use_fp16: bool = False):
        super().__init__(net, sigma_data)
        self.use_fp16 = use_fp16

    def noise_label(self, sigma: Tensor) -> Tensor:
        """c_noise = ln(σ)/4 in σ's own dtype, as EDM2 computes it: its MP Fourier features are sensitive
        enough to the label's last bit that a float64 label moves the output by ~2e-5."""
        return sigma.log() / 4

    def inputs(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        x_in, label, cond = super().inputs(x, sigma, **cond)
        return (x_in.half() if self.use_fp16 and x.device.type == "cuda" else x_in), label, cond

    def raw(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        return super().raw(x, sigma, **cond).to(x.dtype)

    def denoise_and_logvar(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        """(D(x; σ), x's shape; u(σ), [B]) from one network evaluation: what `losses.edm2_loss` needs."""
        sigma = batch_sigma(sigma, x)
        x_in, label, kw = self.inputs(x, sigma, **cond)
        denoised = self.from_raw("denoised", x, sigma, self.net(x_in, label, **kw).to(x.dtype))
        return denoised, self.net.logvar(label).to(x.dtype)
