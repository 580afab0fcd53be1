"""Speed of the NCSN++ and DDPM++ CIFAR-10 networks on CPU, optionally against the score_sde reference.

Measures one training step (forward + backward + Adam, batch 8 by default) and inference throughput
(one network evaluation per sample, no grad) and prints a markdown table.

    python benchmarks/bench_ncsnpp.py                                  # ours, NCSN++ and DDPM++
    python benchmarks/bench_ncsnpp.py --nets ncsnpp_deep ddpmpp_deep   # the deep variants
    python benchmarks/bench_ncsnpp.py --ref /path/to/score_sde_pytorch

`--ref` takes a local checkout of yang-song/score_sde_pytorch. Its `op/` package compiles CUDA
kernels on import, so the script hands it our pure-PyTorch `upfirdn2d` (same signature and
semantics) instead; the reference timings therefore include our FIR resampling, and the comparison
measures the rest (attention, 1x1 layers, block code). With a reference, it also loads the reference
weights into our network and prints the largest relative output difference.

Times are the best of `--steps` timed iterations after `--warmup` untimed ones. "CPU" is process CPU
time (summed over threads); with `--threads 1` it is the figure to trust on a busy machine.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from scorelib.models import ncsnpp
from scorelib.models.ncsnpp import NCSNpp
from scorelib.models.ncsnpp_layers import upfirdn2d

NETS = {
    "ncsnpp": ncsnpp.NCSNPP_CIFAR10,
    "ddpmpp": ncsnpp.DDPMPP_CIFAR10,
    "ncsnpp_deep": ncsnpp.NCSNPP_DEEP_CIFAR10,
    "ddpmpp_deep": ncsnpp.DDPMPP_DEEP_CIFAR10,
}


def _time_cond(kw: dict, batch: int, g: torch.Generator) -> Tensor:
    """σ log-uniform in [0.01, 50] (Fourier / VE) or the label 999·t, t ~ U(0, 1) (positional / VP)."""
    u = torch.rand(batch, generator=g)
    if kw["embedding_type"] == "fourier":
        return 0.01 * (50 / 0.01) ** u
    return 999.0 * u


def _timeit(fn: Callable[[], object], steps: int, warmup: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call: the best of `steps` timed calls after `warmup` others."""
    for _ in range(warmup):
        fn()
    wall = cpu = float("inf")
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def _measure(model: nn.Module, kw: dict, batch: int, steps: int, warmup: int) -> tuple[float, float, float]:
    """(wall seconds per training step, CPU seconds per training step, inference samples per second)."""
    g = torch.Generator().manual_seed(0)
    size = kw["image_size"]
    x = torch.rand(batch, 3, size, size, generator=g)
    t = _time_cond(kw, batch, g)
    target = torch.randn(batch, 3, size, size, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        (model(x, t) - target).square().mean().backward()
        opt.step()

    @torch.no_grad()
    def infer() -> Tensor:
        return model(x, t)

    model.train()
    train_s, train_cpu = _timeit(train_step, steps, warmup)
    model.eval()
    infer_s, _ = _timeit(infer, steps, warmup)
    return train_s, train_cpu, batch / infer_s


# ------------------------------------------------------------------------------------ reference


def _import_reference(path: str) -> ModuleType:
    """Import score_sde's `models.ncsnpp` from a checkout, with our upfirdn2d standing in for `op`."""
    root = Path(path).expanduser().resolve()
    if not (root / "models" / "ncsnpp.py").is_file():
        raise SystemExit(f"--ref {path}: no models/ncsnpp.py found there")
    stub = ModuleType("op")
    stub.upfirdn2d = upfirdn2d  # type: ignore[attr-defined]
    sys.modules["op"] = stub
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("models.ncsnpp")
    finally:
        sys.path.remove(str(root))


def _reference_model(module: ModuleType, kw: dict) -> nn.Module:
    """The reference NCSNpp built from a ConfigDict equivalent to our kwargs."""
    import ml_collections

    cfg = ml_collections.ConfigDict()
    cfg.training = ml_collections.ConfigDict({"continuous": True})
    cfg.data = ml_collections.ConfigDict(
        {"image_size": kw["image_size"], "num_channels": kw["in_channels"], "centered": kw["centered"]}
    )
    model = {k: kw[k] for k in kw if k not in ("image_size", "in_channels", "centered")}
    model.update(sigma_min=0.01, sigma_max=50.0, num_scales=1000, nonlinearity="swish")
    model["fir_kernel"] = list(kw["fir_kernel"])
    cfg.model = ml_collections.ConfigDict(model)
    return module.NCSNpp(cfg)


def _params_in_reference_order(net: NCSNpp) -> list[nn.Parameter]:
    """Our parameters in the order score_sde registers its flat module list."""
    mods: list[nn.Module | None] = []
    if net.temb_mlp is not None:
        mods += [net.temb_mlp[0], net.temb_mlp[2]]
    mods.append(net.conv_in)
    for level in net.down:
        for block, attn in zip(level.blocks, level.attns, strict=True):
            mods += [block, attn]
        mods += [level.downsample, level.pyramid_down, level.combine]
    mods += [net.mid_block1, net.mid_attn, net.mid_block2]
    for level in net.up:
        mods += [*level.blocks, level.attn, level.pyramid_norm, level.pyramid_conv, level.pyramid_up, level.upsample]
    mods += [net.norm_out, net.conv_out]
    return [p for m in mods if m is not None for p in m.parameters()]


def _max_output_diff(ours: NCSNpp, ref: nn.Module, kw: dict) -> float:
    """Largest relative |ours - ref| with the reference's weights, perturbed (the zero init hides a lot)."""
    g = torch.Generator().manual_seed(1)
    named = list(ref.named_parameters())
    with torch.no_grad():
        for _, q in named:
            q.add_(torch.randn(q.shape, generator=g) * 0.02)
        trained = [q for name, q in named if q.requires_grad]
        mine = _params_in_reference_order(ours)
        assert len(trained) == len(mine), (len(trained), len(mine))
        for q, p in zip(trained, mine, strict=True):
            # score_sde's NIN layers store [in, out]; ours are 1x1 convs [out, in, 1, 1]
            p.copy_(q.t().reshape(p.shape) if (q.ndim == 2 and p.ndim == 4) else q)
        frozen = [q for _, q in named if not q.requires_grad]  # the Gaussian Fourier frequencies
        if ours.fourier is not None:
            ours.fourier.W.copy_(frozen[0])
    ours.eval()
    ref.eval()
    size = kw["image_size"]
    x = torch.rand(2, 3, size, size, generator=g)
    t = _time_cond(kw, 2, g)
    with torch.no_grad():
        out = ref(x, t)
        return ((ours(x, t) - out).abs().max() / out.abs().max()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed iterations per measurement (best is kept)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--nets", nargs="+", default=["ncsnpp", "ddpmpp"], choices=list(NETS))
    p.add_argument("--ref", default=None, metavar="PATH", help="score_sde_pytorch checkout")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ref_module = _import_reference(args.ref) if args.ref else None

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, CPU\n")
    rows = []
    for name in args.nets:
        kw = dict(NETS[name])
        torch.manual_seed(0)
        ours = NCSNpp(**kw)
        n_params = sum(q.numel() for q in ours.parameters())
        train_s, train_cpu, sps = _measure(ours, kw, args.batch, args.steps, args.warmup)
        rows.append((name, "scorelib", n_params, train_s, train_cpu, sps, "", ""))
        if ref_module is not None:
            torch.manual_seed(0)
            ref = _reference_model(ref_module, kw)
            diff = _max_output_diff(NCSNpp(**kw), ref, kw)
            ref_train, ref_cpu, ref_sps = _measure(ref, kw, args.batch, args.steps, args.warmup)
            ratio = f"{ref_train / train_s:.2f}× / {ref_cpu / train_cpu:.2f}× / {sps / ref_sps:.2f}×"
            n_ref = sum(q.numel() for q in ref.parameters())
            rows.append((name, "score_sde", n_ref, ref_train, ref_cpu, ref_sps, ratio, f"{diff:.1e}"))

    print("| net | code | params | train step (s) | train step CPU (s) | inference (samples/s) "
          "| ours faster (train / train CPU / infer) | max rel. output diff (same weights) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, code, n, tr, cpu, sps, ratio, diff in rows:
        print(f"| {name} | {code} | {n / 1e6:.2f}M | {tr:.2f} | {cpu:.2f} | {sps:.2f} | {ratio} | {diff} |")


if __name__ == "__main__":
    main()
