"""The labels and guidance a sampled score gets (sampling.guidance, class_label, guidance_scale,
guidance_convention, guide_checkpoint, guidance_interval), declared here and made once as a frozen
`Guidance`: classifier-free, classifier guidance or autoguidance, optionally limited to a σ interval."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..guidance import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance, Labelled, guidance_interval
from ..utils import ScoreFn
from .declare import NON_NEGATIVE, ConfigError, Field, Rule, one_of

GUIDANCE_KINDS = ("none", "cfg", "classifier", "auto")
CONVENTIONS = ("auto", "mean", "score")
INTERVAL: Rule = (lambda v: isinstance(v, tuple | list) and (len(v) == 0 or (
    len(v) == 2 and all(isinstance(e, int | float) and not isinstance(e, bool) for e in v) and 0 <= v[0] < v[1])),
    "() for every σ, or (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi")

FIELDS: dict[str, Field] = {
    "guidance": Field("none", "none | cfg (classifier-free) | classifier | auto (autoguidance by "
                      "sampling.guide_checkpoint)", one_of(GUIDANCE_KINDS)),
    "guidance_scale": Field(1.0, "the guidance weight w: cfg (1 + w) s(y) - w s(∅); classifier s + w∇log p; auto "
                            "w s_main + (1 - w) s_guide (1: none)", NON_NEGATIVE),
    "guide_checkpoint": Field("", "auto: the guide, a worse version of the model (a checkpoint or run of a smaller "
                              "or shorter-trained network, e.g. an early step's, or an EDM2 .pkl)"),
    "guidance_interval": Field((), "guidance only for σ in (sigma_lo, sigma_hi] (Kynkäänniemi et al. 2024); (): "
                               "every σ", INTERVAL),
    "guidance_convention": Field("auto", "classifier guidance scale: auto | mean (the ancestral mean, guided-"
                                 "diffusion condition_mean) | score (condition_score); auto: mean for method ddpm, "
                                 "score otherwise, as guided-diffusion", one_of(CONVENTIONS)),
}


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
    interval: tuple[float, ...] = ()  # (σ_lo, σ_hi]: guidance only there; (): everywhere

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

    def guided(self, score: nn.Module, y: Tensor | None, classifier: nn.Module | None = None,
               guide: nn.Module | None = None) -> ScoreFn:
        """The score the sampler runs: class-conditional on labels y [B] when the model is, with
        classifier-free guidance (scale w), classifier guidance (∇ log p_φ(y | x, σ), `classifier` a
        σ-space classifier) or autoguidance (`guide`, a σ-space model), limited to the σ interval."""
        out = self._guided(score, y, classifier, guide)
        if self.interval and self.kind != "none":
            return guidance_interval(out, None, *self.interval)
        return out

    def _guided(self, score: nn.Module, y: Tensor | None, classifier: nn.Module | None,
                guide: nn.Module | None) -> ScoreFn:
        if self.kind == "auto":
            if guide is None:
                raise ConfigError("sampling.guide_checkpoint: sampling.guidance='auto' needs the guide network")
            return AutoGuidance(score, guide, self.scale, y=y if self.conditional else None)
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
    if s.guidance == "auto" and not s.guide_checkpoint:
        raise ConfigError("sampling.guide_checkpoint: empty: sampling.guidance='auto' needs the guide network (a "
                          "checkpoint of a smaller or shorter-trained version of the model)")
    if s.guidance_interval and s.guidance == "none":
        raise ConfigError("sampling.guidance_interval: set but sampling.guidance='none' (cfg, classifier, auto)")
    return Guidance(s.guidance, conditional, s.guidance_scale, s.class_label, num_classes, null_label, convention,
                    s.method, tuple(float(v) for v in s.guidance_interval))
