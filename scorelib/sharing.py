"""Models as files: `save` / `load` (safetensors weights + the JSON config beside them), and reading
weights from any checkpoint scorelib knows into a network: its own training checkpoints and
workdirs, shared models, and the reference implementations' published files (`scorelib.formats`).

Nothing here can execute code from a file: safetensors holds tensors only, and every `torch.save` file
is read with `weights_only=True` (docs/design.md §6).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from ml_collections import ConfigDict
from safetensors.torch import save_file
from torch import nn

from . import formats
from .builder import Experiment, experiment
from .builder.configs import config_from_json, snapshot_config
from .builder.declare import ConfigError
from .builder.fields import base
from .builder.networks import NETWORKS
from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    config_to_json,
    unknown_network,
)
from .formats import Weights
from .presets import resolve_config
from .releases import stem_preset

# Example configs to name in errors when a published checkpoint comes without one
FORMAT_CONFIGS = {"ncsn": "ncsn_cifar", "ncsnv2": "ncsnv2_cifar", "score_sde": "ncsnpp_cifar or ddpmpp_cifar",
                  "ddim": "ddpm_cifar", "openai": "openai:cifar10_uncond (see scorelib.presets.OPENAI_PRESETS)",
                  "openai_classifier": "openai:64x64_classifier"}


# ---------------------------------------------------------------------------------------------
# Reading weights
# ---------------------------------------------------------------------------------------------


def _check_format(fmt: str, accepts: tuple[str, ...], family: str, path: Path) -> None:
    """The network table says whether a network reads a published layout."""
    if fmt not in accepts:
        fits = [k for k, e in NETWORKS.items() if fmt in e.formats] or ["classifier"]
        raise CheckpointError(f"{path} holds a {fmt} network, but the config describes {family!r} "
                              f"(one of {', '.join(fits)} fits)")


def load_weights(net: nn.Module, path: str | Path, formats_: tuple[str, ...] = (), family: str = "",
                 variant: str = "base", ema: bool = True) -> nn.Module:
    """`net` (a new network, e.g. `Experiment.network()`) with the weights of the checkpoint at `path` (any
    format of `read_checkpoint`), in eval mode; a published file must be of a layout in `formats_` (the
    network table's `formats` of `family`; NCSN depth `variant`). A CheckpointError names the file."""
    return _fit(net, formats.read_checkpoint(path, ema), formats_, family, variant, ema)


def _fit(net: nn.Module, read: tuple[Any, str | None, Path], formats_: tuple[str, ...], family: str, variant: str,
         ema: bool) -> nn.Module:
    """`net` with the weights `formats.read_checkpoint` gave (weights, stored config or None, file)."""
    weights, stored, source = read
    if stored is None:
        fmt = formats.detect_format(weights, source)
        _check_format(fmt, formats_, family, source)
        formats.fit_weights(net, formats.published_weights(fmt, weights, net, variant, ema, source), source, fmt)
    else:
        formats.fit_state(net, weights, source)
    return net.eval()


def load_experiment_weights(exp: Experiment, net: nn.Module, path: str | Path, ema: bool = True) -> nn.Module:
    """`load_weights` for a new network of the experiment."""
    return load_weights(net, path, exp.formats, exp.family, exp.f.model.variant, ema)


# ---------------------------------------------------------------------------------------------
# Networks with their configs
# ---------------------------------------------------------------------------------------------


def _published_config(path: Path, state: Any, config: Any) -> ConfigDict:
    """The config of a published checkpoint: `config` resolved (a ConfigDict, a configs/ name, a path or
    "openai:<preset>"), or the OpenAI preset its file name tells; an EDM / EDM2 snapshot's network comes
    from its records, over `config` (default: the defaults)."""
    fmt = formats.detect_format(state, path)
    if fmt in ("edm", "edm2"):
        return snapshot_config(path, resolve_config(config) if config is not None else base())
    if config is None:
        preset = stem_preset(path) if fmt.startswith("openai") else None
        if preset is None:
            raise CheckpointError(f"{path} is a {fmt} checkpoint, which carries no architecture: pass a config "
                                  f"(e.g. {FORMAT_CONFIGS[fmt]})")
        config = f"openai:{preset}"
    return resolve_config(config)


def _network_experiment(config: Any, source: Path, whose: str) -> Experiment:
    try:
        return experiment(config, mode="network")
    except (ConfigError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise unknown_network(source, e, whose) from e


def load_network(path: str | Path, ema: bool = True, config: Any = None) -> tuple[nn.Module, ConfigDict, Experiment]:
    """(network, config, its experiment) from a .safetensors file (config in the .json beside it), a training
    checkpoint (.pt; EMA weights when present and `ema`), a workdir (its newest checkpoint), or a
    published checkpoint of the reference code (scorelib.formats: ncsn, ncsnv2, score_sde, ddim,
    improved-/guided-diffusion), whose architecture and noise process `config` gives (a ConfigDict, a
    configs/ name, a path or "openai:<preset>"; the released OpenAI files are also known by name)."""
    read = weights, stored, source = formats.read_checkpoint(path, ema)  # the file is read once
    if stored is None:
        config = _published_config(source, weights, config)
    else:
        config = config_from_json(stored, source.with_suffix(".json") if source.suffix == ".safetensors" else source)
    exp = _network_experiment(config, source, "the" if stored is None else "its")
    return _fit(exp.network(), read, exp.formats, exp.family, exp.f.model.variant, ema), config, exp


def load(path: str | Path, config: Any = None, ema: bool = True) -> nn.Module:
    """A ready σ-space model (eval mode) from `save`'s format, a training checkpoint, a workdir, a
    published checkpoint of the reference code (see `load_network`) or a diffusers folder (through
    diffusers): the network in its one conditioning wrapper (`scorelib.precond`). A noisy classifier comes
    back as a σ-space classifier(x, sigma) -> logits [B, K]. Never executes code; errors name the file.
    The config travels with the model (`model.scorelib_config`), so `save(model, path)` exports it."""
    if Path(path).is_dir() and formats.is_diffusers_folder(Path(path)):
        return formats.load_diffusers(Path(path))
    net, config, exp = load_network(path, ema, config)
    model = exp.wrap(net).eval()
    model.scorelib_config = config
    return model


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _network_state(model: nn.Module, config: ConfigDict) -> Weights:
    """The state_dict of the network inside `model` (the network itself or a σ-space wrapper of it)."""
    with torch.device("meta"):
        want = set(experiment(config, mode="network").network().state_dict())
    for module in model.modules():
        sd = module.state_dict()
        if set(sd) == want:
            return sd
    raise CheckpointError("the model's parameters do not match the network the config describes")


def save(model: nn.Module, path: str | Path, config: ConfigDict | None = None) -> None:
    """Share a model: safetensors weights at `path` (…/name.safetensors) and the JSON config beside
    them (…/name.json). `model` is the network or its σ-space score model; `config` defaults to the one
    `load` attached (so any loaded model, published checkpoints included, exports as it is)."""
    if config is None:
        config = getattr(model, "scorelib_config", None)
        if config is None:
            raise CheckpointError("save needs the model's config (only models from scorelib.load carry one)")
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    state = {k: v.detach().contiguous().clone() for k, v in _network_state(model, config).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "scorelib"})
    os.replace(tmp, path)
    atomic_write_bytes(path.with_suffix(".json"), lambda f: f.write(config_to_json(config).encode()))
