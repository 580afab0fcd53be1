"""Sampler, loss and likelihood conventions pinned to the reference code (score_sde, improved-diffusion,
guided-diffusion, k-diffusion / DPM-Solver, ncsn): each reference update is re-implemented here in its
own coordinates (x_t for VP models) and compared draw for draw with scorelib's σ-space version."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from builds import exp_of
from oracles import mixture

from scorelib.analytic import GaussianMixture
from scorelib.builder import ConfigError, experiment
from scorelib.samplers import pc_sampler
from scorelib.schedules import VPSDE, append_zero, geometric_sigmas

F64 = torch.float64


def get_config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def _vp_m(t: torch.Tensor, b0: float = 0.1, b1: float = 20.0) -> torch.Tensor:
    """score_sde VPSDE.marginal_prob mean coefficient exp(-¼t²(β1-β0) - ½tβ0)."""
    return torch.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)


# --- defect 1: every predictor ends on the denoised data ----------------------------------------


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "euler_maruyama", "ancestral", "ancestral_vp"])
def test_every_predictor_ends_on_the_denoised_data(predictor):
    """A near point-mass mixture: after the last step to σ = 0 the output sits on the modes. With
    Euler–Maruyama's c = 2σ² on that step the output kept noise of size σ_min (RMS 0.076 here)."""
    modes = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=F64)
    g = GaussianMixture.isotropic(modes, 1e-4)
    grid = append_zero(geometric_sigmas(5.0, 0.05, 60))
    x = 5.0 * torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    betas = None
    if predictor == "ancestral_vp":  # the VP ancestral step with the β implied by the grid
        predictor, s = "ancestral", grid[:-1]
        betas = 1 - (1 + torch.cat([s[1:], s.new_zeros(1)]) ** 2) / (1 + s**2)
    out = pc_sampler(g, x, grid, predictor=predictor, corrector="none", generator=torch.Generator().manual_seed(1),
                     betas=betas)
    dist = (out[:, None] - modes[None]).norm(dim=-1).min(dim=1).values
    assert dist.pow(2).mean().sqrt() < 1e-3


# --- defect 2: score_sde's uniform-in-t PC grid for VP / sub-VP -----------------------------------


@pytest.mark.parametrize("kind", ["vp", "subvp"])
def test_vp_pc_grid_is_uniform_in_t_as_score_sde(kind):
    """score_sde sampling.py get_pc_sampler: timesteps = linspace(T, eps=1e-3, N), then the Tweedie step."""
    c = get_config("ddpmpp_cifar")
    c.noise.kind = kind
    grid = exp_of(c).sampler.grid
    t = torch.linspace(1.0, 1e-3, 1000, dtype=F64)
    m = _vp_m(t)
    want = ((1 - m**2) / m) if kind == "subvp" else (1 / m**2 - 1).sqrt()
    assert grid.shape == (1001,) and float(grid[-1]) == 0.0
    torch.testing.assert_close(grid[:-1], want, rtol=1e-12, atol=0)
    if kind == "vp":
        assert int((grid[:-1] < 0.1).sum()) == 26  # the geometric grid had 236


def test_pc_betas_are_score_sde_discrete_betas():
    """score_sde sde_lib.VPSDE: discrete_betas = linspace(β_min/N, β_max/N, N), indexed by (t(N-1)).long()
    on the descending grid: level i gets β_{N-1-i}."""
    from scorelib.schedules import discrete_index, pc_times

    sde = exp_of(get_config("ddpmpp_cifar")).noise.sde  # the PC sampler reads β through score_sde's SDE form
    betas = sde.discrete_betas(1000)[discrete_index(sde, pc_times(sde, 1000), 1000)]
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64).flip(0), rtol=1e-12, atol=0)


# --- defect 3: separate ε for training / likelihood (1e-5) and sampling (1e-3) -------------------


