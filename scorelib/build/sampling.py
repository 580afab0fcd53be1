"""Config -> sampler: one table, `SAMPLERS`, with an entry per `sampling.method`.

Each entry says how the method's σ grid is built, how the sampler is called, its NFE per sample,
the sampling.* fields it reads and whether it draws noise after its initial x. Adding a sampler is
adding an entry (docs/design.md §5). Everything an entry reads is a `SamplerOptions`, a frozen record
of the sampling fields and the noise process made once from the config (`sampler_options`), so a
variant (the benchmark's rows) is `dataclasses.replace(options, ...)`, not a new config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..samplers import (
    annealed_langevin,
    ddim,
    ddpm_ancestral,
    dpm_solver_pp,
    fast_sample,
    heun,
    pc_sampler,
    probability_flow,
    unipc,
)
from ..schedules import (
    VESDE,
    VPSDE,
    DDPMSchedule,
    SubVPSDE,
    append_zero,
    geometric_sigmas,
    karras_sigmas,
    respace_timesteps,
    timesteps_to_sigmas,
)
from ..utils import ScoreFn
from .names import VARIANCES, ConfigError, choice, format_value
from .networks import is_class_conditional
from .noise import create_schedule, create_sde, noise_kind, sigma_range

FAST_DEFAULT_NFE = 10  # sampling.method=fast with sampling.n_steps=0: the README's 10-NFE budget


@dataclass(frozen=True, eq=False)
class SamplerOptions:
    """The sampling.* fields and the noise process (noise.kind, its levels, schedule or SDE and the σ
    range of `noise.sigma_range`) that the sampler table reads; no config."""

    method: str
    kind: str  # noise.kind
    n_steps: int  # grid length (0: num_scales); fast: the NFE budget (0: FAST_DEFAULT_NFE)
    num_scales: int  # noise.num_scales: the NCSN levels / DDPM T
    spacing: str
    sigma_max: float
    sigma_min: float
    schedule: DDPMSchedule | None  # noise.kind = ddpm
    sde: VESDE | VPSDE | SubVPSDE | None  # vp / subvp
    init: str  # uniform (NCSN: U[0, 1] images) | gaussian (σ_max·z)
    centered: bool  # data.centered: uniform init in [-1, 1]
    learned_variance: bool  # model.learn_sigma
    labelled: bool  # the score binds one class label per row
    n_steps_each: int
    step_lr: float
    denoise: bool
    predictor: str
    corrector: str
    snr: float
    n_corrector_steps: int
    variance: str
    clip_denoised: bool
    eta: float
    ode_method: str
    rtol: float
    atol: float
    order: int
    rho: float
    data_diameter: float

    def steps(self) -> int:
        """sampling.n_steps, or noise.num_scales when it is 0."""
        return self.n_steps if self.n_steps > 0 else self.num_scales

    def field(self, name: str) -> Any:
        """A sampling.* field by name."""
        return getattr(self, name)


def sampler_options(config: Any) -> SamplerOptions:
    """The config's sampling fields and noise process, as `SamplerOptions`."""
    s, kind = config.sampling, noise_kind(config)
    sigma_max, sigma_min = sigma_range(config)
    return SamplerOptions(
        method=s.method, kind=kind, n_steps=s.n_steps, num_scales=config.noise.num_scales, spacing=s.spacing,
        sigma_max=sigma_max, sigma_min=sigma_min, schedule=create_schedule(config) if kind == "ddpm" else None,
        sde=create_sde(config) if kind in ("vp", "subvp") else None, init=s.init, centered=config.data.centered,
        learned_variance=config.model.learn_sigma, labelled=is_class_conditional(config) or s.guidance == "classifier",
        n_steps_each=s.n_steps_each, step_lr=s.step_lr, denoise=s.denoise, predictor=s.predictor,
        corrector=s.corrector, snr=s.snr, n_corrector_steps=s.n_corrector_steps, variance=s.variance,
        clip_denoised=s.clip_denoised, eta=s.eta, ode_method=s.ode_method, rtol=s.rtol, atol=s.atol, order=s.order,
        rho=s.rho, data_diameter=s.data_diameter)


# ---------------------------------------------------------------------------------------------
# Grids: descending float64 σ grids, with a final 0 where the method ends on the denoiser
# ---------------------------------------------------------------------------------------------


def respaced_timesteps(o: SamplerOptions) -> Tensor:
    """The descending DDPM timesteps the sampler visits (sampling.n_steps of them, sampling.spacing)."""
    T = o.schedule.T
    return respace_timesteps(T, T if o.n_steps <= 0 else o.n_steps, o.spacing)


