"""Training throughput of every CIFAR-10 config: iterations per second of the full training step
(the config's loss, backward, clipping, Adam, EMA) at batch 8 on random 32×32 data, one config after
another in one process. On a GPU (when one is present) the same table is measured there too.

    python benchmarks/bench_training.py [--steps 3] [--batch 8] [--configs ncsn_cifar ddpm_cifar ...]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_passive_omp, markdown_table

from scorelib.builder import experiment
from scorelib.ema import ema_update

CONFIGS = ("ncsn_cifar", "ncsnv2_cifar", "ddpm_cifar", "iddpm_cifar", "adm_cifar", "ncsnpp_cifar", "ddpmpp_cifar")


def measure(name: str, batch: int, steps: int, device: torch.device) -> tuple[int, float]:
    """(parameters, median seconds per training step)."""
    config = importlib.import_module(f"configs.{name}").get_config()
    exp = experiment(config)
    torch.manual_seed(0)
    net = exp.network().to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = exp.optimizer(net.parameters())
    loss_fn = exp.loss.fresh().bind(net)
    g = torch.Generator(device).manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g, device=device)
    x = 2 * x - 1 if config.data.centered else x
    y = torch.randint(10, (batch,), generator=g, device=device) if exp.uses_labels else None
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = loss_fn(x, y, g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        ema_update(ema, net, config.model.ema_rate)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return sum(p.numel() for p in net.parameters()), statistics.median(times)


def main() -> None:
    ensure_passive_omp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        rows = []
        for name in args.configs:
            params, sec = measure(name, args.batch, args.steps, device)
            rows.append([name, f"{params / 1e6:.2f}M", f"{sec:.3f}", f"{1 / sec:.3f}"])
        print(f"\n{device.type}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.steps} steps\n")
        print(markdown_table(["config", "params", "s / step", "it/s"], rows))


if __name__ == "__main__":
    main()
