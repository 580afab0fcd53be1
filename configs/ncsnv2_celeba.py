"""NCSNv2 on CelebA 64×64 from a folder of images (Song & Ermon 2020): centre crop 140, resize 64,
σ 90 → 0.01 over 500 levels, ngf 128, Adam 1e-4, batch 128, 210k iterations, EMA 0.999;
annealed Langevin 5 steps per level at 3.3e-6 with final denoising (configs/celeba.yml).
Put the aligned images (img_align_celeba/*.jpg) under data.root."""

from configs.ncsnv2_cifar import get_config as ncsnv2_cifar


def get_config():
    c = ncsnv2_cifar()
    c.data.dataset = "folder"
    c.data.root = "data/celeba/img_align_celeba"
    c.data.image_size, c.data.crop = 64, 140
    c.noise.sigma_max, c.noise.num_scales = 90.0, 500
    c.training.n_iters = 210_001
    c.sampling.step_lr = 3.3e-6
    return c