def test_vp_trains_and_computes_likelihoods_from_1e5_and_samples_from_1e3():
    c = get_config("ddpmpp_cifar")
    sde = VPSDE(0.1, 20.0)
    sig = lambda t: float(sde.sigma(torch.tensor(t, dtype=F64)))  # noqa: E731
    noise = exp_of(c).noise
    assert noise.sigma_range == (sig(1.0), sig(1e-3))
    assert noise.likelihood_range == (sig(1.0), sig(1e-5))
    draw = noise.sample_sigma(4096, torch.Generator().manual_seed(0), torch.device("cpu"), F64)
    t = torch.rand(4096, generator=torch.Generator().manual_seed(0), dtype=F64) * (1 - 1e-5) + 1e-5
    torch.testing.assert_close(draw, sde.sigma(t))


# --- defect 4: continuous-SDE loss reduction as score_sde's configs ------------------------------


class _MixtureScore(torch.nn.Module):
    def __init__(self, g: GaussianMixture, bias: float):
        super().__init__()
        self.g, self.bias = g, bias

    def forward(self, x, sigma):
        return self.g.score(x, sigma) + self.bias  # a deliberately wrong score, so the loss is not ~0


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_vp_loss_reduction_follows_score_sde(reduce_mean):
    """score_sde losses.py get_sde_loss_fn: mean (reduce_mean=True) or ½ sum of (s_t(x_t, t)·std + z)²,
    x_t = m x₀ + std z, t ~ U(eps, 1); computed here in x_t coordinates from the σ-space score."""
    g = mixture(d=2, seed=3)
    c = get_config("ddpmpp_cifar")
    c.training.reduce_mean = reduce_mean
    c.model.name, c.data.dataset, c.data.channels = "mlp", "toy", 2
    loss = experiment(c).loss
    x0 = g.sample(64, generator=torch.Generator().manual_seed(2)).double()
    model = _MixtureScore(g, 0.3)
    got = loss.bind(model)(x0, None, torch.Generator().manual_seed(5))
    # reference, with the same draws: t first, then z
    gen = torch.Generator().manual_seed(5)
    t = torch.rand(64, generator=gen, dtype=F64) * (1 - 1e-5) + 1e-5
    z = torch.randn(x0.shape, generator=gen, dtype=F64)
    sde = VPSDE(0.1, 20.0)
    m, std = sde.mean_scale(t)[:, None], sde.marginal_std(t)[:, None]
    x_t = m * x0 + std * z
    score_t = model(x_t / m, sde.sigma(t)) / m  # ∇_{x_t} log p_t = s_σ / m
    sq = (score_t * std + z) ** 2
    want = sq.mean(1) if reduce_mean else 0.5 * sq.sum(1)
    torch.testing.assert_close(got, want)
    assert get_config("ddpmpp_cifar").training.reduce_mean and not get_config("ncsnpp_cifar").training.reduce_mean


# --- defect 8: VP ancestral predictor and VP corrector α = 1 - β as score_sde ----------------------


def _score_sde_vp_pc(g, x_t, times, betas, predictor, corrector, snr):
    """score_sde sampling.py PC loop for a VPSDE in x_t coordinates (AncestralSamplingPredictor
    .vpsde_update_fn / ReverseDiffusion not used; LangevinCorrector / AnnealedLangevinDynamics with
    alpha = 1 - β), noise from torch.randn_like after torch.manual_seed. Returns x_mean / m(t_last)."""
    sde = VPSDE(0.1, 20.0)

    def score_t(x, t):
        m = sde.mean_scale(t)
        return g.score(x / m, sde.sigma(t).expand(x.shape[0])) / m

    torch.manual_seed(11)
    x = x_t
    for i in range(len(times) - 1):
        t, beta = times[i], betas[i]
        alpha = 1 - beta
        if corrector != "none":
            grad = score_t(x, t)
            noise = torch.randn_like(x)
            if corrector == "langevin":
                grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
                noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
                step = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
            else:
                step = (snr * sde.marginal_std(t)) ** 2 * 2 * alpha
            x_mean = x + step * grad
            x = x_mean + torch.sqrt(step * 2) * noise
        s = score_t(x, t)
        x_mean = (x + beta * s) / torch.sqrt(1.0 - beta)
        x = x_mean + torch.sqrt(beta) * torch.randn_like(x)
    return x_mean / sde.mean_scale(times[-1])


