"""Sampler benchmark: a grid of samplers on one config's model, with NFE, time, memory and quality.

    python main.py --config=toy_gmm --mode=bench --workdir=runs/toy
    python -m scorelib.bench --config configs/toy_gmm.py --workdir runs/toy [--quick] [--config.KEY=VALUE]

The model: the EMA weights of the newest checkpoint in WORKDIR/checkpoints (or `sampling.checkpoint`),
built from the checkpoint's own stored config; with no checkpoint, a toy config whose `data.toy` is a
Gaussian mixture (gmm8, grid25, two_modes) runs on the exact mixture (`data.toy_mixture`), whose
score is known at every σ. The σ range is `build.sigma_range(config)`; every sampler starts from the
same initial noise σ_max·z (z fixed per batch by the seed; `sampling.init` is not used here).

The grid (`grid_spec`; the quick one in brackets). Every scorelib row is `build.create_sampler` of a
copy of the config with a few fields changed (column `flags`), so its grid is `build.sampling_grid`
and its expected NFE `build.sampling_nfe`:
  - the config's own sampler;
  - annealed Langevin, NCSN setting: 100 steps per level, step_lr = 2e-5·(σ_min/0.01)², no denoising,
    L = 5, 10, 20 levels [5]; NCSNv2 setting: 5 steps per level + denoising, step_lr by NCSNv2's
    Technique 4 for the grid's ratio, L = 10, 20, 50, 100, 200 [10] (an index-conditioned NCSN maps
    other levels to its nearest trained one);
  - predictor-corrector (reverse diffusion + Langevin, snr 0.16): 10, 50, 100, 500 steps [10];
  - DDPM ancestral ("small" variance in VE, where it equals DDIM η = 1; else "large"):
    10, 20, 50, 100, 1000 steps [10]; DDIM at 10, 20, 50, 100, 1000 steps [10] × η = 0, 0.5, 1;
  - probability_flow (dopri5) at rtol = atol = 1e-2, 1e-3, 1e-4, 1e-5 [1e-3];
  - Heun (EDM) on 5, 10, 25, 50 Karras levels [5]; DPM-Solver++ 2M and 3M, UniPC (order 3) and
    fast_sample at 5, 10, 20, 50 steps / NFE [10].
Peers, when installed (`scorelib.peers`), on the same score and noise: k-diffusion's sample_euler,
sample_heun and sample_dpmpp_2m over D = x + σ² s on its Karras and exponential grids (5, 10, 20, 50
levels [10]); diffusers' DDIMScheduler (η = 0; 10, 50, 100 [10] steps) and DPMSolverMultistepScheduler
through `ScoreToEps` when the model has a DDPM schedule (`noise.kind = "ddpm"`); other σ ranges skip
DDIMScheduler with a note and run diffusers' σ-space EDMDPMSolverMultistepScheduler instead.

Per row: NFE counted by a counting score wrapper (checked against what the grid / sampler says),
wall time of sampling, samples/s, peak memory above the start of the run (`PeakMemory`), and
quality: the transport error ‖x - x_ref‖₂ (mean over samples) against a tight probability-flow ODE
solution from the same noise (deterministic samplers, toy data by default; NaN for stochastic ones),
plus the metrics of `evaluate.evaluate_samples(..., **build.evaluation_kwargs(config, workdir, real))`:
sliced Wasserstein, MMD² and the mean true log-density for toys, the digits FID, or FID / KID / IS (a
metric that cannot be computed, e.g. without Inception weights, holds the error text). Toy runs
start with two reference rows: fresh draws of the data (the metrics' sampling noise at this sample
size) and the tight ODE solution itself. A sampler that raises gets a failed row; the rest still run.
Outputs in WORKDIR/bench/: results.md (also printed), results.csv, results.json and, when matplotlib
is importable, quality_vs_nfe.png and quality_vs_time.png.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import build
from .checkpoint import CheckpointError, atomic_write_bytes
from .samplers import probability_flow
from .samplers._common import CountingScore
from .tasks import checkpoint_source, guidance_classifier, trained_network
from .train import Runtime, setup_runtime
from .utils import append_dims, default_dtype

ScoreFn = Callable[..., Tensor]
SampleFn = Callable[[ScoreFn, Tensor, torch.Generator], "Tensor | tuple[Tensor, int]"]

MIXTURE_TOYS = ("gmm8", "grid25", "two_modes")
NCSN_STEP_LR = 2e-5  # NCSN (Song & Ermon 2019): step_lr for σ_L = 0.01, 100 steps per level, no denoising


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


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


def ncsnv2_step_lr(sigma_max: float, sigma_min: float, n_levels: int, n_steps_each: int) -> float:
    """NCSNv2's step size (Song & Ermon 2020, Technique 4) for a geometric grid of `n_levels` from
    σ_max to σ_min and T = n_steps_each: ε minimising |eq. 7 - 1| at the grid's ratio γ."""
    from scipy import optimize

    from .samplers.langevin import langevin_variance_ratio

    ratio = (sigma_max / sigma_min) ** (1.0 / max(n_levels - 1, 1))
    res = optimize.minimize_scalar(
        lambda e: abs(langevin_variance_ratio(e * sigma_min**2, sigma_min, ratio, n_steps_each) - 1),
        bounds=(1e-8, 1.0), method="bounded", options={"xatol": 1e-10})
    return float(res.x) * sigma_min**2


