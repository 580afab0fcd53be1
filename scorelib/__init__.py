"""scorelib: score-based generative modelling in one σ-space interface (see DESIGN.md).

A score model is any callable `score(x, sigma) -> ∇ₓ log p_σ(x)` with x: [B, ...], sigma: [B].
"""

from .adapters import (
    ContinuousEpsToScore,
    EpsToScore,
    IndexedScore,
    ScoreToContinuousEps,
    ScoreToEps,
    denoised_to_score,
    eps_to_score,
    score_to_denoised,
    score_to_eps,
)
from .analytic import GaussianMixture
from .losses import dsm_loss, eps_loss, hybrid_loss, ssm_loss, vlb_loss
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
    vp_sigmas,
)

__all__ = [
    "VESDE",
    "VPSDE",
    "ContinuousEpsToScore",
    "DDPMSchedule",
    "EpsToScore",
    "GaussianMixture",
    "IndexedScore",
    "ScoreToContinuousEps",
    "ScoreToEps",
    "SubVPSDE",
    "append_zero",
    "cosine_betas",
    "denoised_to_score",
    "dsm_loss",
    "eps_loss",
    "eps_to_score",
    "geometric_sigmas",
    "hybrid_loss",
    "karras_sigmas",
    "linear_betas",
    "score_to_denoised",
    "score_to_eps",
    "ssm_loss",
    "vlb_loss",
    "vp_sigmas",
]
