"""Feature-space sample-quality metrics: Fréchet distance (FID), KID, Inception Score.

- FID (Heusel et al. 2017, eq. 6): d² = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁Σ₂)^{1/2}) between Gaussians
  fitted to two feature sets; computed in float64 with scipy.linalg.sqrtm as pytorch-fid does.
- KID (Bińkowski et al. 2018, §3 and App. D): the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³, averaged over random subsets; returns (mean, std over subsets).
- IS (Salimans et al. 2016, §4): exp(E_x KL(p(y|x) ‖ p(y))), over `splits` chunks; (mean, std).

Statistics are numpy float64 (`mu` [D], `sigma` [D, D]); `.npz` caches use pytorch-fid's key
names `mu` and `sigma`, so its precomputed statistics files load too.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable
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


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) from an .npz with keys `mu`, `sigma`; ValueError naming the file if unusable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read feature statistics from {path}: {err}") from err
    d = mu.shape[0] if mu.ndim == 1 else -1
    if sigma.shape != (d, d) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not finite [D] and [D, D]")
    return mu, sigma


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write (mu, sigma) to an .npz (keys `mu`, `sigma`) atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, mu=mu, sigma=sigma)
    os.replace(tmp, path)


def cached_statistics(cache_path: str | os.PathLike,
                      features_fn: Callable[[], ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """Reference (mu, sigma) from `cache_path` (.npz), or computed from `features_fn()` [N, D] and cached.

    A missing, truncated or otherwise unreadable cache is recomputed and overwritten.
    """
    try:
        return load_statistics(cache_path)
    except ValueError:
        pass
    mu, sigma = feature_statistics(features_fn())
    save_statistics(cache_path, mu, sigma)
    return mu, sigma


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


def inception_score(logits: ArrayLike, splits: int = 10, from_probs: bool = False) -> tuple[float, float]:
    """Inception Score of class logits [N, K] (or probabilities with `from_probs=True`): (mean, std over splits).

    The N rows are cut into `splits` contiguous chunks as in Salimans et al.'s code; each chunk gives
    exp(mean_x KL(p(y|x) ‖ p̂(y))) with p̂(y) the chunk's mean prediction. Float64. Ranges from 1
    (every prediction the same) to K (confident and balanced).
    """
    t = torch.as_tensor(logits).detach().cpu().double()
    if t.ndim != 2:
        raise ValueError(f"expected [N, K] logits or probabilities, got shape {tuple(t.shape)}")
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


class StreamingStatistics:
    """FID statistics of features that arrive in batches: running float64 sums Σx [D], Σxxᵀ [D, D] and
    the count n, so no more than one batch of features is ever held. Sums of several accumulators
    (processes, chunks) add up (`merge`, or `tensors` / `from_tensors` for torch.distributed.all_reduce);
    `statistics()` gives the mean [D] and the unbiased covariance [D, D] that `feature_statistics` gives
    for all the features at once: μ = Σx / n, Σ = (Σxxᵀ - n μμᵀ) / (n - 1)."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: ArrayLike) -> StreamingStatistics:
        """Add features [B, D] (any float dtype, tensor or array; [B, ...] is flattened)."""
        f = _as_f64(features)
        if f.shape[1] != self.sum.shape[0]:
            raise ValueError(f"features have dimension {f.shape[1]}, the accumulator {self.sum.shape[0]}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        return self

    def merge(self, other: StreamingStatistics) -> StreamingStatistics:
        """Add another accumulator's sums into this one."""
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        return self

    def tensors(self) -> list[Tensor]:
        """[n (float64 scalar), Σx, Σxxᵀ] as float64 tensors, e.g. to all_reduce over processes."""
        return [torch.tensor(float(self.n), dtype=torch.float64), torch.from_numpy(self.sum.copy()),
                torch.from_numpy(self.outer.copy())]

    @classmethod
    def from_tensors(cls, tensors: list[Tensor]) -> StreamingStatistics:
        """The accumulator with the sums of `tensors()` (e.g. after an all_reduce)."""
        n, s, o = (t.detach().cpu().double() for t in tensors)
        out = cls(s.shape[0])
        out.n, out.sum, out.outer = round(float(n)), s.numpy().copy(), o.numpy().copy()
        return out

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and unbiased covariance [D, D] (ddof=1), numpy float64."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2
