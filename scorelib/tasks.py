"""What each `main.py --mode` does, taking the run's `Experiment`: train, sample, eval, likelihood."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import evaluate, sampling, validate
from .builder import ConfigError, Experiment
from .builder.datasets import load_dataset
from .checkpoint import CheckpointError, atomic_write_json, phema_path, phema_snapshots, save_checkpoint
from .chunked import Chunk, chunk_seed, write_npz_streamed
from .data import DataError, ImageData, save_image_grid, save_scatter_png, toy_data, toy_mixture
from .ema import posthoc_ema
from .evaluate import INCEPTION_METRICS, INCEPTION_PREPROCESSING, cache_key, inception_weights_path
from .likelihood import bits_per_dim, ddpm_vlb, dequantize, log_likelihood
from .metrics.fid import to_unit_range
from .runtime import (
    BatchTooLarge,
    Progress,
    Runtime,
    RuntimeSetupError,
    WorkdirLocked,
    barrier,
    batch_fits,
    progress_label,
    reduce_sum,
    setup_runtime,
)
from .sharing import load, load_experiment_weights, load_weights
from .train import TrainingError, train

USER_ERRORS = (DataError, ConfigError, CheckpointError, TrainingError, RuntimeSetupError, WorkdirLocked,
               FileNotFoundError, BatchTooLarge)


def runtime(exp: Experiment) -> Runtime:
    """This process's device and rank for the experiment (device, training.threads)."""
    return setup_runtime(exp.f.device, exp.f.training.threads)


def trained_network(exp: Experiment, device: torch.device) -> torch.nn.Module:
    """The experiment's network with the EMA weights of its checkpoint (`exp.source`), in eval mode on
    `device`. The builder has already laid the checkpoint's stored architecture over the config; a
    published checkpoint of the reference code (scorelib.formats) carries none."""
    if exp.source is None:
        raise CheckpointError("no checkpoints in WORKDIR/checkpoints; train first (--mode=train) or set "
                              "--config.sampling.checkpoint")
    return load_experiment_weights(exp, exp.network(), exp.source).to(device).eval()


def guidance_classifier(exp: Experiment, device: torch.device) -> torch.nn.Module | None:
    """The noisy classifier for classifier guidance (classifier.workdir's newest checkpoint), if used;
    a published one (guided-diffusion .pt) is built from the config's classifier section."""
    if exp.classifier is None:
        return None
    net = load_weights(exp.classifier(), exp.f.classifier.workdir, ("openai_classifier",), "classifier")
    return net.to(device).eval()


def guide_network(exp: Experiment, device: torch.device) -> torch.nn.Module | None:
    """The guide of autoguidance (sampling.guide_checkpoint) as its own σ-space model, if used: any checkpoint
    `scorelib.load` reads, with the architecture and conditioning stored with it."""
    if exp.guidance.kind != "auto":
        return None
    return load(exp.f.sampling.guide_checkpoint).to(device).eval()


def networks(exp: Experiment, device: torch.device) -> tuple[torch.nn.Module, ...]:
    """(network, guidance classifier or None, guide or None) a sampling run draws with."""
    return trained_network(exp, device), guidance_classifier(exp, device), guide_network(exp, device)


def run_train(exp: Experiment, workdir: Path) -> None:
    """Train (resuming from the newest checkpoint); with training.eval_at_end also sample and evaluate
    (on every process of a torchrun job: both are sharded) the run just trained."""
    rt = runtime(exp)
    t = exp.f.training
    at_end = t.eval_at_end and t.target == "model"
    if at_end:
        preflight_eval(exp, workdir)  # a missing weights file or data set found before training, not after
    summary = train(exp, workdir)
    if at_end:
        after = dataclasses.replace(exp, source=workdir)  # the run just trained
        run_sample(after, workdir)
        run_eval(after, workdir)
    if rt.is_main:
        print(f"trained {summary['steps']} steps in {workdir}")


