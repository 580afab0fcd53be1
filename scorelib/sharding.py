"""Sampling at scale: samples drawn in fixed chunks of indices, shared out over the processes of a
torchrun job, each chunk written to disk as soon as it exists, so a killed run resumes where it stopped.

Reproducibility by index: chunk k holds the samples [k·C, min((k+1)·C, n)), C the chunk size (the
sampler's batch size), and is drawn in one sampler call with a generator seeded `chunk_seed(seed, k)`;
its initial noise, labels and per-step noise come from that generator alone. So sample i depends on
(seed, i, C) and the config only: not on the number of processes, on which process drew it, or on
whether the run was interrupted. Changing C changes the samples (the batch's noise is one stream).

Chunk format: DIR/chunk_<k:06d>.npz with `indices` (int64 [m]), `samples` (float32 [m, ...], model
space) and whatever else the caller stores (e.g. Inception `features` / `logits`), plus `fingerprint`
(a string naming what the samples depend on: config fields and network weights). DIR/manifest.json
holds the same fingerprint; a rerun with another one discards the old chunks. Files are written
atomically (`checkpoint.atomic_write_bytes`), so a chunk file either is complete or does not exist.

Shared out: after the store is checked, every process lists the missing chunks (all see the same
files) and process r draws missing[r::world], so a resumed run stays balanced.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import atomic_write_bytes
from .runtime import Runtime, step_seed
from .utils import format_duration


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
    """The generator seed of chunk k: a function of (seed, k) only (train.step_seed with rank 0)."""
    return step_seed(seed, k, 0)


def barrier(rt: Runtime) -> None:
    """Wait for every process (nothing to do in a single-process run)."""
    if rt.world > 1:
        dist.barrier()


def reduce_sum(values: list[torch.Tensor], rt: Runtime) -> list[torch.Tensor]:
    """Element-wise sums of the tensors over all processes, on every process (float64 recommended)."""
    if rt.world == 1:
        return values
    out = []
    for v in values:
        t = v.to(rt.device).clone()
        dist.all_reduce(t)
        out.append(t.cpu())
    return out


class ChunkStore:
    """The chunk files of one sampling job in `directory`, valid for one `fingerprint`."""

    def __init__(self, directory: str | Path, fingerprint: str):
        self.directory, self.fingerprint = Path(directory), fingerprint

    def path(self, c: Chunk) -> Path:
        return self.directory / f"chunk_{c.k:06d}.npz"

    def prepare(self, rt: Runtime) -> int:
        """On rank 0: discard chunks of another fingerprint and write the manifest; then every process
        waits for it. Returns the number of chunk files removed."""
        removed = 0
        if rt.is_main:
            manifest = self.directory / "manifest.json"
            try:
                old = json.loads(manifest.read_text()).get("fingerprint")
            except (OSError, ValueError):
                old = None
            if old != self.fingerprint:
                for p in sorted(self.directory.glob("chunk_*.npz")):
                    p.unlink()
                    removed += 1
                text = json.dumps({"fingerprint": self.fingerprint}, indent=2) + "\n"
                atomic_write_bytes(manifest, lambda f: f.write(text.encode()))
        barrier(rt)
        return removed

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


def progress_label(desc: str, rt: Runtime) -> str:
    """`desc`, marked as rank 0's share in a multi-process run."""
    return f"{desc} (rank 0 of {rt.world})" if rt.world > 1 else desc


class Progress:
    """Samples done of `total`: a tqdm bar when stderr is a terminal, else a plain line on stderr
    every `every` of the total, with samples/s and the ETA. Disabled: silent."""

    def __init__(self, total: int, desc: str, enabled: bool = True, every: float = 0.05, unit: str = "samples"):
        self.total, self.desc, self.every, self.unit = total, desc, every, unit
        self.enabled = enabled and total > 0
        self.done, self.next_report, self.t0 = 0, every * total, time.perf_counter()
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s"), dynamic_ncols=True)

    def line(self) -> str:
        """`desc: done/total samples (p%), r samples/s, ETA h:mm:ss` (with `unit` for "samples")."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%), "
                f"{rate:.3g} {self.unit}/s, ETA {format_duration(eta)}")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (self.done >= self.next_report or self.done >= self.total):
            print(self.line(), file=sys.stderr, flush=True)
            while self.next_report <= self.done:
                self.next_report += self.every * self.total

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class DrawReport:
    """What `draw_missing` did: chunks in all, finished before this run, drawn by this process."""

    total: int
    found: int
    drawn_here: int


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
