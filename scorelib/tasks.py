"""What each `main.py --mode` does: train, sample, eval, likelihood, bench."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import evaluate, sharding
from .build import ConfigError, Experiment, FidReference, evaluation_arguments, load_dataset, reference_of
from .checkpoint import CheckpointError, atomic_write_bytes, unknown_network, weights_source
from .data import DataError, ImageData, save_image_grid, toy_data
from .likelihood import bits_per_dim, ddpm_vlb, dequantize, log_likelihood
from .metrics.fid import to_unit_range
from .runtime import Runtime, RuntimeSetupError, setup_runtime
from .sharing import load_weights
from .train import TrainingError, sample_images, train

USER_ERRORS = (DataError, ConfigError, CheckpointError, TrainingError, RuntimeSetupError, FileNotFoundError)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, default=float) + "\n").encode()))


def checkpoint_source(exp: Experiment, workdir: Path, required: bool = True) -> Path | None:
    """sampling.checkpoint when set, else the workdir when it holds checkpoints; when there is none,
    None, or with `required` a CheckpointError that says how to get one."""
    source = weights_source(exp.sample.checkpoint, workdir)
    if source is not None or not required:
        return source
    raise CheckpointError(f"no checkpoints in {workdir / 'checkpoints'}; train first "
                          f"(--mode=train) or set --config.sampling.checkpoint")


def runtime(exp: Experiment) -> Runtime:
    """This process's device and rank for the experiment (config.device, training.threads)."""
    return setup_runtime(exp.train.device, exp.train.threads)


def trained_network(exp: Experiment, source: Path, device: torch.device) -> torch.nn.Module:
    """The experiment's network with the EMA weights of the newest checkpoint at `source`, in eval mode
    on `device`. `build.experiment` has already laid the checkpoint's stored architecture over the
    config; a published checkpoint of the reference code (scorelib.published) carries none."""
    try:
        net = exp.network()
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a stored config of an older layout
        raise unknown_network(source, e) from e
    return load_weights(net, source, exp.family, exp.variant).to(device).eval()


def guidance_classifier(exp: Experiment, device: torch.device) -> torch.nn.Module | None:
    """The noisy classifier for classifier guidance (classifier.workdir's newest checkpoint), if used."""
    s = exp.sample
    if s.guidance != "classifier":
        return None
    if not s.classifier_workdir:
        raise ConfigError("sampling.guidance='classifier' needs --config.classifier.workdir (a run trained "
                          "with --config.training.target=classifier)")
    # a published noisy classifier (guided-diffusion .pt) is built from the config's classifier section
    net = load_weights(exp.classifier(), s.classifier_workdir, "classifier", exp.variant)
    return net.to(device).eval()


def run_train(exp: Experiment, workdir: Path) -> None:
    """Train (resuming from the newest checkpoint); with training.eval_at_end also sample and evaluate
    (on every process of a torchrun job: both are sharded)."""
    rt = runtime(exp)
    t = exp.train
    if t.eval_at_end and t.target == "model":
        preflight_eval(exp, workdir)  # a missing weights file or data set found before training, not after
    summary = train(exp, workdir)
    if t.eval_at_end and t.target == "model":
        run_sample(exp, workdir)
        run_eval(exp, workdir)
    if rt.is_main:
        print(f"trained {summary['steps']} steps in {workdir}")


def _weights_digest(*nets: torch.nn.Module | None) -> str:
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


