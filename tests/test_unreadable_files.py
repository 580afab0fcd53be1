"""Files that are not what a run expects, and batches that do not fit, as one line each: what
`checkpoint.read_torch` says of every kind of unreadable file (never torch's own text, which advises
loading with weights_only=False), how `load_newest` skips or refuses, the Inception weights reader,
`runtime.batch_fits`, and the helpers that keep a failed run from leaving anything behind."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelib.checkpoint import (
    CheckpointError,
    CheckpointSkipped,
    load_checkpoint,
    load_newest,
    read_torch,
    save_checkpoint,
)
from scorelib.chunked import ChunkStore
from scorelib.metrics.inception import load_inception
from scorelib.runtime import BatchTooLarge, Progress, batch_fits, out_of_memory
from scorelib.utils import format_bytes
from scorelib.validate import check_writable


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _good(path: Path) -> bytes:
    save_checkpoint(path, {"model": {"w": torch.arange(300.0)}, "step": 1})
    return path.read_bytes()


def _files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the message after its path)."""
    good = _good(tmp / "good.pt")
    legacy = tmp / "legacy.pt"
    torch.save({"model": {"w": torch.arange(300.0)}}, legacy, _use_new_zipfile_serialization=False)
    cases = {
        "empty": (b"", "is empty (0 bytes: a write that never finished?)"),
        "truncated": (good[:1000], "is truncated (1000 bytes, a zip archive without its end: a copy or write cut "
                                   "short)"),
        "end-cut-off": (good[:-10], f"is truncated ({len(good) - 10} bytes, a zip archive without its end"),
        "legacy-truncated": (legacy.read_bytes()[:200], "is truncated (200 bytes, a pickle that ends early)"),
        "text": (b"step 2: loss 0.99\n", "is a text file, not a PyTorch checkpoint (it starts with "
                                         "'step 2: loss 0.99')"),
        "random": (bytes(range(7, 256)) * 4, "is not a PyTorch checkpoint (neither a zip archive nor a pickle; its "
                                             "first bytes are 07 08 09 0a)"),
        "plain-pickle": (pickle.dumps({"model": [1.0]}, protocol=2), "is a pickle but not a PyTorch checkpoint"),
        "runs-code": (pickle.dumps({"model": _RunsCode(tmp / "pwned")}, protocol=2),
                      "holds pickled Python objects (posix.system) besides tensors and plain values; scorelib never "
                      "unpickles objects that could run code"),
        "runs-code-protocol-4": (pickle.dumps({"model": _RunsCode(tmp / "pwned")}, protocol=4),
                                 "holds pickled Python objects (posix.system) besides tensors and plain values"),
        "numpy-array": (pickle.dumps({"model": np.zeros(3)}, protocol=2), "holds pickled Python objects (numpy."),
        "safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\": {}}      ", "is a safetensors file"),
    }
    out = {}
    for name, (data, message) in cases.items():
        (tmp / f"{name}.pt").write_bytes(data)
        out[name] = (tmp / f"{name}.pt", message)
    (tmp / "a_dir.pt").mkdir()
    out["directory"] = (tmp / "a_dir.pt", "is a directory, not a checkpoint file")
    out["missing"] = (tmp / "none.pt", "does not exist")
    return out