def score_sde_times(o: SamplerOptions, n: int) -> Tensor:
    """score_sde's PC time grid `torch.linspace(sde.T, eps, sde.N)` (sampling.py `get_pc_sampler`),
    float64 [n], t from 1 down to noise.sampling_eps."""
    return torch.linspace(1.0, o.sde.sampling_eps, n, dtype=torch.float64)


def ald_grid(o: SamplerOptions) -> Tensor:
    """Annealed Langevin: the NCSN levels (ve), else `sampling.n_steps` geometric levels; no final 0."""
    return geometric_sigmas(o.sigma_max, o.sigma_min, o.num_scales if o.kind == "ve" else o.steps())


def posterior_grid(o: SamplerOptions) -> Tensor:
    """DDPM / DDIM: the respaced timesteps' σ_t (ddpm), else geometric levels; then 0."""
    if o.kind == "ddpm":
        return timesteps_to_sigmas(o.schedule.alphas_cumprod, respaced_timesteps(o))
    return append_zero(geometric_sigmas(o.sigma_max, o.sigma_min, o.steps()))


def pc_grid(o: SamplerOptions) -> Tensor:
    """Predictor-corrector: score_sde's uniform-in-t grid for VP / sub-VP, else as `posterior_grid`."""
    if o.kind in ("vp", "subvp"):
        return append_zero(o.sde.sigma(score_sde_times(o, o.steps())))
    return posterior_grid(o)


def karras_grid(o: SamplerOptions) -> Tensor:
    """EDM's ρ-spaced levels (sampling.rho) from σ_max to σ_min, then 0."""
    return append_zero(karras_sigmas(o.sigma_max, o.sigma_min, o.steps(), o.rho))


def steps_fields(o: SamplerOptions) -> tuple[str, ...]:
    return ("n_steps",)


def respaced_fields(o: SamplerOptions) -> tuple[str, ...]:
    return ("n_steps", "spacing") if o.kind == "ddpm" else ("n_steps",)


def discrete_betas(o: SamplerOptions) -> Tensor | None:
    """The discrete β_i at each PC step's level for VP-type models, None for VE (`pc_sampler(betas=)`).

    vp / subvp: score_sde's `sde.discrete_betas[(t (N-1)/T).long()]` with discrete_betas =
    linspace(β_min/N, β_max/N, N) (sde_lib.py VPSDE / subVPSDE) on the grid `score_sde_times`.
    ddpm: the respaced β = 1 - ᾱ_t/ᾱ_t' of consecutive kept timesteps (improved-diffusion respace.py),
    with which the ancestral predictor is DDPM's σ² = β step.
    """
    if o.kind == "ddpm":
        abar = o.schedule.alphas_cumprod[respaced_timesteps(o)]
        return 1 - abar / torch.cat([abar[1:], abar.new_ones(1)])
    if o.kind not in ("vp", "subvp"):
        return None
    nz = o.steps()
    table = torch.linspace(o.sde.beta_min / nz, o.sde.beta_max / nz, nz, dtype=torch.float64)
    return table[(score_sde_times(o, nz) * (nz - 1)).long()]


def fast_budget(o: SamplerOptions) -> int:
    """The NFE budget of `sampling.method=fast`: sampling.n_steps, or FAST_DEFAULT_NFE when it is 0."""
    return o.n_steps if o.n_steps > 0 else FAST_DEFAULT_NFE


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

