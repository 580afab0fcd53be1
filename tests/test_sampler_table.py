"""The sampler table (`builder.samplers.SAMPLERS`): every entry's NFE is what it spends, its
`deterministic` flag is true to its draws, it reads the fields it says; and the Euler ancestral entry
is k-diffusion's `sample_euler_ancestral` draw for draw."""

from __future__ import annotations

import math

import pytest
import torch
from builds import exp_of
from oracles import F64, mixture

from scorelib import validate
from scorelib.builder import ConfigError, experiment
from scorelib.builder.configs import with_overrides
from scorelib.builder.samplers import METHOD_FIELDS, SAMPLERS, Sampler
from scorelib.presets import resolve_config
from scorelib.samplers._common import CountingScore

GMM = mixture(d=2, k=3, seed=1)


def toy(method: str, **sampling) -> Sampler:
    """The toy_gmm sampler of `method` with a short grid (σ 10 → 0.01)."""
    c = resolve_config("toy_gmm")
    overrides = {"sampling.method": method, "sampling.n_steps": 6, "sampling.n_steps_each": 2,
                 "sampling.init": "gaussian", "sampling.rtol": 1e-3, "sampling.atol": 1e-3}
    overrides.update({f"sampling.{k}": v for k, v in sampling.items()})
    if method == "ald":
        overrides["noise.num_scales"] = 6
    return exp_of(with_overrides(c, overrides)).sampler


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_every_entry_spends_the_nfe_it_states_and_keeps_its_determinism(method):
    sampler = toy(method, eta=0.5)
    counting = CountingScore(GMM)
    x = sampler(counting, (64, 2), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (64, 2) and torch.isfinite(x).all()
    if sampler.nfe > 0:
        assert counting.nfe == sampler.nfe, (counting.nfe, sampler.nfe)
    else:  # adaptive (the ODE): NFE -1
        assert method == "ode" and counting.nfe > 0
    # the same initial x, different later noise: equal iff the entry says it is deterministic
    x0 = sampler.initial((64, 2), torch.Generator().manual_seed(0), torch.device("cpu"))
    runs = [sampler.entry.run(sampler, GMM, x0.clone(), sampler.grid, torch.Generator().manual_seed(s))
            for s in (1, 2)]
    assert torch.equal(*runs) == sampler.deterministic, method


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_the_ignored_field_warnings_follow_each_entry(method):
    """A method field set on the command line warns exactly when the method's entry does not read it."""
    c = with_overrides(resolve_config("toy_gmm"), {"sampling.method": method})
    reads = exp_of(c).sampler.reads()
    assert set(SAMPLERS[method].options) <= reads
    for field in sorted(METHOD_FIELDS):
        warned = validate.ignored_fields(experiment(c, mode="sample"), [f"sampling.{field}"])
        assert bool(warned) == (field not in reads), (method, field, warned)


def tweedie_denoiser(score):
    """D(x, σ) = x + σ² s(x, σ) for x [B, D] and σ [B], written out (the denoiser k-diffusion's samplers take)."""
    return lambda x, sigma: x + sigma[:, None] ** 2 * score(x, sigma)


def k_diffusion_euler_ancestral(score, x, sigmas, eta):
    """k-diffusion sampling.py `sample_euler_ancestral` with `get_ancestral_step`, written out, noise from
    `torch.randn_like` (its default noise sampler) on the global generator."""
    denoiser = tweedie_denoiser(score)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma = torch.full((x.shape[0],), s, dtype=x.dtype)
        denoised = denoiser(x, sigma)
        up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5) if eta else 0.0
        down = (s_next**2 - up**2) ** 0.5
        x = x + (x - denoised) / s * (down - s)
        if s_next > 0:
            x = x + torch.randn_like(x) * up
    return x


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_euler_ancestral_is_k_diffusions_draw_for_draw(eta):
    sampler = toy("euler_ancestral", eta=eta, n_steps=12)
    assert sampler.nfe == 12 and sampler.deterministic == (eta == 0)
    got = sampler(GMM, (256, 2), torch.Generator().manual_seed(3), torch.device("cpu"))
    torch.manual_seed(3)  # the reference: x_T = σ_max·randn, then randn_like per step
    grid = sampler.grid.float()
    x = float(grid[0]) * torch.randn(256, 2)
    want = k_diffusion_euler_ancestral(GMM, x, grid, eta)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_euler_ancestral_samples_the_mixture():
    """η = 1 with many levels samples p_data: the first two moments of the exact mixture."""
    sampler = toy("euler_ancestral", eta=1.0, n_steps=200)
    x = sampler(lambda x, s: GMM.score(x.double(), s.double()).to(x.dtype), (8000, 2),
                torch.Generator().manual_seed(0), torch.device("cpu")).to(F64)
    ref = GMM.sample(8000, generator=torch.Generator().manual_seed(1)).to(F64)
    assert torch.allclose(x.mean(0), ref.mean(0), atol=0.1)
    assert torch.allclose(x.std(0), ref.std(0), rtol=0.05)
    assert math.isfinite(float(x.abs().max()))


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_ancestral_equals_k_diffusion_itself(eta):
    """The optional oracle: k-diffusion's own `sample_euler_ancestral` (skipped when not installed; CI installs it)."""
    from scorelib.peers import k_diffusion_sampling

    k = k_diffusion_sampling()
    if k is None:
        pytest.skip("k-diffusion is not installed")
    sampler = toy("euler_ancestral", eta=eta, n_steps=12)
    got = sampler(GMM, (512, 2), torch.Generator().manual_seed(3), torch.device("cpu"))
    torch.manual_seed(3)
    grid = sampler.grid.float()
    x = float(grid[0]) * torch.randn(512, 2)
    want = k.sample_euler_ancestral(tweedie_denoiser(GMM), x, grid, eta=eta, disable=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_combination_no_reference_defines_stops_sampling_not_the_experiment():
    """The validator refuses it before a run that samples; an Experiment keeps it until it samples, so a
    checkpoint's stored noise process cannot stop --mode=likelihood."""
    c = with_overrides(resolve_config("ddpmpp_cifar"), {"noise.kind": "subvp", "sampling.method": "pc",
                                                        "sampling.predictor": "ancestral"})
    with pytest.raises(ConfigError, match="no sub-VP form"):
        validate.check_buildable(experiment(c, mode="sample"))
    exp = experiment(c, mode="likelihood")
    validate.check_buildable(exp)
    assert exp.sampler.problem()  # kept, not raised: the run never samples
    with pytest.raises(ConfigError, match="no sub-VP form"):
        exp.sampler.nfe  # noqa: B018 (a sampler that cannot sample has no NFE)
    with pytest.raises(ConfigError, match="no sub-VP form"):
        exp.sampler(GMM, (2, 2), torch.Generator().manual_seed(0), torch.device("cpu"))


# what each method reads besides the shared fields, on a VE and a DDPM config (the rules of the dispatch the
# table replaced: ald on VE levels ignores n_steps, the ODE reads no grid, DDPM respacing reads spacing)
READS = {
    "ve": {"ald": {"n_steps_each", "step_lr", "denoise"},
           "pc": {"predictor", "corrector", "snr", "n_corrector_steps", "denoise", "pc_ending", "n_steps"},
           "ddpm": {"variance", "clip_denoised", "n_steps"}, "ddim": {"eta", "clip_denoised", "n_steps"},
           "ode": {"ode_method", "rtol", "atol", "denoise", "sigma_max"},
           "euler_ancestral": {"eta", "rho", "n_steps", "sigma_max"},
           "heun": {"rho", "n_steps", "s_churn", "s_tmin", "s_tmax", "s_noise", "sigma_max"},
           "dpm_solver": {"order", "rho", "n_steps", "sigma_max"},
           "unipc": {"order", "rho", "n_steps", "sigma_max"}, "fast": {"data_diameter", "n_steps", "sigma_max"}},
}
READS["ddpm"] = {m: r | ({"spacing"} if m in ("pc", "ddpm", "ddim") else set()) | ({"n_steps"} if m == "ald" else set())
                 for m, r in READS["ve"].items()}


@pytest.mark.parametrize("kind", ["ve", "ddpm"])
@pytest.mark.parametrize("method", list(SAMPLERS))
def test_each_entry_reads_what_its_method_reads(kind, method):
    c = resolve_config("toy_gmm" if kind == "ve" else "ddpm_cifar")
    c = with_overrides(c, {"sampling.method": method, "sampling.variance": "large"})
    assert exp_of(c).sampler.reads() == READS[kind][method]


def _run_both(exp, direct, shape=(16, 2)):
    """The experiment's sampler and `direct(x0, generator)` from the same initial draw and generator."""
    got = exp.sampler(GMM, shape, torch.Generator().manual_seed(4), torch.device("cpu"))
    g = torch.Generator().manual_seed(4)
    x0 = exp.sampler.initial(shape, g, torch.device("cpu"))
    return got, direct(x0, g)


@pytest.mark.parametrize("kind", ["vp", "subvp"])
def test_the_pc_entry_takes_score_sdes_steps_on_vp_models(kind):
    """ddpmpp_cifar's PC sampler is score_sde's `get_pc_sampler` in σ-space (pc_sampler's SDE form, pinned
    draw for draw against score_sde in tests/test_pc_score_sde.py): the entry passes the SDE and its times."""
    from scorelib.samplers import pc_sampler
    from scorelib.schedules import pc_times

    c = with_overrides(resolve_config("ddpmpp_cifar"), {"noise.kind": kind, "sampling.n_steps": 12})
    exp = exp_of(c)
    sde = exp.noise.sde
    got, want = _run_both(exp, lambda x0, g: pc_sampler(GMM, x0, exp.sampler.grid, predictor="euler_maruyama",
                                                        corrector="none", generator=g, sde=sde,
                                                        times=pc_times(sde, 12)))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_ddim_entry_clips_and_respaces_as_improved_diffusion():
    """sampling.clip_denoised reaches ddim; improved-diffusion's respacing strings set the timesteps."""
    from scorelib.samplers import ddim
    from scorelib.schedules import space_timesteps, timesteps_to_sigmas

    c = with_overrides(resolve_config("iddpm_cifar"), {"sampling.method": "ddim", "sampling.clip_denoised": True,
                                                        "sampling.spacing": "ddim25"})
    exp = exp_of(c)
    abar = exp.noise.schedule.alphas_cumprod
    torch.testing.assert_close(exp.sampler.grid, timesteps_to_sigmas(abar, space_timesteps(4000, "ddim25")))
    assert exp.sampler.nfe == 25
    got, want = _run_both(exp, lambda x0, g: ddim(GMM, x0, exp.sampler.grid, clip_denoised=True, generator=g))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    unclipped = ddim(GMM, exp.sampler.initial((16, 2), torch.Generator().manual_seed(4), torch.device("cpu")),
                     exp.sampler.grid)
    assert (unclipped - got).abs().max() > 1e-3  # the mixture's modes lie outside [-1, 1]: clipping shows


@pytest.mark.parametrize("kind", ["ve", "vp", "ddpm"])
def test_stated_nfe_is_counted_for_every_predictor_corrector_combination(kind):
    """`Sampler.nfe` (a dry run of the sampler) equals the score evaluations of a real run, for every
    predictor and corrector, "none" included, and 1 or 2 corrector steps."""
    from scorelib.samplers.pc import CORRECTORS, PREDICTORS

    name = {"ve": "toy_gmm", "vp": "ddpmpp_cifar", "ddpm": "ddpm_cifar"}[kind]
    for predictor in PREDICTORS:
        for corrector in CORRECTORS:
            for steps in (1, 2):
                c = with_overrides(resolve_config(name), {
                    "sampling.method": "pc", "sampling.n_steps": 5, "sampling.predictor": predictor,
                    "sampling.corrector": corrector, "sampling.n_corrector_steps": steps})
                sampler = exp_of(c).sampler
                counting = CountingScore(GMM)
                sampler(counting, (4, 2), torch.Generator().manual_seed(0), torch.device("cpu"))
                assert counting.nfe == sampler.nfe, (kind, predictor, corrector, steps, counting.nfe, sampler.nfe)


CONTINUOUS = ("euler_ancestral", "heun", "dpm_solver", "unipc", "ode", "fast")


@pytest.mark.parametrize("method", CONTINUOUS)
def test_sampling_sigma_max_caps_where_the_continuous_methods_start(method):
    """On a cosine schedule (σ_max = 8·10⁴ at T = 4000) sampling.sigma_max = 80 starts the continuous-σ
    methods at σ = 80: the grid's first level, the initial noise's scale, and the σ the ODE / fast_sample
    integrate from (checked by calling them directly from the same x); the DDPM grids are untouched."""
    from scorelib.samplers import fast_sample, probability_flow

    c = with_overrides(resolve_config("openai:cifar10_uncond"), {"sampling.method": method, "sampling.n_steps": 8})
    full, capped = exp_of(c).sampler, exp_of(with_overrides(c, {"sampling.sigma_max": 80.0})).sampler
    assert full.grid[0] > 7e4 and float(capped.grid[0]) == pytest.approx(80.0, rel=1e-12)
    assert float(capped.grid[-2]) == pytest.approx(float(full.grid[-2]), rel=1e-12)  # down to the same σ_min
    x0 = capped.initial((4000, 1), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x0.std().item() == pytest.approx(80.0, rel=0.05)
    if method in ("ode", "fast"):
        score, x = (lambda x, s: -x / (1 + s.reshape(-1, *[1] * (x.ndim - 1)) ** 2)), torch.randn(3, 2, dtype=F64) * 80
        got = capped.entry.run(capped, score, x.clone(), capped.grid, None)
        lo = capped.noise.sigma_min
        want = (probability_flow(score, x.clone(), 80.0, lo, rtol=1e-5, atol=1e-5, denoise=True) if method == "ode"
                else fast_sample(score, x.clone(), 80.0, lo, 8, probe=True))
        torch.testing.assert_close(got, want)
    assert exp_of(with_overrides(c, {"sampling.sigma_max": 1e9})).sampler.grid[0] == full.grid[0]  # a cap above


def test_sampling_sigma_max_leaves_the_ddpm_grids_alone_and_is_checked():
    c = with_overrides(resolve_config("openai:cifar10_uncond"), {"sampling.method": "ddim", "sampling.n_steps": 8})
    assert torch.equal(exp_of(c).sampler.grid, exp_of(with_overrides(c, {"sampling.sigma_max": 80.0})).sampler.grid)
    warned = validate.ignored_fields(experiment(c, mode="sample"), ["sampling.sigma_max"])
    assert warned and "sampling.sigma_max is ignored by sampling.method='ddim'" in warned[0]
    with pytest.raises(ConfigError, match=r"^sampling.sigma_max: 0.001 is not above the noise process's σ_min="):
        exp_of(with_overrides(c, {"sampling.method": "heun", "sampling.sigma_max": 1e-3}))
