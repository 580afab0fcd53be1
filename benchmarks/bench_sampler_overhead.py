"""Per-step overhead of scorelib's sampling loops over the network calls they make.

On a tiny σ-conditioned MLP (`MLPScore(2, hidden=64, n_layers=2)` by default) and a batch of 2-D
points, times under `torch.no_grad()`:

  * bare network calls: `for _ in range(n): net(x, sigma_b)` with a pre-built σ batch (the floor);
    and the same plus one noise draw of x's shape per call (the floor of the stochastic samplers);
  * `scorelib.ddim` with η = 0 and η = 1 on an n-level Karras grid plus a trailing 0 (NFE = n);
  * `scorelib.annealed_langevin`, n/5 levels × 5 steps, no final denoising (NFE = n);
  * peers, when installed (the `peers` extra): diffusers' `DDIMScheduler` loop over an ε-model view
    of the same network (`scorelib.ScoreToEps`), and k-diffusion's `sample_euler` over a denoiser
    view D = x + σ² s; both views are also timed as bare calls, to separate their cost from the loops'.

Repetitions of all methods are interleaved (the order rotates each round) and the table reports the
median wall time per network evaluation, the median over rounds of the ratio to the bare calls timed
in the same round with its quartiles over rounds, and the same ratio in thread CPU time (steadier when
other processes share the cores). The goal for scorelib's samplers is ≤ 1.10×. Run from the repository
root:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_sampler_overhead.py [--batch 256 1024] [--steps 100]
        [--reps 81] [--threads 1] [--profile]

(The script re-executes itself with OMP_WAIT_POLICY=PASSIVE when the variable is unset.) `--profile`
adds, per method, the ATen operators its loop dispatches per step beyond the network's own (counted
with torch.profiler, so independent of the machine's load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_passive_omp, interleaved, k_sampling, markdown_table, median_ratio, ratio_quartiles
from _peers import diffusers_schedulers

import scorelib
from scorelib.models.mlp import MLPScore
from scorelib.samplers._common import CountingScore
from scorelib.schedules import append_zero
from scorelib.utils import append_dims

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


class Denoiser(torch.nn.Module):
    """k-diffusion's model interface over a σ-space score model: D(x, σ) = x + σ² s(x, σ)."""

    def __init__(self, score: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.score = score

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return x + append_dims(sigma, x.ndim) ** 2 * self.score(x, sigma)


def build_methods(net: Callable[[Tensor, Tensor], Tensor], batch: int, n: int,
                  peers: bool) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[Callable], object]]]:
    """Timed closures {name: fn()} and, for the NFE check, {name: fn(model)} running the same loop
    with a given score model in place of `net`."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, 2, generator=g)
    x0 = SIGMA_MAX * noise
    sigma_b = torch.full((batch,), 1.0)
    grid = append_zero(scorelib.karras_sigmas(SIGMA_MAX, SIGMA_MIN, n))
    levels = scorelib.geometric_sigmas(1.0, 0.01, n // 5)

    def bare(model: Callable) -> None:
        for _ in range(n):
            model(x0, sigma_b)

    def bare_noise(model: Callable) -> None:
        for _ in range(n):
            model(x0, sigma_b)
            torch.randn(x0.shape, generator=g)

    runs: dict[str, Callable[[Callable], object]] = {
        "bare network calls": bare,
        "bare calls + one randn each": bare_noise,
        "scorelib ddim, η=0": lambda m: scorelib.ddim(m, x0, grid),
        "scorelib ddim, η=1": lambda m: scorelib.ddim(m, x0, grid, eta=1.0, generator=g),
        "scorelib annealed_langevin": lambda m: scorelib.annealed_langevin(
            m, x0, levels, n_steps_each=5, step_lr=2e-5, denoise=False, generator=g),
    }
    schedulers = diffusers_schedulers() if peers else None
    if schedulers is not None:
        sched = schedulers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                         beta_end=0.02, clip_sample=False, set_alpha_to_one=True)
        abar = sched.alphas_cumprod.double()
        x_t = noise.clone()

        def diffusers_ddim(m: Callable) -> Tensor:
            eps_model = scorelib.ScoreToEps(m, abar)
            sched.set_timesteps(n)
            x = x_t
            for t in sched.timesteps:
                eps = eps_model(x, t.expand(batch))
                x = sched.step(eps, t, x, eta=0.0).prev_sample
            return x

        t_b = torch.full((batch,), 500)

        def bare_eps(m: Callable) -> None:
            eps_model = scorelib.ScoreToEps(m, abar)
            for _ in range(n):
                eps_model(x_t, t_b)

        runs["bare ScoreToEps calls"] = bare_eps
        runs["diffusers DDIMScheduler, η=0"] = diffusers_ddim
    k_diff = k_sampling() if peers else None
    if k_diff is not None:
        k_grid = k_diff.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX)

        def bare_denoiser(m: Callable) -> None:
            d = Denoiser(m)
            for _ in range(n):
                d(x0, sigma_b)

        runs["bare denoiser calls"] = bare_denoiser
        runs["k-diffusion sample_euler"] = lambda m: k_diff.sample_euler(Denoiser(m), x0, k_grid, disable=True)
    timed = {name: (lambda run=run: run(net)) for name, run in runs.items()}
    return timed, runs


def check_nfe(net: Callable, runs: dict[str, Callable[[Callable], object]], n: int) -> None:
    for name, run in runs.items():
        counting = CountingScore(net)
        run(counting)
        if counting.nfe != n:
            raise RuntimeError(f"{name}: {counting.nfe} network calls, expected {n}")


def op_counts(fn: Callable[[], object]) -> Counter[str]:
    """How many times each ATen operator is dispatched from Python (not from inside another
    operator) during one call of fn."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))