NAMES = ["empty", "truncated", "end-cut-off", "legacy-truncated", "text", "random", "plain-pickle", "runs-code",
         "runs-code-protocol-4", "numpy-array", "safetensors", "directory", "missing"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mmap", [False, True])
def test_every_unreadable_file_is_one_line_naming_it_and_what_it_is(tmp_path, name, mmap):
    path, message = _files(tmp_path)[name]
    with pytest.raises(CheckpointError) as info:
        read_torch(path, mmap=mmap)
    text = str(info.value)
    assert text.startswith(f"{path} {message}"), text
    assert "\n" not in text and "weights_only" not in text and "trusted source" not in text
    assert not (tmp_path / "pwned").exists()


def test_readable_files_read_and_a_checkpoint_needs_a_model(tmp_path):
    _good(tmp_path / "good.pt")
    assert torch.equal(read_torch(tmp_path / "good.pt", mmap=True)["model"]["w"], torch.arange(300.0))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt is not a scorelib checkpoint \(no 'model' entry\)$"):
        load_checkpoint(tmp_path / "other.pt")


def test_load_newest_skips_unreadable_ones_with_one_warning_and_refuses_when_none_is_readable(tmp_path):
    d = tmp_path / "checkpoints"
    assert load_newest(d) is None  # no checkpoints: a fresh start
    _good(d / "checkpoint_00000010.pt")
    (d / "checkpoint_00000020.pt").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_newest(d)["step"] == 1
    assert [w.category for w in caught] == [CheckpointSkipped]
    assert str(caught[0].message) == (f"skipping {d / 'checkpoint_00000020.pt'}, which is empty (0 bytes: a write "
                                      "that never finished?); using checkpoint_00000010.pt (step 10)")
    (d / "checkpoint_00000010.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_newest(d)
    assert str(info.value) == (f"{d / 'checkpoint_00000020.pt'} is empty (0 bytes: a write that never finished?), "
                               "and no older one is readable")
    (d / "checkpoint_00000020.pt").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint_00000010\.pt is a text file, not a PyTorch checkpoint "
                                              r"\(it starts with 'not a checkpoint'\), and it is the only checkpoint "
                                              r"there$"):
        load_newest(d)


@pytest.mark.parametrize("name", ["empty", "truncated", "random", "runs-code"])
def test_inception_weights_that_cannot_be_read_are_one_line_naming_the_file(tmp_path, name):
    path, message = _files(tmp_path)[name]
    with pytest.raises(ValueError) as info:
        load_inception(path)
    assert str(info.value).startswith(f"the Inception weights file {path} {message}"), str(info.value)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 8000000000 bytes. Error code 12 (Cannot allocate memory)")
# recorded on an NVIDIA H200 with torch 2.11.0+cu130 (torch.empty of 20 GiB with 130 GiB taken)
CUDA_OOM = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
            "9.29 GiB is free. Including non-PyTorch memory, this process has 130.51 GiB memory in use. Of the "
            "allocated memory 130.00 GiB is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated. "
            "If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
            "to avoid fragmentation.  See documentation for Memory Management  "
            "(https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)")


@pytest.mark.parametrize(("error", "device", "needed"), [
    (RuntimeError(CPU_OOM), "cpu", "7.45 GiB"),
    (torch.OutOfMemoryError(CUDA_OOM), "cuda", "20.00 GiB"),
    (MemoryError(), "cpu", ""),
])
def test_an_allocation_failure_names_the_batch_field_and_the_memory(error, device, needed):
    with pytest.raises(BatchTooLarge) as info, batch_fits("sampling.batch_size", 4096, device):
        raise error
    asked = f"an allocation of {needed} failed" if needed else "an allocation failed"
    assert str(info.value) == (f"sampling.batch_size=4096: the batch does not fit in {device.upper()} memory "
                               f"({asked}); use a smaller sampling.batch_size")
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one line, no chained traceback


def test_other_errors_pass_through_batch_fits():
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    with pytest.raises(RuntimeError, match="shapes cannot"), batch_fits("training.batch_size", 8, "cpu"):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_a_real_cpu_allocation_failure_is_caught():
    with pytest.raises(BatchTooLarge, match=r"eval\.batch_size=100000000000000: .*allocation of 1\.42 PiB failed"), \
            batch_fits("eval.batch_size", 10**14, "cpu"):
        torch.empty(10**14, 4)  # 1.42 PiB, beyond any address space: refused at once


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 8 * 10**9, 3 * 2**40)] == [
        "0 bytes", "1023 bytes", "1.50 KiB", "7.45 GiB", "3.00 TiB"]


def test_check_writable_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "eval", tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    check_writable(tmp_path / "eval", tmp_path)
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["metrics.json"]


def test_a_store_without_chunks_is_discarded_and_one_with_chunks_is_kept(tmp_path):
    other = ChunkStore(tmp_path / "samples" / "other", "f2")
    (other.directory).mkdir(parents=True)
    (other.directory / "chunk_000000.npz").write_bytes(b"finished work")
    empty = ChunkStore(tmp_path / "samples" / "new", "f1")
    empty.directory.mkdir()
    (empty.directory / "manifest.json").write_text("{}")
    empty.discard_if_empty()
    other.discard_if_empty()
    assert not empty.directory.exists() and (other.directory / "chunk_000000.npz").read_bytes() == b"finished work"
    other.directory.joinpath("chunk_000000.npz").unlink()
    other.discard_if_empty()
    assert not (tmp_path / "samples").exists()  # the folder the failed run made is gone too


def test_progress_lines_carry_the_note(capsys):
    bar = Progress(2, "bench", unit="runs", every=0.5)
    bar.set_note("ddim η=0, 10 steps")
    bar.update(1)
    bar.write("ddim [10 steps] failed: boom")
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"bench: 1/2 runs \(50%\), \S+ runs/s, ETA \S+; ddim η=0, 10 steps", lines[0]), lines
    assert lines[1] == "ddim [10 steps] failed: boom"
