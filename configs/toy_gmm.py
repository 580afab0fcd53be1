"""A 2-D mixture of 8 Gaussians with the σ-conditioned MLP: DSM over 20 geometric levels 10 → 0.01,
annealed Langevin sampling, evaluated against the exact mixture (seconds on a CPU)."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset, c.data.toy = "toy", "gmm8"
    c.data.channels, c.data.image_size = 2, 1
    c.data.random_flip = False
    c.model.name = "mlp"
    c.model.nf, c.model.num_res_blocks, c.model.embed_dim, c.model.data_std = 128, 3, 64, 3.0
    c.model.ema_rate = 0.99
    c.noise.kind = "ve"
    c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = 10.0, 0.01, 20
    c.training.batch_size, c.training.n_iters = 256, 5000
    c.training.snapshot_freq, c.training.log_freq = 1000, 100
    c.training.eval_at_end = True
    c.optim.lr = 2e-3
    c.sampling.method = "ald"
    c.sampling.init = "gaussian"
    c.sampling.n_steps_each, c.sampling.step_lr = 20, 1e-5
    c.sampling.batch_size, c.sampling.n_samples = 2000, 2000
    c.eval.n_samples, c.eval.batch_size = 2000, 2000
    return c
