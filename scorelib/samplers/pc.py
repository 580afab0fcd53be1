"""Predictor-corrector sampling (Song et al. 2021b, Algorithms 2-3) in σ-space.

A step from σ to σ' first runs the corrector at σ, then the predictor σ → σ'. Every predictor moves
x_mean = a·x + c·s(x, σ) and adds noise of std τ. Two forms:

**The σ-grid form** (no `sde`; VE models, DDPM grids), with a = 1 but for the VP ancestral step:

    reverse_diffusion   c = σ² - σ'²          τ = √(σ² - σ'²)        (eq. 46, VE)
    euler_maruyama      c = 2σ(σ - σ')        τ = √c                 (EM on dx = -d[σ²] s + √d[σ²] dw̄)
    ancestral           c = σ² - σ'²          τ = σ'√(σ² - σ'²)/σ    (eq. 47; = DDPM / ddim(η=1))
    ancestral, betas    score_sde's VP step x_t' = (x_t + β s_t)/√(1-β) + √β z in σ-space (eq. 47, VP)
    none                no predictor (corrector only)

and a step to σ' = 0 is the Tweedie step x = x + σ² s(x, σ) for every predictor, so the sampler ends on
the denoised data. On score_sde's VE grid (the discrete NCSN levels, then 0) reverse diffusion and the
ancestral step with the Langevin corrector are score_sde's own steps.

**score_sde's form** (`sde` and `times` given): the steps of score_sde's `get_pc_sampler` at the times
t_0 > … > t_{N-1} (its `torch.linspace(sde.T, eps, sde.N)`, `pc_times`), dt = 1/N, each x_t-space update
written in σ-space with x_t = m(t) x_σ, s_t = s_σ/m and m_i = m(t_i), m_N := 1 (score_sde returns x_t):

    euler_maruyama      x' = (m_i/m_{i+1})(1 - f_i dt) x + g_i² dt/(m_i m_{i+1}) s + g_i √dt/m_{i+1} z
                        (sampling.py `EulerMaruyamaPredictor`; f, g of the SDE at t_i: VP f = -β/2, g² = β)
    reverse_diffusion   VP: (m_i/m_{i+1})(2 - √(1-β_i)) x + β_i/(m_i m_{i+1}) s + √β_i/m_{i+1} z with β_i from
                        `discrete_betas` (sde_lib.py `VPSDE.discretize`); sub-VP: Euler–Maruyama (the base
                        `SDE.discretize`); VE: c = σ_k² - σ_{k-1}², τ = √c on `discrete_sigmas` (`VESDE.discretize`)
    ancestral           VP: x' = (m_i/m_{i+1})(x + β_i s/m_i²)/√(1-β_i) + √β_i/m_{i+1} z; VE: eq. 47 on
                        `discrete_sigmas` (`AncestralSamplingPredictor`); none for sub-VP
    none                x_t kept (x' = (m_i/m_{i+1}) x) and x_mean = x (`NonePredictor`)

with the table index k = ⌊t_i (N-1)/T⌋ (`discrete_index`). The result is the last predictor step's mean
(`denoise=True`; score_sde's `noise_removal`), or with `tweedie=True` the last step is replaced by the
Tweedie step x + σ_{N-1}² s.

Correctors: "langevin" (Algorithm 4, step ε = 2α(r‖z‖/‖s‖)² with batch-mean norms as in the reference
code), "ald" (annealed Langevin, ε = 2α(r σ)²), or "none"; α = 1 (VE) or α_i = 1 - β_i (VP / sub-VP:
`betas`, or the SDE's `discrete_betas` at index k) as score_sde's `LangevinCorrector` /
`AnnealedLangevinDynamics`. They are the x_t-space updates written in σ-space (ε_σ = ε_t/m², noise
√(2ε_t)/m), equal draw for draw; in score_sde's form "ald" takes σ(t_i) = std(t_i)/m(t_i). (score_sde's
correctors raise on sub-VP, whose SDE has no `alphas`: scorelib uses VP's table there.)

Draws: per step the corrector's (one per corrector step) and then the predictor's, each of x's shape from
`generator`, as score_sde's `torch.randn_like` after `torch.manual_seed`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import SDE, VESDE, SubVPSDE, discrete_index
from ..utils import randn_like
from ._common import Callback, Project, ScoreFn, add_noise, prepare_grid

F64 = torch.float64

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")


def predictor_coefficients(s64: Tensor, predictor: str, betas: Tensor | None = None,
                           tweedie: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The σ-grid form: (a, c, τ) per step for a float64 grid [n] -> three [n-1] tensors: x' = a x + c s + τ z.

    `betas` [n-1] (VP models): the ancestral predictor becomes score_sde's VP update
    (sampling.py `AncestralSamplingPredictor.vpsde_update_fn`) with x_t = m x_σ, m = 1/√(1+σ²):
    a = m/(m'√(1-β)), c = β/(m m'√(1-β)), τ = √β/m'. On a DDPM grid whose β are the respaced
    β = 1 - ᾱ_t/ᾱ_t' this is a = 1, c = σ² - σ'², τ² = (σ² - σ'²)(1 + σ'²)/(1 + σ²) (σ² = β).
    With `tweedie` every predictor's step to σ' = 0 is the Tweedie step (a, c, τ) = (1, σ², 0).
    """
    cur, nxt = s64[:-1], s64[1:]
    diff2 = cur**2 - nxt**2
    a = torch.ones_like(cur)
    if predictor == "reverse_diffusion":
        c, tau = diff2, diff2.sqrt()
    elif predictor == "euler_maruyama":
        c = 2 * cur * (cur - nxt)
        tau = c.sqrt()
    elif predictor == "ancestral" and betas is None:
        c, tau = diff2, nxt * diff2.sqrt() / cur
    elif predictor == "ancestral":
        b = torch.as_tensor(betas, dtype=F64).cpu()
        if b.shape != cur.shape:
            raise ValueError(f"betas must have one entry per step ({cur.shape[0]}), got shape {tuple(b.shape)}")
        m, m_next = (1 + cur**2).rsqrt(), (1 + nxt**2).rsqrt()
        r = 1 / (m_next * (1 - b).sqrt())
        a, c, tau = m * r, b * r / m, b.sqrt() / m_next
    elif predictor == "none":
        return a, torch.zeros_like(cur), torch.zeros_like(cur)
    else:
        raise ValueError(f"unknown predictor {predictor!r}; expected one of {', '.join(PREDICTORS)}")
    if not tweedie:
        return a, c, tau
    last = nxt == 0
    return a.masked_fill(last, 1.0), torch.where(last, cur**2, c), tau.masked_fill(last, 0.0)


