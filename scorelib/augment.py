"""Non-leaking geometric augmentation for diffusion training (Karras et al. 2022, App. F.2; the
pipeline of Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", App. B).

Each training image is transformed with probability p per transform, and the network is told what was
done: `augment(images) -> (augmented, labels)` with one row of augmentation labels per image, which the
network takes as `augment_labels` (`NCSNpp` / `ADMUNet` `augment_dim`). At sampling time the labels are
zero (or absent), so the network generates un-augmented images: the augmentations do not leak.

Transforms (in this order; each with its probability multiplier, 0 = off):

* x-flip and y-flip (label: 1 if flipped);
* integer rotation by k·90° (labels: two bits) and integer translation with reflection padding
  (labels: the shift as a fraction of translate_int_max · size);
* isotropic scaling by 2^(scale_std·z) (label z), rotation by an angle θ uniform in ±π·rotate_frac_max
  (labels cos θ - 1, sin θ), anisotropic scaling by 2^(±aniso_std·z) along a random axis at angle r
  (labels z cos r, z sin r), and translation by translate_frac_std·(size)·z (labels z_x, z_y).

The last four compose into one affine map that is executed once per batch by resampling: the image is
padded by reflection, upsampled 2× with the symlet-6 wavelet low-pass filter, sampled bilinearly at
the transformed pixel grid, and filtered and downsampled 2× back (App. B.4 of Karras et al. 2020).
Whenever any of them is enabled the whole batch goes through that resampling; an image whose map is
the identity comes back unchanged up to rounding (the wavelet's 2x up- and downsampling invert each
other on the pixel grid). x/y flips and integer moves are exact.

The random draws, their order and the label layout follow EDM training/augment.py `AugmentPipe`, so a
generator seeded like EDM's global RNG gives EDM's images and labels (tests/test_augment.py). EDM's
CIFAR-10 and 64×64 recipes use `AugmentPipe(p, **EDM_AUGMENT)` (9 labels); colour transforms are not
implemented (EDM's recipes do not use them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EDM_AUGMENT", "SYM6", "AugmentPipe"]

# Low-pass decomposition filter of the symlet wavelet with 6 vanishing moments (12 taps, Σ = √2).
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)

#: The transforms EDM's train.py enables (with p = 0.12 for CIFAR-10, 0.15 for FFHQ / AFHQv2; xflip's
#: huge multiplier makes "flip or not" a fair coin whatever p is). Gives 9 augmentation labels.
EDM_AUGMENT = dict(xflip=1e8, yflip=1.0, scale=1.0, rotate_frac=1.0, aniso=1.0, translate_frac=1.0)


@dataclass(frozen=True)
class AugmentPipe:
    """Geometric augmentation with labels; `pipe(images, generator) -> (images, labels [N, label_dim])`.

    p: overall probability multiplier; each transform's own field multiplies it (0 disables it).
    Defaults of the ranges are those of Karras et al. 2020 / EDM. images: [N, C, H, W] (square for
    rotate_int). Labels are float32, in the order of the fields below.
    """

    p: float = 1.0
    xflip: float = 0.0
    yflip: float = 0.0
    rotate_int: float = 0.0
    translate_int: float = 0.0
    translate_int_max: float = 0.125
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125

    @property
    def label_dim(self) -> int:
        """Width of the augmentation labels (9 for `EDM_AUGMENT`)."""
        widths = ((self.xflip, 1), (self.yflip, 1), (self.rotate_int, 2), (self.translate_int, 2), (self.scale, 1),
                  (self.rotate_frac, 2), (self.aniso, 2), (self.translate_frac, 2))
        return sum(w for prob, w in widths if prob > 0)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """images [N, C, H, W] -> (augmented images, labels [N, label_dim] float32)."""
        n = images.shape[0]
        draw = _Draws(n, images.device, generator)
        labels: list[Tensor] = []
        images = self._pixel_moves(images, draw, labels)  # exact pixel moves, then the resampled ones
        images = self._geometric(images, draw, labels, generator)
        rows = [lab.to(torch.float32).reshape(n, -1) for lab in labels]
        return images, torch.cat(rows, dim=1) if rows else images.new_zeros(n, 0, dtype=torch.float32)

    def _pixel_moves(self, images: Tensor, draw: _Draws, labels: list[Tensor]) -> Tensor:
        """x/y flips, quarter turns and integer translation (exact pixel moves); appends their labels."""
        n, _, h, w = images.shape
        if self.xflip > 0:
            flip = draw.coin(2, self.xflip * self.p)
            images = torch.where(flip[:, None, None, None] == 1, images.flip(3), images)
            labels.append(flip)
        if self.yflip > 0:
            flip = draw.coin(2, self.yflip * self.p)
            images = torch.where(flip[:, None, None, None] == 1, images.flip(2), images)
            labels.append(flip)
        if self.rotate_int > 0:
            if h != w:
                raise ValueError(f"integer rotation needs square images, got {h}x{w}")
            k = draw.coin(4, self.rotate_int * self.p)  # k quarter turns
            fx, fy, tr = (k == 1) | (k == 2), (k == 2) | (k == 3), (k == 1) | (k == 3)
            images = torch.where(fx[:, None, None, None], images.flip(3), images)
            images = torch.where(fy[:, None, None, None], images.flip(2), images)
            images = torch.where(tr[:, None, None, None], images.transpose(2, 3), images)
            labels += [fx, fy]
        if self.translate_int > 0:
            shift = draw.uniform_pm((2, n), self.translate_int * self.p)
            tx = (shift[0] * (w * self.translate_int_max)).round().long()
            ty = (shift[1] * (h * self.translate_int_max)).round().long()
            images = _reflect_shift(images, tx, ty)
            labels += [tx / (w * self.translate_int_max), ty / (h * self.translate_int_max)]

        return images

    def _geometric(self, images: Tensor, draw: _Draws, labels: list[Tensor],
                   generator: torch.Generator | None) -> Tensor:
        """Isotropic and anisotropic scaling, rotation and fractional translation as one resampled affine map;
        appends their labels."""
        n, _, h, w = images.shape
        # The affine map from output to input pixel coordinates (centred), composed in float64.
        g_inv = torch.eye(3, dtype=torch.float64, device=images.device).expand(n, 3, 3)
        geometric = False
        if self.scale > 0:
            z = draw.normal_if(self.scale * self.p)
            s = torch.exp2(z.double() * self.scale_std)
            g_inv = g_inv @ _scale(1 / s, 1 / s)
            labels.append(z)
            geometric = True
        if self.rotate_frac > 0:
            theta = draw.uniform_pm((n,), self.rotate_frac * self.p, scale=math.pi * self.rotate_frac_max)
            g_inv = g_inv @ _rotate(theta.double())
            labels += [theta.cos() - 1, theta.sin()]
            geometric = True
        if self.aniso > 0:
            z = torch.randn(n, generator=generator, device=images.device)
            axis = (torch.rand(n, generator=generator, device=images.device) * 2 - 1) * math.pi
            z = torch.where(draw.accept(self.aniso * self.p), z, 0.0)
            axis = torch.where(draw.accept(self.aniso_rotate_prob), axis, 0.0)
            s = torch.exp2(z.double() * self.aniso_std)
            r = axis.double()
            g_inv = g_inv @ _rotate(-r) @ _scale(1 / s, s) @ _rotate(r)
            labels += [z * axis.cos(), z * axis.sin()]
            geometric = True
        if self.translate_frac > 0:
            z = torch.randn(2, n, generator=generator, device=images.device)
            z = torch.where(draw.accept(self.translate_frac * self.p, (1, n)), z, 0.0)
            g_inv = g_inv @ _translate(-z[0].double() * (w * self.translate_frac_std),
                                       -z[1].double() * (h * self.translate_frac_std))
            labels += [z[0], z[1]]
            geometric = True
        return _resample(images, g_inv) if geometric else images


class _Draws:
    """The generator's draws, in the shapes and order of EDM's AugmentPipe (each transform draws its
    value first, then a uniform deciding whether it applies)."""

    def __init__(self, n: int, device: torch.device, generator: torch.Generator | None):
        self.n, self.device, self.generator = n, device, generator

    def accept(self, prob: float, shape: tuple[int, ...] | None = None) -> Tensor:
        """rand < prob, of `shape` ([N] by default)."""
        return torch.rand(shape or (self.n,), generator=self.generator, device=self.device) < prob

    def coin(self, k: int, prob: float) -> Tensor:
        """An integer in [0, k) kept with probability prob (else 0): int64 [N]."""
        v = torch.randint(k, (self.n,), generator=self.generator, device=self.device)
        return torch.where(self.accept(prob), v, 0)

    def uniform_pm(self, shape: tuple[int, ...], prob: float, scale: float = 1.0) -> Tensor:
        """scale·U(-1, 1) of `shape` (last dim N), kept with probability prob per image (else 0)."""
        v = (torch.rand(shape, generator=self.generator, device=self.device) * 2 - 1) * scale
        return torch.where(self.accept(prob, (1,) * (len(shape) - 1) + (self.n,)), v, 0.0)

    def normal_if(self, prob: float) -> Tensor:
        """N(0, 1) [N], kept with probability prob (else 0)."""
        v = torch.randn(self.n, generator=self.generator, device=self.device)
        return torch.where(self.accept(prob), v, 0.0)


def _matrices(rows: list[list[Tensor | float]], ref: Tensor) -> Tensor:
    """[N, 3, 3] float64 from rows of per-image values [N] or constants."""
    return torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64, device=ref.device).expand_as(ref)
                                     for v in row], -1) for row in rows], -2)


def _scale(sx: Tensor, sy: Tensor) -> Tensor:
    return _matrices([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]], sx)


def _rotate(theta: Tensor) -> Tensor:
    """Counter-clockwise rotation by θ (in the x-right, y-down pixel frame: the matrix [[c, -s], [s, c]])."""
    c, s = theta.cos(), theta.sin()
    return _matrices([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], theta)


def _translate(tx: Tensor, ty: Tensor) -> Tensor:
    return _matrices([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]], tx)


def _reflect_shift(images: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Shift each image by (tx, -ty) whole pixels [N] (x right, y up), filling with the mirror image
    (reflection without repeating the edge pixel)."""
    n, c, h, w = images.shape
    xs = torch.arange(w, device=images.device)[None, :] - tx[:, None]  # source column of each output column
    ys = torch.arange(h, device=images.device)[None, :] + ty[:, None]
    xs = (w - 1) - ((w - 1) - xs.remainder(2 * w - 2)).abs()  # fold into [0, W-1] by reflection
    ys = (h - 1) - ((h - 1) - ys.remainder(2 * h - 2)).abs()
    images = images.gather(3, xs[:, None, None, :].expand(n, c, h, w))
    return images.gather(2, ys[:, None, :, None].expand(n, c, h, w))


