"""Config -> the typed settings the training loop, the CLI modes and the benchmark read instead of
config fields: `DataSpec`, `TrainSettings`, `SampleSettings`, `EvalSettings`, and the FID reference
and evaluation arguments derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import TOY_NAMES, ImageData, load_cifar10, load_digits, load_image_folder, load_mnist, toy_data, toy_mixture
from ..evaluate import cache_key, inception_weights_path
from .names import DATASETS, DEVICES, GUIDANCE, REFERENCE_SPLITS, TRAINING_TARGETS, ConfigError, choice
from .networks import is_class_conditional, uses_labels

# the preprocessing behind the reference features (evaluate.inception_features): part of the cache key
INCEPTION_PREPROCESSING = "uint8/255 -> [0,1], bilinear 299x299 (align_corners=False), 2x-1; pool3"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """The config's data set (data.*): what to load and how to prepare a batch of it."""

    dataset: str
    root: str
    download: bool
    image_size: int
    channels: int
    crop: int
    toy: str
    random_flip: bool
    uniform_dequantization: bool
    centered: bool
    num_classes: int
    test_fraction: float  # folder: the share held out as the test split (data.in_test_split)

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape: (C,) for the 2-D toys, (C, H, W) for images."""
        return (self.channels,) if self.dataset == "toy" else (self.channels, self.image_size, self.image_size)

    @property
    def value_range(self) -> tuple[float, float]:
        """The model-space range of the data: [-1, 1] when centred, else [0, 1]."""
        return (-1.0, 1.0) if self.centered else (0.0, 1.0)


def data_spec(config: Any) -> DataSpec:
    """The data fields of the config."""
    d = config.data
    return DataSpec(d.dataset, d.root, d.download, d.image_size, d.channels, d.crop, d.toy, d.random_flip,
                    d.uniform_dequantization, d.centered, d.num_classes, d.test_fraction)


def load_dataset(d: DataSpec, train: bool = True) -> ImageData | None:
    """The data set `d`, training or test split (None for the 2-D toys, sampled fresh each step)."""
    if d.dataset == "toy":
        return None
    if d.dataset == "cifar10":
        return load_cifar10(d.root, train, d.download)
    if d.dataset == "mnist":
        data = load_mnist(d.root, train, d.download)
        if d.image_size != 28:
            data.images = nn.functional.interpolate(data.images.float(), size=d.image_size, mode="bilinear",
                                                    antialias=True).round().clamp(0, 255).to(torch.uint8)
        return data
    if d.dataset == "folder":  # a deterministic split by file name, so test images are never trained on
        if not 0 < d.test_fraction < 1:
            raise ConfigError(f"data.test_fraction={d.test_fraction} must be in (0, 1) for data.dataset=folder")
        return load_image_folder(d.root, d.image_size, d.channels, d.crop, "train" if train else "test",
                                 d.test_fraction)
    if d.dataset == "digits":
        return load_digits(train)
    raise ConfigError(f"data.dataset={d.dataset!r} is not one of: {', '.join(DATASETS)}")


def create_dataset(config: Any, train: bool = True) -> ImageData | None:
    """The config's data set, training or test split (see `load_dataset`)."""
    return load_dataset(data_spec(config), train)


def describe_model(config: Any) -> str:
    """The data set and network in a few words, e.g. "toy/gmm8, model mlp"."""
    d = data_spec(config)
    return f"{d.dataset}" + (f"/{d.toy}" if d.dataset == "toy" else "") + f", model {config.model.name}"


# ---------------------------------------------------------------------------------------------
# Training and sampling
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """What the training loop reads (training.*, optim.grad_clip, model.ema_rate, seed, device)."""

    seed: int
    device: str  # auto | cpu | cuda
    threads: int  # CPU threads for torch (0: torch's default)
    batch_size: int  # global, over all processes
    n_iters: int
    log_freq: int
    snapshot_freq: int
    snapshot_samples: int
    keep_checkpoints: int
    amp: bool
    compile: bool
    eval_at_end: bool
    target: str  # model | classifier
    uses_labels: bool
    ema_rate: float
    grad_clip: float  # math.inf: no clipping