def sde_coefficients(sde: SDE, times: Tensor, predictor: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """score_sde's form: (a, c, τ, α) per step at the times t [N] of `get_pc_sampler` -> four float64 [N]
    tensors, x' = a x + c s + τ z in σ-space and the correctors' α (see the module docstring)."""
    t = torch.as_tensor(times, dtype=F64).cpu()
    N = t.shape[0]
    dt = 1.0 / N
    m = sde.mean_scale(t)
    m_next = torch.cat([m[1:], m.new_ones(1)])  # m_N := 1: score_sde returns x_t
    k = discrete_index(sde, t, N)
    is_ve = isinstance(sde, VESDE)
    beta = None if is_ve else sde.discrete_betas(N)[k]
    if predictor == "euler_maruyama" or (predictor == "reverse_diffusion" and isinstance(sde, SubVPSDE)):
        g2dt = sde.diffusion(t) ** 2 * dt
        a, c, tau = (m / m_next) * (1 - sde.drift_coef(t) * dt), g2dt / (m * m_next), g2dt.sqrt() / m_next
    elif predictor in ("reverse_diffusion", "ancestral") and is_ve:
        table = sde.discrete_sigmas(N)
        s, s_adj = table[k], torch.where(k == 0, 0.0, table[(k - 1).clamp(min=0)])
        a, c = torch.ones_like(t), s**2 - s_adj**2
        tau = c.sqrt() if predictor == "reverse_diffusion" else (s_adj**2 * c / s**2).sqrt()
    elif predictor == "reverse_diffusion":  # VP: DDPM discretisation x_t' = (2 - √(1-β)) x_t + β s_t + √β z
        a, c, tau = (m / m_next) * (2 - (1 - beta).sqrt()), beta / (m * m_next), beta.sqrt() / m_next
    elif predictor == "ancestral":
        if isinstance(sde, SubVPSDE):
            raise ValueError("the ancestral predictor has no sub-VP form (score_sde's AncestralSamplingPredictor "
                             "supports VE and VP only)")
        r = 1 / (m_next * (1 - beta).sqrt())  # x_t' = (x_t + β s_t)/√(1-β) + √β z
        a, c, tau = m * r, beta * r / m, beta.sqrt() / m_next
    elif predictor == "none":
        a, c, tau = m / m_next, torch.zeros_like(t), torch.zeros_like(t)
    else:
        raise ValueError(f"unknown predictor {predictor!r}; expected one of {', '.join(PREDICTORS)}")
    alpha = torch.ones_like(t) if is_ve else 1 - beta
    return a, c, tau, alpha


def _norm_mean(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).mean()


def corrector_step(score: ScoreFn, x: Tensor, sigma_b: Tensor, sigma: float, corrector: str, snr: float,
                   generator: torch.Generator | None, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """One corrector update at σ with score_sde's factor α (1 - β_i for VP / sub-VP, 1 for VE).
    Returns (x, x_mean)."""
    g = score(x, sigma_b)
    z = randn_like(x, generator)
    if corrector == "langevin":
        step = 2 * alpha * (snr * _norm_mean(z) / _norm_mean(g)) ** 2
    else:  # "ald"
        step = torch.tensor(2 * alpha * (snr * sigma) ** 2, dtype=x.dtype, device=x.device)
    x_mean = x + step * g
    return x_mean + (2 * step).sqrt() * z, x_mean


def _check_sde_grid(s64: Tensor, sde: SDE, times: Tensor) -> None:
    n = s64.shape[0] - 1
    if times.ndim != 1 or times.shape[0] != n or float(s64[-1]) != 0:
        raise ValueError(f"with `sde`, sigmas must be σ(t_i) of the {tuple(times.shape)} times then 0 "
                         f"(got {n + 1} levels)")
    if not isinstance(sde, VESDE) and not torch.allclose(s64[:-1], sde.sigma(times), rtol=1e-6, atol=0):
        raise ValueError("with a VP-type `sde`, sigmas[:-1] must be sde.sigma(times) (x_t = m(t) x_σ)")


def pc_sampler(score: ScoreFn, x: Tensor, sigmas: Tensor, *, predictor: str = "reverse_diffusion",
               corrector: str = "langevin", snr: float = 0.16, n_corrector_steps: int = 1, denoise: bool = True,
               generator: torch.Generator | None = None, callback: Callback = None, project: Project = None,
               betas: Tensor | None = None, sde: SDE | None = None, times: Tensor | None = None,
               tweedie: bool | None = None) -> Tensor:
    """Predictor-corrector sampler on the σ grid `sigmas` [n] (descending, the last may be 0).

    x: [B, ...] at sigmas[0]. With `denoise` the noise-free mean of the last update is returned
    (score_sde's `noise_removal`). NFE = (n - 1)(1 + n_corrector_steps) (the predictor "none" saves one
    per step). score_sde CIFAR-10 VE: reverse_diffusion + langevin, snr 0.16, 1 corrector step,
    1000 levels from 50 to 0.01 and a final 0. `project(x, σ)`, when given, is applied to x (and to
    the noise-free mean, at σ = 0) after every update, at the level x is then at (inpainting).

    The σ-grid form (no `sde`): `betas` [n-1] are the discrete β_i of each step's level for models of a
    VP / sub-VP SDE (score_sde's `sde.discrete_betas[timestep]`) or a DDPM grid's respaced β: correctors
    take α_i = 1 - β_i and "ancestral" is the VP update.

    score_sde's form: `sde` (VPSDE, SubVPSDE or VESDE) and `times` [n-1], the t_i of the positive levels
    (`pc_times(sde, N)`), with sigmas = σ(t_i) then 0 (for VE the levels the score is evaluated at: σ(t_i)
    for a continuous-time model, the discrete NCSN levels for a discrete one): every step is score_sde's
    `get_pc_sampler` step draw for draw, started from x_T/m(t_0) and returning its x_t (m_N = 1). score_sde
    CIFAR-10 DDPM++ (VP, sub-VP): euler_maruyama, no corrector, N = 1000, t from 1 to 1e-3.

    tweedie: end with the Tweedie step x + σ² s(x, σ) on the last step to σ' = 0. Default (None): yes in
    the σ-grid form, no in score_sde's form (its last predictor step to m_N = 1).
    """
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; expected one of {', '.join(CORRECTORS)}")
    s64, sig_b = prepare_grid(sigmas, x)
    a, c, tau, alphas, ald_sigma = _pc_coefficients(s64, predictor, betas, sde, times, tweedie)
    levels = s64.tolist()
    x_mean = x
    for i in range(len(levels) - 1):
        if corrector != "none":
            for _ in range(n_corrector_steps):
                x, x_mean = corrector_step(score, x, sig_b[i], ald_sigma[i], corrector, snr, generator, alphas[i])
                if project is not None:
                    x, x_mean = project(x, levels[i]), project(x_mean, 0.0)
        if predictor != "none":
            x_mean = torch.add(x if a[i] == 1 else a[i] * x, score(x, sig_b[i]), alpha=c[i])
            x = add_noise(x_mean, tau[i], generator) if tau[i] > 0 else x_mean
            if project is not None:
                x, x_mean = project(x, levels[i + 1]), project(x_mean, 0.0)
        elif sde is not None:  # score_sde's NonePredictor: x_t kept, x_mean = x
            x = x if a[i] == 1 else a[i] * x
            x_mean = x
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "x": x, "x_mean": x_mean})
    return x_mean if denoise else x