def _fir(x: Tensor, taps: Tensor, dim: int, *, up: bool) -> Tensor:
    """Upsample (zero insertion, then filtering with gain 1 per phase pair) or filter-and-downsample
    by 2 along `dim` (3 = W, 2 = H) with the FIR `taps`; x: [N, C, H, W]."""
    c = x.shape[1]
    k = len(taps)
    shape = (1, 1, 1, k) if dim == 3 else (1, 1, k, 1)
    if up:
        # zero-insert (sample i at 2i, length 2L - 1), convolve with the taps, keep 2L outputs
        z = torch.stack([x, torch.zeros_like(x)], dim=dim + 1).flatten(dim, dim + 1)
        z = z.narrow(dim, 0, z.shape[dim] - 1)
        weight = taps.flip(0).reshape(shape).expand(c, -1, -1, -1)
        pad = (k + 1) // 2
        return F.conv2d(z, weight, padding=(0, pad) if dim == 3 else (pad, 0), groups=c)
    pad = (k - 1) // 2
    stride = (1, 2) if dim == 3 else (2, 1)
    padding = (0, pad) if dim == 3 else (pad, 0)
    return F.conv2d(x, taps.reshape(shape).expand(c, -1, -1, -1), stride=stride, padding=padding, groups=c)


def _resample(images: Tensor, g_inv: Tensor) -> Tensor:
    """Execute the per-image affine maps `g_inv` [N, 3, 3] (output -> input pixel coordinates, centred)
    with 2× oversampling: reflect-pad, upsample with SYM6, bilinear sampling, SYM6 downsample, crop."""
    n, c, h, w = images.shape
    taps = torch.tensor(SYM6, dtype=images.dtype, device=images.device)
    margin_px = len(SYM6) // 4  # output margin (px) that absorbs the filters' support
    cx, cy = (w - 1) / 2, (h - 1) / 2

    # How far outside the image the output corners reach, plus the filters' support, as reflect padding.
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=torch.float64,
                           device=images.device)
    reach = (g_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N·4]
    reach = torch.cat([-reach, reach]).max(dim=1).values  # [x0, y0, x1, y1]
    reach = reach + torch.tensor([2 * margin_px - cx, 2 * margin_px - cy] * 2, dtype=torch.float64,
                                 device=images.device)
    limit = torch.tensor([w - 1, h - 1] * 2, dtype=torch.float64, device=images.device)
    left, top, right, bottom = (int(v) for v in reach.clamp(min=0).minimum(limit).ceil().tolist())
    images = F.pad(images, [left, right, top, bottom], mode="reflect")
    g_inv = _translate(torch.tensor((left - right) / 2, dtype=torch.float64),
                       torch.tensor((top - bottom) / 2, dtype=torch.float64)).to(g_inv.device) @ g_inv

    # 2x upsampling; in centred coordinates a point x of the coarse grid is 2x - ½ on the fine grid.
    images = _fir(_fir(images, taps, 3, up=True), taps, 2, up=True)
    two = torch.tensor(2.0, dtype=torch.float64)
    half = torch.tensor(0.5, dtype=torch.float64)
    to_fine = _translate(-half, -half) @ _scale(two, two)
    from_fine = _scale(1 / two, 1 / two) @ _translate(half, half)
    g_inv = to_fine.to(g_inv.device) @ g_inv @ from_fine.to(g_inv.device)

    # Bilinear sampling on the output grid (with its margin), in grid_sample's normalised coordinates.
    out_h, out_w = (h + 2 * margin_px) * 2, (w + 2 * margin_px) * 2
    in_h, in_w = images.shape[2], images.shape[3]
    norm_in = _scale(torch.tensor(2 / in_w, dtype=torch.float64), torch.tensor(2 / in_h, dtype=torch.float64))
    norm_out = _scale(torch.tensor(out_w / 2, dtype=torch.float64), torch.tensor(out_h / 2, dtype=torch.float64))
    theta = (norm_in.to(g_inv.device) @ g_inv @ norm_out.to(g_inv.device))[:, :2, :].to(images.dtype)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Filter, downsample 2x and drop the margin.
    images = _fir(images, taps, 3, up=False)[:, :, :, margin_px:-margin_px]
    return _fir(images, taps, 2, up=False)[:, :, margin_px:-margin_px, :]
