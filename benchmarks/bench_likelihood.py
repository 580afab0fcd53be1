"""Probability-flow log-likelihood against the exact log-density of Gaussian mixtures: mean absolute
error in nats and the number of score evaluations as the ODE tolerance tightens, with the exact
divergence and with the Hutchinson estimator (1 Gaussian probe per point: unbiased, so its mean error
is within a few standard errors of the exact trace's while each point's error is large), on a 2-D and a
16-D mixture.

    python benchmarks/bench_likelihood.py [--n 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_passive_omp, markdown_table

from scorelib.analytic import GaussianMixture
from scorelib.likelihood import log_likelihood

F64 = torch.float64


def mixture(d: int, k: int, seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=F64)
    return GaussianMixture.isotropic(means, 0.3 + 0.4 * torch.rand(k, generator=g, dtype=F64))


def main() -> None:
    ensure_passive_omp()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="data points per mixture")
    p.add_argument("--sigma-max", type=float, default=1000.0)
    p.add_argument("--sigma-min", type=float, default=0.01)
    args = p.parse_args()
    rows = []
    for d in (2, 16):
        gmm = mixture(d, 6, seed=d)
        x = gmm.sample(args.n, generator=torch.Generator().manual_seed(1), dtype=F64)
        exact = gmm.log_prob(x, args.sigma_min)
        for trace in ("exact", "hutchinson"):
            for rtol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
                t0 = time.perf_counter()
                got, nfe = log_likelihood(gmm, x, args.sigma_max, args.sigma_min, rtol=rtol, atol=rtol,
                                          exact_trace=trace == "exact", generator=torch.Generator().manual_seed(2),
                                          return_nfe=True)
                err = got - exact
                se = err.std() / len(err) ** 0.5
                rows.append([d, trace, f"{rtol:g}", nfe, f"{err.abs().mean():.4f}", f"{err.mean():+.4f} ± {se:.4f}",
                             f"{time.perf_counter() - t0:.2f}"])
    print(f"σ {args.sigma_max:g} → {args.sigma_min:g}, {args.n} points per mixture, float64\n")
    print(markdown_table(["dim", "trace", "rtol = atol", "NFE", "mean |error| (nats)", "mean error ± s.e.", "seconds"],
                         rows))


if __name__ == "__main__":
    main()
