"""The evaluation protocol around the metrics: the folder train/test split, the FID reference (split, counts,
cache key, reference files), the metrics.json record of it, and the checks `--mode=eval` makes before it
samples."""

from __future__ import annotations

import importlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from builds import exp_of
from cli_helpers import run_main, write_fake_cifar10
from PIL import Image

from scorelib import evaluate as ev
from scorelib import sampling, tasks
from scorelib.builder import ConfigError, experiment
from scorelib.builder.configs import with_overrides
from scorelib.builder.datasets import load_dataset
from scorelib.data import DataError, in_test_split, load_image_folder
from scorelib.train import train

# --- dataset=folder: a deterministic train/test split -------------------------------------------


def _write_images(root, names, first_value=0):
    """Flat 6×6 RGB images, image k of `names` with every pixel first_value + k (its identity after loading)."""
    for k, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), first_value + k, np.uint8)).save(path)


def _values(data):
    return sorted(int(v) for v in data.images[:, 0, 0, 0])


def test_folder_split_is_disjoint_complete_and_stable(tmp_path):
    names = [f"{'ab'[k % 2]}/img_{k:03d}.png" for k in range(60)]
    _write_images(tmp_path / "one", names)
    split = {s: load_image_folder(tmp_path / "one", 4, split=s, test_fraction=0.2) for s in ("all", "train", "test")}
    train_v, test_v = set(_values(split["train"])), set(_values(split["test"]))
    assert not train_v & test_v and sorted(train_v | test_v) == _values(split["all"]) == list(range(60))
    assert 5 <= len(test_v) <= 20  # about 20 % of 60
    assert test_v == {k for k, n in enumerate(names) if in_test_split(n, 0.2)}

    # stable: a copy elsewhere with images added and removed keeps every remaining image on its side
    other = tmp_path / "two"
    shutil.copytree(tmp_path / "one", other, ignore=shutil.ignore_patterns(".scorelib-cache"))
    for k in range(5):
        (other / names[k]).unlink()
    _write_images(other, [f"new/extra_{k}.png" for k in range(10)], first_value=100)
    test2 = set(_values(load_image_folder(other, 4, split="test", test_fraction=0.2)))
    assert {v for v in test2 if v < 100} == {v for v in test_v if v >= 5}
    # the hash is part of the format: these memberships must never change between versions
    golden = [False, True, False, True, False, False, True, False]
    assert [in_test_split(f"img_{k}.png", 0.5) for k in range(8)] == golden


def test_folder_split_through_the_config_and_its_errors(tmp_path):
    _write_images(tmp_path / "imgs", [f"{k}.png" for k in range(30)])
    c = importlib.import_module("configs.ncsnv2_celeba").get_config()
    c.data.root, c.data.image_size, c.data.crop, c.data.test_fraction = str(tmp_path / "imgs"), 4, 0, 0.3
    tr, te = load_dataset(exp_of(c).data, train=True), load_dataset(exp_of(c).data, train=False)
    assert len(tr) + len(te) == 30 and not set(_values(tr)) & set(_values(te)) and len(te) > 0
    c.data.test_fraction = 0.0
    with pytest.raises(ConfigError, match=r"data\.test_fraction: 0 is not allowed"):
        load_dataset(exp_of(c).data, train=False)
    with pytest.raises(DataError, match="none of its 2 images fall in the test split"):
        _write_images(tmp_path / "few", ["a.png", "b.png"])
        load_image_folder(tmp_path / "few", 4, split="test", test_fraction=1e-9)


# --- the FID reference: split, count, cache key, reference file ---------------------------------


def _cifar_config(root, **eval_fields):
    c = importlib.import_module("configs.ncsn_cifar").get_config()
    c.data.root = str(root)
    for k, v in eval_fields.items():
        setattr(c.eval, k, v)
    return c


def fid_reference(config, workdir):
    return tasks.reference_of(exp_of(config), workdir)


def test_cache_key_changes_with_root_split_count_and_size(tmp_path):
    base = fid_reference(_cifar_config(tmp_path / "a"), tmp_path)
    assert base.split == "train" and base.count == 0 and base.full and base.cache.parent == tmp_path / "eval"
    assert "all of the train split of cifar10" in base.description
    same = fid_reference(_cifar_config(os.path.relpath(tmp_path / "a")), tmp_path)  # the same root spelt apart
    assert same.cache == base.cache
    assert fid_reference(_cifar_config(tmp_path / "b"), tmp_path).cache != base.cache
    for changed in (fid_reference(_cifar_config(tmp_path / "a", reference_split="test"), tmp_path),
                    fid_reference(_cifar_config(tmp_path / "a", reference_count=1000), tmp_path)):
        assert changed.cache != base.cache and not changed.full
    c = _cifar_config(tmp_path / "a")
    c.data.image_size = 64
    assert fid_reference(c, tmp_path).cache != base.cache
    f = fid_reference(_cifar_config(tmp_path / "a", stats_path="/x/cifar10_stats.npz"), tmp_path)
    assert f.file == "/x/cifar10_stats.npz" and f.cache is None and f.full
    with pytest.raises(ConfigError, match=r"eval\.reference_split"):
        fid_reference(_cifar_config(tmp_path, reference_split="val"), tmp_path)