def train_settings(config: Any) -> TrainSettings:
    """The training-loop settings of the config."""
    t, clip = config.training, config.optim.grad_clip
    return TrainSettings(config.seed, choice(config.device, DEVICES, "device"), t.threads,
                         t.batch_size, t.n_iters, t.log_freq, t.snapshot_freq, t.snapshot_samples, t.keep_checkpoints,
                         t.amp, t.compile, t.eval_at_end, choice(t.target, TRAINING_TARGETS, "training.target"),
                         uses_labels(config), config.model.ema_rate, clip if clip > 0 else math.inf)


@dataclass(frozen=True)
class SampleSettings:
    """What drawing samples reads besides the sampler itself (sampling.*, classifier.workdir, seed)."""

    seed: int
    method: str
    n_samples: int
    batch_size: int
    checkpoint: str  # "" : the newest checkpoint in WORKDIR/checkpoints
    guidance: str  # none | cfg | classifier
    labelled: bool  # whether the score takes class labels (a conditional model or classifier guidance)
    class_label: int  # -1: uniform random labels
    num_classes: int
    classifier_workdir: str


def sample_settings(config: Any) -> SampleSettings:
    """The sampling settings of the config."""
    s = config.sampling
    guidance = choice(s.guidance, GUIDANCE, "sampling.guidance")
    return SampleSettings(config.seed, s.method, s.n_samples, s.batch_size, s.checkpoint, guidance,
                          is_class_conditional(config) or guidance == "classifier", s.class_label,
                          config.data.num_classes, config.classifier.workdir)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """What `--mode=eval` / `likelihood` read (eval.*, seed) and the discrete VLB's variance."""

    seed: int
    n_samples: int
    batch_size: int
    likelihood: bool
    likelihood_batches: int
    likelihood_rtol: float
    exact_trace: bool
    vlb_variance: str | None  # DDPM models: learned | small | large; None: no discrete VLB
    metrics: tuple[str, ...]  # requested: fid | kid | is (the data kind decides what is computed)
    inception_path: str  # "" : $SCORELIB_INCEPTION or torch hub's checkpoint folder
    stats_path: str  # a reference statistics file; "": statistics of reference_split
    reference_split: str  # train | test
    reference_count: int  # 0: the whole split
    vlb_clip_denoised: bool = False  # x̂₀ clamped to [-1, 1] in the VLB (sampling.clip_denoised, as improved-diffusion)


def eval_settings(config: Any) -> EvalSettings:
    """The evaluation settings of the config."""
    e = config.eval
    vlb = None
    if config.noise.kind == "ddpm":
        vlb = "learned" if config.model.learn_sigma else config.sampling.variance
    return EvalSettings(config.seed, e.n_samples, e.batch_size, e.likelihood, e.likelihood_batches,
                        e.likelihood_rtol, e.exact_trace, vlb, tuple(e.metrics), e.inception_path, e.stats_path,
                        choice(e.reference_split, REFERENCE_SPLITS, "eval.reference_split"), e.reference_count,
                        config.sampling.clip_denoised)


@dataclass(frozen=True)
class FidReference:
    """What the FID/KID reference of an evaluation is (`reference_of`).

    file: eval.stats_path (a reference file, read-only) or "" when the statistics come from the data;
    split / count: the data split and how many of its images (0: all); cache: where the statistics of
    the data are cached (None with a file); description: one line for metrics.json.
    """

    file: str
    split: str
    count: int
    cache: Path | None
    description: str

    @property
    def full(self) -> bool:
        """The reference papers use: a reference file, or every image of the training split."""
        return bool(self.file) or (self.split == "train" and self.count == 0)


