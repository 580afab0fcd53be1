"""Optional peer libraries for side-by-side measurements (the `peers` extra): k-diffusion's samplers
and diffusers' schedulers. Each loader returns None when the peer is not installed, and is cached."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from pathlib import Path

_TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


@functools.cache
def k_diffusion_sampling() -> types.ModuleType | None:
    """`k_diffusion.sampling`, imported without the package's heavy __init__ (which pulls in
    torchvision, scikit-image, wandb, clean-fid, ...): only the sampling module and its `utils` are
    loaded. While they import, a placeholder stands in for torchvision's image transforms when
    torchvision is missing (sampling never calls them), and a bare `k_diffusion` package holds the
    two modules; both placeholders are removed from `sys.modules` again afterwards."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    try:
        spec = importlib.util.find_spec("k_diffusion")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    added: list[str] = []
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # torchvision missing or broken: provide the name k_diffusion.utils imports
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        for name, module in zip(_TORCHVISION, (tv, tv.transforms, tv.transforms.functional), strict=True):
            if name not in sys.modules:
                sys.modules[name] = module
                added.append(name)
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [str(Path(next(iter(spec.submodule_search_locations))))]
        sys.modules["k_diffusion"] = pkg
        added.append("k_diffusion")
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        return None
    finally:
        for name in added:
            sys.modules.pop(name, None)


@functools.cache
def diffusers_schedulers() -> types.ModuleType | None:
    """`diffusers.schedulers`, or None."""
    try:
        return importlib.import_module("diffusers.schedulers")
    except ImportError:
        return None