def run_sample(exp: Experiment, workdir: Path, overwrite: bool = False) -> Path:
    """Draw sampling.n_samples with the configured sampler from the checkpoint's EMA weights, sharded over
    the processes and resumable; rank 0 then writes WORKDIR/samples/<setting>-n<N>.npz and .png (samples
    in model space, float32). The chunks of each setting stay in their own WORKDIR/samples/<setting>/, so
    no later run with other settings touches them; `overwrite` redraws this setting's."""
    rt = runtime(exp)
    nets = networks(exp, rt.device)
    s, d = exp.f.sampling, exp.data
    start = time.perf_counter()
    drawn, all_chunks, report = sampling.draw(exp, nets, s.n_samples, exp.f.seed + 1, rt, workdir / "samples",
                                              "sample", overwrite=overwrite)
    elapsed = time.perf_counter() - start
    out = workdir / "samples" / f"{drawn.stem}-n{s.n_samples}.npz"
    if rt.is_main:
        write_npz_streamed(out, "samples", drawn.store.iter(all_chunks), (s.n_samples, *d.shape))
        png = out.with_suffix(".png")
        if d.dataset == "toy":  # 2-D points: all of them fit in memory
            save_scatter_png(torch.from_numpy(np.concatenate(list(drawn.store.iter(all_chunks)))), png)
        else:
            first = np.concatenate(list(drawn.store.iter([c for c in all_chunks if c.start < 256])))[:256]
            save_image_grid(to_unit_range(torch.from_numpy(first), d.value_range), png)  # the first 256 samples
        nfe = exp.sampler.nfe
        print(f"{s.n_samples} samples with {s.method} ({nfe if nfe > 0 else 'adaptive'} NFE) in {elapsed:.1f}s -> "
              f"{out} ({report.note(rt.world)})")
    barrier(rt)
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidReference:
    """What the FID/KID reference of an evaluation is (`reference_of`).

    file: eval.stats_path (a reference file, read-only) or "" when the statistics come from the data;
    split / count: the data split and how many of its images (0: all); cache: where the statistics of
    the data are cached (None with a file); description: one line for metrics.json.
    """

    file: str
    split: str
    count: int
    cache: Path | None
    description: str

    @property
    def full(self) -> bool:
        """The reference papers use: a reference file, or every image of the training split."""
        return bool(self.file) or (self.split == "train" and self.count == 0)


def reference_of(exp: Experiment, workdir: Any, split: str | None = None) -> FidReference:
    """The FID/KID reference: eval.stats_path if set, else `split` (default eval.reference_split) of the
    data set, the first eval.reference_count images of it (0: all). The cache file in WORKDIR/eval is
    keyed by everything the statistics depend on (data set, resolved root, split, count, image size /
    crop / channels, the folder split, preprocessing, Inception weights), so a different data.root or
    split never reuses stale statistics."""
    d, e = exp.data, exp.f.eval
    if e.stats_path:
        return FidReference(e.stats_path, "", 0, None, f"file {e.stats_path}")
    split = e.reference_split if split is None else split
    weights = inception_weights_path(e.inception_path or None)
    key = cache_key(dataset=d.dataset, root=Path(d.root).expanduser().resolve(), split=split,
                    count=e.reference_count, image_size=d.image_size, channels=d.channels, crop=d.crop,
                    test_fraction=d.test_fraction if d.dataset == "folder" else "",
                    preprocessing=INCEPTION_PREPROCESSING, weights=weights.name,
                    weights_bytes=weights.stat().st_size if weights.is_file() else -1)
    cache = Path(workdir) / "eval" / f"fid_stats_{d.dataset}_{split}_{key}.npz"
    what = "all" if e.reference_count == 0 else f"the first {e.reference_count}"
    return FidReference("", split, e.reference_count, cache, f"{what} of the {split} split of {d.dataset} at {d.root}")


def evaluation_arguments(exp: Experiment, workdir: Any, real: torch.Tensor | None, split: str | None = "test",
                         device: torch.device | str | None = None) -> dict[str, Any]:
    """Keyword arguments of `evaluate.evaluate_samples` for the data: the metric kind, value ranges,
    the real reference set (`real`: the `split` as loaded, None: eval.reference_split; the first
    eval.reference_count of it) or the file eval.stats_path, Inception on `device` in batches of
    eval.batch_size, caches inside WORKDIR/eval (see `reference_of`)."""
    d, e = exp.data, exp.f.eval
    if d.dataset == "toy":
        reference = toy_data(d.toy, e.n_samples, torch.Generator().manual_seed(exp.f.seed + 7))
        gmm = toy_mixture(d.toy) if d.toy in ("gmm8", "grid25", "two_modes") else None
        return {"kind": "toy", "real": reference, "gmm": gmm}
    if d.dataset == "digits":
        return {"kind": "digits", "value_range": d.value_range, "real": real, "cache_dir": Path(workdir) / "eval"}
    ref = reference_of(exp, workdir, split)
    if real is not None and ref.count:
        real = real[:ref.count]
    real = None if ref.file else real
    real_range = (0.0, 255.0) if real is not None and real.dtype == torch.uint8 else (0.0, 1.0)  # scaled per batch
    out = {"kind": "images", "metrics": tuple(e.metrics), "value_range": d.value_range, "real": real,
           "real_value_range": real_range, "inception_path": e.inception_path or None, "stats_path": ref.cache,
           "reference_path": ref.file or None, "batch_size": e.batch_size}
    if device is not None:
        out["device"] = device
    return out


