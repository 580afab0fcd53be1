"""The predictor-corrector sampler in score_sde's form, pinned to golden numbers recorded from score_sde's
own `get_pc_sampler` (yang-song/score_sde_pytorch sampling.py, sde_lib.py) run in float64 on a 2-D Gaussian
mixture whose exact score reached it through its `get_score_fn` convention (tests/data/score_sde_pc.json;
the recorder is tests/data/recorders/score_sde_pc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scorelib.analytic import GaussianMixture
from scorelib.samplers import pc_sampler
from scorelib.schedules import VESDE, VPSDE, SubVPSDE, append_zero, discrete_index, geometric_sigmas, pc_times

F64 = torch.float64
GOLDEN = json.loads((Path(__file__).parent / "data" / "score_sde_pc.json").read_text())
GMM = GaussianMixture.isotropic(torch.tensor(GOLDEN["means"], dtype=F64), torch.tensor(GOLDEN["stds"], dtype=F64),
                                torch.tensor(GOLDEN["weights"], dtype=F64))
PREDICTOR = {"ancestral_sampling": "ancestral"}  # score_sde's registered name -> scorelib's
RECORDED = [c for c in GOLDEN["cases"] if "error" not in c]


def make_sde(kind: str):
    return {"vp": VPSDE(0.1, 20.0), "subvp": SubVPSDE(0.1, 20.0), "ve": VESDE(0.01, 50.0)}[kind]


def case_id(c: dict) -> str:
    label = "" if c["kind"] != "ve" else ("-continuous" if c["continuous"] else "-discrete")
    return f"{c['kind']}{label}-{c['predictor']}-{c['corrector']}x{c['n_corrector_steps']}"


def score_sde_run(c: dict, denoise: bool = True, **options) -> torch.Tensor:
    """scorelib's pc_sampler in score_sde's form on the recorded case: x_T = prior draw (σ_max z for VE) from the
    seed, the same generator on for every step's noise, the score at σ(t_i) (the discrete NCSN levels for a
    discrete-time VE model)."""
    sde, N = make_sde(c["kind"]), c["N"]
    times = pc_times(sde, N)
    levels = sde.discrete_sigmas(N).flip(0) if c["kind"] == "ve" and not c["continuous"] else sde.sigma(times)
    gen = torch.Generator().manual_seed(c["seed"])
    x_T = torch.randn(c["B"], 2, generator=gen, dtype=F64) * (sde.sigma_max if c["kind"] == "ve" else 1.0)
    return pc_sampler(GMM, x_T / sde.mean_scale(times[0]), append_zero(levels),
                      predictor=PREDICTOR.get(c["predictor"], c["predictor"]), corrector=c["corrector"], snr=c["snr"],
                      n_corrector_steps=c["n_corrector_steps"], denoise=denoise, generator=gen, sde=sde, times=times,
                      **options)


@pytest.mark.parametrize("c", RECORDED, ids=case_id)
def test_pc_sampler_is_score_sdes_draw_for_draw(c):
    """VP / sub-VP / VE × Euler–Maruyama, reverse diffusion, ancestral × no corrector, Langevin (1 and 2 steps),
    ALD: the noise-free mean of the last step (denoise=True) and the noisy x (denoise=False)."""
    for denoise, key in ((True, "x_mean"), (False, "x")):
        got = score_sde_run(c, denoise)
        torch.testing.assert_close(got, torch.tensor(c[key], dtype=F64), rtol=1e-9, atol=1e-10)


def test_the_vp_cases_cover_the_vp_configs_and_the_reference_refuses_sub_vp_correctors():
    """ddpmpp_cifar and score_sde's configs/vp/*, configs/subvp/*: euler_maruyama without corrector (recorded);
    score_sde's correctors read `sde.alphas`, which its subVPSDE lacks, and its ancestral step is VE / VP only."""
    kinds = {(c["kind"], c["predictor"], c["corrector"]) for c in RECORDED}
    assert {("vp", "euler_maruyama", "none"), ("subvp", "euler_maruyama", "none"),
            ("vp", "reverse_diffusion", "langevin"), ("subvp", "reverse_diffusion", "none")} <= kinds
    errors = {(c["kind"], c["predictor"], c["corrector"]): c["error"] for c in GOLDEN["cases"] if "error" in c}
    assert all(k[0] == "subvp" for k in errors)
    assert errors[("subvp", "euler_maruyama", "langevin")].startswith("AttributeError")
    assert errors[("subvp", "ancestral_sampling", "none")].startswith("NotImplementedError")
    with pytest.raises(ValueError, match="no sub-VP form"):
        score_sde_run({**RECORDED[0], "kind": "subvp", "predictor": "ancestral"})


def _case(kind, predictor, corrector, n=1, continuous=True):
    return next(c for c in RECORDED if (c["kind"], c["predictor"], c["corrector"], c["n_corrector_steps"],
                                        c["continuous"]) == (kind, predictor, corrector, n, continuous))


