import math

import pytest
import scipy.integrate
import scipy.stats
import torch
from oracles import F64, gaussian, mixture

from scorelib import geometric_sigmas
from scorelib.losses import (
    ImportanceTimesteps,
    UniformTimesteps,
    discretized_gaussian_log_likelihood,
    dsm_loss,
    dsm_loss_at,
    eps_loss,
    hybrid_loss,
    interpolated_log_variance,
    normal_kl,
    prior_bpd,
    ssm_loss_at,
    vlb_loss,
    vlb_term,
)
from scorelib.precond import EpsToScore
from scorelib.schedules import DDPMSchedule


def _gaussian_dsm_constant(g, sigma):
    """min E ½σ²‖s + z/σ‖² = ½(D - σ² tr((Σ+σ²I)⁻¹)) for data N(μ, Σ)."""
    d = g.dim
    c = g.covs[0] + sigma**2 * torch.eye(d, dtype=F64)
    return 0.5 * (d - sigma**2 * torch.linalg.inv(c).trace().item())


@pytest.mark.parametrize("sigma", [0.1, 1.0, 5.0])
def test_dsm_at_exact_score_equals_irreducible_constant(sigma):
    g = gaussian(d=3, seed=0)
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    x = g.sample(n, generator=gen, dtype=F64)
    loss = dsm_loss_at(g, x, torch.full((n,), sigma, dtype=F64), torch.randn(n, 3, generator=gen, dtype=F64))
    se = loss.std().item() / math.sqrt(n)
    assert abs(loss.mean().item() - _gaussian_dsm_constant(g, sigma)) < 4 * se


