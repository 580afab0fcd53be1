"""NCSN on MNIST (Song & Ermon 2019): CondRefineNetDilated ngf 64, 28 px, σ 1 → 0.01 over 10 levels,
Adam 1e-3, batch 128, 200k iterations, no flips; annealed Langevin 100 steps at 2e-5."""

from configs.ncsn_cifar import get_config as ncsn_cifar


def get_config():
    c = ncsn_cifar()
    c.data.dataset = "mnist"
    c.data.image_size, c.data.channels = 28, 1
    c.data.random_flip = False
    c.model.nf = 64
    return c