@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
def test_the_sigma_grid_form_is_not_score_sdes_on_vp(predictor):
    """The σ-grid form with VE coefficients (what `pc_sampler` without `sde` does) differs from score_sde on VP."""
    c = _case("vp", predictor, "none")
    sde, N = VPSDE(0.1, 20.0), c["N"]
    times = pc_times(sde, N)
    gen = torch.Generator().manual_seed(c["seed"])
    x_T = torch.randn(c["B"], 2, generator=gen, dtype=F64)
    old = pc_sampler(GMM, x_T / sde.mean_scale(times[0]), append_zero(sde.sigma(times)), predictor=predictor,
                     corrector="none", generator=gen)
    assert (old - torch.tensor(c["x_mean"], dtype=F64)).abs().max() > 1e-2


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "ancestral_sampling"])
@pytest.mark.parametrize("corrector", ["none", "langevin"])
def test_the_ve_sigma_grid_form_stays_score_sdes(predictor, corrector):
    """score_sde's VE configs (reverse diffusion + Langevin) on a discrete-time model: the σ-grid form on the
    NCSN levels and a final 0 (scorelib's VE grid) is score_sde's, as before."""
    c = _case("ve", predictor, corrector, continuous=False)
    gen = torch.Generator().manual_seed(c["seed"])
    x_T = 50.0 * torch.randn(c["B"], 2, generator=gen, dtype=F64)
    got = pc_sampler(GMM, x_T, append_zero(geometric_sigmas(50.0, 0.01, c["N"])),
                     predictor=PREDICTOR.get(predictor, predictor), corrector=corrector, generator=gen)
    torch.testing.assert_close(got, torch.tensor(c["x_mean"], dtype=F64), rtol=1e-9, atol=1e-10)


def test_discrete_index_is_score_sdes_floor():
    """k = ⌊t(N-1)/T⌋ on the time grid: level i gets table entry N-1-i (eps·i < 1)."""
    for sde in (VPSDE(), VESDE()):
        t = pc_times(sde, 1000)
        assert torch.equal(discrete_index(sde, t, 1000), torch.arange(999, -1, -1))


def test_tweedie_ending_is_an_option():
    """tweedie=True: the last step (to σ = 0) is x + σ_{N-1}² s(x, σ_{N-1}) instead of score_sde's last predictor
    step, after the same earlier steps and draws; on a near point-mass mixture it lands on the modes."""
    c = _case("vp", "euler_maruyama", "none")
    sde, N = VPSDE(0.1, 20.0), c["N"]
    seen = {}
    got = score_sde_run(c, tweedie=True, callback=lambda info: seen.__setitem__(info["i"], info["x"]))
    sigma = sde.sigma(pc_times(sde, N)[-1]).expand(c["B"])
    want = seen[N - 2] + sigma[:, None] ** 2 * GMM.score(seen[N - 2], sigma)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got - torch.tensor(c["x_mean"], dtype=F64)).abs().max() > 1e-4
    near = GaussianMixture.isotropic(GMM.means, 1e-4, GMM.weights)
    times = pc_times(sde, 60)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64) / sde.mean_scale(times[0])
    out = pc_sampler(near, x, append_zero(sde.sigma(times)), predictor="euler_maruyama", corrector="none",
                     generator=torch.Generator().manual_seed(1), sde=sde, times=times, tweedie=True)
    assert (out[:, None] - GMM.means[None]).norm(dim=-1).min(dim=1).values.pow(2).mean().sqrt() < 1e-3


def test_score_sde_form_checks_its_grid():
    sde = VPSDE()
    t = pc_times(sde, 5)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="then 0"):
        pc_sampler(GMM, x, sde.sigma(t), sde=sde, times=t)
    with pytest.raises(ValueError, match=r"sde.sigma\(times\)"):
        pc_sampler(GMM, x, append_zero(sde.sigma(t) * 1.01), sde=sde, times=t)
    with pytest.raises(ValueError, match="not `betas`"):
        pc_sampler(GMM, x, append_zero(sde.sigma(t)), sde=sde, times=t, betas=torch.zeros(5))


def test_the_sigma_grid_form_ends_on_tweedie_unless_told_otherwise():
    """Without `sde` a final step to σ = 0 is the Tweedie step (as before); tweedie=False keeps the predictor's own
    last step (Euler–Maruyama's c = 2σ² there)."""
    grid = append_zero(geometric_sigmas(5.0, 0.05, 12))
    x = 5.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    run = lambda **kw: pc_sampler(GMM, x, grid, predictor="euler_maruyama", corrector="none",  # noqa: E731
                                  generator=torch.Generator().manual_seed(1), **kw)
    seen = {}
    default = run(callback=lambda info: seen.__setitem__(info["i"], info["x"]))
    torch.testing.assert_close(default, run(tweedie=True), rtol=0, atol=0)
    sigma = torch.full((64,), 0.05, dtype=F64)
    torch.testing.assert_close(default, seen[10] + 0.05**2 * GMM.score(seen[10], sigma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run(tweedie=False), seen[10] + 2 * 0.05**2 * GMM.score(seen[10], sigma),
                               rtol=1e-12, atol=1e-12)