def draw_sharded(exp: Experiment, net: torch.nn.Module, n: int, seed: int, rt: Runtime, directory: Path, purpose: str,
                 classifier: torch.nn.Module | None = None,
                 extra: Callable[[torch.Tensor], dict[str, np.ndarray]] | None = None,
                 keys: tuple[str, ...] = ("samples",), progress: bool = True) -> tuple[
                     sharding.ChunkStore, list[sharding.Chunk], sharding.DrawReport]:
    """Draw n samples of the experiment's sampler as chunks in `directory` (of sampling.batch_size, or
    eval.batch_size for purpose "eval"), shared out over the processes and resuming from the chunks
    already there (see scorelib.sharding): chunk k is one sampler call with the generator seeded
    `sharding.chunk_seed(seed, k)`; chunks made with another config (`Experiment.fingerprints`), other
    weights, seed, chunk size or device type are discarded (their noise streams differ). `extra(x)`
    adds arrays (e.g. Inception features) to a chunk's file; `keys` are the arrays a finished chunk
    must hold."""
    prefix = "eval" if purpose == "eval" else "sampling"
    size = exp.eval.batch_size if purpose == "eval" else exp.sample.batch_size
    if size < 1 or n < 1:
        raise ConfigError(f"{prefix}.batch_size and {prefix}.n_samples must be >= 1, got {size} and {n}")
    fingerprint = hashlib.sha256((exp.fingerprints[purpose] + _weights_digest(net, classifier)
                                  + f"|seed={seed}|chunk={size}|device={rt.device.type}").encode()).hexdigest()
    store = sharding.ChunkStore(directory, fingerprint)
    all_chunks = sharding.chunks(n, size)

    def draw(c: sharding.Chunk) -> dict[str, np.ndarray]:
        x = sample_images(exp, net, c.size, rt.device, seed=sharding.chunk_seed(seed, c.k), classifier=classifier,
                          batch_size=size)
        return {"samples": x.float().cpu().numpy(), **(extra(x) if extra is not None else {})}

    report = sharding.draw_missing(store, all_chunks, rt, draw, keys, desc=purpose, progress=progress)
    return store, all_chunks, report


def _chunk_note(report: sharding.DrawReport, world: int) -> str:
    return (f"{report.total - report.found} of {report.total} chunks drawn by {world} process(es), "
            f"{report.found} found finished")


def run_sample(exp: Experiment, workdir: Path) -> Path:
    """Draw sampling.n_samples with the configured sampler from the newest checkpoint's EMA weights,
    sharded over the processes of a torchrun job and resumable (chunks in WORKDIR/samples/<method>.chunks/);
    rank 0 then writes WORKDIR/samples/<method>.png and .npz (samples in model space, float32)."""
    rt = runtime(exp)
    net = trained_network(exp, checkpoint_source(exp, workdir), rt.device)
    s, d = exp.sample, exp.data
    name = s.method
    start = time.perf_counter()
    store, all_chunks, report = draw_sharded(exp, net, s.n_samples, s.seed + 1, rt,
                                             workdir / "samples" / f"{name}.chunks", "sample",
                                             classifier=guidance_classifier(exp, rt.device))
    elapsed = time.perf_counter() - start
    out = workdir / "samples" / f"{name}.npz"
    if rt.is_main:
        sharding.write_npz_streamed(out, "samples", store.iter(all_chunks), (s.n_samples, *d.shape))
        png = workdir / "samples" / f"{name}.png"
        if d.dataset == "toy":  # 2-D points: all of them fit in memory
            _scatter_png(torch.from_numpy(np.concatenate(list(store.iter(all_chunks)))), png)
        else:
            first, have = [], 0  # the grid shows the first 256 samples
            for part in store.iter(all_chunks):
                first.append(part[:256 - have])
                have += len(first[-1])
                if have >= 256:
                    break
            save_image_grid(to_unit_range(torch.from_numpy(np.concatenate(first)), d.value_range), png)
        nfe = exp.sampler.nfe
        print(f"{s.n_samples} samples with {name} ({nfe if nfe > 0 else 'adaptive'} NFE) in {elapsed:.1f}s -> {out} "
              f"({_chunk_note(report, rt.world)})")
    sharding.barrier(rt)
    return out


def _scatter_png(x: torch.Tensor, path: Path) -> None:
    """A 2-D point cloud as a 256×256 density image (no plotting library needed)."""
    pts = x[:, :2].float().cpu()
    lim = float(pts.abs().quantile(0.995)) * 1.1 + 1e-6
    bins = 256
    idx = ((pts / lim + 1) / 2 * (bins - 1)).round().long().clamp(0, bins - 1)
    hist = torch.zeros(bins, bins)
    hist.index_put_((bins - 1 - idx[:, 1], idx[:, 0]), torch.ones(len(idx)), accumulate=True)
    img = (hist / hist.max().clamp(min=1)).sqrt()
    save_image_grid((1 - img)[None, None], path, nrow=1)


