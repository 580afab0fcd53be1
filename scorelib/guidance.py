"""Guidance as score-model transformers (docs/design.md §2): each takes σ-space models and returns a
σ-space score model, so every sampler gets guidance for free.

- `ClassifierGuidance`: s + w ∇ₓ log p_φ(y | x, σ) (Dhariwal & Nichol 2021), guided-diffusion's scale
  conventions (`condition_score` / `condition_mean`);
- `ClassifierFreeGuidance`: (1 + w) s(x, σ, y) - w s(x, σ, ∅) (Ho & Salimans 2022);
- `AutoGuidance`: w s_main + (1 - w) s_guide, a model guided by a worse version of itself (Karras et al. 2024b);
- `guidance_interval`: guidance only for σ in (σ_lo, σ_hi] (Kynkäänniemi et al. 2024), per example.

Each transformer evaluates its guided score at a weight given per call, `weighted(x, sigma, w)` with w a
float or a [B] tensor, and names the weight at which it equals its unguided model (`unguided_weight`):
that is how `guidance_interval` switches guidance per example without evaluating anything twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .schedules import karras_sigmas
from .utils import ScoreFn, append_dims, batch_sigma, frozen


def _weight(w: float | Tensor, x: Tensor) -> float | Tensor:
    """A guidance weight as a scalar or, given per example [B], broadcast against x in x's dtype."""
    return append_dims(w, x.ndim).to(x.dtype) if isinstance(w, Tensor) else w


