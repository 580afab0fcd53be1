"""The benchmark's rows: a `Case` per sampler setting, scorelib's from the experiment's sampler with a
few options changed, and the peers' (k-diffusion, diffusers) on the same score and noise."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..adapters import ScoreToEps, score_to_denoised
from ..builder import Experiment
from ..builder.declare import format_value
from ..builder.samplers import Sampler
from ..peers import diffusers_schedulers, k_diffusion_sampling
from ..samplers import probability_flow
from ..samplers.langevin import ncsnv2_step_lr
from ..schedules import geometric_sigmas
from ..utils import ScoreFn, default_dtype

SampleFn = Callable[[ScoreFn, Tensor, torch.Generator], "Tensor | tuple[Tensor, int]"]

NCSN_STEP_LR = 2e-5  # NCSN (Song & Ermon 2019): step_lr for σ_L = 0.01, 100 steps per level, no denoising


@dataclass(frozen=True)
class Case:
    """One benchmark row: `sample(score, x0, generator)` draws samples from x0 [B, ...] (= σ_max·z,
    already drawn from a generator seeded like `generator`) and returns x [B, ...] or (x, NFE the
    sampler itself reports). `nfe`: the score evaluations per batch the grid implies (None: adaptive).
    `deterministic`: no noise after x0 (then it gets a transport error). `skip`: a note instead of a run."""

    name: str
    family: str
    settings: str
    sample: SampleFn | None
    nfe: int | None
    deterministic: bool
    flags: str = ""
    skip: str = ""


@dataclass(frozen=True)
class GridSpec:
    """Step counts of every sampler family (see `grid_spec`)."""

    ald_ncsn_levels: tuple[int, ...]
    ald_ncsnv2_levels: tuple[int, ...]
    pc_steps: tuple[int, ...]
    ddpm_steps: tuple[int, ...]
    ddim_steps: tuple[int, ...]
    ddim_etas: tuple[float, ...]
    ode_tols: tuple[float, ...]
    heun_levels: tuple[int, ...]
    solver_steps: tuple[int, ...]  # DPM-Solver++, UniPC, fast_sample, k-diffusion, diffusers DPM-Solver++
    diffusers_ddim_steps: tuple[int, ...]


def grid_spec(quick: bool) -> GridSpec:
    """The full grid, or the quick one (one setting per family, DDIM at three η; for tests and smoke runs)."""
    if quick:
        return GridSpec(ald_ncsn_levels=(5,), ald_ncsnv2_levels=(10,), pc_steps=(10,), ddpm_steps=(10,),
                        ddim_steps=(10,), ddim_etas=(0.0, 0.5, 1.0), ode_tols=(1e-3,), heun_levels=(5,),
                        solver_steps=(10,), diffusers_ddim_steps=(10,))
    return GridSpec(ald_ncsn_levels=(5, 10, 20), ald_ncsnv2_levels=(10, 20, 50, 100, 200), pc_steps=(10, 50, 100, 500),
                    ddpm_steps=(10, 20, 50, 100, 1000), ddim_steps=(10, 20, 50, 100, 1000), ddim_etas=(0.0, 0.5, 1.0),
                    ode_tols=(1e-2, 1e-3, 1e-4, 1e-5), heun_levels=(5, 10, 25, 50), solver_steps=(5, 10, 20, 50),
                    diffusers_ddim_steps=(10, 50, 100))


def _raiser(error: Exception) -> SampleFn:
    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> Tensor:
        raise error

    return sample


def with_levels(sampler: Sampler, levels: int) -> Sampler:
    """The sampler on `levels` NCSN levels (annealed Langevin's grid on a VE model), other settings kept."""
    n = sampler.noise
    noise = dataclasses.replace(n, num_scales=levels, levels=geometric_sigmas(n.sigma_max, n.sigma_min, levels))
    return dataclasses.replace(sampler, noise=noise)


def sampler_case(exp: Experiment, name: str, family: str, settings: str, overrides: dict[str, Any]) -> Case:
    """A row running the experiment's sampler with `overrides` ({"sampling.FIELD" or "noise.num_scales":
    value}, the flags that reproduce the row); sampling.init is gaussian: x0 = grid[0]·z with z the first
    draw of the row's generator."""
    overrides = {"sampling.init": "gaussian", **overrides}
    flags = " ".join(f"--config.{k}={format_value(v)}" for k, v in overrides.items())
    try:
        sampler = exp.sampler.replace(**{k.split(".", 1)[1]: v for k, v in overrides.items()
                                         if k.startswith("sampling.")})
        if "noise.num_scales" in overrides:  # annealed Langevin over another number of NCSN levels
            sampler = with_levels(sampler, overrides["noise.num_scales"])
        nfe = sampler.nfe
    except Exception as e:  # a setting this model cannot run: the row reports it
        return Case(name, family, settings, _raiser(e), None, False, flags)

    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> Tensor:
        return sampler(score, tuple(x0.shape), g, x0.device)

    return Case(name, family, settings, sample, nfe if nfe > 0 else None, sampler.deterministic, flags)


def ode_case(exp: Experiment, tol: float) -> Case:
    """The probability-flow ODE (dopri5, rtol = atol = tol, final Tweedie step) with its own NFE count."""
    sigma_max, sigma_min = exp.noise.sigma_range
    flags = (f"--config.sampling.method=ode --config.sampling.ode_method=dopri5 --config.sampling.rtol={tol:g} "
             f"--config.sampling.atol={tol:g} --config.sampling.denoise=True")

    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> tuple[Tensor, int]:
        return probability_flow(score, x0, sigma_max, sigma_min, method="dopri5", rtol=tol, atol=tol, denoise=True,
                                return_nfe=True)

    return Case("probability_flow", "ode (dopri5)", f"rtol=atol={tol:g}", sample, None, True, flags)


def scorelib_cases(exp: Experiment, spec: GridSpec) -> list[Case]:
    """scorelib's samplers on the experiment's model, each its sampler with a few options changed."""
    sigma_max, sigma_min = exp.noise.sigma_range
    kind = exp.noise.kind
    ve = kind == "ve"  # there annealed Langevin's levels are noise.num_scales, else sampling.n_steps
    cases = [sampler_case(exp, f"config ({exp.f.sampling.method})", "config", exp.sampler.describe(), {})]

    def ald(levels: int, steps: int, step_lr: float, denoise: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"sampling.method": "ald", "sampling.n_steps": levels, "sampling.n_steps_each": steps,
                               "sampling.step_lr": step_lr, "sampling.denoise": denoise}
        return {**out, "noise.num_scales": levels} if ve else out

    for n in spec.ald_ncsn_levels:
        lr = NCSN_STEP_LR * (sigma_min / 0.01) ** 2
        cases.append(sampler_case(exp, "annealed_langevin", "ald (NCSN: 100 steps/level)",
                                  f"L={n} × 100, step_lr={lr:.3g}", ald(n, 100, lr, False)))
    for n in spec.ald_ncsnv2_levels:
        lr = ncsnv2_step_lr(sigma_max, sigma_min, n, 5)
        cases.append(sampler_case(exp, "annealed_langevin", "ald (NCSNv2: 5 steps/level + denoise)",
                                  f"L={n} × 5 + denoise, step_lr={lr:.3g}", ald(n, 5, lr, True)))
    for n in spec.pc_steps:
        cases.append(sampler_case(exp, "pc_sampler", "pc (reverse diffusion + Langevin)",
                                  f"{n} steps, snr=0.16, 1 corrector step",
                                  {"sampling.method": "pc", "sampling.n_steps": n,
                                   "sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin",
                                   "sampling.snr": 0.16, "sampling.n_corrector_steps": 1, "sampling.denoise": True}))
    variance = "small" if kind in ("ve", "ve_continuous") else "large"  # "large" is VP-specific
    for n in spec.ddpm_steps:
        cases.append(sampler_case(exp, "ddpm_ancestral", f"ddpm ancestral ({variance} variance)", f"{n} steps",
                                  {"sampling.method": "ddpm", "sampling.n_steps": n, "sampling.variance": variance}))
    for eta in spec.ddim_etas:
        for n in spec.ddim_steps:
            cases.append(sampler_case(exp, "ddim", f"ddim η={eta:g}", f"{n} steps, η={eta:g}",
                                      {"sampling.method": "ddim", "sampling.n_steps": n, "sampling.eta": float(eta)}))
    cases += [ode_case(exp, tol) for tol in spec.ode_tols]
    for n in spec.heun_levels:
        cases.append(sampler_case(exp, "heun", "heun (EDM)", f"{n} Karras levels",
                                  {"sampling.method": "heun", "sampling.n_steps": n}))
    for order in (2, 3):
        for n in spec.solver_steps:
            cases.append(sampler_case(exp, "dpm_solver_pp", f"dpm-solver++ {order}M", f"{n} Karras levels",
                                      {"sampling.method": "dpm_solver", "sampling.n_steps": n,
                                       "sampling.order": order}))
    for n in spec.solver_steps:
        cases.append(sampler_case(exp, "unipc", "unipc (3, bh2)", f"{n} Karras levels",
                                  {"sampling.method": "unipc", "sampling.n_steps": n, "sampling.order": 3}))
    for n in spec.solver_steps:
        cases.append(sampler_case(exp, "fast_sample", "fast_sample", f"budget {n}",
                                  {"sampling.method": "fast", "sampling.n_steps": n}))
    return cases


def _denoiser(score: ScoreFn) -> Callable[[Tensor, Tensor], Tensor]:
    """k-diffusion's model interface: D(x, σ) = x + σ² s(x, σ), σ: [B]."""
    return lambda x, sigma: score_to_denoised(x, score(x, sigma), sigma)


def k_diffusion_cases(exp: Experiment, spec: GridSpec) -> list[Case]:
    """k-diffusion's Euler, Heun and DPM++(2M) samplers on its Karras (ρ = 7) and exponential grids of n
    levels from σ_max to σ_min plus 0 (grids built in float64, then cast to x's dtype)."""
    k = k_diffusion_sampling()
    if k is None:
        return [Case("k-diffusion", "k-diffusion", "", None, None, True,
                     skip="k-diffusion is not installed (pip install 'scorelib[peers]')")]
    sigma_max, sigma_min = exp.noise.sigma_range
    grids = {"Karras": lambda n: k.get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0),
             "exponential": lambda n: k.get_sigmas_exponential(n, sigma_min, sigma_max)}
    samplers = {"sample_euler": (k.sample_euler, lambda n: n), "sample_heun": (k.sample_heun, lambda n: 2 * n - 1),
                "sample_dpmpp_2m": (k.sample_dpmpp_2m, lambda n: n)}
    cases = []
    for sname, (fn, nfe) in samplers.items():
        for gname, grid_fn in grids.items():
            for n in spec.solver_steps:
                def sample(score: ScoreFn, x0: Tensor, g: torch.Generator, fn=fn, grid_fn=grid_fn, n=n) -> Tensor:
                    with default_dtype(torch.float64):
                        sigmas = grid_fn(n)
                    return fn(_denoiser(score), x0, sigmas.to(x0.device, x0.dtype), disable=True)

                cases.append(Case(f"k-diffusion {sname}", f"k-diffusion {sname} ({gname})", f"{n} {gname} levels",
                                  sample, nfe(n), True))
    return cases