INCEPTION_METRICS = ("fid", "kid", "is")


def _uses_inception(exp: Experiment) -> bool:
    """Whether the evaluation runs the FID Inception (image data with fid / kid / is requested)."""
    return exp.data.dataset not in ("toy", "digits") and any(m in INCEPTION_METRICS for m in exp.eval.metrics)


def _needs_reference(exp: Experiment) -> bool:
    return _uses_inception(exp) and any(m in ("fid", "kid") for m in exp.eval.metrics)


def preflight_eval(exp: Experiment, workdir: Path) -> None:
    """Check everything an evaluation needs besides the checkpoint, before anything is sampled (seconds,
    not a sampling run): WORKDIR/eval is writable; for the Inception metrics the weights file is present and
    a valid FID Inception state_dict; eval.stats_path, if set, is a readable reference file, else the
    reference split of the data is present (unless its statistics are cached); with eval.likelihood the
    test split is present. Raises the user errors of USER_ERRORS, each one line naming the field or path."""
    e = exp.eval
    out = workdir / "eval"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"--workdir={workdir} is not writable ({out}: {err})") from err
    if _uses_inception(exp):
        try:  # a missing file raises InceptionWeightsNotFoundError (a FileNotFoundError) naming the path
            evaluate.load_inception(e.inception_path or None)
        except ValueError as err:
            raise ConfigError(f"eval.inception_path: {err}") from err
    if _needs_reference(exp):
        ref = reference_of(exp.data, e, workdir)
        if ref.file:
            try:
                evaluate.check_statistics(ref.file)
            except ValueError as err:
                raise ConfigError(f"eval.stats_path: {err}") from err
        elif not evaluate.cache_ready(ref.cache, "kid" in e.metrics):
            load_dataset(exp.data, train=ref.split == "train")  # a DataError naming the path if absent
    if e.likelihood and exp.data.dataset != "toy":
        load_dataset(exp.data, train=False)


def _reference_images(exp: Experiment, workdir: Path, test: ImageData | None) -> torch.Tensor | None:
    """The real images the FID/KID reference is computed from: None when a reference file is used or the
    statistics are cached (or no reference is needed); the test split `test` when that is the reference."""
    if not _needs_reference(exp):
        return None
    ref = reference_of(exp.data, exp.eval, workdir)
    if ref.file or evaluate.cache_ready(ref.cache, "kid" in exp.eval.metrics):
        return None
    if ref.split == "test" and test is not None:
        return test.images
    return load_dataset(exp.data, train=ref.split == "train").images


def _inception_extra(exp: Experiment, workdir: Path, device: torch.device) -> Callable[[torch.Tensor],
                                                                                dict[str, np.ndarray]]:
    """Per-chunk Inception pool3 features and logits of samples (float32), on `device` in batches of
    eval.batch_size."""
    kwargs = evaluation_arguments(exp.data, exp.eval, workdir, None, device=device)
    model = evaluate.load_inception(kwargs["inception_path"], device=device)

    def extra(x: torch.Tensor) -> dict[str, np.ndarray]:
        feats, logits = evaluate.inception_features(model, x, kwargs["value_range"], kwargs["batch_size"], device)
        return {"features": feats.float().numpy(), "logits": logits.float().numpy()}

    return extra


