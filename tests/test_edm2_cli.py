"""EDM2's tools through the CLI, end to end on a tiny edm2_digits run: power-EMA snapshots written during
training, `--mode=phema` reconstructing an untracked σ_rel from them (equal to `ema.posthoc_ema` of the
same snapshots, and loadable by the run's network), and sampling that checkpoint with autoguidance by an
early checkpoint of the same run, with and without a guidance interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_main

from scorelib.checkpoint import load_checkpoint, phema_snapshots
from scorelib.ema import posthoc_ema

TINY = ["--config=edm2_digits", "--config.model.nf=8", "--config.model.num_head_channels=8",
        "--config.model.logvar_channels=8", "--config.training.batch_size=8", "--config.training.n_iters=6",
        "--config.training.snapshot_freq=3", "--config.training.phema_snapshot_freq=1",
        "--config.training.snapshot_samples=0", "--config.training.eval_at_end=False",
        "--config.training.log_freq=3", "--config.optim.warmup=0", "--config.sampling.n_steps=3",
        "--config.sampling.n_samples=4", "--config.sampling.batch_size=4", "--config.device=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("edm2") / "run"
    r = run_main(*TINY, f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr
    return workdir


def test_phema_mode_writes_the_reconstructed_ema(run: Path) -> None:
    r = run_main(*TINY, "--mode=phema", "--config.phema.sigma_rel=0.07", f"--workdir={run}")
    assert r.returncode == 0, r.stderr
    out = run / "phema" / "ema-0.070.pt"
    state = load_checkpoint(out)
    snaps = phema_snapshots(run)
    assert sorted({s.step for s in snaps}) == [1, 2, 3, 4, 5, 6] and len({s.gamma for s in snaps}) == 2  # 2 profiles
    want = posthoc_ema(snaps, 0.07)
    assert state["step"] == 6 and set(state["ema"]) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(state["ema"][k], v, rtol=0, atol=0)


def _samples(workdir: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p)["samples"] for p in sorted((workdir / "samples").glob("heun-*-n4.npz"))}


def test_autoguidance_by_an_early_step_with_and_without_an_interval(run: Path, tmp_path: Path) -> None:
    ckpt, guide = run / "checkpoints" / "checkpoint_00000006.pt", run / "checkpoints" / "checkpoint_00000003.pt"
    out = tmp_path / "sampled"
    common = [*TINY, "--mode=sample", f"--checkpoint={ckpt}", f"--workdir={out}"]
    plain = run_main(*common)
    assert plain.returncode == 0, plain.stderr
    auto = [*common, "--config.sampling.guidance=auto", f"--config.sampling.guide_checkpoint={guide}",
            "--config.sampling.guidance_scale=2.0"]
    guided = run_main(*auto)
    assert guided.returncode == 0, guided.stderr
    interval = run_main(*auto, "--config.sampling.guidance_interval=(0.3, 3.0)")
    assert interval.returncode == 0, interval.stderr
    files = _samples(out)
    assert len(files) == 3  # three settings, three files: none replaced another
    nfes = sorted(int(name.split("-")[1].removesuffix("nfe")) for name in files)
    assert nfes == [5, 5, 5]  # Heun on 3 levels: 5 score evaluations (a guided one runs both networks)
    a, b, c = files.values()
    assert not np.allclose(a, b) and not np.allclose(b, c) and not np.allclose(a, c)
    for x in files.values():
        assert x.shape == (4, 1, 8, 8) and np.isfinite(x).all()