def _raiser(error: Exception) -> SampleFn:
    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> Tensor:
        raise error

    return sample


def config_case(config: Any, name: str, family: str, settings: str, overrides: dict[str, Any]) -> Case:
    """A row running `build.create_sampler` on the config with `overrides` (sampling.init is set to
    gaussian: x0 = grid[0]·z with z the first draw of the row's generator)."""
    overrides = {"sampling.init": "gaussian", **overrides}
    flags = " ".join(f"--config.{k}={build.format_value(v)}" for k, v in overrides.items())
    try:
        cfg = build.with_overrides(config, overrides)
        sampler = build.create_sampler(cfg)
        nfe = build.sampling_nfe(cfg)
    except Exception as e:  # a setting this config cannot build: the row reports it
        return Case(name, family, settings, _raiser(e), None, False, flags)
    deterministic = build.is_deterministic(cfg)

    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> Tensor:
        return sampler(score, tuple(x0.shape), g, x0.device)

    return Case(name, family, settings, sample, nfe if nfe > 0 else None, deterministic, flags)


def ode_case(config: Any, tol: float) -> Case:
    """The probability-flow ODE (dopri5, rtol = atol = tol, final Tweedie step) with its own NFE count."""
    sigma_max, sigma_min = build.sigma_range(config)
    flags = (f"--config.sampling.method=ode --config.sampling.ode_method=dopri5 --config.sampling.rtol={tol:g} "
             f"--config.sampling.atol={tol:g} --config.sampling.denoise=True")

    def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> tuple[Tensor, int]:
        return probability_flow(score, x0, sigma_max, sigma_min, "dopri5", tol, tol, denoise=True, return_nfe=True)

    return Case("probability_flow", "ode (dopri5)", f"rtol=atol={tol:g}", sample, None, True, flags)


def scorelib_cases(config: Any, spec: GridSpec) -> list[Case]:
    """scorelib's samplers on the config's model, each as `build.create_sampler` of a changed config."""
    sigma_max, sigma_min = build.sigma_range(config)
    kind = build.noise_kind(config)
    ve = kind == "ve"  # there annealed Langevin's levels are noise.num_scales, else sampling.n_steps
    method = build.sample_settings(config).method
    cases = [config_case(config, f"config ({method})", "config", build.describe_sampler(config), {})]

    def ald(levels: int, steps: int, step_lr: float, denoise: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"sampling.method": "ald", "sampling.n_steps": levels, "sampling.n_steps_each": steps,
                               "sampling.step_lr": step_lr, "sampling.denoise": denoise}
        return {**out, "noise.num_scales": levels} if ve else out

    for n in spec.ald_ncsn_levels:
        lr = NCSN_STEP_LR * (sigma_min / 0.01) ** 2
        cases.append(config_case(config, "annealed_langevin", "ald (NCSN: 100 steps/level)",
                                 f"L={n} × 100, step_lr={lr:.3g}", ald(n, 100, lr, False)))
    for n in spec.ald_ncsnv2_levels:
        lr = ncsnv2_step_lr(sigma_max, sigma_min, n, 5)
        cases.append(config_case(config, "annealed_langevin", "ald (NCSNv2: 5 steps/level + denoise)",
                                 f"L={n} × 5 + denoise, step_lr={lr:.3g}", ald(n, 5, lr, True)))
    for n in spec.pc_steps:
        cases.append(config_case(config, "pc_sampler", "pc (reverse diffusion + Langevin)",
                                 f"{n} steps, snr=0.16, 1 corrector step",
                                 {"sampling.method": "pc", "sampling.n_steps": n,
                                  "sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin",
                                  "sampling.snr": 0.16, "sampling.n_corrector_steps": 1, "sampling.denoise": True}))
    variance = "small" if kind in ("ve", "ve_continuous") else "large"  # "large" is VP-specific
    for n in spec.ddpm_steps:
        cases.append(config_case(config, "ddpm_ancestral", f"ddpm ancestral ({variance} variance)", f"{n} steps",
                                 {"sampling.method": "ddpm", "sampling.n_steps": n, "sampling.variance": variance}))
    for eta in spec.ddim_etas:
        for n in spec.ddim_steps:
            cases.append(config_case(config, "ddim", f"ddim η={eta:g}", f"{n} steps, η={eta:g}",
                                     {"sampling.method": "ddim", "sampling.n_steps": n, "sampling.eta": float(eta)}))
    cases += [ode_case(config, tol) for tol in spec.ode_tols]
    for n in spec.heun_levels:
        cases.append(config_case(config, "heun", "heun (EDM)", f"{n} Karras levels",
                                 {"sampling.method": "heun", "sampling.n_steps": n}))
    for order in (2, 3):
        for n in spec.solver_steps:
            cases.append(config_case(config, "dpm_solver_pp", f"dpm-solver++ {order}M", f"{n} Karras levels",
                                     {"sampling.method": "dpm_solver", "sampling.n_steps": n, "sampling.order": order}))
    for n in spec.solver_steps:
        cases.append(config_case(config, "unipc", "unipc (3, bh2)", f"{n} Karras levels",
                                 {"sampling.method": "unipc", "sampling.n_steps": n, "sampling.order": 3}))
    for n in spec.solver_steps:
        cases.append(config_case(config, "fast_sample", "fast_sample", f"budget {n}",
                                 {"sampling.method": "fast", "sampling.n_steps": n}))
    return cases


