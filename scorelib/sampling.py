"""Drawing an experiment's samples: its sampler, labels and guidance in batches (`sample_images`), and the
chunks of one sampling setting, named by its fingerprint, drawn through `scorelib.chunked` so that a
killed run resumes where it stopped and no finished work is ever thrown away (`draw`)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .builder import Experiment
from .checkpoint import weights_digest
from .chunked import Chunk, ChunkStore, DrawReport, chunk_seed, chunks, draw_missing
from .runtime import Runtime, batch_fits


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


@dataclass(frozen=True)
class Draw:
    """Where one setting's samples live: its chunk store, and the stem its outputs are named by."""

    store: ChunkStore
    stem: str  # e.g. "ald-111nfe-3fa2c1d9e4"


def setting(exp: Experiment, nets: tuple[nn.Module | None, ...], seed: int, size: int, device: torch.device,
            directory: Path, purpose: str) -> Draw:
    """The chunk store of the samples `nets` draw with the experiment's `purpose` settings ("sample" /
    "eval"), `seed` and chunk `size` on `device`: DIRECTORY/<method>-<nfe>nfe-<fingerprint[:10]>/."""
    weights = weights_digest(*nets)  # hashed once: a large network's bytes take seconds
    fingerprint = hashlib.sha256((exp.fingerprints[purpose] + weights
                                  + f"|seed={seed}|chunk={size}|device={device.type}").encode()).hexdigest()
    nfe = exp.sampler.nfe
    stem = f"{exp.sampler.method}-{f'{nfe}nfe' if nfe > 0 else 'adaptive'}-{fingerprint[:10]}"
    describe = f"{exp.sampler.describe()}; {purpose} chunks of {size}, seed {seed}, weights {weights[:12]}"
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
