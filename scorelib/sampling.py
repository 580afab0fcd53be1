"""Sampling at scale: samples drawn in fixed chunks of indices, shared out over the processes of a
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
import hashlib
import json
import math
import shutil
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
from torch import Tensor, nn
from tqdm import tqdm

from .builder import Experiment
from .checkpoint import atomic_write_bytes
from .runtime import Runtime, batch_fits, step_seed
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
    """The generator seed of chunk k: a function of (seed, k) only (runtime.step_seed with rank 0)."""
    return step_seed(seed, k, 0)


def barrier(rt: Runtime) -> None:
    """Wait for every process (nothing to do in a single-process run)."""
    if rt.world > 1:
        dist.barrier()


def reduce_sum(values: list[Tensor], rt: Runtime) -> list[Tensor]:
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
                text = json.dumps({"fingerprint": self.fingerprint, "holds": self.description}, indent=2) + "\n"
                atomic_write_bytes(manifest, lambda f: f.write(text.encode()))
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


def progress_label(desc: str, rt: Runtime) -> str:
    """`desc`, marked as rank 0's share in a multi-process run."""
    return f"{desc} (rank 0 of {rt.world})" if rt.world > 1 else desc


class Progress:
    """Work done of `total`: a tqdm bar when stderr is a terminal, else a plain line on stderr every
    `every` of the total, with the rate, the ETA and the note (`set_note`: what is being worked on). Disabled:
    silent."""

    def __init__(self, total: int, desc: str, enabled: bool = True, every: float = 0.05, unit: str = "samples"):
        self.total, self.desc, self.every, self.unit, self.note = total, desc, every, unit, ""
        self.enabled = enabled and total > 0
        self.done, self.next_report, self.t0 = 0, every * total, time.perf_counter()
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s"), dynamic_ncols=True)

    def line(self) -> str:
        """`desc: done/total samples (p%), r samples/s, ETA h:mm:ss[; note]` (with `unit` for "samples")."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%), "
                f"{rate:.3g} {self.unit}/s, ETA {format_duration(eta)}" + (f"; {self.note}" if self.note else ""))

    def set_note(self, note: str) -> None:
        """What the work now done is (shown beside the bar, or at the end of the next plain line)."""
        self.note = note
        if self.bar is not None:
            self.bar.set_postfix_str(note)

    def write(self, message: str) -> None:
        """A message on stderr, above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

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


# ---------------------------------------------------------------------------------------------
# Drawing an experiment's samples
# ---------------------------------------------------------------------------------------------


def sample_images(exp: Experiment, net: nn.Module, n: int, device: torch.device, seed: int = 0,
                  classifier: nn.Module | None = None, batch_size: int | None = None,
                  guide: nn.Module | None = None) -> Tensor:
    """n samples of the experiment's sampler from network `net` (in eval mode), model-space [n, ...], in
    batches of `batch_size` (default sampling.batch_size), all drawn from one generator seeded `seed`.
    Class-conditional models get `exp.guidance`'s labels and guidance; `classifier`: the σ-space guidance
    classifier; `guide`: the σ-space guide of autoguidance."""
    score = exp.wrap(net).eval()
    size = batch_size or exp.f.sampling.batch_size
    g = torch.Generator(device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, size):
            b = min(size, n - start)
            y = exp.guidance.labels(b, g, device)
            out.append(exp.sampler(exp.guidance.guided(score, y, classifier, guide), (b, *exp.data.shape), g, device))
    return torch.cat(out)


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


@dataclass(frozen=True)
class Draw:
    """Where one setting's samples live: its chunk store, and the stem its outputs are named by."""

    store: ChunkStore
    stem: str  # e.g. "ald-111nfe-3fa2c1d9e4"


def setting(exp: Experiment, nets: tuple[nn.Module | None, ...], seed: int, size: int, device: torch.device,
            directory: Path, purpose: str) -> Draw:
    """The chunk store of the samples `nets` draw with the experiment's `purpose` settings ("sample" /
    "eval"), `seed` and chunk `size` on `device`: DIRECTORY/<method>-<nfe>nfe-<fingerprint[:10]>/."""
    fingerprint = hashlib.sha256((exp.fingerprints[purpose] + weights_digest(*nets)
                                  + f"|seed={seed}|chunk={size}|device={device.type}").encode()).hexdigest()
    nfe = exp.sampler.nfe
    stem = f"{exp.sampler.method}-{f'{nfe}nfe' if nfe > 0 else 'adaptive'}-{fingerprint[:10]}"
    describe = (f"{exp.sampler.describe()}; {purpose} chunks of {size}, seed {seed}, weights "
                f"{weights_digest(*nets)[:12]}")
    return Draw(ChunkStore(directory / stem, fingerprint, describe), stem)


def draw(exp: Experiment, nets: tuple[nn.Module, nn.Module | None, nn.Module | None], n: int, seed: int,
         rt: Runtime, directory: Path, purpose: str, extra: Callable[[Tensor], dict[str, np.ndarray]] | None = None,
         keys: tuple[str, ...] = ("samples",), progress: bool = True,
         overwrite: bool = False) -> tuple[Draw, list[Chunk], DrawReport]:
    """Draw n samples of the experiment's sampler with `nets` = (network, guidance classifier or None, σ-space
    guide of autoguidance or None) as
    chunks of sampling.batch_size (eval.batch_size for purpose "eval") in this setting's store under
    `directory`, shared out over the processes and resuming from the chunks already there: chunk k is one
    sampler call with the generator seeded `chunk_seed(seed, k)`. `extra(x)` adds arrays (e.g. Inception
    features) to a chunk's file; `keys` are the arrays a finished chunk must hold. `overwrite` first
    removes this setting's store (and only it)."""
    size = exp.f.eval.batch_size if purpose == "eval" else exp.f.sampling.batch_size
    d = setting(exp, nets, seed, size, rt.device, directory, purpose)
    if overwrite and rt.is_main and d.store.directory.exists():
        shutil.rmtree(d.store.directory)
    net, classifier, guide = nets
    wrapped = None if classifier is None else exp.wrap_classifier(classifier).eval()

    def one(c: Chunk) -> dict[str, np.ndarray]:
        with batch_fits(f"{'eval' if purpose == 'eval' else 'sampling'}.batch_size", size, rt.device):
            x = sample_images(exp, net, c.size, rt.device, seed=chunk_seed(seed, c.k), classifier=wrapped,
                              batch_size=size, guide=guide)
            return {"samples": x.float().cpu().numpy(), **(extra(x) if extra is not None else {})}

    all_chunks = chunks(n, size)
    try:
        report = draw_missing(d.store, all_chunks, rt, one, keys, desc=purpose, progress=progress)
    except BaseException:
        if rt.is_main:
            d.store.discard_if_empty()
        raise
    return d, all_chunks, report
