import torch
from oracles import F64, gaussian, gaussian_flow

from scorelib import geometric_sigmas
from scorelib.samplers import inpaint_langevin, inpaint_pc, interpolate, slerp
from scorelib.schedules import append_zero


def _conditional(g, known_idx, unknown_idx, known_vals):
    mu, S = g.means[0], g.covs[0]
    Skk = S[known_idx][:, known_idx]
    Suk = S[unknown_idx][:, known_idx]
    Suu = S[unknown_idx][:, unknown_idx]
    mean = mu[unknown_idx] + (known_vals - mu[known_idx]) @ torch.linalg.solve(Skk, Suk.T)
    cov = Suu - Suk @ torch.linalg.solve(Skk, Suk.T)
    return mean, cov


def test_inpainting_imputes_the_gaussian_conditional():
    """Imputation of two coordinates of a correlated 4-D Gaussian, with exact scores: the imputed
    values follow p(x_u | x_k) (mean and covariance), the known ones are returned exactly."""
    torch.manual_seed(0)
    g = gaussian(d=4, seed=7)
    n = 4000
    known = g.sample(1, dtype=F64).expand(n, 4).clone()
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    mean, cov = _conditional(g, [0, 1], [2, 3], known[0, :2])
    x = 10.0 * torch.randn(n, 4, dtype=F64)
    sigmas = geometric_sigmas(10.0, 0.01, 30)
    ald = inpaint_langevin(g, x, sigmas, known, mask, n_steps_each=30, step_lr=1e-5,
                           generator=torch.Generator().manual_seed(1))
    pc = inpaint_pc(g, x, append_zero(geometric_sigmas(10.0, 0.01, 300)), known, mask, snr=0.16,
                    generator=torch.Generator().manual_seed(2))
    for out in (ald, pc):
        assert torch.equal(out[:, :2], known[:, :2])
        torch.testing.assert_close(out[:, 2:].mean(0), mean, atol=0.06, rtol=0)
        torch.testing.assert_close(torch.cov(out[:, 2:].T), cov, atol=0.06, rtol=0.1)


def test_interpolation_reproduces_the_end_points_and_stays_on_the_data():
    g = gaussian(d=3, seed=2)
    xa, xb = g.sample(2, dtype=F64), g.sample(2, dtype=F64)
    frames = interpolate(g, xa, xb, 5, 20.0, 0.01, rtol=1e-9, atol=1e-9)
    assert frames.shape == (5, 2, 3)
    torch.testing.assert_close(frames[0], xa, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frames[-1], xb, rtol=1e-5, atol=1e-5)
    # the middle frame is the exact flow map of the slerped exact latents
    za, zb = gaussian_flow(g, xa, 0.01, 20.0), gaussian_flow(g, xb, 0.01, 20.0)
    torch.testing.assert_close(frames[2], gaussian_flow(g, slerp(za, zb, 0.5), 20.0, 0.01), rtol=1e-5, atol=1e-5)
