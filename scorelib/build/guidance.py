"""Config -> the labels and guidance a sampled score gets (sampling.guidance, class_label,
guidance_scale, guidance_convention), as one frozen `Guidance` made once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..guidance import ClassifierFreeGuidance, ClassifierGuidance
from ..precond import VPClassifier
from ..utils import ScoreFn
from .names import GUIDANCE, GUIDANCE_CONVENTIONS, ConfigError, choice
from .networks import is_class_conditional
from .noise import create_schedule


class _Labelled(nn.Module):
    """A class-conditional score model with its labels bound: score(x, sigma) = model(x, sigma, y=y)
    (and its learned variance, when it has one)."""

    def __init__(self, model: nn.Module, y: Tensor | None):
        super().__init__()
        self.model, self.y = model, y

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.model(x, sigma, y=self.y)

    def score_and_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.score_and_variance(x, sigma, y=self.y)


@dataclass(frozen=True, eq=False)
class Guidance:
    """How the sampled score takes labels: `labels(n, generator, device)` draws them, `guided(score,
    y, classifier)` binds them and applies sampling.guidance = none | cfg | classifier."""

    kind: str  # none | cfg | classifier
    conditional: bool  # the network itself takes labels
    scale: float
    class_label: int  # -1: uniform random labels
    num_classes: int
    class_dropout: float  # > 0: the network was trained with a null label (classifier-free guidance)
    convention: str  # auto | mean | score (sampling.guidance_convention)
    method: str  # sampling.method (the "auto" convention depends on it)
    alphas_cumprod: Tensor | None  # the DDPM ᾱ the noisy classifier was trained on

    @property
    def labelled(self) -> bool:
        """Whether the score takes class labels (a conditional model or classifier guidance)."""
        return self.conditional or self.kind == "classifier"

    def labels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor | None:
        """Class labels [n] when the score takes them: `class_label`, or uniform random labels from
        `generator` when it is -1; None for unconditional sampling."""
        if not self.labelled:
            return None
        if self.class_label >= 0:
            return torch.full((n,), self.class_label, device=device)
        return torch.randint(self.num_classes, (n,), generator=generator, device=device)

    def resolved_convention(self) -> str:
        """How classifier guidance applies its scale: "mean" shifts the DDPM ancestral mean by Σ w∇ log p
        (guided-diffusion `condition_mean`, its `p_sample`), "score" shifts the score (`condition_score`,
        its `ddim_sample`); "auto" picks guided-diffusion's pairing: mean for sampling.method='ddpm',
        score for every other sampler."""
        conv = choice(self.convention, GUIDANCE_CONVENTIONS, "sampling.guidance_convention")
        if conv == "auto":
            return "mean" if self.method == "ddpm" else "score"
        if conv == "mean" and self.method != "ddpm":
            raise ConfigError(f"sampling.guidance_convention='mean' needs sampling.method='ddpm' (got "
                              f"{self.method!r}); other samplers take the score convention")
        return conv

    def guided(self, score: nn.Module, y: Tensor | None, classifier: nn.Module | None = None) -> ScoreFn:
        """The score the sampler runs: class-conditional on labels y [B] when the model is, with
        classifier-free guidance (scale w) or classifier guidance (∇ log p_φ(y | x, σ))."""
        if not self.conditional and self.kind != "classifier":
            return score
        if self.kind == "cfg":
            if self.class_dropout <= 0:
                raise ConfigError("sampling.guidance='cfg' needs a model trained with a null label "
                                  "(model.class_dropout > 0)")
            return ClassifierFreeGuidance(score, y, self.scale, null_label=self.num_classes)
        base = _Labelled(score, y) if self.conditional else score
        if self.kind == "none":
            return base
        if classifier is None:
            raise ConfigError("sampling.guidance='classifier' needs a trained classifier (classifier.workdir)")
        return ClassifierGuidance(base, VPClassifier(classifier, self.alphas_cumprod), y, self.scale,
                                  convention=self.resolved_convention())


def guidance(config: Any) -> Guidance:
    """The config's labels and guidance."""
    s = config.sampling
    kind = choice(s.guidance, GUIDANCE, "sampling.guidance")
    abar = create_schedule(config).alphas_cumprod if kind == "classifier" else None
    return Guidance(kind, is_class_conditional(config), s.guidance_scale, s.class_label, config.data.num_classes,
                    config.model.class_dropout, s.guidance_convention, s.method, abar)


def guided_score(config: Any, score: nn.Module, y: Tensor | None, classifier: nn.Module | None = None) -> ScoreFn:
    """`Guidance.guided` of the config."""
    return guidance(config).guided(score, y, classifier)


def guidance_convention(config: Any) -> str:
    """`Guidance.resolved_convention` of the config."""
    return guidance(config).resolved_convention()


def sampling_labels(config: Any, n: int, generator: torch.Generator, device: torch.device) -> Tensor | None:
    """`Guidance.labels` of the config."""
    return guidance(config).labels(n, generator, device)
