"""Helpers shared by the benchmark scripts: a passive OpenMP wait policy, interleaved timing with
medians, markdown tables, and the sharp Gaussian-mixture problems of the solver benchmarks."""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from _peers import k_diffusion_sampling

from scorelib.analytic import GaussianMixture


@functools.cache
def k_sampling():
    """`k_diffusion.sampling` or None, loaded once per process: a second `_peers.k_diffusion_sampling()`
    call raises ValueError, because `importlib.util.find_spec` meets the placeholder `k_diffusion`
    package (no __spec__) that the first call left in sys.modules."""
    return k_diffusion_sampling()


def ensure_passive_omp() -> None:
    """Re-run this script with OMP_WAIT_POLICY=PASSIVE unless it is set. The policy is read once,
    when the OpenMP runtime loads, so it cannot be changed from inside a process that has imported
    torch. Spinning OpenMP threads that lose their core to another process stall every parallel op
    and make timings of small ops meaningless on a shared machine."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def interleaved(fns: dict[str, Callable[[], object]], reps: int,
                warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and calling-thread CPU seconds of each function over `reps` rounds. Every round calls
    every function once, in an order rotated from round to round, so drifting load or clock speed hits
    all of them alike and ratios can be taken within a round. The thread CPU time leaves out the time
    the thread waited for a core, the steadier measure on a shared machine when torch runs one thread."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            c0, t0 = time.thread_time(), time.perf_counter()
            fns[name]()
            t1, c1 = time.perf_counter(), time.thread_time()
            wall[name].append(t1 - t0)
            cpu[name].append(c1 - c0)
    return wall, cpu


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[r] / den[r] (both measured in the same round)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def ratio_quartiles(num: Sequence[float], den: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles over rounds of num[r] / den[r]: the round-to-round spread."""
    q = statistics.quantiles([a / b for a, b in zip(num, den, strict=True)], n=4)
    return q[0], q[2]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; `align` is one character per column, 'l' or 'r' (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def sharp_mixture(d: int, k: int, std: float, seed: int, scale: float = 1.0) -> GaussianMixture:
    """k isotropic components N(scale·μ_j, (scale·std)² I) with the μ_j uniform on the unit sphere of
    R^d, drawn from `torch.Generator().manual_seed(seed)` (the same construction as tests/oracles.py)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    means = means / means.norm(dim=1, keepdim=True)
    return GaussianMixture.isotropic(scale * means, scale * std)
