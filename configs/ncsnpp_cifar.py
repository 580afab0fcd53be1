"""NCSN++ (continuous VE SDE) on CIFAR-10 (Song et al. 2021, configs/ve/cifar10_ncsnpp_continuous.py):
σ 0.01 → 50, 4 res blocks, FIR, residual input pyramid, Fourier σ embedding; Adam 2e-4, warm-up 5000,
clip 1, EMA 0.999, batch 128, 1.3M iterations; PC sampling with reverse diffusion + Langevin
(snr 0.16), 1000 levels, final denoising. Data in [0, 1]."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "cifar10"
    c.model.name = "ncsnpp"
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 128, (1, 2, 2, 2), 4
    c.model.attn_resolutions, c.model.dropout = (16,), 0.1
    c.model.fir, c.model.progressive_input, c.model.embedding_type = True, "residual", "fourier"
    c.model.ema_rate = 0.999
    c.noise.kind = "ve_continuous"
    c.noise.sigma_min, c.noise.sigma_max, c.noise.num_scales = 0.01, 50.0, 1000
    c.training.n_iters = 1_300_001
    c.optim.lr, c.optim.warmup, c.optim.grad_clip = 2e-4, 5000, 1.0
    c.sampling.method = "pc"
    c.sampling.predictor, c.sampling.corrector, c.sampling.snr = "reverse_diffusion", "langevin", 0.16
    c.sampling.init = "gaussian"
    c.sampling.n_steps = 1000
    return c
