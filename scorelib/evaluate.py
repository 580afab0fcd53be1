"""Sample-quality evaluation: FID / KID / IS on images, a digits FID, and toy-distribution metrics.

Conventions
- Images for the Inception network are [N, 3, H, W] (or 1-channel, repeated) in [0, 1]; pass
  `value_range=(-1, 1)` to `inception_features` / `image_metrics` for samples in [-1, 1]. They are
  clamped to [0, 1], resized to 299×299 bilinearly and scaled to [-1, 1] as pytorch-fid does.
- Inception weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (its GitHub release), from
  `load_inception(path)`, else the file named by the environment variable `SCORELIB_INCEPTION`,
  else `<torch hub dir>/checkpoints/`; never downloaded here.
- Statistics are numpy float64 (mu [D], sigma [D, D]), cached as .npz with keys `mu`, `sigma`
  (pytorch-fid's format) by `cached_reference` / `cached_statistics`. Reference files are read in
  pytorch-fid's (mu, sigma), score_sde's (pool_3 features) and ADM's (`VIRTUAL_*.npz`: arr_0 images,
  mu/sigma) formats by `read_statistics`; `statistics_format` tells which without reading the data.
- Inception Score: softmax of the unbiased logits pool3·Wᵀ (no fc bias) over all 1008 classes, 10 splits.
- A FID is comparable with published ones at 50,000 samples against the full training split (or the
  authors' reference file): `fid_protocol` says so, or why not.
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
    FID_REFERENCE_SAMPLES,
    STATS_FORMATS,
    ReferenceStatistics,
    StreamingStatistics,
    cache_key,
    cache_ready,
    cached_reference,
    cached_statistics,
    check_statistics,
    extract_features,
    feature_statistics,
    fid_from_features,
    fid_protocol,
    frechet_distance,
    inception_features,
    inception_score,
    kid,
    load_statistics,
    read_statistics,
    reference_from_features,
    save_statistics,
    statistics_format,
    to_unit_range,
)
from .metrics.inception import (
    INCEPTION_ENV,
    INCEPTION_FILENAME,
    INCEPTION_URL,
    FIDInceptionV3,
    InceptionWeightsNotFoundError,
    default_inception_path,
    inception_weights_path,
    load_inception,
)
from .metrics.toy import mean_log_density, median_bandwidth, mmd_rbf, sliced_wasserstein, toy_metrics, wasserstein_1d

# how `inception_features` preprocesses images: part of the key of cached reference statistics
INCEPTION_PREPROCESSING = "uint8/255 -> [0,1], bilinear 299x299 (align_corners=False), 2x-1; pool3"
INCEPTION_METRICS = ("fid", "kid", "is")  # the metrics computed on Inception features

__all__ = [
    "FID_REFERENCE_SAMPLES",
    "INCEPTION_ENV",
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "STATS_FORMATS",
    "DigitsClassifier",
    "FIDInceptionV3",
    "InceptionWeightsNotFoundError",
    "ReferenceStatistics",
    "StreamingStatistics",
    "cache_key",
    "cache_ready",
    "cached_reference",
    "cached_statistics",
    "check_statistics",
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
    "fid_protocol",
    "frechet_distance",
    "inception_features",
    "inception_score",
    "inception_weights_path",
    "kid",
    "load_inception",
    "load_statistics",
    "mean_log_density",
    "median_bandwidth",
    "mmd_rbf",
    "read_statistics",
    "reference_from_features",
    "save_statistics",
    "sliced_wasserstein",
    "statistics_format",
    "streamed_image_metrics",
    "to_unit_range",
    "toy_metrics",
    "train_digits_classifier",
    "wasserstein_1d",
]


def _inception_metrics(samples: Tensor | Iterable, real: Tensor | Iterable | None, metrics: Sequence[str],
                       value_range: tuple[float, float], real_value_range: tuple[float, float],
                       inception_path: str | os.PathLike | None, stats_path: str | os.PathLike | None,
                       reference_path: str | os.PathLike | None, batch_size: int, device: torch.device | str | None,
                       fid_method: Literal["sqrtm", "eigh"]) -> dict[str, Any]:
    """FID / KID / IS of image samples with the FID Inception network (see `evaluate_samples`)."""
    model = load_inception(inception_path, device=device or "cpu")
    feats, logits = inception_features(model, samples, value_range, batch_size, device)
    return _metrics_of_features(lambda: feature_statistics(feats), lambda: feats, lambda: logits, lambda: model, real,
                                metrics, real_value_range, stats_path, reference_path, batch_size, device, fid_method)


def _metrics_of_features(sample_stats: Callable[[], tuple[Any, Any]], features: Callable[[], Tensor],
                         logits: Callable[[], Tensor], model: Callable[[], FIDInceptionV3],
                         real: Tensor | Iterable | None, metrics: Sequence[str], real_value_range: tuple[float, float],
                         stats_path: str | os.PathLike | None, reference_path: str | os.PathLike | None,
                         batch_size: int, device: torch.device | str | None,
                         fid_method: Literal["sqrtm", "eigh"]) -> dict[str, Any]:
    """FID / KID / IS from the samples' (mu, sigma), features [N, 2048] and logits [N, 1008], each asked
    for only when a metric needs it; `model()` gives the Inception for the reference's images."""
    out: dict[str, Any] = {}
    if "fid" in metrics or "kid" in metrics:
        if reference_path:  # a reference file; an ADM batch of images only goes through the same network
            ref = read_statistics(reference_path,
                                  lambda imgs: inception_features(model(), imgs, (0.0, 255.0), batch_size, device)[0])
        else:
            def real_features() -> Tensor:
                if real is None:
                    raise ValueError("FID/KID need real images (`real`), a reference file (`reference_path`) or, "
                                     "for FID alone, a cached statistics file (`stats_path`)")
                return inception_features(model(), real, real_value_range, batch_size, device)[0]

            keep = "kid" in metrics
            ref = cached_reference(stats_path, real_features, keep) if stats_path else \
                reference_from_features(real_features())
        out["fid_reference_format"] = ref.format
        if ref.count is not None:
            out["fid_reference_count"] = ref.count
        if "fid" in metrics:
            out["fid"] = frechet_distance(*sample_stats(), ref.mu, ref.sigma, method=fid_method)
        if "kid" in metrics:
            if ref.features is None:
                out["kid_note"] = f"not computed: the {ref.format} reference holds statistics, not features"
            else:
                feats = features()
                out["kid"], out["kid_std"] = kid(feats, ref.features, subset_size=min(1000, len(feats)))
    if "is" in metrics:  # 10 contiguous splits, as Salimans et al.'s code (improved-gan inception_score/model.py)
        lg = logits()
        out["is"], out["is_std"] = inception_score(lg, splits=min(10, len(lg)))
    return out


