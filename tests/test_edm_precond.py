"""EDM's preconditionings (Karras et al. 2022, Table 1) against EDM's own classes.

Golden numbers (tests/data/edm/edm_golden.pt, "precond"): EDM's training/networks.py `EDMPrecond`
(σ_d = 0.5 and 0.7), `VPPrecond` (defaults and β_d = 15, β_min = 0.2, M = 500), `VEPrecond` and
`iDDPMPrecond`, run on CPU around a stub inner model that records its inputs and returns
F = tanh(x_in)·(1 + 0.1·c_noise) + 0.01·Σ_k (k+1)·onehot_k + 0.001·Σ augment_labels (2C channels for iDDPM:
[F, -F/2]), at σ = 0.002 … 80 with class and augmentation labels. Recorded: the network input c_in·x,
the noise label c_noise and D(x; σ).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scorelib import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond
from scorelib.precond import ContinuousEpsToScore, iddpm_alphas_cumprod
from scorelib.schedules import VPSDE, cosine_betas

GOLDEN = torch.load(Path(__file__).parent / "data" / "edm" / "edm_golden.pt", weights_only=True)["precond"]
INPUTS = GOLDEN["inputs"]


class Stub(torch.nn.Module):
    """The stub network of the golden run, in scorelib's convention (int64 labels y)."""

    def __init__(self, doubled: bool = False):
        super().__init__()
        self.doubled, self.seen = doubled, []

    def forward(self, x, label, y=None, augment_labels=None):
        self.seen.append((x, label))
        f = torch.tanh(x) * (1 + 0.1 * label.reshape(-1, 1, 1, 1))
        f = f + 0.01 * (y + 1).reshape(-1, 1, 1, 1) + 0.001 * augment_labels.sum(1).reshape(-1, 1, 1, 1)
        return torch.cat([f, -0.5 * f], 1) if self.doubled else f


WRAPPERS = {
    "EDMPrecond": lambda net, kw: EDMPrecond(net, **kw),
    "EDMPrecond_sd": lambda net, kw: EDMPrecond(net, **kw),
    "VPPrecond": lambda net, kw: VPPrecond(net, **kw),
    "VPPrecond_custom": lambda net, kw: VPPrecond(net, **kw),
    "VEPrecond": lambda net, kw: VEPrecond(net, **kw),
    "iDDPMPrecond": lambda net, kw: IDDPMPrecond(net, **kw),
}


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _run(name):
    net = Stub(doubled=name == "iDDPMPrecond")
    wrapper = WRAPPERS[name](net, GOLDEN[name]["kw"])
    sigma = INPUTS["sigma"]
    x = INPUTS["x"] * (1 + sigma.reshape(-1, 1, 1, 1))
    d = wrapper.denoise(x, sigma, y=INPUTS["y"], augment_labels=INPUTS["augment_labels"])
    x_in, label = net.seen[-1]
    return wrapper, x, d, x_in, label


@pytest.mark.parametrize("name", ["EDMPrecond", "EDMPrecond_sd", "VEPrecond"])
def test_edm_and_ve_wrappers_equal_edm(name):
    """c_in·x, c_noise = ¼ ln σ (EDM) / ln(σ/2) (VE), and D = c_skip x + c_out F, as EDM's classes."""
    _, _, d, x_in, label = _run(name)
    g = GOLDEN[name]
    assert _rel(x_in, g["x_in"]) < 1e-6
    torch.testing.assert_close(label.float(), g["label"], rtol=1e-6, atol=1e-6)
    assert _rel(d, g["D"]) < 1e-6


@pytest.mark.parametrize("name", ["VPPrecond", "VPPrecond_custom"])
def test_vp_wrapper_equals_edm(name):
    """EDM's VP column: c_in = 1/√(σ²+1), c_noise = (M-1)·t(σ), D = x - σF. EDM computes t(σ) in float32
    as (√(β_min² + 2β_d ln(1+σ²)) - β_min)/β_d, which cancels at small σ (its label at σ = 0.002 is off by
    1.3%); scorelib's label is the float64 root (schedules.VPSDE.t_of_sigma), so labels agree to 1e-3
    absolute and D, where the label enters multiplied by c_out = σ, to 1e-6."""
    wrapper, _, d, x_in, label = _run(name)
    g = GOLDEN[name]
    assert _rel(x_in, g["x_in"]) < 1e-6
    torch.testing.assert_close(label.float()[1:], g["label"][1:], rtol=2e-6, atol=1e-3)
    torch.testing.assert_close(label.float(), g["label"], rtol=0, atol=1e-3)
    assert _rel(d, g["D"]) < 1e-6
    # EDM's σ(t) range: σ_max = σ(1) in float32; σ_min = σ(ε_t) is exact here (EDM's float32 gives 9.8e-4)
    assert wrapper.sigma_max == pytest.approx(g["sigma_max"], rel=1e-6)
    beta_d, beta_min = g["kw"].get("beta_d", 19.9), g["kw"].get("beta_min", 0.1)
    exact = float(torch.expm1(torch.tensor(0.5 * beta_d * 1e-10 + beta_min * 1e-5, dtype=torch.float64)).sqrt())
    assert wrapper.sigma_min == pytest.approx(exact, rel=1e-12)