@pytest.mark.parametrize("anneal_power", [0.0, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("loss", ["at", "levels"])
def test_dsm_weighting_follows_anneal_power(anneal_power, loss):
    """ermongroup/ncsn losses/dsm.py `anneal_dsm_score_estimation`: ½ Σ_d (s(x̃, σ) + (x̃ - x)/σ²)² · σ^anneal_power
    per example, written out here for a score that is not the exact one, at a spread of σ."""
    g = mixture(d=3, seed=4)
    gen = torch.Generator().manual_seed(3)
    x = g.sample(16, generator=gen, dtype=F64)

    def score(xx, s):
        return g(xx, s) + 0.3 * torch.sin(xx)

    sigmas = geometric_sigmas(5.0, 0.02, 7)
    if loss == "at":
        sigma, z = sigmas[torch.arange(16) % 7], torch.randn(16, 3, generator=gen, dtype=F64)
        got = dsm_loss_at(score, x, sigma, z, anneal_power=anneal_power)
    else:  # dsm_loss draws σ (uniform over the levels) and then z from the generator
        gen = torch.Generator().manual_seed(5)
        sigma = sigmas[torch.randint(0, 7, (16,), generator=gen)]
        z = torch.randn(16, 3, generator=gen, dtype=F64)
        got = dsm_loss(score, x, sigmas, anneal_power=anneal_power, generator=torch.Generator().manual_seed(5))
    x_tilde = x + sigma[:, None] * z
    want = 0.5 * ((score(x_tilde, sigma) + (x_tilde - x) / sigma[:, None] ** 2) ** 2).sum(1) * sigma**anneal_power
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_dsm_over_levels_and_perturbed_scores_are_worse():
    g = gaussian(d=2, seed=2)
    sigmas = geometric_sigmas(3.0, 0.05, 6)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x = g.sample(n, generator=gen, dtype=F64)
    loss = dsm_loss(g, x, sigmas, generator=torch.Generator().manual_seed(7))
    want = sum(_gaussian_dsm_constant(g, s.item()) for s in sigmas) / len(sigmas)
    assert abs(loss.mean().item() - want) < 4 * loss.std().item() / math.sqrt(n)
    assert loss.shape == (n,)
    for delta in [-0.3, -0.05, 0.05, 0.3]:
        def perturbed(xx, s, delta=delta):
            return g(xx, s) + delta * torch.tanh(xx)
        worse = dsm_loss(perturbed, x, sigmas, generator=torch.Generator().manual_seed(7))
        assert worse.mean() > loss.mean()


def _theta_grad(loss_fn, g, x, sigma):
    theta = torch.tensor(0.5, dtype=F64, requires_grad=True)

    def model(xx, s):
        return g(xx, s) + theta * torch.sin(xx)

    (grad,) = torch.autograd.grad(loss_fn(model, x, sigma).mean(), theta)
    return grad.item()


@pytest.mark.parametrize("variance_reduction", [True, False])
def test_dsm_and_sliced_gradients_point_to_exact_score(variance_reduction):
    """s_θ = s* + θ h: both objectives equal ½ E λ‖s_θ - s*‖² + const, so dL/dθ = θ E[λ‖h‖²] > 0 at θ = ½."""
    g = mixture(d=2, k=2, seed=3)
    sigma = 0.7
    gen = torch.Generator().manual_seed(0)
    n = 100_000
    x = g.sample(n, sigma=0.0, generator=gen, dtype=F64)
    x_noisy = x + sigma * torch.randn(n, 2, generator=gen, dtype=F64)
    expected = 0.5 * sigma**2 * (torch.sin(x_noisy) ** 2).sum(1).mean().item()
    sig = torch.full((n,), sigma, dtype=F64)
    noise = (x_noisy - x) / sigma

    def dsm(model, xx, s):
        return dsm_loss_at(model, xx, s, noise)

    def ssm(model, xx, s):
        return ssm_loss_at(model, x_noisy, s, n_projections=4, variance_reduction=variance_reduction,
                           generator=torch.Generator().manual_seed(1))

    assert _theta_grad(dsm, g, x, sig) == pytest.approx(expected, rel=0.05)
    assert _theta_grad(ssm, g, x, sig) == pytest.approx(expected, rel=0.1)


def test_ssm_of_linear_score_matches_closed_form():
    """s(x) = -a x: E_v[vᵀ∇(vᵀs)] = -a D and ½‖s‖² = ½a²‖x‖², so SSM-VR = λ(-a D + ½a²‖x‖²)."""
    x = torch.randn(64, 5, dtype=F64)
    sigma = torch.full((64,), 0.5, dtype=F64)
    got = ssm_loss_at(lambda xx, s: -2.0 * xx, x, sigma, n_projections=500, generator=torch.Generator().manual_seed(0))
    want = 0.25 * (-2.0 * 5 + 0.5 * 4.0 * (x**2).sum(1))
    # Var(vᵀAv) = 2 tr(A²) = 40 for Gaussian v: standard error of the batch mean is 0.25·√40/√(500·64)
    assert abs((got - want).mean().item()) < 4 * 0.25 * math.sqrt(40 / (500 * 64))
    torch.testing.assert_close(got, want, rtol=0, atol=5 * 0.25 * math.sqrt(40 / 500))


def test_eps_loss_at_exact_eps_is_irreducible():
    """E‖ε - E[ε|x_t]‖²/D = tr(I - (1-ᾱ)(ᾱΣ + (1-ᾱ)I)⁻¹)/D for Gaussian data."""
    g = gaussian(d=3, seed=4)
    sched = DDPMSchedule.linear(1000)
    abar = sched.alphas_cumprod
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    for t_val in [0, 100, 500, 999]:
        x0 = g.sample(n, generator=gen, dtype=F64)
        t = torch.full((n,), t_val)
        noise = torch.randn(n, 3, generator=gen, dtype=F64)
        model = EpsToScore(lambda xt, tt: g.eps(xt, tt, abar), abar, quantize=True)  # the network sees int t
        loss = eps_loss(model, x0, sched, t, noise)
        a = abar[t_val]
        c = a * g.covs[0] + (1 - a) * torch.eye(3, dtype=F64)
        want = (3 - (1 - a) * torch.linalg.inv(c).trace()).item() / 3
        assert abs(loss.mean().item() - want) < 4 * loss.std().item() / math.sqrt(n) + 1e-12


def test_normal_kl_closed_form_and_zero():
    m1, m2 = torch.tensor([0.3]), torch.tensor([-0.2])
    lv1, lv2 = torch.tensor([0.1]), torch.tensor([-0.4])
    p, q = torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q))
    assert normal_kl(m1, lv1, m1, lv1).item() == 0


