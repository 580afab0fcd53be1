"""Data sets as plain readers: CIFAR-10, MNIST, image folders, scikit-learn's 8×8 digits and 2-D toy
distributions (with exact mixtures where they are Gaussian mixtures), batch preparation and image grids.
No config is read here: `scorelib.builder.datasets` maps data.* onto these readers."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .analytic import GaussianMixture
from .likelihood import uniform_dequantize
from .metrics.digits import read_digits
from .runtime import step_seed

F64 = torch.float64
TOY_NAMES = ("gmm8", "grid25", "two_modes", "rings", "swissroll", "moons", "checkerboard")


def toy_mixture(name: str) -> GaussianMixture:
    """The exact Gaussian mixture behind a mixture-type toy (gmm8, grid25, two_modes)."""
    if name == "gmm8":  # 8 modes on a circle of radius 4, std 0.5
        ang = torch.arange(8, dtype=F64) * (2 * math.pi / 8)
        return GaussianMixture.isotropic(4 * torch.stack([ang.cos(), ang.sin()], 1), 0.5)
    if name == "grid25":  # 5x5 grid, spacing 2, std 0.2
        g = torch.arange(-2, 3, dtype=F64) * 2
        means = torch.cartesian_prod(g, g)
        return GaussianMixture.isotropic(means, 0.2)
    if name == "two_modes":  # Song & Ermon 2019, Fig. 3: 1/5 N((-5,-5), I) + 4/5 N((5,5), I)
        means = torch.tensor([[-5.0, -5.0], [5.0, 5.0]], dtype=F64)
        return GaussianMixture.isotropic(means, 1.0, torch.tensor([0.2, 0.8], dtype=F64))
    raise ValueError(f"{name!r} is not a mixture toy; mixture toys are gmm8, grid25, two_modes")


def toy_data(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n samples of a 2-D toy distribution, float32 [n, 2]. Names: see TOY_NAMES."""
    g = generator
    if name in ("gmm8", "grid25", "two_modes"):
        return toy_mixture(name).sample(n, generator=g)
    if name == "rings":  # two concentric circles, radii 2 and 4, radial std 0.1
        r = torch.where(torch.rand(n, generator=g) < 0.5, 2.0, 4.0) + 0.1 * torch.randn(n, generator=g)
        a = 2 * math.pi * torch.rand(n, generator=g)
        return torch.stack([r * a.cos(), r * a.sin()], 1)
    if name == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
        x = torch.stack([t * t.cos(), t * t.sin()], 1) / 3
        return x + 0.1 * torch.randn(n, 2, generator=g)
    if name == "moons":
        a = math.pi * torch.rand(n, generator=g)
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper[:, None], torch.stack([a.cos(), a.sin()], 1),
                        torch.stack([1 - a.cos(), 0.5 - a.sin()], 1))
        return 2 * (x - torch.tensor([0.5, 0.25])) + 0.1 * torch.randn(n, 2, generator=g)
    if name == "checkerboard":  # 4x4 board on [-4, 4]², the 8 black squares
        u = torch.rand(n, 2, generator=g) * 2
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + col % 2
        return torch.stack([u[:, 0] + 2 * col - 4, u[:, 1] + 2 * row - 4], 1)
    raise ValueError(f"unknown toy data set {name!r}; known: {', '.join(TOY_NAMES)}")


# ---------------------------------------------------------------------------------------------
# Image data sets: an in-memory array of images (uint8 or float in [0, 1]) and optional labels
# ---------------------------------------------------------------------------------------------


# The download locations; $SCORELIB_CIFAR10_URL and $SCORELIB_MNIST_URL (a folder URL ending in /)
# point them at a mirror. The MD5 checks stay: a mirror must serve the same files.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class DataError(Exception):
    """A data set that cannot be found or read; the message names the path and what to do."""


@dataclass
class ImageData:
    """images: [N, C, H, W] (uint8 0..255, or float in [0, 1]); labels: int64 [N] or None.
    `levels` is the number of quantisation levels (256 for 8-bit images; 17 for sklearn's digits)."""

    images: Tensor
    labels: Tensor | None
    levels: int

    def __len__(self) -> int:
        return self.images.shape[0]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch url to dest (atomically), checking its MD5: a corrupt or partial file is removed, never kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        if (got := _md5(tmp)) != md5:
            raise DataError(f"downloaded {url} but its MD5 is {got}, not {md5}; removed it")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (the CIFAR-10 batch format): never code."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch file ({e})") from e
    return data, labels


