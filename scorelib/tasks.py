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

from . import build, sharding
from .checkpoint import CheckpointError, atomic_write_bytes, list_checkpoints, load_network
from .data import DataError, ImageData, save_image_grid
from .metrics.fid import to_unit_range
from .train import Runtime, TrainingError, sample_images, setup_runtime, train

USER_ERRORS = (DataError, build.ConfigError, CheckpointError, TrainingError, FileNotFoundError)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, default=float) + "\n").encode()))


def checkpoint_source(config: Any, workdir: Path, required: bool = True) -> Path | None:
    """sampling.checkpoint when set, else the workdir when it holds checkpoints; when there is none,
    None, or with `required` a CheckpointError that says how to get one."""
    if path := build.sample_settings(config).checkpoint:
        return Path(path)
    if list_checkpoints(workdir / "checkpoints"):
        return workdir
    if not required:
        return None
    raise CheckpointError(f"no checkpoints in {workdir / 'checkpoints'}; train first "
                          f"(--mode=train) or set --config.sampling.checkpoint")


def trained_network(config: Any, source: Path, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The EMA network of the newest checkpoint at `source` in eval mode, built with its own stored
    architecture, and the config to run it with: `build.with_stored_model` of `config`, so sampling
    and evaluation settings still come from the current config (flags can change the sampler).
    A published checkpoint of the reference code (scorelib.published) carries no architecture: the
    current config gives it."""
    net, stored = load_network(source, config=config)
    return net.to(device).eval(), build.with_stored_model(config, stored)


def guidance_classifier(config: Any, device: torch.device) -> torch.nn.Module | None:
    """The noisy classifier for classifier guidance (classifier.workdir's newest checkpoint), if used."""
    s = build.sample_settings(config)
    if s.guidance != "classifier":
        return None
    if not s.classifier_workdir:
        raise build.ConfigError("sampling.guidance='classifier' needs --config.classifier.workdir (a run trained "
                                "with --config.training.target=classifier)")
    # a published noisy classifier (guided-diffusion .pt) is built from the config's classifier section
    net, _ = load_network(s.classifier_workdir, config=build.with_overrides(config, {"training.target": "classifier"}))
    return net.to(device).eval()


def run_train(config: Any, workdir: Path) -> None:
    """Train (resuming from the newest checkpoint); with training.eval_at_end also sample and evaluate
    (on every process of a torchrun job: both are sharded)."""
    rt = setup_runtime(config)
    t = build.train_settings(config)
    if t.eval_at_end and t.target == "model":
        preflight_eval(config, workdir)  # a missing weights file or data set found before training, not after
    summary = train(config, workdir)
    if t.eval_at_end and t.target == "model":
        run_sample(config, workdir)
        run_eval(config, workdir)
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


def draw_sharded(config: Any, net: torch.nn.Module, n: int, seed: int, rt: Runtime, directory: Path, purpose: str,
                 classifier: torch.nn.Module | None = None,
                 extra: Callable[[torch.Tensor], dict[str, np.ndarray]] | None = None,
                 keys: tuple[str, ...] = ("samples",), progress: bool = True) -> tuple[
                     sharding.ChunkStore, list[sharding.Chunk], sharding.DrawReport]:
    """Draw n samples of the config's sampler as chunks of sampling.batch_size in `directory`, shared out
    over the processes and resuming from the chunks already there (see scorelib.sharding): chunk k is
    one sampler call with the generator seeded `sharding.chunk_seed(seed, k)`; chunks made with another
    config (`build.sampling_fingerprint`), other weights, seed, chunk size or device type are discarded
    (their noise streams differ). `extra(x)` adds arrays (e.g. Inception features) to a chunk's file;
    `keys` are the arrays a finished chunk must hold."""
    size = build.sample_settings(config).batch_size
    prefix = "eval" if purpose == "eval" else "sampling"
    if size < 1 or n < 1:
        raise build.ConfigError(f"{prefix}.batch_size and {prefix}.n_samples must be >= 1, got {size} and {n}")
    fingerprint = hashlib.sha256((build.sampling_fingerprint(config, purpose) + _weights_digest(net, classifier)
                                  + f"|seed={seed}|chunk={size}|device={rt.device.type}").encode()).hexdigest()
    store = sharding.ChunkStore(directory, fingerprint)
    all_chunks = sharding.chunks(n, size)

    def draw(c: sharding.Chunk) -> dict[str, np.ndarray]:
        x = sample_images(config, net, c.size, rt.device, seed=sharding.chunk_seed(seed, c.k), classifier=classifier)
        return {"samples": x.float().cpu().numpy(), **(extra(x) if extra is not None else {})}

    report = sharding.draw_missing(store, all_chunks, rt, draw, keys, desc=purpose, progress=progress)
    return store, all_chunks, report


def _chunk_note(report: sharding.DrawReport, world: int) -> str:
    return (f"{report.total - report.found} of {report.total} chunks drawn by {world} process(es), "
            f"{report.found} found finished")


def run_sample(config: Any, workdir: Path) -> Path:
    """Draw sampling.n_samples with the configured sampler from the newest checkpoint's EMA weights,
    sharded over the processes of a torchrun job and resumable (chunks in WORKDIR/samples/<method>.chunks/);
    rank 0 then writes WORKDIR/samples/<method>.png and .npz (samples in model space, float32)."""
    rt = setup_runtime(config)
    net, config = trained_network(config, checkpoint_source(config, workdir), rt.device)
    s, d = build.sample_settings(config), build.data_spec(config)
    name = s.method
    start = time.perf_counter()
    store, all_chunks, report = draw_sharded(config, net, s.n_samples, s.seed + 1, rt,
                                             workdir / "samples" / f"{name}.chunks", "sample",
                                             classifier=guidance_classifier(config, rt.device))
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
            value_range = (-1.0, 1.0) if d.centered else (0.0, 1.0)
            save_image_grid(to_unit_range(torch.from_numpy(np.concatenate(first)), value_range), png)
        nfe = build.sampling_nfe(config)
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


def _uses_inception(config: Any) -> bool:
    """Whether the evaluation runs the FID Inception (image data with fid / kid / is requested)."""
    dataset = build.data_spec(config).dataset
    return dataset not in ("toy", "digits") and any(m in INCEPTION_METRICS for m in build.eval_settings(config).metrics)


def _needs_reference(config: Any) -> bool:
    return _uses_inception(config) and any(m in ("fid", "kid") for m in build.eval_settings(config).metrics)


def preflight_eval(config: Any, workdir: Path) -> None:
    """Check everything an evaluation needs besides the checkpoint, before anything is sampled (seconds,
    not a sampling run): WORKDIR/eval is writable; for the Inception metrics the weights file is present and
    a valid FID Inception state_dict; eval.stats_path, if set, is a readable reference file, else the
    reference split of the data is present (unless its statistics are cached); with eval.likelihood the
    test split is present. Raises the user errors of USER_ERRORS, each one line naming the field or path."""
    from . import evaluate

    e = build.eval_settings(config)
    out = workdir / "eval"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise build.ConfigError(f"--workdir={workdir} is not writable ({out}: {err})") from err
    if _uses_inception(config):
        try:  # a missing file raises InceptionWeightsNotFoundError (a FileNotFoundError) naming the path
            evaluate.load_inception(e.inception_path or None)
        except ValueError as err:
            raise build.ConfigError(f"eval.inception_path: {err}") from err
    if _needs_reference(config):
        ref = build.fid_reference(config, workdir)
        if ref.file:
            try:
                evaluate.check_statistics(ref.file)
            except ValueError as err:
                raise build.ConfigError(f"eval.stats_path: {err}") from err
        elif not evaluate.cache_ready(ref.cache, "kid" in e.metrics):
            build.create_dataset(config, train=ref.split == "train")  # a DataError naming the path if absent
    if e.likelihood and build.data_spec(config).dataset != "toy":
        build.create_dataset(config, train=False)


def _reference_images(config: Any, workdir: Path, test: ImageData | None) -> torch.Tensor | None:
    """The real images the FID/KID reference is computed from: None when a reference file is used or the
    statistics are cached (or no reference is needed); the test split `test` when that is the reference."""
    from . import evaluate

    if not _needs_reference(config):
        return None
    ref = build.fid_reference(config, workdir)
    if ref.file or evaluate.cache_ready(ref.cache, "kid" in build.eval_settings(config).metrics):
        return None
    if ref.split == "test" and test is not None:
        return test.images
    return build.create_dataset(config, train=ref.split == "train").images


def _inception_extra(config: Any, workdir: Path, device: torch.device) -> Callable[[torch.Tensor],
                                                                                dict[str, np.ndarray]]:
    """Per-chunk Inception pool3 features and logits of samples (float32), on `device` in batches of
    eval.batch_size."""
    from . import evaluate

    kwargs = build.evaluation_kwargs(config, workdir, None, device=device)
    model = evaluate.load_inception(kwargs["inception_path"], device=device)

    def extra(x: torch.Tensor) -> dict[str, np.ndarray]:
        feats, logits = evaluate.inception_features(model, x, kwargs["value_range"], kwargs["batch_size"], device)
        return {"features": feats.float().numpy(), "logits": logits.float().numpy()}

    return extra


def _inception_results(config: Any, workdir: Path, store: sharding.ChunkStore, all_chunks: list[sharding.Chunk],
                       test: ImageData | None, ref: build.FidReference | None, rt: Runtime) -> dict[str, Any]:
    """FID / KID / IS of the chunks' samples against `ref` (None: no FID/KID requested) and, with a FID, the
    record of what it was computed from (`evaluate.fid_protocol`, the split, file and cache). The FID
    statistics are float64 sums of x and xxᵀ over each process's chunk files, added up over the processes;
    rank 0 computes the metrics (KID and IS from the stored features and logits), the others get {}."""
    from . import evaluate

    stats = evaluate.StreamingStatistics(2048)
    for feats in store.iter(all_chunks[rt.rank::rt.world], "features"):
        stats.update(feats)
    stats = evaluate.StreamingStatistics.from_tensors(sharding.reduce_sum(stats.tensors(), rt))
    if not rt.is_main:
        return {}

    def stacked(key: str) -> Callable[[], torch.Tensor]:
        return lambda: torch.from_numpy(np.concatenate(list(store.iter(all_chunks, key))))

    split = ref.split if ref is not None and ref.split else None
    kwargs = build.evaluation_kwargs(config, workdir, _reference_images(config, workdir, test), split=split,
                                     device=rt.device)
    out = evaluate.streamed_image_metrics(stats, stacked("features"), stacked("logits"), **kwargs)
    if ref is not None and "fid" in out:
        out.update(evaluate.fid_protocol(stats.n, ref.description, out.get("fid_reference_count"), ref.full))
        out.update(fid_reference_split=ref.split or None, fid_reference_file=ref.file or None,
                   fid_reference_cache=None if ref.cache is None else str(ref.cache))
    return out


def run_eval(config: Any, workdir: Path) -> dict[str, Any]:
    """Sample eval.n_samples and compute the metrics the data allows; rank 0 writes WORKDIR/eval/metrics.json.

    Everything but the checkpoint is checked first (`preflight_eval`). Sampling is sharded and resumable
    as in `run_sample` (chunks in WORKDIR/eval/chunks/); for image data each process computes the
    Inception features of the chunks it draws. The FID reference is the full training split by default
    (eval.reference_split / reference_count) or the file eval.stats_path; metrics.json records it, the
    counts, and whether the FID is comparable with published ones (`evaluate.fid_protocol`)."""
    from . import evaluate

    preflight_eval(config, workdir)
    rt = setup_runtime(config)
    requested = build.data_spec(config)
    net, config = trained_network(config, checkpoint_source(config, workdir), rt.device)
    if build.data_spec(config) != requested:  # the checkpoint's data fields replaced the flags': check again
        preflight_eval(config, workdir)
    config = build.for_evaluation(config)
    e = build.eval_settings(config)
    inception = _uses_inception(config)
    start = time.perf_counter()
    store, all_chunks, report = draw_sharded(
        config, net, e.n_samples, e.seed + 2, rt, workdir / "eval" / "chunks", "eval",
        classifier=guidance_classifier(config, rt.device),
        extra=_inception_extra(config, workdir, rt.device) if inception else None,
        keys=("samples", "features", "logits") if inception else ("samples",))
    results: dict[str, Any] = {"n_samples": e.n_samples, "sampler": build.sample_settings(config).method,
                               "nfe": build.sampling_nfe(config), "sampling_seconds": time.perf_counter() - start}
    ref = build.fid_reference(config, workdir) if _needs_reference(config) else None
    digits = build.data_spec(config).dataset == "digits"
    needs_test = e.likelihood or digits or (ref is not None and ref.split == "test")
    data = build.create_dataset(config, train=False) if needs_test else None  # the test split
    if inception:
        results.update(_inception_results(config, workdir, store, all_chunks, data, ref, rt))
    elif rt.is_main and build.data_spec(config).dataset in ("toy", "digits"):  # small: evaluated at once
        x = torch.from_numpy(np.concatenate(list(store.iter(all_chunks))))
        with torch.random.fork_rng(devices=[]):  # the metrics' random projections: the same in every run
            torch.manual_seed(e.seed)
            results.update(evaluate.evaluate_samples(x, **build.evaluation_kwargs(
                config, workdir, None if data is None else data.images)))
    if e.likelihood:
        results.update(likelihood_metrics(config, net, data, rt))
    if rt.is_main:
        _write_json(workdir / "eval" / "metrics.json", results)
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list | dict)}, default=float))
        print(f"eval samples: {_chunk_note(report, rt.world)}")
    sharding.barrier(rt)
    return results


