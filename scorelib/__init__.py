"""scorelib: score-based generative modelling in one σ-space interface (see docs/design.md).

A score model is any callable `score(x, sigma) -> ∇ₓ log p_σ(x)` with x: [B, ...], sigma: [B].

`import scorelib` loads the core only (docs/design.md §4). The experiment layer's public entry points
`load`, `save` (scorelib.sharing) and `experiment` (scorelib.builder) are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .adapters import (
    ScoreToContinuousEps,
    ScoreToEps,
    denoised_to_score,
    eps_to_score,
    score_to_denoised,
    score_to_eps,
)
from .analytic import GaussianMixture
from .augment import AugmentPipe
from .ema import EMASnapshot, PowerEMA, posthoc_ema
from .guidance import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance, guidance_interval
from .likelihood import bits_per_dim, log_likelihood
from .losses import dsm_loss, edm2_loss, edm_loss, eps_loss, hybrid_loss, ssm_loss, ve_loss, vlb_loss, vp_loss
from .pickles import load_edm_snapshot, read_pickle
from .precond import (
    ContinuousEpsToScore,
    EDM2Precond,
    EDMPrecond,
    EpsToScore,
    IDDPMPrecond,
    IndexedScore,
    Precond,
    ScorePrecond,
    VEPrecond,
    VPClassifier,
    VPPrecond,
)
from .samplers import (
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
from .schedules import (
    VESDE,
    VPSDE,
    DDPMSchedule,
    SubVPSDE,
    append_zero,
    cosine_betas,
    geometric_sigmas,
    karras_sigmas,
    linear_betas,
    respace_timesteps,
    space_timesteps,
    timesteps_to_sigmas,
    vp_sigmas,
)

__all__ = [
    "VESDE",
    "VPSDE",
    "AugmentPipe",
    "AutoGuidance",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ContinuousEpsToScore",
    "DDPMSchedule",
    "EDM2Precond",
    "EDMPrecond",
    "EMASnapshot",
    "EpsToScore",
    "Experiment",
    "GaussianMixture",
    "IDDPMPrecond",
    "IndexedScore",
    "PowerEMA",
    "Precond",
    "ScorePrecond",
    "ScoreToContinuousEps",
    "ScoreToEps",
    "SubVPSDE",
    "VEPrecond",
    "VPClassifier",
    "VPPrecond",
    "annealed_langevin",
    "append_zero",
    "bits_per_dim",
    "cosine_betas",
    "ddim",
    "ddpm_ancestral",
    "denoised_to_score",
    "dpm_solver_pp",
    "dsm_loss",
    "edm2_loss",
    "edm_loss",
    "eps_loss",
    "eps_to_score",
    "experiment",
    "fast_sample",
    "geometric_sigmas",
    "guidance_interval",
    "heun",
    "hybrid_loss",
    "karras_sigmas",
    "linear_betas",
    "load",
    "load_edm_snapshot",
    "log_likelihood",
    "pc_sampler",
    "posthoc_ema",
    "probability_flow",
    "read_pickle",
    "respace_timesteps",
    "save",
    "score_to_denoised",
    "score_to_eps",
    "space_timesteps",
    "ssm_loss",
    "timesteps_to_sigmas",
    "unipc",
    "ve_loss",
    "vlb_loss",
    "vp_loss",
    "vp_sigmas",
]

# name -> the experiment-layer module that defines it, imported when the name is first used
_LAZY = {"load": "sharing", "save": "sharing", "experiment": "builder", "Experiment": "builder"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'scorelib' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    value = module if name == _LAZY[name] else getattr(module, name)
    globals()[name] = value
    return value