class ClassifierGuidance(nn.Module):
    """s(x | y) = s(x, σ) + w ∇ₓ log p_φ(y | x, σ) (Dhariwal & Nichol 2021, Song et al. 2021b eq. 14).

    `classifier(x, sigma) -> logits [B, K]` is σ-space (wrap a DDPM noisy classifier with
    `VPClassifier`); y: int64 [B]; w: the guidance scale (w = 1 is the exact conditional score).

    The scale convention of guided-diffusion: `convention="score"` shifts the score (its
    `condition_score`, used for DDIM: ε' = ε - √(1-ᾱ) w∇ log p, the same as above); `convention="mean"`
    leaves the score as it is and `ddpm_ancestral(..., guidance=self.guidance_grad)` shifts the
    ancestral mean by Σ w∇ log p (its `condition_mean`, used by `p_sample`), so the published scales
    of both samplers carry over.
    """

    unguided_weight = 0.0

    def __init__(self, score_model: ScoreFn, classifier: Callable[[Tensor, Tensor], Tensor], y: Tensor, w: float,
                 convention: str = "score"):
        super().__init__()
        if convention not in ("score", "mean"):
            raise ValueError(f"convention must be 'score' or 'mean', got {convention!r}")
        self.score_model, self.classifier, self.w, self.convention = score_model, classifier, w, convention
        self.register_buffer("y", y, persistent=False)

    def classifier_grad(self, x: Tensor, sigma: Tensor) -> Tensor:
        """∇ₓ log p_φ(y | x, σ), x's shape."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.classifier(xg, sigma)
            # at least float32 (AMP logits), float64 kept: guided-diffusion's log_softmax of the logits
            logp = torch.log_softmax(logits.float() if logits.element_size() < 4 else logits, dim=-1)
            picked = logp.gather(1, self.y[:, None].to(logp.device)).sum()
            (grad,) = torch.autograd.grad(picked, xg)
        return grad

    def guidance_grad(self, x: Tensor, sigma: Tensor) -> Tensor:
        """w ∇ₓ log p_φ(y | x, σ) in σ-space coordinates, x's shape."""
        return self.w * self.classifier_grad(x, batch_sigma(sigma, x))

    def weighted(self, x: Tensor, sigma: Tensor, w: float | Tensor) -> Tensor:
        """The guided score at weight w (a float or [B]); the base score with convention "mean"."""
        sigma = batch_sigma(sigma, x)
        base = self.score_model(x, sigma)
        if self.convention == "mean":
            return base
        return base + _weight(w, x) * self.classifier_grad(x, sigma)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.weighted(x, sigma, self.w)

    def score_and_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(guided score, v) of a learned-variance base model (see `EpsToScore.score_and_variance`)."""
        sigma = batch_sigma(sigma, x)
        score, v = self.score_model.score_and_variance(x, sigma)
        return (score if self.convention == "mean" else score + self.guidance_grad(x, sigma)), v


class ClassifierFreeGuidance(nn.Module):
    """s = (1 + w) s(x, σ, y) - w s(x, σ, ∅) (Ho & Salimans 2022, eq. 6), both in one batched call.

    `model(x, sigma, y=labels)` is a conditional σ-space score model; `null_label` is its ∅ class.
    Kynkäänniemi et al. and EDM2 write the same guidance as w' D(x|y) + (1 - w') D(x): w' = 1 + w.
    """

    unguided_weight = 0.0

    def __init__(self, model: Callable[..., Tensor], y: Tensor, w: float, null_label: int):
        super().__init__()
        self.model, self.w, self.null_label = model, w, null_label
        self.register_buffer("y", y, persistent=False)

    def weighted(self, x: Tensor, sigma: Tensor, w: float | Tensor) -> Tensor:
        """The guided score at weight w (a float or [B])."""
        sigma = batch_sigma(sigma, x)
        y = self.y.to(x.device)
        labels = torch.cat([y, torch.full_like(y, self.null_label)])
        out = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), y=labels)
        cond, uncond = out.chunk(2)
        return torch.lerp(uncond, cond, 1 + _weight(w, x))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.weighted(x, sigma, self.w)


class AutoGuidance(nn.Module):
    """D_w = w D_main + (1 - w) D_guide (Karras et al. 2024b, "Guiding a Diffusion Model with a Bad Version
    of Itself", eq. 1), as a score transformer: s_w = w s_main + (1 - w) s_guide, the same combination
    because D = x + σ² s is affine in s at a given (x, σ).

    `main` and `guide` are σ-space score models taking the same keyword arguments (class labels `y`, given
    per call or bound once here as `y`); w = 1 is `main` alone. The guide is a smaller or less-trained
    version of `main` (EDM2's published pairs: generate_images.py `*-autog-*` presets, w 1.7 to 2.9).
    With an unconditional guide this is EDM2's classifier-free guidance with a separate unconditional
    network (its `*-guid-*` presets), the guidance-interval paper's w.
    """

    unguided_weight = 1.0

    def __init__(self, main: Callable[..., Tensor], guide: Callable[..., Tensor], w: float, y: Tensor | None = None):
        super().__init__()
        self.main, self.guide, self.w = main, guide, w
        self.register_buffer("y", y, persistent=False)

    def weighted(self, x: Tensor, sigma: Tensor, w: float | Tensor, **cond: Any) -> Tensor:
        """The guided score at weight w (a float or [B])."""
        sigma = batch_sigma(sigma, x)
        if self.y is not None:
            cond = {"y": self.y.to(x.device), **cond}
        return torch.lerp(self.guide(x, sigma, **cond), self.main(x, sigma, **cond), _weight(w, x))

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        return self.weighted(x, sigma, self.w, **cond)


class GuidanceInterval(nn.Module):
    """A score model that is `guided` for σ in (σ_lo, σ_hi] and `unguided` elsewhere, chosen per example
    (Kynkäänniemi et al. 2024, eq. 6). Made by `guidance_interval`; see there."""

    def __init__(self, guided: Callable[..., Tensor], unguided: Callable[..., Tensor] | None, sigma_lo: float,
                 sigma_hi: float):
        super().__init__()
        if not 0 <= sigma_lo < sigma_hi:
            raise ValueError(f"need 0 <= sigma_lo < sigma_hi, got ({sigma_lo}, {sigma_hi}]")
        if unguided is None and not hasattr(guided, "weighted"):
            raise TypeError(f"{type(guided).__name__} has no weighted(x, sigma, w): pass its unguided model")
        self.guided, self.unguided = guided, unguided
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)

    def inside(self, sigma: Tensor) -> Tensor:
        """The mask [B] of the examples whose σ lies in (σ_lo, σ_hi] (compared in σ's dtype)."""
        return (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        sigma = batch_sigma(sigma, x)
        inside = self.inside(sigma)
        if self.unguided is None:
            g = self.guided
            w = torch.where(inside, torch.full_like(sigma, g.w), torch.full_like(sigma, g.unguided_weight))
            return g.weighted(x, sigma, w, **cond)
        return torch.where(append_dims(inside, x.ndim), self.guided(x, sigma, **cond), self.unguided(x, sigma, **cond))

    @property
    def convention(self) -> str:
        """The guided model's (ClassifierGuidance's "mean": the sampler applies `guidance_grad`)."""
        return getattr(self.guided, "convention", "score")

    def score_and_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(score, v) of a learned-variance model under classifier guidance the sampler applies itself
        ("mean" convention: the score is unguided, `guidance_grad` is masked to the interval)."""
        if self.convention != "mean":
            raise ValueError("a guidance interval over a learned variance needs the sampler-applied convention "
                             "(ClassifierGuidance(convention='mean'))")
        return self.guided.score_and_variance(x, sigma)

    def guidance_grad(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The guided model's mean shift (`ClassifierGuidance(convention="mean")`) inside the interval, 0
        outside: for `ddpm_ancestral(..., guidance=...)`."""
        sigma = batch_sigma(sigma, x)
        return append_dims(self.inside(sigma), x.ndim).to(x.dtype) * self.guided.guidance_grad(x, sigma)


def guidance_interval(guided: Callable[..., Tensor], unguided: Callable[..., Tensor] | None = None,
                      sigma_lo: float = 0.0, sigma_hi: float = math.inf) -> GuidanceInterval:
    """Guidance limited to σ in (σ_lo, σ_hi] (Kynkäänniemi et al. 2024, eqs. 5-6): a σ-space score model that
    is `guided` for the examples whose σ [B] is inside and `unguided` for the others. (0, ∞] is plain
    guidance everywhere.

    With `unguided=None`, `guided` is one of the transformers above (classifier-free, classifier or
    autoguidance) and is evaluated once per call with a per-example weight, its own w inside and its
    `unguided_weight` outside: the same cost as guidance everywhere, never more. With an explicit `unguided`
    model both are evaluated for the whole batch and selected per row with `torch.where`.

    Neither path skips the guided evaluation when no example is inside: deciding that on the host needs a
    device-to-host copy of the mask at every step, which the samplers never make (docs/design.md §1). The
    choice is per call, so a two-evaluation step (Heun's) that crosses σ_lo or σ_hi uses the guided model
    for one of its evaluations only; the paper's reference sampler switches per step instead (both of a
    step's evaluations follow its starting σ).
    """
    return GuidanceInterval(guided, unguided, sigma_lo, sigma_hi)


@dataclass(frozen=True)
class IntervalPreset:
    """A published guidance setting: guidance on σ in (sigma_lo, sigma_hi] with weight `w` in the form
    w D(x | y) + (1 - w) D(x) (= `AutoGuidance`'s w with the unconditional network as guide; for
    `ClassifierFreeGuidance` use w - 1), tuned for FID or FD_DINOv2 with EDM2's 32-step Heun sampler."""

    sigma_lo: float
    sigma_hi: float
    w: float
    metric: str


# EDM2's sampling grid (Karras grid, σ 80 -> 0.002, ρ = 7, 32 steps; generate_images.py `edm_sampler`): the
# interval ends are its levels. Kynkäänniemi et al. 2024 round them in print; the exact levels keep the
# same steps guided ((0.28, 2.90] read literally would guide σ_16 … σ_22 instead of σ_15 … σ_21).
_EDM2_GRID = karras_sigmas(80.0, 0.002, 32).tolist()

# Kynkäänniemi et al. 2024, Table 1 (ImageNet-512; EDM2 guided by its XS unconditional network). EDM2's own
# generate_images.py presets have no interval (guidance at every σ).
EDM2_GUIDANCE_INTERVALS: Mapping[str, IntervalPreset] = frozen(**{
    "img512-s-fid": IntervalPreset(_EDM2_GRID[22], _EDM2_GRID[15], 2.1, "fid"),  # printed (0.28, 2.90]
    "img512-s-dino": IntervalPreset(_EDM2_GRID[20], _EDM2_GRID[13], 3.2, "fd_dinov2"),  # (0.60, 5.00]
    "img512-xxl-fid": IntervalPreset(_EDM2_GRID[23], _EDM2_GRID[17], 2.0, "fid"),  # (0.19, 1.61]
    "img512-xxl-dino": IntervalPreset(_EDM2_GRID[20], _EDM2_GRID[13], 2.9, "fd_dinov2"),  # (0.60, 5.00]
})


class Labelled(nn.Module):
    """A class-conditional score model with its labels bound: score(x, sigma) = model(x, sigma, y=y)
    (and its learned variance, when it has one)."""

    def __init__(self, model: nn.Module, y: Tensor | None):
        super().__init__()
        self.model, self.y = model, y

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.model(x, sigma, y=self.y)

    def score_and_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.score_and_variance(x, sigma, y=self.y)
