"""`heun` draws as EDM's sampler (Karras et al. 2022, Algorithm 2; EDM generate.py `edm_sampler`).

Golden numbers (tests/data/edm/edm_golden.pt, "sampler"): EDM's `edm_sampler` run in float64 on CPU
with `randn_like = torch.randn_like` after `torch.manual_seed(seed)` (latents drawn first), around the
exact denoiser of data N(0.3, 0.5²) per coordinate: 18 steps without churn; 10 steps with S_churn = 40,
S_min = 0.05, S_max = 50, S_noise = 1.003 (the top levels unchurned); 6 steps on [0.01, 20] with ρ = 5
and churn everywhere; 12 steps with churn through EDM's iDDPM `round_sigma` (its grid u recorded in
"precond"). Recorded: latents, the σ of every denoiser call, and the samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scorelib import IDDPMPrecond, append_zero, heun, karras_sigmas
from scorelib.peers import k_diffusion_sampling

GOLDEN = torch.load(Path(__file__).parent / "data" / "edm" / "edm_golden.pt", weights_only=True)
SAMPLER = GOLDEN["sampler"]
EDM_U = GOLDEN["precond"]["iDDPMPrecond"]["u"]  # EDM's float32 iDDPM levels u_0 > ... > u_M = 0
MU, S = 0.3, 0.5


class Exact:
    """The exact score of N(MU, S²) per coordinate; records the σ of each call."""

    def __init__(self):
        self.sigmas = []

    def __call__(self, x, sigma):
        self.sigmas.append(float(sigma[0]))
        sg = sigma.reshape(-1, *[1] * (x.ndim - 1))
        return (MU - x) / (S**2 + sg**2)


def edm_round(sigma):
    """EDM's iDDPM round_sigma on its own float32 grid: the nearest u_j, in σ."""
    s = torch.as_tensor(sigma)
    idx = (s.reshape(-1, 1).float() - EDM_U.reshape(1, -1)).abs().argmin(1)
    return EDM_U[idx].to(s.dtype).reshape(s.shape)


def _setup(name, rounding):
    case = SAMPLER[name]
    kw = dict(case["kw"])
    n = kw.pop("num_steps")
    sigma_min = max(kw.pop("sigma_min", 0.002), case["sigma_min"])
    sigma_max = min(kw.pop("sigma_max", 80.0), case["sigma_max"])
    grid = karras_sigmas(sigma_max, sigma_min, n, kw.pop("rho", 7.0))
    if rounding is not None:
        grid = rounding(grid)
    g = torch.Generator().manual_seed(case["seed"])
    latents = torch.randn(case["latents"].shape, generator=g)
    assert torch.equal(latents, case["latents"])
    options = dict(s_churn=kw.get("S_churn", 0.0), s_tmin=kw.get("S_min", 0.0), s_tmax=kw.get("S_max", math.inf),
                   s_noise=kw.get("S_noise", 1.0))
    return case, append_zero(grid), latents.double(), g, options


@pytest.mark.parametrize("name", ["plain18", "churn", "churn_all", "iddpm_churn"])
def test_heun_equals_edm_sampler_draw_for_draw(name):
    """One draw per step, also at unchurned levels (EDM multiplies those by zero), and σ̂ through the
    wrapper's round_sigma: EDM's samples to float64 precision, and the same σ at every network call."""
    rounding = edm_round if name.startswith("iddpm") else None
    case, grid, latents, g, options = _setup(name, rounding)
    score = Exact()
    out = heun(score, latents * grid[0], grid, generator=g, round_sigma=rounding, **options)
    torch.testing.assert_close(out, case["result"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(score.sigmas, dtype=torch.float64), case["calls"], rtol=1e-12, atol=0)


def test_heun_with_the_iddpm_wrapper_rounding_is_edm_to_its_grid_precision():
    """IDDPMPrecond.round_sigma (scorelib's float64 levels) instead of EDM's float32 grid: the same steps,
    samples within 1e-6 (EDM's levels differ from the exact ones by up to 5e-4 relative)."""
    wrapper = IDDPMPrecond(None)
    case, grid, latents, g, options = _setup("iddpm_churn", wrapper.round_sigma)
    out = heun(Exact(), latents * grid[0], grid, generator=g, round_sigma=wrapper.round_sigma, **options)
    torch.testing.assert_close(out, case["result"], rtol=1e-5, atol=1e-6)


def test_one_draw_per_step_with_churn_and_none_without():
    """With s_churn > 0 the generator advances by one normal draw of x's shape per step, churned or not
    (EDM, k-diffusion); with s_churn = 0 it is not used."""
    case, grid, latents, g, options = _setup("churn", None)
    n_steps = len(grid) - 1
    assert any(not options["s_tmin"] <= s <= options["s_tmax"] for s in grid[:-1].tolist())  # unchurned levels
    heun(Exact(), latents * grid[0], grid, generator=g, **options)
    reference = torch.Generator().manual_seed(case["seed"])
    torch.randn(latents.shape, generator=reference)
    for _ in range(n_steps):
        torch.randn(latents.shape, generator=reference, dtype=torch.float64)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=reference))
    g = torch.Generator().manual_seed(5)
    heun(Exact(), latents * grid[0], grid, generator=g)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(5)))


def test_heun_equals_k_diffusion_sample_heun():
    """k-diffusion's sample_heun draws the same way (one randn_like per step): equal samples."""
    k = k_diffusion_sampling()
    if k is None:
        pytest.skip("k-diffusion is not installed")
    case, grid, latents, g, options = _setup("churn", None)
    torch.manual_seed(case["seed"])
    torch.randn(latents.shape)  # the latents' draws

    def model(x, sigma):
        return x + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2 * Exact()(x, sigma)

    theirs = k.sample_heun(model, latents * grid[0], grid, disable=True, **options)
    ours = heun(Exact(), latents * grid[0], grid, generator=g, **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
