"""Work in chunks, at scale: samples drawn in fixed chunks of indices, shared out over the processes of a
torchrun job, each chunk written to disk as soon as it exists, so a killed run resumes where it stopped
and no finished work is ever thrown away.

Reproducibility by index: chunk k holds the samples [k·C, min((k+1)·C, n)), C the chunk size (the
sampler's batch size), and is drawn in one sampler call with a generator seeded `chunk_seed(seed, k)`;
its initial noise, labels and per-step noise come from that generator alone. So sample i depends on
(seed, i, C) and the config only: not on the number of processes, on which process drew it, or on
whether the run was interrupted. Changing C changes the samples (the batch's noise is one stream).

One store per fingerprint: the chunks of one setting (config fields a sample depends on, the weights'
digest, seed, chunk size, device type) live in their own directory, named by the setting, with
manifest.json saying what they hold; a run with other settings gets another directory and leaves this
one alone. A chunk file is DIR/chunk_<k:06d>.npz with `indices` (int64 [m]), `samples` (float32 [m, ...],
model space), whatever else the caller stores (e.g. Inception `features` / `logits`) and `fingerprint`.
Files are written atomically (`checkpoint.atomic_write_bytes`), so a chunk file is complete or absent.

Shared out: every process lists the missing chunks (all see the same files) and process r draws
missing[r::world], so a resumed run stays balanced.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write_bytes, atomic_write_json
from .runtime import Progress, Runtime, barrier, progress_label, step_seed


@dataclass(frozen=True)
class Chunk:
    """Chunk `k`: the sample indices [start, stop)."""

    k: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def chunks(n: int, size: int) -> list[Chunk]:
    """The chunks [k·size, min((k+1)·size, n)) covering indices 0..n-1."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [Chunk(k, s, min(s + size, n)) for k, s in enumerate(range(0, n, size))]


def chunk_seed(seed: int, k: int) -> int:
    """The generator seed of chunk k: a function of (seed, k) only (runtime.step_seed with rank 0)."""
    return step_seed(seed, k, 0)


class ChunkStore:
    """The chunk files of one setting in `directory`, valid for one `fingerprint` (`describe`: what they
    hold, for manifest.json)."""

    def __init__(self, directory: str | Path, fingerprint: str, describe: str = ""):
        self.directory, self.fingerprint, self.description = Path(directory), fingerprint, describe

    def path(self, c: Chunk) -> Path:
        return self.directory / f"chunk_{c.k:06d}.npz"

    def prepare(self, rt: Runtime) -> None:
        """On rank 0: write the manifest (a directory of another fingerprint is never touched: that is a
        RuntimeError); then every process waits for it."""
        if rt.is_main:
            manifest = self.directory / "manifest.json"
            try:
                old = json.loads(manifest.read_text()).get("fingerprint")
            except (OSError, ValueError):
                old = None
            if old is not None and old != self.fingerprint:
                raise RuntimeError(f"{self.directory} holds samples of another setting; nothing was changed")
            if old is None:
                atomic_write_json(manifest, {"fingerprint": self.fingerprint, "holds": self.description})
        barrier(rt)

    def discard_if_empty(self) -> None:
        """Remove the store when it holds no chunk (only its manifest), and its parent folder when that is
        then empty: a run that failed before its first chunk leaves nothing behind."""
        if self.directory.is_dir() and not any(self.directory.glob("chunk_*.npz")):
            shutil.rmtree(self.directory, ignore_errors=True)
            with contextlib.suppress(OSError):  # not empty: other settings' samples
                self.directory.parent.rmdir()

    def is_complete(self, c: Chunk, keys: Iterable[str] = ("samples",)) -> bool:
        """Whether chunk c's file exists, belongs to this fingerprint, holds exactly its indices and `keys`."""
        try:
            with np.load(self.path(c), allow_pickle=False) as f:
                return (str(f["fingerprint"]) == self.fingerprint and all(k in f.files for k in keys)
                        and np.array_equal(f["indices"], np.arange(c.start, c.stop)))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return False

    def write(self, c: Chunk, arrays: dict[str, np.ndarray]) -> None:
        """Write chunk c's arrays (each [c.size, ...]) with its indices and the fingerprint, atomically."""
        data = {"indices": np.arange(c.start, c.stop, dtype=np.int64), "fingerprint": np.array(self.fingerprint),
                **arrays}
        atomic_write_bytes(self.path(c), lambda f: np.savez(f, **data))

    def read(self, c: Chunk, key: str = "samples") -> np.ndarray:
        """One array of chunk c."""
        with np.load(self.path(c), allow_pickle=False) as f:
            return f[key]

    def iter(self, cs: Iterable[Chunk], key: str = "samples") -> Iterator[np.ndarray]:
        """The `key` arrays of chunks `cs`, in order, one chunk in memory at a time."""
        for c in cs:
            yield self.read(c, key)


@dataclass
class DrawReport:
    """What `draw_missing` did: chunks in all, finished before this run, drawn by this process."""

    total: int
    found: int
    drawn_here: int

    def note(self, world: int) -> str:
        return (f"{self.total - self.found} of {self.total} chunks drawn by {world} process(es), "
                f"{self.found} found finished")


def draw_missing(store: ChunkStore, all_chunks: list[Chunk], rt: Runtime,
                 draw: Callable[[Chunk], dict[str, np.ndarray]], keys: Iterable[str] = ("samples",),
                 desc: str = "sample", progress: bool = True) -> DrawReport:
    """Draw every chunk of `all_chunks` whose file is missing, shared out over the processes, and wait
    until all are written. draw(c) returns chunk c's arrays ([c.size, ...] each, incl. `keys`).

    Progress is shown by rank 0 for its own share (about 1/world of the missing samples)."""
    store.prepare(rt)
    keys = tuple(keys)
    missing = [c for c in all_chunks if not store.is_complete(c, keys)]
    barrier(rt)  # every process listed the same files before any writes a new one
    mine = missing[rt.rank::rt.world]
    bar = Progress(sum(c.size for c in mine), progress_label(desc, rt), enabled=progress and rt.is_main)
    try:
        for c in mine:
            store.write(c, draw(c))
            bar.update(c.size)
    finally:
        bar.close()
    barrier(rt)
    return DrawReport(len(all_chunks), len(all_chunks) - len(missing), len(mine))


def write_npz_streamed(path: str | Path, name: str, parts: Iterable[np.ndarray], shape: tuple[int, ...],
                       dtype: Any = np.float32) -> None:
    """Write an .npz holding one array `name` of `shape` from its leading-axis pieces `parts`, one piece
    in memory at a time (np.load reads it as usual); atomically."""
    dtype = np.dtype(dtype)

    def write(f: Any) -> None:
        count = 0
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_2_0(out, header)
                for p in parts:
                    p = np.ascontiguousarray(p, dtype=dtype)
                    count += p.shape[0]
                    out.write(p.tobytes())
        if count != shape[0]:
            raise ValueError(f"{path}: pieces hold {count} rows, the header says {shape[0]}")

    atomic_write_bytes(Path(path), write)
