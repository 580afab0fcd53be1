"""EDM's non-leaking augmentation (scorelib.augment) against EDM's training/augment.py `AugmentPipe`.

Golden numbers (tests/data/edm/edm_golden.pt, "augment"): EDM's AugmentPipe on CPU after
`torch.manual_seed(seed)`, on seeded random images: its CIFAR-10 transforms (xflip=1e8, yflip, scale,
rotate_frac, aniso, translate_frac) at p = 0.12 and p = 1 (8x8 and 32x32 RGB, an 8x12 grey batch at
p = 0.7), the integer moves (flips, rotate_int, translate_int), all geometric transforms with other
ranges, and an x-flip alone. Recorded: the images and the labels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scorelib import AugmentPipe
from scorelib.augment import EDM_AUGMENT

GOLDEN = torch.load(Path(__file__).parent / "data" / "edm" / "edm_golden.pt", weights_only=True)["augment"]


def _run(name):
    case = GOLDEN[name]
    pipe = AugmentPipe(**case["kw"])
    images, labels = pipe(case["images"], torch.Generator().manual_seed(case["seed"]))
    return case, pipe, images, labels


@pytest.mark.parametrize("name", list(GOLDEN))
def test_labels_equal_edm_exactly(name):
    """Same draws in the same order: the augmentation labels are EDM's bit for bit."""
    case, pipe, _, labels = _run(name)
    assert labels.dtype == torch.float32 and labels.shape == (case["images"].shape[0], pipe.label_dim)
    assert torch.equal(labels, case["labels"])


@pytest.mark.parametrize("name", ["int_ops", "pixel_only"])
def test_flips_and_integer_moves_equal_edm_exactly(name):
    case, _, images, _ = _run(name)
    assert torch.equal(images, case["out"])


@pytest.mark.parametrize("name", ["cifar_p012", "cifar_p1", "cifar_p1_32", "gray_rect", "all_geom"])
def test_resampled_images_equal_edm(name):
    """Reflect pad, symlet-6 2x upsampling, bilinear sampling, 2x downsampling: EDM's images to 1e-5 of
    their scale (the affine maps are composed in float64 here, in float32 by EDM)."""
    case, _, images, _ = _run(name)
    scale = case["out"].abs().max()
    torch.testing.assert_close(images, case["out"], rtol=0, atol=1e-5 * float(scale))


def test_edm_recipe_has_nine_labels_and_zero_labels_mean_unchanged_images():
    pipe = AugmentPipe(p=0.12, **EDM_AUGMENT)
    assert pipe.label_dim == 9
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y, labels = pipe(x, torch.Generator().manual_seed(1))
    untouched = (labels == 0).all(1)
    assert 0 < int(untouched.sum()) < 64
    # the resampling path (which the whole batch takes) gives untransformed images back
    torch.testing.assert_close(y[untouched], x[untouched], rtol=0, atol=1e-5)


def test_same_generator_same_result_and_default_is_no_augmentation():
    x = torch.randn(4, 3, 8, 8)
    pipe = AugmentPipe(p=0.5, **EDM_AUGMENT)
    a = pipe(x, torch.Generator().manual_seed(3))
    b = pipe(x, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    y, labels = AugmentPipe()(x)
    assert torch.equal(y, x) and labels.shape == (4, 0)
