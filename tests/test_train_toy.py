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


def test_resume_restores_the_importance_sampler_history(tmp_path):
    """improved DDPM's importance-sampled timesteps: once every t holds its 10 losses the draws depend on the
    history, so a run resumed from a checkpoint ends with the weights of an uninterrupted one only when the
    history was saved and restored with it."""
    from scorelib.builder import experiment
    from scorelib.builder.configs import with_overrides
    from scorelib.checkpoint import list_checkpoints, load_checkpoint
    from scorelib.presets import resolve_config
    from scorelib.train import train

    c = with_overrides(resolve_config("ddpm_cifar"), {
        "data.dataset": "digits", "data.image_size": 8, "data.channels": 1, "data.random_flip": False,
        "model.nf": 32, "model.ch_mult": (1,), "model.num_res_blocks": 1, "model.attn_resolutions": (),
        "model.dropout": 0.0, "noise.num_scales": 4, "noise.beta_schedule": "cosine",
        "training.timestep_sampler": "importance",
        "training.batch_size": 16, "training.n_iters": 12, "training.snapshot_freq": 6, "training.log_freq": 6,
        "training.snapshot_samples": 0, "training.eval_at_end": False, "optim.warmup": 0, "device": "cpu",
        "sampling.n_steps": 0})
    train(experiment(c), tmp_path / "full")
    train(experiment(with_overrides(c, {"training.n_iters": 6})), tmp_path / "resumed")
    state = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1][1])
    assert int(state["timesteps"]["counts"].min()) >= 10  # warmed up: the next draws read the history
    train(experiment(c), tmp_path / "resumed")
    a = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1][1])["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1][1])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batches_share_a_step_s_batch_out_over_the_processes():
    """The batch of step k is positions [kB, (k+1)B) of the per-epoch permutations whatever the number of
    processes: ranks 0 and 1 of two together hold the single process's batch; an uneven split is refused."""
    import pytest

    from scorelib.data import Batches, load_digits

    data = load_digits(train=True)
    one = Batches(data, 7, 8)
    two = [Batches(data, 7, 8, rank=r, world=2) for r in (0, 1)]
    for step in (0, 149, 150, 400):  # 1200 images: step 150 starts the second epoch
        x, y = one(step, torch.Generator().manual_seed(0))
        parts = [b(step, torch.Generator().manual_seed(0)) for b in two]
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # no flips or dequantisation: the same pixels
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 4 processes"):
        Batches(data, 0, 6, world=4)
