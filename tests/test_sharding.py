"""Sharded, resumable sampling and streamed evaluation: chunk files, the streaming FID accumulator, and
through the real CLI a 2-process torchrun run against a 1-process one and a killed run against an
uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from cli_helpers import ROOT, chunk_dir, run_main, run_torchrun, sample_file

from scorelib import chunked, runtime, sampling
from scorelib.metrics.fid import StreamingStatistics, feature_statistics, fid_from_features, frechet_distance
from scorelib.runtime import Runtime

CPU1 = Runtime(0, 1, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# The streaming FID accumulator
# ---------------------------------------------------------------------------------------------


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative, correlated features (like pooled ReLU activations) with a non-zero mean."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.abs(rng.normal(size=(n, d)) @ mix + shift).astype(np.float32)


def test_streamed_fid_equals_fid_of_all_features():
    a, b = _features(1500, 64, 0), _features(1200, 64, 1, shift=0.3)
    stream = StreamingStatistics(64)
    for part in np.array_split(a, [1, 7, 300, 301, 1000]):  # uneven batches, one of a single row
        stream.update(torch.from_numpy(part))
    mu, sigma = stream.statistics()
    mu_all, sigma_all = feature_statistics(a)
    np.testing.assert_allclose(mu, mu_all, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, sigma_all, rtol=0, atol=1e-12)
    fid = frechet_distance(mu, sigma, *feature_statistics(b))
    assert fid > 0.1
    assert abs(fid - fid_from_features(a, b)) < 1e-10


def test_streamed_statistics_add_up_over_processes():
    a = _features(900, 32, 2)
    parts = [StreamingStatistics(32).update(p) for p in np.array_split(a, 3)]
    # what all_reduce does to the tensors of each process: an element-wise sum
    summed = [sum(ts) for ts in zip(*(p.tensors() for p in parts), strict=True)]
    reduced = StreamingStatistics.from_tensors(summed)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert reduced.n == merged.n == 900
    for s in (reduced, merged):
        mu, sigma = s.statistics()
        np.testing.assert_allclose(sigma, np.cov(a.astype(np.float64), rowvar=False), rtol=0, atol=1e-12)
        np.testing.assert_allclose(mu, a.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="dimension 5"):
        StreamingStatistics(32).update(np.zeros((3, 5)))


# ---------------------------------------------------------------------------------------------
# Chunks and their files
# ---------------------------------------------------------------------------------------------


def test_chunks_cover_indices_and_seeds_depend_on_seed_and_index_only():
    cs = chunked.chunks(10, 4)
    assert [(c.k, c.start, c.stop) for c in cs] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert chunked.chunks(8, 4) == cs[:2]  # a longer run shares its first chunks with a shorter one
    seeds = {chunked.chunk_seed(s, k) for s in range(3) for k in range(100)}
    assert len(seeds) == 300 and chunked.chunk_seed(1, 5) == chunked.chunk_seed(1, 5)


def test_chunk_store_accepts_only_its_own_complete_chunks(tmp_path):
    store = chunked.ChunkStore(tmp_path / "c", "fp-a")
    store.prepare(CPU1)
    c0, c1 = chunked.chunks(7, 4)
    assert not store.is_complete(c0)
    store.write(c0, {"samples": np.ones((4, 2), np.float32)})
    assert store.is_complete(c0) and not store.is_complete(c0, ("samples", "features"))
    store.path(c1).write_bytes(b"truncated")  # unreadable: drawn again
    assert not store.is_complete(c1)
    longer = chunked.chunks(9, 4)[1]  # chunk 1 of a run with more samples holds other indices
    store.write(longer, {"samples": np.zeros((4, 2), np.float32)})
    assert not store.is_complete(c1) and store.is_complete(longer)
    other = chunked.ChunkStore(tmp_path / "c", "fp-b")
    assert not other.is_complete(c0)
    with pytest.raises(RuntimeError, match="another setting"):  # another fingerprint: refused, nothing discarded
        other.prepare(CPU1)
    assert store.is_complete(c0)


def test_draw_missing_draws_each_chunk_once(tmp_path):
    calls = []

    def draw(c):
        calls.append(c.k)
        return {"samples": np.full((c.size, 3), c.k, np.float32)}

    store, cs = chunked.ChunkStore(tmp_path, "fp"), chunked.chunks(10, 3)
    store.prepare(CPU1)
    store.write(cs[1], draw(cs[1]))
    report = chunked.draw_missing(store, cs, CPU1, draw, progress=False)
    assert calls == [1, 0, 2, 3] and (report.total, report.found, report.drawn_here) == (4, 1, 3)
    again = chunked.draw_missing(store, cs, CPU1, draw, progress=False)
    assert calls == [1, 0, 2, 3] and again.found == 4


def test_npz_written_in_pieces_loads_as_one_array(tmp_path):
    x = np.random.default_rng(0).normal(size=(11, 3, 2, 2)).astype(np.float32)
    chunked.write_npz_streamed(tmp_path / "s.npz", "samples", np.array_split(x, 4), x.shape)
    with np.load(tmp_path / "s.npz") as f:
        assert f.files == ["samples"] and np.array_equal(f["samples"], x)
    with pytest.raises(ValueError, match="10 rows"):
        chunked.write_npz_streamed(tmp_path / "t.npz", "samples", [x[:10]], x.shape)
    assert not (tmp_path / "t.npz").exists()


def test_progress_prints_plain_lines_every_few_percent(capsys):
    bar = runtime.Progress(100, "sample", every=0.25)
    for _ in range(10):
        bar.update(10)
    bar.close()
    lines = capsys.readouterr().err.splitlines()  # pytest's stderr is not a terminal
    assert [ln.split(":")[1].split()[0] for ln in lines] == ["30/100", "50/100", "80/100", "100/100"]
    assert all("samples/s" in ln and "ETA" in ln for ln in lines)


# ---------------------------------------------------------------------------------------------
# Through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A toy_gmm checkpoint (a few steps: the samples only need to be reproducible)."""
    workdir = tmp_path_factory.mktemp("toy")
    r = run_main("--config=toy_gmm", f"--workdir={workdir}", "--config.training.n_iters=20",
                 "--config.training.snapshot_freq=20", "--config.training.log_freq=10",
                 "--config.training.eval_at_end=False")
    assert r.returncode == 0, r.stderr
    assert "train: step 10/20 (50%), loss" in r.stderr  # the plain progress line: stderr is a pipe here
    return workdir


