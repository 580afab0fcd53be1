"""Samplers: plain functions `(score, x, sigmas, *, ...) -> x` over σ-space score models."""

from .controllable import inpaint_langevin, inpaint_pc, interpolate, known_projector, slerp
from .ddim import ddim, ddpm_ancestral
from .langevin import annealed_langevin, langevin, ncsnv2_settings, ncsnv2_step_lr
from .ode import encode, integrate_flow, probability_flow
from .pc import pc_sampler
from .solvers import dpm_solver_pp, fast_sample, fast_sample_plan, heun, unipc

__all__ = [
    "annealed_langevin",
    "ddim",
    "ddpm_ancestral",
    "dpm_solver_pp",
    "encode",
    "fast_sample",
    "fast_sample_plan",
    "heun",
    "inpaint_langevin",
    "inpaint_pc",
    "integrate_flow",
    "interpolate",
    "known_projector",
    "langevin",
    "ncsnv2_settings",
    "ncsnv2_step_lr",
    "pc_sampler",
    "probability_flow",
    "slerp",
    "unipc",
]
