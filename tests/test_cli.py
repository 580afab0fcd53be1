"""End-to-end tests of `python main.py`: training, checkpoints, resume, bad input."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_helpers import ROOT, run_main, run_torchrun, sample_file, write_fake_cifar10

from scorelib.checkpoint import list_checkpoints, load_checkpoint

TOY = ["--config=toy_gmm", "--config.training.n_iters=60", "--config.training.snapshot_freq=30",
       "--config.training.log_freq=10", "--config.training.eval_at_end=False"]


def test_toy_config_trains_and_writes_checkpoints_and_metrics(tmp_path):
    r = run_main(*TOY, f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr
    steps = [s for s, _ in list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [30, 60]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20, 30, 40, 50, 60]
    assert {"loss", "lr", "grad_norm", "it_per_s"} <= set(lines[0])
    state = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_00000060.pt")
    assert state["step"] == 60 and {"model", "ema", "optimizer", "rng", "config"} <= set(state)
    r = run_main("--config=toy_gmm", f"--workdir={tmp_path}", "--mode=sample", "--config.sampling.n_samples=100")
    assert r.returncode == 0, r.stderr
    assert sample_file(tmp_path, "ald", 100, ".png").exists() and sample_file(tmp_path, "ald", 100).exists()


def test_fake_cifar10_end_to_end(tmp_path):
    data = write_fake_cifar10(tmp_path / "data")
    r = run_main("--config=ncsn_cifar", f"--workdir={tmp_path / 'run'}", f"--config.data.root={data}",
                 "--config.training.n_iters=2", "--config.training.batch_size=4", "--config.model.nf=8",
                 "--config.training.snapshot_freq=2", "--config.training.snapshot_samples=4",
                 "--config.sampling.n_steps_each=1", "--config.sampling.batch_size=4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_00000002.pt").exists()
    assert (tmp_path / "run" / "samples" / "step_00000002.png").exists()


def _final_weights(workdir):
    state = load_checkpoint(list_checkpoints(workdir / "checkpoints")[-1][1])
    return state["model"], state["ema"], state["step"]


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    args = ["--config=toy_gmm", "--config.training.n_iters=400", "--config.training.snapshot_freq=20",
            "--config.training.log_freq=20", "--config.training.eval_at_end=False",
            "--config.training.keep_checkpoints=50"]
    full = run_main(*args, f"--workdir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr
    victim = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, f"--workdir={victim}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(s >= 100 for s, _ in list_checkpoints(victim / "checkpoints")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(victim / "checkpoints")[-1][0]
    assert killed_at < 400, "the run finished before it could be killed"
    resumed = run_main(*args, f"--workdir={victim}")
    assert resumed.returncode == 0, resumed.stderr
    a_model, a_ema, a_step = _final_weights(tmp_path / "full")
    b_model, b_ema, b_step = _final_weights(victim)
    assert a_step == b_step == 400
    for k in a_model:
        assert torch.equal(a_model[k], b_model[k]), k
        assert torch.equal(a_ema[k], b_ema[k]), k


def test_truncated_newest_checkpoint_is_skipped(tmp_path):
    r = run_main(*TOY, f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr
    newest = tmp_path / "checkpoints" / "checkpoint_00000060.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    r = run_main(*TOY[:1], "--config.training.n_iters=90", "--config.training.snapshot_freq=30",
                 "--config.training.eval_at_end=False", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr
    # one line, not a Python warning with its source line
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("scorelib") or "Warning" in ln] == [
        f"scorelib: warning: skipping {newest}, which is truncated (1000 bytes, a zip archive without its end: a copy "
        "or write cut short); using checkpoint_00000030.pt (step 30)"]
    metrics = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics == sorted(metrics) and metrics[-1] == 90  # resumed from step 30, rewrote 31..90
    assert load_checkpoint(tmp_path / "checkpoints" / "checkpoint_00000090.pt")["step"] == 90


def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
    r = run_main(*TOY, f"--workdir={tmp_path}")
    assert r.returncode == 0
    r = run_main(*TOY[:1], "--config.training.n_iters=200", "--config.optim.lr=1e12", "--config.training.log_freq=5",
                 "--config.training.eval_at_end=False", f"--workdir={tmp_path}")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "loss became" in r.stderr and "checkpoint_00000060.pt" in r.stderr
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")][-1] == 60


@pytest.mark.parametrize("args,needle", [
    (["--config=nonexistent"], "--config: unknown config 'nonexistent' (one of: adm_cifar"),
    (["--config=toy_gmm", "--config.training.nope=3"], "training.nope: unknown config field"),
    (["--config=ncsn_cifar", "--config.data.root=/nonexistent/cifar", "--config.data.download=False"],
     "/nonexistent/cifar"),
    (["--config=toy_gmm", "--config.training.batch_size=abc"], "batch_size"),
    (["--config=toy_gmm", "--mode=sample", "--workdir=/nonexistent/run"],
     "/nonexistent/run/checkpoints: no checkpoints"),
])
def test_bad_input_gives_one_clear_line(args, needle, tmp_path):
    if not any(a.startswith("--workdir") for a in args):
        args = [*args, f"--workdir={tmp_path}"]
    r = run_main(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr


def test_image_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    r = run_main("--config=ncsnv2_celeba", f"--config.data.root={tmp_path / 'empty'}", f"--workdir={tmp_path / 'run'}")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"image folder {tmp_path / 'empty'} contains no images" in r.stderr


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "checkpoints" / "checkpoint_00000001.pt"
    bad.parent.mkdir(parents=True)
    with open(bad, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    r = run_main("--config=toy_gmm", "--mode=sample", f"--workdir={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "weights_only" not in r.stderr
    assert not marker.exists()
    assert r.stderr.splitlines() == [
        f"scorelib: {bad} holds pickled Python objects (posix.system) besides tensors and plain values; scorelib never "
        "unpickles objects that could run code (save a state_dict instead), and it is the only checkpoint there"]


def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path):
    r = run_torchrun("--config=toy_gmm", "--config.training.n_iters=40", "--config.training.snapshot_freq=20",
                     "--config.training.log_freq=10", "--config.training.eval_at_end=False", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [20, 40]
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]  # one writer: no duplicated lines
    assert r.stdout.count("trained 40 steps") == 1
    state = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_00000040.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_toy_train_eval_and_likelihood_modes(tmp_path):
    common = ["--config=toy_gmm", f"--workdir={tmp_path}", "--config.eval.n_samples=500",
              "--config.eval.batch_size=500", "--config.sampling.n_samples=500"]
    r = run_main(*common, "--config.training.n_iters=1000", "--config.training.snapshot_freq=1000")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"sliced_wasserstein", "mmd_rbf", "mean_log_density", "mean_log_density_real", "nfe"} <= set(metrics)
    # after 1000 steps the samples sit on the modes: the true samples score about -3.5, a Gaussian
    # with the data's mean and covariance -11.9, the initial N(0, 10² I) noise -246
    assert metrics["mean_log_density"] > -6.0, metrics
    assert metrics["nfe"] == 20 * 20 + 1
    r = run_main(*common, "--mode=likelihood", "--config.eval.likelihood_batches=1", "--config.eval.batch_size=50")
    assert r.returncode == 0, r.stderr
    lik = json.loads((tmp_path / "eval" / "likelihood.json").read_text())
    assert lik["likelihood_examples"] == 50 and lik["ode_nfe_mean"] > 0
    # toy data: -log2 p / dim of the 2-D points under the trained model; the exact mixture gives about 2.4
    assert 1.0 < lik["ode_bpd"] < 5.0, lik
    # eval with the likelihood included reports the same test-split bits/dim beside the sample metrics
    r = run_main(*common, "--mode=eval", "--config.eval.likelihood=True", "--config.eval.likelihood_batches=1",
                 "--config.eval.n_samples=50", "--config.eval.batch_size=50")
    assert r.returncode == 0, r.stderr
    both = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert both["n_samples"] == 50 and "sliced_wasserstein" in both
    assert both["likelihood_examples"] == 50 and both["ode_bpd"] == pytest.approx(lik["ode_bpd"], rel=1e-6)