@pytest.mark.parametrize("corrector", ["none", "langevin", "ald"])
def test_vp_ancestral_predictor_and_corrector_alpha_match_score_sde(corrector):
    g = mixture(d=3, seed=1)
    n = 40
    times = torch.linspace(1.0, 1e-3, n, dtype=F64)
    table = torch.linspace(0.1 / n, 20.0 / n, n, dtype=F64)
    betas = table[(times * (n - 1)).long()]
    x_t = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = _score_sde_vp_pc(g, x_t, times, betas, "ancestral", corrector, 0.16)
    sde = VPSDE(0.1, 20.0)
    grid = sde.sigma(times)  # no trailing 0: the reference's last predictor output is compared
    got = pc_sampler(g, x_t / sde.mean_scale(times[0]), grid, predictor="ancestral", corrector=corrector, snr=0.16,
                     generator=torch.Generator().manual_seed(11), betas=betas[:-1])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if corrector != "none":  # α = 1 would differ
        plain = pc_sampler(g, x_t / sde.mean_scale(times[0]), grid, predictor="ancestral", corrector=corrector,
                           snr=0.16, generator=torch.Generator().manual_seed(11), betas=None)
        assert (plain - want).abs().max() > 1e-3


# --- defect 5: learned variance on a respaced grid, as improved-diffusion --------------------------


class _LearnedRangeEps(torch.nn.Module):
    """An improved-DDPM-style network: [ε, raw] with the exact ε of a mixture and a smooth raw ∈ (-1, 1)."""

    def __init__(self, g: GaussianMixture, abar: torch.Tensor):
        super().__init__()
        self.g, self.abar = g, abar

    def forward(self, x_t, t):
        ti = t.round().long()
        raw = torch.tanh(0.7 * x_t + torch.cos(ti.to(x_t.dtype) / 37.0)[:, None])
        return torch.cat([self.g.eps(x_t, ti, self.abar), raw], dim=1)


