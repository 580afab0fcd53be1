"""Speed of scorelib's DDPM U-Net against the DDIM authors' PyTorch port of the same network.

Measures, for the DDPM CIFAR-10 network (35.7M parameters):
  * a training step (forward + ε-MSE backward + Adam), batch 8 by default, in train mode (dropout 0.1);
  * inference throughput (samples/s) of one eval-mode forward under `torch.inference_mode`.
Repetitions of the two implementations are interleaved and the median is reported, so drifting
clock speed or background load hits both alike; CPU time is printed beside wall time because it
is the steadier of the two when other processes share the cores. On a busy machine set
OMP_WAIT_POLICY=PASSIVE (or pass `--threads 1`): spinning OpenMP threads that lose their core
make every parallel op wait, which slows small ops by up to 100x and swamps the comparison.
Before timing, the reference's weights are loaded into ours and the outputs compared (the two
must be the same function; the parameter names agree).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_ddpm_unet.py --ddim-repo /path/to/ermongroup/ddim

Without `--ddim-repo` (a local checkout of github.com/ermongroup/ddim) only ours is timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from scorelib.models.ddpm_unet import DDPMUNet

CIFAR10 = {
    "ch": 128,
    "ch_mult": (1, 2, 2, 2),
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "dropout": 0.1,
    "resamp_with_conv": True,
    "image_size": 32,
    "in_channels": 3,
}


def reference_model(ddim_repo: str, kw: dict) -> nn.Module:
    """`models.diffusion.Model` from a checkout of ermongroup/ddim, built from a minimal config."""
    sys.path.insert(0, str(Path(ddim_repo).resolve()))
    from models.diffusion import Model  # type: ignore[import-not-found]

    ns = types.SimpleNamespace
    config = ns(
        model=ns(
            type="simple",
            ch=kw["ch"],
            out_ch=kw["in_channels"],
            ch_mult=list(kw["ch_mult"]),
            num_res_blocks=kw["num_res_blocks"],
            attn_resolutions=list(kw["attn_resolutions"]),
            dropout=kw["dropout"],
            in_channels=kw["in_channels"],
            resamp_with_conv=kw["resamp_with_conv"],
        ),
        data=ns(image_size=kw["image_size"]),
        diffusion=ns(num_diffusion_timesteps=1000),
    )
    return Model(config)


def train_step_fn(model: nn.Module, batch: int, size: int, channels: int) -> Callable[[], None]:
    """A closure running one forward + ε-MSE backward + Adam step on fixed random data."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g)
    eps = torch.randn(batch, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (model(x, t) - eps).square().mean()
        loss.backward()
        opt.step()

    return step


def infer_fn(model: nn.Module, batch: int, size: int, channels: int) -> Callable[[], None]:
    """A closure running one eval-mode forward pass under inference_mode."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)

    def fwd() -> None:
        with torch.inference_mode():
            model(x, t)

    return fwd


def interleaved_median(fns: dict[str, Callable[[], None]], reps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, CPU seconds) per call of each closure, alternating every repetition.

    CPU time (`time.process_time`, all threads of this process) is reported beside wall time
    because it is far less sensitive to other processes competing for the same cores.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(reps):
        order = list(fns.items()) if r % 2 == 0 else list(reversed(fns.items()))
        for name, fn in order:
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddim-repo", default=None, help="local checkout of ermongroup/ddim")
    parser.add_argument("--batch", type=int, default=8, help="training batch size")
    parser.add_argument("--infer-batch", type=int, default=16, help="inference batch size")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per implementation")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--channels-last", action="store_true", help="both models in channels_last layout")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kw = dict(CIFAR10)
    size, channels = kw["image_size"], kw["in_channels"]
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"scorelib": DDPMUNet(**kw)}
    if args.ddim_repo:
        ref = reference_model(args.ddim_repo, kw)
        models["ddim (ermongroup)"] = ref
        # Same weights -> the same function, up to float reassociation.
        models["scorelib"].load_state_dict(ref.state_dict())
        x = torch.randn(4, channels, size, size)
        t = torch.tensor([0, 10, 500, 999])
        with torch.no_grad():
            diff = (models["scorelib"].eval()(x, t) - ref.eval()(x, t)).abs().max().item()
        print(f"max |ours - reference| with shared weights (eval): {diff:.2e}")
    if args.channels_last:
        for m in models.values():
            m.to(memory_format=torch.channels_last)
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}

    print(
        f"\nDDPM CIFAR-10 U-Net, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"train batch {args.batch}, inference batch {args.infer_batch}, "
        f"median of {args.reps} interleaved reps"
    )
    for m in models.values():
        m.train()
    train = interleaved_median(
        {name: train_step_fn(m, args.batch, size, channels) for name, m in models.items()},
        args.reps,
        args.warmup,
    )
    for m in models.values():
        m.eval()
    infer = interleaved_median(
        {name: infer_fn(m, args.infer_batch, size, channels) for name, m in models.items()},
        args.reps,
        args.warmup,
    )

    ours_train, ours_infer = train["scorelib"], infer["scorelib"]
    print(
        "\n| implementation | params | train step wall (s) | train step CPU (s) | train CPU ÷ ours "
        "| inference samples/s (wall) | samples per CPU-s | inference CPU ÷ ours |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        (tw, tc), (iw, ic) = train[name], infer[name]
        print(
            f"| {name} | {n_params[name]:,} | {tw:.2f} | {tc:.2f} | {tc / ours_train[1]:.2f} "
            f"| {args.infer_batch / iw:.2f} | {args.infer_batch / ic:.2f} | {ic / ours_infer[1]:.2f} |"
        )
    print(
        "\n'CPU ÷ ours' = CPU seconds per call relative to scorelib's (> 1: more compute than ours). "
        "CPU time is the steadier measure on a shared machine; wall time is what a user waits."
    )


if __name__ == "__main__":
    main()
