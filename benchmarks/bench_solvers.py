"""Accuracy per score evaluation (NFE) of the deterministic samplers, against a tight ODE solution.

Two families of held-out problems, both with exact scores (`scorelib.analytic.GaussianMixture`):
  * "sphere": sharp mixtures with means uniform on the unit sphere, component std 0.05, some scaled
    as a whole by 0.3 or 3, seeds from 100 on. `fast_sample`'s plan was tuned on the same kind of
    mixture with other seeds and shapes: the diameter rule on seeds 0-4 of `torch.Generator()` with
    (d, k, std) in {(2,8,.05), (16,8,.05), (2,4,.02), (8,16,.1), (32,10,.03), (4,6,.2)}; the probed-scale
    rule (the default) on seeds 0-1 of those and of (2,8,.3), (2,6,.15), (4,8,.25), each at scales 0.3,
    1 and 3, 128 samples each, minimising the geometric mean of the RMS transport error.
  * "toy": 2-D mixtures of another shape that no tuning looked at: the 8-mode ring of radius 4 with
    std 0.3, and the exact mixtures of the `gmm8`, `grid25` and `two_modes` toy data sets.
Every method starts from the same 256 points σ_max·z (float64, σ_max = 80, σ_min = 0.002) and is
compared with the reference `probability_flow(rtol=atol=1e-10)` followed by its Tweedie step at
σ_min, by the mean over samples of ‖x - x_ref‖₂ (the ring also reports the RMS of ‖x - x_ref‖₂). A
looser reference (1e-8) is printed beside it as an estimate of the reference's own error.

Methods, at each NFE budget n (grids are n positive levels from σ_max to σ_min plus a trailing 0):
  ddim (Euler) on Karras (ρ = 7) and geometric grids; heun (EDM) on a Karras grid of ⌊(n+1)/2⌋
  levels (2·levels - 1 ≤ n evaluations); dpm_solver_pp orders 2 and 3 and unipc (bh2) orders 2 and 3
  on both grids; fast_sample as documented (the data's scale probed in its first evaluation) and with
  `data_diameter` (the largest distance between two of 4096 samples of the data); k-diffusion's
  `sample_dpmpp_2m` on `get_sigmas_karras` and `get_sigmas_exponential` (built in float64), over the
  denoiser D = x + σ² s, and diffusers' EDMDPMSolverMultistepScheduler (DPM-Solver++(2M), Karras grid,
  final σ 0), when installed. Every evaluation goes through `CountingScore`; a method spending more
  than n calls raises.

Prints per problem a markdown table (rows = methods, columns = NFE) and a summary of the ratio
"k-diffusion DPM++(2M), best of its two grids" / "fast_sample" per problem and NFE (> 1: fast_sample
is more accurate), with geometric means per family. Run from the repository root:

    python benchmarks/bench_solvers.py [--quick] [--samples 256] [--plot errors.png]

`--quick` runs four problems instead of eleven.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import k_sampling as peer_k_sampling
from _common import markdown_table, sharp_mixture
from _peers import diffusers_schedulers

import scorelib
from scorelib.analytic import GaussianMixture
from scorelib.data import toy_mixture
from scorelib.samplers._common import CountingScore
from scorelib.samplers.langevin import max_pairwise_distance
from scorelib.schedules import append_zero
from scorelib.utils import append_dims, default_dtype

F64 = torch.float64
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
NFES = (5, 7, 10, 15, 20, 30, 50)
FAST, FAST_DIAM, KD = "fast_sample", "fast_sample, data_diameter", "k-diffusion DPM++(2M), best grid"
RING = "ring: 8 modes, radius 4, std 0.3"


@dataclass(frozen=True)
class Problem:
    name: str
    family: str  # sphere | toy
    d: int = 2
    k: int = 8
    std: float = 0.05
    seed: int = 0
    scale: float = 1.0

    def mixture(self) -> GaussianMixture:
        if self.family == "sphere":
            return sharp_mixture(self.d, self.k, self.std, self.seed, self.scale)
        if self.name == RING:
            ang = torch.arange(8, dtype=F64) * (2 * math.pi / 8)
            return GaussianMixture.isotropic(4 * torch.stack([ang.cos(), ang.sin()], 1), 0.3)
        return toy_mixture(self.name)


PROBLEMS = (
    Problem("2-D, 8 modes", "sphere", 2, 8, 0.05, 100),
    Problem("16-D, 8 modes", "sphere", 16, 8, 0.05, 101),
    Problem("2-D, 8 modes, ×0.3", "sphere", 2, 8, 0.05, 102, 0.3),
    Problem("16-D, 8 modes, ×3", "sphere", 16, 8, 0.05, 103, 3.0),
    Problem("2-D, 8 modes, ×3", "sphere", 2, 8, 0.05, 104, 3.0),
    Problem("16-D, 8 modes, ×0.3", "sphere", 16, 8, 0.05, 105, 0.3),
    Problem("8-D, 16 modes", "sphere", 8, 16, 0.05, 106),
    Problem(RING, "toy", seed=107),
    Problem("gmm8", "toy", seed=108),
    Problem("grid25", "toy", seed=109),
    Problem("two_modes", "toy", seed=110),
)
QUICK = (PROBLEMS[0], PROBLEMS[1], PROBLEMS[3], PROBLEMS[7])

Sampler = Callable[[Callable, Tensor, int], Tensor]  # (score, x at σ_max, NFE budget) -> sample


def karras(n: int) -> Tensor:
    return append_zero(scorelib.karras_sigmas(SIGMA_MAX, SIGMA_MIN, n))


def geometric(n: int) -> Tensor:
    return append_zero(scorelib.geometric_sigmas(SIGMA_MAX, SIGMA_MIN, n))


def k_dpmpp_2m(k_sampling, grid_fn: Callable[[int], Tensor]) -> Sampler:
    def run(score: Callable, x: Tensor, n: int) -> Tensor:
        def denoiser(y: Tensor, sigma: Tensor) -> Tensor:
            return y + append_dims(sigma, y.ndim) ** 2 * score(y, sigma)

        with default_dtype(F64):  # k-diffusion builds its grids in the default dtype
            sigmas = grid_fn(n)
        return k_sampling.sample_dpmpp_2m(denoiser, x, sigmas, disable=True)

    return run


def edm_dpmpp_2m(schedulers) -> Sampler:
    """diffusers' EDMDPMSolverMultistepScheduler fed the network output that its EDM preconditioning
    (σ_data = 0.5) turns into our denoiser D = x + σ² s."""
    sigma_data = 0.5

    def run(score: Callable, x: Tensor, n: int) -> Tensor:
        sched = schedulers.EDMDPMSolverMultistepScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                                                          sigma_data=sigma_data, sigma_schedule="karras",
                                                          solver_order=2, algorithm_type="dpmsolver++",
                                                          final_sigmas_type="zero")
        sched.set_timesteps(n)
        for i, t in enumerate(sched.timesteps):
            sigma = float(sched.sigmas[i])
            d = x + sigma**2 * score(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))
            c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
            c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
            x = sched.step((d - c_skip * x) / c_out, t, x).prev_sample
        return x

    return run


def methods(diameter: float) -> dict[str, Sampler]:
    out: dict[str, Sampler] = {}
    for gname, grid in (("Karras", karras), ("geometric", geometric)):
        out[f"ddim (Euler), {gname}"] = lambda s, x, n, grid=grid: scorelib.ddim(s, x, grid(n))
    out["heun, Karras (2m-1 ≤ n NFE)"] = lambda s, x, n: scorelib.heun(s, x, karras((n + 1) // 2))
    for order in (2, 3):
        for gname, grid in (("Karras", karras), ("geometric", geometric)):
            out[f"dpm_solver_pp({order}), {gname}"] = (
                lambda s, x, n, grid=grid, order=order: scorelib.dpm_solver_pp(s, x, grid(n), order=order))
    for order in (2, 3):
        for gname, grid in (("Karras", karras), ("geometric", geometric)):
            out[f"unipc({order}), {gname}"] = (
                lambda s, x, n, grid=grid, order=order: scorelib.unipc(s, x, grid(n), order=order))
    out[FAST] = lambda s, x, n: scorelib.fast_sample(s, x, SIGMA_MAX, SIGMA_MIN, n)
    out[FAST_DIAM] = lambda s, x, n: scorelib.fast_sample(s, x, SIGMA_MAX, SIGMA_MIN, n, data_diameter=diameter)
    k_sampling = peer_k_sampling()
    if k_sampling is not None:
        out["k-diffusion DPM++(2M), Karras"] = k_dpmpp_2m(
            k_sampling, lambda n: k_sampling.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX))
        out["k-diffusion DPM++(2M), exponential"] = k_dpmpp_2m(
            k_sampling, lambda n: k_sampling.get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX))
    schedulers = diffusers_schedulers()
    if schedulers is not None:
        out["diffusers EDM DPM++(2M), Karras"] = edm_dpmpp_2m(schedulers)
    return out


def reference(gmm: GaussianMixture, x: Tensor, tol: float) -> tuple[Tensor, int]:
    return scorelib.probability_flow(gmm, x, SIGMA_MAX, SIGMA_MIN, rtol=tol, atol=tol, return_nfe=True)


def mean_error(x: Tensor, ref: Tensor) -> float:
    return float((x - ref).flatten(1).norm(dim=1).mean())


def run_problem(p: Problem, n_samples: int, nfes: tuple[int, ...]) -> tuple[dict[str, dict[int, float]], str]:
    """Errors {method: {nfe: mean ‖x - x_ref‖}} and a one-line description of the problem."""
    gmm = p.mixture()
    data = gmm.sample(4096, generator=torch.Generator().manual_seed(p.seed), dtype=F64)
    diameter = max_pairwise_distance(data)
    x = SIGMA_MAX * torch.randn(n_samples, p.d, generator=torch.Generator().manual_seed(1000 + p.seed), dtype=F64)
    t0 = time.perf_counter()
    ref, ref_nfe = reference(gmm, x, 1e-10)
    loose, _ = reference(gmm, x, 1e-8)
    shape = (f"d = {p.d}, k = {p.k}, std = {p.std * p.scale:g}, means on the sphere of radius {p.scale:g}"
             if p.family == "sphere" else f"toy mixture of {gmm.n_components} modes in 2-D")
    info = (f"{shape}, seed {p.seed}; data_diameter = {diameter:.3f}; reference: "
            f"{ref_nfe} NFE, {time.perf_counter() - t0:.1f} s, |ref(1e-8) - ref(1e-10)| = {mean_error(loose, ref):.1e}")
    errors: dict[str, dict[int, float]] = {}
    for name, sampler in methods(diameter).items():
        errors[name] = {}
        for n in nfes:
            counting = CountingScore(gmm)
            out = sampler(counting, x.clone(), n)
            if counting.nfe > n:
                raise RuntimeError(f"{name} spent {counting.nfe} evaluations on a budget of {n}")
            if not bool(torch.isfinite(out).all()):
                raise RuntimeError(f"{name} at NFE {n}: non-finite output")
            errors[name][n] = mean_error(out, ref)
            if name == FAST and p.name == RING:
                rms = float((out - ref).flatten(1).norm(dim=1).pow(2).mean().sqrt())
                info += f"; fast_sample RMS ‖x - x_ref‖ at {n} NFE = {rms:.3f}"
    kd = [m for m in errors if m.startswith("k-diffusion")]
    if kd:
        errors[KD] = {n: min(errors[m][n] for m in kd) for n in nfes}
        # the same algorithm on the same grid: k-diffusion's DPM++(2M) and ours at order 2
        same = max(abs(errors["k-diffusion DPM++(2M), Karras"][n] - errors["dpm_solver_pp(2), Karras"][n])
                   for n in nfes)
        info += f"; |err(k-diffusion 2M, Karras) - err(dpm_solver_pp(2), Karras)| ≤ {same:.1e}"
    return errors, info


def plot(results: dict[str, dict[str, dict[int, float]]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nmatplotlib is not importable: no plot written to {path}")
        return
    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.5 * rows), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, (title, errors) in zip(axes.flat, results.items(), strict=False):
        for j, (name, by_nfe) in enumerate(e for e in errors.items() if e[0] != KD):
            style = "-" if name.startswith(("fast", "k-diffusion")) else ":"
            width = 2.2 if name.startswith(("fast", "k-diffusion")) else 1.0
            ax.loglog(list(by_nfe), list(by_nfe.values()), style, marker=".", lw=width, color=colors[j % 20],
                      label=name)
        nfes = list(next(iter(errors.values())))
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.minorticks_off()
        ax.set_title(title)
        ax.set_xlabel("NFE")
        ax.set_ylabel("mean ‖x - x_ref‖")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="four problems instead of eleven")
    parser.add_argument("--samples", type=int, default=256, help="samples per problem")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES), help="NFE budgets")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--plot", metavar="PATH", help="write error vs NFE (log-log) to this PNG")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    nfes = tuple(sorted(args.nfe))
    results: dict[str, dict[str, dict[int, float]]] = {}
    for p in QUICK if args.quick else PROBLEMS:
        errors, info = run_problem(p, args.samples, nfes)
        results[p.name] = errors
        print(f"\n### {p.name}\n\n{info}\n")
        rows = [(name, *(f"{e[n]:.2e}" for n in nfes)) for name, e in errors.items()]
        print(markdown_table(["method \\ NFE", *map(str, nfes)], rows), flush=True)
    if all(KD in e for e in results.values()):
        family = {p.name: p.family for p in PROBLEMS}
        for fast in (FAST, FAST_DIAM):
            print(f"\n### summary: error of {KD} / error of {fast} (> 1: {fast} is more accurate)\n")
            ratios = {name: [e[KD][n] / e[fast][n] for n in nfes] for name, e in results.items()}
            rows = [(name, *(f"{r:.2f}" for r in rs)) for name, rs in ratios.items()]
            for fam in ("sphere", "toy", None):
                chosen = [rs for name, rs in ratios.items() if fam is None or family[name] == fam]
                if not chosen:
                    continue
                geo = [math.exp(statistics.fmean(math.log(rs[i]) for rs in chosen)) for i in range(len(nfes))]
                rows.append((f"geometric mean, {fam or 'all'} ({len(chosen)})", *(f"{g:.2f}" for g in geo)))
            print(markdown_table(["problem \\ NFE", *map(str, nfes)], rows))
    else:
        print("\nk-diffusion is not installed: no comparison with DPM++(2M)")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
