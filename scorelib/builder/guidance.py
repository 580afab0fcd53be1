"""The labels and guidance a sampled score gets (sampling.guidance, class_label, guidance_scale,
guidance_convention), declared here and made once as a frozen `Guidance`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..guidance import ClassifierFreeGuidance, ClassifierGuidance
from ..utils import ScoreFn
from .declare import NON_NEGATIVE, ConfigError, Field, one_of

GUIDANCE_KINDS = ("none", "cfg", "classifier")
CONVENTIONS = ("auto", "mean", "score")

FIELDS: dict[str, Field] = {
    "guidance": Field("none", "none | cfg (classifier-free) | classifier", one_of(GUIDANCE_KINDS)),
    "guidance_scale": Field(1.0, "the guidance weight w", NON_NEGATIVE),
    "guidance_convention": Field("auto", "classifier guidance scale: auto | mean (the ancestral mean, guided-"
                                 "diffusion condition_mean) | score (condition_score); auto: mean for method ddpm, "
                                 "score otherwise, as guided-diffusion", one_of(CONVENTIONS)),
}


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


@dataclass(frozen=True, eq=False)
class Guidance:
    """How the sampled score takes labels: `labels(n, generator, device)` draws them, `guided(score, y,
    classifier)` binds them and applies sampling.guidance = none | cfg | classifier."""

    kind: str  # none | cfg | classifier
    conditional: bool  # the network itself takes labels
    scale: float
    class_label: int  # -1: uniform random labels
    num_classes: int
    null_label: bool  # the network was trained with a null label (classifier-free guidance)
    convention: str  # mean | score: how classifier guidance applies its scale (resolved from "auto")
    method: str  # sampling.method: ddpm and ddim apply classifier guidance themselves (guided-diffusion's order)

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

    def guided(self, score: nn.Module, y: Tensor | None, classifier: nn.Module | None = None) -> ScoreFn:
        """The score the sampler runs: class-conditional on labels y [B] when the model is, with
        classifier-free guidance (scale w) or classifier guidance (∇ log p_φ(y | x, σ), `classifier` a
        σ-space classifier)."""
        if not self.labelled:
            return score
        if self.kind == "cfg":
            return ClassifierFreeGuidance(score, y, self.scale, null_label=self.num_classes)
        base = Labelled(score, y) if self.conditional else score
        if self.kind == "none":
            return base
        if classifier is None:
            raise ConfigError("classifier.workdir: sampling.guidance='classifier' needs a trained classifier")
        # ddpm / ddim take the guidance gradient themselves: condition_mean in p_sample, condition_score after
        # the x̂₀ clip in ddim_sample (guided-diffusion gaussian_diffusion.py); ClassifierGuidance's "mean"
        # convention leaves the score unguided for them
        by_sampler = self.convention == "mean" or self.method == "ddim"
        return ClassifierGuidance(base, classifier, y, self.scale, convention="mean" if by_sampler else "score")


def make_guidance(s: object, conditional: bool, num_classes: int, null_label: bool) -> Guidance:
    """The Guidance of the sampling.* record `s` for a network that is `conditional` (with a null label)."""
    convention = s.guidance_convention
    if convention == "auto":  # guided-diffusion: condition_mean in p_sample, condition_score in ddim_sample
        convention = "mean" if s.method == "ddpm" else "score"
    elif convention == "mean" and s.method != "ddpm" and s.guidance == "classifier":
        raise ConfigError(f"sampling.guidance_convention: 'mean' needs sampling.method='ddpm' (got {s.method!r}); "
                          "other samplers take the score convention")
    if s.guidance == "cfg" and not (conditional and null_label):
        raise ConfigError("sampling.guidance: 'cfg' needs a class-conditional model trained with a null label "
                          "(model.name='adm', data.num_classes > 0, model.class_dropout > 0; or none)")
    return Guidance(s.guidance, conditional, s.guidance_scale, s.class_label, num_classes, null_label, convention,
                    s.method)