def profile(timed: dict[str, Callable[[], object]], n: int) -> None:
    """Per step: ATen calls issued from Python, and those beyond the bare network calls, by name.
    A load-independent view of where a loop's overhead is."""
    counts = {name: op_counts(fn) for name, fn in timed.items()}
    base = counts["bare network calls"]
    rows = []
    for name, c in counts.items():
        extra = c.copy()
        extra.subtract(base)
        per_step = ", ".join(f"{op.removeprefix('aten::')} {k / n:.2f}" for op, k in extra.most_common() if k >= n / 2)
        setup = sum(k for k in extra.values() if 0 < k < n / 2)
        rows.append((name, f"{c.total() / n:.2f}", f"{(c.total() - base.total()) / n:+.2f}", per_step or "-", setup))
    print("\nATen calls dispatched from Python per network evaluation (profiler counts, load-independent):\n")
    print(markdown_table(["method", "ATen calls/step", "beyond bare calls", "extra calls per step, by operator",
                          "once-per-run calls"], rows, align="lrrlr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024], help="points per batch")
    parser.add_argument("--hidden", type=int, default=64, help="MLP width")
    parser.add_argument("--layers", type=int, default=2, help="hidden layers of the MLP")
    parser.add_argument("--steps", type=int, default=100, help="network evaluations per sampling run (multiple of 5)")
    parser.add_argument("--reps", type=int, default=81, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-peers", action="store_true", help="skip diffusers and k-diffusion")
    parser.add_argument("--profile", action="store_true", help="count the ATen calls each loop adds per step")
    args = parser.parse_args()
    if args.reps < 2:
        parser.error("--reps must be at least 2 (the table reports quartiles over rounds)")
    if args.steps % 5:
        parser.error("--steps must be a multiple of 5 (annealed Langevin runs 5 steps per level)")
    ensure_passive_omp()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = MLPScore(2, hidden=args.hidden, n_layers=args.layers).eval()
    n = args.steps
    print(f"MLPScore(2, hidden={args.hidden}, n_layers={args.layers}), {n} network evaluations per run, "
          f"{args.reps} interleaved rounds, torch {torch.__version__}, {args.threads} thread(s), "
          "float32, torch.no_grad()")
    with torch.no_grad():
        for batch in args.batch:
            timed, runs = build_methods(net, batch, n, peers=not args.no_peers)
            check_nfe(net, runs, n)
            wall, cpu = interleaved(timed, args.reps, warmup=2)
            bare, bare_cpu = wall["bare network calls"], cpu["bare network calls"]
            rows = []
            for name, t in wall.items():
                q1, q3 = ratio_quartiles(t, bare)
                rows.append((name, n, f"{1e3 * statistics.median(t) / n:.4f}", f"{median_ratio(t, bare):.3f}",
                             f"{q1:.3f} – {q3:.3f}", f"{median_ratio(cpu[name], bare_cpu):.3f}"))
            print(f"\n### batch {batch}: one network call ≈ {1e6 * statistics.median(bare) / n:.0f} µs (wall)\n")
            print(markdown_table(["method", "NFE", "ms/step", "ratio vs bare calls", "quartiles of the ratio",
                                  "ratio, thread CPU time"], rows))
            if args.profile and batch == args.batch[0]:  # the counts do not depend on the batch size
                profile(timed, n)


if __name__ == "__main__":
    main()