def _denoiser(score: ScoreFn) -> Callable[[Tensor, Tensor], Tensor]:
    """k-diffusion's model interface: D(x, σ) = x + σ² s(x, σ), σ: [B]."""
    return lambda x, sigma: x + append_dims(sigma, x.ndim) ** 2 * score(x, sigma)


def k_diffusion_cases(config: Any, spec: GridSpec) -> list[Case]:
    """k-diffusion's Euler, Heun and DPM++(2M) samplers on its Karras (ρ = 7) and exponential grids of n
    levels from σ_max to σ_min plus 0 (grids built in float64, then cast to x's dtype)."""
    from .peers import k_diffusion_sampling

    k = k_diffusion_sampling()
    if k is None:
        return [Case("k-diffusion", "k-diffusion", "", None, None, True,
                     skip="k-diffusion is not installed (pip install 'scorelib[peers]')")]
    sigma_max, sigma_min = build.sigma_range(config)
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


def diffusers_cases(config: Any, spec: GridSpec) -> list[Case]:
    """diffusers' DDIMScheduler (η = 0) and DPMSolverMultistepScheduler (DPM-Solver++ 2M) on the config's
    DDPM schedule through `ScoreToEps`, both with "trailing" timesteps (the first is T-1, so x_T is the
    shared σ_max·z scaled by 1/√(1+σ_max²)); without a DDPM schedule, EDMDPMSolverMultistepScheduler
    (DPM-Solver++ 2M in σ-space, Karras grid), fed the ε-output that its EDM preconditioning maps to D."""
    from .peers import diffusers_schedulers

    sch = diffusers_schedulers()
    if sch is None:
        return [Case("diffusers", "diffusers", "", None, None, True,
                     skip="diffusers is not installed (pip install 'scorelib[peers]')")]
    sigma_max, sigma_min = build.sigma_range(config)
    cases: list[Case] = []
    kind = build.noise_kind(config)
    if kind == "ddpm":
        from .adapters import ScoreToEps

        sched_cfg = build.create_schedule(config)
        betas, abar = sched_cfg.betas.numpy(), sched_cfg.alphas_cumprod

        def vp_loop(make: Callable[[], Any], n: int, step_kwargs: dict[str, Any]) -> SampleFn:
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

        T = len(betas)
        for n in spec.diffusers_ddim_steps:
            make = lambda: sch.DDIMScheduler(num_train_timesteps=T, trained_betas=betas, clip_sample=False,  # noqa: E731
                                             set_alpha_to_one=True, timestep_spacing="trailing")
            cases.append(Case("diffusers DDIMScheduler", "diffusers DDIMScheduler η=0", f"{n} trailing timesteps",
                              vp_loop(make, n, {"eta": 0.0}), n, True))
        for n in spec.solver_steps:
            make = lambda: sch.DPMSolverMultistepScheduler(  # noqa: E731
                num_train_timesteps=T, trained_betas=betas, algorithm_type="dpmsolver++", solver_order=2,
                timestep_spacing="trailing", final_sigmas_type="zero")
            cases.append(Case("diffusers DPMSolverMultistepScheduler", "diffusers dpm-solver++ 2M",
                              f"{n} trailing timesteps", vp_loop(make, n, {}), n, True))
        return cases

    cases.append(Case("diffusers DDIMScheduler", "diffusers DDIMScheduler η=0", "", None, None, True,
                      skip=f"noise.kind={kind!r} (σ {sigma_max:g} → {sigma_min:g}) is not a DDPM "
                           f"schedule: DDIMScheduler needs discrete ᾱ_t"))
    sigma_data = 0.5

    def edm_sample(n: int) -> SampleFn:
        def sample(score: ScoreFn, x0: Tensor, g: torch.Generator) -> Tensor:
            sched = sch.EDMDPMSolverMultistepScheduler(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                                                       sigma_schedule="karras", solver_order=2,
                                                       algorithm_type="dpmsolver++", final_sigmas_type="zero")
            sched.set_timesteps(n, device=x0.device)
            x = x0
            for i, t in enumerate(sched.timesteps):
                sigma = float(sched.sigmas[i])
                d = x + sigma**2 * score(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))
                c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
                c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
                x = sched.step((d - c_skip * x) / c_out, t, x).prev_sample  # its D = c_skip·x + c_out·out
            return x

        return sample

    for n in spec.solver_steps:
        cases.append(Case("diffusers EDMDPMSolverMultistepScheduler", "diffusers EDM dpm-solver++ 2M",
                          f"{n} Karras levels", edm_sample(n), n, True))
    return cases


def default_cases(config: Any, quick: bool = False, peers: bool = True) -> list[Case]:
    """The benchmark grid for a config (its sampling, noise and data fields as the model has them)."""
    spec = grid_spec(quick)
    cases = scorelib_cases(config, spec)
    if peers:
        cases += k_diffusion_cases(config, spec) + diffusers_cases(config, spec)
    return cases


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


