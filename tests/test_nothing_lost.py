"""Nothing lost, through the command line: finished samples survive every later sample command (and
`--overwrite` redraws only its own setting's), a workdir has one writer at a time (a second is refused
while the first lives and admitted once it is killed, even by SIGKILL), and a training stopped by SIGTERM
before its first snapshot keeps the step it reached and resumes to the weights of an uninterrupted run,
bit for bit. (Bad input of every kind: tests/test_bad_input_cli.py.)"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from builds import network
from cli_helpers import ROOT, run_main, sample_file

from scorelib.checkpoint import config_to_json, list_checkpoints, load_checkpoint, save_checkpoint
from scorelib.presets import resolve_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder`: (mtime_ns, SHA-256 of its bytes)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A toy_gmm workdir holding one checkpoint (a new network: the samples only need to be reproducible), and
    a config file of other data (grid25)."""
    workdir = tmp_path_factory.mktemp("toy_run")
    config = resolve_config("toy_gmm")
    weights = network(config).state_dict()
    save_checkpoint(workdir / "checkpoints" / "checkpoint_00000001.pt",
                    {"model": weights, "ema": weights, "config": config_to_json(config), "step": 1})
    (workdir / "grid.py").write_text("from configs.toy_gmm import get_config as toy\n\n\ndef get_config():\n"
                                     "    c = toy()\n    c.data.toy = 'grid25'\n    return c\n")
    return workdir


def test_finished_samples_survive_other_settings_and_overwrite_redraws_only_its_own(toy_checkpoint, tmp_path):
    workdir = tmp_path / "run"
    common = ["--mode=sample", f"--config.sampling.checkpoint={toy_checkpoint}", "--config.sampling.n_samples=40",
              "--config.sampling.batch_size=20", f"--workdir={workdir}"]
    first = run_main("--config=toy_gmm", *common)
    assert first.returncode == 0, first.stderr
    kept = _files(workdir / "samples")
    assert len(kept) == 5  # the setting's store (manifest, 2 chunks) and its .npz and .png
    # another setting (2 Langevin steps per level), from a config of other data whose data field is given on the
    # command line: admitted (the stored model's data is sampled), in its own store and file
    other = ["--config=" + str(toy_checkpoint / "grid.py"), "--config.data.toy=grid25",
             "--config.sampling.n_steps_each=2", *common]
    second = run_main(*other)
    assert second.returncode == 0, second.stderr
    assert "2 of 2 chunks drawn by 1 process(es), 0 found finished" in second.stdout
    after = _files(workdir / "samples")
    assert {k: after[k] for k in kept} == kept and len(after) == 10  # the first setting's files untouched
    theirs = {k: v for k, v in after.items() if k not in kept}
    assert sample_file(workdir, "ald-41nfe").exists() and sample_file(workdir, "ald-401nfe").exists()
    # --overwrite draws the second setting again, and only it
    again = run_main(*other, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert "2 of 2 chunks drawn by 1 process(es), 0 found finished" in again.stdout
    last = _files(workdir / "samples")
    assert {k: last[k] for k in kept} == kept
    assert set(last) == set(after)
    for name, (mtime, digest) in theirs.items():
        assert last[name][0] != mtime, name  # written again
        if name.endswith(".npz"):
            assert last[name][1] == digest, name  # the same samples: they depend on (seed, index, chunk) only


def _final_weights(workdir: Path) -> tuple[dict, dict, int]:
    state = load_checkpoint(list_checkpoints(workdir / "checkpoints")[-1][1])
    return state["model"], state["ema"], state["step"]


def test_one_writer_per_workdir_and_sigterm_keeps_the_step_reached(tmp_path):
    args = ["--config=toy_gmm", "--config.training.n_iters=150", "--config.training.snapshot_freq=150",
            "--config.training.log_freq=10", "--config.training.eval_at_end=False"]
    # the uninterrupted run (with a checkpoint every 0.1 s of wall time, which must not change the weights)
    full = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, "--config.training.checkpoint_minutes=0.002",
                             f"--workdir={tmp_path / 'full'}"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    workdir = tmp_path / "victim"
    # a first writer holding the workdir's lock as every run does; a second run is refused while it lives
    code = ("import sys, time\nfrom scorelib.runtime import workdir_lock\nwith workdir_lock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        refused = run_main(*args, f"--workdir={workdir}")
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the OS drops the lock
        holder.wait()
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        f"scorelib: {workdir}: another run is writing here (pid {holder.pid} on {socket.gethostname()}); wait for it "
        "to finish, or use another --workdir"]
    assert [p.name for p in workdir.iterdir()] == [".lock"]  # the refused run wrote nothing
    # admitted now; stopped by SIGTERM before its first snapshot (step 150)
    victim = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, f"--workdir={workdir}"], cwd=ROOT,
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 300
    while victim.poll() is None and time.time() < deadline and not re.search(r'"step": [2-9]\d\b',
                                                                            _text(metrics)):
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)
    _, stderr = victim.communicate(timeout=300)
    assert victim.returncode == 130, stderr
    ours = [ln for ln in stderr.splitlines() if ln.startswith("scorelib:")]
    assert len(ours) == 1 and "Traceback" not in stderr, stderr
    step = int(re.fullmatch(r"scorelib: interrupted by signal 15 at step (\d+); the checkpoint of step \1 is in "
                            rf"{re.escape(str(workdir / 'checkpoints'))}: rerun the same command to resume",
                            ours[0]).group(1))
    assert 20 <= step < 150 and [s for s, _ in list_checkpoints(workdir / "checkpoints")] == [step]
    resumed = run_main(*args, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr
    assert full.wait(timeout=600) == 0, full.stderr.read()
    full.stderr.close()
    steps = [s for s, _ in list_checkpoints(tmp_path / "full" / "checkpoints")]
    assert steps[-1] == 150 and len(steps) == 3 and steps[0] < 150  # wall-clock checkpoints, the last 3 kept
    a_model, a_ema, a_step = _final_weights(tmp_path / "full")
    b_model, b_ema, b_step = _final_weights(workdir)
    assert a_step == b_step == 150
    for k in a_model:
        assert torch.equal(a_model[k], b_model[k]), k
        assert torch.equal(a_ema[k], b_ema[k]), k


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