def _uses_inception(exp: Experiment) -> bool:
    """Whether the evaluation runs the FID Inception (image data with fid / kid / is requested)."""
    return exp.data.dataset not in ("toy", "digits") and any(m in INCEPTION_METRICS for m in exp.f.eval.metrics)


def _needs_reference(exp: Experiment) -> bool:
    return _uses_inception(exp) and any(m in ("fid", "kid") for m in exp.f.eval.metrics)


def preflight_eval(exp: Experiment, workdir: Path) -> None:
    """Check everything an evaluation needs besides the checkpoint, before anything is sampled (seconds,
    not a sampling run), leaving nothing behind: for the Inception metrics the weights file is present and
    a valid FID Inception state_dict; eval.stats_path, if set, is a readable reference file, else the
    reference split of the data is present (unless its statistics are cached); with eval.likelihood the
    test split is present; WORKDIR/eval is writable (checked last). Raises the user errors of USER_ERRORS,
    each one line naming the field or path."""
    e = exp.f.eval
    if _uses_inception(exp):
        try:  # a missing file raises InceptionWeightsNotFoundError (a FileNotFoundError) naming the path
            evaluate.load_inception(e.inception_path or None)
        except ValueError as err:
            raise ConfigError(f"eval.inception_path: {err}") from err
    if e.stats_path and not _needs_reference(exp):
        raise ConfigError(f"eval.stats_path: {e.stats_path} is not read by this evaluation (it computes "
                          f"{', '.join(e.metrics)} on {exp.data.dataset}; a reference file serves fid / kid of images)")
    if _needs_reference(exp):
        ref = reference_of(exp, workdir)
        if ref.file:
            try:
                evaluate.check_statistics(ref.file)
            except ValueError as err:
                raise ConfigError(f"eval.stats_path: {err}") from err
        elif not evaluate.cache_ready(ref.cache, "kid" in e.metrics):
            load_dataset(exp.data, train=ref.split == "train")  # a DataError naming the path if absent
    if e.likelihood and exp.data.dataset != "toy":
        load_dataset(exp.data, train=False)
    validate.check_writable(workdir / "eval", workdir)


def _reference_images(exp: Experiment, workdir: Path, test: ImageData | None) -> torch.Tensor | None:
    """The real images the FID/KID reference is computed from: None when a reference file is used or the
    statistics are cached (or no reference is needed); the test split `test` when that is the reference."""
    if not _needs_reference(exp):
        return None
    ref = reference_of(exp, workdir)
    if ref.file or evaluate.cache_ready(ref.cache, "kid" in exp.f.eval.metrics):
        return None
    if ref.split == "test" and test is not None:
        return test.images
    return load_dataset(exp.data, train=ref.split == "train").images


def _inception_extra(exp: Experiment, workdir: Path, device: torch.device) -> Callable[[torch.Tensor],
                                                                                dict[str, np.ndarray]]:
    """Per-chunk Inception pool3 features and logits of samples (float32), on `device` in batches of
    eval.batch_size."""
    kwargs = evaluation_arguments(exp, workdir, None, device=device)
    model = evaluate.load_inception(kwargs["inception_path"], device=device)

    def extra(x: torch.Tensor) -> dict[str, np.ndarray]:
        feats, logits = evaluate.inception_features(model, x, kwargs["value_range"], kwargs["batch_size"], device)
        return {"features": feats.float().numpy(), "logits": logits.float().numpy()}

    return extra


