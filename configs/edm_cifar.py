"""EDM on CIFAR-10 (Karras et al. 2022, config F; NVlabs/edm README's table, `--cond=0 --arch=ddpmpp`): EDM's
DDPM++ (SongUNet, 128 channels, multipliers 2,2,2, 4 blocks per resolution, attention at 16) with EDM's own
preconditioning (σ_data = 0.5) and loss (ln σ ~ N(-1.2, 1.2²)), dropout 0.13, non-leaky augmentation with
p = 0.12 (9 labels into the network); Adam lr 1e-3 with a 10 Mimg ramp-up, batch 512, EMA half-life 0.5 Mimg
(ramp-up ratio 0.05), 200 Mimg. Sampled with EDM's Heun: 18 steps (35 NFE), ρ = 7, σ from 80 to 0.002.

`--config=edm_cifar:vp` and `:ve` are EDM's VP and VE preconditionings with their losses (train.py
`--precond=vp|ve`, Table 1's first columns) on the same network; `edm_cifar_ve` is EDM's NCSN++.
"""

from configs.default import base

MIMG = 1_000_000 // 512  # steps per million images at batch 512


def get_config(precond: str = "edm"):
    if precond not in ("edm", "vp", "ve"):
        raise ValueError(f"unknown preconditioning {precond!r} (edm, vp, ve)")
    c = base()
    c.data.dataset, c.data.centered, c.data.random_flip, c.data.num_classes = "cifar10", True, False, 0
    c.data.augment_p = 0.12
    c.model.name, c.model.precond = "edm_ddpmpp", precond
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions = 128, (2, 2, 2), 4, (16,)
    c.model.dropout, c.model.augment_dim, c.model.sigma_data = 0.13, 9, 0.5
    # EDM's noise processes: log-normal σ (edm), the VP SDE β(t) = 0.1 + 19.9 t (vp), log-uniform σ in [0.02, 100]
    c.noise.kind = {"edm": "edm", "vp": "vp", "ve": "ve_continuous"}[precond]
    c.noise.sigma_min, c.noise.sigma_max = (0.002, 80.0) if precond == "edm" else (0.02, 100.0)
    c.noise.P_mean, c.noise.P_std = -1.2, 1.2
    c.noise.beta_min, c.noise.beta_max, c.noise.eps = 0.1, 20.0, 1e-5
    c.training.loss = {"edm": "edm", "vp": "edm_vp", "ve": "edm_ve"}[precond]
    c.training.batch_size, c.training.n_iters = 512, 200 * MIMG  # 200 Mimg
    c.training.ema_halflife_kimg, c.training.ema_rampup_ratio = 500.0, 0.05
    c.training.snapshot_freq = 50 * MIMG // 10  # EDM's --snap=50 ticks of 100 kimg
    c.optim.lr, c.optim.beta1, c.optim.beta2, c.optim.eps, c.optim.warmup = 1e-3, 0.9, 0.999, 1e-8, 10 * MIMG
    c.sampling.method, c.sampling.init, c.sampling.n_steps, c.sampling.rho = "heun", "gaussian", 18, 7.0
    return c
