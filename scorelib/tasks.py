"""What each `main.py --mode` does: train, sample, eval, likelihood, bench."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import build
from .checkpoint import CheckpointError, atomic_write_bytes, list_checkpoints, load_network
from .data import DataError, ImageData, save_image_grid, to_unit_range
from .train import TrainingError, sample_images, setup_runtime, train

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
    """Train (resuming from the newest checkpoint); with training.eval_at_end also sample and evaluate."""
    rt = setup_runtime(config)
    t = build.train_settings(config)
    if t.eval_at_end and t.target == "model":
        preflight_eval(config, workdir)  # a missing weights file or data set found before training, not after
    summary = train(config, workdir)
    if t.eval_at_end and rt.is_main and t.target == "model":
        run_sample(config, workdir)
        run_eval(config, workdir)
    if rt.is_main:
        print(f"trained {summary['steps']} steps in {workdir}")


def run_sample(config: Any, workdir: Path) -> Path:
    """Draw sampling.n_samples with the configured sampler from the newest checkpoint's EMA weights;
    write WORKDIR/samples/<method>.png and .npz (samples in model space, float32)."""
    rt = setup_runtime(config)
    net, config = trained_network(config, checkpoint_source(config, workdir), rt.device)
    s, d = build.sample_settings(config), build.data_spec(config)
    start = time.perf_counter()
    x = sample_images(config, net, s.n_samples, rt.device, seed=s.seed + 1,
                      classifier=guidance_classifier(config, rt.device))
    elapsed = time.perf_counter() - start
    name = s.method
    out = workdir / "samples" / f"{name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda f: np.savez(f, samples=x.float().cpu().numpy()))
    if d.dataset == "toy":
        _scatter_png(x, workdir / "samples" / f"{name}.png")
    else:
        save_image_grid(to_unit_range(x[:256], d.centered), workdir / "samples" / f"{name}.png")
    n, nfe = s.n_samples, build.sampling_nfe(config)
    print(f"{n} samples with {name} ({nfe if nfe > 0 else 'adaptive'} NFE) in {elapsed:.1f}s -> {out}")
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


def _inception_results(config: Any, workdir: Path, x: torch.Tensor, test: ImageData | None,
                       ref: build.FidReference | None, device: torch.device) -> dict[str, Any]:
    """FID / KID / IS of the samples x against `ref` (None: no FID/KID requested) and, with a FID, the
    record of what it was computed from (`evaluate.fid_protocol`, the split, file and cache)."""
    from . import evaluate

    split = ref.split if ref is not None and ref.split else None
    kwargs = build.evaluation_kwargs(config, workdir, _reference_images(config, workdir, test), split=split,
                                     device=device)
    out = evaluate.evaluate_samples(x, **kwargs)
    if ref is not None and "fid" in out:
        out.update(evaluate.fid_protocol(len(x), ref.description, out.get("fid_reference_count"), ref.full))
        out.update(fid_reference_split=ref.split or None, fid_reference_file=ref.file or None,
                   fid_reference_cache=None if ref.cache is None else str(ref.cache))
    return out


def run_eval(config: Any, workdir: Path) -> dict[str, Any]:
    """Sample eval.n_samples and compute the metrics the data allows; write WORKDIR/eval/metrics.json.

    Everything but the checkpoint is checked first (`preflight_eval`). The FID reference is the full
    training split by default (eval.reference_split / reference_count) or the file eval.stats_path;
    metrics.json records it, the counts, and whether the FID is comparable with published ones
    (`evaluate.fid_protocol`)."""
    from . import evaluate

    preflight_eval(config, workdir)
    rt = setup_runtime(config)
    requested = build.data_spec(config)
    net, config = trained_network(config, checkpoint_source(config, workdir), rt.device)
    if build.data_spec(config) != requested:  # the checkpoint's data fields replaced the flags': check again
        preflight_eval(config, workdir)
    config = build.for_evaluation(config)
    e = build.eval_settings(config)
    start = time.perf_counter()
    x = sample_images(config, net, e.n_samples, rt.device, seed=e.seed + 2,
                      classifier=guidance_classifier(config, rt.device))
    results: dict[str, Any] = {"n_samples": e.n_samples, "sampler": build.sample_settings(config).method,
                               "nfe": build.sampling_nfe(config), "sampling_seconds": time.perf_counter() - start}
    ref = build.fid_reference(config, workdir) if _needs_reference(config) else None
    digits = build.data_spec(config).dataset == "digits"
    needs_test = e.likelihood or digits or (ref is not None and ref.split == "test")
    data = build.create_dataset(config, train=False) if needs_test else None  # the test split
    if _uses_inception(config):
        results.update(_inception_results(config, workdir, x, data, ref, rt.device))
    else:
        results.update(evaluate.evaluate_samples(x, **build.evaluation_kwargs(config, workdir,
                                                                              None if data is None else data.images)))
    if e.likelihood:
        results.update(likelihood_metrics(config, net, data, rt.device))
    _write_json(workdir / "eval" / "metrics.json", results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list | dict)}, default=float))
    return results


def run_likelihood(config: Any, workdir: Path) -> dict[str, Any]:
    """`likelihood_metrics` of the newest checkpoint on the test split; WORKDIR/eval/likelihood.json."""
    rt = setup_runtime(config)
    net, config = trained_network(config, checkpoint_source(config, workdir), rt.device)
    out = likelihood_metrics(config, net, build.create_dataset(config, train=False), rt.device)
    _write_json(workdir / "eval" / "likelihood.json", out)
    print(json.dumps(out))
    return out


def likelihood_metrics(config: Any, net: torch.nn.Module, data: ImageData | None,
                       device: torch.device) -> dict[str, Any]:
    """Bits/dim of `data` (the test split; None: fresh toy points) under the probability-flow ODE and,
    for DDPM models on 8-bit data, the discrete VLB: eval.likelihood_batches batches of eval.batch_size."""
    from .likelihood import bits_per_dim, ddpm_vlb, dequantize, log_likelihood

    score = build.create_score_model(config, net).eval()
    sigma_max, sigma_min = build.likelihood_sigma_range(config)
    e, d = build.eval_settings(config), build.data_spec(config)
    g = torch.Generator(device).manual_seed(e.seed)
    ode_bpd, vlb_bpd, nfes = [], [], []
    if data is None:
        from .data import toy_data

        batches = [toy_data(d.toy, e.batch_size, torch.Generator().manual_seed(e.seed + i))
                   for i in range(e.likelihood_batches)]
        bin_width = None
    else:
        batches = [data.images[i * e.batch_size:(i + 1) * e.batch_size] for i in range(e.likelihood_batches)]
        batches = [b for b in batches if len(b)]
        bin_width = (2.0 if d.centered else 1.0) / (256 if data.levels == 256 else data.levels)
    for raw in batches:
        raw = raw.to(device)
        if data is None:
            x = raw.float()
        elif data.levels == 256:
            x = dequantize(raw, d.centered, g)
        else:  # float data with `levels` levels in [0, 1]: dequantise within its bins
            u = torch.rand(raw.shape, generator=g, device=raw.device)
            x = (raw.float() * (data.levels - 1) + u) / data.levels
            x = 2 * x - 1 if d.centered else x
        nats, nfe = log_likelihood(score, x, sigma_max, sigma_min, rtol=e.likelihood_rtol, atol=e.likelihood_rtol,
                                   exact_trace=e.exact_trace, generator=g, return_nfe=True)
        dims = int(np.prod(x.shape[1:]))
        ode_bpd.append(bits_per_dim(nats, dims, bin_width) if bin_width else -nats / (dims * math.log(2)))
        nfes.append(nfe)
        if e.vlb_variance is not None and data is not None and d.centered and data.levels == 256:
            total, _ = ddpm_vlb(net, (raw.float() / 127.5 - 1), build.create_schedule(config), e.vlb_variance, g,
                                clip_denoised=e.vlb_clip_denoised)
            vlb_bpd.append(total)
    out: dict[str, Any] = {"ode_bpd": float(torch.cat(ode_bpd).mean()), "ode_nfe_mean": float(np.mean(nfes)),
                           "likelihood_examples": int(sum(len(b) for b in ode_bpd))}
    if data is None:
        out["ode_bpd_note"] = "toy data: -log2 p / dim of continuous points (no dequantisation)"
    if vlb_bpd:
        out["vlb_bpd"] = float(torch.cat(vlb_bpd).mean())
    return out


def run_bench(config: Any, workdir: Path, quick: bool = False) -> None:
    """The sampler benchmark on the config's model (see scorelib.bench); `quick`: the small grid."""
    from . import bench

    bench.run(config, workdir, quick=quick)