def streamed_image_metrics(stats: StreamingStatistics, features: Callable[[], Tensor], logits: Callable[[], Tensor],
                           *, metrics: Sequence[str] = ("fid", "kid", "is"), real: Tensor | Iterable | None = None,
                           real_value_range: tuple[float, float] = (0.0, 1.0),
                           inception_path: str | os.PathLike | None = None,
                           stats_path: str | os.PathLike | None = None,
                           reference_path: str | os.PathLike | None = None, batch_size: int = 50,
                           device: torch.device | str | None = None,
                           fid_method: Literal["sqrtm", "eigh"] = "sqrtm", **_: Any) -> dict[str, Any]:
    """`evaluate_samples(kind="images")` for samples whose Inception features were computed elsewhere (per
    chunk on each process of a sharded run): the FID from the streamed statistics `stats` of the sample
    features, KID from `features()` [N, 2048] and IS from `logits()` [N, 1008] (called only when those
    metrics are asked for); the reference as in `evaluate_samples`. Further keyword arguments of
    `build.evaluation_kwargs` (kind, value_range) are ignored."""
    loaded: list[FIDInceptionV3] = []

    def model() -> FIDInceptionV3:
        if not loaded:
            loaded.append(load_inception(inception_path, device=device or "cpu"))
        return loaded[0]

    return _metrics_of_features(stats.statistics, features, logits, model, real, metrics, real_value_range,
                                stats_path, reference_path, batch_size, device, fid_method)


def evaluate_samples(samples: Tensor, kind: Literal["images", "digits", "toy"], *,
                     metrics: Sequence[str] = ("fid", "kid", "is"), value_range: tuple[float, float] = (0.0, 1.0),
                     real: Tensor | Iterable | None = None, real_value_range: tuple[float, float] = (0.0, 1.0),
                     gmm: GaussianMixture | None = None, cache_dir: str | os.PathLike | None = None,
                     inception_path: str | os.PathLike | None = None, stats_path: str | os.PathLike | None = None,
                     reference_path: str | os.PathLike | None = None, batch_size: int = 50,
                     device: torch.device | str | None = None,
                     fid_method: Literal["sqrtm", "eigh"] = "sqrtm") -> dict[str, Any]:
    """The metrics that fit the data kind, as one dict of plain values.

    kind="images": samples [N, C, H, W] in `value_range`; `metrics` ⊆ {"fid", "kid", "is"} with the FID
      Inception (weights from `inception_path` / $SCORELIB_INCEPTION) run on `device` in batches of
      `batch_size`. The FID/KID reference is the file `reference_path` if given (any format of
      `read_statistics`: pytorch-fid, score_sde, ADM; KID only where it holds features), else the real
      images `real` (tensor or batches, in `real_value_range`), their statistics (and, for KID, features)
      cached at `stats_path` if given (key that path by what `real` is). `fid_method` as in
      `frechet_distance` ("eigh" is faster at D = 2048, equal to round-off). The result also says
      `fid_reference_format` and, when known, `fid_reference_count`.
    kind="digits": `digits_fid` of samples [N, 1, 8, 8] in `value_range` (classifier cached in
      `cache_dir`); `real` [M, 1, 8, 8] in `real_value_range`, if given, replaces the default reference
      (the 597 digits held out from the classifier's training).
    kind="toy": `toy_metrics` of samples [N, D] against `real` [M, D] (required) and, if given, the
      exact mixture `gmm`.
    """
    if kind == "images":
        return _inception_metrics(samples, real, metrics, value_range, real_value_range, inception_path,
                                  stats_path, reference_path, batch_size, device, fid_method)
    if kind == "digits":
        ref = None if real is None else to_unit_range(torch.as_tensor(real).float(), real_value_range)
        return digits_fid(samples, cache_dir, value_range, reference=ref)
    if kind == "toy":
        if real is None:
            raise ValueError("toy metrics need real samples (`real`)")
        return toy_metrics(samples, torch.as_tensor(real), gmm)
    raise ValueError(f"kind must be 'images', 'digits' or 'toy', got {kind!r}")
