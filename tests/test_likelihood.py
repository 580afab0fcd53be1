import math

import pytest
import torch
from oracles import F64, gaussian, mixture

from scorelib.likelihood import bits_per_dim, ddpm_vlb, dequantize, log_likelihood
from scorelib.precond import EpsToScore
from scorelib.schedules import DDPMSchedule


def test_probability_flow_log_likelihood_of_a_mixture_is_exact():
    gmm = mixture(d=2, k=3, seed=0, spread=2.0, scale=0.3)
    x = gmm.sample(64, generator=torch.Generator().manual_seed(0), dtype=F64)
    # σ_max large against the data (|μ| ≈ 3): the prior N(0, σ_max² I) is off by O(|μ|/σ_max) nats
    got, nfe = log_likelihood(gmm, x, 1000.0, 0.01, rtol=1e-7, atol=1e-7, exact_trace=True, return_nfe=True)
    want = gmm.log_prob(x, 0.01)
    assert (got - want).abs().mean() < 0.01, (got - want).abs().mean()
    assert nfe > 10


def test_hutchinson_estimate_is_unbiased_across_probes():
    g = gaussian(d=4, seed=1)
    x = g.sample(4, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = log_likelihood(g, x, 50.0, 0.05, rtol=1e-6, atol=1e-6, exact_trace=True)
    reps = 64  # independent probe draws: copies of the batch, each row gets its own probes
    for probe in ("gaussian", "rademacher"):
        est = log_likelihood(g, x.repeat(reps, 1), 50.0, 0.05, rtol=1e-6, atol=1e-6, n_probes=2, probe=probe,
                             generator=torch.Generator().manual_seed(0))
        draws = est.reshape(reps, x.shape[0])
        se = draws.std(0) / math.sqrt(draws.shape[0])
        assert ((draws.mean(0) - exact).abs() < 4 * se + 1e-3).all(), (draws.mean(0), exact, se)
        assert draws.std(0).max() > 1e-4  # the estimate really is stochastic


def test_bits_per_dim_offsets():
    # a uniform density on [0, 1]^D has log p = 0: 8 bits per dim for 8-bit data; on [-1, 1]^D log p = -D log 2
    assert bits_per_dim(torch.tensor([0.0]), 10, 1 / 256).item() == pytest.approx(8.0)
    assert bits_per_dim(torch.tensor([-10 * math.log(2)]), 10, 2 / 256).item() == pytest.approx(8.0)
    x = dequantize(torch.tensor([[0, 255]], dtype=torch.uint8), centered=True, generator=torch.Generator())
    assert (x >= -1).all() and (x <= 1).all()


def _vlb_direct(x0: float, eps_fn, sched: DDPMSchedule, t: int, noise: float) -> float:
    """L_{t-1} for scalar data with torch.distributions: KL(q(x_{t-1}|x_t,x0) ‖ N(μ_θ, β̃_t)) in bits."""
    a, a_prev, b = sched.alphas_cumprod[t].item(), sched.alphas_cumprod_prev[t].item(), sched.betas[t].item()
    xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    var = b * (1 - a_prev) / (1 - a)
    mean_q = (math.sqrt(a_prev) * b / (1 - a)) * x0 + (math.sqrt(1 - b) * (1 - a_prev) / (1 - a)) * xt
    eps = eps_fn(xt, t)
    x0_hat = (xt - math.sqrt(1 - a) * eps) / math.sqrt(a)
    mean_p = (math.sqrt(a_prev) * b / (1 - a)) * x0_hat + (math.sqrt(1 - b) * (1 - a_prev) / (1 - a)) * xt
    q = torch.distributions.Normal(torch.tensor(mean_q, dtype=F64), math.sqrt(var))
    p = torch.distributions.Normal(torch.tensor(mean_p, dtype=F64), math.sqrt(var))
    return torch.distributions.kl_divergence(q, p).item() / math.log(2)


def test_discrete_vlb_of_a_1d_gaussian_matches_a_direct_computation():
    """Data: 1-D N(0.1, 0.3²) on the 8-bit grid; the model: its exact ε (posterior mean) with β̃."""
    sched = DDPMSchedule(torch.linspace(2e-3, 0.2, 50, dtype=F64))
    g = gaussian(d=1, seed=0)
    g.means[:] = 0.1
    g.covs[:] = 0.09
    g.evals[:] = 0.09
    x0 = (torch.round((torch.tensor([[-0.4], [0.1], [0.35]], dtype=F64) + 1) * 127.5) / 127.5 - 1)
    abar = sched.alphas_cumprod

    def model(x_t, t):
        return g.eps(x_t, t, abar)

    wrapped = EpsToScore(model, abar, quantize=True)  # the network sees int t
    total, terms = ddpm_vlb(wrapped, x0, sched, variance="small", generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    for t in range(sched.T):
        noise = torch.randn(x0.shape, generator=gen, dtype=F64)  # the same draws as ddpm_vlb's loop
        if t == 0:
            continue
        for i in range(3):
            want = _vlb_direct(x0[i, 0].item(), lambda xt, tt: model(torch.tensor([[xt]], dtype=F64),
                                                                      torch.tensor([tt]))[0, 0].item(),
                               sched, t, noise[i, 0].item())
            assert terms[i, t].item() == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert total.shape == (3,) and (terms[:, 0] > 0).all()
    a_T = abar[-1].item()
    prior = torch.distributions.kl_divergence(torch.distributions.Normal(math.sqrt(a_T) * x0[:, 0], math.sqrt(1 - a_T)),
                                              torch.distributions.Normal(0.0, 1.0)) / math.log(2)
    torch.testing.assert_close(total, terms.sum(1) + prior)
