import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from scorelib import cosine_betas, geometric_sigmas, karras_sigmas, linear_betas, vp_sigmas
from scorelib.schedules import (
    VESDE,
    VPSDE,
    DDPMSchedule,
    SubVPSDE,
    alphas_cumprod_from_betas,
    append_zero,
    respace_timesteps,
    space_timesteps,
    timesteps_to_sigmas,
)

F64 = torch.float64


def test_geometric_sigmas_endpoints_and_ratio():
    s = geometric_sigmas(1.0, 0.01, 10)
    assert s.dtype == F64 and s.shape == (10,)
    assert s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(0.01)
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.01 ** (1 / 9)))
    assert len(geometric_sigmas(50.0, 0.01, 232)) == 232


def test_karras_sigmas():
    s = karras_sigmas(80.0, 0.002, 18)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.002)
    assert bool((s[1:] < s[:-1]).all())
    # ρ = 1 is a linear ramp
    torch.testing.assert_close(karras_sigmas(3.0, 1.0, 5, rho=1.0), torch.tensor([3.0, 2.5, 2, 1.5, 1], dtype=F64))
    assert append_zero(s)[-1] == 0 and len(append_zero(s)) == 19


@pytest.mark.parametrize("bad", [(1.0, 2.0, 5), (1.0, 0.0, 5), (1.0, 0.1, 0)])
def test_grid_arguments_checked(bad):
    with pytest.raises(ValueError):
        geometric_sigmas(*bad)


def test_linear_betas():
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    assert bool((b[1:] > b[:-1]).all())
    # other T: rescaled by 1000/T (improved DDPM)
    assert linear_betas(4000)[-1] == pytest.approx(0.005)


def test_cosine_betas_known_values():
    b = cosine_betas(1000)
    # values of 1 - ᾱ(t+1)/ᾱ(t) with ᾱ(t) = cos²((t/T + s)/(1+s)·π/2), s = 0.008, computed by hand
    assert b[0].item() == pytest.approx(4.128422482196914e-05, rel=1e-9)
    assert b[1].item() == pytest.approx(4.614175273665033e-05, rel=1e-9)
    assert b[499].item() == pytest.approx(0.0031458862304780677, rel=1e-9)
    assert b[998].item() == pytest.approx(0.7499993929011166, rel=1e-9)
    assert b[-1].item() == 0.999  # clipped
    abar = alphas_cumprod_from_betas(b)
    t = torch.tensor([1, 250, 500, 750])
    want = torch.cos(((t + 1) / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(abar[t], want.to(F64))
    assert bool((b > 0).all()) and bool((b <= 0.999).all())


def test_vp_sigmas_monotone_and_inverse():
    abar = alphas_cumprod_from_betas(linear_betas())
    s = vp_sigmas(abar)
    assert bool((s[1:] > s[:-1]).all())
    torch.testing.assert_close(1 / (1 + s**2), abar)
    assert s[0].item() == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))


