"""Class-conditional ADM on CIFAR-10 (Dhariwal & Nichol 2021 architecture at 32 px): 128 channels,
mult (1,2,2,2), 3 res blocks, attention at 16 and 8 with 64-channel heads, BigGAN up/down blocks,
AdaGN, learned variance, a null label with 10% label dropout (classifier-free guidance); cosine
T = 1000, hybrid loss; Adam 1e-4, batch 128, EMA 0.9999. The noisy classifier (`classifier.*`) is the
U-Net encoder with attention pooling; sample with --config.sampling.guidance=cfg (or classifier,
with --config.classifier.workdir set to a run trained with --config.training.target=classifier)."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "cifar10"
    c.data.centered = True
    c.data.num_classes = 10
    c.model.name = "adm"
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 128, (1, 2, 2, 2), 3
    c.model.attn_resolutions, c.model.num_head_channels = (16, 8), 64
    c.model.resblock_updown, c.model.use_scale_shift_norm, c.model.learn_sigma = True, True, True
    c.model.dropout, c.model.class_dropout = 0.1, 0.1
    c.model.ema_rate = 0.9999
    c.noise.kind = "ddpm"
    c.noise.beta_schedule, c.noise.num_scales = "cosine", 1000
    c.training.loss = "hybrid"
    c.training.n_iters = 500_000
    c.optim.lr = 1e-4
    c.sampling.method = "ddim"
    c.sampling.init = "gaussian"
    c.sampling.n_steps = 50
    c.sampling.guidance, c.sampling.guidance_scale = "cfg", 1.0
    return c
