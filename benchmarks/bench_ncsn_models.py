"""Speed of the NCSN and NCSNv2 score networks on this machine.

Prints markdown tables of the time of one training step (forward, backward, Adam update) and
of inference throughput (samples/s, no grad), at the CIFAR-10 setting (3×32×32, ngf=128) by
default; ``--digits`` adds the 8×8, 1-channel setting of the digits demo (batch 128, ngf 32/64).

    PYTHONPATH=. python benchmarks/bench_ncsn_models.py [--batch 8] [--steps 2] [--threads N] [--digits]

On a CPU shared with other jobs, pass ``--threads 1``: with more OpenMP threads than free cores
these many-small-kernel networks slow down several-fold.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from scorelib.models.ncsn import NCSN
from scorelib.models.ncsnv2 import NCSNv2


def _make(kind: str, channels: int, size: int, ngf: int) -> nn.Module:
    if kind == "NCSN":
        return NCSN(channels=channels, image_size=size, ngf=ngf, num_classes=10)
    elif kind == "NCSNv2":
        return NCSNv2(channels=channels, image_size=size, ngf=ngf)
    raise ValueError(kind)


def _cond(kind: str, batch: int) -> Tensor:
    if kind == "NCSN":
        return torch.randint(0, 10, (batch,))
    return torch.exp(torch.empty(batch).uniform_(-4.6, 0.0))  # σ in [0.01, 1]


def _time(fn, steps: int) -> tuple[float, float]:
    """Mean wall-clock and process CPU seconds per call, after one warm-up call."""
    fn()  # warm-up: allocator, oneDNN primitive caches
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def bench(kind: str, channels: int, size: int, ngf: int, batch: int, steps: int) -> dict[str, float]:
    """Training-step time (wall and process CPU, ms) and inference samples/s for one configuration."""
    torch.manual_seed(0)
    model = _make(kind, channels, size, ngf)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, channels, size, size)
    cond = _cond(kind, batch)
    target = torch.randn_like(x)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (model(x, cond) - target).square().mean()
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad():
            model(x, cond)

    step_s, step_cpu = _time(train_step, steps)
    infer_s, _ = _time(infer, steps)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "step_ms": 1e3 * step_s,
        "step_cpu_ms": 1e3 * step_cpu,
        "infer_sps": batch / infer_s,
    }


def _table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}\n")
    print("| model | params | train step, wall (ms) | train step, CPU (ms) | inference (samples/s) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['params'] / 1e6:.2f}M | {r['step_ms']:.0f} | {r['step_cpu_ms']:.0f} "
            f"| {r['infer_sps']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="batch size at the CIFAR-10 setting")
    parser.add_argument("--steps", type=int, default=2, help="timed repetitions after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--digits", action="store_true", help="also time 8×8 digits (batch 128)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU"

    rows = [(kind, bench(kind, 3, 32, 128, args.batch, args.steps)) for kind in ("NCSN", "NCSNv2")]
    _table(f"CIFAR-10 setting: 3×32×32, ngf=128, batch {args.batch} ({env})", rows)

    if args.digits:
        rows = [
            (f"{kind} ngf={ngf}", bench(kind, 1, 8, ngf, 128, max(args.steps, 3)))
            for kind in ("NCSNv2", "NCSN")
            for ngf in (32, 64)
        ]
        _table(f"Digits setting: 1×8×8, batch 128 ({env})", rows)


if __name__ == "__main__":
    main()