def _samples(workdir):
    with np.load(sample_file(workdir, "ald")) as f:
        return f["samples"]


def test_two_processes_draw_the_samples_of_one_bit_for_bit(toy_run, tmp_path):
    common = ["--config=toy_gmm", f"--config.sampling.checkpoint={toy_run}", "--config.sampling.n_samples=250",
              "--config.sampling.batch_size=100"]
    one = run_main(*common, "--mode=sample", f"--workdir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    two = run_torchrun(*common, "--mode=sample", f"--workdir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("250 samples with ald") == 1  # rank 0 reports and assembles
    assert "3 of 3 chunks drawn by 2 process(es)" in two.stdout
    x1, x2 = _samples(tmp_path / "one"), _samples(tmp_path / "two")
    assert x1.shape == (250, 2) and np.isfinite(x1).all()
    assert np.array_equal(x1, x2)
    assert len(np.unique(x1, axis=0)) == 250  # no chunk repeats another's noise
    assert sample_file(tmp_path / "two", "ald", suffix=".png").is_file()
    # evaluation (with the likelihood) shards the same way and gives the same numbers
    ev = ["--mode=eval", "--config.eval.n_samples=200", "--config.eval.batch_size=100",
          "--config.eval.likelihood=True", "--config.eval.likelihood_batches=3"]
    one = run_main(*common, *ev, f"--workdir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    two = run_torchrun(*common, *ev, f"--workdir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-2000:]
    m1, m2 = (json.loads((tmp_path / w / "eval" / "metrics.json").read_text()) for w in ("one", "two"))
    m1.pop("sampling_seconds"), m2.pop("sampling_seconds")
    assert m1 == m2 and m1["likelihood_examples"] == 300 and "sliced_wasserstein" in m1


def test_killed_run_resumes_without_redrawing_finished_chunks(toy_run, tmp_path):
    common = ["--config=toy_gmm", "--mode=sample", f"--config.sampling.checkpoint={toy_run}",
              "--config.sampling.n_samples=4000", "--config.sampling.batch_size=1000"]  # about 1 s a chunk
    full = run_main(*common, f"--workdir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr
    victim = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *common, f"--workdir={victim}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(victim.glob("samples/ald-*/chunk_000000.npz")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunks = chunk_dir(victim, "ald")
    done = sorted(p.name for p in chunks.glob("chunk_*.npz"))
    assert "chunk_000000.npz" in done and len(done) < 4, done  # killed while drawing a later chunk
    assert not list((victim / "samples").glob("ald-*.npz"))
    before = {name: (chunks / name).stat().st_mtime_ns for name in done}
    again = run_main(*common, f"--workdir={victim}")
    assert again.returncode == 0, again.stderr
    assert f"{4 - len(done)} of 4 chunks drawn by 1 process(es), {len(done)} found finished" in again.stdout
    assert {name: (chunks / name).stat().st_mtime_ns for name in done} == before  # not drawn again
    assert np.array_equal(_samples(victim), _samples(tmp_path / "full"))


class _FakeInception(torch.nn.Module):
    """Stands in for the FID Inception (whose random initialisation gives features of ~1e-8): pooled pixels
    through fixed random maps to 2048 features and 1008 logits that vary with the image."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = torch.nn.Linear(3 * 8 * 8, 2048)
        self.logits = torch.nn.Linear(2048, 1008)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) / 8

    def forward(self, x):
        f = torch.tanh(self.features(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)))
        return f, self.logits(f)


def test_image_eval_streams_inception_features_per_chunk(tmp_path, monkeypatch):
    from builds import exp_of
    from cli_helpers import write_fake_cifar10

    from scorelib import evaluate as ev
    from scorelib import tasks
    from scorelib.builder import experiment
    from scorelib.builder.datasets import load_dataset
    from scorelib.builder.fields import base

    data = write_fake_cifar10(tmp_path / "data", n_per_batch=6)
    run = tmp_path / "run"
    r = run_main("--config=ncsn_cifar", f"--workdir={run}", f"--config.data.root={data}", "--config.model.name=mlp",
                 "--config.model.nf=8", "--config.model.num_res_blocks=1", "--config.training.n_iters=2",
                 "--config.training.batch_size=4", "--config.training.snapshot_freq=2",
                 "--config.training.snapshot_samples=0", "--config.training.eval_at_end=False")
    assert r.returncode == 0, r.stderr
    loads = []

    def load_inception(path=None, device="cpu"):
        loads.append(path)
        return _FakeInception().eval().to(device)

    def distance(mu1, sigma1, mu2, sigma2, method="sqrtm"):  # the 2048-D sqrtm takes a minute on a busy CPU
        return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.sum(sigma1 * sigma2))

    monkeypatch.setattr(ev, "load_inception", load_inception)
    monkeypatch.setattr(ev, "frechet_distance", distance)
    config = base()
    config.data.root, config.sampling.n_steps_each = str(data), 1
    config.eval.n_samples, config.eval.batch_size, config.eval.inception_path = 20, 8, "inception.pth"
    config.eval.reference_split = "test"
    out = tasks.run_eval(experiment(config, run, "eval"), run)
    assert {"fid", "kid", "kid_std", "is", "is_std"} <= set(out) and out["n_samples"] == 20
    assert loads[0] == "inception.pth"
    store_dir = chunk_dir(run, "ald", "eval")
    with np.load(store_dir / "chunk_000002.npz") as f:
        assert f["features"].shape == (4, 2048) and f["logits"].shape == (4, 1008)
        assert np.array_equal(f["indices"], [16, 17, 18, 19])
    x = torch.from_numpy(np.concatenate([np.load(store_dir / f"chunk_{k:06d}.npz")["samples"] for k in range(3)]))
    test = load_dataset(exp_of(config).data, train=False).images
    direct = ev.evaluate_samples(x, "images", value_range=(0.0, 1.0), real=test.float() / 255)
    assert out["fid"] > 1e-3 and out["is"] > 1.0 + 1e-6  # 10 splits of 2 samples: IS > 1 unless all agree
    for key in ("fid", "kid", "is"):
        assert out[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_bench_under_torchrun_equals_one_process(tmp_path):
    import csv

    common = ["--config=toy_gmm", "--mode=bench", "--quick", "--config.eval.n_samples=64",
              "--config.sampling.batch_size=32"]  # the exact mixture's score; two batches per row
    one = run_main(*common, f"--workdir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    two = run_torchrun(*common, f"--workdir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 writes
    rows = [list(csv.DictReader(open(tmp_path / w / "bench" / "results.csv"))) for w in ("one", "two")]
    timing = {"wall_s", "samples_per_s", "peak_mem_mib"}
    assert len(rows[0]) == len(rows[1]) > 10
    for r1, r2 in zip(*rows, strict=True):
        assert r1["status"] in ("ok", "reference", "skipped"), r1
        assert {k: v for k, v in r1.items() if k not in timing} == {k: v for k, v in r2.items() if k not in timing}


def test_a_chunk_size_below_one_is_a_one_line_error(toy_run, tmp_path):
    r = run_main("--config=toy_gmm", "--mode=sample", f"--workdir={tmp_path}",
                 f"--config.sampling.checkpoint={toy_run}", "--config.sampling.batch_size=0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "scorelib: sampling.batch_size: 0 is not allowed (> 0)"  # validated before any work


def test_a_setting_is_named_by_its_config_weights_seed_and_chunk(tmp_path):
    """The chunk store of a setting: the same config, weights, seed and chunk size find it again; a change
    of any of them (the noise process included) is another setting, so stale chunks are never reused."""
    import copy

    from builds import exp_of

    from scorelib.builder.configs import with_overrides
    from scorelib.presets import resolve_config

    config = resolve_config("toy_gmm")
    exp = exp_of(config, mode="sample")
    net = exp.network()
    cpu = torch.device("cpu")

    def store(e, nets=(net, None), seed=1, size=10):
        return sampling.setting(e, nets, seed, size, cpu, tmp_path, "sample").store.directory

    here = store(exp)
    assert store(exp_of(config, mode="sample")) == here  # found again
    other = copy.deepcopy(net)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert store(exp, (other, None)) != here  # other weights
    assert store(exp_of(with_overrides(config, {"noise.sigma_max": 9.0}), mode="sample")) != here  # other noise
    assert store(exp, seed=2) != here and store(exp, size=11) != here
    assert store(exp_of(with_overrides(config, {"sampling.n_samples": 5}), mode="sample")) == here  # only the count
