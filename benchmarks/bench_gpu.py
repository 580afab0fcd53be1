"""Device readiness: on one device, a few training steps of every config (bf16 autocast and torch.compile
where the config asks for them, as the training loop does), every sampler on one batch, a probability-flow
likelihood and the FID pipeline (Inception features + Fréchet distance), each timed on that device.
Prints one table: iterations/s (training), samples/s (sampling, likelihood, FID) and peak memory.

    python benchmarks/bench_gpu.py [--device cuda] [--configs ddpm_cifar ...] [--batch 16] [--steps 5]
    python benchmarks/bench_gpu.py --device cpu --tiny     # the CPU smoke run (tests/test_bench_gpu.py)

`--tiny` shrinks every network (32 channels, one residual block, no attention), images to ≤ 16 px where
the architecture allows, and the step counts, so that the whole table runs on a CPU in seconds and CI
keeps the script working. Networks have random weights: the numbers are speed, not quality. Without
the FID Inception weights (`$SCORELIB_INCEPTION`) the FID row runs the same network with random weights.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table

from scorelib.bench import PeakMemory
from scorelib.builder import ConfigError, experiment
from scorelib.ema import ema_update
from scorelib.likelihood import log_likelihood

CONFIGS = ("toy_gmm", "ncsn_digits", "ncsn_mnist", "ncsn_cifar", "ncsnv2_cifar", "ncsnv2_celeba", "ddpm_cifar",
           "iddpm_cifar", "adm_cifar", "ncsnpp_cifar", "ddpmpp_cifar", "edm_cifar", "edm_cifar_ve", "edm_digits",
           "edm2_digits")
SAMPLERS = ("ald", "pc", "ddpm", "ddim", "ode", "heun", "dpm_solver", "unipc", "fast")


def load_config(name: str, tiny: bool) -> Any:
    """The config, shrunk with `tiny` (same code paths, small sizes)."""
    c = importlib.import_module(f"configs.{name}").get_config()
    if not tiny:
        return c
    with c.unlocked():
        c.model.nf, c.model.num_res_blocks, c.model.attn_resolutions = 32, 1, ()
        c.model.ch_mult = tuple(c.model.ch_mult)[:2]
        c.model.num_head_channels = -1
        if c.data.dataset != "toy" and c.model.name not in ("ncsn", "ncsnv2"):  # RefineNets need their size
            # random inputs of any size: an image folder's shape rule (the data set itself is never read)
            c.data.dataset, c.data.image_size = "folder", min(c.data.image_size, 16)
        if c.noise.kind == "ddpm":
            c.noise.num_scales = min(c.noise.num_scales, 100)
            c.sampling.n_steps = min(c.sampling.n_steps, c.noise.num_scales)
        if c.noise.kind == "ve":
            c.noise.num_scales = min(c.noise.num_scales, 10)
    return c


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP = 1  # untimed calls before timing (kernels, allocators, torch.compile); the tiny run uses 0


def timed(device: torch.device, fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """(median seconds per call after WARMUP untimed calls, peak memory in MiB over the timed calls)."""
    for _ in range(WARMUP):
        fn()
    _sync(device)
    times = []
    with PeakMemory(device) as mem:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], mem.peak


def training_row(name: str, config: Any, device: torch.device, batch: int, steps: int) -> list[Any]:
    """Training steps as the training loop takes them: the loss under bf16 autocast on CUDA when
    training.amp, torch.compile when training.compile, backward, clipping, Adam, EMA."""
    exp = experiment(config)
    t = exp.f.training
    torch.manual_seed(0)
    net = exp.network().to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = exp.optimizer(net.parameters())
    model = torch.compile(net) if t.compile else net
    objective = exp.loss.fresh().bind(model)  # the σ-space wrapper made once, as the training loop does
    amp = t.amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    g = torch.Generator(device).manual_seed(0)
    shape = (batch, *exp.data.shape)
    x = torch.rand(shape, generator=g, device=device)
    x = 2 * x - 1 if exp.data.centered else x
    y = torch.randint(exp.data.num_classes, (batch,), generator=g, device=device) if exp.uses_labels else None
    clip = exp.f.optim.grad_clip if exp.f.optim.grad_clip > 0 else float("inf")

    def step() -> None:
        with autocast:
            loss = objective(x, y, g).float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        ema_update(ema, net, exp.f.model.ema_rate)

    sec, peak = timed(device, step, steps)
    flags = "+".join(f for f, on in (("bf16", amp), ("compile", t.compile)) if on) or "fp32"
    return [name, "train", flags, f"{1 / sec:.2f} it/s", "", f"{peak:.0f}"]


def sampler_config(config: Any, method: str, tiny: bool) -> Any:
    """The config set to run `method` with few steps (one batch, timing only)."""
    c = copy.deepcopy(config)
    n = 4 if tiny else 20
    with c.unlocked():
        c.sampling.method, c.sampling.n_steps, c.sampling.n_steps_each = method, n, 1
        c.sampling.rtol = c.sampling.atol = 1e-2 if tiny else 1e-3
        if method == "ald" and c.noise.kind == "ve":
            c.noise.num_scales = n
        if method == "ddpm" and c.sampling.variance == "learned" and not c.model.learn_sigma:
            c.sampling.variance = "large"
        if method == "pc" and c.noise.kind == "subvp":
            c.sampling.predictor = "euler_maruyama"
    return c


def sampler_rows(name: str, config: Any, device: torch.device, batch: int, tiny: bool,
                 samplers: tuple[str, ...] = SAMPLERS) -> list[list[Any]]:
    """Every sampler on one batch of the config's (random-weight) network."""
    exp = experiment(config, mode="sample")
    net = exp.network().to(device).eval()
    score = exp.wrap(net).eval()
    shape = (batch, *exp.data.shape)
    y = torch.zeros(batch, dtype=torch.long, device=device) if exp.guidance.conditional else None
    rows = []
    for method in samplers:
        try:
            c = experiment(sampler_config(config, method, tiny), mode="sample")
            if problem := c.sampler.problem():
                raise ConfigError(problem)
            sample, guided = c.sampler, c.guidance.guided(score, y)
        except ConfigError as err:  # a sampler this config's noise process does not have
            rows.append([name, f"sample {method}", "-", "n/a", str(err).split(";")[0][:60], ""])
            continue
        nfe = sample.nfe

        def run(sample: Callable[..., torch.Tensor] = sample, guided: Any = guided) -> torch.Tensor:
            with torch.no_grad():
                return sample(guided, shape, torch.Generator(device).manual_seed(0), device)

        sec, peak = timed(device, run, 1)
        rows.append([name, f"sample {method}", f"NFE {nfe if nfe >= 0 else 'adaptive'}",
                     f"{batch / sec:.2f} samples/s", "", f"{peak:.0f}"])
    return rows