def reference_of(d: DataSpec, e: EvalSettings, workdir: Any, split: str | None = None) -> FidReference:
    """The FID/KID reference: eval.stats_path if set, else `split` (default eval.reference_split) of the
    data set, the first eval.reference_count images of it (0: all). The cache file in WORKDIR/eval is
    keyed by everything the statistics depend on (data set, resolved root, split, count, image size /
    crop / channels, the folder split, preprocessing, Inception weights), so a different data.root or
    split never reuses stale statistics."""
    if e.stats_path:
        return FidReference(e.stats_path, "", 0, None, f"file {e.stats_path}")
    split = choice(e.reference_split if split is None else split, REFERENCE_SPLITS, "eval.reference_split")
    if e.reference_count < 0:
        raise ConfigError(f"eval.reference_count={e.reference_count} must be >= 0 (0: the whole split)")
    count = e.reference_count
    weights = inception_weights_path(e.inception_path or None)
    key = cache_key(dataset=d.dataset, root=Path(d.root).expanduser().resolve(), split=split, count=count,
                    image_size=d.image_size, channels=d.channels, crop=d.crop,
                    test_fraction=d.test_fraction if d.dataset == "folder" else "",
                    preprocessing=INCEPTION_PREPROCESSING, weights=weights.name,
                    weights_bytes=weights.stat().st_size if weights.is_file() else -1)
    cache = Path(workdir) / "eval" / f"fid_stats_{d.dataset}_{split}_{key}.npz"
    what = "all" if count == 0 else f"the first {count}"
    return FidReference("", split, count, cache, f"{what} of the {split} split of {d.dataset} at {d.root}")


def fid_reference(config: Any, workdir: Any, split: str | None = None) -> FidReference:
    """The config's FID/KID reference (see `reference_of`)."""
    return reference_of(data_spec(config), eval_settings(config), workdir, split)


def evaluation_arguments(d: DataSpec, e: EvalSettings, workdir: Any, real: Tensor | None, split: str | None = "test",
                         device: torch.device | str | None = None) -> dict[str, Any]:
    """Keyword arguments of `evaluate.evaluate_samples` for the data: the metric kind, value ranges,
    the real reference set (`real`: the `split` as loaded, None: eval.reference_split; the first
    eval.reference_count of it) or the file eval.stats_path, Inception on `device` in batches of
    eval.batch_size, caches inside WORKDIR/eval (see `reference_of`)."""
    cache = Path(workdir) / "eval"
    if d.dataset == "toy":
        choice(d.toy, TOY_NAMES, "data.toy")
        reference = toy_data(d.toy, e.n_samples, torch.Generator().manual_seed(e.seed + 7))
        gmm = toy_mixture(d.toy) if d.toy in ("gmm8", "grid25", "two_modes") else None
        return {"kind": "toy", "real": reference, "gmm": gmm}
    if d.dataset == "digits":
        return {"kind": "digits", "value_range": d.value_range, "real": real, "cache_dir": cache}
    ref = reference_of(d, e, workdir, split)
    if real is not None and ref.count:
        real = real[:ref.count]
    real = None if ref.file else real
    real_range = (0.0, 255.0) if real is not None and real.dtype == torch.uint8 else (0.0, 1.0)  # scaled per batch
    out = {"kind": "images", "metrics": tuple(e.metrics), "value_range": d.value_range, "real": real,
           "real_value_range": real_range, "inception_path": e.inception_path or None, "stats_path": ref.cache,
           "reference_path": ref.file or None, "batch_size": e.batch_size}
    if device is not None:
        out["device"] = device
    return out


def evaluation_kwargs(config: Any, workdir: Any, real: Tensor | None, split: str | None = "test",
                      device: torch.device | str | None = None) -> dict[str, Any]:
    """The config's `evaluation_arguments`."""
    return evaluation_arguments(data_spec(config), eval_settings(config), workdir, real, split, device)
