"""The data paths the README promises, on small files the tests write: CIFAR-10 downloaded from a local
HTTP server with its MD5 check, MNIST idx files (gz and raw), an image folder (decode, crop, resize,
cache), and the ncsn_mnist config end to end on fake MNIST."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_main, sample_file, write_fake_cifar10
from PIL import Image

from scorelib import data as data_mod
from scorelib.data import DataError, load_cifar10, load_image_folder, load_mnist

# ---------------------------------------------------------------------------------------------
# CIFAR-10: download from 127.0.0.1 with the MD5 check
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(www), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _fake_cifar_archive(tmp_path: Path) -> tuple[bytes, torch.Tensor]:
    """A cifar-10-python.tar.gz with 3 images per batch, and the test images it holds."""
    staging = write_fake_cifar10(tmp_path / "staging", n_per_batch=3, seed=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    expected = load_cifar10(staging, train=False, download=False).images
    return buf.getvalue(), expected


def test_cifar10_download_checks_md5_and_extracts(tmp_path, server):
    www, base = server
    archive, expected = _fake_cifar_archive(tmp_path)
    (www / "cifar.tar.gz").write_bytes(archive)
    root = tmp_path / "data"
    got = load_cifar10(root, train=False, url=base + "cifar.tar.gz", md5=hashlib.md5(archive).hexdigest())
    assert torch.equal(got.images, expected) and got.images.shape == (3, 3, 32, 32)
    assert (root / "cifar-10-batches-py" / "data_batch_5").exists()
    assert len(load_cifar10(root, train=True, download=False)) == 15


def test_cifar10_corrupt_download_is_refused_and_removed(tmp_path, server):
    www, base = server
    archive, _ = _fake_cifar_archive(tmp_path)
    (www / "cifar.tar.gz").write_bytes(archive[:-100] + b"x" * 100)  # corrupt: not the official MD5
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"MD5 is .* not c58f30108f718f92721af3b95e74349a; removed it"):
        load_cifar10(root, train=False, url=base + "cifar.tar.gz")
    assert list(root.iterdir()) == []  # neither the archive nor a partial .part file is left
    with pytest.raises(DataError, match="could not be downloaded"):  # a missing file (404) is a clear error too
        load_cifar10(root, train=False, url=base + "nothing.tar.gz")
    assert list(root.iterdir()) == []


def test_cifar10_download_url_from_the_environment_through_the_cli(tmp_path, server):
    www, base = server
    (www / "cifar.tar.gz").write_bytes(b"not an archive")
    root = tmp_path / "data"
    r = run_main("--config=ncsn_cifar", f"--config.data.root={root}", f"--workdir={tmp_path / 'run'}",
                 env={"SCORELIB_CIFAR10_URL": base + "cifar.tar.gz"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"downloaded {base}cifar.tar.gz but its MD5 is {hashlib.md5(b'not an archive').hexdigest()}" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
    assert list(root.iterdir()) == []


def test_cifar10_archive_already_present_with_wrong_md5_is_refused(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"partial")
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz has MD5 .* delete it to download it again"):
        load_cifar10(root, train=False)


# ---------------------------------------------------------------------------------------------
# MNIST idx files
# ---------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: 0 0 0x08 ndim, big-endian uint32 sizes, uint8 data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_mnist(root: Path, n_train: int = 24, n_test: int = 8, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, a in arrays.items():
        raw = _idx_bytes(a)
        (root / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_gz_and_raw(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path, gz=gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        d = load_mnist(tmp_path, train=train, download=False)
        n = len(arrays[f"{prefix}-labels-idx1-ubyte"])
        assert d.images.dtype == torch.uint8 and d.images.shape == (n, 1, 28, 28)
        assert np.array_equal(d.images[:, 0].numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        assert np.array_equal(d.labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64))


def test_mnist_in_torchvision_layout(tmp_path):
    arrays = write_fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    d = load_mnist(tmp_path, train=False, download=False)
    assert np.array_equal(d.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_truncated_file_is_a_clear_error(tmp_path, gz):
    write_fake_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    match = "cannot be read or decompressed" if gz else r"is truncated: 9400 bytes of data, expected \(24, 28, 28\)"
    with pytest.raises(DataError, match=match) as e:
        load_mnist(tmp_path, train=True, download=False)
    assert str(path) in str(e.value)


def test_mnist_wrong_files_are_clear_errors(tmp_path):
    arrays = write_fake_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(arrays["t10k-labels-idx1-ubyte"][:5]))
    with pytest.raises(DataError, match="8 t10k images but 5 labels"):
        load_mnist(tmp_path, train=False, download=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(arrays["t10k-images-idx3-ubyte"]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an unsigned-byte idx file of 1 dimensions"):
        load_mnist(tmp_path, train=False, download=False)
    with pytest.raises(DataError, match=r"MNIST file train-images-idx3-ubyte\(\.gz\) not found"):
        load_mnist(tmp_path / "elsewhere", train=True, download=False)


def test_mnist_corrupt_download_is_refused_and_removed(tmp_path, server):
    www, base = server
    (www / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    root = tmp_path / "mnist"
    with pytest.raises(DataError, match=r"MD5 is .*, not f68b3c2dcbeaaa9fbdd348bbdeb94873; removed it"):
        load_mnist(root, train=True, url=base)
    assert list(root.iterdir()) == []


def test_ncsn_mnist_end_to_end_on_fake_mnist(tmp_path):
    write_fake_mnist(tmp_path / "mnist", n_train=16, n_test=8)
    common = ["--config=ncsn_mnist", f"--workdir={tmp_path / 'run'}", f"--config.data.root={tmp_path / 'mnist'}",
              "--config.data.download=False", "--config.model.nf=8", "--config.sampling.n_steps_each=1",
              "--config.sampling.batch_size=4"]
    r = run_main(*common, "--config.training.n_iters=2", "--config.training.batch_size=4",
                 "--config.training.snapshot_freq=2", "--config.training.snapshot_samples=4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_00000002.pt").exists()
    assert Image.open(tmp_path / "run" / "samples" / "step_00000002.png").mode == "L"
    r = run_main(*common, "--mode=sample", "--config.sampling.n_samples=4")
    assert r.returncode == 0, r.stderr
    samples = np.load(sample_file(tmp_path / "run", "ald"))["samples"]
    assert samples.shape == (4, 1, 28, 28) and np.isfinite(samples).all()


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------


def _bands(w: int, h: int) -> Image.Image:
    """A w×h RGB image: red left quarter, green middle half, blue right quarter (w > h: the centre
    crop of side h is all green when h <= w/2)."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 4, 0] = 255
    a[:, w // 4 : 3 * w // 4, 1] = 255
    a[:, 3 * w // 4 :, 2] = 255
    return Image.fromarray(a)


def test_image_folder_decodes_crops_and_resizes(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    _bands(80, 40).save(root / "a.png")  # centre crop 40×40: green
    Image.fromarray(np.full((30, 50), 200, dtype=np.uint8)).save(root / "sub" / "b.jpg", quality=100)  # gray
    square = np.zeros((30, 30, 3), dtype=np.uint8)
    square[10:20, 10:20] = 255  # white 10×10 centre in black
    Image.fromarray(square).save(root / "c.bmp")
    (root / "notes.txt").write_text("not an image")
    d = load_image_folder(root, image_size=16)
    assert d.images.shape == (3, 3, 16, 16) and d.images.dtype == torch.uint8 and d.labels is None
    a, c, b = d.images  # sorted paths: a.png, c.bmp, sub/b.jpg
    assert (a[1] == 255).all() and (a[0] == 0).all() and (a[2] == 0).all()  # only the green band survives
    assert (b.int() - 200).abs().max() <= 2  # grayscale decoded into three channels
    assert c.float().mean() < 80  # uncropped: the white centre is a small part
    cropped = load_image_folder(root, image_size=8, crop=10)
    assert (cropped.images[1] == 255).all()  # crop=10: only the white centre of c.bmp
    gray = load_image_folder(root, image_size=16, channels=1)
    assert gray.images.shape == (3, 1, 16, 16)


def test_image_folder_cache_is_used_and_refreshed(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    root.mkdir()
    _bands(64, 32).save(root / "a.png")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(root / "b.png")
    first = load_image_folder(root, image_size=8)
    assert len(list((root / ".scorelib-cache").glob("*.npy"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(data_mod, "_load_image", no_decoding)
        assert torch.equal(load_image_folder(root, image_size=8).images, first.images)
    Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8)).save(root / "b.png")  # changed content
    again = load_image_folder(root, image_size=8)
    assert (again.images[1] == 255).all() and torch.equal(again.images[0], first.images[0])


def test_image_folder_unreadable_image_names_the_file(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    _bands(64, 32).save(root / "a.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_image_folder(root, image_size=8)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing", image_size=8)
