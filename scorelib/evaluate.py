"""Sample-quality evaluation: FID / KID / IS on images, a digits FID, and toy-distribution metrics.

Conventions
- Images for the Inception network are [N, 3, H, W] (or 1-channel, repeated) in [0, 1]; pass
  `value_range=(-1, 1)` to `inception_features` / `image_metrics` for samples in [-1, 1]. They are
  clamped to [0, 1], resized to 299×299 bilinearly and scaled to [-1, 1] as pytorch-fid does.
- Inception weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (its GitHub release), from
  `load_inception(path)`, else the file named by the environment variable `SCORELIB_INCEPTION`,
  else `<torch hub dir>/checkpoints/`; never downloaded here.
- Statistics are numpy float64 (mu [D], sigma [D, D]), cached as .npz with keys `mu`, `sigma`
  (pytorch-fid's format) by `cached_statistics(path, features_fn)`.
- `kid` and `inception_score` return (mean, std): the std of the per-subset / per-split values,
  not a standard error.
- Digits: 8×8 images [N, 1, 8, 8] in [0, 1] (or `value_range`); the classifier is cached in
  `cache_dir` (default $XDG_CACHE_HOME/scorelib or ~/.cache/scorelib).
- Toy metrics take samples [N, ...] flattened to [N, D] and compute in float64.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .analytic import GaussianMixture
from .metrics.digits import (
    DigitsClassifier,
    class_histogram,
    default_cache_dir,
    digits_feature_extractor,
    digits_fid,
    digits_split,
    train_digits_classifier,
)
from .metrics.fid import (
    StreamingStatistics,
    cached_statistics,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
    inception_score,
    kid,
    load_statistics,
    save_statistics,
    to_unit_range,
)
from .metrics.inception import (
    INCEPTION_ENV,
    INCEPTION_FILENAME,
    INCEPTION_URL,
    FIDInceptionV3,
    InceptionWeightsNotFoundError,
    default_inception_path,
    load_inception,
)
from .metrics.toy import mean_log_density, median_bandwidth, mmd_rbf, sliced_wasserstein, toy_metrics, wasserstein_1d

__all__ = [
    "INCEPTION_ENV",
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "DigitsClassifier",
    "FIDInceptionV3",
    "InceptionWeightsNotFoundError",
    "StreamingStatistics",
    "cached_statistics",
    "class_histogram",
    "default_cache_dir",
    "default_inception_path",
    "digits_feature_extractor",
    "digits_fid",
    "digits_split",
    "evaluate_samples",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "inception_score",
    "kid",
    "load_inception",
    "load_statistics",
    "mean_log_density",
    "median_bandwidth",
    "mmd_rbf",
    "save_statistics",
    "sliced_wasserstein",
    "streamed_image_metrics",
    "to_unit_range",
    "toy_metrics",
    "train_digits_classifier",
    "wasserstein_1d",
]


def _inception_metrics(samples: Tensor | Iterable, real: Tensor | Iterable | None, metrics: Sequence[str],
                       value_range: tuple[float, float], real_value_range: tuple[float, float],
                       inception_path: str | os.PathLike | None, stats_path: str | os.PathLike | None,
                       batch_size: int, device: torch.device | str | None,
                       fid_method: Literal["sqrtm", "eigh"]) -> dict[str, float]:
    """FID / KID / IS of image samples with the FID Inception network (see `evaluate_samples`)."""
    model = load_inception(inception_path, device=device or "cpu")
    cache: list[Tensor] = []

    def real_features() -> Tensor:
        if not cache:
            if real is None:
                raise ValueError("FID/KID need real images (`real`) or, for FID alone, a cached statistics file")
            cache.append(inception_features(model, real, real_value_range, batch_size, device)[0])
        return cache[0]

    feats, logits = inception_features(model, samples, value_range, batch_size, device)
    out: dict[str, float] = {}
    if "fid" in metrics:
        ref = cached_statistics(stats_path, real_features) if stats_path else feature_statistics(real_features())
        out["fid"] = frechet_distance(*feature_statistics(feats), *ref, method=fid_method)
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(feats, real_features(), subset_size=min(1000, len(feats)))
    if "is" in metrics:
        out["is"], out["is_std"] = inception_score(logits, splits=min(10, len(logits)))
    return out


def streamed_image_metrics(stats: StreamingStatistics, features: Callable[[], Tensor] | None,
                           logits: Callable[[], Tensor] | None, *, metrics: Sequence[str] = ("fid", "kid", "is"),
                           real: Tensor | Iterable | None = None, real_value_range: tuple[float, float] = (0.0, 1.0),
                           inception_path: str | os.PathLike | None = None,
                           stats_path: str | os.PathLike | None = None, batch_size: int = 50,
                           device: torch.device | str | None = None,
                           fid_method: Literal["sqrtm", "eigh"] = "sqrtm", **_: Any) -> dict[str, float]:
    """FID / KID / IS of samples whose Inception features were computed elsewhere (e.g. per chunk on
    each process of a sharded run): FID from the streamed statistics `stats` of the sample features,
    KID from `features()` [N, 2048] and IS from `logits()` [N, 1008] (called only when those metrics
    are asked for). The reference comes as in `evaluate_samples` (cached at `stats_path`, else from
    `real`); further keyword arguments of `build.evaluation_kwargs` (kind, value_range) are ignored."""
    model: list[FIDInceptionV3] = []
    cache: list[Tensor] = []

    def real_features() -> Tensor:
        if not cache:
            if real is None:
                raise ValueError("FID/KID need real images (`real`) or, for FID alone, a cached statistics file")
            if not model:
                model.append(load_inception(inception_path, device=device or "cpu"))
            cache.append(inception_features(model[0], real, real_value_range, batch_size, device)[0])
        return cache[0]

    out: dict[str, float] = {}
    if "fid" in metrics:
        ref = cached_statistics(stats_path, real_features) if stats_path else feature_statistics(real_features())
        out["fid"] = frechet_distance(*stats.statistics(), *ref, method=fid_method)
    if "kid" in metrics and features is not None:
        feats = features()
        out["kid"], out["kid_std"] = kid(feats, real_features(), subset_size=min(1000, len(feats)))
    if "is" in metrics and logits is not None:
        lg = logits()
        out["is"], out["is_std"] = inception_score(lg, splits=min(10, len(lg)))
    return out


def evaluate_samples(samples: Tensor, kind: Literal["images", "digits", "toy"], *,
                     metrics: Sequence[str] = ("fid", "kid", "is"), value_range: tuple[float, float] = (0.0, 1.0),
                     real: Tensor | Iterable | None = None, real_value_range: tuple[float, float] = (0.0, 1.0),
                     gmm: GaussianMixture | None = None, cache_dir: str | os.PathLike | None = None,
                     inception_path: str | os.PathLike | None = None, stats_path: str | os.PathLike | None = None,
                     batch_size: int = 50, device: torch.device | str | None = None,
                     fid_method: Literal["sqrtm", "eigh"] = "sqrtm") -> dict[str, Any]:
    """The metrics that fit the data kind, as one dict of plain values.

    kind="images": samples [N, C, H, W] in `value_range`; `metrics` ⊆ {"fid", "kid", "is"} with the FID
      Inception (weights from `inception_path` / $SCORELIB_INCEPTION); the real images `real` (tensor or
      batches, in `real_value_range`) give the reference, their statistics cached at `stats_path` if given;
      `fid_method` as in `frechet_distance` ("eigh" is faster at D = 2048, equal to round-off).
    kind="digits": `digits_fid` of samples [N, 1, 8, 8] in `value_range` (classifier cached in
      `cache_dir`); `real` [M, 1, 8, 8] in `real_value_range`, if given, replaces the default reference
      (the 597 digits held out from the classifier's training).
    kind="toy": `toy_metrics` of samples [N, D] against `real` [M, D] (required) and, if given, the
      exact mixture `gmm`.
    """
    if kind == "images":
        return _inception_metrics(samples, real, metrics, value_range, real_value_range, inception_path,
                                  stats_path, batch_size, device, fid_method)
    if kind == "digits":
        ref = None if real is None else to_unit_range(torch.as_tensor(real).float(), real_value_range)
        return digits_fid(samples, cache_dir, value_range, reference=ref)
    if kind == "toy":
        if real is None:
            raise ValueError("toy metrics need real samples (`real`)")
        return toy_metrics(samples, torch.as_tensor(real), gmm)
    raise ValueError(f"kind must be 'images', 'digits' or 'toy', got {kind!r}")
