"""Digits FID and transport error per NFE of the deterministic samplers on a trained digits model.

The model is the EMA network of the newest checkpoint of a digits run (the embedded demo,
`python main.py --config=ncsn_digits --workdir=runs/digits`), loaded with `scorelib.load`. Every
method starts from the same N points σ_max·z (float32, the run's σ range) and is compared with

  * the reference: `probability_flow(rtol=atol=1e-5)` from the same points, followed by its Tweedie
    step at σ_min; the transport error is the mean over samples of ‖x - x_ref‖₂ (64 pixels in [0, 1]);
  * the held-out digits, by the digits FID (`scorelib.metrics.digits.digits_fid`, features of a small
    classifier; its floor, two halves of the real digits, is printed).

Methods at each NFE budget n: ddim (Euler) on a Karras grid (ρ = 7) of n levels plus 0; heun (EDM) on
⌊(n+1)/2⌋ Karras levels (2·levels - 1 ≤ n); dpm_solver_pp orders 2 and 3 and unipc (order 3) on the
Karras grid; fast_sample as documented (scale probed in its first evaluation) and with
`data_diameter = σ_max` (NCSNv2's rule sets σ_max to the data's diameter). Run from the repository root:

    python benchmarks/bench_digits_solvers.py --workdir runs/digits [--samples 1000] [--nfe 5 10 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table

import scorelib
from scorelib.metrics.digits import digits_fid
from scorelib.samplers._common import CountingScore
from scorelib.schedules import append_zero

NFES = (5, 7, 10, 15, 20)
Sampler = Callable[[Callable, Tensor, int], Tensor]


def methods(sigma_max: float, sigma_min: float) -> dict[str, Sampler]:
    def karras(n: int) -> Tensor:
        return append_zero(scorelib.karras_sigmas(sigma_max, sigma_min, n))

    return {
        "ddim (Euler)": lambda s, x, n: scorelib.ddim(s, x, karras(n)),
        "heun (2m-1 ≤ n)": lambda s, x, n: scorelib.heun(s, x, karras((n + 1) // 2)),
        "dpm_solver_pp(2)": lambda s, x, n: scorelib.dpm_solver_pp(s, x, karras(n), order=2),
        "dpm_solver_pp(3)": lambda s, x, n: scorelib.dpm_solver_pp(s, x, karras(n), order=3),
        "unipc(3)": lambda s, x, n: scorelib.unipc(s, x, karras(n), order=3),
        "fast_sample": lambda s, x, n: scorelib.fast_sample(s, x, sigma_max, sigma_min, n),
        "fast_sample, data_diameter=σ_max": lambda s, x, n: scorelib.fast_sample(s, x, sigma_max, sigma_min, n,
                                                                                  data_diameter=sigma_max),
    }


def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int) -> Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a digits run (its checkpoints/ folder)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    score = scorelib.load(args.workdir)
    config = score.scorelib_config
    if config.data.dataset != "digits":
        sys.exit(f"{args.workdir} is not a digits run (data.dataset={config.data.dataset!r})")
    sigma_max, sigma_min = scorelib.experiment(config, mode="network").noise.sigma_range
    cache = Path(args.workdir) / "eval"
    x = sigma_max * torch.randn(args.samples, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = batched(lambda b: scorelib.probability_flow(score, b, sigma_max, sigma_min, rtol=1e-5, atol=1e-5),
                      x, args.batch)
    ref_fid = digits_fid(ref, cache_dir=cache)
    print(f"model {args.workdir}: σ {sigma_max:g} → {sigma_min:g}, {args.samples} samples; reference ODE "
          f"(dopri5, 1e-5) in {time.perf_counter() - t0:.0f} s: digits FID {ref_fid['fid']:.2f} "
          f"(floor {ref_fid['fid_floor']:.2f})")
    nfes = tuple(sorted(args.nfe))
    fid: dict[str, list[str]] = {}
    err: dict[str, list[str]] = {}
    for name, sampler in methods(sigma_max, sigma_min).items():
        fid[name], err[name] = [], []
        for n in nfes:
            counting = CountingScore(score)
            with torch.no_grad():
                out = batched(lambda b, n=n, f=sampler, c=counting: f(c, b, n), x, args.batch)
            calls = counting.nfe / -(-args.samples // args.batch)
            if calls > n:
                raise RuntimeError(f"{name} spent {calls:g} evaluations on a budget of {n}")
            fid[name].append(f"{digits_fid(out, cache_dir=cache)['fid']:.2f}")
            err[name].append(f"{float((out - ref).flatten(1).norm(dim=1).mean()):.3f}")
        print(f"{name}: done", file=sys.stderr, flush=True)
    header = ["method \\ NFE", *map(str, nfes)]
    print("\n### digits FID\n")
    print(markdown_table(header, [(name, *v) for name, v in fid.items()]))
    print("\n### transport error: mean ‖x - x_ref‖₂ against the reference ODE solution\n")
    print(markdown_table(header, [(name, *v) for name, v in err.items()]))


if __name__ == "__main__":
    main()
