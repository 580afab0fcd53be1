"""The sampler table: one `Method` per `sampling.method`, and the options each reads, declared here once.

A method says how its σ grid is built (`Grid`, with the fields the grid reads), how the sampler is
called, which of the sampling.* options it reads, and whether it draws noise after its initial x. Its
NFE is not written down anywhere: `Sampler.nfe` counts the score evaluations of one dry run of the
sampler itself. Adding a sampler is one entry (and its options' declarations, if new).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
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
from ..samplers._common import DryScore
from ..samplers.pc import CORRECTORS, PREDICTORS
from ..schedules import (
    Noise,
    append_zero,
    geometric_sigmas,
    karras_sigmas,
    pc_times,
    respace_timesteps,
    space_timesteps,
    timesteps_to_sigmas,
)
from ..utils import ScoreFn
from .declare import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_OR_INF,
    UNIT,
    ConfigError,
    F,
    Field,
    at_least,
    format_value,
    one_of,
)

FAST_DEFAULT_NFE = 10  # sampling.method=fast with sampling.n_steps=0: the README's 10-NFE budget
SPACINGS = ("uniform", "leading", "trailing", "quadratic")  # schedules.respace_timesteps
# improved-/guided-diffusion's respacing strings ("10,15,20", "ddim50"), read by schedules.space_timesteps
SECTION_STRING = re.compile(r"^(ddim\d+|\d+(,\d+)*)$")
PC_ENDINGS = ("auto", "tweedie", "mean")
ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's adaptive solvers

# The option fields of the samplers (sampling.*), each declared once; a method lists those it reads.
OPTIONS: dict[str, Field] = {
    "n_steps_each": F(5, "ald: Langevin steps per level", POSITIVE),
    "step_lr": F(6.2e-6, "ald: step size at the smallest level (α_i = step_lr·(σ_i/σ_L)²)", POSITIVE),
    "denoise": F(True, "ald / pc / ode: end without noise (ald, ode: the Tweedie step x + σ²s at the last level; "
                       "pc: the last step's mean)"),
    "pc_ending": F("auto", "pc: the last step to σ = 0: tweedie (x + σ²s) | mean (score_sde's last predictor mean); "
                   "auto: mean on VP / sub-VP (score_sde), tweedie otherwise", one_of(PC_ENDINGS)),
    "predictor": F("reverse_diffusion", "pc predictor: " + " | ".join(PREDICTORS), one_of(PREDICTORS)),
    "corrector": F("langevin", "pc corrector: " + " | ".join(CORRECTORS), one_of(CORRECTORS)),
    "snr": F(0.16, "pc: corrector signal-to-noise ratio", POSITIVE),
    "n_corrector_steps": F(1, "pc: corrector steps per level", NON_NEGATIVE),
    "variance": F("large", "ddpm ancestral: small (β̃) | large (β) | learned (the network's Σ)",
                  one_of(("small", "large", "learned"))),
    "clip_denoised": F(False, "ddpm / ddim (and the DDPM VLB): clamp x̂₀ to [-1, 1] (improved-/guided-diffusion)"),
    "eta": F(0.0, "ddim / euler_ancestral: 0 deterministic, 1 ancestral", UNIT),
    "ode_method": F("dopri5", "ode: torchdiffeq solver (" + " | ".join(ODE_METHODS) + ")", one_of(ODE_METHODS)),
    "rtol": F(1e-5, "ode: relative tolerance", POSITIVE),
    "atol": F(1e-5, "ode: absolute tolerance", POSITIVE),
    "order": F(3, "dpm_solver / unipc: solver order", one_of((1, 2, 3))),
    "rho": F(7.0, "Karras grid exponent ρ (EDM eq. 5)", POSITIVE),
    "s_churn": F(0.0, "heun: EDM's S_churn (0: deterministic, Algorithm 1)", NON_NEGATIVE),
    "s_tmin": F(0.0, "heun: churn only for σ >= S_tmin", NON_NEGATIVE),
    "s_tmax": F(math.inf, "heun: churn only for σ <= S_tmax", POSITIVE_OR_INF),
    "s_noise": F(1.0, "heun: EDM's S_noise (the churn noise's scale)", POSITIVE),
    "sigma_max": F(0.0, "euler_ancestral / heun / dpm_solver / unipc / ode / fast: start at this σ when it is below "
                   "the noise process's σ_max (0: that σ_max; a cosine schedule's is 8·10⁴ at T = 4000)", NON_NEGATIVE),
    "data_diameter": F(0.0, "fast: the data diameter (> 0), else the scale is probed at σ_max", NON_NEGATIVE),
}
# The fields every method reads (the grid length and how samples are drawn and stored).
COMMON_OPTIONS: dict[str, Field] = {
    "method": F("ald", "the sampler (see the sampler table)", ("placeholder", "")),  # rule set below
    "init": F("uniform", "initial x: uniform (NCSN: U[0, 1] images) | gaussian (σ_max · z)",
              one_of(("uniform", "gaussian"))),
    "n_steps": F(0, "steps / levels of the grid (0: noise.num_scales; fast: the NFE budget, 0: 10)", NON_NEGATIVE),
    "spacing": F("uniform", "ddpm timestep respacing: " + " | ".join(SPACINGS) + ", or improved-diffusion's "
                 "string (\"10,15,20\", \"ddim50\", which also sets the number of steps)",
                 (lambda v: v in SPACINGS or bool(SECTION_STRING.match(str(v))), " | ".join(SPACINGS) +
                  " | N1,N2,… | ddimN")),
    "batch_size": F(64, "sampling batch, also the chunk of --mode=sample: sample i depends on (seed, i, "
                        "batch_size)", POSITIVE),
    "n_samples": F(64, "samples drawn by --mode=sample", POSITIVE),
    "checkpoint": F("", "a checkpoint path (default: the newest in WORKDIR/checkpoints)"),
    "class_label": F(-1, "the class of class-conditional samples (-1: random labels)", at_least(-1)),
}


# ---------------------------------------------------------------------------------------------
# A configured sampler
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sampler:
    """The configured sampler: `sampler(score, shape, generator, device) -> x` draws the initial x
    (sampling.init) and runs the method's entry on its grid. `o`: the sampling.* record; `noise`: the noise
    process; `learned_variance`: the network outputs Σ; `labelled`: the score binds a label per row."""

    o: Any
    noise: Noise
    centered: bool = False
    learned_variance: bool = False
    labelled: bool = False
    round_sigma: Callable[[Tensor], Tensor] | None = None  # the wrapper's levels (EDM's round_sigma)

    @property
    def method(self) -> str:
        return self.o.method

    @property
    def entry(self) -> Method:
        return SAMPLERS[self.o.method]

    @property
    def sigma_max(self) -> float:
        """Where the continuous-σ methods start: sampling.sigma_max when set and below the noise process's."""
        cap = self.o.sigma_max
        return min(cap, self.noise.sigma_max) if cap > 0 else self.noise.sigma_max

    def steps(self) -> int:
        """sampling.n_steps, or noise.num_scales (the number of levels / timesteps) when it is 0."""
        return self.o.n_steps if self.o.n_steps > 0 else self.noise.num_scales

    @functools.cached_property
    def grid(self) -> Tensor:
        """The descending float64 σ grid (with a final 0 where the method ends on the denoiser)."""
        return self.entry.grid.build(self)

    @functools.cached_property
    def nfe(self) -> int:
        """Score evaluations per sample, counted on one dry run of the sampler (-1: adaptive). A sampler that
        cannot sample (`problem`) has none: ConfigError."""
        if problem := self.problem():
            raise ConfigError(problem)
        if self.entry.adaptive:
            return -1
        counter = DryScore()
        self.entry.run(self, counter, torch.zeros(1, 1, dtype=torch.float64), self.grid.double(),
                       torch.Generator().manual_seed(0))
        return counter.calls

    @property
    def deterministic(self) -> bool:
        """Whether the sampler draws no noise after its initial x (ODE solvers, DDIM with η = 0)."""
        return self.entry.deterministic(self.o)

    def reads(self) -> set[str]:
        """The method-specific sampling.* fields this sampler reads: its options and its grid's."""
        return {*self.entry.options, *self.entry.grid.fields(self.noise.kind)}

    def describe(self) -> str:
        """The method, grid length and the options it reads, e.g. "ald, 10 levels, n_steps_each=5, …"."""
        levels = f", {int((self.grid > 0).sum())} levels" if not self.entry.adaptive else ""
        opts = ", ".join(f"{k}={format_value(getattr(self.o, k))}" for k in self.entry.options)
        return f"{self.method}{levels}, {opts}"

    def replace(self, **changes: Any) -> Sampler:
        """The sampler with some sampling fields changed (e.g. method="ddim", n_steps=10)."""
        return dataclasses.replace(self, o=dataclasses.replace(self.o, **changes))

    def problem(self) -> str:
        """Why this sampler cannot sample ("" when it can): a combination no reference defines."""
        if self.method == "ddpm" and self.o.variance == "learned" and not self.learned_variance:
            return "sampling.variance: 'learned' needs a network with a learned variance (model.learn_sigma)"
        if self.method == "pc" and self.noise.kind == "subvp" and self.o.predictor == "ancestral":
            return ("sampling.predictor: 'ancestral' has no sub-VP form (score_sde's AncestralSamplingPredictor "
                    "supports VE and VP only)")
        if self.method == "pc" and self.noise.kind == "subvp" and self.o.corrector != "none":
            return (f"sampling.corrector: {self.o.corrector!r} has no sub-VP form (score_sde's correctors read "
                    "the VP table sde.alphas, which its subVPSDE lacks; none)")
        return ""

    def initial(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """The initial x [shape]: U[0, 1] images (NCSN / NCSNv2; centred when the data is) or σ_max·z."""
        if self.o.init == "uniform":
            u = torch.rand(shape, generator=generator, device=device)
            return 2 * u - 1 if self.centered else u
        return float(self.grid[0]) * torch.randn(shape, generator=generator, device=device)

    def __call__(self, score: ScoreFn, shape: tuple[int, ...], generator: torch.Generator | None,
                 device: torch.device) -> Tensor:
        if problem := self.problem():
            raise ConfigError(problem)
        return self.entry.run(self, score, self.initial(shape, generator, device), self.grid, generator)


# ---------------------------------------------------------------------------------------------
# Grids: descending float64 σ grids, with a final 0 where the method ends on the denoiser
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """How a method's σ grid is built (`build(sampler)`) and the sampling.* fields it reads per noise kind."""

    build: Callable[[Sampler], Tensor]
    fields: Callable[[str], tuple[str, ...]]


def respaced_timesteps(s: Sampler) -> Tensor:
    """The descending DDPM timesteps the sampler visits: sampling.n_steps of them by sampling.spacing, or
    those of an improved-diffusion respacing string (improved-diffusion respace.py `space_timesteps`)."""
    if SECTION_STRING.match(s.o.spacing):
        return space_timesteps(s.noise.schedule.T, s.o.spacing)
    return respace_timesteps(s.noise.schedule.T, s.steps(), s.o.spacing)


def score_sde_times(s: Sampler) -> Tensor:
    """score_sde's PC time grid `torch.linspace(sde.T, eps, sde.N)` (sampling.py `get_pc_sampler`),
    float64, t from 1 down to noise.sampling_eps."""
    return pc_times(s.noise.sde, s.steps())


def _ald_grid(s: Sampler) -> Tensor:
    """Annealed Langevin: the NCSN levels (ve), else `sampling.n_steps` geometric levels; no final 0."""
    n = s.noise
    return n.levels.clone() if n.kind == "ve" else geometric_sigmas(n.sigma_max, n.sigma_min, s.steps())


def _posterior_grid(s: Sampler) -> Tensor:
    """DDPM / DDIM: the respaced timesteps' σ_t (ddpm), else geometric levels; then 0."""
    n = s.noise
    if n.kind == "ddpm":
        return timesteps_to_sigmas(n.schedule.alphas_cumprod, respaced_timesteps(s))
    return append_zero(geometric_sigmas(n.sigma_max, n.sigma_min, s.steps()))


def _pc_grid(s: Sampler) -> Tensor:
    """Predictor-corrector: score_sde's uniform-in-t grid for VP / sub-VP, else as `_posterior_grid`."""
    if s.noise.kind in ("vp", "subvp"):
        return append_zero(s.noise.sde.sigma(score_sde_times(s)))
    return _posterior_grid(s)


def _karras_grid(s: Sampler) -> Tensor:
    """EDM's ρ-spaced levels (sampling.rho) from σ_max (capped by sampling.sigma_max) to σ_min, rounded to
    the network's levels where it has them (EDM generate.py `edm_sampler`: `net.round_sigma(t_steps)`), then 0."""
    levels = karras_sigmas(s.sigma_max, s.noise.sigma_min, s.steps(), s.o.rho)
    return append_zero(levels if s.round_sigma is None else s.round_sigma(levels).double())


def _respaced_fields(kind: str) -> tuple[str, ...]:
    return ("n_steps", "spacing") if kind == "ddpm" else ("n_steps",)


ALD_GRID = Grid(_ald_grid, lambda kind: () if kind == "ve" else ("n_steps",))
POSTERIOR_GRID = Grid(_posterior_grid, _respaced_fields)
PC_GRID = Grid(_pc_grid, _respaced_fields)
KARRAS_GRID = Grid(_karras_grid, lambda kind: ("n_steps", "rho", "sigma_max"))
NO_GRID = Grid(_karras_grid, lambda kind: ("sigma_max",))  # adaptive: only grid[0] = σ_max is used (the initial x)
BUDGET = Grid(_karras_grid, lambda kind: ("n_steps", "sigma_max"))  # fast_sample plans its own grid for the budget


def discrete_betas(s: Sampler) -> Tensor | None:
    """The respaced β = 1 - ᾱ_t/ᾱ_t' of consecutive kept timesteps of a DDPM grid (improved-diffusion
    respace.py), with which the PC ancestral predictor is DDPM's σ² = β step; None for other noise kinds
    (VP / sub-VP PC takes score_sde's SDE form, VE needs no β)."""
    if s.noise.kind != "ddpm":
        return None
    abar = s.noise.schedule.alphas_cumprod[respaced_timesteps(s)]
    return 1 - abar / torch.cat([abar[1:], abar.new_ones(1)])


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

SamplerCall = Callable[[Sampler, ScoreFn, Tensor, Tensor, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class Method:
    """One sampling.method: its grid, `run(sampler, score, x, grid, generator)` with x at grid[0], the
    options it reads, `deterministic(o)` (no noise after x), and `adaptive` (the NFE is the solver's)."""

    grid: Grid
    run: SamplerCall
    options: tuple[str, ...]
    deterministic: Callable[[Any], bool]
    adaptive: bool = False


def _never(o: Any) -> bool:
    return False


def _always(o: Any) -> bool:
    return True


def _ald(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    return annealed_langevin(score, x, grid, n_steps_each=s.o.n_steps_each, step_lr=s.o.step_lr,
                             denoise=s.o.denoise, generator=g)


def _pc(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    """VP / sub-VP: score_sde's own steps in t (`pc_sampler(sde=, times=)`), started from x_T/m(1) — the
    grid's σ(1)·z is that — and ending with its last predictor mean unless sampling.pc_ending='tweedie'."""
    o, vp = s.o, s.noise.kind in ("vp", "subvp")
    tweedie = None if o.pc_ending == "auto" else o.pc_ending == "tweedie"
    kw = {"sde": s.noise.sde, "times": score_sde_times(s)} if vp else {"betas": discrete_betas(s)}
    return pc_sampler(score, x, grid, predictor=o.predictor, corrector=o.corrector, snr=o.snr,
                      n_corrector_steps=o.n_corrector_steps, denoise=o.denoise, generator=g, tweedie=tweedie, **kw)


def _sampler_guidance(score: ScoreFn) -> Callable[[Tensor, Tensor], Tensor] | None:
    """Classifier guidance the sampler applies itself (guided-diffusion's condition_mean in p_sample,
    condition_score after the x̂₀ clip in ddim_sample): the guided score's `guidance_grad`, else None."""
    return score.guidance_grad if getattr(score, "convention", "score") == "mean" else None


def _ancestral(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    return ddpm_ancestral(score, x, grid, variance=s.o.variance, generator=g, clip_denoised=s.o.clip_denoised,
                          guidance=_sampler_guidance(score))


def _ddim(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    return ddim(score, x, grid, eta=s.o.eta, generator=g, clip_denoised=s.o.clip_denoised,
                guidance=_sampler_guidance(score))


def _euler_ancestral(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    return ddim(score, x, grid, eta=s.o.eta, generator=g)


def _heun(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    o = s.o
    return heun(score, x, grid, s_churn=o.s_churn, s_tmin=o.s_tmin, s_tmax=o.s_tmax, s_noise=o.s_noise, generator=g,
                round_sigma=s.round_sigma)


def _ode(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    return probability_flow(score, x, s.sigma_max, s.noise.sigma_min, method=s.o.ode_method, rtol=s.o.rtol,
                            atol=s.o.atol, denoise=s.o.denoise, generator=g)


def _fast(s: Sampler, score: ScoreFn, x: Tensor, grid: Tensor, g: torch.Generator | None) -> Tensor:
    # a class-conditional score binds one label per row, so fast_sample cannot add its probe rows
    d = s.o.data_diameter
    budget = s.o.n_steps if s.o.n_steps > 0 else FAST_DEFAULT_NFE
    return fast_sample(score, x, s.sigma_max, s.noise.sigma_min, budget,
                       data_diameter=d if d > 0 else None, probe=not s.labelled, generator=g)


SAMPLERS: dict[str, Method] = {
    "ald": Method(ALD_GRID, _ald, ("n_steps_each", "step_lr", "denoise"), _never),
    "pc": Method(PC_GRID, _pc, ("predictor", "corrector", "snr", "n_corrector_steps", "denoise", "pc_ending"),
                 _never),
    "ddpm": Method(POSTERIOR_GRID, _ancestral, ("variance", "clip_denoised"), _never),
    "ddim": Method(POSTERIOR_GRID, _ddim, ("eta", "clip_denoised"), lambda o: o.eta == 0),
    "ode": Method(NO_GRID, _ode, ("ode_method", "rtol", "atol", "denoise"), _always, adaptive=True),
    # k-diffusion sampling.py `sample_euler_ancestral`: Euler to σ_down, then σ_up z, on the Karras grid. Its
    # `get_ancestral_step` is ddim's (σ_down, σ_up) at η = sampling.eta (η = 1: ancestral; 0: Euler)
    "euler_ancestral": Method(KARRAS_GRID, _euler_ancestral, ("eta",), lambda o: o.eta == 0),
    # EDM's Algorithm 2 (generate.py `edm_sampler`): Heun with churn, on the Karras grid
    "heun": Method(KARRAS_GRID, _heun, ("s_churn", "s_tmin", "s_tmax", "s_noise"), lambda o: o.s_churn == 0),
    "dpm_solver": Method(KARRAS_GRID, lambda s, score, x, grid, g: dpm_solver_pp(score, x, grid, order=s.o.order,
                                                                                 generator=g), ("order",), _always),
    "unipc": Method(KARRAS_GRID, lambda s, score, x, grid, g: unipc(score, x, grid, order=s.o.order, generator=g),
                    ("order",), _always),
    "fast": Method(BUDGET, _fast, ("data_diameter",), _always),
}
COMMON_OPTIONS["method"] = F("ald", " | ".join(SAMPLERS), one_of(SAMPLERS))
# every field some method or grid reads: the validator warns when one set on the command line is not read
METHOD_FIELDS = frozenset({*OPTIONS, "n_steps", "spacing"})