def test_evaluation_kwargs_device_batch_size_count_and_file(tmp_path):
    real = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    kw = tasks.evaluation_arguments(exp_of(_cifar_config(tmp_path, batch_size=7, reference_count=4)), tmp_path,
                                    real, split="train", device="cpu")
    assert kw["batch_size"] == 7 and kw["device"] == "cpu" and kw["real"].shape == (4, 3, 32, 32)
    assert kw["reference_path"] is None and "_train_" in kw["stats_path"].name
    assert kw["real"].dtype == torch.uint8 and kw["real_value_range"] == (0.0, 255.0)  # scaled batch by batch
    kw = tasks.evaluation_arguments(exp_of(_cifar_config(tmp_path, stats_path="ref.npz")), tmp_path, real)
    assert kw["reference_path"] == "ref.npz" and kw["stats_path"] is None and kw["real"] is None


# --- --mode=eval end to end on fake CIFAR-10 with a random-weights Inception --------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-step ncsn_cifar run on fake CIFAR-10 (4 images per batch file: 20 train, 4 test images) and a
    random-weights FID Inception file."""
    base = tmp_path_factory.mktemp("eval_protocol")
    data = write_fake_cifar10(base / "data", n_per_batch=4)
    c = importlib.import_module("configs.ncsn_cifar").get_config()
    c.data.root = str(data)
    c.model.nf, c.noise.num_scales = 8, 4
    c.training.batch_size, c.training.n_iters, c.training.snapshot_freq = 2, 1, 1
    c.training.snapshot_samples, c.training.eval_at_end = 0, False
    c.sampling.n_steps_each, c.sampling.batch_size = 1, 4
    c.eval.n_samples, c.eval.batch_size = 6, 6
    train(experiment(c), base / "run")
    torch.manual_seed(0)
    weights = base / "random_inception.pth"
    torch.save(ev.FIDInceptionV3().state_dict(), weights)
    c.eval.inception_path = str(weights)
    return c, base / "run", weights


def _copy(config):
    return with_overrides(config, {})


def _no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampled before the evaluation's inputs were checked")

    monkeypatch.setattr(sampling, "sample_images", refuse)


def test_eval_checks_everything_before_sampling(trained, tmp_path, monkeypatch):
    config, run, _ = trained
    _no_sampling(monkeypatch)
    c = _copy(config)
    c.eval.inception_path = str(tmp_path / "missing" / ev.INCEPTION_FILENAME)
    with pytest.raises(ev.InceptionWeightsNotFoundError, match=str(tmp_path / "missing")):
        tasks.run_eval(experiment(c, run, "eval"), run)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    c.eval.inception_path = str(bad)
    with pytest.raises(ConfigError, match=r"eval.inception_path: .*bad\.pth"):
        tasks.run_eval(experiment(c, run, "eval"), run)
    c = _copy(config)
    c.eval.stats_path = str(tmp_path / "nowhere.npz")
    with pytest.raises(ConfigError, match=r"eval.stats_path: cannot read .*nowhere\.npz"):
        tasks.run_eval(experiment(c, run, "eval"), run)
    c = _copy(config)
    c.data.root, c.data.download = str(tmp_path / "no_data"), False
    with pytest.raises(DataError, match="no_data"):
        tasks.run_eval(experiment(c, run, "eval"), run)
    assert not (run / "eval" / "metrics.json").exists()


def test_eval_checks_the_workdir_is_writable(trained, tmp_path, monkeypatch):
    config, run, _ = trained
    _no_sampling(monkeypatch)
    blocked = tmp_path / "blocked"
    shutil.copytree(run / "checkpoints", blocked / "checkpoints")
    (blocked / "eval").write_text("a file where WORKDIR/eval should be")  # unwritable even for root
    with pytest.raises(ConfigError, match=r"--workdir=.*blocked is not writable"):
        tasks.run_eval(experiment(_copy(config), blocked, "eval"), blocked)


def test_end_of_training_eval_is_checked_before_training(trained, tmp_path, monkeypatch):
    config, _, _ = trained
    c = _copy(config)
    c.training.eval_at_end = True
    c.eval.inception_path = str(tmp_path / "absent.pth")
    monkeypatch.setattr(tasks, "train", lambda *a: pytest.fail("trained before the evaluation was checked"))
    with pytest.raises(ev.InceptionWeightsNotFoundError, match=r"absent\.pth"):
        tasks.run_train(experiment(c), tmp_path / "new_run")


def test_eval_cli_missing_weights_is_one_line_and_draws_nothing(trained, tmp_path):
    # the order (checks before sampling) is pinned by test_eval_checks_everything_before_sampling; this pins
    # the user-facing side: exit status 2, one line naming the file, nothing written
    config, run, _ = trained
    missing = tmp_path / ev.INCEPTION_FILENAME
    r = run_main("--config=ncsn_cifar", f"--workdir={run}", "--mode=eval", f"--config.data.root={config.data.root}",
                 f"--config.eval.inception_path={missing}", "--config.eval.n_samples=50000", timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorelib: ") and str(missing) in lines[0], r.stderr
    assert not (run / "eval" / "metrics.json").exists() and not (run / "samples").exists()


def _mean_distance(mu1, sigma1, mu2, sigma2, method="sqrtm"):
    """‖μ₁ - μ₂‖² + tr Σ₁ - tr Σ₂ in place of the FID: the same wiring without a 2048-D matrix root (a minute
    on a busy CPU); it still differs whenever the reference statistics differ."""
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) - np.trace(sigma2))


def _informative_pool3(self, x):
    """Stand-in pool3 features [B, 2048] that tell images apart (a random trunk gives ~1e-8 for all)."""
    return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1).repeat(1, 11)[:, :2048]


def test_eval_records_the_protocol_and_reads_a_reference_file(trained, tmp_path, monkeypatch):
    config, run, _ = trained
    monkeypatch.setattr(ev, "frechet_distance", _mean_distance)
    batches = []

    def pool3(self, x):
        batches.append(len(x))
        return _informative_pool3(self, x)

    monkeypatch.setattr(ev.FIDInceptionV3, "pool3", pool3)
    c = _copy(config)
    c.eval.metrics = ("fid", "is")
    workdir = tmp_path / "w"
    shutil.copytree(run / "checkpoints", workdir / "checkpoints")
    out = tasks.run_eval(experiment(c, workdir, "eval"), workdir)
    assert batches == [6, 6, 6, 6, 2]  # eval.batch_size = 6: the samples (6), then the 20 training images
    monkeypatch.setattr(ev.FIDInceptionV3, "pool3", _informative_pool3)
    stored = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert stored["fid"] == pytest.approx(out["fid"])
    assert stored["fid_reference_split"] == "train" and stored["fid_reference_count"] == 20  # the whole train split
    assert stored["fid_samples"] == 6 and stored["fid_comparable"] is False
    assert "6 samples (published FIDs use 50000)" in stored["fid_note"]
    assert "train split of cifar10" in stored["fid_reference"]
    cache = workdir / "eval" / os.path.basename(stored["fid_reference_cache"])
    assert cache.is_file() and ev.statistics_format(cache) == "pytorch-fid"
    assert "is" in stored and "kid" not in stored

    # the same data under another root: a new cache, not the old statistics
    moved = tmp_path / "moved"
    shutil.copytree(config.data.root, moved)
    c2 = _copy(c)
    c2.data.root = str(moved)
    again = tasks.run_eval(experiment(c2, workdir, "eval"), workdir)
    assert again["fid_reference_cache"] != stored["fid_reference_cache"]
    assert again["fid"] == pytest.approx(out["fid"], rel=1e-6)  # same images, same samples

    # that cache as a pytorch-fid reference file gives the same FID; the file is recorded as the source
    c3 = _copy(c)
    c3.eval.stats_path = str(cache)
    from_file = tasks.run_eval(experiment(c3, workdir, "eval"), workdir)
    assert from_file["fid"] == pytest.approx(out["fid"], rel=1e-9)
    assert from_file["fid_reference_file"] == str(cache) and from_file["fid_reference_format"] == "pytorch-fid"
    assert from_file["fid_reference_split"] is None

    # the test split as the reference: labelled not comparable for that reason too
    c4 = _copy(c)
    c4.eval.reference_split = "test"
    test_ref = tasks.run_eval(experiment(c4, workdir, "eval"), workdir)
    assert test_ref["fid_reference_count"] == 4 and "test split" in test_ref["fid_note"]
    assert test_ref["fid"] != pytest.approx(out["fid"])