def load_cifar10(root: str | Path, train: bool = True, download: bool = True, url: str | None = None,
                 md5: str = CIFAR10_MD5) -> ImageData:
    """CIFAR-10 from `root/cifar-10-batches-py` (the official python-pickle layout), downloaded with an
    MD5 check when missing and `download` is set and the network allows. url: default
    $SCORELIB_CIFAR10_URL or CIFAR10_URL; an archive already in `root` is checked against `md5` too."""
    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    url = url or os.environ.get("SCORELIB_CIFAR10_URL") or CIFAR10_URL
    if not all((folder / n).exists() for n in names) and download:
        archive = Path(root) / "cifar-10-python.tar.gz"
        try:
            if not archive.exists():
                _download(url, archive, md5)
            elif (got := _md5(archive)) != md5:
                raise DataError(f"{archive} has MD5 {got}, not {md5}: delete it to download it again")
            with tarfile.open(archive) as tar:
                tar.extractall(Path(root), filter="data")
        except (OSError, DataError, tarfile.TarError) as e:
            raise DataError(
                f"CIFAR-10 not found in {folder} and could not be downloaded ({e}); download {url} "
                f"and extract it into {Path(root)} (giving {folder}/data_batch_1 ... test_batch), "
                "or set --config.data.root") from e
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise DataError(f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; extract {CIFAR10_URL} into "
                        f"{Path(root)} or set --config.data.root")
    parts = [_cifar_batch(folder / n) for n in names]
    return ImageData(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                     torch.from_numpy(np.concatenate([p[1] for p in parts])), 256)


