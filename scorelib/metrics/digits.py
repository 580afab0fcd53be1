"""A "digits FID": FID in the feature space of a small CNN trained on scikit-learn's 8×8 digits.

The data set is `sklearn.datasets.load_digits` (1797 images, 8×8, values 0..16, bundled with
scikit-learn, no download), scaled to [0, 1] by dividing by 16. A fixed shuffle (the legacy
`numpy.random.RandomState(0)` stream, frozen across numpy versions) splits it into the first 1200
images for training and 597 held out. The classifier trains in 2-3 s on two CPU cores, reaches
~98-99% held-out accuracy, and its 64-D penultimate activations are the feature space. SiLU rather
than ReLU keeps every feature alive, so the 64×64 covariances are not rank-deficient.

FID on 597 held-out digits is biased upward by the finite sample, so `digits_fid` also reports the
"floor": the FID between two disjoint halves of the held-out digits, i.e. what a perfect model
would score at that sample size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits as sk_digits
from torch import Tensor, nn

from .fid import extract_features, fid_from_features, to_unit_range

CHECKPOINT_NAME = "digits_cnn_v1.safetensors"  # bump the version when the architecture or training changes
DIGITS_TRAIN = 1200  # of 1797 bundled 8×8 digits; the rest (597) is the held-out split


def read_digits(train: bool = True) -> tuple[Tensor, Tensor]:
    """One split of scikit-learn's bundled 8×8 digits: (images [N, 1, 8, 8] float32 in [0, 1] (0..16 / 16),
    labels [N] int64), N = DIGITS_TRAIN for training, the remaining 597 held out. The split is a fixed
    shuffle (numpy's legacy RandomState(0) stream, frozen across versions); `scorelib.data.load_digits`
    gives the generative models these same images."""
    d = sk_digits()
    perm = np.random.RandomState(0).permutation(len(d.target))
    idx = perm[:DIGITS_TRAIN] if train else perm[DIGITS_TRAIN:]
    images = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0)[:, None]
    return images, torch.from_numpy(d.target[idx].astype(np.int64))


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_x [1200, 1, 8, 8], train_y [1200], test_x [597, 1, 8, 8], test_y [597]); x in [0, 1], y int64."""
    return *read_digits(train=True), *read_digits(train=False)


class DigitsClassifier(nn.Module):
    """CNN for 8×8 digits: conv 16 → pool → conv 32 → pool → 64-D features → 10 logits (SiLU).

    forward(x: [B, 1, 8, 8] in [0, 1]) -> (features [B, 64], logits [B, 10]).
    """

    feature_dim = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.max_pool2d(F.silu(self.conv1(x)), 2)  # [B, 16, 4, 4]
        h = F.max_pool2d(F.silu(self.conv2(h)), 2)  # [B, 32, 2, 2]
        f = F.silu(self.fc1(h.flatten(1)))
        return f, self.fc2(f)


def train_digits_classifier(epochs: int = 30, batch_size: int = 128, lr: float = 5e-3,
                            seed: int = 0) -> DigitsClassifier:
    """Train a DigitsClassifier on the 1200 training digits (Adam, cross-entropy); deterministic per seed.

    The global RNG is left untouched. Returns the model in eval mode without gradients.
    """
    x, y, _, _ = digits_split()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            loss = F.cross_entropy(model(x[idx])[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/scorelib, or ~/.cache/scorelib."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scorelib"


def digits_feature_extractor(cache_dir: str | os.PathLike | None = None,
                             device: torch.device | str = "cpu") -> DigitsClassifier:
    """The digits classifier, trained once and cached as `<cache_dir>/digits_cnn_v1.safetensors`.

    cache_dir defaults to `default_cache_dir()`. A missing or unreadable checkpoint is retrained
    (seconds) and rewritten atomically. Returns the model in eval mode on `device`.
    """
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / CHECKPOINT_NAME
    model = DigitsClassifier()
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
        model = model.eval().requires_grad_(False)
    except Exception:  # missing, truncated or from another architecture: retrain
        model = train_digits_classifier()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    return model.to(device)


def class_histogram(logits: Tensor, n_classes: int = 10) -> tuple[Tensor, float]:
    """Fractions of argmax predictions per class [n_classes] and their entropy in nats (max ln n_classes)."""
    counts = torch.bincount(logits.argmax(1), minlength=n_classes).double()
    p = counts / counts.sum()
    return p, max(0.0, float(-torch.xlogy(p, p).sum()))  # max: no -0.0 for a single class


def digits_fid(samples: Tensor, cache_dir: str | os.PathLike | None = None,
               value_range: tuple[float, float] = (0.0, 1.0), reference: Tensor | None = None,
               batch_size: int = 500) -> dict[str, float | list[float]]:
    """Digits FID of samples [N, 1, 8, 8] (values in `value_range`, mapped to [0, 1] and clamped).

    reference: the real digits [M, 1, 8, 8] in [0, 1] to compare against; by default the 597 digits
    held out from the classifier's training (`digits_split()[2]`). Returns a dict:
      fid              samples vs the reference digits
      fid_floor        two disjoint halves of the reference digits: a perfect model's level at that size
      fid_train        the classifier's 1200 training digits vs the reference (real vs real, larger N)
      accuracy         the classifier's accuracy on its 597 held-out digits
      class_histogram  fraction of samples per predicted class (10 floats)
      class_entropy    entropy of that histogram in nats; ln 10 ≈ 2.303 when all classes are equally present
      n_samples        N
    """
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (1, 8, 8):
        raise ValueError(f"expected samples [N, 1, 8, 8], got shape {tuple(samples.shape)}")
    model = digits_feature_extractor(cache_dir)
    train_x, _, test_x, test_y = digits_split()
    ref = test_x if reference is None else reference.detach().float().cpu()
    if ref.ndim != 4 or tuple(ref.shape[1:]) != (1, 8, 8) or len(ref) < 4:
        raise ValueError(f"expected reference digits [M >= 4, 1, 8, 8], got shape {tuple(ref.shape)}")
    dev = next(model.parameters()).device
    f_s, logits_s = extract_features(model, to_unit_range(samples.detach().float().cpu(), value_range), batch_size, dev)
    f_ref, _ = extract_features(model, ref, batch_size, dev)
    _, logits_te = extract_features(model, test_x, batch_size, dev)
    f_tr, _ = extract_features(model, train_x, batch_size, dev)
    half = len(f_ref) // 2
    hist, entropy = class_histogram(logits_s)
    return {
        "fid": fid_from_features(f_s, f_ref),
        "fid_floor": fid_from_features(f_ref[:half], f_ref[half:]),
        "fid_train": fid_from_features(f_tr, f_ref),
        "accuracy": float((logits_te.argmax(1) == test_y).double().mean()),
        "class_histogram": hist.tolist(),
        "class_entropy": entropy,
        "n_samples": len(samples),
    }
