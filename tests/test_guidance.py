"""Guidance as score transformers, against a two-class mixture whose class posterior is analytic."""

import torch
from oracles import F64

from scorelib import EpsToScore, linear_betas
from scorelib.analytic import GaussianMixture
from scorelib.guidance import ClassifierFreeGuidance, ClassifierGuidance
from scorelib.precond import VPClassifier
from scorelib.samplers import heun
from scorelib.schedules import alphas_cumprod_from_betas, append_zero, karras_sigmas

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64)
COVS = torch.stack([torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64), torch.tensor([[0.2, -0.05], [-0.05, 0.4]],
                                                                                       dtype=F64)])
GMM = GaussianMixture(MEANS, COVS, torch.tensor([0.7, 0.3], dtype=F64))
PARTS = [GaussianMixture(MEANS[i : i + 1], COVS[i : i + 1]) for i in range(2)]


def classifier(x, sigma):
    """log p(y | x_σ) = log responsibilities of the mixture at σ (logits up to a constant)."""
    return GMM.responsibilities(x, sigma).log().to(x.dtype)


def test_classifier_guidance_with_w1_is_the_exact_conditional_score():
    y = torch.tensor([1] * 5 + [0] * 5)
    guided = ClassifierGuidance(GMM, classifier, y, w=1.0)
    x = torch.randn(10, 2, dtype=F64) * 2
    sigma = torch.full((10,), 0.7, dtype=F64)
    want = torch.cat([PARTS[1](x[:5], sigma[:5]), PARTS[0](x[5:], sigma[5:])])
    torch.testing.assert_close(guided(x, sigma), want, rtol=1e-6, atol=1e-8)


def test_classifier_guidance_samples_the_analytic_conditional():
    n = 4000
    y = torch.ones(n, dtype=torch.long)
    guided = ClassifierGuidance(GMM, classifier, y, w=1.0)
    # start far enough up that N(0, σ²I) ≈ p_σ(x | y): the mean offset shrinks by √(Σ/σ²) on the way down
    x = 200.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = heun(guided, x, append_zero(karras_sigmas(200.0, 0.005, 60)))
    torch.testing.assert_close(out.mean(0), MEANS[1], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), COVS[1], atol=0.05, rtol=0)


def test_vp_classifier_sees_the_ddpm_input_and_its_gradient_is_in_sigma_space():
    abar = alphas_cumprod_from_betas(linear_betas(1000))
    seen = {}

    def ddpm_classifier(x_t, t):  # a VP classifier built from the σ-space one
        seen["t"] = t
        sigma = EpsToScore(torch.nn.Identity(), abar).sigmas[t.round().long()]
        return classifier(x_t * (1 + sigma[:, None] ** 2).sqrt(), sigma)

    clf = VPClassifier(ddpm_classifier, abar)
    sigma = EpsToScore(torch.nn.Identity(), abar).sigmas[[100, 400]].to(F64)
    x = torch.randn(2, 2, dtype=F64)
    y = torch.tensor([0, 1])
    a = ClassifierGuidance(GMM, clf, y, 2.0)(x, sigma)
    b = ClassifierGuidance(GMM, classifier, y, 2.0)(x, sigma)
    torch.testing.assert_close(a, b)
    assert seen["t"].tolist() == [100.0, 400.0]


def test_classifier_free_guidance_formula_and_w0_is_conditional():
    calls = []

    def cond_model(x, sigma, y):
        calls.append(len(y))
        out = torch.empty_like(x)
        for label, part in [(0, PARTS[0]), (1, PARTS[1]), (2, GMM)]:  # label 2 = the null label
            m = y == label
            if m.any():
                out[m] = part(x[m], sigma[m])
        return out

    x = torch.randn(6, 2, dtype=F64)
    sigma = torch.full((6,), 0.5, dtype=F64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    cond = cond_model(x, sigma, y)
    uncond = GMM(x, sigma)
    torch.testing.assert_close(ClassifierFreeGuidance(cond_model, y, 0.0, null_label=2)(x, sigma), cond)
    guided = ClassifierFreeGuidance(cond_model, y, 3.0, null_label=2)(x, sigma)
    torch.testing.assert_close(guided, 4 * cond - 3 * uncond)
    assert calls[-1] == 12  # conditional and unconditional evaluated in one batch
