"""Feature-space sample-quality metrics: Fréchet distance (FID), KID, Inception Score.

- FID (Heusel et al. 2017, eq. 6): d² = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁Σ₂)^{1/2}) between Gaussians
  fitted to two feature sets; computed in float64 with scipy.linalg.sqrtm as pytorch-fid does.
- KID (Bińkowski et al. 2018, §3 and App. D): the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³, averaged over random subsets; returns (mean, std over subsets).
- IS (Salimans et al. 2016, §4): exp(E_x KL(p(y|x) ‖ p(y))), over `splits` chunks; (mean, std); p(y|x)
  the softmax of the Inception's unbiased logits (see metrics/inception.py).

Statistics are numpy float64 (`mu` [D], `sigma` [D, D]). Reference files in the formats people have
(`statistics_format`: pytorch-fid's mu/sigma, score_sde's pool_3 features, ADM's reference batches) are
read by `read_statistics`; caches are written in pytorch-fid's format (`save_statistics`), so
pytorch-fid reads them too. `fid_protocol` says whether a FID can stand beside a published one.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

ArrayLike = Tensor | np.ndarray


def _np64(x: ArrayLike) -> np.ndarray:
    """A float64 numpy array of a tensor (any device) or array."""
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def _as_f64(x: ArrayLike) -> np.ndarray:
    """A float64 numpy array, [N, ...] flattened to [N, D]."""
    a = _np64(x)
    return a.reshape(a.shape[0], -1) if a.ndim != 2 else a


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}) for symmetric PSD Σ₁, Σ₂ (the product is similar to
    that PSD matrix); negative round-off eigenvalues are clipped to 0."""
    w, v = scipy.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(scipy.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = 1e-6, method: Literal["sqrtm", "eigh"] = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mu: [D], sigma: [D, D].

    Float64 throughout. With method="sqrtm" (the default, pytorch-fid's computation), (Σ₁Σ₂)^{1/2}
    comes from scipy.linalg.sqrtm; as in pytorch-fid (after D. Sutherland): if it is not finite (a
    singular product), `eps`·I is added to both covariances and the root recomputed; a complex result
    whose diagonal has an imaginary part above 1e-3 raises ValueError, a smaller one is numerical
    noise and is dropped (real part kept). method="eigh" takes the trace from two symmetric
    eigendecompositions instead: the same value to round-off for PSD covariances, several times
    faster at D = 2048, and never complex.
    """
    m1, m2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.shape[0], m1.shape[0]):
        raise ValueError(f"shape mismatch: mu {m1.shape} vs {m2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = m1 - m2
    if method == "eigh":
        return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product_eigh(s1, s2))
    if method != "sqrtm":
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(s1.shape[0])
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(Σ₁Σ₂) has an imaginary component of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, ddof=1) of features [N, D], numpy float64."""
    f = _as_f64(features)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def fid_from_features(features1: ArrayLike, features2: ArrayLike, method: Literal["sqrtm", "eigh"] = "sqrtm") -> float:
    """Fréchet distance between Gaussians fitted to features1 [N, D] and features2 [M, D]."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), method=method)


FID_REFERENCE_SAMPLES = 50_000  # samples behind a published FID (Heusel et al. 2017; score_sde, ADM, EDM)
STATS_FORMATS = ("pytorch-fid", "score_sde", "adm")


@dataclass(frozen=True)
class ReferenceStatistics:
    """FID reference statistics and where they came from.

    mu [D], sigma [D, D] (float64); features [N, D] when the source holds per-image features (KID needs
    them), else None; count: the number of images behind (mu, sigma) when known; format: one of
    STATS_FORMATS, or "features" for statistics computed here.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    count: int | None = None
    format: str = "features"


def reference_from_features(features: ArrayLike) -> ReferenceStatistics:
    """`ReferenceStatistics` of features [N, D]: their mean, covariance and the features themselves."""
    f = _as_f64(features)
    mu, sigma = feature_statistics(f)
    return ReferenceStatistics(mu, sigma, f, f.shape[0], "features")


def _npz_headers(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the arrays in an .npz, read from the .npy headers only (no data)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if not name.endswith(".npy"):
                continue
            with z.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
            out[name[:-4]] = (shape, dtype)
    return out


def statistics_format(path: str | os.PathLike) -> str:
    """Which reference-statistics format the .npz at `path` is, from its keys and array shapes alone:

    - "pytorch-fid": `mu` [D], `sigma` [D, D] (pytorch-fid's fid_score.py `save_fid_stats` / its precomputed
      files; also this library's cache);
    - "score_sde": `pool_3` [N, D], the Inception pool_3 features of the data set (score_sde_pytorch's
      run_lib.py `fid_stats` writes `cifar10_stats.npz` so, evaluation.py `load_dataset_stats` reads it);
    - "adm": `arr_0` [N, H, W, 3] uint8 images, with or without `mu`/`sigma` (guided-diffusion's
      evaluations/evaluator.py reference batches `VIRTUAL_*.npz`; `read_statistics` prefers mu/sigma).

    Raises ValueError naming the file when it is missing, not an .npz, or matches no format.
    """
    try:
        heads = _npz_headers(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read reference statistics {path}: {err}") from err

    def ndim(key: str) -> int:
        return len(heads[key][0]) if key in heads else -1

    has_stats = ndim("mu") == 1 and ndim("sigma") == 2 and heads["sigma"][0] == (heads["mu"][0][0],) * 2
    if "mu" in heads or "sigma" in heads:
        if not has_stats:
            shapes = {k: heads[k][0] for k in ("mu", "sigma") if k in heads}
            raise ValueError(f"{path}: mu and sigma must be [D] and [D, D], got {shapes}")
    if "arr_0" in heads:
        if ndim("arr_0") != 4 or heads["arr_0"][0][3] != 3:
            raise ValueError(f"{path}: arr_0 must be ADM reference images [N, H, W, 3], got {heads['arr_0'][0]}")
        return "adm"
    if has_stats:
        return "pytorch-fid"
    if "pool_3" in heads:
        if ndim("pool_3") != 2 or heads["pool_3"][0][0] < 2:
            raise ValueError(f"{path}: pool_3 must be features [N, D] with N >= 2, got {heads['pool_3'][0]}")
        return "score_sde"
    raise ValueError(f"{path} is not a reference statistics file: keys {sorted(heads)}; expected mu/sigma "
                     "(pytorch-fid), pool_3 (score_sde) or arr_0 (ADM reference batch)")


def read_statistics(path: str | os.PathLike,
                    image_features: Callable[[Tensor], ArrayLike] | None = None) -> ReferenceStatistics:
    """The reference statistics in `path`, any of the formats of `statistics_format`.

    mu/sigma are used as stored (pytorch-fid; ADM batches that carry them, as ADM's evaluator does);
    score_sde's `pool_3` features give their mean and covariance (ddof = 1, as np.cov) and are kept for
    KID (score_sde's `cifar10_stats.npz` holds the 50,000 training images' features); an ADM batch with
    images only needs `image_features(images)`: images uint8 [N, 3, H, W] in 0..255 -> features [N, D].
    ValueError naming the file for anything unusable.
    """
    fmt = statistics_format(path)
    with np.load(path, allow_pickle=False) as f:
        if fmt == "score_sde":
            ref = reference_from_features(f["pool_3"])
            return ReferenceStatistics(ref.mu, ref.sigma, ref.features, ref.count, fmt)
        if "mu" in f:
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
            count = None
        else:  # an ADM batch of images only: NHWC uint8 -> NCHW
            if image_features is None:
                raise ValueError(f"{path} holds images only (arr_0): computing its statistics needs the Inception")
            images = torch.from_numpy(np.ascontiguousarray(f["arr_0"])).permute(0, 3, 1, 2)
            ref = reference_from_features(image_features(images))
            return ReferenceStatistics(ref.mu, ref.sigma, ref.features, ref.count, fmt)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu or sigma is not finite")
    return ReferenceStatistics(mu, sigma, None, count, fmt)


def check_statistics(path: str | os.PathLike) -> str:
    """The format of the reference file at `path` (`statistics_format`) after checking it can be used:
    stored mu/sigma are read in full and must be finite; features and images are checked by shape only
    (their data is read when the statistics are needed). ValueError naming the file otherwise."""
    fmt = statistics_format(path)
    if "mu" in _npz_headers(path):
        try:
            read_statistics(path)
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read reference statistics {path}: {err}") from err
    return fmt


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) from a reference file whose statistics need no network (pytorch-fid's
    mu/sigma, score_sde's pool_3, an ADM batch with mu/sigma); ValueError naming the file if unusable."""
    ref = read_statistics(path)
    return ref.mu, ref.sigma


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray,
                    features: np.ndarray | None = None, count: int | None = None) -> None:
    """Write (mu, sigma) in pytorch-fid's format (.npz, keys `mu`, `sigma`) atomically: a temporary file,
    then a rename. `features` [N, D], if given, go beside them as float32 under score_sde's key `pool_3`,
    and `count` (the number of images behind the statistics) under `count`; pytorch-fid reads only mu
    and sigma, so the file stays a valid pytorch-fid file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    extra = {} if features is None else {"pool_3": np.asarray(features, np.float32)}
    if count is not None:
        extra["count"] = np.asarray(count, np.int64)
    with open(tmp, "wb") as fh:
        np.savez(fh, mu=mu, sigma=sigma, **extra)
    os.replace(tmp, path)


def _read_cache(path: str | os.PathLike) -> ReferenceStatistics:
    """A statistics cache written by `save_statistics`: mu/sigma and, if stored, the pool_3 features."""
    ref = read_statistics(path)
    if ref.format != "pytorch-fid":
        raise ValueError(f"{path} is not a statistics cache")
    with np.load(path, allow_pickle=False) as f:
        feats = np.asarray(f["pool_3"], np.float64) if "pool_3" in f else None
        count = int(f["count"]) if "count" in f else None if feats is None else len(feats)
    return ReferenceStatistics(ref.mu, ref.sigma, feats, count, "features")


def cache_ready(path: str | os.PathLike | None, keep_features: bool = False) -> bool:
    """Whether `cached_reference(path, ..., keep_features)` would read the cache rather than compute
    (checked from the .npy headers alone)."""
    if path is None:
        return False
    try:
        return statistics_format(path) == "pytorch-fid" and (not keep_features or "pool_3" in _npz_headers(path))
    except (OSError, ValueError):
        return False


def cached_reference(cache_path: str | os.PathLike, features_fn: Callable[[], ArrayLike],
                     keep_features: bool = False) -> ReferenceStatistics:
    """Reference statistics from the cache `cache_path`, or computed from `features_fn()` [N, D] and cached.

    With `keep_features` (KID needs them) a cache without features counts as missing, and the features
    are stored with the statistics. A missing, truncated or otherwise unreadable cache is recomputed and
    overwritten. The caller keys `cache_path` by what the features were computed from.
    """
    try:
        ref = _read_cache(cache_path)
        if ref.features is not None or not keep_features:
            return ref
    except ValueError:
        pass
    ref = reference_from_features(features_fn())
    save_statistics(cache_path, ref.mu, ref.sigma, ref.features if keep_features else None, ref.count)
    return ref if keep_features else ReferenceStatistics(ref.mu, ref.sigma, None, ref.count, ref.format)


def cached_statistics(cache_path: str | os.PathLike,
                      features_fn: Callable[[], ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """Reference (mu, sigma) from `cache_path` (.npz), or computed from `features_fn()` [N, D] and cached.

    A missing, truncated or otherwise unreadable cache is recomputed and overwritten.
    """
    ref = cached_reference(cache_path, features_fn)
    return ref.mu, ref.sigma


def cache_key(**fields: object) -> str:
    """A short stable hash of what reference statistics were computed from (data set, root, split, count,
    preprocessing, ...): part of the cache file name, so different inputs never share a cache."""
    text = json.dumps({k: str(v) for k, v in sorted(fields.items())}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def fid_protocol(n_samples: int, reference: str, reference_count: int | None, full_reference: bool) -> dict:
    """What a FID was computed from and whether it can stand beside a published one.

    Published FIDs (DDPM, NCSNv2, score_sde, ADM, EDM) use 50,000 samples against the statistics of the
    full training set (or the authors' reference file). `full_reference`: the reference is that (a whole
    training split, or a reference file); a smaller sample count or reference is labelled not comparable:
    FID is biased upwards at small N (Bińkowski et al. 2018, §3), so such numbers only compare among
    themselves.
    """
    problems = []
    if n_samples < FID_REFERENCE_SAMPLES:
        problems.append(f"{n_samples} samples (published FIDs use {FID_REFERENCE_SAMPLES})")
    if not full_reference:
        problems.append(f"reference {reference} is not the full training split or a reference file")
    out = {"fid_samples": n_samples, "fid_reference": reference, "fid_reference_count": reference_count,
           "fid_comparable": not problems}
    if problems:
        out["fid_note"] = "not comparable with published FIDs: " + "; ".join(problems)
    return out


def _mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of x [m, d] and y [m, d] under k(a, b) = (aᵀb/d + 1)³ (Bińkowski et al. 2018, eq. 2)."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        t = a @ b.T / d + 1
        return t * t * t  # much faster than t ** 3, which calls pow() per element

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())


def kid(features1: ArrayLike, features2: ArrayLike, n_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance of features1 [N, D] and features2 [M, D]: (mean, std) of MMD² over subsets.

    Each of `n_subsets` draws `subset_size` rows of each set without replacement (capped at min(N, M))
    and takes the unbiased polynomial-kernel MMD²; the estimate is unbiased, so it can be slightly
    negative. The second value is the standard deviation of the subset estimates (as in Bińkowski
    et al.'s code and torch-fidelity), not the standard error of the mean (that is std / √n_subsets).
    """
    f1, f2 = _as_f64(features1), _as_f64(features2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    vals = np.array([
        _mmd2_unbiased_poly(f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)])
        for _ in range(n_subsets)
    ])
    return float(vals.mean()), float(vals.std())


def inception_score(logits: ArrayLike, splits: int = 10, from_probs: bool = False,
                    shuffle_seed: int | None = None) -> tuple[float, float]:
    """Inception Score of class logits [N, K] (or probabilities with `from_probs=True`): (mean, std over splits).

    The N rows are cut into `splits` contiguous chunks as in Salimans et al.'s code; each chunk gives
    exp(mean_x KL(p(y|x) ‖ p̂(y))) with p̂(y) the chunk's mean prediction. Float64. Ranges from 1
    (every prediction the same) to K (confident and balanced). With `shuffle_seed` the rows are first
    permuted by numpy's RandomState(shuffle_seed).permutation(N), as torch-fidelity's metric_isc.py
    `isc_features_to_metric` does (its default seed is 2020): its numbers, draw for draw.
    For the Inception network's score pass the unbiased logits that `inception_features` returns.
    """
    t = torch.as_tensor(logits).detach().cpu().double()
    if t.ndim != 2:
        raise ValueError(f"expected [N, K] logits or probabilities, got shape {tuple(t.shape)}")
    if shuffle_seed is not None:
        t = t[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(t.shape[0]))]
    p = t / t.sum(1, keepdim=True) if from_probs else torch.softmax(t, dim=1)
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in 1..{n}, got {splits}")
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(0, keepdim=True)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, py)).sum(1)  # 0·log 0 = 0
        scores.append(kl.mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))  # population std, as np.std in the IS code