def _inception_results(exp: Experiment, workdir: Path, store: sharding.ChunkStore, all_chunks: list[sharding.Chunk],
                       test: ImageData | None, ref: FidReference | None, rt: Runtime) -> dict[str, Any]:
    """FID / KID / IS of the chunks' samples against `ref` (None: no FID/KID requested) and, with a FID, the
    record of what it was computed from (`evaluate.fid_protocol`, the split, file and cache). The FID
    statistics are float64 sums of x and xxᵀ over each process's chunk files, added up over the processes;
    rank 0 computes the metrics (KID and IS from the stored features and logits), the others get {}."""
    stats = evaluate.StreamingStatistics(2048)
    for feats in store.iter(all_chunks[rt.rank::rt.world], "features"):
        stats.update(feats)
    stats = evaluate.StreamingStatistics.from_tensors(sharding.reduce_sum(stats.tensors(), rt))
    if not rt.is_main:
        return {}

    def stacked(key: str) -> Callable[[], torch.Tensor]:
        return lambda: torch.from_numpy(np.concatenate(list(store.iter(all_chunks, key))))

    split = ref.split if ref is not None and ref.split else None
    kwargs = evaluation_arguments(exp.data, exp.eval, workdir, _reference_images(exp, workdir, test), split=split,
                                  device=rt.device)
    out = evaluate.streamed_image_metrics(stats, stacked("features"), stacked("logits"), **kwargs)
    if ref is not None and "fid" in out:
        out.update(evaluate.fid_protocol(stats.n, ref.description, out.get("fid_reference_count"), ref.full))
        out.update(fid_reference_split=ref.split or None, fid_reference_file=ref.file or None,
                   fid_reference_cache=None if ref.cache is None else str(ref.cache))
    return out


def run_eval(exp: Experiment, workdir: Path) -> dict[str, Any]:
    """Sample eval.n_samples and compute the metrics the data allows; rank 0 writes WORKDIR/eval/metrics.json.

    Everything but the checkpoint is checked first (`preflight_eval`). Sampling is sharded and resumable
    as in `run_sample` (chunks in WORKDIR/eval/chunks/); for image data each process computes the
    Inception features of the chunks it draws. The FID reference is the full training split by default
    (eval.reference_split / reference_count) or the file eval.stats_path; metrics.json records it, the
    counts, and whether the FID is comparable with published ones (`evaluate.fid_protocol`)."""
    preflight_eval(exp, workdir)
    rt = runtime(exp)
    net = trained_network(exp, checkpoint_source(exp, workdir), rt.device)
    e = exp.eval
    inception = _uses_inception(exp)
    start = time.perf_counter()
    store, all_chunks, report = draw_sharded(
        exp, net, e.n_samples, e.seed + 2, rt, workdir / "eval" / "chunks", "eval",
        classifier=guidance_classifier(exp, rt.device),
        extra=_inception_extra(exp, workdir, rt.device) if inception else None,
        keys=("samples", "features", "logits") if inception else ("samples",))
    results: dict[str, Any] = {"n_samples": e.n_samples, "sampler": exp.sample.method, "nfe": exp.sampler.nfe,
                               "sampling_seconds": time.perf_counter() - start}
    ref = reference_of(exp.data, e, workdir) if _needs_reference(exp) else None
    digits = exp.data.dataset == "digits"
    needs_test = e.likelihood or digits or (ref is not None and ref.split == "test")
    data = load_dataset(exp.data, train=False) if needs_test else None  # the test split
    if inception:
        results.update(_inception_results(exp, workdir, store, all_chunks, data, ref, rt))
    elif rt.is_main and exp.data.dataset in ("toy", "digits"):  # small: evaluated at once
        x = torch.from_numpy(np.concatenate(list(store.iter(all_chunks))))
        with torch.random.fork_rng(devices=[]):  # the metrics' random projections: the same in every run
            torch.manual_seed(e.seed)
            results.update(evaluate.evaluate_samples(x, **evaluation_arguments(
                exp.data, e, workdir, None if data is None else data.images)))
    if e.likelihood:
        results.update(likelihood_metrics(exp, net, data, rt))
    if rt.is_main:
        _write_json(workdir / "eval" / "metrics.json", results)
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list | dict)}, default=float))
        print(f"eval samples: {_chunk_note(report, rt.world)}")
    sharding.barrier(rt)
    return results


