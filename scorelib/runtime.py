"""The process a run executes in: its device and, under torchrun, its rank in the process group."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