def _log_bin_mass(lo: float, hi: float, mean: float, scale: float) -> float:
    """log ∫_lo^hi N(u; mean, scale²) du by adaptive quadrature, with the density's largest value on
    the bin factored out so far-tail bins (masses like e^-18000) stay representable."""
    peak = min(max(mean, lo), hi)
    logpdf = scipy.stats.norm(mean, scale).logpdf
    ref = logpdf(peak)
    a = peak - 40 * scale if math.isinf(lo) else lo  # an infinite edge: a finite core plus the remote rest
    b = peak + 40 * scale if math.isinf(hi) else hi
    pts = [p for p in (mean, mean - 5 * scale, mean + 5 * scale) if a < p < b] or None

    def integral(u0, u1, points=None):
        return scipy.integrate.quad(lambda u: math.exp(logpdf(u) - ref), u0, u1, points=points, epsabs=0,
                                    epsrel=1e-11, limit=200)[0]

    rel = integral(a, b, pts) + (integral(lo, a) if lo < a else 0.0) + (integral(b, hi) if b < hi else 0.0)
    return ref + math.log(rel)


def test_discretized_gaussian_matches_numerical_integration():
    bins = torch.linspace(-1, 1, 256, dtype=F64)
    idx = torch.tensor([0, 1, 100, 127, 128, 200, 254, 255])
    for mean, log_scale in [(0.0, math.log(0.1)), (0.93, math.log(0.01)), (-0.5, math.log(2.0)),
                            (0.999, math.log(0.003))]:
        x = bins[idx]
        got = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        for xi, gi in zip(x.tolist(), got.tolist(), strict=True):
            lo = -math.inf if xi < -0.999 else xi - 1 / 255
            hi = math.inf if xi > 0.999 else xi + 1 / 255
            assert gi == pytest.approx(_log_bin_mass(lo, hi, mean, math.exp(log_scale)), rel=1e-7, abs=1e-9)
        total = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean),
                                                    torch.full_like(bins, log_scale)).exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-9)
    # far tails stay finite and differentiable
    ls = torch.tensor([math.log(1e-3)] * 3, dtype=F64, requires_grad=True)
    mean = torch.tensor([0.9, -0.9, -0.5], dtype=F64)
    out = discretized_gaussian_log_likelihood(torch.tensor([-1.0, 0.0, 1.0], dtype=F64), mean, ls)
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.sum(), ls)
    assert torch.isfinite(grad).all()


def test_vlb_terms_zero_at_true_posterior():
    sched = DDPMSchedule.cosine(1000)
    x0 = torch.rand(16, 3, 4, 4, dtype=F64) * 2 - 1
    t = torch.randint(1, 1000, (16,))
    noise = torch.randn_like(x0)
    xt = sched.q_sample(x0, t, noise)
    logvar = sched.posterior_log_variance_clipped[t][:, None, None, None].expand_as(x0)
    terms = vlb_term(sched, x0, xt, t, noise, logvar)  # ε = the true noise -> μ_θ = μ̃ exactly
    assert terms.abs().max() < 1e-9
    wrong = vlb_term(sched, x0, xt, t, noise + 0.1, logvar)
    assert (wrong > 1e-6).all()


