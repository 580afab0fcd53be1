"""DDIM with x̂₀ clipping and classifier guidance, pinned to golden numbers recorded from guided-diffusion's own
`ddim_sample_loop` (openai/guided-diffusion gaussian_diffusion.py `ddim_sample`, `p_mean_variance`,
`condition_score`; respace.py `SpacedDiffusion`) on a respaced cosine schedule, with and without clipping and
guidance, η ∈ {0, 0.5, 1} (tests/data/guided_ddim.json; the recorder is tests/data/recorders/guided_ddim.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scorelib import EpsToScore
from scorelib.analytic import GaussianMixture
from scorelib.guidance import ClassifierGuidance
from scorelib.precond import VPClassifier
from scorelib.samplers import ddim
from scorelib.schedules import DDPMSchedule, timesteps_to_sigmas

F64 = torch.float64
GOLDEN = json.loads((Path(__file__).parent / "data" / "guided_ddim.json").read_text())
GMM = GaussianMixture.isotropic(torch.tensor(GOLDEN["means"], dtype=F64), torch.tensor(GOLDEN["stds"], dtype=F64),
                                torch.tensor(GOLDEN["weights"], dtype=F64))
ABAR = DDPMSchedule.cosine(GOLDEN["T"]).alphas_cumprod
W_CLS = torch.tensor(GOLDEN["classifier_weight"], dtype=F64)
B_CLS = torch.tensor(GOLDEN["classifier_bias"], dtype=F64)
Y = torch.tensor(GOLDEN["labels"])


class MixtureEps(torch.nn.Module):
    """The mixture's exact ε(x_t, t) at integer timesteps: a DDPM ε-network."""

    def forward(self, x_t, t):
        assert t.dtype == torch.int64
        return GMM.eps(x_t, t, ABAR)


def classifier(x_t, t):
    """The recorded noisy classifier's logits [B, 3] (the original timestep t, as guided-diffusion feeds it)."""
    return x_t @ W_CLS.T * (1 + t.to(F64)[:, None] / GOLDEN["T"]) + B_CLS


def case_id(c):
    return f"clip{int(c['clip_denoised'])}-guided{int(c['guided'])}-eta{c['eta']}"


def run(c, **options):
    score = EpsToScore(MixtureEps(), ABAR, quantize=True)
    grid = timesteps_to_sigmas(ABAR, torch.tensor(GOLDEN["kept_timesteps"]).flip(0))
    x_T = torch.randn(c["B"], 2, generator=torch.Generator().manual_seed(c["x_T_seed"]), dtype=F64)
    guidance = ClassifierGuidance(score, VPClassifier(classifier, ABAR, quantize=True), Y, GOLDEN["guidance_scale"])
    options.setdefault("guidance", guidance.guidance_grad if c["guided"] else None)
    options.setdefault("clip_denoised", c["clip_denoised"])
    model = options.pop("model", score)
    if model == "guided":
        model = guidance
    return ddim(model, x_T * (1 + grid[0] ** 2).sqrt(), grid, eta=c["eta"],
                generator=torch.Generator().manual_seed(c["seed"]), **options)


@pytest.mark.parametrize("c", GOLDEN["cases"], ids=case_id)
def test_ddim_is_guided_diffusions_ddim_sample_loop(c):
    got = run(c)
    torch.testing.assert_close(got, torch.tensor(c["sample"], dtype=F64), rtol=1e-9, atol=1e-10)


def _case(clip, guided, eta):
    return next(c for c in GOLDEN["cases"] if (c["clip_denoised"], c["guided"], c["eta"]) == (clip, guided, eta))


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_clipping_and_guidance_after_the_clip_matter(eta):
    """The recorded chains differ where the options do: clipping changes the samples, and with clipping the
    guidance must come after the clamp (a guided score clamped afterwards is a different chain)."""
    want = torch.tensor(_case(True, True, eta)["sample"], dtype=F64)
    unclipped = torch.tensor(_case(False, True, eta)["sample"], dtype=F64)
    assert (want - unclipped).abs().max() > 1e-2
    inside = run(_case(True, True, eta), model="guided", guidance=None)  # guidance before the clamp
    assert (inside - want).abs().max() > 1e-3
    assert inside.abs().max() <= 1.0 < want.abs().max()  # D' = clamp(D) + σ²g is not clamped again


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_without_clipping_the_guided_score_is_condition_score(eta):
    """condition_score without clipping is the score convention: s + w∇ log p passed as the score."""
    c = _case(False, True, eta)
    torch.testing.assert_close(run(c, model="guided", guidance=None), torch.tensor(c["sample"], dtype=F64),
                               rtol=1e-9, atol=1e-10)
