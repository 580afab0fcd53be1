import math

import torch

from scorelib import geometric_sigmas
from scorelib.data import toy_mixture
from scorelib.samplers import annealed_langevin, langevin
from scorelib.samplers.langevin import langevin_variance_ratio, max_pairwise_distance, ncsnv2_ratio, ncsnv2_settings


def test_annealed_langevin_recovers_mixture_weights_plain_langevin_cannot():
    """Song & Ermon 2019, Fig. 3: 1/5 N((-5,-5), I) + 4/5 N((5,5), I) with exact scores, from uniform
    noise on [-8, 8]². Plain Langevin keeps the initial half/half split; annealed Langevin finds 4/5."""
    gmm = toy_mixture("two_modes")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1500, 2, generator=g) * 16 - 8
    plain = langevin(gmm, x0, sigma=0.0, n_steps=500, step_size=0.05, generator=g)
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    annealed = annealed_langevin(gmm, x0, sigmas, n_steps_each=100, step_lr=0.05, denoise=False, generator=g)
    frac_plain = (plain.sum(1) > 0).float().mean().item()
    frac_annealed = (annealed.sum(1) > 0).float().mean().item()
    assert abs(frac_annealed - 0.8) < 0.04, frac_annealed
    assert abs(frac_plain - 0.8) > 0.2, frac_plain


def test_final_denoise_moves_by_sigma_L_squared_times_score():
    gmm = toy_mixture("gmm8")
    sigmas = geometric_sigmas(5.0, 0.3, 4)
    x = 5.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    raw = annealed_langevin(gmm, x, sigmas, n_steps_each=3, step_lr=0.01, denoise=False,
                            generator=torch.Generator().manual_seed(2))
    den = annealed_langevin(gmm, x, sigmas, n_steps_each=3, step_lr=0.01, denoise=True,
                            generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(den - raw, 0.3**2 * gmm(raw, torch.full((64,), 0.3)), rtol=1e-5, atol=1e-6)


def test_annealed_langevin_reaches_the_exact_marginal_of_a_gaussian():
    """Enough steps per level: samples at σ_L have mean μ and covariance Σ + σ_L² I."""
    from oracles import F64, gaussian

    g = gaussian(d=2, seed=3)
    sigmas = geometric_sigmas(10.0, 0.1, 8)
    x = 10.0 * torch.randn(10_000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = annealed_langevin(g, x, sigmas, n_steps_each=40, step_lr=3e-3, denoise=False,
                            generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.mean(0), g.mean(), atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), g.covariance(0.1), atol=0.06, rtol=0.05)


def test_ncsnv2_rules_match_the_paper_settings():
    # Technique 2 for CIFAR-10 (D = 3072) and Technique 4 with T = 5: the paper uses γ ≈ 1.04 and ε = 6.2e-6
    gamma = ncsnv2_ratio(3072)
    c = math.sqrt(2 * 3072)
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    assert abs((phi(torch.tensor(c * (gamma - 1) + 3 * gamma)) - phi(torch.tensor(c * (gamma - 1) - 3 * gamma))).item()
               - 0.5) < 1e-6
    assert 1.03 < gamma < 1.05
    ratio_232 = (50 / 0.01) ** (1 / 231)
    assert abs(langevin_variance_ratio(6.2e-6, 0.01, ratio_232, 5) - 1) < 0.06
    data = torch.zeros(3, 3, 32, 32)
    data[1] += 1.0
    data[2] -= 0.5
    assert math.isclose(max_pairwise_distance(data), 1.5 * math.sqrt(3072), rel_tol=1e-9)
    s = ncsnv2_settings(data, sigma_min=0.01, n_steps_each=5)
    assert s["sigma_max"] == max_pairwise_distance(data)
    assert 5.5e-6 < s["step_lr"] < 7e-6 and s["n_levels"] > 100