def _idx(path: Path, ndim: int) -> np.ndarray:
    """Read an idx file (MNIST format, http://yann.lecun.com/exdb/mnist/), plain or gzipped, of `ndim`
    dimensions: magic 0x00 0x00 0x08 ndim, ndim big-endian uint32 sizes, then the bytes."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be read or decompressed ({e}); delete it to download it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8 or raw[3] != ndim:
        raise DataError(f"{path} is not an unsigned-byte idx file of {ndim} dimensions")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {data.size} bytes of data, expected {shape} = {int(np.prod(shape))}")
    return data.reshape(shape)


def load_mnist(root: str | Path, train: bool = True, download: bool = True, url: str | None = None) -> ImageData:
    """MNIST idx files from `root` (plain or .gz; also root/MNIST/raw, torchvision's layout), downloaded
    with MD5 checks when missing. url: the folder, default $SCORELIB_MNIST_URL or MNIST_URL."""
    root = Path(root)
    url = url or os.environ.get("SCORELIB_MNIST_URL") or MNIST_URL
    prefix = "train" if train else "t10k"
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{prefix}-{kind}"
        candidates = [root / name, root / f"{name}.gz", root / "MNIST" / "raw" / name, root / "MNIST" / "raw" /
                      f"{name}.gz"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None and download:
            try:
                _download(url + f"{name}.gz", root / f"{name}.gz", MNIST_FILES[f"{name}.gz"])
                path = root / f"{name}.gz"
            except (OSError, DataError) as e:
                raise DataError(f"MNIST file {name} not found in {root} and could not be downloaded ({e}); "
                                f"put the idx files ({', '.join(MNIST_FILES)}) in {root}") from e
        if path is None:
            raise DataError(f"MNIST file {name}(.gz) not found in {root}")
        found[kind] = _idx(path, 3 if kind.startswith("images") else 1)
    images, labels = found["images-idx3-ubyte"], found["labels-idx1-ubyte"]
    if len(images) != len(labels):
        raise DataError(f"MNIST in {root}: {len(images)} {prefix} images but {len(labels)} labels")
    return ImageData(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), 256)


def _load_image(path: Path, size: int, crop: int, channels: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        w, h = im.size
        c = min(w, h) if crop <= 0 else min(crop, w, h)
        left, top = (w - c) // 2, (h - c) // 2
        im = im.crop((left, top, left + c, top + c)).resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


FOLDER_SPLITS = ("all", "train", "test")


def in_test_split(relative_path: str, test_fraction: float) -> bool:
    """Whether the image at `relative_path` (POSIX, relative to the folder root) is in the folder's test split.

    The split is a function of the name alone: the first 8 bytes of SHA-256(relative path) as a number in
    [0, 1) below `test_fraction`. So it is the same on every machine and in every run, it does not move
    when images are added or removed, and train and test are disjoint by construction.
    """
    u = int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:8], "big") / 2.0**64
    return u < test_fraction


def load_image_folder(root: str | Path, image_size: int, channels: int = 3, crop: int = 0, split: str = "all",
                      test_fraction: float = 0.05) -> ImageData:
    """The images under `root` (recursively), centre-cropped to `crop` (0: the shorter side) and resized.

    split: "all", or the deterministic "train" / "test" split of `in_test_split` (a `test_fraction` of
    the images, chosen by a hash of each relative file name), so that FID references and likelihoods on
    the test split are not computed on training images. Images come in sorted order of their paths.
    The decoded array is cached in `root/.scorelib-cache/` when the folder is writable.
    """
    root = Path(root)
    if split not in FOLDER_SPLITS:
        raise ValueError(f"split must be one of {FOLDER_SPLITS}, got {split!r}")
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (set --config.data.root)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and ".scorelib-cache" not in
                   p.parts)
    if not files:
        raise DataError(f"image folder {root} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    if split != "all":
        n_all = len(files)
        files = [p for p in files if in_test_split(p.relative_to(root).as_posix(), test_fraction) == (split == "test")]
        if not files:
            raise DataError(f"image folder {root}: none of its {n_all} images fall in the {split} split "
                            f"(data.test_fraction={test_fraction}); add images or change data.test_fraction")
    # the cache is keyed by the settings and every file's name, size and modification time: a changed,
    # added or removed image decodes the folder again
    stats = "\n".join(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}" for p in files
                      if (st := p.stat()))
    key = hashlib.sha1(f"{image_size}-{channels}-{crop}-{stats}".encode()).hexdigest()[:16]
    cache = root / ".scorelib-cache" / f"{key}.npy"
    if cache.exists():
        try:
            return ImageData(torch.from_numpy(np.load(cache, allow_pickle=False)), None, 256)
        except (OSError, ValueError):
            pass
    arrays = []
    for p in files:
        try:
            arrays.append(_load_image(p, image_size, crop, channels))
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated files, ...
            raise DataError(f"cannot read image {p}: {e}") from e
    data = np.stack(arrays)
    try:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, data)
        os.replace(tmp, cache)
    except OSError:
        pass
    return ImageData(torch.from_numpy(data), None, 256)


def load_digits(train: bool = True) -> ImageData:
    """scikit-learn's bundled 8×8 digits (values 0..16 → [0, 1], 17 levels), split by a fixed shuffle:
    the first 1200 for training, the remaining 597 held out (the digits-FID reference); read by
    `metrics.digits.read_digits`."""
    images, labels = read_digits(train)
    return ImageData(images, labels, 17)


def prepare_batch(images: Tensor, levels: int, random_flip: bool, uniform_dequantization: bool, centered: bool,
                  generator: torch.Generator | None = None) -> Tensor:
    """uint8 / [0, 1] images [B, C, H, W] -> float training data: optional uniform dequantisation
    ((x·(L-1) + u)/L), random horizontal flips, centring to [-1, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if uniform_dequantization:
        x = uniform_dequantize(x * (levels - 1), levels, generator)
    if random_flip:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return 2 * x - 1 if centered else x


class Batches:
    """The training batch of step k for process `rank` of `world`: positions [kB, (k+1)B) of an endless
    sequence of per-epoch permutations of `data` (seeded by (seed, epoch)), this rank's B/world of them,
    prepared on `device` by `prepare_batch`; with `data` None, fresh points of the 2-D toy `toy` from a
    generator seeded by (seed, step, rank). So the batch of a step is the same in a resumed run."""

    def __init__(self, data: ImageData | None, seed: int, batch_size: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu", toy: str = "", random_flip: bool = False,
                 uniform_dequantization: bool = False, centered: bool = False):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
        self.data, self.seed, self.rank, self.device, self.toy = data, seed, rank, torch.device(device), toy
        self.global_batch, self.local_batch = batch_size, batch_size // world
        self.prepare = (random_flip, uniform_dequantization, centered)
        if data is not None:
            self.images = data.images.to(device)
            self.labels = None if data.labels is None else data.labels.to(device)
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 31 + epoch)
            self._perms = {epoch: torch.randperm(len(self.data), generator=g)}
        return self._perms[epoch]

    def __call__(self, step: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """(x [B/world, ...], labels [B/world] or None) of `step`; `g` draws the flips and dequantisation."""
        if self.data is None:
            cpu_g = torch.Generator().manual_seed(step_seed(self.seed, step, self.rank))
            return toy_data(self.toy, self.local_batch, cpu_g).to(self.device), None
        n = len(self.data)
        start = step * self.global_batch + self.rank * self.local_batch
        pos = torch.arange(start, start + self.local_batch)
        idx = torch.cat([self._perm(int(e))[pos[pos // n == e] % n] for e in torch.unique(pos // n)])
        idx = idx.to(self.device)
        x = prepare_batch(self.images[idx], self.data.levels, *self.prepare, g)
        return x, None if self.labels is None else self.labels[idx]


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Write [N, C, H, W] images in [0, 1] as one PNG grid (atomically), scaled up for tiny images."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    ncol = int(np.ceil(n / nrow))
    pad = 1
    grid = np.ones((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    arr = images.detach().float().cpu().clamp(0, 1).numpy()
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = arr[i]
    img = (grid * 255 + 0.5).astype(np.uint8)
    img = img[0] if c == 1 else img.transpose(1, 2, 0)
    pil = Image.fromarray(img)
    scale = max(1, 512 // pil.size[0])
    if scale > 1:
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def save_scatter_png(x: Tensor, path: str | Path) -> None:
    """A 2-D point cloud as a 256×256 density image (no plotting library needed)."""
    pts = x[:, :2].float().cpu()
    lim = float(pts.abs().quantile(0.995)) * 1.1 + 1e-6
    bins = 256
    idx = ((pts / lim + 1) / 2 * (bins - 1)).round().long().clamp(0, bins - 1)
    hist = torch.zeros(bins, bins)
    hist.index_put_((bins - 1 - idx[:, 1], idx[:, 0]), torch.ones(len(idx)), accumulate=True)
    img = (hist / hist.max().clamp(min=1)).sqrt()
    save_image_grid((1 - img)[None, None], path, nrow=1)
