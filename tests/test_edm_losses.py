"""EDM's losses (Karras et al. 2022, eq. 8 and Table 1's training distributions) against EDM's own.

Golden numbers (tests/data/edm/edm_golden.pt, "loss"): EDM's training/loss.py `EDMLoss` (defaults and
P_mean = -0.4, P_std = 1.0, σ_d = 0.6), `VPLoss`, `VELoss`, and `EDMLoss` with EDM's `AugmentPipe`
(p = 0.5, its CIFAR-10 transforms), each after `torch.manual_seed(11)`, on a fixed batch [5, 3, 8, 8]
with the denoiser D(x; σ) = x/(1 + σ²) (+ 0.01·Σ augment_labels). Recorded: EDM's elementwise loss
summed over each example's dimensions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scorelib import AugmentPipe, GaussianMixture, edm_loss, ve_loss, vp_loss
from scorelib.augment import EDM_AUGMENT

GOLDEN = torch.load(Path(__file__).parent / "data" / "edm" / "edm_golden.pt", weights_only=True)["loss"]


class Denoiser:
    """The golden run's denoiser as a σ-space wrapper (`denoise` is what the EDM losses call)."""

    def denoise(self, x, sigma, augment_labels=None):
        d = x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)
        return d if augment_labels is None else d + 0.01 * augment_labels.sum(1).reshape(-1, 1, 1, 1)


CASES = {
    "edm": lambda g: edm_loss(Denoiser(), GOLDEN["images"], generator=g),
    "edm_custom": lambda g: edm_loss(Denoiser(), GOLDEN["images"], P_mean=-0.4, P_std=1.0, sigma_data=0.6,
                                     generator=g),
    "vp": lambda g: vp_loss(Denoiser(), GOLDEN["images"], generator=g),
    "ve": lambda g: ve_loss(Denoiser(), GOLDEN["images"], generator=g),
    "edm_aug": lambda g: edm_loss(Denoiser(), GOLDEN["images"], generator=g,
                                  augment=AugmentPipe(p=0.5, **EDM_AUGMENT)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_losses_equal_edm_draw_for_draw(name):
    """σ from the first B draws (normal ln σ for EDM, uniform t for VP, uniform ln σ for VE), then the
    augmentation's draws, then the noise; per example the sum over dimensions of EDM's elementwise
    λ(σ)‖D - y‖², so the batch mean is EDM's `loss.sum() / batch` and learning rates carry over."""
    loss = CASES[name](torch.Generator().manual_seed(11))
    assert loss.shape == (5,)
    torch.testing.assert_close(loss, GOLDEN[name], rtol=2e-6, atol=0)


def test_edm_loss_of_the_exact_denoiser_is_its_expected_value():
    """For data N(0, s²I) the exact denoiser's loss at σ has mean λ(σ)·d·s²σ²/(s² + σ²); with EDM's
    weight the average over many draws matches that expectation integrated over ln σ ~ N(P_mean, P_std²)."""
    d, s2, sd = 4, 0.3, 0.5
    gm = GaussianMixture(torch.zeros(1, d), s2 * torch.eye(d)[None])  # has the exact `denoise`
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(20000, generator=g)
    loss = edm_loss(gm, x0, sigma_data=sd, generator=g)
    z = torch.randn(400000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sig2 = torch.exp(2 * (z * 1.2 - 1.2))
    expected = ((sig2 + sd**2) / (sig2 * sd**2) * d * s2 * sig2 / (s2 + sig2)).mean()
    assert float(loss.mean()) == pytest.approx(float(expected), rel=0.03)
