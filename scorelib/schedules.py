"""Noise-level grids, DDPM β schedules and continuous SDEs, all mapped to σ-space.

σ-space (docs/design.md §1): x_σ = x_0 + σ z. A DDPM / VP model with cumulative ᾱ sees
x_t = √ᾱ_t · x_σ with σ_t = √((1-ᾱ_t)/ᾱ_t). Schedule arithmetic runs in float64; callers cast.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .utils import append_dims

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# σ grids
# ---------------------------------------------------------------------------------------------


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> Tensor:
    """NCSN noise levels: `n` geometric steps from σ_max down to σ_min. Returns float64 [n], descending."""
    _check_range(sigma_max, sigma_min, n)
    if n == 1:
        return torch.tensor([sigma_max], dtype=F64)
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=F64))


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> Tensor:
    """EDM grid (Karras et al. 2022, eq. 5): σ_i = (σ_max^{1/ρ} + i/(n-1)(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ.

    Returns float64 [n], descending from σ_max to σ_min (no trailing zero).
    """
    _check_range(sigma_max, sigma_min, n)
    if n == 1:
        return torch.tensor([sigma_max], dtype=F64)
    ramp = torch.linspace(0, 1, n, dtype=F64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def append_zero(sigmas: Tensor) -> Tensor:
    """Append a final σ = 0 (the last step then returns the denoised sample). [n] -> [n+1]."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_range(sigma_max: float, sigma_min: float, n: int) -> None:
    if not (sigma_max > sigma_min > 0):
        raise ValueError(f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if n < 1:
        raise ValueError(f"need n >= 1 noise levels, got {n}")


# ---------------------------------------------------------------------------------------------
# Discrete DDPM schedules
# ---------------------------------------------------------------------------------------------


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. 2020 linear β schedule. Returns float64 [T].

    `beta_start`/`beta_end` are the values at T = 1000; for other T they are rescaled by 1000/T
    (Nichol & Dhariwal 2021, `get_named_beta_schedule`) so the process keeps the same end point.
    """
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=F64)


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """ᾱ(t) of the cosine schedule for t ∈ [0, 1] (Nichol & Dhariwal 2021, eq. 17), normalised to ᾱ(0) = 1."""
    f = torch.cos((t.to(F64) + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule: β_t = 1 - ᾱ(t/T)/ᾱ((t-1)/T), clipped at `max_beta` (eq. 17). Returns float64 [T]."""
    steps = torch.arange(T + 1, dtype=F64) / T
    abar = cosine_alpha_bar(steps, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """ᾱ_t = Π_{s≤t} (1 - β_s), float64 [T]."""
    return torch.cumprod(1 - betas.to(F64), dim=0)


def vp_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """σ-space noise levels of a VP schedule: σ_t = √((1-ᾱ_t)/ᾱ_t). Returns float64, same shape."""
    a = alphas_cumprod.to(F64)
    return ((1 - a) / a).sqrt()


def sigma_to_alpha_bar(sigma: Tensor) -> Tensor:
    """Inverse of `vp_sigmas`: ᾱ = 1/(1+σ²)."""
    return 1 / (1 + sigma**2)


@dataclass(frozen=True, eq=False)
class DDPMSchedule:
    """The discrete Gaussian diffusion of Ho et al. 2020, as a value object (all buffers float64 [T]).

    q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I); the posterior q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) with
    μ̃_t = c1_t x_0 + c2_t x_t (eq. 7). Index t runs 0..T-1 (paper's t = 1..T).
    """

    betas: Tensor

    @staticmethod
    def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMSchedule:
        return DDPMSchedule(linear_betas(T, beta_start, beta_end))

    @staticmethod
    def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DDPMSchedule:
        return DDPMSchedule(cosine_betas(T, s, max_beta))

    def __post_init__(self) -> None:
        b = self.betas.to(F64)
        if b.ndim != 1 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        object.__setattr__(self, "betas", b)

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas_cumprod(self) -> Tensor:
        return alphas_cumprod_from_betas(self.betas)

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        return torch.cat([self.betas.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def sigmas(self) -> Tensor:
        """σ-space levels σ_t, float64 [T], ascending in t."""
        return vp_sigmas(self.alphas_cumprod)

    @property
    def posterior_variance(self) -> Tensor:
        """β̃_t = β_t (1-ᾱ_{t-1})/(1-ᾱ_t) (eq. 7); β̃_0 = 0."""
        return self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> Tensor:
        """log β̃_t with β̃_0 replaced by β̃_1 (β̃_0 = 0), as in Ho et al.'s code."""
        v = self.posterior_variance
        return torch.log(torch.cat([v[1:2], v[1:]]))

    def posterior_mean_coefs(self) -> tuple[Tensor, Tensor]:
        """(c1, c2) with μ̃_t = c1_t x_0 + c2_t x_t (eq. 7)."""
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        c1 = self.betas * a_prev.sqrt() / (1 - a)
        c2 = (1 - a_prev) * (1 - self.betas).sqrt() / (1 - a)
        return c1, c2

    def gather(self, table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """table[t] as `x`'s dtype/device, broadcastable against x ([B] -> [B,1,...])."""
        return append_dims(table.to(x.device)[t].to(x.dtype), x.ndim)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4). x0, noise: [B, ...]; t: int64 [B]."""
        a = self.gather(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x_0), each broadcastable to x0's shape."""
        c1, c2 = self.posterior_mean_coefs()
        mean = self.gather(c1, t, xt) * x0 + self.gather(c2, t, xt) * xt
        return mean, self.gather(self.posterior_log_variance_clipped, t, xt)

    def predict_x0(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x̂_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t."""
        a = self.gather(self.alphas_cumprod, t, xt)
        return (xt - (1 - a).sqrt() * eps) / a.sqrt()


def respace_timesteps(T: int, n: int, spacing: str = "uniform") -> Tensor:
    """A subsequence of `n` DDPM timesteps out of 0..T-1, descending (int64 [n]).

    spacing: "uniform" (improved-diffusion's `space_timesteps(T, str(n))`: round(k·(T-1)/(n-1)), see
    `space_timesteps`), "leading" (t = k·(T//n), diffusers' leading), "trailing" (t = T - 1 - k·T/n, rounded;
    DDIM's 'trailing' of Lin et al. 2024), "quadratic" (DDIM's quadratic: t = ⌊(k·√(0.8T)/(n-1))²⌋).
    """
    if not 1 <= n <= T:
        raise ValueError(f"number of respaced steps must be in [1, {T}], got {n}")
    k = torch.arange(n, dtype=F64)
    if spacing == "uniform":
        return space_timesteps(T, str(n))
    if spacing == "leading":
        ts = k * (T // n)
    elif spacing == "trailing":
        ts = (T - k * (T / n)).round() - 1
    elif spacing == "quadratic":
        ts = torch.floor(((k / max(n - 1, 1)) * math.sqrt(T * 0.8)) ** 2)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected uniform, leading, trailing or quadratic")
    ts = torch.unique(ts.long().clamp(0, T - 1))
    if ts.numel() != n:
        raise ValueError(f"{spacing} spacing of {n} steps out of {T} repeats timesteps; use fewer steps")
    return ts.flip(0)


def _section_steps(start: int, size: int, count: int) -> list[int]:
    """`count` timesteps spread over [start, start + size): start + round(c_k), where c_k are the running sums
    of the stride (size - 1)/(count - 1) (a float64 sum, so the k-th differs from k·stride in its last bits)
    and round() takes ties to even, exactly as improved-diffusion's loop."""
    stride = (size - 1) / (count - 1) if count > 1 else 1.0
    return [start + round(c) for c in itertools.accumulate([0.0] + [stride] * (count - 1))][:count]


def space_timesteps(T: int, sections: str) -> Tensor:
    """The timesteps of improved-/guided-diffusion's respacing strings, descending (int64), as their
    respace.py `space_timesteps(T, sections)` reads them:

    - "N1,N2,…": 0..T-1 cut into len equal sections (the first T mod len one step longer), section i
      keeping N_i timesteps evenly spread from its first to its last step ("25" is 25 steps over 0..T-1);
    - "ddimN": DDIM's fixed stride, range(0, T, s) for the smallest stride s ≥ 1 that gives N steps.
    Raises ValueError where the reference does (a section shorter than its count, no such stride).
    """
    sections = sections.strip()
    if sections.startswith("ddim"):
        n = int(sections[len("ddim"):])
        stride = next((s for s in range(1, T) if -(-T // s) == n), None)  # len(range(0, T, s)) = ⌈T/s⌉
        if stride is None:
            raise ValueError(f"cannot take exactly {n} of {T} timesteps with an integer stride")
        return torch.arange(0, T, stride, dtype=torch.long).flip(0)
    counts = [int(c) for c in sections.split(",")]
    base, extra = divmod(T, len(counts))
    steps, start = set(), 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} timesteps into {count}")
        steps.update(_section_steps(start, size, count))
        start += size
    return torch.tensor(sorted(steps, reverse=True), dtype=torch.long)


def timesteps_to_sigmas(alphas_cumprod: Tensor, timesteps: Tensor, final_zero: bool = True) -> Tensor:
    """σ grid for a descending DDPM timestep subsequence (float64), with a trailing 0 if `final_zero`.

    Sampling on this grid with `ddim` reproduces DDIM / DDPM on those timesteps (docs/design.md §1).
    """
    s = vp_sigmas(alphas_cumprod)[timesteps]
    return append_zero(s) if final_zero else s


# ---------------------------------------------------------------------------------------------
# Continuous SDEs (Song et al. 2021): marginal x_t = m(t) x_0 + s(t) z, σ(t) = s(t)/m(t)
# ---------------------------------------------------------------------------------------------


def _f64(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t, dtype=F64)


@dataclass(frozen=True)
class VESDE:
    """Variance exploding: dx = √(d σ²(t)/dt) dw, σ(t) = σ_min (σ_max/σ_min)^t (Song et al. 2021, eq. 30).

    Any tensor rank; arithmetic in float64 (inputs are promoted; cast results as needed).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    eps: float = 1e-5  # smallest t of training and likelihoods (score_sde losses.py / likelihood.py)
    sampling_eps: float = 1e-5  # smallest t the samplers reach (score_sde run_lib.py: 1e-5 for VE)

    def mean_scale(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(_f64(t))

    def marginal_std(self, t: Tensor | float) -> Tensor:
        return self.sigma(t)

    def sigma(self, t: Tensor | float) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _f64(t)

    def t_of_sigma(self, sigma: Tensor | float) -> Tensor:
        return torch.log(_f64(sigma) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def drift_coef(self, t: Tensor | float) -> Tensor:
        """f(t) with drift f(t)·x (zero for VE)."""
        return torch.zeros_like(_f64(t))

    def diffusion(self, t: Tensor | float) -> Tensor:
        """g(t) = σ(t) √(2 log(σ_max/σ_min))."""
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def discrete_sigmas(self, N: int) -> Tensor:
        """score_sde's NCSN table: N geometric levels from σ_min up to σ_max, float64 [N], ascending
        (sde_lib.py `VESDE.discrete_sigmas`; its reverse-diffusion and ancestral steps read it)."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), N, dtype=F64))

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        return self.sigma_max * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, x: Tensor) -> Tensor:
        """log N(x; 0, σ_max² I) per example, [B]."""
        return gaussian_logp(x, self.sigma_max)


@dataclass(frozen=True)
class VPSDE:
    """Variance preserving: dx = -½β(t) x dt + √β(t) dw, β(t) = β_0 + t(β_1-β_0) (eq. 32).

    m(t) = exp(-¼t²(β_1-β_0) - ½tβ_0), s(t) = √(1-m²), σ(t) = √((1-ᾱ)/ᾱ) with ᾱ = m².
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    eps: float = 1e-5  # smallest t of training and likelihoods (score_sde losses.py / likelihood.py)
    sampling_eps: float = 1e-3  # smallest t the samplers reach (score_sde run_lib.py: 1e-3 for VP / sub-VP)

    def log_mean_scale(self, t: Tensor | float) -> Tensor:
        t = _f64(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def mean_scale(self, t: Tensor | float) -> Tensor:
        return torch.exp(self.log_mean_scale(t))

    def marginal_std(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_mean_scale(t)))

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(torch.expm1(-2 * self.log_mean_scale(t)))

    def t_of_sigma(self, sigma: Tensor | float) -> Tensor:
        # ½(β1-β0)t² + β0 t = log(1+σ²)  (since -2 log m = log(1+σ²))
        return _solve_vp_time(torch.log1p(_f64(sigma) ** 2), self.beta_min, self.beta_max)

    def beta(self, t: Tensor | float) -> Tensor:
        return self.beta_min + _f64(t) * (self.beta_max - self.beta_min)

    def drift_coef(self, t: Tensor | float) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor | float) -> Tensor:
        return self.beta(t).sqrt()

    def discrete_betas(self, N: int) -> Tensor:
        """score_sde's DDPM table of N steps: linspace(β_min/N, β_max/N, N), float64 [N] (sde_lib.py
        `VPSDE.discrete_betas`; its reverse-diffusion, ancestral and corrector steps read it)."""
        return torch.linspace(self.beta_min / N, self.beta_max / N, N, dtype=F64)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, x: Tensor) -> Tensor:
        return gaussian_logp(x, 1.0)


@dataclass(frozen=True)
class SubVPSDE:
    """sub-VP: dx = -½β x dt + √(β(1 - e^{-2∫β})) dw (eq. 34): m as VP, s(t) = 1 - m², σ = (1-m²)/m."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    eps: float = 1e-5  # smallest t of training and likelihoods (score_sde losses.py / likelihood.py)
    sampling_eps: float = 1e-3  # smallest t the samplers reach (score_sde run_lib.py: 1e-3 for VP / sub-VP)

    def log_mean_scale(self, t: Tensor | float) -> Tensor:
        return VPSDE(self.beta_min, self.beta_max).log_mean_scale(t)

    def mean_scale(self, t: Tensor | float) -> Tensor:
        return torch.exp(self.log_mean_scale(t))

    def marginal_std(self, t: Tensor | float) -> Tensor:
        return -torch.expm1(2 * self.log_mean_scale(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        lm = self.log_mean_scale(t)
        return -torch.expm1(2 * lm) / torch.exp(lm)

    def t_of_sigma(self, sigma: Tensor | float) -> Tensor:
        s = _f64(sigma)
        m = 2 / (s + torch.sqrt(s**2 + 4))  # root of m² + σm - 1 = 0, written stably
        return _solve_vp_time(-2 * torch.log(m), self.beta_min, self.beta_max)

    def beta(self, t: Tensor | float) -> Tensor:
        return self.beta_min + _f64(t) * (self.beta_max - self.beta_min)

    def drift_coef(self, t: Tensor | float) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_mean_scale(t)))

    def discrete_betas(self, N: int) -> Tensor:
        """VP's table linspace(β_min/N, β_max/N, N), float64 [N]. score_sde's subVPSDE has none (its
        correctors, which read `sde.alphas`, raise AttributeError on sub-VP); scorelib's correctors use
        α = 1 - β of this table."""
        return VPSDE(self.beta_min, self.beta_max).discrete_betas(N)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, x: Tensor) -> Tensor:
        return gaussian_logp(x, 1.0)


SDE = VESDE | VPSDE | SubVPSDE


def pc_times(sde: SDE, n: int) -> Tensor:
    """score_sde's predictor-corrector time grid `torch.linspace(sde.T, eps, sde.N)` with eps =
    `sde.sampling_eps` (sampling.py `get_pc_sampler`), float64 [n], descending."""
    return torch.linspace(sde.T, sde.sampling_eps, n, dtype=F64)


def discrete_index(sde: SDE, times: Tensor, N: int) -> Tensor:
    """score_sde's table index of each time, `(t (N - 1) / T).long()` (sde_lib.py `discretize`,
    sampling.py predictors and correctors), computed in float64. int64, times' shape."""
    return (_f64(times) * (N - 1) / sde.T).long()


def _solve_vp_time(L: Tensor, b0: float, b1: float) -> Tensor:
    """Positive root t of ½(b1-b0)t² + b0 t = L, in the cancellation-free form 2L/(b0 + √(b0² + 2(b1-b0)L))."""
    return 2 * L / (b0 + torch.sqrt(b0**2 + 2 * (b1 - b0) * L))


def gaussian_logp(x: Tensor, std: Tensor | float) -> Tensor:
    """log N(x; 0, std² I) summed over all but the batch dim, [B] (float64 arithmetic, x's dtype out)."""
    x64 = x.to(F64).flatten(1)
    std = torch.as_tensor(std, dtype=F64, device=x.device)
    d = x64.shape[1]
    logp = -0.5 * (x64**2).sum(1) / std**2 - d * torch.log(std) - 0.5 * d * math.log(2 * math.pi)
    return logp.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# A noise process: one of the above, with the σ ranges the samplers and likelihoods use
# ---------------------------------------------------------------------------------------------

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