def test_ddpm_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x0) by direct conditioning of the joint Gaussian of (x_{t-1}, x_t) given x0."""
    sched = DDPMSchedule.linear(1000)
    abar, betas = sched.alphas_cumprod, sched.betas
    for t in [1, 5, 500, 999]:
        a_prev = abar[t - 1]
        # x_{t-1} = √a_prev x0 + √(1-a_prev) e1 ; x_t = √(1-β_t) x_{t-1} + √β_t e2
        var_prev = 1 - a_prev
        cov = math.sqrt(1 - betas[t]) * var_prev
        var_t = 1 - abar[t]
        x0, xt = torch.tensor([[0.3]], dtype=F64), torch.tensor([[-0.7]], dtype=F64)
        mean_want = a_prev.sqrt() * x0 + cov / var_t * (xt - abar[t].sqrt() * x0)
        var_want = var_prev - cov**2 / var_t
        mean, logvar = sched.q_posterior(x0, xt, torch.tensor([t]))
        torch.testing.assert_close(mean, mean_want)
        torch.testing.assert_close(logvar.exp().squeeze(), var_want)


def test_respaced_timesteps():
    assert respace_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert respace_timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    u = respace_timesteps(1000, 5, "uniform")
    assert u.tolist() == [999, 749, 500, 250, 0]
    q = respace_timesteps(1000, 5, "quadratic")  # DDIM: floor((k·√800/4)²)
    assert q.tolist() == [800, 450, 200, 50, 0]
    with pytest.raises(ValueError, match="spacing"):
        respace_timesteps(1000, 5, "cubic")
    sig = timesteps_to_sigmas(alphas_cumprod_from_betas(linear_betas()), u)
    assert sig[-1] == 0 and bool((sig[1:] < sig[:-1]).all())


@pytest.mark.parametrize("sde", [VESDE(0.01, 50.0), VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0)])
def test_sde_sigma_inverse_and_ratio(sde):
    t = torch.linspace(1e-3, 1, 50, dtype=F64)
    torch.testing.assert_close(sde.sigma(t), sde.marginal_std(t) / sde.mean_scale(t))
    torch.testing.assert_close(sde.t_of_sigma(sde.sigma(t)), t)
    # any tensor rank
    assert sde.sigma(t.reshape(5, 10)).shape == (5, 10)


@pytest.mark.parametrize("sde", [VESDE(0.01, 5.0), VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0)])
def test_sde_marginals_match_simulation(sde):
    """Euler–Maruyama simulation of dx = f(t)x dt + g(t) dw from a fixed x0 reaches m(t)x0 + s(t)z."""
    g = torch.Generator().manual_seed(0)
    n, steps = 10_000, 250
    x0 = torch.tensor([1.5, -0.5], dtype=F64)
    x = x0.expand(n, 2).clone()
    if isinstance(sde, VESDE):  # the VE SDE starts at σ(0) = σ_min: add that noise first
        x = x + sde.sigma_min * torch.randn(n, 2, generator=g, dtype=F64)
    dt = 1.0 / steps
    mid = (torch.arange(steps, dtype=F64) + 0.5) * dt
    drift, diff = sde.drift_coef(mid) * dt, sde.diffusion(mid) * math.sqrt(dt)
    noise = torch.randn(steps, n, 2, generator=g, dtype=F64)
    for i in range(steps):
        x = x + drift[i] * x + diff[i] * noise[i]
    t1 = torch.tensor(1.0, dtype=F64)
    torch.testing.assert_close(x.mean(0), sde.mean_scale(t1) * x0, atol=0.05 * sde.marginal_std(t1), rtol=0)
    torch.testing.assert_close(x.std(0), sde.marginal_std(t1).expand(2), rtol=0.03, atol=0)


def test_sde_prior_logp():
    x = torch.randn(4, 3)
    torch.testing.assert_close(VESDE(0.01, 2.0).prior_logp(x),
                               torch.distributions.Normal(0, 2.0).log_prob(x).sum(1))


# --- improved-diffusion's respacing ----------------------------------------------------------------------------

SPACING = json.loads((Path(__file__).parent / "data" / "iddpm_spacing.json").read_text())


def _digest(ts: torch.Tensor) -> str:
    return hashlib.sha1(",".join(map(str, sorted(ts.tolist()))).encode()).hexdigest()[:12]


@pytest.mark.parametrize("T", [1000, 4000])
def test_uniform_respacing_is_improved_diffusions_for_every_length(T):
    """respace_timesteps(T, n) is improved-diffusion respace.py `space_timesteps(T, str(n))` for n = 2 … 1000:
    digests of the reference's own sets (tests/data/iddpm_spacing.json). Its running-sum stride and round-half-
    to-even move a timestep by one against round(k·(T-1)/(n-1)) in 588 of these 1998 pairs (e.g. T = 1000, n = 21)."""
    wrong = [n for n, want in zip(range(2, 1001), SPACING["digests"][str(T)], strict=True)
             if _digest(respace_timesteps(T, n)) != want]
    assert wrong == []
    ts = respace_timesteps(T, 21)
    assert ts.tolist() == sorted(ts.tolist(), reverse=True) and ts.dtype == torch.long


@pytest.mark.parametrize("key", sorted(SPACING["sections"]))
def test_section_strings_are_read_as_improved_diffusion(key):
    T, sections = key.split(":", 1)
    got = space_timesteps(int(T), sections)
    assert got.tolist() == sorted(SPACING["sections"][key], reverse=True)


@pytest.mark.parametrize("key", SPACING["refused"])
def test_section_strings_the_reference_refuses(key):
    T, sections = key.split(":", 1)
    with pytest.raises(ValueError):
        space_timesteps(int(T), sections)
