"""Speed of the improved-DDPM CIFAR-10 and ADM CIFAR-10 U-Nets on CPU, optionally against the reference.

Measures one training step (forward + backward + Adam, batch 8 by default) and inference
throughput (one network evaluation per sample, no grad) and prints a markdown table.

    PYTHONPATH=. python benchmarks/bench_adm.py          # ours only (or pip install -e . first)
    PYTHONPATH=. python benchmarks/bench_adm.py --ref /path/to/guided-diffusion [--ref /path/to/improved-diffusion]

`--ref` takes a local checkout of openai/guided-diffusion (builds both nets) or
openai/improved-diffusion (builds the improved-DDPM net only). With a reference, the script also
loads the reference weights into our network and prints the largest output difference.
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

from scorelib.models import adm

NETS = {"iddpm_cifar10": adm.IDDPM_CIFAR10, "adm_cifar10": adm.ADM_CIFAR10}


def _import_reference(path: str) -> tuple[str, ModuleType]:
    """Import `<pkg>.unet` from a checkout of improved-diffusion or guided-diffusion."""
    root = Path(path).expanduser().resolve()
    for pkg in ("guided_diffusion", "improved_diffusion"):
        if (root / pkg / "unet.py").is_file():
            sys.path.insert(0, str(root))
            try:
                return pkg, importlib.import_module(f"{pkg}.unet")
            finally:
                sys.path.remove(str(root))
    raise SystemExit(f"--ref {path}: no guided_diffusion/ or improved_diffusion/ package found there")


def _reference_model(pkg: str, unet: ModuleType, kw: dict) -> nn.Module | None:
    """The reference UNetModel equivalent to our kwargs (None if that codebase cannot build it)."""
    size = kw["image_size"]
    common = dict(
        in_channels=3,
        model_channels=kw["model_channels"],
        out_channels=6 if kw.get("learn_sigma") else 3,
        num_res_blocks=kw["num_res_blocks"],
        attention_resolutions=tuple(size // r for r in kw["attention_resolutions"]),
        dropout=kw.get("dropout", 0.0),
        channel_mult=kw["channel_mult"],
        num_classes=(kw["num_classes"] + int(kw.get("null_label", False))) if kw.get("num_classes") else None,
        num_heads=kw.get("num_heads", 4),
        use_scale_shift_norm=kw.get("use_scale_shift_norm", True),
    )
    if pkg == "guided_diffusion":
        return unet.UNetModel(
            image_size=size,
            num_head_channels=kw.get("num_head_channels", -1),
            resblock_updown=kw.get("resblock_updown", False),
            use_new_attention_order=kw.get("use_new_attention_order", False),
            **common,
        )
    if kw.get("resblock_updown") or kw.get("num_head_channels", -1) != -1:
        return None  # improved-diffusion has neither residual up/down sampling nor per-head widths
    return unet.UNetModel(**common)


def _timeit(fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Fastest of `steps` timed calls (the minimum is the least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _measure(model: nn.Module, kw: dict, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per training step, inference samples per second)."""
    g = torch.Generator().manual_seed(0)
    size = kw["image_size"]
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 4000, (batch,), generator=g)
    y = torch.randint(0, kw["num_classes"], (batch,), generator=g) if kw.get("num_classes") else None
    target = torch.randn(batch, 6 if kw.get("learn_sigma") else 3, size, size, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x, t, y) if y is not None else model(x, t)
        (out - target).square().mean().backward()
        opt.step()

    @torch.no_grad()
    def infer() -> Tensor:
        return model(x, t, y) if y is not None else model(x, t)

    model.train()
    train_s = _timeit(train_step, steps, warmup)
    model.eval()
    infer_s = _timeit(infer, steps, warmup)
    return train_s, batch / infer_s


def _max_output_diff(ours: nn.Module, ref: nn.Module, kw: dict) -> float:
    """Largest |ours - ref| with the reference's weights, randomised (the zero init hides everything)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for q in ref.parameters():
            q.copy_(torch.randn(q.shape, generator=g) * 0.02)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    ref.eval()
    size = kw["image_size"]
    x = torch.randn(2, 3, size, size, generator=g)
    t = torch.tensor([10, 3000])
    args = (x, t, torch.tensor([0, 1])) if kw.get("num_classes") else (x, t)
    with torch.no_grad():
        out = ref(*args)
        return ((ours(*args) - out).abs().max() / out.abs().max()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed iterations per measurement (the fastest is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--ref", action="append", default=[], metavar="PATH", help="reference checkout")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    refs = [_import_reference(path) for path in args.ref]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, CPU\n")
    rows = []
    for name in args.nets:
        kw = dict(NETS[name])
        torch.manual_seed(0)
        ours = adm.ADMUNet(**kw)
        n_params = sum(q.numel() for q in ours.parameters())
        train_s, sps = _measure(ours, kw, args.batch, args.steps, args.warmup)
        rows.append((name, "scorelib", n_params, train_s, sps, "", ""))
        for pkg, unet in refs:
            torch.manual_seed(0)
            ref = _reference_model(pkg, unet, kw)
            if ref is None:
                continue
            diff = _max_output_diff(adm.ADMUNet(**kw), ref, kw)
            ref_train, ref_sps = _measure(ref, kw, args.batch, args.steps, args.warmup)
            rows.append((name, pkg, sum(q.numel() for q in ref.parameters()), ref_train, ref_sps,
                         f"{ref_train / train_s:.2f}× / {sps / ref_sps:.2f}×", f"{diff:.1e}"))  # fmt: skip

    print("| net | code | params | train step (s) | inference (samples/s) | ours faster (train / infer) "
          "| max rel. output diff (same weights) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, code, n, tr, sps, ratio, diff in rows:
        print(f"| {name} | {code} | {n / 1e6:.2f}M | {tr:.3f} | {sps:.1f} | {ratio} | {diff} |")


if __name__ == "__main__":
    main()