def test_learned_variance_interpolates_between_beta_and_beta_tilde():
    sched = DDPMSchedule.linear(1000)
    t = torch.tensor([3, 500])
    v = torch.ones(2, 1, dtype=F64)
    torch.testing.assert_close(interpolated_log_variance(v, sched, t).squeeze(1), sched.betas[t].log())
    torch.testing.assert_close(interpolated_log_variance(0 * v, sched, t).squeeze(1),
                               sched.posterior_log_variance_clipped[t])


class SplitNet(torch.nn.Module):
    """ε head and v head with separate parameters."""

    def __init__(self):
        super().__init__()
        self.eps_w = torch.nn.Parameter(torch.tensor(0.3))
        self.v_w = torch.nn.Parameter(torch.tensor(-0.2))

    def forward(self, xt, t):
        return torch.cat([self.eps_w * xt, self.v_w * xt + 0.1], dim=1)


def test_hybrid_loss_routes_no_vlb_gradient_into_the_mean():
    sched = DDPMSchedule.cosine(100)
    raw = SplitNet().double()
    net = EpsToScore(raw, sched.alphas_cumprod, learned_variance=True)
    x0 = torch.rand(32, 2, 3, 3, dtype=F64) * 2 - 1
    t = torch.randint(0, 100, (32,))
    noise = torch.randn_like(x0)
    hybrid = hybrid_loss(net, x0, sched, t, noise, lambda_vlb=0.001).mean()
    g_eps, g_v = torch.autograd.grad(hybrid, [raw.eps_w, raw.v_w])
    simple = eps_loss(net, x0, sched, t, noise).mean()
    (g_eps_simple,) = torch.autograd.grad(simple, [raw.eps_w])
    torch.testing.assert_close(g_eps, g_eps_simple, rtol=1e-12, atol=1e-14)
    assert g_v.abs() > 0
    # and the pure VLB objective does train the mean
    (g_eps_vlb,) = torch.autograd.grad(vlb_loss(net, x0, sched, t, noise).mean(), [raw.eps_w])
    assert g_eps_vlb.abs() > 0


def test_prior_bpd_closed_form():
    sched = DDPMSchedule.linear(1000)
    x0 = torch.tensor([[0.5, -1.0]], dtype=F64)
    a = sched.alphas_cumprod[-1]
    p = torch.distributions.Normal(a.sqrt() * x0, (1 - a).sqrt())
    want = torch.distributions.kl_divergence(p, torch.distributions.Normal(0.0, 1.0)).mean() / math.log(2)
    torch.testing.assert_close(prior_bpd(sched, x0), want.reshape(1))


def test_uniform_timesteps():
    t, w = UniformTimesteps(10).sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 9 and torch.all(w == 1)


def test_importance_sampling_after_warmup():
    T = 8
    s = ImportanceTimesteps(T, history=10, uniform_prob=0.001)
    torch.testing.assert_close(s.probabilities(), torch.full((T,), 1 / T, dtype=F64))
    losses = torch.arange(1, T + 1, dtype=F64)  # L_t = t + 1, constant
    for _ in range(9):
        s.update(torch.arange(T), losses)
    assert not s.warmed_up()
    s.update(torch.arange(T), losses)
    assert s.warmed_up()
    want = losses / losses.sum() * 0.999 + 0.001 / T
    torch.testing.assert_close(s.probabilities(), want)
    t, w = s.sample(200_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(t, minlength=T).double() / 200_000
    torch.testing.assert_close(freq, want, atol=0.005, rtol=0)
    torch.testing.assert_close(w.double(), (1 / (T * want))[t], rtol=1e-6, atol=0)
    # history is a ring of the last 10: new losses replace old ones
    for _ in range(10):
        s.update(torch.tensor([0]), torch.tensor([100.0]))
    assert s.losses[0].eq(100).all()
    state = s.state_dict()
    s2 = ImportanceTimesteps(T)
    s2.load_state_dict(state)
    torch.testing.assert_close(s2.probabilities(), s.probabilities())
