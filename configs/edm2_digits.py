"""EDM2 on scikit-learn's bundled 8×8 digits (Karras et al. 2024, config G at digits scale): the
magnitude-preserving U-Net (32 channels, multipliers 1, 2, one block per resolution, attention at 4×4),
class-conditional with EDM2's label input, EDM2's loss with the learned uncertainty u(σ) (ln σ ~ N(-0.8, 1.6²),
its img64 distribution), Adam (β₂ = 0.99) with EDM2's inverse-square-root learning-rate decay, and two
power-function EMA profiles (σ_rel 0.05 and 0.10) stored every 100 steps for post-hoc EMA (`--mode=phema`).
Sampled with EDM's Heun, 18 steps (35 NFE), σ from 80 to 0.002; sampling.guidance=auto with an early
checkpoint as sampling.guide_checkpoint gives autoguidance, sampling.guidance_interval limits it."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset, c.data.image_size, c.data.channels, c.data.num_classes = "digits", 8, 1, 10
    c.data.centered, c.data.random_flip, c.data.uniform_dequantization = True, False, True
    c.model.name, c.model.precond, c.model.sigma_data = "edm2", "edm2", 0.5
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions = 32, (1, 2), 1, (4,)
    c.model.num_head_channels, c.model.logvar_channels, c.model.dropout = 32, 32, 0.0
    c.noise.kind, c.noise.sigma_min, c.noise.sigma_max = "edm", 0.002, 80.0
    c.noise.P_mean, c.noise.P_std = -0.8, 1.6
    c.training.loss, c.training.batch_size, c.training.n_iters = "edm2", 128, 1500
    c.training.snapshot_freq, c.training.log_freq, c.training.snapshot_samples = 500, 50, 64
    c.training.keep_checkpoints = 0  # every snapshot kept: an early one is autoguidance's guide
    c.training.ema_halflife_kimg, c.training.ema_rampup_ratio = 20.0, 0.05
    c.training.phema_sigma_rels, c.training.phema_snapshot_freq = (0.05, 0.10), 100
    c.training.eval_at_end = True
    c.optim.lr, c.optim.beta1, c.optim.beta2, c.optim.eps, c.optim.warmup = 1e-2, 0.9, 0.99, 1e-8, 100
    c.optim.schedule, c.optim.lr_ref_kimg = "edm2", 64.0  # decay after 500 steps of 128 images
    c.sampling.method, c.sampling.init, c.sampling.n_steps, c.sampling.rho = "heun", "gaussian", 18, 7.0
    c.sampling.batch_size, c.sampling.n_samples = 500, 500
    c.eval.n_samples, c.eval.batch_size, c.eval.metrics = 1000, 500, ("digits_fid",)
    return c
