"""DDPM++ (continuous VP SDE) on CIFAR-10 (Song et al. 2021, configs/vp/cifar10_ddpmpp_continuous.py):
β 0.1 → 20, 4 res blocks, positional time embedding, no FIR, data in [-1, 1]; loss averaged over
dimensions (reduce_mean=True), t ~ U(1e-5, 1); Adam 2e-4, warm-up 5000, clip 1, EMA 0.9999, batch 128,
1.3M iterations; PC sampling with Euler–Maruyama and no corrector on score_sde's grid of 1000 times
uniform from 1 to 1e-3, ending with the Tweedie step; likelihoods from t = 1e-5."""

from configs.default import base


def get_config():
    c = base()
    c.data.dataset = "cifar10"
    c.data.centered = True
    c.model.name = "ddpmpp"
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 128, (1, 2, 2, 2), 4
    c.model.attn_resolutions, c.model.dropout = (16,), 0.1
    c.model.fir, c.model.progressive_input, c.model.embedding_type = False, "none", "positional"
    c.model.ema_rate = 0.9999
    c.noise.kind = "vp"
    c.noise.beta_min, c.noise.beta_max, c.noise.num_scales = 0.1, 20.0, 1000
    c.noise.eps, c.noise.sampling_eps = 1e-5, 1e-3
    c.training.n_iters = 1_300_001
    c.training.reduce_mean = True
    c.optim.lr, c.optim.warmup, c.optim.grad_clip = 2e-4, 5000, 1.0
    c.sampling.method = "pc"
    c.sampling.predictor, c.sampling.corrector = "euler_maruyama", "none"
    c.sampling.init = "gaussian"
    c.sampling.n_steps = 1000
    return c