Run = Callable[[SamplerOptions, ScoreFn, Tensor, Tensor, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class SamplerEntry:
    """One sampling.method: `grid(o)` its σ grid; `run(o, score, x, grid, generator)` the call, x at
    grid[0]; `nfe(o, grid)` score evaluations per sample (-1: adaptive); `fields` the method's own
    sampling.* fields (also `also_reads`, not shown); `grid_fields(o)` those its grid reads;
    `deterministic(o)` whether it draws no noise after x."""

    grid: Callable[[SamplerOptions], Tensor]
    run: Run
    nfe: Callable[[SamplerOptions, Tensor], int]
    fields: tuple[str, ...]
    deterministic: Callable[[SamplerOptions], bool]
    grid_fields: Callable[[SamplerOptions], tuple[str, ...]] = steps_fields
    also_reads: tuple[str, ...] = ()


def _steps(o: SamplerOptions, grid: Tensor) -> int:
    return len(grid) - 1


def _always(o: SamplerOptions) -> bool:
    return True


def _never(o: SamplerOptions) -> bool:
    return False


def _ancestral(o: SamplerOptions, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    mean_guided = getattr(score, "convention", "score") == "mean"  # guided-diffusion condition_mean
    return ddpm_ancestral(score, x, grid, variance=o.variance, generator=g, clip_denoised=o.clip_denoised,
                          guidance=score.guidance_grad if mean_guided else None)


SAMPLERS: dict[str, SamplerEntry] = {
    "ald": SamplerEntry(
        grid=ald_grid,
        run=lambda o, score, x, grid, g: annealed_langevin(score, x, grid, n_steps_each=o.n_steps_each,
                                                           step_lr=o.step_lr, denoise=o.denoise, generator=g),
        nfe=lambda o, grid: int((grid > 0).sum()) * o.n_steps_each + int(o.denoise),
        fields=("n_steps_each", "step_lr", "denoise"), deterministic=_never,
        grid_fields=lambda o: () if o.kind == "ve" else ("n_steps",)),
    "pc": SamplerEntry(
        grid=pc_grid,
        run=lambda o, score, x, grid, g: pc_sampler(
            score, x, grid, predictor=o.predictor, corrector=o.corrector, snr=o.snr,
            n_corrector_steps=o.n_corrector_steps, denoise=o.denoise, generator=g, betas=discrete_betas(o)),
        nfe=lambda o, grid: (len(grid) - 1) * (1 + o.n_corrector_steps),
        fields=("predictor", "corrector", "snr", "n_corrector_steps"), deterministic=_never,
        grid_fields=respaced_fields, also_reads=("denoise",)),
    "ddpm": SamplerEntry(grid=posterior_grid, run=_ancestral, nfe=_steps, fields=("variance", "clip_denoised"),
                         deterministic=_never, grid_fields=respaced_fields),
    "ddim": SamplerEntry(
        grid=posterior_grid, run=lambda o, score, x, grid, g: ddim(score, x, grid, eta=o.eta, generator=g),
        nfe=_steps, fields=("eta",), deterministic=lambda o: o.eta == 0, grid_fields=respaced_fields),
    "ode": SamplerEntry(
        grid=karras_grid,  # only grid[0] = σ_max is used (the initial noise); the solver is adaptive
        run=lambda o, score, x, grid, g: probability_flow(score, x, o.sigma_max, o.sigma_min, method=o.ode_method,
                                                          rtol=o.rtol, atol=o.atol, denoise=o.denoise),
        nfe=lambda o, grid: -1, fields=("ode_method", "rtol", "atol"), deterministic=_always,
        grid_fields=lambda o: (), also_reads=("denoise",)),
    # k-diffusion sampling.py `sample_euler_ancestral`: Euler to σ_down, then σ_up z, on the Karras grid. Its
    # `get_ancestral_step` is ddim's (σ_down, σ_up) at η = sampling.eta (η = 1: ancestral; 0: Euler)
    "euler_ancestral": SamplerEntry(
        grid=karras_grid, run=lambda o, score, x, grid, g: ddim(score, x, grid, eta=o.eta, generator=g),
        nfe=_steps, fields=("eta", "rho"), deterministic=lambda o: o.eta == 0),
    "heun": SamplerEntry(
        grid=karras_grid, run=lambda o, score, x, grid, g: heun(score, x, grid, generator=g),
        nfe=lambda o, grid: 2 * (len(grid) - 1) - int(float(grid[-1]) == 0), fields=("rho",),
        deterministic=_always),
    "dpm_solver": SamplerEntry(
        grid=karras_grid, run=lambda o, score, x, grid, g: dpm_solver_pp(score, x, grid, order=o.order),
        nfe=_steps, fields=("order", "rho"), deterministic=_always),
    "unipc": SamplerEntry(
        grid=karras_grid, run=lambda o, score, x, grid, g: unipc(score, x, grid, order=o.order),
        nfe=_steps, fields=("order", "rho"), deterministic=_always),
    # a class-conditional score binds one label per row, so fast_sample cannot add its probe rows
    "fast": SamplerEntry(
        grid=karras_grid,
        run=lambda o, score, x, grid, g: fast_sample(
            score, x, o.sigma_max, o.sigma_min, fast_budget(o),
            data_diameter=o.data_diameter if o.data_diameter > 0 else None, probe=not o.labelled),
        nfe=lambda o, grid: fast_budget(o), fields=("data_diameter",), deterministic=_always),
}
SAMPLING_METHODS = tuple(SAMPLERS)


def sampler_reads(o: SamplerOptions) -> set[str]:
    """The method-specific sampling.* fields the sampler of `o` reads: its entry's fields and its grid's."""
    entry = SAMPLERS.get(o.method)
    return set() if entry is None else {*entry.fields, *entry.also_reads, *entry.grid_fields(o)}
# the method fields of every entry: validate warns when one set on the command line is not read
SAMPLER_FIELDS: dict[str, tuple[str, ...]] = {name: e.fields for name, e in SAMPLERS.items()}


# ---------------------------------------------------------------------------------------------
# A built sampler
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sampler:
    """The configured sampler: `sampler(score, shape, generator, device) -> x` draws the initial x
    (sampling.init) and runs the table entry of `options.method` on its grid. `problem`: why the
    options cannot sample (a combination no reference defines), raised as a ConfigError when called."""

    options: SamplerOptions
    entry: SamplerEntry
    grid: Tensor
    problem: str = ""

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def nfe(self) -> int:
        """Score evaluations per sample (-1: adaptive)."""
        return self.entry.nfe(self.options, self.grid)

    @property
    def deterministic(self) -> bool:
        """Whether the sampler draws no noise after its initial x (ODE solvers, DDIM with η = 0)."""
        return self.entry.deterministic(self.options)

    def reads(self) -> set[str]:
        """The method-specific sampling.* fields this sampler reads (see `sampler_reads`)."""
        return sampler_reads(self.options)

    def describe(self) -> str:
        """The method, grid length and the fields it reads, e.g. "ald, 10 levels, n_steps_each=5, …"."""
        levels = f", {int((self.grid > 0).sum())} levels" if self.method != "ode" else ""
        fields = ", ".join(f"{k}={format_value(self.options.field(k))}" for k in self.entry.fields)
        return f"{self.method}{levels}, {fields}"

    def replace(self, **changes: Any) -> Sampler:
        """The sampler with some options changed (e.g. method="ddim", n_steps=10)."""
        return make_sampler(dataclasses.replace(self.options, **changes))

    def initial(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """The initial x [shape]: U[0, 1] images (NCSN / NCSNv2; centred when the data is) or σ_max·z."""
        if self.options.init == "uniform":
            u = torch.rand(shape, generator=generator, device=device)
            return 2 * u - 1 if self.options.centered else u
        return float(self.grid[0]) * torch.randn(shape, generator=generator, device=device)

    def __call__(self, score: ScoreFn, shape: tuple[int, ...], generator: torch.Generator | None,
                 device: torch.device) -> Tensor:
        if self.problem:
            raise ConfigError(self.problem)
        return self.entry.run(self.options, score, self.initial(shape, generator, device), self.grid, generator)


def sampler_problem(o: SamplerOptions) -> str:
    """Why the options of `o` cannot sample ("" when they can): a combination no reference defines."""
    variance = choice(o.variance, VARIANCES, "sampling.variance")
    if o.method == "ddpm" and variance == "learned" and not o.learned_variance:
        return "sampling.variance='learned' needs a network with a learned variance (model.learn_sigma)"
    if o.method == "pc" and o.predictor == "ancestral" and o.kind == "subvp":
        return ("sampling.predictor='ancestral' has no sub-VP form (score_sde's AncestralSamplingPredictor "
                "supports VE and VP only)")
    return ""


def make_sampler(o: SamplerOptions, strict: bool = True) -> Sampler:
    """The sampler of `o`, its grid built once. A combination no reference defines raises ConfigError,
    or with `strict=False` when the sampler is called (a run that never samples, e.g. --mode=likelihood,
    is not stopped by it)."""
    entry = SAMPLERS[choice(o.method, SAMPLING_METHODS, "sampling.method")]
    problem = sampler_problem(o)
    if strict and problem:
        raise ConfigError(problem)
    return Sampler(o, entry, entry.grid(o), problem)


def create_sampler(config: Any) -> Sampler:
    """The config's sampler: `sample(score, shape, generator, device) -> x`."""
    return make_sampler(sampler_options(config))


def sampling_grid(config: Any) -> Tensor:
    """The descending σ grid of the config's sampler (float64, with a final 0 where it ends on D)."""
    return make_sampler(sampler_options(config), strict=False).grid


def sampling_nfe(config: Any) -> int:
    """Score evaluations per sample of the configured sampler (the ODE's is adaptive: -1)."""
    return make_sampler(sampler_options(config), strict=False).nfe


def is_deterministic(config: Any) -> bool:
    """Whether the configured sampler draws no noise after its initial x (ODE solvers, DDIM with η = 0)."""
    o = sampler_options(config)
    entry = SAMPLERS.get(o.method)
    return entry is not None and entry.deterministic(o)


def describe_sampler(config: Any) -> str:
    """The configured sampler in a few words: method, grid length and the fields it reads."""
    try:
        return make_sampler(sampler_options(config), strict=False).describe()
    except ValueError:  # a config that cannot build a grid still gets described (its row reports why)
        s = config.sampling
        return f"{s.method}, " + ", ".join(f"{k}={format_value(s[k])}" for k in SAMPLER_FIELDS.get(s.method, ()))


def pc_betas(config: Any) -> Tensor | None:
    """The config's `discrete_betas` (the β_i of each PC step for VP-type models, None for VE)."""
    return discrete_betas(sampler_options(config))
