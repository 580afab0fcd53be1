"""Checkpoint files: atomic writes, training checkpoints, RNG states and the config stored with them.

Nothing here can execute code from a file: training checkpoints are `torch.save`d dicts of tensors
and plain values, read back with `torch.load(weights_only=True)`, and written atomically (temporary
file, fsync, rename). Turning a file into a network is `scorelib.sharing`'s (it needs a config).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickletools
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .ema import EMASnapshot

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


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON (floats for numpy / tensor scalars), atomically."""
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, default=float) + "\n").encode()))


def weights_digest(*nets: nn.Module | None) -> str:
    """SHA-256 of the networks' state dicts (names, dtypes, shapes and bytes): which weights drew a sample."""
    h = hashlib.sha256()
    for net in nets:
        if net is None:
            continue
        for name, v in net.state_dict().items():
            t = v.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint (a dict of tensors, state_dicts and plain values) atomically."""
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def _foreign_global(path: Path) -> str | None:
    """The first global (module.name) a pickle file names outside torch and collections, read opcode by opcode
    (`pickletools.genops`: nothing is executed); None when there is none or the file cannot be parsed."""
    strings: list[str] = []
    with open(path, "rb") as f:
        for _ in range(4):  # torch's legacy format: magic number, protocol, system info, then the object
            try:
                for op, arg, _ in pickletools.genops(f):
                    if isinstance(arg, str) and "UNICODE" in op.name:
                        strings.append(arg)
                    name = (arg.replace(" ", ".") if op.name in ("GLOBAL", "INST") else
                            ".".join(strings[-2:]) if op.name == "STACK_GLOBAL" and len(strings) > 1 else None)
                    if name and not name.startswith(("torch.", "collections.")):
                        return name
            except Exception:  # the end of the file, or bytes that are no pickle
                return None
    return None


def _what_it_is(path: Path, error: BaseException) -> str:
    """Why `torch.load` could not read `path`, told from the file's bytes (torch's own message is never
    quoted: it advises loading with code execution enabled)."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes: a write that never finished?)"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip archive
        if not zipfile.is_zipfile(path):
            return f"is truncated ({size} bytes, a zip archive without its end: a copy or write cut short)"
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return "is a zip archive, not a PyTorch checkpoint (no data.pkl inside)"
        return "is a damaged PyTorch checkpoint (its zip archive is complete, its contents are not readable)"
    if head[:1] == b"\x80":  # a pickle: torch's legacy format, or plain pickle.dump
        if isinstance(error, EOFError) or "truncated" in str(error):
            return f"is truncated ({size} bytes, a pickle that ends early)"
        if named := _foreign_global(path):
            return (f"holds pickled Python objects ({named}) besides tensors and plain values; scorelib never "
                    "unpickles objects that could run code (save a state_dict instead)")
        return ("is a pickle but not a PyTorch checkpoint (scorelib reads torch.save files of tensors and plain "
                "values, and never unpickles objects that could run code)")
    if len(head) >= 10 and head[8:10] == b'{"':
        return "is a safetensors file (name it NAME.safetensors, with its config NAME.json beside it)"
    text = head.decode("utf-8", errors="replace")
    text = text[:-1] if len(head) == 4096 else text  # the last character may be cut in two
    if text.strip() and all(c.isprintable() or c.isspace() for c in text):
        return f"is a text file, not a PyTorch checkpoint (it starts with {text.strip().splitlines()[0][:40]!r})"
    return f"is not a PyTorch checkpoint (neither a zip archive nor a pickle; its first bytes are {head[:4].hex(' ')})"


def read_torch(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """The object in a `torch.save` file, read with `torch.load(weights_only=True)` (nothing in the file can
    run code; `mmap`: memory-mapped, for zip-format files). A file that cannot be read is one CheckpointError
    line naming it and saying what it is: missing, a directory, empty, truncated, a text file, not a PyTorch
    checkpoint, or pickled objects besides tensors and plain values."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        with warnings.catch_warnings():  # torch's unpickler warns about pickle protocols: not the user's concern
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except PermissionError as e:
        raise CheckpointError(f"{path} cannot be read (permission denied)") from e
    except Exception as e:  # truncated, a foreign file, pickled objects: told from the bytes, not torch's text
        raise CheckpointError(f"{path} {_what_it_is(path, e)}") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint with `weights_only=True`: a file that would run code is refused, and any
    unreadable file is one CheckpointError line naming it (`read_torch`)."""
    path = Path(path)
    state = read_torch(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a scorelib checkpoint (no 'model' entry)")
    return state


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step:08d}.pt"


def phema_path(workdir: str | Path, step: int) -> Path:
    """WORKDIR/phema/phema_<step>.pt: the power-EMA snapshots of one training step (never pruned)."""
    return Path(workdir) / "phema" / f"phema_{step:08d}.pt"


def list_phema(workdir: str | Path) -> list[Path]:
    """The power-EMA snapshot files of a run (`phema_path`), oldest first."""
    return sorted(phema_path(workdir, 0).parent.glob("phema_*.pt"))


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


class CheckpointSkipped(UserWarning):
    """An unreadable checkpoint was skipped for an older readable one; the message names both."""


def load_newest(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest readable checkpoint in `directory`, None when it holds none. Unreadable newer ones are
    skipped with a `CheckpointSkipped` warning naming the file and the one used instead; when none is
    readable, a CheckpointError names the newest and what it is (a run never starts over silently)."""
    found = list_checkpoints(directory)
    errors: list[tuple[Path, CheckpointError]] = []
    for step, path in reversed(found):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as e:
            errors.append((path, e))
            continue
        for bad, e in errors:
            warnings.warn(f"skipping {bad}, which {str(e).removeprefix(f'{bad} ')}; using {path.name} (step {step})",
                          CheckpointSkipped, stacklevel=2)
        return state
    if not errors:
        return None
    raise CheckpointError(none_readable(errors[0][1], len(found)))


def none_readable(newest: CheckpointError, found: int) -> str:
    """The line for a folder of `found` checkpoints none of which is readable: the newest's error, and why no
    other one is used."""
    return f"{newest}, and {'it is the only checkpoint there' if found == 1 else 'no older one is readable'}"


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
            state = read_torch(p, mmap=True)
        except CheckpointError:  # unreadable: the loader skips it with a warning, or reports it
            continue
        if isinstance(state, dict) and isinstance(state.get("config"), str):
            return state["config"], p
    return None


def phema_snapshots(workdir: Path) -> list[EMASnapshot]:
    """The power-EMA snapshots of a run (`list_phema`), each loaded only when read."""
    out = []
    for path in list_phema(workdir):
        for i, snap in enumerate(load_phema_file(path)["snapshots"]):
            out.append(EMASnapshot(int(snap["step"]), float(snap["gamma"]),
                                   lambda path=path, i=i: load_phema_file(path)["snapshots"][i]["state_dict"]))
    return out


def load_phema_file(path: Path) -> dict[str, Any]:
    """One snapshot file, memory-mapped (`read_torch`: one CheckpointError line names it)."""
    return read_torch(path, mmap=True)
