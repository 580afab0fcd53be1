"""Sharded, resumable sampling (scorelib.sampling): peak memory against the number of samples, and the
cost of the reproducible chunked draws against the plain batched loop.

1. Peak RSS: `main.py --mode=sample` (chunks of sampling.batch_size written to disk, the .npz assembled
   piece by piece) for n_samples = 2,000 and 20,000 image-shaped samples (3×32×32 from an MLP score
   trained two steps on a fake CIFAR-10, DDIM with 2 steps so that the network costs little), beside the
   plain loop that holds every sample in one tensor (`sampling.sample_images` + `np.savez`, in its own
   process). Each run is a fresh process; its peak RSS comes from `os.wait4`.
2. Overhead: wall time of `sampling.draw` (per-chunk generators, one atomic .npz per chunk, the
   completeness check of every chunk) plus the streamed assembly, against `sampling.sample_images` (one
   generator for all batches) plus one `np.savez`, interleaved over rounds (benchmarks/_common.py);
   the table gives the median ratio and its quartiles over rounds. Cases: toy_gmm with its annealed
   Langevin (401 NFE) and the image MLP with DDIM at 2 NFE (where file writing weighs the most).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_sharded_sampling.py [--sizes 2000 20000] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import ensure_passive_omp, interleaved  # noqa: E402
from cli_helpers import write_fake_cifar10  # noqa: E402

IMAGE_ARGS = ["--config=ncsn_cifar", "--config.model.name=mlp", "--config.model.nf=16",
              "--config.model.num_res_blocks=1", "--config.sampling.method=ddim", "--config.sampling.n_steps=2",
              "--config.sampling.init=gaussian", "--config.sampling.batch_size=1000"]
TOY_ARGS = ["--config=toy_gmm", "--config.sampling.batch_size=500"]

PLAIN = """
import sys, numpy as np, torch
from pathlib import Path
from scorelib.builder import experiment
from scorelib.builder.configs import with_overrides
from scorelib.sampling import sample_images
from scorelib.sharing import load_network
net, stored, _ = load_network(sys.argv[1])
n = int(sys.argv[2])
exp = experiment(with_overrides(stored, {"sampling.batch_size": 1000}), mode="sample")
x = sample_images(exp, net.eval(), n, torch.device("cpu"), seed=1)
np.savez(Path(sys.argv[3]), samples=x.float().numpy())
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}


def _peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def _train(workdir: Path, args: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "main.py"), *args, f"--workdir={workdir}", "--config.training.n_iters=2",
           "--config.training.batch_size=8", "--config.training.snapshot_freq=2",
           "--config.training.snapshot_samples=0", "--config.training.eval_at_end=False"]
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True)


def memory_table(tmp: Path, sizes: list[int]) -> str:
    data = write_fake_cifar10(tmp / "data", n_per_batch=16)
    run = tmp / "image"
    args = [*IMAGE_ARGS, f"--config.data.root={data}"]
    _train(run, args)
    rows = ["| n_samples | sharded main.py: peak RSS (MiB) | wall (s) | plain in-memory loop: peak RSS (MiB) "
            "| wall (s) |", "|---:|---:|---:|---:|---:|"]
    for n in sizes:
        sharded = _peak_rss_mib([sys.executable, str(ROOT / "main.py"), *args, "--mode=sample",
                                 f"--workdir={tmp / f'sharded_{n}'}", f"--config.sampling.checkpoint={run}",
                                 f"--config.sampling.n_samples={n}"])
        plain = _peak_rss_mib([sys.executable, "-c", PLAIN, str(run), str(n), str(tmp / f"plain_{n}.npz")])
        rows.append(f"| {n} | {sharded[0]:.0f} | {sharded[1]:.1f} | {plain[0]:.0f} | {plain[1]:.1f} |")
    per = 3 * 32 * 32 * 4 / 2**20
    return "\n".join(rows) + f"\n\n(one sample is {per * 1024:.0f} KiB: 20,000 of them {per * 20000:.0f} MiB)"


def overhead_table(tmp: Path, reps: int) -> str:
    from scorelib import sampling
    from scorelib.builder import experiment
    from scorelib.builder.configs import with_overrides
    from scorelib.chunked import write_npz_streamed
    from scorelib.runtime import Runtime
    from scorelib.sampling import sample_images
    from scorelib.sharing import load_network

    torch.set_num_threads(1)
    data = tmp / "data"
    cases = {"toy_gmm, ALD 20 levels × 20 steps (401 NFE), n=2000, chunk 500": (TOY_ARGS, 2000, 500),
             "image MLP 3×32×32, DDIM 2 NFE, n=4000, chunk 1000": ([*IMAGE_ARGS, f"--config.data.root={data}"],
                                                                    4000, 1000)}
    rt = Runtime(0, 1, torch.device("cpu"))
    rows = ["| case | plain loop + np.savez (s) | chunked draws (s) | ratio | quartiles | chunked draws + "
            "assembly (s) | ratio | quartiles |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (args, n, chunk) in cases.items():
        run = tmp / f"ov_{abs(hash(name))}"
        _train(run, args)
        net, stored, _ = load_network(run)
        net = net.eval()
        exp = experiment(with_overrides(stored, {"sampling.batch_size": chunk}), mode="sample")
        fresh = iter(range(10**9))  # a new chunk directory per call: every call draws all chunks

        def plain(exp=exp, net=net, n=n, run=run) -> None:
            x = sample_images(exp, net, n, rt.device, seed=1)
            np.savez(run / "plain.npz", samples=x.float().numpy())

        def draws(exp=exp, net=net, n=n, run=run, fresh=fresh) -> tuple:
            drawn, cs, _ = sampling.draw(exp, (net, None, None), n, 1, rt, run / f"chunks_{next(fresh)}", "sample",
                                         progress=False)
            return drawn.store, cs

        def assembled(exp=exp, n=n, run=run, draws=draws) -> None:
            store, cs = draws()
            write_npz_streamed(run / "sharded.npz", "samples", store.iter(cs), (n, *exp.data.shape))

        wall, _ = interleaved({"plain": plain, "draws": draws, "assembled": assembled}, reps)
        cells = [f"{statistics.median(wall['plain']):.3f}"]
        for key in ("draws", "assembled"):
            ratios = sorted(s / p for s, p in zip(wall[key], wall["plain"], strict=True))
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            cells += [f"{statistics.median(wall[key]):.3f}", f"{statistics.median(ratios):.3f}",
                      f"{q[0]:.3f}–{q[2]:.3f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ensure_passive_omp()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_sharded_") as tmp:
        tmp = Path(tmp)
        print("## Peak memory of sampling (fresh process per run, chunks of 1000)\n")
        print(memory_table(tmp, args.sizes), "\n", flush=True)
        print(f"## Reproducible chunked draws against the plain batched loop ({args.reps} interleaved rounds, "
              "1 thread)\n")
        print(overhead_table(tmp, args.reps))


if __name__ == "__main__":
    main()
