"""Few-step deterministic solvers of the probability-flow ODE in σ-space, and `fast_sample`.

All work with the denoiser D(x, σ) = x + σ² s(x, σ) and the half-log-SNR λ = -log σ, in which the
exact solution from σ to σ' is x' = (σ'/σ) x + σ' ∫ e^{λ} D dλ (Lu et al. 2022b, eq. 9). A grid is
descending; a trailing 0 makes the last step return the denoised sample, and that step costs
no extra evaluation beyond the one at the last positive level. Step coefficients are computed once,
on the host in float64, from the grid; the loops only combine tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..schedules import append_zero, geometric_sigmas, karras_sigmas
from ..utils import randn_like
from ._common import Callback, ScoreFn, add_noise, denoised, prepare_grid


def heun(score: ScoreFn, x: Tensor, sigmas: Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = math.inf, s_noise: float = 1.0, generator: torch.Generator | None = None,
         callback: Callback = None, round_sigma: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 2; Algorithm 1 when s_churn = 0).

    x: [B, ...] at sigmas[0]; sigmas [n] descending with a trailing 0 (the last step is Euler).
    NFE = 2(n - 1) - 1 with a trailing zero. Churn: σ̂ = σ(1 + γ), γ = min(s_churn/(n-1), √2 - 1) on
    σ ∈ [s_tmin, s_tmax], with fresh noise of std s_noise √(σ̂² - σ²).

    Draws as EDM's generate.py `edm_sampler` and k-diffusion's `sample_heun`: with s_churn > 0, one
    normal draw of x's shape at every step, also where γ = 0 (there it is multiplied by zero), so a
    generator seeded as their RNG gives their samples; with s_churn = 0 nothing is drawn (their draws
    are all multiplied by zero). `round_sigma` (the wrapper's, e.g. `IDDPMPrecond.round_sigma`) maps
    every σ̂ to a level the network is defined at, as EDM's sampler does (it also rounds the grid:
    pass `sigmas` through it too). σ̂ are computed once, before the loop.
    """
    s64, sig_b = prepare_grid(sigmas, x)
    n_steps = len(s64) - 1
    gamma = min(s_churn / n_steps, math.sqrt(2) - 1) if n_steps > 0 else 0.0
    levels = s64.tolist()
    hats = [s * (1 + (gamma if s_tmin <= s <= s_tmax else 0.0)) for s in levels[:-1]]
    if round_sigma is not None and hats:
        hats = torch.as_tensor(round_sigma(torch.tensor(hats, dtype=torch.float64))).double().tolist()
    hat_b = list(torch.tensor(hats, dtype=x.dtype).to(x.device)[:, None].expand(n_steps, x.shape[0]).unbind(0))
    draws = s_churn > 0
    for i in range(n_steps):
        sigma, sigma_next, sigma_hat = levels[i], levels[i + 1], hats[i]
        if draws:
            if sigma_hat > sigma:
                x = add_noise(x, s_noise * math.sqrt(sigma_hat**2 - sigma**2), generator)
            else:
                randn_like(x, generator)  # EDM's draw at an unchurned level, multiplied by zero there
        d = denoised(score, x, hat_b[i], sigma_hat)
        slope = (x - d) / sigma_hat
        x_next = torch.add(x, slope, alpha=sigma_next - sigma_hat)
        if sigma_next > 0:
            d2 = denoised(score, x_next, sig_b[i + 1], sigma_next)
            slope2 = (x_next - d2) / sigma_next
            x_next = torch.add(x, slope + slope2, alpha=0.5 * (sigma_next - sigma_hat))
        x = x_next
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "sigma_hat": sigma_hat, "x": x, "denoised": d})
    return x


