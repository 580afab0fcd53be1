"""Optional peer libraries for side-by-side measurements (the `peers` extra): k-diffusion's samplers
and diffusers' schedulers. Each loader returns None when the peer is not installed, and is cached."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from pathlib import Path

# Optional packages k-diffusion's modules import at module level but that neither its samplers nor
# ImageDenoiserModelV1 / Denoiser call: torchvision's transforms (utils.py's image conversion), dctorch and
# einops (layers.py's DCT loss weighting). Each group stands in as an empty placeholder where it is missing.
_PLACEHOLDERS = (("torchvision", "torchvision.transforms", "torchvision.transforms.functional"),
                 ("dctorch", "dctorch.functional"), ("einops",))


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{name} is a placeholder (the package is not installed)")

    return call


def _missing(name: str) -> bool:
    """Whether module `name` cannot be imported (not installed, or broken: a torchvision built for another
    torch fails on import)."""
    try:
        importlib.import_module(name)
    except Exception:
        return True
    return False


def _import_k_diffusion(*names: str) -> tuple[types.ModuleType, ...] | None:
    """The k-diffusion modules `names` (e.g. "k_diffusion.sampling"), imported without the package's heavy
    __init__s (which pull in torchvision, scikit-image, wandb, clean-fid, ...): bare packages stand in for
    `k_diffusion` and its subpackages, and `_PLACEHOLDERS` for optional packages that are missing, while
    the modules import; all of them are removed from `sys.modules` afterwards. None when k-diffusion or
    something the modules need is missing."""
    if all(n in sys.modules for n in names):
        return tuple(sys.modules[n] for n in names)
    try:
        spec = importlib.util.find_spec("k_diffusion")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    added: list[str] = []

    def place(name: str, module: types.ModuleType) -> None:
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        sys.modules[name] = module
        added.append(name)

    packages = sorted({n.rsplit(".", k)[0] for n in names for k in range(1, n.count(".") + 1)})
    for name in packages:  # "k_diffusion", "k_diffusion.models", ...
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            place(name, pkg)
    for group in _PLACEHOLDERS:
        if _missing(group[-1]):
            for name in group:
                module = types.ModuleType(name)
                for attr in ("rearrange", "repeat") if name == "einops" else ():
                    setattr(module, attr, _unavailable(f"{name}.{attr}"))
                place(name, module)
    try:
        return tuple(importlib.import_module(n) for n in names)
    except ImportError:
        return None
    finally:
        for name in reversed(added):
            sys.modules.pop(name, None)


@functools.cache
def k_diffusion_sampling() -> types.ModuleType | None:
    """`k_diffusion.sampling` (k-diffusion's samplers), or None."""
    found = _import_k_diffusion("k_diffusion.sampling")
    return None if found is None else found[0]


@functools.cache
def k_diffusion_image_v1() -> tuple[types.ModuleType, types.ModuleType] | None:
    """(`k_diffusion.layers`, `k_diffusion.models.image_v1`): its `Denoiser` and `ImageDenoiserModelV1`, or None."""
    found = _import_k_diffusion("k_diffusion.layers", "k_diffusion.models.image_v1")
    return None if found is None else (found[0], found[1])


@functools.cache
def diffusers_schedulers() -> types.ModuleType | None:
    """`diffusers.schedulers`, or None."""
    try:
        return importlib.import_module("diffusers.schedulers")
    except ImportError:
        return None