def iddpm_p_sample_loop(model, abar_full, use_timesteps, x_T, clip_denoised, seed, variance="learned", cond_fn=None):
    """improved-diffusion respace.py SpacedDiffusion + gaussian_diffusion.py p_sample_loop (LEARNED_RANGE,
    FIXED_SMALL, FIXED_LARGE), in x_t coordinates and float64, noise from torch.randn_like after
    torch.manual_seed. Checked against the reference code itself (same outputs to 1e-12)."""
    last, new_betas, tmap = 1.0, [], []
    for i, a in enumerate(abar_full.tolist()):
        if i in set(use_timesteps):
            new_betas.append(1 - a / last)
            last = a
            tmap.append(i)
    betas = torch.tensor(new_betas, dtype=F64)
    ac = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=F64), ac[:-1]])
    post_var = betas * (1 - prev) / (1 - ac)
    post_log = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1, coef2 = betas * prev.sqrt() / (1 - ac), (1 - prev) * (1 - betas).sqrt() / (1 - ac)
    large_log = torch.log(torch.cat([post_var[1:2], betas[1:]]))
    torch.manual_seed(seed)
    x = x_T
    for k in reversed(range(len(tmap))):
        out = model(x, torch.full((x.shape[0],), tmap[k], dtype=F64))
        eps, raw = out[:, : x.shape[1]], out[:, x.shape[1]:]
        if variance == "learned":
            frac = (raw + 1) / 2
            logvar = frac * torch.log(betas[k]) + (1 - frac) * post_log[k]
        else:
            logvar = (post_log if variance == "small" else large_log)[k].expand_as(x)
        x0 = (1 / ac[k]).sqrt() * x - (1 / ac[k] - 1).sqrt() * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = coef1[k] * x0 + coef2[k] * x
        noise = torch.randn_like(x)
        if cond_fn is not None:  # guided-diffusion gaussian_diffusion.py condition_mean: μ + Σ ∇ log p(y | x_t)
            var = torch.exp(logvar) if variance == "learned" else (post_var if variance == "small" else
                                                                     torch.cat([post_var[1:2], betas[1:]]))[k]
            mean = mean + var * cond_fn(x, torch.full((x.shape[0],), tmap[k]))
        x = mean + float(k != 0) * torch.exp(0.5 * logvar) * noise
    return x


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance", ["learned", "small", "large"])
def test_ddpm_ancestral_matches_improved_diffusion_on_a_respaced_grid(variance, clip):
    from scorelib import EpsToScore
    from scorelib.samplers import ddpm_ancestral
    from scorelib.schedules import DDPMSchedule, respace_timesteps, timesteps_to_sigmas

    sched = DDPMSchedule.cosine(400)
    abar = sched.alphas_cumprod
    g = GaussianMixture.isotropic(torch.tensor([[0.9, -0.9, 0.5], [-0.9, 0.9, -0.5]], dtype=F64), 0.3)
    net = _LearnedRangeEps(g, abar)
    ts = respace_timesteps(400, 25)  # improved-diffusion space_timesteps(400, "25"): round(k·399/24)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = iddpm_p_sample_loop(net, abar, ts.flip(0).tolist(), x_T, clip, seed=3, variance=variance)
    grid = timesteps_to_sigmas(abar, ts)
    score = EpsToScore(net, abar, learned_variance=True)
    got = ddpm_ancestral(score, x_T * (1 + grid[0] ** 2).sqrt(), grid, variance=variance,
                         generator=torch.Generator().manual_seed(3), clip_denoised=clip)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if clip:
        assert got.abs().max() <= 1.0
    if variance == "learned":  # the learned Σ differs from both fixed ones
        small = ddpm_ancestral(score, x_T * (1 + grid[0] ** 2).sqrt(), grid, variance="small",
                               generator=torch.Generator().manual_seed(3), clip_denoised=clip)
        assert (small - want).abs().max() > 1e-2


# --- defect 8: vlb_loss as improved-diffusion's RESCALED_KL ------------------------------------------


def _golden_vlb_problem():
    """The problem the improved-diffusion golden numbers were recorded on: cosine T = 50, a LEARNED_RANGE
    network over a 3-D two-mode mixture, x₀ [4, 3] and noise [4, 3] from seed 0."""
    from scorelib.schedules import DDPMSchedule

    sched = DDPMSchedule.cosine(50)
    g = GaussianMixture.isotropic(torch.tensor([[0.9, -0.9, 0.5], [-0.9, 0.9, -0.5]], dtype=F64), 0.3)
    net = _LearnedRangeEps(g, sched.alphas_cumprod)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, generator=gen, dtype=F64).clamp(-1, 1)
    noise = torch.randn(4, 3, generator=gen, dtype=F64)
    return sched, net, x0, noise


def test_vlb_loss_is_rescaled_kl():
    """Golden numbers from improved-diffusion `GaussianDiffusion.training_losses` (LossType.RESCALED_KL,
    LEARNED_RANGE, cosine T = 50), run in a scratch copy with this network, x₀, noise and t (t ≥ 1, where
    its tanh-approximated decoder CDF does not enter)."""
    from scorelib import EpsToScore
    from scorelib.losses import vlb_loss

    sched, net, x0, noise = _golden_vlb_problem()
    model = EpsToScore(lambda x, t: net(x, t.double()), sched.alphas_cumprod, learned_variance=True)
    got = vlb_loss(model, x0, sched, torch.tensor([1, 7, 23, 49]), noise)
    want = torch.tensor([21.77993275444799, 24.054425840057167, 2.408745249445904, 0.0064469054452821984], dtype=F64)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-7)  # the reference casts its tables to float32


