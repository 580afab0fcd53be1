import itertools

import pytest
import torch
from oracles import F64, gaussian, mixture

from scorelib import EpsToScore, linear_betas
from scorelib.samplers import ddim, ddpm_ancestral
from scorelib.schedules import (
    alphas_cumprod_from_betas,
    cosine_betas,
    respace_timesteps,
    timesteps_to_sigmas,
    vp_sigmas,
)

ABAR = alphas_cumprod_from_betas(linear_betas(1000))


def _eps_model(gmm, abar):
    return lambda x_t, t: gmm.eps(x_t, t.round().long(), abar)


def test_ddim_eta0_is_euler_on_the_probability_flow_ode():
    gmm = mixture(d=3, k=3, seed=0)
    sigmas = timesteps_to_sigmas(ABAR, respace_timesteps(1000, 25, "uniform"))
    x = sigmas[0] * torch.randn(32, 3, dtype=F64)
    got = ddim(gmm, x, sigmas)
    y = x.clone()
    for s, s_next in itertools.pairwise(sigmas):  # Euler on dx/dσ = -σ s(x, σ)
        y = y + (s_next - s) * (-s * gmm(y, s.expand(32)))
    torch.testing.assert_close(got, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("betas", [linear_betas(1000), cosine_betas(1000)])
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "quadratic"])
def test_ddim_equals_classical_alpha_form_on_the_same_timesteps(betas, spacing):
    """x_{t'} = √ᾱ' x̂₀ + √(1-ᾱ') ε̂, x̂₀ = (x_t - √(1-ᾱ) ε̂)/√ᾱ (Song et al. 2021a, eq. 12, η = 0),
    with the ε-model of a mixture, against ddim on EpsToScore of the same model."""
    abar = alphas_cumprod_from_betas(betas)
    gmm = mixture(d=2, k=4, seed=1)
    eps_model = _eps_model(gmm, abar)
    ts = respace_timesteps(1000, 20, spacing)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = x_T
    for i, t in enumerate(ts.tolist()):
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=F64)
        eps = eps_model(x, torch.full((64,), t))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    sigmas = timesteps_to_sigmas(abar, ts)
    got = ddim(EpsToScore(eps_model, abar), x_T * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-9)


def test_ddim_matches_diffusers_ddim_scheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                    timestep_spacing="leading")
    sched.set_timesteps(50)
    abar = sched.alphas_cumprod.double()
    gmm = mixture(d=4, k=3, seed=2)
    eps_model = _eps_model(gmm, abar)
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = x_T.clone()
    for t in sched.timesteps:
        eps = eps_model(x, torch.full((16,), int(t)))
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    ts = sched.timesteps.long()
    sigmas = timesteps_to_sigmas(abar, ts)
    got = ddim(EpsToScore(eps_model, abar), x_T * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    torch.testing.assert_close(got, x, rtol=1e-6, atol=1e-6)


def _gaussian_marginals(sampler, **kw):
    g = gaussian(d=2, seed=5)
    sigmas = torch.flip(vp_sigmas(ABAR), [0])  # all 1000 DDPM levels
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    seen = {}
    check = {100: None, 500: None, 900: None, 999: None}

    def cb(info):
        if info["i"] + 1 in check:
            seen[info["i"] + 1] = info["x"].clone()

    n = 8000
    x = sigmas[0] * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = sampler(g, x, sigmas, generator=torch.Generator().manual_seed(1), callback=cb, **kw)
    seen[len(sigmas) - 1] = out
    for i, xs in seen.items():
        cov = g.covariance(sigmas[i].item())
        scale = cov.diagonal().max()
        # 5 standard errors of the sample mean and sample covariance entries, plus 2% for the discretisation
        torch.testing.assert_close(xs.mean(0), g.mean(), atol=5 * (scale / n).sqrt().item(), rtol=0)
        torch.testing.assert_close(torch.cov(xs.T), cov, atol=5 * scale.item() * (2 / n) ** 0.5, rtol=0.02)


def test_ddim_eta1_has_the_right_marginal_at_each_level():
    _gaussian_marginals(ddim, eta=1.0)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_ancestral_has_the_right_marginal_at_each_level(variance):
    _gaussian_marginals(ddpm_ancestral, variance=variance)


def test_ddpm_small_variance_is_ddim_eta1():
    gmm = mixture(d=2, k=2, seed=3)
    sigmas = timesteps_to_sigmas(ABAR, respace_timesteps(1000, 30, "uniform"))
    x = sigmas[0] * torch.randn(8, 2, dtype=F64)
    a = ddim(gmm, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = ddpm_ancestral(gmm, x, sigmas, variance="small", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_ddim_eta_checked():
    with pytest.raises(ValueError, match="eta"):
        ddim(lambda x, s: x, torch.zeros(2, 2), torch.tensor([1.0, 0.0]), eta=1.5)
