"""Every sampler: any tensor rank, keeps dtype, reproducible with a generator, reports progress,
rejects a bad σ grid with a ValueError."""

import pytest
import torch
from oracles import F64, gaussian

from scorelib import geometric_sigmas
from scorelib.samplers import (
    annealed_langevin,
    ddim,
    ddpm_ancestral,
    dpm_solver_pp,
    heun,
    pc_sampler,
    unipc,
)
from scorelib.samplers._common import CountingScore
from scorelib.samplers.pc import CORRECTORS, PREDICTORS
from scorelib.schedules import append_zero

GMM = gaussian(d=12, seed=0)
GRID = append_zero(geometric_sigmas(10.0, 0.05, 8))
SAMPLERS = {
    "annealed_langevin": (
        lambda s, x, g, **kw: annealed_langevin(s, x, g[:-1], n_steps_each=2, step_lr=1e-3, **kw), 8 * 2 + 1),
    "ddim_eta0": (lambda s, x, g, **kw: ddim(s, x, g, **kw), 8),
    "ddim_eta05": (lambda s, x, g, **kw: ddim(s, x, g, eta=0.5, **kw), 8),
    "ddpm_large": (lambda s, x, g, **kw: ddpm_ancestral(s, x, g, variance="large", **kw), 8),
    "pc": (lambda s, x, g, **kw: pc_sampler(s, x, g, **kw), 16),
    "heun": (lambda s, x, g, **kw: heun(s, x, g, **{k: v for k, v in kw.items() if k != "generator"}), 15),
    "heun_churn": (lambda s, x, g, **kw: heun(s, x, g, s_churn=5.0, **kw), 15),
    "dpm_solver_pp_3": (lambda s, x, g, **kw: dpm_solver_pp(s, x, g, order=3, callback=kw.get("callback")), 8),
    "unipc": (lambda s, x, g, **kw: unipc(s, x, g, callback=kw.get("callback")), 8),
}
STOCHASTIC = {"annealed_langevin", "ddim_eta05", "ddpm_large", "pc", "heun_churn"}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("shape,dtype", [((5, 12), F64), ((5, 3, 2, 2), torch.float32)])
def test_contract(name, shape, dtype):
    fn, nfe = SAMPLERS[name]
    x = 10.0 * torch.randn(shape, dtype=dtype)
    counting = CountingScore(GMM)
    calls = []
    out = fn(counting, x, GRID, generator=torch.Generator().manual_seed(0), callback=calls.append)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert counting.nfe == nfe, counting.nfe
    assert len(calls) > 0 and all("x" in c for c in calls)
    again = fn(GMM, x, GRID, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    if name in STOCHASTIC:
        other = fn(GMM, x, GRID, generator=torch.Generator().manual_seed(1))
        assert not torch.equal(out, other)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("grid", [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1.0, -0.5, 0.0]),
                                  torch.tensor([1.0, 1.0, 0.5, 0.0]), torch.tensor([[1.0, 0.0]])])
def test_bad_grids_are_rejected(name, grid):
    fn, _ = SAMPLERS[name]
    with pytest.raises(ValueError, match="sigmas"):
        fn(GMM, torch.zeros(2, 12), grid)


@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("corrector", CORRECTORS)
def test_pc_sampler_reaches_the_data_distribution(predictor, corrector):
    if predictor == "none" and corrector == "none":
        pytest.skip("nothing to run")
    g = gaussian(d=2, seed=4)
    n = 4000
    grid = append_zero(geometric_sigmas(20.0, 0.01, 200))
    x = 20.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    snr = 0.16 if corrector == "langevin" else 0.5
    steps = 1 if predictor != "none" else 5
    out = pc_sampler(g, x, grid, predictor=predictor, corrector=corrector, snr=snr, n_corrector_steps=steps,
                     generator=torch.Generator().manual_seed(1))
    # with predictor "none" the chain stays at the last positive level σ = 0.01 (negligible here)
    torch.testing.assert_close(out.mean(0), g.mean(), atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), g.covariance(), atol=0.06, rtol=0.1)


def test_pc_sampler_rejects_unknown_parts():
    with pytest.raises(ValueError, match="predictor"):
        pc_sampler(GMM, torch.zeros(2, 12), GRID, predictor="leapfrog")
    with pytest.raises(ValueError, match="corrector"):
        pc_sampler(GMM, torch.zeros(2, 12), GRID, corrector="mala")


def test_every_sampler_takes_a_generator_and_the_deterministic_ones_ignore_it():
    """One calling convention: every sampling function takes `generator=`; the ODE solvers draw nothing,
    so theirs changes nothing."""
    import inspect

    import scorelib.samplers as samplers

    takes = [n for n in ("annealed_langevin", "langevin", "ddim", "ddpm_ancestral", "pc_sampler", "heun",
                         "dpm_solver_pp", "unipc", "probability_flow", "fast_sample", "inpaint_langevin", "inpaint_pc")
             if "generator" not in inspect.signature(getattr(samplers, n)).parameters]
    assert not takes, takes
    x = 10.0 * torch.randn(5, 12, dtype=F64, generator=torch.Generator().manual_seed(3))
    for fn in (lambda **kw: samplers.dpm_solver_pp(GMM, x, GRID, order=3, **kw),
               lambda **kw: samplers.unipc(GMM, x, GRID, **kw),
               lambda **kw: samplers.probability_flow(GMM, x, 10.0, 0.05, rtol=1e-4, atol=1e-4, **kw),
               lambda **kw: samplers.fast_sample(GMM, x, 10.0, 0.05, 6, **kw)):
        assert torch.equal(fn(), fn(generator=torch.Generator().manual_seed(0)))