def test_iddpm_cifar_pairs_the_hybrid_loss_with_uniform_timesteps_and_samples_with_learned_variance():
    """improved-diffusion README: the importance sampler (loss-second-moment) goes with --use_kl (L_vlb);
    the CIFAR-10 L_hybrid model trains with uniform t; image_sample.py uses the learned Σ and clips x̂₀."""
    c = get_config("iddpm_cifar")
    assert (c.training.loss, c.training.timestep_sampler) == ("hybrid", "uniform")
    assert (c.sampling.method, c.sampling.variance, c.sampling.clip_denoised) == ("ddpm", "learned", True)
    assert c.model.rescale_timesteps  # script_util.py model_and_diffusion_defaults: rescale_timesteps=True
    c.model.nf, c.model.num_res_blocks, c.model.attn_resolutions, c.noise.num_scales = 32, 1, (), 100
    c.sampling.n_steps = 4
    exp = exp_of(c)
    net = exp.network().eval()
    score = exp.wrap(net)
    calls = []
    orig = score.score_and_variance
    score.score_and_variance = lambda x, s: calls.append(1) or orig(x, s)
    with torch.no_grad():
        out = exp.sampler(score, (2, 3, 32, 32), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len(calls) == 4 and out.abs().max() <= 1.0


# --- defect 8: classifier guidance's scale convention (guided-diffusion condition_mean) -------------


@pytest.mark.parametrize("variance", ["learned", "small", "large"])
def test_mean_guidance_matches_guided_diffusion_condition_mean(variance):
    from scorelib import EpsToScore
    from scorelib.guidance import ClassifierGuidance
    from scorelib.precond import VPClassifier
    from scorelib.samplers import ddpm_ancestral
    from scorelib.schedules import DDPMSchedule, respace_timesteps, timesteps_to_sigmas

    sched = DDPMSchedule.cosine(200)
    abar = sched.alphas_cumprod
    g = GaussianMixture.isotropic(torch.tensor([[0.9, -0.9, 0.5], [-0.9, 0.9, -0.5]], dtype=F64), 0.3)
    net = _LearnedRangeEps(g, abar)
    w_cls = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.3, 2.0]], dtype=F64)

    def classifier(x_t, t):  # logits [B, 2] of a noisy-image classifier
        return x_t @ w_cls.T * (1 + t.double()[:, None] / 200)

    y, scale = torch.tensor([0, 1] * 16), 3.0

    def cond_fn(x_t, t):  # guided-diffusion scripts/classifier_sample.py cond_fn
        with torch.enable_grad():
            xi = x_t.detach().requires_grad_(True)
            logp = torch.log_softmax(classifier(xi, t), dim=-1)[torch.arange(len(y)), y]
            return torch.autograd.grad(logp.sum(), xi)[0] * scale

    ts = respace_timesteps(200, 20)
    x_T = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = iddpm_p_sample_loop(net, abar, ts.flip(0).tolist(), x_T, True, seed=5, variance=variance, cond_fn=cond_fn)
    grid = timesteps_to_sigmas(abar, ts)
    guided = ClassifierGuidance(EpsToScore(net, abar, learned_variance=True), VPClassifier(classifier, abar), y, scale,
                                convention="mean")
    got = ddpm_ancestral(guided, x_T * (1 + grid[0] ** 2).sqrt(), grid, variance=variance,
                         generator=torch.Generator().manual_seed(5), clip_denoised=True, guidance=guided.guidance_grad)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # the score convention (condition_score) on the same sampler is a different chain
    as_score = ClassifierGuidance(EpsToScore(net, abar, learned_variance=True), VPClassifier(classifier, abar), y,
                                  scale)
    other = ddpm_ancestral(as_score, x_T * (1 + grid[0] ** 2).sqrt(), grid, variance=variance,
                           generator=torch.Generator().manual_seed(5), clip_denoised=True)
    assert (other - want).abs().max() > 1e-2


