"""DDPM on CIFAR-10 (Ho et al. 2020): U-Net ch 128, mult (1,2,2,2), 2 res blocks, attention at 16,
dropout 0.1; T = 1000, linear β 1e-4 → 0.02, L_simple; Adam 2e-4, batch 128, warm-up 5000, gradient
clip 1, EMA 0.9999, 800k iterations, random flips, data in [-1, 1]; ancestral sampling with σ² = β."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "cifar10"
    c.data.centered = True
    c.model.name = "ddpm"
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 128, (1, 2, 2, 2), 2
    c.model.attn_resolutions, c.model.dropout = (16,), 0.1
    c.model.ema_rate = 0.9999
    c.noise.kind = "ddpm"
    c.noise.beta_schedule, c.noise.num_scales = "linear", 1000
    c.training.loss = "eps"
    c.training.n_iters = 800_000
    c.optim.lr, c.optim.warmup, c.optim.grad_clip = 2e-4, 5000, 1.0
    c.sampling.method = "ddpm"
    c.sampling.variance = "large"
    c.sampling.init = "gaussian"
    c.sampling.n_steps = 1000
    return c