def _inception_results(exp: Experiment, workdir: Path, drawn: sampling.Draw, all_chunks: list[Chunk],
                       test: ImageData | None, ref: FidReference | None, rt: Runtime) -> dict[str, Any]:
    """FID / KID / IS of the chunks' samples against `ref` (None: no FID/KID requested) and, with a FID, the
    record of what it was computed from (`evaluate.fid_protocol`, the split, file and cache). The FID
    statistics are float64 sums of x and xxᵀ over each process's chunk files, added up over the processes;
    rank 0 computes the metrics (KID and IS from the stored features and logits), the others get {}."""
    store = drawn.store
    stats = evaluate.StreamingStatistics(2048)
    for feats in store.iter(all_chunks[rt.rank::rt.world], "features"):
        stats.update(feats)
    stats = evaluate.StreamingStatistics.from_tensors(reduce_sum(stats.tensors(), rt))
    if not rt.is_main:
        return {}

    def stacked(key: str) -> Callable[[], torch.Tensor]:
        return lambda: torch.from_numpy(np.concatenate(list(store.iter(all_chunks, key))))

    split = ref.split if ref is not None and ref.split else None
    kwargs = evaluation_arguments(exp, workdir, _reference_images(exp, workdir, test), split=split, device=rt.device)
    out = evaluate.streamed_image_metrics(stats, stacked("features"), stacked("logits"), **kwargs)
    if ref is not None and "fid" in out:
        out.update(evaluate.fid_protocol(stats.n, ref.description, out.get("fid_reference_count"), ref.full))
        out.update(fid_reference_split=ref.split or None, fid_reference_file=ref.file or None,
                   fid_reference_cache=None if ref.cache is None else str(ref.cache))
    return out


