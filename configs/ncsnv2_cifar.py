"""NCSNv2 on CIFAR-10 (Song & Ermon 2020): NCSNv2 ngf 128 with output /σ, σ 50 → 0.01 over 232
levels, Adam 1e-4, batch 128, 300k iterations, EMA 0.999; annealed Langevin 5 steps per level, step_lr
6.2e-6, final denoising (ermongroup/ncsnv2 configs/cifar10.yml)."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "cifar10"
    c.model.name = "ncsnv2"
    c.model.nf = 128
    c.model.ema_rate = 0.999
    c.noise.kind = "ve"
    c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = 50.0, 0.01, 232
    c.training.n_iters = 300_001
    c.optim.lr = 1e-4
    c.sampling.method = "ald"
    c.sampling.n_steps_each = 5
    c.sampling.step_lr = 6.2e-6
    c.sampling.denoise = True
    return c
