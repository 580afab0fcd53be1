"""Checkpoints and shared weights. Nothing here can execute code from a file:

- training checkpoints are `torch.save`d dicts of tensors and plain values, read back with
  `torch.load(weights_only=True)`, written atomically (temporary file, fsync, rename);
- shared models are safetensors weights with the JSON config beside them (`save` / `load`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from ml_collections import ConfigDict
from torch import nn

CHECKPOINT_RE = re.compile(r"checkpoint_(\d+)\.pt$")


class CheckpointError(Exception):
    """A file that is not a usable checkpoint; the message names it."""


# ---------------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint (a dict of tensors, state_dicts and plain values) atomically."""
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint with `weights_only=True`: a file that would run code is refused."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # truncated zip, foreign pickle, code-carrying pickle, ...
        raise CheckpointError(f"{path} is not a readable scorelib checkpoint: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a scorelib checkpoint (no 'model' entry)")
    return state


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in `directory`, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CHECKPOINT_RE.search(p.name))]
    return sorted(found)


def load_newest(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest readable checkpoint in `directory`; unreadable newer ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    return None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, path in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process, as tensors and plain values (weights_only-loadable)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state is saved)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached), "kind": str(kind)},
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    legacy = (n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"])
    np.random.set_state(legacy)  # noqa: NPY002 (restoring the saved global state)
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Shared models: safetensors + JSON config
# ---------------------------------------------------------------------------------------------


def config_to_json(config: ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def config_from_json(text: str, source: str | Path) -> ConfigDict:
    """A stored config, laid over the current defaults (fields added since it was written get defaults)."""
    from .defaults import merged

    try:
        stored = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{source}: the config is not valid JSON ({e})") from e
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: the config is not a JSON object")
    return merged(stored)


def _network_state(model: nn.Module, config: ConfigDict) -> dict[str, torch.Tensor]:
    """The state_dict of the network inside `model` (the network itself or a σ-space wrapper of it)."""
    from . import build

    with torch.device("meta"):
        want = set(build.create_network(config).state_dict())
    for module in model.modules():
        sd = module.state_dict()
        if set(sd) == want:
            return sd
    raise CheckpointError("the model's parameters do not match the network the config describes")


def save(model: nn.Module, path: str | Path, config: ConfigDict | None = None) -> None:
    """Share a model: safetensors weights at `path` (…/name.safetensors) and the JSON config beside
    them (…/name.json). `model` is the network or its σ-space score model; `config` defaults to the one
    `load` attached (so any loaded model, published checkpoints included, exports as it is)."""
    from safetensors.torch import save_file

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


def _load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        def fmt(keys: set[str]) -> str:
            keys_sorted = sorted(keys)
            return ", ".join(keys_sorted[:5]) + (f" (+{len(keys_sorted) - 5} more)" if len(keys_sorted) > 5 else "")

        parts = ([f"missing {fmt(missing)}"] if missing else []) + ([f"unexpected {fmt(unexpected)}"] if unexpected
                                                                    else [])
        raise CheckpointError(f"{source}: the weights do not match the config's network: {'; '.join(parts)}")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: the weights do not match the config's network: "
                              f"{str(e).splitlines()[-1].strip()}") from e


def load_network(path: str | Path, ema: bool = True, config: Any = None) -> tuple[nn.Module, ConfigDict]:
    """(network, config) from a .safetensors file (config in the .json beside it), a training
    checkpoint (.pt; EMA weights when present and `ema`), a workdir (its newest checkpoint), or a
    published checkpoint of the reference code (scorelib.published: ncsn, ncsnv2, score_sde, ddim,
    improved-/guided-diffusion), whose architecture and noise process `config` gives (a ConfigDict, a
    configs/ name, a path or "openai:<preset>"; the released OpenAI files are also known by name)."""
    from . import build, published

    path = Path(path)
    if path.is_dir() and published.is_diffusers_folder(path):
        raise CheckpointError(f"{path} is a diffusers folder: scorelib.load gives its score model, but it has "
                              f"no scorelib network to train, sample with the CLI or export")
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        ckpts = list_checkpoints(directory)
        if not ckpts:
            raise CheckpointError(f"no checkpoint_*.pt in {directory}")
        state = load_newest(directory)
        if state is None:
            raise CheckpointError(f"no readable checkpoint in {directory}")
        source = ckpts[-1][1]
        weights = state["ema"] if ema and state.get("ema") else state["model"]
        config = config_from_json(state["config"], source)
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        cfg_path = path.with_suffix(".json")
        if not path.exists():
            raise CheckpointError(f"{path} does not exist")
        if not cfg_path.exists():
            raise CheckpointError(f"{path}: its config {cfg_path} is missing")
        try:
            weights = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
        config = config_from_json(cfg_path.read_text(), cfg_path)
        source = path
    else:
        state = published.read_torch_file(path)
        if not (isinstance(state, dict) and "model" in state and "config" in state):
            return _load_published(path, state, ema, config)
        weights = state["ema"] if ema and state.get("ema") else state["model"]
        config = config_from_json(state["config"], path)
        source = path
    try:
        net = build.create_network(config)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: its config does not describe a known network ({e})") from e
    _load_weights(net, weights, source)
    return net.eval(), config


def _load_published(path: Path, state: Any, ema: bool, config: Any) -> tuple[nn.Module, ConfigDict]:
    """A reference implementation's checkpoint (`state`, as read) in the network `config` describes."""
    from . import build, published

    fmt = published.detect_format(state, path)
    if config is None:
        preset = published.stem_preset(path) if fmt.startswith("openai") else None
        if preset is None:
            raise CheckpointError(f"{path} is a {fmt} checkpoint, which carries no architecture: pass a config "
                                  f"(e.g. {published.FORMAT_CONFIGS[fmt]})")
        config = f"openai:{preset}"
    config = published.resolve_config(config)
    try:
        family = build.network_family(config)
        if family not in published.FORMAT_MODELS[fmt]:
            raise CheckpointError(f"{path} holds a {fmt} network, but the config describes {family!r} "
                                  f"(one of {', '.join(published.FORMAT_MODELS[fmt])} fits)")
        net = build.create_network(config)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the config does not describe a known network ({e})") from e
    weights = published.published_weights(fmt, state, net, build.network_variant(config), ema, path)
    published.fit_weights(net, weights, path, fmt)
    return net.eval(), config


def load(path: str | Path, config: Any = None, ema: bool = True) -> nn.Module:
    """A ready σ-space model (eval mode) from `save`'s format, a training checkpoint, a workdir, a
    published checkpoint of the reference code (see `load_network`) or a diffusers folder (through
    diffusers). A noisy classifier comes back as a σ-space classifier(x, sigma) -> logits [B, K].
    Never executes code; errors name the file. The config travels with the model
    (`model.scorelib_config`), so `save(model, path)` exports it."""
    from . import build, published

    if Path(path).is_dir() and published.is_diffusers_folder(Path(path)):
        return published.load_diffusers(Path(path))
    net, config = load_network(path, ema, config)
    model = build.create_sigma_model(config, net).eval()
    model.scorelib_config = config
    return model
