import pytest
import torch
from oracles import F64, mixture

from scorelib import EpsToScore, ScoreToEps, linear_betas, vp_sigmas
from scorelib.adapters import (
    ScoreToContinuousEps,
    denoised_to_score,
    denoised_to_v,
    eps_to_denoised,
    eps_to_score,
    score_to_denoised,
    score_to_eps,
    sigma_to_timestep,
    timestep_to_sigma,
    v_to_denoised,
    v_to_score,
)
from scorelib.analytic import GaussianMixture
from scorelib.precond import ContinuousEpsToScore, IndexedScore
from scorelib.schedules import VPSDE, SubVPSDE, alphas_cumprod_from_betas, cosine_betas

ABAR = alphas_cumprod_from_betas(linear_betas(1000))


def test_pure_conversions_are_consistent():
    x, s = torch.randn(6, 3, 4, 4, dtype=F64), torch.randn(6, 3, 4, 4, dtype=F64)
    sigma = torch.rand(6, dtype=F64) * 3 + 0.1
    d = score_to_denoised(x, s, sigma)
    torch.testing.assert_close(denoised_to_score(x, d, sigma), s)
    eps = score_to_eps(s, sigma)
    torch.testing.assert_close(eps_to_score(eps, sigma), s)
    torch.testing.assert_close(eps_to_denoised(x, eps, sigma), d)
    v = denoised_to_v(x, d, sigma)
    torch.testing.assert_close(v_to_denoised(x, v, sigma), d)
    torch.testing.assert_close(v_to_score(x, v, sigma), s)