def likelihood_row(name: str, config: Any, device: torch.device, batch: int, tiny: bool) -> list[Any]:
    """The probability-flow log-likelihood (Hutchinson, dopri5) of one batch."""
    exp = experiment(config, mode="likelihood")
    net = exp.network().to(device).eval()
    score = exp.wrap(net).eval()
    if exp.guidance.conditional:
        base, labels = score, torch.zeros(batch, dtype=torch.long, device=device)
        score = lambda x, s: base(x, s, y=labels)  # noqa: E731
    sigma_max, sigma_min = exp.noise.likelihood_range
    x = torch.rand((batch, *exp.data.shape), generator=torch.Generator(device).manual_seed(0), device=device)
    tol = 1e-2 if tiny else 1e-3
    nfe = 0

    def run() -> None:
        nonlocal nfe
        _, nfe = log_likelihood(score, x, sigma_max, sigma_min, rtol=tol, atol=tol, return_nfe=True,
                                generator=torch.Generator(device).manual_seed(1))

    try:
        sec, peak = timed(device, run, 1)
    except AssertionError as err:  # torchdiffeq's "underflow in dt": random weights can make the ODE stiff
        return [name, "likelihood", f"tol {tol:g}", "n/a", f"dopri5 failed on random weights: {err}", ""]
    return [name, "likelihood", f"NFE {nfe}, tol {tol:g}", f"{batch / sec:.2f} samples/s", "", f"{peak:.0f}"]


def fid_row(device: torch.device, batch: int, tiny: bool) -> list[Any]:
    """The FID pipeline on `batch` images against themselves: Inception pool3 features and logits at
    299 px, statistics and the Fréchet distance (random Inception weights when the file is absent).
    `tiny`: 75-px inputs (Inception's smallest) and the Fréchet distance of the first 64 feature
    dimensions (two 2048² eigendecompositions take most of a CPU smoke run), the same code path."""
    from scorelib.metrics.fid import feature_statistics, frechet_distance, inception_features
    from scorelib.metrics.inception import FIDInceptionV3, InceptionWeightsNotFoundError, load_inception

    try:
        model, weights = load_inception(device=device), "pytorch-fid weights"
    except InceptionWeightsNotFoundError:
        model, weights = FIDInceptionV3().to(device).eval(), "random weights"
    size = 32
    if tiny:
        model.resize_input, size, weights = False, 75, weights + ", 75 px"
    images = torch.rand(batch, 3, size, size, generator=torch.Generator(device).manual_seed(0), device=device)

    def run() -> None:
        feats, _ = inception_features(model, images, batch_size=batch, device=device)
        mu, sigma = feature_statistics(feats.double().numpy()[:, : 64 if tiny else None])
        frechet_distance(mu, sigma, mu, sigma, method="eigh" if tiny else "sqrtm")

    sec, peak = timed(device, run, 1)
    return ["-", "FID pipeline", weights, f"{batch / sec:.2f} samples/s", "", f"{peak:.0f}"]


def run(configs: list[str], device: torch.device, batch: int, steps: int, tiny: bool, fid: bool,
        samplers: tuple[str, ...] = SAMPLERS) -> str:
    """The table as markdown."""
    global WARMUP
    WARMUP = 0 if tiny else 1
    rows: list[list[Any]] = []
    for name in configs:
        config = load_config(name, tiny)
        tasks = (("train", lambda n, c: [training_row(n, c, device, batch, steps)]),
                 ("sample", lambda n, c: sampler_rows(n, c, device, batch, tiny, samplers)),
                 ("likelihood", lambda n, c: [likelihood_row(n, c, device, batch, tiny)]))
        for task, make in tasks:
            try:
                rows += make(name, config)
            except Exception as err:  # one failing row is reported and the table goes on
                rows.append([name, task, "-", "failed", f"{type(err).__name__}: {str(err)[:80]}", ""])
        print(f"{name}: done", file=sys.stderr, flush=True)
    if fid:
        rows.append(fid_row(device, batch, tiny))
    header = ["config", "task", "settings", "throughput", "note", "peak MiB"]
    return markdown_table(header, rows, "lllrlr")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per config (after one warm-up)")
    p.add_argument("--tiny", action="store_true", help="tiny networks and step counts (CPU smoke run)")
    p.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--no-fid", action="store_true", help="skip the FID pipeline row")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, batch {a.batch}, tiny={a.tiny}")
    print(f"peak memory: {PeakMemory(device).kind}\n")
    print(run(a.configs, device, a.batch, a.steps, a.tiny, not a.no_fid, tuple(a.samplers)))


if __name__ == "__main__":
    main()
