"""The process a run executes in: its device, under torchrun its rank in the process group (barriers and
sums over the processes), its progress lines, and the lock that makes it the one writer of its workdir.
No config is read here."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import signal
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from .checkpoint import CheckpointSkipped
from .utils import format_bytes, format_duration


class RuntimeSetupError(RuntimeError):
    """The requested device is not available; the message says which."""


@dataclass
class Runtime:
    """This process: its rank of `world` processes and the device it computes on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str = "auto", threads: int = 0) -> Runtime:
    """The device (`device`: auto | cpu | cuda) and, under torchrun, the process group: gloo on CPU,
    nccl on GPU; `threads` > 0 sets torch's CPU threads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeSetupError("config.device='cuda' but no CUDA device is available")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        where = torch.device("cuda", local)
    else:
        where = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if threads > 0:
        torch.set_num_threads(threads)
    return Runtime(rank, world, where)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed that depends on (seed, step, rank) only."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729 + 12_345) % (2**63 - 1)


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


class WorkdirLocked(Exception):
    """Another live run holds the workdir's lock; the message names the workdir and the holder."""


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on WORKDIR/.lock while the run writes there (`flock`: the OS releases it when
    the process dies, also by SIGKILL). Under torchrun rank 0 holds it for every rank. A second run on the
    same workdir raises WorkdirLocked naming the holder's PID and host."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    workdir = Path(workdir)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = path.read_text().strip() or "a process"
        os.close(fd)
        raise WorkdirLocked(f"{workdir}: another run is writing here ({holder}); wait for it to finish, or use "
                            "another --workdir") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    except BaseException:
        if created and [p.name for p in workdir.iterdir()] == [".lock"]:  # a run that wrote nothing leaves nothing
            path.unlink()
            workdir.rmdir()
        raise
    finally:
        os.close(fd)


def one_line_warnings(prog: str) -> None:
    """Show scorelib's run-time warnings (a skipped unreadable checkpoint) as one line `prog: warning: ...` on
    stderr, from rank 0 only; other warnings as Python shows them."""
    python_way = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, CheckpointSkipped):
            python_way(message, category, *args, **kwargs)
        elif int(os.environ.get("RANK", "0")) == 0:
            print(f"{prog}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


class BatchTooLarge(Exception):
    """A batch did not fit in memory; the message names the batch-size field and the memory it asked for."""


_NEEDED = (re.compile(r"Tried to allocate ([\d.]+ [KMGTP]?i?B)"),  # torch.OutOfMemoryError (CUDA)
           re.compile(r"you tried to allocate (\d+) bytes"))  # DefaultCPUAllocator


def out_of_memory(error: BaseException) -> str | None:
    """The memory an allocation failure asked for ("20.00 GiB"; "" when the message does not say), or None
    when `error` is not an allocation failure."""
    text = str(error)
    if not (isinstance(error, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in text
            or "out of memory" in text.lower()):
        return None
    if found := _NEEDED[0].search(text):
        return found.group(1)
    if found := _NEEDED[1].search(text):
        return format_bytes(int(found.group(1)))
    return ""


@contextlib.contextmanager
def batch_fits(field: str, size: int, device: torch.device | str) -> Iterator[None]:
    """Run a batch of `size` (the config field `field`, e.g. "sampling.batch_size"); an allocation failure
    inside becomes BatchTooLarge, one line naming the field and the memory it needed."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        needed = out_of_memory(e)
        if needed is None:
            raise
        kind = torch.device(device).type.upper()
        asked = f"an allocation of {needed} failed" if needed else "an allocation failed"
        raise BatchTooLarge(f"{field}={size}: the batch does not fit in {kind} memory ({asked}); use a smaller "
                            f"{field}") from None


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """While training, SIGTERM and SIGINT set a flag (the signal number) instead of killing the process,
    so the loop can checkpoint the step it reached; the previous handlers come back afterwards."""
    caught: list[int] = []
    handler = lambda signum, frame: caught.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_requested(caught: list[int], rt: Runtime) -> bool:
    """Whether any process caught a stop signal (all processes agree, so they stop at the same step)."""
    flag = torch.tensor([float(bool(caught))], device=rt.device)
    if rt.world > 1:
        dist.all_reduce(flag)
    return bool(flag.item() > 0)
