"""Optional peer libraries for side-by-side measurements (the `peers` extra): k-diffusion's samplers
and diffusers' schedulers. Each loader returns None when the peer is not installed."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


def k_diffusion_sampling():
    """`k_diffusion.sampling`, imported without the package's heavy __init__ (which pulls in
    torchvision, wandb, clean-fid, ...): only the sampling module and its `utils` are loaded, with a
    placeholder for torchvision's image transforms, which sampling never calls."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        return None
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # torchvision missing or broken: provide the name utils imports
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                            "torchvision.transforms.functional": tv.transforms.functional})
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(Path(next(iter(spec.submodule_search_locations))))]
    sys.modules.setdefault("k_diffusion", pkg)
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        return None


def diffusers_schedulers():
    """`diffusers.schedulers`, or None."""
    try:
        return importlib.import_module("diffusers.schedulers")
    except ImportError:
        return None
