"""NCSNv2: the unconditional score network of Song & Ermon (2020) with s_θ(x, σ) = s_θ(x) / σ.

"Improved Techniques for Training Score-Based Generative Models", Technique 3 (noise
conditioning) and App. B: the NCSN RefineNet with unconditional instance normalisation++ in the
encoder, a normalisation-free decoder with max-pooling CRP blocks, and the output divided by σ.
Matches ermongroup/ncsnv2 `models/ncsnv2.py`: NCSNv2 29,694,083 parameters at ngf=128 with 3
channels (any image size), NCSNv2Deeper 83,445,379, NCSNv2Deepest 94,132,611.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from scorelib.models.ncsn_layers import DilatedRefineNet, make_norm
from scorelib.utils import append_dims, batch_sigma


class NCSNv2(DilatedRefineNet):
    """Score network s_θ(x, σ) = f_θ(x) / σ (NCSNv2, Technique 3); σ is taken directly, any σ > 0.

    The reference looks σ up as ``sigmas[y]`` from a label; passing σ itself is the same network
    and also works between or beyond the training levels. No parameter depends on the number of
    noise levels.

    Args:
        channels: image channels C.
        image_size: H = W of the training images; only used to pad odd sizes before mean pooling.
        ngf: base width; stages use ngf and 2·ngf channels (4·ngf in 'deeper' / 'deepest').
        variant: 'base' (NCSNv2: CIFAR-10 32 px, CelebA 64 px in the reference), 'deeper'
            (NCSNv2Deeper: LSUN 64-128 px) or 'deepest' (NCSNv2Deepest: FFHQ 256 px).
        norm: 'instancenorm++' (the paper's), 'instancenorm', 'variancenorm' or 'none'.
        activation: 'elu' (the paper's), 'relu', 'lrelu' or 'swish'.
        centered_input: data already in [-1, 1]. False (the reference's convention): data in
            [0, 1], remapped to 2x - 1 before the first convolution.
    """

    def __init__(
        self,
        *,
        channels: int = 3,
        image_size: int = 32,
        ngf: int = 128,
        variant: str = "base",
        norm: str = "instancenorm++",
        activation: str = "elu",
        centered_input: bool = False,
    ) -> None:
        super().__init__(
            channels,
            image_size,
            ngf,
            variant,
            partial(make_norm, norm, num_classes=None),
            None,
            activation,
            crp_pool="max",
        )
        self.centered_input = centered_input

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Score estimate at noise level σ.

        x: [B, C, H, W] noisy data; sigma: float [B] (or a scalar for the whole batch), σ > 0.
        Returns [B, C, H, W]: ∇ₓ log p_σ(x) ≈ f_θ(x) / σ in the coordinates of x.
        """
        h = x if self.centered_input else 2 * x - 1
        out = self.backbone(h)
        return out / append_dims(batch_sigma(sigma, x), out.ndim)