def _step_orders(n_steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each multistep step: warm up from 1, and with `lower_order_final` let the last steps
    use at most the number of remaining steps (DPM-Solver's rule for short runs)."""
    orders = []
    for i in range(n_steps):
        p = min(order, i + 1)
        if lower_order_final:
            p = min(p, n_steps - i)
        orders.append(p)
    return orders


def dpm_solver_pp(score: ScoreFn, x: Tensor, sigmas: Tensor, *, order: int = 2, lower_order_final: bool = True,
                  callback: Callback = None, generator: torch.Generator | None = None) -> Tensor:
    """Multistep DPM-Solver++ (Lu et al. 2022b, Algorithms 1-2) of order 1, 2 or 3 (1 = DDIM).

    Data-prediction exponential integrator in λ = -log σ with h = λ' - λ, φ₁ = e^{-h} - 1:
        x' = (σ'/σ) x - φ₁ D_eff,  2nd order D_eff = (1 + 1/2r) D_i - (1/2r) D_{i-1},  r = h_{i-1}/h;
        3rd order adds φ₂ = φ₁/h + 1 and φ₃ = φ₂/h - ½ on the first and second divided differences.
    Each grid convention follows the reference that uses it. With a trailing zero (k-diffusion's
    convention) the step to σ' = 0 is first order (x' = D) and every step before it has the full order,
    as k-diffusion's `sample_dpmpp_2m` / `sample_dpmpp_3m_sde(eta=0)` (k_diffusion/sampling.py); the
    second step of order 3 (its warm-up) is 3M's x' = (σ'/σ) x - φ₁ D_i + φ₂ (D_i - D_{i-1})/r, while order 2
    keeps 2M's -φ₁/2r form. A grid ending at σ_min > 0 is the DPM-Solver reference's: every second-order
    step (warm-up or lowered) has the -φ₁/2r form (its default solver_type='dpmsolver',
    `multistep_dpm_solver_second_update`), and `lower_order_final` lowers the last steps to
    min(order, steps left) only for runs of fewer than 10 steps (LuChengTHU/dpm-solver
    dpm_solver_pytorch.py `DPM_Solver.sample`, multistep: `if lower_order_final and steps < 10`).
    x: [B, ...] at sigmas[0]; NFE = number of positive levels with a trailing zero (else n - 1).
    `generator` is accepted as by every sampler and unused: the solver draws nothing.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    s64, sig_b = prepare_grid(sigmas, x)
    levels = s64.tolist()
    n_steps = len(levels) - 1
    to_zero = levels[-1] == 0
    n_solver = n_steps - int(to_zero)  # steps between positive levels (DPM-Solver's `steps`)
    lower = lower_order_final and not to_zero and n_solver < 10
    taylor_warmup = to_zero and order == 3  # k-diffusion's 3M: its 2nd-order step is the Taylor form
    orders = _step_orders(n_solver, order, lower) + [1] * (n_steps - n_solver)
    lam = [-math.log(s) if s > 0 else math.inf for s in levels]
    ds: list[Tensor] = []
    for i in range(n_steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        d = denoised(score, x, sig_b[i], sigma)
        ds = [*ds[-2:], d]
        if sigma_next == 0:
            x = d
        else:
            h = lam[i + 1] - lam[i]
            phi1 = math.expm1(-h)
            x = torch.add(x * (sigma_next / sigma), d, alpha=-phi1)
            p = min(orders[i], len(ds))
            if p >= 2:
                r0 = (lam[i] - lam[i - 1]) / h
                d1_0 = (d - ds[-2]) / r0
                if p == 2 and taylor_warmup:  # k-diffusion 3M's second step: + φ₂ (D_i - D_{i-1})/r
                    x = x.add(d1_0, alpha=phi1 / h + 1)
                elif p == 2:
                    x = x.add(d1_0, alpha=-0.5 * phi1)  # -φ₁ · (1/2r)(D_i - D_{i-1})
                else:
                    r1 = (lam[i - 1] - lam[i - 2]) / h
                    d1_1 = (ds[-2] - ds[-3]) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi2 = phi1 / h + 1
                    phi3 = phi2 / h - 0.5
                    x = x.add(d1, alpha=phi2).add_(d2, alpha=-phi3)
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "x": x, "denoised": d})
    return x


def _unipc_weights(rks: list[float], h: float, variant: str) -> tuple[list[float], list[float], float]:
    """UniPC's (Zhao et al. 2023, Algorithm 2/3) predictor weights ρ_p (len p-1), corrector weights
    ρ_c (len p) and B(h), for data prediction, from the ratios r_k = (λ_{i-k} - λ_i)/h and r_p = 1."""
    p = len(rks)
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    rows, b = [], []
    factorial = 1
    for k in range(1, p + 1):
        rows.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, bb = torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if p == 1:
        rho_p, rho_c = [], [0.5]
    else:
        rho_p = [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], bb[:-1]).tolist()
        rho_c = torch.linalg.solve(R, bb).tolist()
    return rho_p, rho_c, b_h


def unipc(score: ScoreFn, x: Tensor, sigmas: Tensor, *, order: int = 3, variant: str = "bh2",
          lower_order_final: bool = True, callback: Callback = None,
          generator: torch.Generator | None = None) -> Tensor:
    """UniPC multistep predictor-corrector (Zhao et al. 2023) with data prediction, order 1-3.

    Each step predicts x' with UniP-p, evaluates D(x', σ') once, and uses that evaluation both to
    correct x' (UniC) and as the next step's history, so NFE = one per level. With a trailing 0 the
    last positive level's evaluation is spent on the corrector, and the output is the corrected x
    plus the denoising displacement D - x measured at the predicted point. x: [B, ...] at sigmas[0].
    `generator` is accepted as by every sampler and unused: the solver draws nothing.
    """
    return _unipc(score, x, sigmas, order, variant, lower_order_final, callback)


def _unipc(score: ScoreFn, x: Tensor, sigmas: Tensor, order: int, variant: str, lower_order_final: bool,
           callback: Callback, first_denoised: Tensor | None = None) -> Tensor:
    """The UniPC loop; `first_denoised` is D(x, sigmas[0]) when the caller has already evaluated it."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    s64, sig_b = prepare_grid(sigmas, x)
    levels = s64.tolist()
    to_zero = levels[-1] == 0
    pos = levels[:-1] if to_zero else levels
    n_steps = len(pos) - 1
    orders = _step_orders(n_steps, order, lower_order_final)
    lam = [-math.log(s) for s in pos]
    d_first = denoised(score, x, sig_b[0], pos[0]) if first_denoised is None else first_denoised
    ds, lams = [d_first], [lam[0]]
    for i in range(n_steps):
        sigma, sigma_next = pos[i], pos[i + 1]
        p = min(orders[i], len(ds))
        h = lam[i + 1] - lam[i]
        rks = [(lams[-(k + 1)] - lams[-1]) / h for k in range(1, p)] + [1.0]
        rho_p, rho_c, b_h = _unipc_weights(rks, h, variant)
        d0 = ds[-1]
        d1s = [(ds[-(k + 1)] - d0) / rks[k - 1] for k in range(1, p)]
        base = torch.add(x * (sigma_next / sigma), d0, alpha=-math.expm1(-h))  # first-order (DDIM) part
        x = base
        for rho, d1 in zip(rho_p, d1s, strict=False):
            x = x.add(d1, alpha=-b_h * rho)
        if i == n_steps - 1 and not to_zero:  # UniPC skips the corrector on the final step
            break
        x_pred = x
        d_new = denoised(score, x_pred, sig_b[i + 1], sigma_next)
        corr = (d_new - d0) * rho_c[-1]
        for rho, d1 in zip(rho_c[:-1], d1s, strict=True):
            corr = corr.add(d1, alpha=rho)
        x = base.add(corr, alpha=-b_h)
        if i == n_steps - 1:  # to zero: denoise the corrected point with the displacement seen at x_pred
            x = x + (d_new - x_pred)
        ds, lams = [*ds, d_new][-order:], [*lams, lam[i + 1]][-order:]
        if callback is not None:
            callback({"i": i, "sigma": sig_b[i][0], "x": x, "denoised": d_new})
    if to_zero and n_steps == 0:
        x = ds[-1]
    return x


# ---------------------------------------------------------------------------------------------
# Budgeted sampling
# ---------------------------------------------------------------------------------------------


N_PROBES = 8  # antithetic probe pairs of `probe_data_scale` in more than 8 dimensions


def probe_points(x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """The fixed probe directions u_k (E[u uᵀ] = I) for x's shape and the points ±σ u_k where
    `probe_data_scale` evaluates the denoiser: returns (u [m, ...], points [2m, ...]) in x's dtype and
    device. In d ≤ 8 dimensions u_k = √d e_k (every axis, so the estimate below is exact for a
    Gaussian); above, 8 Rademacher vectors from a fixed seed. Nothing depends on x's values, so a
    sample's result never depends on the rest of its batch."""
    shape, d = tuple(x.shape[1:]), x[0].numel()
    if d <= N_PROBES:
        u = torch.eye(d, dtype=torch.float64) * math.sqrt(d)
    else:
        g = torch.Generator().manual_seed(0)
        u = torch.randint(0, 2, (N_PROBES, d), generator=g, dtype=torch.float64) * 2 - 1
    u = u.to(x.device, x.dtype).reshape(-1, *shape)
    return u, torch.cat([sigma * u, -sigma * u])


def probe_data_scale(u: Tensor, probe_denoised: Tensor, sigma: float) -> float:
    """√tr Σ of the data, read from the denoiser at the probe points ±σ u_k of `probe_points`.

    For σ well above the data's scale, p_σ ≈ N(μ, Σ + σ²I) and D(y, σ) ≈ μ + Σ (y - μ)/σ², so
    D(σu) - D(-σu) ≈ 2Σu/σ whatever μ is, and uᵀ Σ u averages to tr Σ (Hutchinson's estimator;
    exact on the axes). Returns 0 when the estimate is not positive."""
    m = u.shape[0]
    diff = (probe_denoised[:m] - probe_denoised[m:]).flatten(1).double()
    trace = float((diff * u.flatten(1).double()).sum(1).mean()) * sigma / 2
    return math.sqrt(trace) if trace > 0 else 0.0


def fast_sample_plan(sigma_max: float, sigma_min: float, nfe: int, data_diameter: float | None = None,
                     data_scale: float | None = None) -> tuple[Tensor, int]:
    """The σ grid (with its trailing 0) and the UniPC order `fast_sample` uses for a budget of `nfe`.

    The grid spends one step jumping from σ_max straight to σ_jump, then follows a Karras grid down
    to σ_min. Above the data's scale p_σ is nearly Gaussian and the trajectories nearly straight, so
    UniPC's corrected first step covers that range, and the saved evaluations go where the
    trajectories bend. σ_jump = a·data_scale with data_scale = √tr Σ (a = 0.1·nfe + 0.5 up to 3.5;
    Karras ρ = 5), or, given the data's diameter (the
    largest distance between two data points), c·data_diameter (c = 0.75 up to 15 NFE, 1 up to 20,
    1.5 beyond; ρ = 5 up to 7 NFE). With neither the grid is geometric over [σ_min, σ_max]; when
    σ_jump is not inside (σ_min, σ_max) it is the Karras grid. Order 2 below 20 NFE, 3 from 20 on.
    Chosen by searches over sharp Gaussian mixtures (benchmarks/bench_solvers.py names the tuning
    problems and reports held-out ones).
    """
    order = 2 if nfe < 20 else 3
    if data_diameter is not None:
        rho = 5.0 if nfe <= 7 else 7.0
        jump = (0.75 if nfe <= 15 else (1.0 if nfe <= 20 else 1.5)) * data_diameter
    elif data_scale is not None:
        rho = 5.0
        jump = min(0.1 * nfe + 0.5, 3.5) * data_scale
    else:
        return append_zero(geometric_sigmas(sigma_max, sigma_min, nfe)), order
    if nfe < 3 or not sigma_min < jump < sigma_max:
        return append_zero(karras_sigmas(sigma_max, sigma_min, nfe, rho)), order
    tail = karras_sigmas(jump, sigma_min, nfe - 1, rho)
    return append_zero(torch.cat([tail.new_tensor([sigma_max]), tail])), order


def fast_sample(score: ScoreFn, x: Tensor, sigma_max: float, sigma_min: float, nfe: int, *,
                data_diameter: float | None = None, probe: bool = True,
                generator: torch.Generator | None = None) -> Tensor:
    """The most accurate deterministic sampler of this library for a budget of `nfe` score evaluations
    (never more): the probability-flow ODE from σ_max to σ_min followed by the Tweedie step, solved by
    UniPC (Zhao et al. 2023) on the grid of `fast_sample_plan`. x: [B, ...] at σ_max.

    The grid needs the data's scale. By default it is read from the first evaluation, at σ_max,
    which every solver spends anyway: that call also carries the 2·min(d, 8) fixed probe points of
    `probe_points` (so `score` must accept a batch of any size, as a network does; a closure that
    binds per-row labels does not: pass it `data_diameter`, or `probe=False` for a geometric grid).
    `data_diameter` (the largest distance between two data points, NCSNv2's rule for σ_max) gives
    the scale instead and skips the probes. `generator` is accepted as by every sampler and unused (the
    probe points are fixed).
    """
    if nfe < 1:
        raise ValueError(f"nfe must be at least 1, got {nfe}")
    if nfe == 1:
        return denoised(score, x, torch.full((x.shape[0],), sigma_max, dtype=x.dtype, device=x.device), sigma_max)
    if data_diameter is not None or not probe:
        grid, order = fast_sample_plan(sigma_max, sigma_min, nfe, data_diameter)
        return unipc(score, x, grid, order=order, variant="bh2")
    u, points = probe_points(x, sigma_max)
    both = torch.cat([x, points])
    sig = torch.full((both.shape[0],), sigma_max, dtype=x.dtype, device=x.device)
    d_both = denoised(score, both, sig, sigma_max)
    scale = probe_data_scale(u, d_both[x.shape[0]:], sigma_max)
    grid, order = fast_sample_plan(sigma_max, sigma_min, nfe, data_scale=scale if scale > 0 else None)
    return _unipc(score, x, grid, order, "bh2", True, None, first_denoised=d_both[: x.shape[0]])
