"""Autoguidance (Karras et al. 2024b) and the guidance interval (Kynkäänniemi et al. 2024) as score
transformers: against the written-out formulas on Gaussian mixtures with exact scores, through every
sampler, and the published EDM2 intervals on EDM2's sampling grid."""

import pytest
import torch
from oracles import F64, mixture

from scorelib import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance, guidance_interval
from scorelib.analytic import GaussianMixture
from scorelib.guidance import EDM2_GUIDANCE_INTERVALS
from scorelib.samplers import (
    annealed_langevin,
    ddim,
    ddpm_ancestral,
    dpm_solver_pp,
    fast_sample,
    heun,
    langevin,
    pc_sampler,
    probability_flow,
    unipc,
)
from scorelib.schedules import append_zero, geometric_sigmas, karras_sigmas

MAIN = mixture(d=2, k=3, seed=0)
GUIDE = GaussianMixture(MAIN.means, MAIN.covs * 2.0 + 0.1 * torch.eye(2, dtype=F64), MAIN.weights)  # blurrier
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64)
COVS = torch.stack([torch.eye(2, dtype=F64) * 0.3, torch.eye(2, dtype=F64) * 0.2])
UNCOND = GaussianMixture(MEANS, COVS, torch.tensor([0.7, 0.3], dtype=F64))
PARTS = [GaussianMixture(MEANS[i : i + 1], COVS[i : i + 1]) for i in range(2)]
GRID = append_zero(geometric_sigmas(10.0, 0.05, 8))
LO, HI = 0.3, 3.0


def cond_model(x, sigma, y):
    """Exact class-conditional scores; label 2 is the unconditional (null) label."""
    out = torch.empty_like(x)
    for label, part in [(0, PARTS[0]), (1, PARTS[1]), (2, UNCOND)]:
        m = y == label
        if m.any():
            out[m] = part(x[m], sigma[m])
    return out


def classifier(x, sigma):
    return UNCOND.responsibilities(x, sigma).log().to(x.dtype)


def test_autoguidance_combines_the_denoisers():
    x = 2 * torch.randn(7, 2, dtype=F64)
    sigma = torch.rand(7, dtype=F64) * 3 + 0.05
    s = sigma[:, None]
    for w in (1.0, 2.3, -0.5):
        got = x + s**2 * AutoGuidance(MAIN, GUIDE, w)(x, sigma)
        d_main, d_guide = x + s**2 * MAIN(x, sigma), x + s**2 * GUIDE(x, sigma)
        torch.testing.assert_close(got, w * d_main + (1 - w) * d_guide)
    torch.testing.assert_close(AutoGuidance(MAIN, GUIDE, 1.0)(x, sigma), MAIN(x, sigma))


def test_autoguidance_gives_both_models_the_labels():
    seen = []

    def labelled(name, gmm):
        def score(x, sigma, y):
            seen.append((name, y.tolist()))
            return gmm(x, sigma)
        return score

    x, sigma, y = torch.randn(3, 2, dtype=F64), torch.ones(3, dtype=F64), torch.tensor([0, 1, 0])
    AutoGuidance(labelled("main", MAIN), labelled("guide", GUIDE), 2.0, y=y)(x, sigma)
    AutoGuidance(labelled("main", MAIN), labelled("guide", GUIDE), 2.0)(x, sigma, y=y)
    assert sorted(seen) == [("guide", [0, 1, 0])] * 2 + [("main", [0, 1, 0])] * 2


SAMPLERS = {
    "annealed_langevin": lambda s, x, g: annealed_langevin(s, x, GRID[:-1], n_steps_each=2, step_lr=1e-3,
                                                           generator=g),
    "langevin": lambda s, x, g: langevin(s, x, 0.5, n_steps=4, step_size=1e-3, generator=g),
    "ddim": lambda s, x, g: ddim(s, x, GRID),
    "ddim_eta1": lambda s, x, g: ddim(s, x, GRID, eta=1.0, generator=g),
    "ddpm_ancestral": lambda s, x, g: ddpm_ancestral(s, x, GRID, variance="large", generator=g),
    "pc_sampler": lambda s, x, g: pc_sampler(s, x, GRID, generator=g),
    "heun_churn": lambda s, x, g: heun(s, x, GRID, s_churn=2.0, generator=g),
    "dpm_solver_pp": lambda s, x, g: dpm_solver_pp(s, x, GRID, order=2),
    "unipc": lambda s, x, g: unipc(s, x, GRID),
    "probability_flow": lambda s, x, g: probability_flow(s, x, 10.0, 0.05, method="rk4",
                                                         options={"step_size": 0.25}),
    "fast_sample": lambda s, x, g: fast_sample(s, x, 10.0, 0.05, nfe=6),
}


def _written_out_autoguidance(w):
    return lambda x, sigma: w * MAIN(x, sigma) + (1 - w) * GUIDE(x, sigma)