class _Meter(CountingScore):
    """Counts score evaluations and checks that the first one sees the shared initial noise (as the first
    rows of its batch: `fast_sample` appends its probe points after them)."""

    def __init__(self, score: ScoreFn, x0: Tensor):
        super().__init__(score)
        self.x0 = x0

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        head = x[: len(self.x0)]
        if self.nfe == 0 and (head.shape != self.x0.shape or not torch.allclose(
                head, self.x0, rtol=1e-4, atol=1e-6 * float(self.x0.abs().max()))):
            raise RuntimeError("the sampler did not start from the shared initial noise σ_max·z")
        return super().__call__(x, sigma, **kwargs)


def _read_status_kib(field_name: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field_name}:\s+(\d+)", text, re.MULTILINE).group(1))


class PeakMemory:
    """Peak memory of a block above its level at the start, in MiB. CUDA: max_memory_allocated minus
    memory_allocated at the start. CPU on Linux: the peak resident set size (VmHWM, reset through
    /proc/self/clear_refs) minus the RSS at the start (resolution about 0.25 MiB per thread). Elsewhere:
    the growth of getrusage's ru_maxrss, a process-lifetime peak, so a run below an earlier run's peak
    shows 0."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "CUDA max_memory_allocated above the start"
        elif self._reset_hwm():
            self.kind = "CPU peak RSS (VmHWM, reset per run) above the start"
        else:
            self.kind = "CPU ru_maxrss growth (process-lifetime peak)"
        self.start = 0.0

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _read_status_kib("VmHWM")
            return True
        except (OSError, AttributeError):
            return False

    @staticmethod
    def _maxrss_mib() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.kind.startswith("CPU peak RSS"):
            self._reset_hwm()
            self.start = _read_status_kib("VmRSS") / 1024
        else:
            self.start = self._maxrss_mib()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
        elif self.kind.startswith("CPU peak RSS"):
            # the kernel's RSS counters lag by up to 64 pages per thread: clamp the noise at 0
            self.peak = max(0.0, _read_status_kib("VmHWM") / 1024 - self.start)
        else:
            self.peak = self._maxrss_mib() - self.start


@dataclass
class Model:
    """What the benchmark samples from: a score function and where it came from."""

    score: ScoreFn
    source: str
    exact: Any | None = None  # the GaussianMixture when the score is exact
    net: torch.nn.Module | None = None
    config: Any = None  # the config with the checkpoint's model / noise / data fields


def load_model(config: Any, workdir: Path, device: torch.device) -> Model:
    """The newest checkpoint's EMA network (`sampling.checkpoint` or WORKDIR/checkpoints), built from its
    stored config, as a σ-space score model; else the exact mixture of a mixture toy config."""
    source = checkpoint_source(config, workdir, required=False)
    if source is not None:
        net, cfg = trained_network(config, source, device)
        return Model(build.create_score_model(cfg, net).eval(), f"checkpoint {source} (EMA weights)", None, net, cfg)
    d = build.data_spec(config)
    if d.dataset == "toy" and d.toy in MIXTURE_TOYS:
        from .data import toy_mixture

        gmm = toy_mixture(d.toy)
        return Model(gmm, f"exact {d.toy} mixture (no checkpoint in {workdir / 'checkpoints'})", gmm, None,
                     copy.deepcopy(config))
    raise CheckpointError(f"no checkpoints in {workdir / 'checkpoints'} and no exact score for this config; train "
                          f"first (--mode=train) or set --config.sampling.checkpoint")


def _guided(config: Any, net: torch.nn.Module | None) -> bool:
    """Whether the score of a checkpoint's network takes labels (and maybe guidance)."""
    return net is not None and build.sample_settings(config).labelled


def _batch_scores(config: Any, score: ScoreFn, net: torch.nn.Module | None, device: torch.device, n: int,
                  seed: int) -> Callable[[int, int], ScoreFn]:
    """`scores(start, b)`: the score of samples [start, start+b). Class-conditional models get
    `build.sampling_labels` (drawn once for all n) and the configured guidance, as in `train.sample_images`."""
    if not _guided(config, net):
        return lambda start, b: score
    classifier = guidance_classifier(config, device)
    labels = build.sampling_labels(config, n, torch.Generator().manual_seed(seed), torch.device("cpu"))
    return lambda start, b: build.guided_score(config, score, labels[start:start + b].to(device), classifier)


def _reference(config: Any, model: Model, x0s: Sequence[Tensor], starts: Sequence[int], n: int, seed: int,
               device: torch.device, tol: float) -> tuple[list[Tensor], list[int], str]:
    """The probability-flow ODE solution (dopri5 at rtol = atol = tol, then the Tweedie step) from each
    batch of initial noise: in float64 (a float64 copy of a network), float32 for guided models. Returns
    the per-batch solutions (float64), the per-batch NFE and a description of the solve."""
    guided = _guided(config, model.net)
    if model.exact is not None or guided:
        scores = _batch_scores(config, model.score, model.net, device, n, seed)
        dtype = torch.float32 if guided else torch.float64
    else:
        net64 = copy.deepcopy(model.net).double()
        score64 = build.create_score_model(config, net64).eval()
        scores, dtype = (lambda start, b: score64), torch.float64
    sigma_max, sigma_min = build.sigma_range(config)
    outs, nfes = [], []
    with torch.no_grad():
        for start, x0 in zip(starts, x0s, strict=True):
            out, k = probability_flow(scores(start, len(x0)), x0.to(dtype), sigma_max, sigma_min, rtol=tol, atol=tol,
                                      return_nfe=True)
            outs.append(out.double())
            nfes.append(int(k))
    return outs, nfes, (f"probability_flow dopri5, rtol=atol={tol:g}, {str(dtype).removeprefix('torch.')}, "
                        f"+ Tweedie step at σ_min")


