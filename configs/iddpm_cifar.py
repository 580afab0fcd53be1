"""Improved DDPM on CIFAR-10 (Nichol & Dhariwal 2021; improved-diffusion README, "Unconditional CIFAR-10
with our L_hybrid objective and cosine noise schedule"): U-Net 128 channels, 3 res blocks, attention at 16
and 8, 4 heads, scale-shift norm, dropout 0.3, learned variance, timesteps fed as t·1000/T; cosine schedule T = 4000, hybrid loss
(λ = 0.001, the RESCALED_MSE of the reference) with uniform timesteps (the reference pairs the
loss-second-moment importance sampler with L_vlb only: --use_kl True); Adam 1e-4, batch 128, EMA 0.9999,
500k iterations; sampled with 100 respaced DDPM steps and the learned variance, x̂₀ clipped to [-1, 1]
(improved-diffusion image_sample.py with --timestep_respacing 100)."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "cifar10"
    c.data.centered = True
    c.model.name = "iddpm"
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 128, (1, 2, 2, 2), 3
    c.model.attn_resolutions, c.model.num_heads, c.model.dropout = (16, 8), 4, 0.3
    c.model.use_scale_shift_norm, c.model.learn_sigma = True, True
    c.model.rescale_timesteps = True  # the network sees t·1000/T (improved-diffusion's default)
    c.model.ema_rate = 0.9999
    c.noise.kind = "ddpm"
    c.noise.beta_schedule, c.noise.num_scales = "cosine", 4000
    c.training.loss = "hybrid"
    c.training.lambda_vlb = 0.001
    c.training.timestep_sampler = "uniform"
    c.training.n_iters = 500_000
    c.optim.lr = 1e-4
    c.sampling.method = "ddpm"
    c.sampling.variance, c.sampling.clip_denoised = "learned", True
    c.sampling.init = "gaussian"
    c.sampling.n_steps = 100
    return c