def test_guidance_convention_is_guided_diffusions_pairing():
    c = get_config("adm_cifar")
    c.sampling.guidance, c.classifier.workdir = "classifier", "clf"
    assert exp_of(c).guidance.convention == "score"  # ddim: condition_score
    c.sampling.method = "ddpm"
    assert exp_of(c).guidance.convention == "mean"  # p_sample: condition_mean
    c.sampling.method, c.sampling.guidance_convention = "ddim", "mean"
    with pytest.raises(ConfigError, match="guidance_convention"):
        exp_of(c)


# --- defect 7: timestep draws happen where the generator lives ----------------------------------------


class _ElsewhereGenerator:
    """Stands for a generator on another device (no GPU here): only its `device` is read."""

    device = torch.device("meta")


@pytest.mark.parametrize("sampler", ["uniform", "importance"])
def test_timestep_samplers_draw_on_the_generators_device(sampler, monkeypatch):
    """torch.multinomial with a CUDA generator needs its input on CUDA: the probabilities must be moved to
    the generator's device before the draw (the importance sampler crashed on a GPU)."""
    from scorelib.losses import ImportanceTimesteps, UniformTimesteps

    seen = []

    def fake_multinomial(p, n, replacement=False, generator=None):
        seen.append((p.device, generator))
        return torch.zeros(n, dtype=torch.long, device=p.device)

    monkeypatch.setattr(torch, "multinomial", fake_multinomial)
    ts = UniformTimesteps(10) if sampler == "uniform" else ImportanceTimesteps(10, history=1)
    if sampler == "importance":
        ts.update(torch.arange(10), torch.rand(10))
        assert ts.warmed_up()
    gen = _ElsewhereGenerator()
    t, w = ts.sample(4, device="meta", generator=gen)
    assert seen == [(torch.device("meta"), gen)] and t.device == w.device == torch.device("meta")
    monkeypatch.undo()
    t, w = ts.sample(4, device="cpu", generator=torch.Generator().manual_seed(0))  # a real draw still works
    assert t.shape == w.shape == (4,) and t.dtype == torch.long


# --- defect 8: DPM-Solver++ lowers its order at the end only where the references do ------------------


