"""The embedded demo: NCSN-style training on scikit-learn's bundled 8×8 digits (1500 training images),
in under 4 minutes on 2 CPU cores. Noise levels and step size follow NCSNv2's rules computed from the
data (σ_1 = the largest pairwise distance 4.8, γ = 1.34 → 22 levels down to 0.01, T = 5,
step_lr 2.35e-5); a small σ-conditioned U-Net (output /σ), DSM, EMA; annealed Langevin sampling with
final denoising, then the digits FID against held-out digits."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "digits"
    c.data.image_size, c.data.channels = 8, 1
    c.data.random_flip = False
    c.data.uniform_dequantization = True
    c.model.name = "conv"
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 32, (1, 2), 1
    c.model.attn_resolutions, c.model.dropout, c.model.data_std = (), 0.0, 0.4
    c.model.ema_rate = 0.999
    c.noise.kind = "ve"
    c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = 4.8, 0.01, 22
    c.training.batch_size, c.training.n_iters = 128, 1500
    c.training.snapshot_freq, c.training.log_freq = 500, 50
    c.training.snapshot_samples = 64
    c.training.eval_at_end = True
    c.optim.lr = 1e-3
    c.optim.warmup = 100
    c.sampling.method = "ald"
    c.sampling.init = "uniform"
    c.sampling.n_steps_each, c.sampling.step_lr, c.sampling.denoise = 5, 2.35e-5, True
    c.sampling.batch_size, c.sampling.n_samples = 500, 500
    c.eval.n_samples, c.eval.batch_size = 1000, 500
    c.eval.metrics = ("digits_fid",)
    return c