def _pc_coefficients(s64: Tensor, predictor: str, betas: Tensor | None, sde: SDE | None, times: Tensor | None,
                     tweedie: bool | None) -> tuple[list[float], ...]:
    """Per step i of the grid s64 [n]: the predictor's x' = a·x + c·s + τ·z, the corrector's α_i and the σ
    its annealed-Langevin step size uses; in the σ-grid form or score_sde's (see `pc_sampler`)."""
    if sde is None:
        if times is not None:
            raise ValueError("`times` needs `sde`")
        a, c, tau = predictor_coefficients(s64, predictor, betas, tweedie is not False)
        alphas = torch.ones_like(c) if betas is None else 1 - torch.as_tensor(betas, dtype=F64)
        ald_sigma = s64[:-1]
    else:
        if betas is not None or times is None:
            raise ValueError("score_sde's form takes `sde` and `times`, not `betas`")
        t64 = torch.as_tensor(times, dtype=F64).cpu()
        _check_sde_grid(s64, sde, t64)
        a, c, tau, alphas = sde_coefficients(sde, t64, predictor)
        ald_sigma = sde.sigma(t64)
        if tweedie and predictor != "none":
            a[-1], c[-1], tau[-1] = 1.0, float(s64[-2]) ** 2, 0.0
    return tuple(v.tolist() for v in (a, c, tau, alphas, ald_sigma))