def test_v_prediction_matches_vp_definition():
    """v = √ᾱ ε - √(1-ᾱ) x₀ with x_t = √ᾱ x₀ + √(1-ᾱ) ε (Salimans & Ho 2022)."""
    x0, eps = torch.randn(5, 7, dtype=F64), torch.randn(5, 7, dtype=F64)
    abar = torch.rand(5, dtype=F64) * 0.98 + 0.01
    a = abar[:, None]
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    sigma = vp_sigmas(abar)
    x_sigma = x0 + sigma[:, None] * eps  # = x_t / √ᾱ
    torch.testing.assert_close(denoised_to_v(x_sigma, x0, sigma), v)
    torch.testing.assert_close(v_to_denoised(x_sigma, v, sigma), x0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigma_timestep_lookup_exact_at_table_values(dtype):
    table = vp_sigmas(ABAR)
    t = torch.arange(1000)
    got = sigma_to_timestep(table.to(dtype), table)
    assert torch.equal(got, t.to(got.dtype))
    torch.testing.assert_close(timestep_to_sigma(t, table), table)
    # fractional: log-σ interpolation both ways
    tf = torch.tensor([0.5, 10.25, 998.75], dtype=F64)
    torch.testing.assert_close(sigma_to_timestep(timestep_to_sigma(tf, table), table), tf)
    lo, hi = table[10].log(), table[11].log()
    assert timestep_to_sigma(torch.tensor([10.25], dtype=F64), table).log().item() == pytest.approx(
        (0.75 * lo + 0.25 * hi).item())


class ExactEps(torch.nn.Module):
    """The exact DDPM ε-network of a mixture, on integer or fractional timesteps (checks t's value)."""

    def __init__(self, gmm, abar):
        super().__init__()
        self.gmm, self.abar = gmm, abar
        self.seen_t = None

    def forward(self, x_t, t):
        self.seen_t = t
        ti = t.round().long()
        assert torch.allclose(t.double(), ti.double()), "expected table timesteps"
        return self.gmm.eps(x_t, ti, self.abar)


@pytest.mark.parametrize("shape", [(8, 2), (8, 2, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eps_to_score_of_exact_eps_is_exact_score(shape, dtype):
    gmm = mixture(d=2, k=3, seed=0)
    model = EpsToScore(ExactEps(gmm, ABAR), ABAR)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 900, 999])
    sigma = vp_sigmas(ABAR)[t].to(dtype)
    x = (torch.randn(shape, dtype=F64) * 3).to(dtype)
    got = model(x, sigma)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(model.net.seen_t.round().long(), t)
    want = gmm.score(x.double(), sigma.double()).to(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("shape", [(16, 5), (16, 3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("betas", [linear_betas(1000), cosine_betas(1000)])
def test_score_to_eps_inverts_eps_to_score(shape, dtype, betas):
    abar = alphas_cumprod_from_betas(betas)
    torch.manual_seed(0)
    w = torch.randn(shape[1:], dtype=dtype)

    def eps_net(x_t, t):  # any smooth function of (x_t, t), including fractional t
        return torch.tanh(x_t * w + t.to(dtype)[(...,) + (None,) * (x_t.ndim - 1)] / 300)

    roundtrip = ScoreToEps(EpsToScore(eps_net, abar), abar)
    x_t = torch.randn(shape, dtype=dtype)
    for t in [torch.randint(0, 1000, (shape[0],)), torch.rand(shape[0], dtype=F64) * 999]:
        want = eps_net(x_t, t if t.dtype == torch.long else t.to(dtype))
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(roundtrip(x_t, t), want, **tol)


def test_eps_to_score_quantize_and_kwargs():
    got = {}

    def eps_net(x_t, t, y=None):
        got["t"], got["y"] = t, y
        return torch.zeros_like(x_t)

    m = EpsToScore(eps_net, ABAR, quantize=True)
    m(torch.randn(2, 3), vp_sigmas(ABAR)[[5, 6]].float() * 1.001, y=torch.tensor([1, 2]))
    assert got["t"].dtype == torch.long and got["t"].tolist() == [5, 6] and got["y"].tolist() == [1, 2]


def test_eps_to_score_quantize_rounds_to_the_nearest_timestep():
    """quantize=True gives the network the nearest table index (in log σ): a σ just below σ_k, or 70% of the way
    from σ_k to σ_{k+1}, is index k resp. k+1, never the floor; `round_sigma` gives that index's σ."""
    got = {}

    def eps_net(x_t, t):
        got["t"] = t
        return torch.zeros_like(x_t)

    m = EpsToScore(eps_net, ABAR, quantize=True)
    table = vp_sigmas(ABAR)
    k = torch.tensor([5, 6, 400, 998])
    between = torch.exp(torch.lerp(table[k].log(), table[k + 1].log(), 0.7))
    sigma = torch.cat([table[k] * (1 - 1e-6), between])
    m(torch.randn(8, 3, dtype=F64), sigma)
    assert got["t"].dtype == torch.long and got["t"].tolist() == k.tolist() + (k + 1).tolist()
    torch.testing.assert_close(m.round_sigma(sigma), table[torch.cat([k, k + 1])])


def test_buffers_follow_device_and_stay_out_of_state_dict():
    m = EpsToScore(torch.nn.Identity(), ABAR)
    assert "sigmas" not in m.state_dict()
    assert m.to("meta").sigmas.device.type == "meta"


@pytest.mark.parametrize("sde", [VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0)])
def test_continuous_vp_adapter_against_exact_time_marginal(sde):
    """Build the exact score_sde ε-network from the time-t marginal p_t = mixture of N(m μ_k, m² Σ_k + s² I)
    and check ContinuousEpsToScore turns it into the σ-space score of the data mixture."""
    gmm = mixture(d=2, k=3, seed=1)
    eye = torch.eye(2, dtype=F64)

    def net(x_t, label):
        t = label.double() / 999.0
        out = torch.empty_like(x_t, dtype=F64)
        for i in range(x_t.shape[0]):
            m, s = sde.mean_scale(t[i]), sde.marginal_std(t[i])
            pt = GaussianMixture(m * gmm.means, m**2 * gmm.covs + s**2 * eye, gmm.weights)
            out[i] = -s * pt.score(x_t[i : i + 1].double(), 0.0)[0]
        return out.to(x_t.dtype)

    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0, 40.0], dtype=F64)
    x = gmm.sample(5, generator=torch.Generator().manual_seed(0), dtype=F64) + sigma[:, None] * torch.randn(5, 2,
                                                                                                           dtype=F64)
    torch.testing.assert_close(ContinuousEpsToScore(net, sde)(x, sigma), gmm.score(x, sigma))
    # and back
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    x_t = torch.randn(3, 2, dtype=F64)
    torch.testing.assert_close(ScoreToContinuousEps(gmm, sde)(x_t, t * 999), net(x_t, t * 999))


def test_indexed_score_picks_nearest_level_in_log_sigma():
    sigmas = torch.tensor([1.0, 0.1, 0.01], dtype=F64)
    m = IndexedScore(lambda x, labels: labels[:, None].to(x.dtype).expand_as(x), sigmas)
    out = m(torch.zeros(4, 2), torch.tensor([2.0, 0.3, 0.05, 0.001]))
    assert out[:, 0].tolist() == [0, 1, 1, 2]