def _multistep_dpmpp(denoise, x, sigmas, orders, taylor_warmup=False):
    """DPM-Solver++ multistep in k-diffusion's form (sampling.py sample_dpmpp_2m, and sample_dpmpp_3m_sde
    with eta = 0 for the third order), with the order of each step given; a step to σ = 0 returns D.
    Second-order steps: -φ₁/2r (2M, DPM-Solver's 'dpmsolver' type), or with `taylor_warmup` 3M's +φ₂/r."""
    lam = lambda s: -math.log(s)  # noqa: E731
    ds = []
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = denoise(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        if s_next == 0:
            x = d
        else:
            h = lam(s_next) - lam(s)
            x_new = (s_next / s) * x - math.expm1(-h) * d
            if orders[i] >= 2:
                h1 = lam(s) - lam(float(sigmas[i - 1]))
                r0 = h1 / h
                d1_0 = (d - ds[-1]) / r0
                if orders[i] == 2 and taylor_warmup:
                    x_new = x_new + (math.expm1(-h) / h + 1) * d1_0
                elif orders[i] == 2:
                    x_new = x_new - 0.5 * math.expm1(-h) * d1_0
                else:
                    r1 = (lam(float(sigmas[i - 1])) - lam(float(sigmas[i - 2]))) / h
                    d1_1 = (ds[-1] - ds[-2]) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi2 = math.expm1(-h) / h + 1
                    phi3 = phi2 / h - 0.5
                    x_new = x_new + phi2 * d1 - phi3 * d2
            x = x_new
        ds.append(d)
    return x


@pytest.mark.parametrize("case", ["kdiff_15_zero", "kdiff_6_zero", "dpmsolver_6", "dpmsolver_12"])
def test_dpm_solver_pp_lower_order_final_as_the_references(case):
    from scorelib.samplers import dpm_solver_pp

    g = mixture(d=2, seed=2)
    den = lambda x, s: g.denoise(x, s)  # noqa: E731
    if case == "kdiff_15_zero":  # k-diffusion: full order up to the final step to σ = 0
        grid, orders = append_zero(geometric_sigmas(40.0, 0.01, 15)), [1, 2] + [3] * 12 + [1]
    elif case == "kdiff_6_zero":  # also for short runs
        grid, orders = append_zero(geometric_sigmas(40.0, 0.01, 6)), [1, 2, 3, 3, 3, 1]
    elif case == "dpmsolver_6":  # DPM-Solver, steps < 10: min(order, steps + 1 - step) at the end
        grid, orders = geometric_sigmas(40.0, 0.01, 7), [1, 2, 3, 3, 2, 1]
    else:  # DPM-Solver, steps >= 10: no lowering
        grid, orders = geometric_sigmas(40.0, 0.01, 13), [1, 2] + [3] * 10
    x = 40.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = _multistep_dpmpp(den, x, grid, orders, taylor_warmup=case.startswith("kdiff"))
    got = dpm_solver_pp(lambda x, s: g.score(x, s), x, grid, order=3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# --- defect 8: NCSN v1 trains on uniformly dequantised images ------------------------------------------


@pytest.mark.parametrize("name", ["ncsn_cifar", "ncsn_mnist"])
def test_ncsn_v1_dequantises_as_its_reference(name):
    """ermongroup/ncsn runners/anneal_runner.py: X = X / 256. * 255. + torch.rand_like(X) / 256. on
    ToTensor images X = k/255, i.e. (k + u)/256."""
    from scorelib.data import prepare_batch

    d = exp_of(get_config(name)).data
    assert d.uniform_dequantization and not d.centered
    k = torch.randint(0, 256, (8, d.channels, 4, 4), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    got = prepare_batch(k, 256, False, d.uniform_dequantization, d.centered, torch.Generator().manual_seed(1))
    X = k.float() / 255.0
    want = X / 256.0 * 255.0 + torch.rand(X.shape, generator=torch.Generator().manual_seed(1)) / 256.0
    torch.testing.assert_close(got, want)


# --- defect 8: Hutchinson probes are Rademacher by default --------------------------------------------


def test_hutchinson_probes_are_rademacher_by_default():
    """score_sde likelihood.py get_likelihood_fn(hutchinson_type='Rademacher')."""
    from scorelib.likelihood import log_likelihood

    g = mixture(d=3, seed=0)
    x = g.sample(4, generator=torch.Generator().manual_seed(0)).double()
    run = lambda **kw: log_likelihood(g, x, 20.0, 0.05, rtol=1e-4, atol=1e-4,  # noqa: E731
                                      generator=torch.Generator().manual_seed(3), **kw)
    default, rad, gauss = run(), run(probe="rademacher"), run(probe="gaussian")
    torch.testing.assert_close(default, rad, rtol=0, atol=0)
    assert (default - gauss).abs().max() > 1e-6


def test_vlb_terms_with_clipped_x0_match_improved_diffusion():
    """Golden numbers from improved-diffusion `_vb_terms_bpd(clip_denoised=True / False)` (the NLL
    script's default is True), LEARNED_RANGE, cosine T = 50, same network, x₀, noise and t."""
    from scorelib.losses import interpolated_log_variance, vlb_term

    sched, net, x0, noise = _golden_vlb_problem()
    t = torch.tensor([1, 7, 23, 49])
    x_t = sched.q_sample(x0, t, noise)
    out = net(x_t, t.double())
    eps, v = out[:, :3], (out[:, 3:] + 1) / 2  # LEARNED_RANGE
    log_var = interpolated_log_variance(v, sched, t)
    golden = {True: [0.43559865508895984, 0.4796814452084998, 0.048174904988918084, 0.00012893810890564396],
              False: [0.43559865508895984, 0.48108851680114334, 0.048174904988918084, 0.00012893810890564396]}
    for clip, want in golden.items():
        got = vlb_term(sched, x0, x_t, t, eps, log_var, clip_denoised=clip)
        torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=2e-6, atol=1e-8)
