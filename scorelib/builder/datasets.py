"""The data-set table: what data.dataset may name, the shapes it gives, and how the data.* record is
loaded through the readers of `scorelib.data`; `DataShape`, the properties the data.* record derives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import ImageData, load_cifar10, load_digits, load_image_folder, load_mnist


def _mnist(d: Any, train: bool) -> ImageData:
    data = load_mnist(d.root, train, d.download)
    if d.image_size != 28:
        data.images = nn.functional.interpolate(data.images.float(), size=d.image_size, mode="bilinear",
                                                antialias=True).round().clamp(0, 255).to(torch.uint8)
    return data


def _folder(d: Any, train: bool) -> ImageData:
    # a deterministic split by file name, so test images are never trained on
    return load_image_folder(d.root, d.image_size, d.channels, d.crop, "train" if train else "test", d.test_fraction)


@dataclass(frozen=True)
class DataSet:
    """One data.dataset: `load(d, train)` reads the training or test split for the data.* record `d`
    (None for the 2-D toys, drawn fresh each step); the image size it gives (None: any) and channel counts."""

    load: Callable[[Any, bool], ImageData | None]
    image_size: int | None
    channels: tuple[int, ...]


DATASETS: dict[str, DataSet] = {
    "cifar10": DataSet(lambda d, train: load_cifar10(d.root, train, d.download), 32, (3,)),
    "mnist": DataSet(_mnist, None, (1,)),
    "folder": DataSet(_folder, None, (1, 3)),
    "digits": DataSet(lambda d, train: load_digits(train), 8, (1,)),
    "toy": DataSet(lambda d, train: None, None, (2,)),
}


def load_dataset(d: Any, train: bool = True) -> ImageData | None:
    """The data set of the data.* record `d`, training or test split (None for the 2-D toys)."""
    return DATASETS[d.dataset].load(d, train)


class DataShape:
    """What the data.* record derives: one example's shape and the model-space range of the data."""

    dataset: str
    channels: int
    image_size: int
    centered: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """(C,) for the 2-D toys, (C, H, W) for images."""
        return (self.channels,) if self.dataset == "toy" else (self.channels, self.image_size, self.image_size)

    @property
    def value_range(self) -> tuple[float, float]:
        """[-1, 1] when centred, else [0, 1]."""
        return (-1.0, 1.0) if self.centered else (0.0, 1.0)