def run_likelihood(exp: Experiment, workdir: Path) -> dict[str, Any]:
    """`likelihood_metrics` of the newest checkpoint on the test split, sharded over the processes;
    rank 0 writes WORKDIR/eval/likelihood.json."""
    rt = runtime(exp)
    net = trained_network(exp, checkpoint_source(exp, workdir), rt.device)
    out = likelihood_metrics(exp, net, load_dataset(exp.data, train=False), rt)
    if rt.is_main:
        _write_json(workdir / "eval" / "likelihood.json", out)
        print(json.dumps(out))
    return out


def likelihood_metrics(exp: Experiment, net: torch.nn.Module, data: ImageData | None, rt: Runtime) -> dict[str, Any]:
    """Bits/dim of `data` (the test split; None: fresh toy points) under the probability-flow ODE and,
    for DDPM models on 8-bit data, the discrete VLB: eval.likelihood_batches batches of eval.batch_size.
    Batch i is computed by process i mod world with the generator seeded `sharding.chunk_seed(seed, i)`
    (dequantisation and Hutchinson probes), so the result does not depend on the number of processes;
    per-process float64 sums are added up over all of them."""
    score = exp.to_score(net).eval()
    sigma_max, sigma_min = exp.likelihood_range
    e, d = exp.eval, exp.data
    if data is None:
        n_batches, bin_width = e.likelihood_batches, None
    else:
        n_batches = min(e.likelihood_batches, -(-len(data.images) // e.batch_size))
        bin_width = (2.0 if d.centered else 1.0) / (256 if data.levels == 256 else data.levels)
    with_vlb = e.vlb_variance is not None and data is not None and d.centered and data.levels == 256
    mine = list(range(n_batches))[rt.rank::rt.world]
    # [Σ ode bpd, examples, Σ nfe, batches, Σ vlb bpd, vlb examples]
    sums = torch.zeros(6, dtype=torch.float64)
    bar = sharding.Progress(len(mine), sharding.progress_label("likelihood", rt), enabled=rt.is_main, unit="batches")
    for i in mine:
        g = torch.Generator(rt.device).manual_seed(sharding.chunk_seed(e.seed, i))
        if data is None:
            raw = toy_data(d.toy, e.batch_size, torch.Generator().manual_seed(e.seed + i)).to(rt.device)
            x = raw.float()
        else:
            raw = data.images[i * e.batch_size:(i + 1) * e.batch_size].to(rt.device)
            if data.levels == 256:
                x = dequantize(raw, d.centered, g)
            else:  # float data with `levels` levels in [0, 1]: dequantise within its bins
                u = torch.rand(raw.shape, generator=g, device=raw.device)
                x = (raw.float() * (data.levels - 1) + u) / data.levels
                x = 2 * x - 1 if d.centered else x
        nats, nfe = log_likelihood(score, x, sigma_max, sigma_min, rtol=e.likelihood_rtol, atol=e.likelihood_rtol,
                                   exact_trace=e.exact_trace, generator=g, return_nfe=True)
        dims = int(np.prod(x.shape[1:]))
        bpd = bits_per_dim(nats, dims, bin_width) if bin_width else -nats / (dims * math.log(2))
        sums[:4] += torch.tensor([float(bpd.double().sum()), len(bpd), nfe, 1], dtype=torch.float64)
        if with_vlb:
            total, _ = ddpm_vlb(net, (raw.float() / 127.5 - 1), exp.schedule, e.vlb_variance, g,
                                clip_denoised=e.vlb_clip_denoised)
            sums[4:] += torch.tensor([float(total.double().sum()), len(total)], dtype=torch.float64)
        bar.update(1)
    bar.close()
    (sums,) = sharding.reduce_sum([sums], rt)
    out: dict[str, Any] = {"ode_bpd": float(sums[0] / sums[1]), "ode_nfe_mean": float(sums[2] / sums[3]),
                           "likelihood_examples": int(sums[1])}
    if data is None:
        out["ode_bpd_note"] = "toy data: -log2 p / dim of continuous points (no dequantisation)"
    if with_vlb:
        out["vlb_bpd"] = float(sums[4] / sums[5])
    return out

