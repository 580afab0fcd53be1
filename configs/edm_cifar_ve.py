"""EDM's NCSN++ on CIFAR-10 (NVlabs/edm README's table, `--cond=0 --arch=ncsnpp`): as `edm_cifar` with EDM's
NCSN++ (SongUNet with Fourier noise features, a residual encoder and the [1, 3, 3, 1] resampling filter).
`--config=edm_cifar_ve:vp` / `:ve` take EDM's VP / VE preconditionings and losses instead."""

from configs.edm_cifar import get_config as edm_cifar


def get_config(precond: str = "edm"):
    c = edm_cifar(precond)
    c.model.name = "edm_ncsnpp"
    return c
