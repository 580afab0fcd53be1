"""DPM-Solver++ on grids ending in 0 is k-diffusion's: `sample_dpmpp_3m_sde(eta=0)` for order 3 (with its
Taylor-form warm-up step) and `sample_dpmpp_2m` for order 2 (crowsonkb/k-diffusion k_diffusion/sampling.py).
Always against golden numbers recorded from k-diffusion 0.1.1.post1 (tests/data/k_diffusion_dpmpp.json, the
recorder is tests/data/recorders/k_diffusion_dpmpp.py), and against k-diffusion's own functions as well where
it is importable (the `peers` extra: `pip install --no-deps k-diffusion torchsde trampoline`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scorelib.analytic import GaussianMixture
from scorelib.peers import k_diffusion_sampling
from scorelib.samplers import dpm_solver_pp

F64 = torch.float64
GOLDEN = json.loads((Path(__file__).parent / "data" / "k_diffusion_dpmpp.json").read_text())
GMM = GaussianMixture.isotropic(torch.tensor(GOLDEN["means"], dtype=F64), torch.tensor(GOLDEN["stds"], dtype=F64),
                                torch.tensor(GOLDEN["weights"], dtype=F64))
ORDER = {"dpmpp_3m_sde": 3, "dpmpp_2m": 2}


def k_diffusion_own(k, c, x, grid):
    """k-diffusion's function itself on the recorded case (its denoiser: the mixture's exact D)."""
    if c["sampler"] == "dpmpp_3m_sde":
        return k.sample_dpmpp_3m_sde(GMM.denoise, x, grid, eta=0.0, noise_sampler=lambda s, t: None, disable=True)
    return k.sample_dpmpp_2m(GMM.denoise, x, grid, disable=True)


@pytest.mark.parametrize("c", GOLDEN["cases"], ids=lambda c: f"{c['sampler']}-{c['grid_name']}")
def test_dpm_solver_pp_is_k_diffusions(c):
    grid = torch.tensor(c["grid"], dtype=F64)
    x = grid[0] * torch.randn(8, 2, generator=torch.Generator().manual_seed(c["seed"]), dtype=F64)
    got = dpm_solver_pp(GMM, x, grid, order=ORDER[c["sampler"]])
    torch.testing.assert_close(got, torch.tensor(c["out"], dtype=F64), rtol=1e-9, atol=1e-10)
    k = k_diffusion_sampling()
    if k is not None:
        torch.testing.assert_close(got, k_diffusion_own(k, c, x, grid), rtol=1e-9, atol=1e-10)


def test_the_3m_warm_up_is_the_taylor_step_not_2ms():
    """On a grid ending in 0, order 3's second step is x' = (σ'/σ) x - φ₁ D₁ + φ₂ (D₁ - D₀)/r (3M), not 2M's
    -φ₁/2r form (with that form the recorded results differ by up to 0.28 (karras4) and 7e-3 (geometric6))."""
    c = next(c for c in GOLDEN["cases"] if (c["sampler"], c["grid_name"]) == ("dpmpp_3m_sde", "karras4"))
    grid = torch.tensor(c["grid"], dtype=F64)
    x = grid[0] * torch.randn(8, 2, generator=torch.Generator().manual_seed(c["seed"]), dtype=F64)
    s = grid.tolist()
    d0 = GMM.denoise(x, torch.full((8,), s[0], dtype=F64))
    x1 = (s[1] / s[0]) * x - math.expm1(-math.log(s[0] / s[1])) * d0
    d1 = GMM.denoise(x1, torch.full((8,), s[1], dtype=F64))
    h, h_prev = math.log(s[1] / s[2]), math.log(s[0] / s[1])
    phi1 = math.expm1(-h)
    x2 = (s[2] / s[1]) * x1 - phi1 * d1 + (phi1 / h + 1) * (d1 - d0) * (h / h_prev)
    seen = []
    dpm_solver_pp(GMM, x, grid, order=3, callback=lambda info: seen.append(info["x"]))
    torch.testing.assert_close(seen[1], x2, rtol=1e-12, atol=1e-12)


def test_the_peer_loader_finds_k_diffusion_when_installed():
    """Where k-diffusion is installed (CI installs it) its sampling module loads, so the oracle checks above
    run against it; where it is not, the loader says so with None."""
    import importlib.util

    installed = importlib.util.find_spec("k_diffusion") is not None and importlib.util.find_spec("torchsde") is not None
    assert (k_diffusion_sampling() is not None) == installed