def _all_batches(rt: Runtime, mine: Sequence[int], parts: Sequence[Any]) -> list[Any]:
    """Under torchrun: the per-batch values of every process (parts[j] belongs to batch mine[j]), in
    batch order, on every process; tensors travel through the CPU. One process: `parts` itself."""
    if rt.world == 1:
        return list(parts)
    local = [(k, p.cpu() if isinstance(p, Tensor) else p) for k, p in zip(mine, parts, strict=True)]
    everyone: list[Any] = [None] * rt.world
    dist.all_gather_object(everyone, local)
    return [p for _, p in sorted((kp for r in everyone for kp in r), key=lambda kp: kp[0])]


def _max_over_processes(rt: Runtime, value: float) -> float:
    """The largest `value` over the processes (the wall time of work done side by side)."""
    if rt.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _metric_columns(eval_kwargs: dict[str, Any], config: Any) -> tuple[str, ...]:
    kind = eval_kwargs["kind"]
    if kind == "toy":
        return ("sliced_wasserstein", "mmd_rbf") + (("mean_log_density",) if eval_kwargs.get("gmm") else ())
    if kind == "digits":
        return ("fid", "class_entropy")
    names = {"fid": ("fid",), "kid": ("kid", "kid_std"), "is": ("is", "is_std")}
    return tuple(c for m in eval_kwargs.get("metrics", ()) for c in names.get(m, ()))


def _error_text(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:500]


def _float_cols(row: dict[str, Any]) -> None:
    for k, v in list(row.items()):
        if isinstance(v, Tensor):
            row[k] = float(v)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


BASE_COLUMNS = ("sampler", "family", "settings", "nfe", "nfe_expected", "nfe_ok", "wall_s", "samples_per_s",
                "peak_mem_mib", "transport_error")
TAIL_COLUMNS = ("status", "error", "flags")