def run_eval(exp: Experiment, workdir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Sample eval.n_samples and compute the metrics the data allows; rank 0 writes WORKDIR/eval/metrics.json.

    Everything but the checkpoint is checked first (`preflight_eval`). Sampling is sharded and resumable
    as in `run_sample` (chunks in WORKDIR/eval/<setting>/); for image data each process computes the
    Inception features of the chunks it draws. The FID reference is the full training split by default
    (eval.reference_split / reference_count) or the file eval.stats_path; metrics.json records it, the
    counts, and whether the FID is comparable with published ones (`evaluate.fid_protocol`)."""
    preflight_eval(exp, workdir)
    rt = runtime(exp)
    nets = networks(exp, rt.device)
    e = exp.f.eval
    inception = _uses_inception(exp)
    start = time.perf_counter()
    drawn, all_chunks, report = sampling.draw(
        exp, nets, e.n_samples, exp.f.seed + 2, rt, workdir / "eval", "eval", overwrite=overwrite,
        extra=_inception_extra(exp, workdir, rt.device) if inception else None,
        keys=("samples", "features", "logits") if inception else ("samples",))
    results: dict[str, Any] = {"n_samples": e.n_samples, "sampler": exp.sampler.method, "nfe": exp.sampler.nfe,
                               "sampling_seconds": time.perf_counter() - start,
                               "samples": str(drawn.store.directory.relative_to(workdir))}
    ref = reference_of(exp, workdir) if _needs_reference(exp) else None
    digits = exp.data.dataset == "digits"
    needs_test = e.likelihood or digits or (ref is not None and ref.split == "test")
    data = load_dataset(exp.data, train=False) if needs_test else None  # the test split
    if inception:
        results.update(_inception_results(exp, workdir, drawn, all_chunks, data, ref, rt))
    elif rt.is_main and exp.data.dataset in ("toy", "digits"):  # small: evaluated at once
        x = torch.from_numpy(np.concatenate(list(drawn.store.iter(all_chunks))))
        with torch.random.fork_rng(devices=[]):  # the metrics' random projections: the same in every run
            torch.manual_seed(exp.f.seed)
            results.update(evaluate.evaluate_samples(x, **evaluation_arguments(
                exp, workdir, None if data is None else data.images)))
    if e.likelihood:
        with batch_fits("eval.batch_size", e.batch_size, rt.device):
            results.update(likelihood_metrics(exp, nets[0], data, rt))
    if rt.is_main:
        atomic_write_json(workdir / "eval" / "metrics.json", results)
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list | dict | str)}, default=float))
        print(f"eval samples: {report.note(rt.world)}")
    barrier(rt)
    return results


def run_likelihood(exp: Experiment, workdir: Path) -> dict[str, Any]:
    """`likelihood_metrics` of the checkpoint on the test split, sharded over the processes; rank 0 writes
    WORKDIR/eval/likelihood.json."""
    rt = runtime(exp)
    with batch_fits("eval.batch_size", exp.f.eval.batch_size, rt.device):
        out = likelihood_metrics(exp, trained_network(exp, rt.device), load_dataset(exp.data, train=False), rt)
    if rt.is_main:
        atomic_write_json(workdir / "eval" / "likelihood.json", out)
        print(json.dumps(out))
    return out


def likelihood_metrics(exp: Experiment, net: torch.nn.Module, data: ImageData | None, rt: Runtime) -> dict[str, Any]:
    """Bits/dim of `data` (the test split; None: fresh toy points) under the probability-flow ODE and,
    for DDPM models on 8-bit data, the discrete VLB: eval.likelihood_batches batches of eval.batch_size,
    both through the network's one wrapper. Batch i is computed by process i mod world with the generator
    seeded `chunk_seed(seed, i)` (dequantisation and Hutchinson probes), so the result does not
    depend on the number of processes; per-process float64 sums are added up over all of them."""
    model = exp.wrap(net).eval()
    sigma_max, sigma_min = exp.noise.likelihood_range
    e, d = exp.f.eval, exp.data
    if data is None:  # continuous points: -log2 p / dim, a bin of width 1 adds nothing
        n_batches, bin_width = e.likelihood_batches, 1.0
    else:
        n_batches = min(e.likelihood_batches, -(-len(data.images) // e.batch_size))
        bin_width = (2.0 if d.centered else 1.0) / data.levels
    with_vlb = exp.vlb_variance is not None and data is not None and d.centered and data.levels == 256
    mine = list(range(n_batches))[rt.rank::rt.world]
    sums = torch.zeros(6, dtype=torch.float64)  # [Σ ode bpd, examples, Σ nfe, batches, Σ vlb bpd, vlb examples]
    bar = Progress(len(mine), progress_label("likelihood", rt), enabled=rt.is_main, unit="batches")
    for i in mine:
        g = torch.Generator(rt.device).manual_seed(chunk_seed(exp.f.seed, i))
        if data is None:
            raw = toy_data(d.toy, e.batch_size, torch.Generator().manual_seed(exp.f.seed + i)).to(rt.device)
            x = raw.float()
        else:
            raw = data.images[i * e.batch_size:(i + 1) * e.batch_size].to(rt.device)
            x = dequantize(raw, d.centered, g, data.levels)
        nats, nfe = log_likelihood(model, x, sigma_max, sigma_min, rtol=e.likelihood_rtol, atol=e.likelihood_rtol,
                                   exact_trace=e.exact_trace, generator=g, return_nfe=True)
        bpd = bits_per_dim(nats, int(np.prod(x.shape[1:])), bin_width)
        sums[:4] += torch.tensor([float(bpd.double().sum()), len(bpd), nfe, 1], dtype=torch.float64)
        if with_vlb:
            # x̂₀ clipped to the data's [-1, 1] in every term, as improved-diffusion's calc_bpd_loop does by
            # default: unclipped, the top step's x̂₀ of a cosine schedule (σ ≈ 8e4) is ±1e3 and its KL dominates
            total, _ = ddpm_vlb(model, (raw.float() / 127.5 - 1), exp.noise.schedule, exp.vlb_variance, g,
                                clip_denoised=True)
            sums[4:] += torch.tensor([float(total.double().sum()), len(total)], dtype=torch.float64)
        bar.update(1)
    bar.close()
    (sums,) = reduce_sum([sums], rt)
    out: dict[str, Any] = {"ode_bpd": float(sums[0] / sums[1]), "ode_nfe_mean": float(sums[2] / sums[3]),
                           "likelihood_examples": int(sums[1])}
    if data is None:
        out["ode_bpd_note"] = "toy data: -log2 p / dim of continuous points (no dequantisation)"
    if with_vlb:
        out["vlb_bpd"] = float(sums[4] / sums[5])
    return out


# ---------------------------------------------------------------------------------------------
# Post-hoc EMA (EDM2 §3)
# ---------------------------------------------------------------------------------------------


def run_phema(exp: Experiment, workdir: Path) -> Path:
    """Reconstruct the EMA of phema.sigma_rel (or of a classic half-life of phema.halflife_kimg thousand
    images) from the run's power-EMA snapshots (`ema.posthoc_ema`, EDM2 Appendix C.3) and write it as a
    checkpoint, WORKDIR/phema/ema-<width>.pt, that --mode=sample|eval takes with --checkpoint=."""
    p, t = exp.f.phema, exp.f.training
    snaps = phema_snapshots(workdir)
    step = max(s.step for s in snaps)
    if p.halflife_kimg > 0:
        state = posthoc_ema(snaps, halflife=p.halflife_kimg * 1000 / t.batch_size)
        name = f"ema-halflife{p.halflife_kimg:g}kimg.pt"
    else:
        state = posthoc_ema(snaps, p.sigma_rel)
        name = f"ema-{p.sigma_rel:.3f}.pt"
    exp.network().load_state_dict(state)  # the run's network: a mismatch is an error now, not when sampling
    out = phema_path(workdir, step).with_name(name)  # beside the snapshots
    save_checkpoint(out, {"model": state, "ema": state, "step": step, "config": exp.record})
    print(f"post-hoc EMA at step {step} from {len(snaps)} snapshots -> {out}")
    return out