def diffusers_cases(exp: Experiment, spec: GridSpec) -> list[Case]:
    """diffusers' DDIMScheduler (η = 0) and DPMSolverMultistepScheduler (DPM-Solver++ 2M) on the config's
    DDPM schedule through `ScoreToEps`, both with "trailing" timesteps (the first is T-1, so x_T is the
    shared σ_max·z scaled by 1/√(1+σ_max²)); without a DDPM schedule, EDMDPMSolverMultistepScheduler
    (DPM-Solver++ 2M in σ-space, Karras grid), fed the ε-output that its EDM preconditioning maps to D."""
    sch = diffusers_schedulers()
    if sch is None:
        return [Case("diffusers", "diffusers", "", None, None, True,
                     skip="diffusers is not installed (pip install 'scorelib[peers]')")]
    sigma_max, sigma_min = exp.noise.sigma_range
    if exp.noise.kind == "ddpm":
        betas = exp.noise.schedule.betas.numpy()
        T = len(betas)
        cases = []
        for n in spec.diffusers_ddim_steps:
            make = functools.partial(sch.DDIMScheduler, num_train_timesteps=T, trained_betas=betas,
                                     clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
            cases.append(Case("diffusers DDIMScheduler", "diffusers DDIMScheduler η=0", f"{n} trailing timesteps",
                              _diffusers_vp_loop(exp, make, n, {"eta": 0.0}), n, True))
        for n in spec.solver_steps:
            make = functools.partial(sch.DPMSolverMultistepScheduler, num_train_timesteps=T, trained_betas=betas,
                                     algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
                                     final_sigmas_type="zero")
            cases.append(Case("diffusers DPMSolverMultistepScheduler", "diffusers dpm-solver++ 2M",
                              f"{n} trailing timesteps", _diffusers_vp_loop(exp, make, n, {}), n, True))
        return cases
    skip = Case("diffusers DDIMScheduler", "diffusers DDIMScheduler η=0", "", None, None, True,
                skip=f"noise.kind={exp.noise.kind!r} (σ {sigma_max:g} → {sigma_min:g}) is not a DDPM "
                     f"schedule: DDIMScheduler needs discrete ᾱ_t")
    make = functools.partial(sch.EDMDPMSolverMultistepScheduler, sigma_min=sigma_min, sigma_max=sigma_max,
                             sigma_data=0.5, sigma_schedule="karras", solver_order=2, algorithm_type="dpmsolver++",
                             final_sigmas_type="zero")
    return [skip] + [Case("diffusers EDMDPMSolverMultistepScheduler", "diffusers EDM dpm-solver++ 2M",
                          f"{n} Karras levels", _diffusers_edm_loop(make, n), n, True) for n in spec.solver_steps]


def _diffusers_vp_loop(exp: Experiment, make: Callable[[], Any], n: int, step_kwargs: dict[str, Any]) -> SampleFn:
    """A diffusers DDPM-family scheduler's loop on the ε of the score (`ScoreToEps`), from x_T = x0/√(1+σ_max²)."""
    abar, sigma_max = exp.noise.schedule.alphas_cumprod, exp.noise.sigma_range[0]

    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> Tensor:
        sched = make()
        sched.set_timesteps(n, device=x0.device)
        eps_model = ScoreToEps(score, abar).to(x0.device)
        x = x0 / math.sqrt(1 + sigma_max**2)
        for t in sched.timesteps:
            eps = eps_model(x, t.to(x0.device).long().expand(x0.shape[0]))
            x = sched.step(eps, t, x, **step_kwargs).prev_sample
        return x

    return sample


def _diffusers_edm_loop(make: Callable[[], Any], n: int) -> SampleFn:
    """diffusers' EDM scheduler's loop, fed the network output F its EDM preconditioning maps to our D."""

    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> Tensor:
        sched = make()
        sched.set_timesteps(n, device=x0.device)
        sigma_data, x = sched.config.sigma_data, x0
        for i, t in enumerate(sched.timesteps):
            sigma = float(sched.sigmas[i])
            sigma_b = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
            d = score_to_denoised(x, score(x, sigma_b), sigma_b)
            c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
            c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
            x = sched.step((d - c_skip * x) / c_out, t, x).prev_sample  # its D = c_skip·x + c_out·out
        return x

    return sample


def default_cases(exp: Experiment, quick: bool = False, peers: bool = True) -> list[Case]:
    """The benchmark grid for an experiment (its sampling and noise as the model has them)."""
    spec = grid_spec(quick)
    cases = scorelib_cases(exp, spec)
    if peers:
        cases += k_diffusion_cases(exp, spec) + diffusers_cases(exp, spec)
    return cases
