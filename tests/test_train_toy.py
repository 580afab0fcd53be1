"""A short DSM training of the σ-conditioned MLP on a 2-D mixture moves it toward the exact score."""

import torch

from scorelib import dsm_loss, geometric_sigmas
from scorelib.data import toy_mixture
from scorelib.models.mlp import MLPScore


def _score_error(model, gmm, grid, sigmas):
    with torch.no_grad():
        errs = []
        for s in sigmas:
            sig = torch.full((grid.shape[0],), float(s))
            # σ²‖s_θ - s*‖² on the grid, weighted by p_σ on the grid (where the model has seen data)
            w = torch.softmax(gmm.log_prob(grid, sig), 0).float()
            errs.append((w * s**2 * ((model(grid, sig) - gmm(grid, sig)) ** 2).sum(1)).sum())
        return torch.stack(errs)


def test_mlp_dsm_training_approaches_exact_score():
    torch.manual_seed(0)
    gmm = toy_mixture("gmm8")
    sigmas = geometric_sigmas(8.0, 0.1, 10).float()
    model = MLPScore(2, hidden=128, n_layers=3, data_std=3.0)
    grid = torch.cartesian_prod(torch.linspace(-6, 6, 25), torch.linspace(-6, 6, 25))
    probe = torch.tensor([8.0, 2.0, 0.5])
    before = _score_error(model, gmm, grid, probe)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(600):
        x = gmm.sample(256, generator=gen)
        loss = dsm_loss(model, x, sigmas, generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = _score_error(model, gmm, grid, probe)
    assert sum(losses[-50:]) / 50 < 0.9 * sum(losses[:50]) / 50
    assert (after < 0.6 * before).all(), (before, after)
    assert after.sum() < 0.3 * before.sum(), (before, after)