def _batches(data: Tensor | Iterable, batch_size: int) -> Iterable[Tensor]:
    """Image batches from a tensor [N, ...] (cut into `batch_size` chunks) or an iterable of batches.

    From an iterable of (x, y, ...) tuples or lists (a DataLoader over a labelled data set), x is used.
    """
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    for b in data:
        yield b[0] if isinstance(b, tuple | list) else b


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(model: nn.Module, data: Tensor | Iterable, batch_size: int = 50,
                     device: torch.device | str | None = None,
                     transform: Callable[[Tensor], Tensor] | None = None) -> Tensor | tuple[Tensor, ...]:
    """Run `model` over image batches without gradients; outputs concatenated on the CPU.

    data: a tensor [N, ...] (split into `batch_size` chunks) or any iterable of batches (or of
    (x, y) pairs). Each batch goes to `device` (default: the model's), through `transform` if given,
    then `model`. A model returning a tuple gives a tuple of [N, ...] tensors, else one [N, ...].
    The model's train/eval mode is left as it is: pass it in eval mode.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    outs: list[tuple[Tensor, ...]] = []
    single = True
    for x in _batches(data, batch_size):
        x = x.to(dev, non_blocking=True)
        if transform is not None:
            x = transform(x)
        y = model(x)
        single = isinstance(y, Tensor)
        outs.append(tuple(t.cpu() for t in ((y,) if single else y)))
    if not outs:
        raise ValueError("no batches to extract features from")
    cat = tuple(torch.cat(parts) for parts in zip(*outs, strict=True))
    return cat[0] if single else cat


def to_unit_range(x: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Map images from `value_range` (e.g. (-1, 1)) to [0, 1] and clamp, as saving to PNG would."""
    lo, hi = value_range
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def inception_features(model: nn.Module, data: Tensor | Iterable, value_range: tuple[float, float] = (0.0, 1.0),
                       batch_size: int = 50, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Pool3 features [N, 2048] and logits [N, 1008] of images [N, 3 or 1, H, W] in `value_range`.

    model: a `FIDInceptionV3` (from `load_inception`). Images are mapped to [0, 1] and clamped
    (uint8 images: value_range=(0, 255)), then resized to 299×299 and scaled to [-1, 1] by the network.
    """
    feats, logits = extract_features(model, data, batch_size, device, lambda x: to_unit_range(x.float(), value_range))
    return feats, logits
