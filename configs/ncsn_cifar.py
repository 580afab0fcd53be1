"""NCSN on CIFAR-10 (Song & Ermon 2019): CondRefineNetDilated, ngf 128, σ 1 → 0.01 over 10 levels,
DSM with λ(σ) = σ², Adam 1e-3, batch 128, 200k iterations; annealed Langevin 100 steps per level,
step_lr 2e-5, from uniform noise, no final denoising (ermongroup/ncsn configs/anneal.yml); training
images uniformly dequantised, X·255/256 + U/256 (runners/anneal_runner.py `AnnealRunner.train`)."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "cifar10"
    c.data.uniform_dequantization = True
    c.model.name = "ncsn"
    c.model.nf = 128
    c.model.ema_rate = 0.0  # NCSN used no EMA: the "EMA" copy tracks the weights exactly
    c.noise.kind = "ve"
    c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = 1.0, 0.01, 10
    c.training.n_iters = 200_001
    c.training.loss = "dsm"
    c.optim.lr = 1e-3
    c.sampling.method = "ald"
    c.sampling.n_steps_each = 100
    c.sampling.step_lr = 2e-5
    c.sampling.denoise = False
    c.sampling.init = "uniform"
    return c
