"""Checkpoint files: atomic writes, training checkpoints, RNG states and the config stored with them.

Nothing here can execute code from a file: training checkpoints are `torch.save`d dicts of tensors
and plain values, read back with `torch.load(weights_only=True)`, and written atomically (temporary
file, fsync, rename). Turning a file into a network is `scorelib.sharing`'s (it needs a config).
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def weights_source(path: str | Path, workdir: str | Path | None) -> Path | None:
    """Where a run's weights come from: `path` when given, else `workdir` when WORKDIR/checkpoints holds
    checkpoints, else None."""
    if path:
        return Path(path)
    if workdir is not None and list_checkpoints(Path(workdir) / "checkpoints"):
        return Path(workdir)
    return None


def unknown_network(source: str | Path, error: Exception, whose: str = "its") -> CheckpointError:
    """The error for a checkpoint whose config (or the config given for it) builds no known network."""
    return CheckpointError(f"{source}: {whose} config does not describe a known network ({error})")


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
    """Restore the RNG states `rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    legacy = (n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"])
    np.random.set_state(legacy)  # noqa: NPY002 (restoring the saved global state)
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# The config stored with a checkpoint
# ---------------------------------------------------------------------------------------------


def config_to_json(config: Any) -> str:
    """A config (anything with `to_dict()`) as the JSON stored in checkpoints and beside shared weights."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def stored_config_text(source: str | Path) -> tuple[str, Path] | None:
    """(JSON text, file) of the config stored with the newest readable checkpoint at `source` (a
    workdir, its checkpoints folder, a .pt, or a .safetensors file with its .json beside it), read
    without loading the weights (memory-mapped); None when there is none."""
    path = Path(source)
    if path.suffix == ".safetensors":
        cfg = path.with_suffix(".json")
        return (cfg.read_text(), cfg) if cfg.is_file() else None
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = [p for _, p in reversed(list_checkpoints(directory))]
    else:
        candidates = [path] if path.is_file() else []
    for p in candidates:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # unreadable: the loader skips it with a warning, or reports it
            continue
        if isinstance(state, dict) and isinstance(state.get("config"), str):
            return state["config"], p
    return None
