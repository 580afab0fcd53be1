"""NCSN: the noise-conditional score network of Song & Ermon (2019).

"Generative Modeling by Estimating Gradients of the Data Distribution", App. A: a RefineNet
with dilated convolutions and conditional instance normalisation++, conditioned on the index of
the noise level. Matches ermongroup/ncsn `models/cond_refinenet_dilated.py`
(CondRefineNetDilated): 30,117,635 parameters at the CIFAR-10 setting (3 channels, ngf=128,
10 levels) and 7,638,657 at the MNIST one (1 channel, 28 px, ngf=64, 10 levels).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from scorelib.models.ncsn_layers import DilatedRefineNet, make_norm


class NCSN(DilatedRefineNet):
    """Noise-conditional score network s_θ(x, σ_i) (CondRefineNetDilated), conditioned by level index.

    Every normalisation layer, in the encoder and in the RefineNet decoder, is conditional on the
    noise-level index (one embedding row per level); chained residual pooling averages, as in the
    reference.

    Args:
        channels: image channels C.
        image_size: H = W of the training images; only used to pad odd sizes before mean pooling.
        ngf: base width; stages use ngf and 2·ngf channels (4·ngf in the deeper variants).
        num_classes: number of noise levels L; labels index σ_1 > … > σ_L.
        norm: 'instancenorm++' (the paper's), 'instancenorm', 'variancenorm' or 'none'.
        activation: 'elu' (the paper's), 'relu', 'lrelu' or 'swish'.
        centered_input: data already in [-1, 1]. False (the reference's convention): data in
            [0, 1], remapped to 2x - 1 before the first convolution.
        variant: 'base' (the paper's network), or 'deeper' / 'deepest' for larger images.
    """

    def __init__(
        self,
        *,
        channels: int = 3,
        image_size: int = 32,
        ngf: int = 128,
        num_classes: int = 10,
        norm: str = "instancenorm++",
        activation: str = "elu",
        centered_input: bool = False,
        variant: str = "base",
    ) -> None:
        cond_norm = partial(make_norm, norm, num_classes=num_classes)
        super().__init__(
            channels, image_size, ngf, variant, cond_norm, cond_norm, activation, crp_pool="avg"
        )
        self.num_classes = num_classes
        self.centered_input = centered_input

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """Score estimate at noise level σ_labels.

        x: [B, C, H, W] noisy data; labels: int64 [B] in [0, num_classes).
        Returns [B, C, H, W]: ∇ₓ log p_σ(x) in the coordinates of x (the network is not
        σ-normalised; the scale is learnt per level).
        """
        h = x if self.centered_input else 2 * x - 1
        return self.backbone(h, labels)