def run_likelihood(config: Any, workdir: Path) -> dict[str, Any]:
    """`likelihood_metrics` of the newest checkpoint on the test split, sharded over the processes;
    rank 0 writes WORKDIR/eval/likelihood.json."""
    rt = setup_runtime(config)
    net, config = trained_network(config, checkpoint_source(config, workdir), rt.device)
    out = likelihood_metrics(config, net, build.create_dataset(config, train=False), rt)
    if rt.is_main:
        _write_json(workdir / "eval" / "likelihood.json", out)
        print(json.dumps(out))
    return out


def likelihood_metrics(config: Any, net: torch.nn.Module, data: ImageData | None, rt: Runtime) -> dict[str, Any]:
    """Bits/dim of `data` (the test split; None: fresh toy points) under the probability-flow ODE and,
    for DDPM models on 8-bit data, the discrete VLB: eval.likelihood_batches batches of eval.batch_size.
    Batch i is computed by process i mod world with the generator seeded `sharding.chunk_seed(seed, i)`
    (dequantisation and Hutchinson probes), so the result does not depend on the number of processes;
    per-process float64 sums are added up over all of them."""
    from .data import toy_data
    from .likelihood import bits_per_dim, ddpm_vlb, dequantize, log_likelihood

    score = build.create_score_model(config, net).eval()
    sigma_max, sigma_min = build.likelihood_sigma_range(config)
    e, d = build.eval_settings(config), build.data_spec(config)
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
            total, _ = ddpm_vlb(net, (raw.float() / 127.5 - 1), build.create_schedule(config), e.vlb_variance, g,
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


def run_bench(config: Any, workdir: Path, quick: bool = False) -> None:
    """The sampler benchmark on the config's model (see scorelib.bench); `quick`: the small grid."""
    from . import bench

    bench.run(config, workdir, quick=quick)