def _written_out_interval(w):
    def score(x, sigma):
        inside = ((sigma > LO) & (sigma <= HI))[:, None]
        return torch.where(inside, w * MAIN(x, sigma) + (1 - w) * GUIDE(x, sigma), MAIN(x, sigma))
    return score


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_takes_autoguidance_and_the_interval(name):
    run = SAMPLERS[name]
    x = 10.0 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    guided = AutoGuidance(MAIN, GUIDE, 2.5)
    cases = [(guided, _written_out_autoguidance(2.5)),
             (guidance_interval(guided, None, LO, HI), _written_out_interval(2.5)),
             (guidance_interval(guided, MAIN, LO, HI), _written_out_interval(2.5))]
    for model, formula in cases:
        got = run(model, x, torch.Generator().manual_seed(1))
        want = run(formula, x, torch.Generator().manual_seed(1))
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    plain = run(MAIN, x, torch.Generator().manual_seed(1))
    assert not torch.allclose(run(cases[1][0], x, torch.Generator().manual_seed(1)), plain)


SIGMA = torch.tensor([0.1, LO, 0.5, 1.0, HI, 3.5, 20.0], dtype=F64)  # LO is outside, HI inside
INSIDE = torch.tensor([False, False, True, True, True, False, False])


def test_interval_selects_per_example_for_each_guidance():
    x = 2 * torch.randn(7, 2, dtype=F64)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    cond = cond_model(x, SIGMA, y)
    cases = {
        # (guided transformer, its unguided model, the written-out guided score)
        "cfg": (ClassifierFreeGuidance(cond_model, y, 1.5, null_label=2), cond,
                2.5 * cond - 1.5 * cond_model(x, SIGMA, torch.full_like(y, 2))),
        "classifier": (ClassifierGuidance(UNCOND, classifier, y, 2.0), UNCOND(x, SIGMA), None),
        "auto": (AutoGuidance(MAIN, GUIDE, 2.5), MAIN(x, SIGMA),
                 2.5 * MAIN(x, SIGMA) - 1.5 * GUIDE(x, SIGMA)),
    }
    for name, (guided, unguided, formula) in cases.items():
        want_guided = guided(x, SIGMA) if formula is None else formula
        want = torch.where(INSIDE[:, None], want_guided, unguided)
        fast = guidance_interval(guided, None, LO, HI)(x, SIGMA)
        torch.testing.assert_close(fast, want, msg=name)
        explicit = guidance_interval(guided, lambda x, s, u=unguided: u, LO, HI)(x, SIGMA)
        torch.testing.assert_close(explicit, want, msg=name)
    everywhere = guidance_interval(cases["auto"][0], None)  # (0, ∞]: plain guidance
    torch.testing.assert_close(everywhere(x, SIGMA), cases["auto"][2])


def test_interval_costs_no_more_than_guidance_everywhere():
    calls = []

    def counted(x, sigma, y):
        calls.append(len(y))
        return cond_model(x, sigma, y)

    y = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    x = torch.randn(7, 2, dtype=F64)
    guidance_interval(ClassifierFreeGuidance(counted, y, 1.5, null_label=2), None, LO, HI)(x, SIGMA)
    assert calls == [14]  # one batched conditional + unconditional call, no extra unguided one
    calls.clear()
    outside = torch.full((7,), 10.0, dtype=F64)
    guidance_interval(ClassifierFreeGuidance(counted, y, 1.5, null_label=2), None, LO, HI)(x, outside)
    assert calls == [14]  # the mask is never read on the host: no skipping, no sync


def test_interval_masks_the_mean_guidance_of_classifier_guidance():
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    x = torch.randn(7, 2, dtype=F64)
    guided = ClassifierGuidance(UNCOND, classifier, y, 2.0, convention="mean")
    interval = guidance_interval(guided, None, LO, HI)
    torch.testing.assert_close(interval(x, SIGMA), UNCOND(x, SIGMA))
    want = torch.where(INSIDE[:, None], guided.guidance_grad(x, SIGMA), torch.zeros_like(x))
    torch.testing.assert_close(interval.guidance_grad(x, SIGMA), want)


def test_interval_arguments():
    with pytest.raises(ValueError, match="sigma_lo"):
        guidance_interval(AutoGuidance(MAIN, GUIDE, 2.0), None, 3.0, 1.0)
    with pytest.raises(TypeError, match="unguided"):
        guidance_interval(MAIN, None, 0.1, 1.0)


# Kynkäänniemi et al. 2024, Table 1 and §4.1 (EDM2-XXL FID: "guidance at 6 of the 32 steps"; their
# README runs it as --guidance_interval="[17, 22]"), printed rounded to two decimals
PUBLISHED = {"img512-s-fid": ((0.28, 2.90), 2.1, range(15, 22)),
             "img512-s-dino": ((0.60, 5.00), 3.2, range(13, 20)),
             "img512-xxl-fid": ((0.19, 1.61), 2.0, range(17, 23)),
             "img512-xxl-dino": ((0.60, 5.00), 2.9, range(13, 20))}


@pytest.mark.parametrize("name", list(PUBLISHED))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_edm2_intervals_guide_the_published_steps(name, dtype):
    (lo, hi), w, steps = PUBLISHED[name]
    preset = EDM2_GUIDANCE_INTERVALS[name]
    assert (round(preset.sigma_lo, 2), round(preset.sigma_hi, 2), preset.w) == (lo, hi, w)
    grid = karras_sigmas(80.0, 0.002, 32).to(dtype)  # EDM2's 32-step Heun grid, as a sampler sees it
    inside = guidance_interval(AutoGuidance(MAIN, GUIDE, preset.w), None, preset.sigma_lo,
                               preset.sigma_hi).inside(grid)
    assert inside.nonzero().flatten().tolist() == list(steps)