@dataclass
class BenchReport:
    """What `run` returns: rows (one dict per case, the CSV columns plus any list-valued metrics),
    the metadata written to results.json, and the files written."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    columns: tuple[str, ...]
    files: dict[str, Path] = field(default_factory=dict)
    table: str = ""


def run(config: Any, workdir: str | Path, *, quick: bool = False, n_samples: int | None = None,
        batch_size: int | None = None, peers: bool = True, reference: bool | None = None,
        reference_tol: float = 1e-9, cases: Sequence[Case] | None = None, plots: bool = True,
        progress: bool = True, seed: int | None = None) -> BenchReport:
    """Run the sampler grid (`default_cases(config, quick, peers)`, or `cases`) on the config's model and
    write WORKDIR/bench/results.{md,csv,json} (+ PNG plots when matplotlib is importable).

    n_samples: samples per row (default: 256 with `quick`, else eval.n_samples), drawn in batches of
    `batch_size` (default sampling.batch_size). reference: compute the tight-ODE transport error
    (default: for toy data, whose ODE is cheap), solved in float64 with dopri5 at rtol = atol =
    `reference_tol`. seed: of the initial noise and the samplers' noise (default config.seed + 3).
    A row whose sampler raises records the error and the grid goes on.

    Under torchrun the batches are shared out (batch k on process k mod world; each batch's noise is
    seeded by its index, so the samples are those of one process); wall time is the slowest process's,
    peak memory rank 0's, and only rank 0 computes metrics and writes files.
    """
    from tqdm.auto import tqdm

    from . import evaluate

    workdir = Path(workdir)
    rt = setup_runtime(config)
    device = rt.device
    if device.type == "cpu" and "OMP_WAIT_POLICY" not in os.environ:
        print("scorelib.bench: OMP_WAIT_POLICY is unset; spinning OpenMP threads distort timings on shared cores "
              "(set OMP_WAIT_POLICY=PASSIVE)", file=sys.stderr)
    model = load_model(config, workdir, device)
    cfg = model.config
    sigma_max, sigma_min = build.sigma_range(cfg)
    d, e = build.data_spec(cfg), build.eval_settings(cfg)
    shape = d.shape
    n = n_samples or (min(256, e.n_samples) if quick else e.n_samples)
    bs = min(batch_size or build.sample_settings(cfg).batch_size, n)
    seed = e.seed + 3 if seed is None else seed
    starts = list(range(0, n, bs))
    x0s = [sigma_max * torch.randn((min(bs, n - s), *shape), generator=torch.Generator(device).manual_seed(seed + k),
                                   device=device) for k, s in enumerate(starts)]
    mine = list(range(len(starts)))[rt.rank::rt.world]  # the batches this process samples
    batch_score = _batch_scores(cfg, model.score, model.net, device, n, seed)
    cases = list(default_cases(cfg, quick, peers) if cases is None else cases)

    # the tight ODE solution from the same noise, for the transport error of deterministic samplers
    want_ref = d.dataset == "toy" if reference is None else reference
    ref, ref_info, ref_nfe, ref_seconds = None, "not computed (image data: pass reference=True)", math.nan, math.nan
    if want_ref:
        t0 = time.perf_counter()
        ref_parts, ref_nfes, ref_info = _reference(cfg, model, [x0s[k] for k in mine], [starts[k] for k in mine], n,
                                                   seed, device, reference_tol)
        ref_seconds = _max_over_processes(rt, time.perf_counter() - t0)
        ref = torch.cat(_all_batches(rt, mine, ref_parts)).to(device)
        ref_nfe = sum(_all_batches(rt, mine, ref_nfes)) / len(starts)
        ref_info += f"; {ref_nfe:.0f} NFE per batch, {ref_seconds:.1f} s"

    data = build.create_dataset(cfg, train=False)
    real = None if data is None else data.images
    eval_kwargs = build.evaluation_kwargs(cfg, workdir, real)
    if eval_kwargs.get("kind") == "images" and "device" not in eval_kwargs:
        eval_kwargs["device"] = device
    metric_cols = _metric_columns(eval_kwargs, cfg)
    columns = BASE_COLUMNS + metric_cols + TAIL_COLUMNS

    with torch.no_grad():  # warm-up: one untimed evaluation (lazy initialisation, first-call costs)
        batch_score(0, len(x0s[0]))(x0s[0], torch.full((len(x0s[0]),), sigma_max, device=device))
    mem_probe = PeakMemory(device)
    reference_metrics: dict[str, Any] = {}

    def new_row(name: str, family: str, settings: str, status: str, flags: str = "") -> dict[str, Any]:
        row = {c: math.nan for c in columns}
        row.update(sampler=name, family=family, settings=settings, flags=flags, nfe_expected=None, nfe_ok=None,
                   status=status, error="")
        return row

    def add_quality(row: dict[str, Any], x: Tensor) -> None:
        """The metric columns of samples x (the same random projections etc. for every row); an error's
        text (e.g. missing Inception weights) goes into the metric columns. Rank 0 only."""
        if not rt.is_main:
            return
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                metrics = evaluate.evaluate_samples(x.float(), **eval_kwargs)
        except Exception as e:
            row.update({c: _error_text(e) for c in metric_cols})
            return
        for key, value in metrics.items():
            if key in metric_cols or isinstance(value, list):
                row[key] = value
            elif key != "n_samples":
                reference_metrics.setdefault(key, value)

    # reference rows: independent draws of the data (the metrics' sampling noise at this n), and the tight
    # ODE solution from the shared noise (what an exact deterministic solver would give)
    rows: list[dict[str, Any]] = []
    if eval_kwargs["kind"] == "toy":
        from .data import toy_data

        rows.append(new_row("true samples", "true samples", f"{n} fresh draws of {d.toy}", "reference"))
        add_quality(rows[-1], toy_data(d.toy, n, torch.Generator().manual_seed(seed + 11)))
    if ref is not None:
        rows.append(new_row("probability_flow (reference)", "tight ODE (reference)",
                            f"dopri5, rtol=atol={reference_tol:g}, float64", "reference"))
        rows[-1].update(nfe=round(ref_nfe, 1), wall_s=ref_seconds, samples_per_s=n / ref_seconds)
        add_quality(rows[-1], ref)
    bar = tqdm(cases, desc="bench", unit="run", file=sys.stderr, disable=not (progress and rt.is_main),
               dynamic_ncols=True)
    for case in bar:
        bar.set_postfix_str(f"{case.family}, {case.settings}"[:60])
        row = new_row(case.name, case.family, case.settings, "ok", case.flags)
        row["nfe_expected"] = case.nfe
        if case.skip or case.sample is None:
            row.update(status="skipped", error=case.skip or "no sampler", nfe=math.nan)
            rows.append(row)
            continue
        outs, counts, expected, error, wall = [], [], [], "", 0.0
        try:
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                for k in mine:
                    start, x0 = starts[k], x0s[k]
                    meter = _Meter(batch_score(start, len(x0)), x0)
                    g = torch.Generator(device).manual_seed(seed + k)
                    with torch.no_grad():
                        out = case.sample(meter, x0, g)
                    x, reported = out if isinstance(out, tuple) else (out, None)
                    outs.append(x)
                    counts.append(meter.nfe)
                    expected.append(case.nfe if case.nfe is not None else reported)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                wall = time.perf_counter() - t0
        except Exception as e:
            error = _error_text(e)
        errors = [err for err in _all_batches(rt, [rt.rank], [error]) if err]
        if errors:  # every process records the failure, so all skip the exchange below alike
            row.update(status="failed", error=errors[0])
            rows.append(row)
            if rt.is_main:
                bar.write(f"{case.family} [{case.settings}] failed: {row['error']}", file=sys.stderr)
            continue
        wall = _max_over_processes(rt, wall)
        counts, expected = _all_batches(rt, mine, counts), _all_batches(rt, mine, expected)
        x = torch.cat(_all_batches(rt, mine, outs)).to(device)
        nfe = sum(counts) / len(counts)
        row.update(nfe=int(nfe) if nfe == int(nfe) else round(nfe, 1), wall_s=wall, samples_per_s=n / wall,
                   peak_mem_mib=mem.peak)
        if all(e is not None for e in expected):
            exp = sum(expected) / len(expected)
            row["nfe_expected"] = int(exp) if exp == int(exp) else round(exp, 1)
            row["nfe_ok"] = counts == expected
            if not row["nfe_ok"]:
                row.update(status="nfe mismatch", error=f"counted {counts}, the sampler / grid says {expected}")
        bad = int((~torch.isfinite(x.flatten(1)).all(1)).sum())
        if bad:
            row["error"] = (row["error"] + "; " if row["error"] else "") + f"{bad} of {n} samples not finite"
        if ref is not None and case.deterministic:
            row["transport_error"] = float((x.double() - ref).flatten(1).norm(dim=1).mean())
        add_quality(row, x)
        _float_cols(row)
        rows.append(row)
    bar.close()

    meta = {
        "config": build.describe_model(config), "model": model.source, "device": str(device),
        "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "python": platform.python_version(), "torch": torch.__version__, "machine": platform.processor() or
        platform.machine(), "sigma_max": sigma_max, "sigma_min": sigma_min, "sample_shape": list(shape),
        "n_samples": n, "batch_size": bs, "seed": seed, "quick": quick,
        "initial_noise": "σ_max·z for every sampler, z from torch.Generator(device).manual_seed(seed + batch)",
        "wall_time": "sampling only (all batches), one run per row; metrics excluded",
        "peak_memory": mem_probe.kind, "transport_reference": ref_info,
        "metrics": f"evaluate.evaluate_samples kind={eval_kwargs['kind']!r}", "reference_metrics": reference_metrics,
    }
    if not rt.is_main:
        return BenchReport(rows, meta, columns)
    return _write_outputs(rows, meta, columns, metric_cols, workdir / "bench", plots)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4g}"
    return str(v)


HEADERS = {"sampler": "sampler", "family": "family", "settings": "settings", "nfe": "NFE", "wall_s": "wall s",
           "samples_per_s": "samples/s", "peak_mem_mib": "peak MiB", "transport_error": "transport err",
           "sliced_wasserstein": "SW₂", "mmd_rbf": "MMD²", "mean_log_density": "mean log p", "fid": "FID",
           "class_entropy": "class H", "kid": "KID", "kid_std": "KID std", "is": "IS", "is_std": "IS std",
           "status": "status"}


def markdown_table(rows: Sequence[dict[str, Any]], metric_cols: Sequence[str]) -> str:
    """The rows as a markdown table (NFE shows the expected count too when they differ; errors cut at 80)."""
    cols = ["family", "settings", "nfe", "wall_s", "samples_per_s", "peak_mem_mib", "transport_error",
            *metric_cols, "status"]
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |",
             "|" + "|".join("---" if c in ("family", "settings", "status") else "---:" for c in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "nfe" and r.get("nfe_ok") is False:
                cells.append(f"{_cell(v)} (expected {_cell(r.get('nfe_expected'))})")
            elif c == "status" and r.get("error"):
                err = str(r["error"]).replace("|", "\\|")
                cells.append(f"{r['status']}: {err[:80]}{'…' if len(err) > 80 else ''}")
            elif isinstance(v, str) and c in metric_cols:
                cells.append("error")
            else:
                cells.append(_cell(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Tensor):
        return v.tolist()
    return str(v)


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def _write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], columns: tuple[str, ...],
                   metric_cols: tuple[str, ...], out: Path, plots: bool) -> BenchReport:
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
    table = markdown_table(rows, metric_cols)
    plot_files, plot_note = (_plot(rows, metric_cols, out) if plots else ([], "plots disabled"))
    meta["plots"] = [p.name for p in plot_files] or plot_note
    plots_text = ", ".join(meta["plots"]) if isinstance(meta["plots"], list) else meta["plots"]
    lines = [f"# Sampler benchmark: {meta['config']}", "",
             f"- model: {meta['model']}; device {meta['device']}, {meta['torch_threads']} threads, "
             f"OMP_WAIT_POLICY={meta['omp_wait_policy']}",
             f"- σ {meta['sigma_max']:g} → {meta['sigma_min']:g}; {meta['n_samples']} samples of shape "
             f"{tuple(meta['sample_shape'])} in batches of {meta['batch_size']}; {meta['initial_noise']}",
             f"- wall time: {meta['wall_time']}; peak memory: {meta['peak_memory']}",
             f"- transport error: mean ‖x - x_ref‖₂ over samples, deterministic samplers only; reference: "
             f"{meta['transport_reference']}",
             f"- quality: {meta['metrics']}; reference values: "
             + (", ".join(f"{k} = {_cell(v)}" for k, v in meta["reference_metrics"].items()
                          if not isinstance(v, list)) or "none"),
             f"- plots: {plots_text}", "", table, ""]
    atomic_write_bytes(files["markdown"], lambda f: f.write("\n".join(lines).encode()))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    atomic_write_bytes(files["csv"], lambda f: f.write(buf.getvalue().encode()))
    payload = _nan_to_none({"meta": meta, "columns": list(columns), "rows": rows})
    atomic_write_bytes(files["json"], lambda f: f.write(
        (json.dumps(payload, indent=1, default=_json_default, ensure_ascii=False) + "\n").encode()))
    for i, p in enumerate(plot_files):
        files[f"plot{i}"] = p
    print("\n".join(lines))
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return BenchReport(rows, meta, columns, files, table)


def _plot(rows: Sequence[dict[str, Any]], metric_cols: Sequence[str], out: Path) -> tuple[list[Path], str]:
    """quality_vs_nfe.png and quality_vs_time.png: one panel per quality measure (transport error, then
    the first distribution metric), one marker series per sampler family; log-log axes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (a dependency of scorelib: pip install matplotlib): no plots"
    ok = [r for r in rows if r["status"] == "ok"]
    panels = [c for c in ("transport_error", *metric_cols[:1])
              if any(isinstance(r.get(c), float) and math.isfinite(r[c]) and r[c] > 0 for r in ok)]
    if not panels:
        return [], "no finite positive quality values to plot"
    families = list(dict.fromkeys(r["family"] for r in ok))
    markers = "osD^v<>pP*Xh"
    paths = []
    for xcol, fname, xlabel in (("nfe", "quality_vs_nfe.png", "NFE (score evaluations per sample)"),
                                ("wall_s", "quality_vs_time.png", "wall time per row (s)")):
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
        for ax, ycol in zip(axes[0], panels, strict=True):
            for i, fam in enumerate(families):
                pts = sorted((r[xcol], r[ycol]) for r in ok if r["family"] == fam and isinstance(r.get(ycol), float)
                             and math.isfinite(r[ycol]) and r[ycol] > 0 and isinstance(r.get(xcol), int | float))
                if pts:
                    peer = fam.startswith(("k-diffusion", "diffusers"))
                    ax.plot(*zip(*pts, strict=True), marker=markers[i % len(markers)], linestyle="--" if peer else "-",
                            label=fam, color=plt.cm.tab20(i % 20))
            floor = [r[ycol] for r in rows if r["status"] == "reference" and isinstance(r.get(ycol), float)]
            if floor and math.isfinite(floor[0]) and floor[0] > 0:
                ax.axhline(floor[0], color="k", linestyle=":", linewidth=1, label="true samples (floor)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(HEADERS.get(ycol, ycol))
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths, ""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def load_config(arg: str) -> tuple[Any, str]:
    """(config, name) from a config name (configs/NAME.py beside the package or in the working
    directory) or a path to a config file; the file's get_config() is called."""
    from .defaults import run_config_file

    path = Path(arg)
    if not (path.suffix == ".py" and path.is_file()):
        candidates = [root / "configs" / f"{arg}.py" for root in (Path(__file__).resolve().parents[1], Path.cwd())]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
        _fail(f"no config {arg!r} (looked for {path})")
    return run_config_file(path), path.stem


def _fail(message: str) -> None:
    """A user mistake: one line on stderr and exit status 2, as main.py."""
    print(f"scorelib.bench: {message}", file=sys.stderr)
    raise SystemExit(2)


def _parse_value(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m scorelib.bench --config NAME_OR_PATH [--workdir DIR] [--quick] [--config.KEY=VALUE ...]`."""
    import argparse

    from .data import DataError

    parser = argparse.ArgumentParser(prog="python -m scorelib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="config name (configs/NAME.py) or path")
    parser.add_argument("--workdir", help="run directory (default runs/<config name>); results in WORKDIR/bench")
    parser.add_argument("--quick", action="store_true", help="the small grid (one or two settings per sampler)")
    parser.add_argument("--n-samples", type=int, help="samples per row (default 256 quick, else eval.n_samples)")
    parser.add_argument("--batch-size", type=int, help="sampling batch size (default sampling.batch_size)")
    parser.add_argument("--no-peers", action="store_true", help="leave out k-diffusion and diffusers")
    parser.add_argument("--reference", choices=("auto", "yes", "no"), default="auto",
                        help="tight-ODE transport error (auto: toy data only)")
    parser.add_argument("--no-progress", action="store_true")
    args, rest = parser.parse_known_args(argv)
    config, name = load_config(args.config)
    for arg in rest:  # --config.sampling.checkpoint=/path etc.
        if not arg.startswith("--config.") or "=" not in arg:
            parser.error(f"unrecognised argument {arg!r} (config overrides are --config.KEY=VALUE)")
        key, value = arg[len("--config."):].split("=", 1)
        try:
            config = build.with_overrides(config, {key: _parse_value(value)})
        except (build.ConfigError, KeyError, AttributeError, TypeError) as e:
            parser.error(f"cannot set config.{key}: {e}")
    workdir = Path(args.workdir or Path("runs") / name)
    from . import validate

    try:  # one line before any work, as main.py does
        validate.check_config(config, "bench")
        validate.check_workdir(workdir)
    except build.ConfigError as e:
        _fail(str(e))
    reference = None if args.reference == "auto" else args.reference == "yes"
    try:
        run(config, workdir, quick=args.quick, n_samples=args.n_samples, batch_size=args.batch_size,
            peers=not args.no_peers, reference=reference, progress=not args.no_progress)
    except (CheckpointError, DataError, build.ConfigError, FileNotFoundError) as e:
        _fail(str(e))


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:  # spinning OpenMP threads distort timings on shared cores
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "scorelib.bench", *sys.argv[1:]],
                  {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    main()