def test_vp_wrapper_is_score_sde_continuous_vp_adapter():
    """VPPrecond is ContinuousEpsToScore on the VP SDE β(t) = 0.1 + 19.9 t with label scale 999: the same
    inputs and score, to float64 precision."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()

    def net(x, label):
        return conv(x) * torch.cos(label).reshape(-1, 1, 1, 1)

    a = VPPrecond(net)
    b = ContinuousEpsToScore(net, VPSDE(beta_min=0.1, beta_max=20.0), label_scale=999)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.3, 5.0, 80.0], dtype=torch.float64)
    for ia, ib in zip(a.inputs(x, sigma), b.inputs(x, sigma), strict=False):
        torch.testing.assert_close(ia, ib, rtol=1e-14, atol=0)
    torch.testing.assert_close(a(x, sigma), b(x, sigma), rtol=1e-14, atol=0)


def test_iddpm_wrapper_equals_edm_on_its_grid():
    """iDDPM: c_noise = M - 1 - j(σ) with j the nearest level (in σ), D = x - σF[:, :C]. At σ ≥ u_{M-1}/2
    the labels are EDM's exactly; at σ = 0.002 EDM rounds to its extra level u_M = 0 (label -1), scorelib
    to u_{M-1} (label 0), the smallest level the network was trained at."""
    _, _, d, x_in, label = _run("iDDPMPrecond")
    g = GOLDEN["iDDPMPrecond"]
    assert _rel(x_in, g["x_in"]) < 1e-6
    assert g["label"][0] == -1 and label[0] == 0
    torch.testing.assert_close(label[1:].float(), g["label"][1:], rtol=0, atol=0)
    assert _rel(d[1:], g["D"][1:]) < 1e-6


def test_iddpm_levels_are_the_cosine_schedule():
    """EDM's recursion u_{j-1} = √((u_j²+1)/max(ᾱ(j-1)/ᾱ(j), C_1) - 1) is improved DDPM's cosine schedule
    (s = C_2, β ≤ 1 - C_1): EDM's float32 levels equal scorelib's float64 ones to 5e-4 (EDM's rounding,
    largest at the smallest levels), and u_0 = 20291 (EDM's iDDPM σ_max)."""
    g = GOLDEN["iDDPMPrecond"]
    ours = IDDPMPrecond(None).sigmas.flip(0)  # u_0 > ... > u_{M-1}
    edm = g["u"][:-1].double()
    assert g["u"][-1] == 0 and edm.shape == ours.shape
    torch.testing.assert_close(ours, edm, rtol=5e-4, atol=0)
    torch.testing.assert_close(ours[:500], edm[:500], rtol=2e-6, atol=0)
    assert float(ours[0]) == pytest.approx(20291.17, rel=1e-6)
    assert torch.equal(iddpm_alphas_cumprod(), torch.cumprod(1 - cosine_betas(1000, 0.008, 0.999), 0))


def test_iddpm_round_sigma_matches_edm_above_its_zero_level():
    g = GOLDEN["iDDPMPrecond"]
    w = IDDPMPrecond(None)
    ours = w.round_sigma(g["round_in"])
    keep = g["round_in"] >= float(w.sigmas[0]) / 2
    torch.testing.assert_close(ours[keep], g["round"][keep], rtol=5e-4, atol=0)
    assert torch.all(ours[~keep] == w.sigmas[0].float())  # EDM: 0 there
    assert w.sigma_min == pytest.approx(0.00642, rel=1e-3) and w.sigma_max == pytest.approx(20291.17, rel=1e-6)


@pytest.mark.parametrize("name", ["EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"])
def test_denoised_eps_and_score_agree(name):
    """Each kind computed from F directly obeys Tweedie: D = x + σ² s = x - σ ε (float64)."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 6 if name == "iDDPMPrecond" else 3, 3, padding=1).double()

    def net(x, label, **kw):
        return conv(x) * (1 + 0.01 * label.reshape(-1, 1, 1, 1))

    w = WRAPPERS[name](net, {})
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.4, 3.0, 60.0], dtype=torch.float64)
    d, e, s = w.denoise(x, sigma), w.eps(x, sigma), w(x, sigma)
    sig = sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x - sig * e, d, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(-e / sig, s, rtol=1e-10, atol=1e-12)


def test_edm_precond_is_exact_for_an_ideal_network():
    """With F the network EDM's loss is minimised by, F* = (D* - c_skip x)/c_out for the exact denoiser D*
    of a Gaussian, the wrapper's score is the exact score at every σ."""
    mu, s2, sd = 0.3, 0.25, 0.5

    def ideal(x_in, label):
        sigma = torch.exp(4 * label).reshape(-1, 1)
        x = x_in * (sigma**2 + sd**2).sqrt()
        d = (s2 * x + sigma**2 * mu) / (s2 + sigma**2)
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        return (d - c_skip * x) / c_out

    w = EDMPrecond(ideal, sigma_data=sd)
    x = torch.randn(5, 2, dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    exact = (mu - x) / (s2 + sigma[:, None] ** 2)
    torch.testing.assert_close(w(x, sigma), exact, rtol=1e-9, atol=1e-9)
