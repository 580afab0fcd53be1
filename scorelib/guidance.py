"""Guidance as score-model transformers (docs/design.md §2): each takes σ-space models and returns a
σ-space score model, so every sampler gets guidance for free.

- `ClassifierGuidance`: s + w ∇ₓ log p_φ(y | x, σ) (Dhariwal & Nichol 2021), guided-diffusion's scale
  conventions (`condition_score` / `condition_mean`);
- `ClassifierFreeGuidance`: (1 + w) s(x, σ, y) - w s(x, σ, ∅) (Ho & Salimans 2022).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .utils import ScoreFn, batch_sigma


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

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_sigma(sigma, x)
        base = self.score_model(x, sigma)
        return base if self.convention == "mean" else base + self.guidance_grad(x, sigma)

    def score_and_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(guided score, v) of a learned-variance base model (see `EpsToScore.score_and_variance`)."""
        sigma = batch_sigma(sigma, x)
        score, v = self.score_model.score_and_variance(x, sigma)
        return (score if self.convention == "mean" else score + self.guidance_grad(x, sigma)), v


class ClassifierFreeGuidance(nn.Module):
    """s = (1 + w) s(x, σ, y) - w s(x, σ, ∅) (Ho & Salimans 2022, eq. 6), both in one batched call.

    `model(x, sigma, y=labels)` is a conditional σ-space score model; `null_label` is its ∅ class.
    """

    def __init__(self, model: Callable[..., Tensor], y: Tensor, w: float, null_label: int):
        super().__init__()
        self.model, self.w, self.null_label = model, w, null_label
        self.register_buffer("y", y, persistent=False)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = batch_sigma(sigma, x)
        y = self.y.to(x.device)
        labels = torch.cat([y, torch.full_like(y, self.null_label)])
        out = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), y=labels)
        cond, uncond = out.chunk(2)
        return torch.lerp(uncond, cond, 1 + self.w)
