"""Helpers for end-to-end tests of main.py: run it in a subprocess, write fake data sets."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args: str, timeout: float = 600, env: dict[str, str] | None = None,
             memory_limit_gib: float | None = None) -> subprocess.CompletedProcess:
    """main.py with `args` in a subprocess (one thread); `memory_limit_gib` caps its address space (ulimit -v),
    so a test of an allocation failure cannot take the machine's memory even if the allocation were granted."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    command = [sys.executable, str(ROOT / "main.py"), *args]
    if memory_limit_gib is not None:
        command = ["/bin/sh", "-c", f'ulimit -v {int(memory_limit_gib * 2**20)} && exec "$@"', "sh", *command]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def free_port() -> int:
    """A port nothing listens on now (fixed ports collide when several test runs share a machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(*args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """main.py under `torch.distributed.run` with `nproc` CPU processes (gloo) on a free port."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           str(ROOT / "main.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def write_fake_cifar10(root: Path, n_per_batch: int = 16, seed: int = 0) -> Path:
    """A CIFAR-10 directory in the official python-pickle layout (cifar-10-batches-py/data_batch_1..5,
    test_batch, batches.meta) with random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n_per_batch).tolist(),
                 b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)], b"num_vis": 3072}, f, protocol=2)
    return root


def sample_file(workdir: Path, method: str, n: int | None = None, suffix: str = ".npz") -> Path:
    """The one output of `--mode=sample` with `method` in WORKDIR/samples (named <method>-<nfe>-<setting>-n<N>)."""
    found = sorted((Path(workdir) / "samples").glob(f"{method}-*-n{n if n is not None else '*'}{suffix}"))
    assert len(found) == 1, found
    return found[0]


def chunk_dir(workdir: Path, method: str, where: str = "samples") -> Path:
    """The one chunk store of `method` in WORKDIR/samples (or WORKDIR/eval)."""
    found = [p for p in (Path(workdir) / where).glob(f"{method}-*") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]
