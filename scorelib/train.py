"""Training loop: Adam with warm-up and clipping, EMA, AMP on GPU, optional torch.compile,
data-parallel training under torchrun, atomic checkpoints and exact resume.

Determinism: the batch, the noise and the dropout masks of step k are functions of (seed, k, rank)
alone, and checkpoints hold model, EMA, optimizer, timestep-sampler and RNG states, so a resumed
run on the CPU ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .build import DataSpec, Experiment, LossFn, load_dataset
from .checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_newest,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import ImageData, prepare_batch, save_image_grid, toy_data
from .metrics.fid import to_unit_range
from .runtime import Runtime, setup_runtime, step_seed
from .utils import format_duration


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, bad setup); the message says why and what was kept."""


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class Batches:
    """The batch of step k: positions [kB, (k+1)B) of an endless sequence of per-epoch permutations
    (seeded by epoch), this rank's slice of it, prepared on the device."""

    def __init__(self, spec: DataSpec, seed: int, batch_size: int, data: ImageData | None, rt: Runtime):
        self.spec, self.seed, self.data, self.rt = spec, seed, data, rt
        if batch_size % rt.world:
            raise TrainingError(f"training.batch_size={batch_size} is not divisible by the {rt.world} processes")
        self.global_batch, self.local_batch = batch_size, batch_size // rt.world
        if data is not None:
            self.images = data.images.to(rt.device)
            self.labels = None if data.labels is None else data.labels.to(rt.device)
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 31 + epoch)
            self._perms = {epoch: torch.randperm(len(self.data), generator=g)}
        return self._perms[epoch]

    def __call__(self, step: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        d = self.spec
        if self.data is None:
            cpu_g = torch.Generator().manual_seed(step_seed(self.seed, step, self.rt.rank))
            return toy_data(d.toy, self.local_batch, cpu_g).to(self.rt.device), None
        n = len(self.data)
        start = step * self.global_batch + self.rt.rank * self.local_batch
        pos = torch.arange(start, start + self.local_batch)
        idx = torch.cat([self._perm(int(e))[pos[pos // n == e] % n] for e in torch.unique(pos // n)])
        idx = idx.to(self.rt.device)
        x = prepare_batch(self.images[idx], self.data.levels, d.random_flip, d.uniform_dequantization, d.centered, g)
        return x, None if self.labels is None else self.labels[idx]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def ema_rate_at(rate: float, step: int) -> float:
    """The EMA rate after `step` updates, warmed up as min(rate, (1 + n)/(10 + n)) (TensorFlow's
    ExponentialMovingAverage with num_updates), so short runs do not keep the initial weights."""
    return min(rate, (1 + step) / (10 + step))


def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """θ_ema ← rate·θ_ema + (1 - rate)·θ; buffers copied."""
    with torch.no_grad():
        e_params = [p for p in ema.parameters()]
        m_params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(e_params, m_params, 1.0 - rate)
        for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
            eb.copy_(mb)


def sample_images(exp: Experiment, net: nn.Module, n: int, device: torch.device, seed: int = 0,
                  classifier: nn.Module | None = None, batch_size: int | None = None) -> Tensor:
    """n samples of the experiment's sampler from network `net` (in eval mode), model-space [n, ...],
    in batches of `batch_size` (default sampling.batch_size), all drawn from one generator seeded
    `seed`. Class-conditional models get `exp.guidance`'s labels and guidance."""
    score = exp.to_score(net).eval()
    size = batch_size or exp.sample.batch_size
    g = torch.Generator(device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, size):
            b = min(size, n - start)
            y = exp.guidance.labels(b, g, device)
            out.append(exp.sampler(exp.guidance.guided(score, y, classifier), (b, *exp.data.shape), g, device))
    return torch.cat(out)


def _metrics_writer(workdir: Path, resume_step: int) -> Any:
    """Append-mode metrics.jsonl with lines beyond the resumed step removed."""
    path = workdir / "metrics.jsonl"
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <=
                resume_step]
        path.write_text("".join(f"{ln}\n" for ln in keep))
    return open(path, "a", buffering=1)


def _tensorboard(workdir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(workdir / "tensorboard"))


def _progress(total: int, initial: int, enabled: bool) -> Any:
    return tqdm(total=total, initial=initial, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True,
                desc="train")


def _snapshot(exp: Experiment, workdir: Path, step: int, net: nn.Module, ema: nn.Module,
              opt: torch.optim.Optimizer, loss_fn: LossFn, keep: int) -> Path:
    state: dict[str, Any] = {"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                             "step": step, "config": exp.record, "rng": rng_state()}
    if loss_fn.timesteps is not None and hasattr(loss_fn.timesteps, "state_dict"):
        state["timesteps"] = loss_fn.timesteps.state_dict()
    path = checkpoint_path(workdir / "checkpoints", step)
    save_checkpoint(path, state)
    prune_checkpoints(workdir / "checkpoints", keep)
    return path


def train(exp: Experiment, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) the experiment's network in `workdir`. Returns a summary dict.

    Writes WORKDIR/checkpoints/checkpoint_<step>.pt (the last `training.keep_checkpoints`),
    WORKDIR/samples/step_<step>.png (EMA samples at every snapshot), WORKDIR/metrics.jsonl, and
    WORKDIR/config.json; only rank 0 writes.
    """
    if exp.loss is None:
        raise TrainingError("the experiment has no training objective (build it with mode='train')")
    t, spec = exp.train, exp.data
    rt = setup_runtime(t.device, t.threads)
    workdir = Path(workdir)
    data = load_dataset(spec)
    batches = Batches(spec, t.seed, t.batch_size, data, rt)
    torch.manual_seed(t.seed)  # the same initial weights on every rank and in every run
    net = exp.network().to(rt.device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = exp.optimizer(net.parameters())
    loss_fn = exp.loss.fresh()
    start = 0
    resumed = load_newest(workdir / "checkpoints", map_location=rt.device)
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        ema.load_state_dict(resumed["ema"])
        opt.load_state_dict(resumed["optimizer"])
        if "timesteps" in resumed and hasattr(loss_fn.timesteps, "load_state_dict"):
            loss_fn.timesteps.load_state_dict(resumed["timesteps"])
        set_rng_state(resumed["rng"])
        start = int(resumed["step"])
    if rt.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(exp.record)
    train_model: nn.Module = net
    if rt.world > 1:
        train_model = nn.parallel.DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type ==
                                                          "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)
    objective = loss_fn.bind(train_model)  # the σ-space wrapper, made once
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if t.amp and rt.device.type == "cuda"
                else contextlib.nullcontext())
    metrics = _metrics_writer(workdir, start) if rt.is_main else None
    board = _tensorboard(workdir) if rt.is_main else None
    bar = _progress(t.n_iters, start, rt.is_main)
    window_loss = torch.zeros((), device=rt.device, dtype=torch.float64)
    window_start, window_steps, last_good = time.perf_counter(), 0, start
    run_start, plain_progress = window_start, rt.is_main and not sys.stderr.isatty()
    grad_norm = torch.zeros((), device=rt.device)
    net.train()
    try:
        for step in range(start, t.n_iters):
            seed = step_seed(t.seed, step, rt.rank)
            torch.manual_seed(seed)  # dropout masks depend on the step only
            g = torch.Generator(rt.device).manual_seed(seed)
            x, y = batches(step, g)
            lr = exp.learning_rate(step)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast:
                loss = objective(x, y if t.uses_labels else None, g).float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
            opt.step()
            ema_update(ema, net, ema_rate_at(t.ema_rate, step))
            window_loss += loss.detach()
            window_steps += 1
            done = step + 1
            last = done == t.n_iters
            if done % t.log_freq == 0 or done % t.snapshot_freq == 0 or last:
                total = window_loss.clone()
                if rt.world > 1:
                    dist.all_reduce(total)
                    total /= rt.world
                mean_loss = float(total) / window_steps
                if not math.isfinite(mean_loss):
                    kept = list_checkpoints(workdir / "checkpoints")
                    raise TrainingError(
                        f"the loss became {mean_loss} between steps {last_good} and {done}; stopped without saving. "
                        + (f"The last good checkpoint is {kept[-1][1]}." if kept else "No checkpoint was written."))
                last_good = done
                elapsed = time.perf_counter() - window_start
                record = {"step": done, "loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                          "it_per_s": window_steps / max(elapsed, 1e-9)}
                if metrics is not None:
                    metrics.write(json.dumps(record) + "\n")
                if board is not None:
                    for k, v in record.items():
                        if k != "step":
                            board.add_scalar(k, v, done)
                bar.set_postfix(loss=f"{mean_loss:.4g}")
                if plain_progress:  # no terminal for the bar (a log file, a batch job): one line per log_freq
                    rate = (done - start) / max(time.perf_counter() - run_start, 1e-9)
                    print(f"train: step {done}/{t.n_iters} ({100 * done / t.n_iters:.0f}%), loss {mean_loss:.4g}, "
                          f"{record['it_per_s']:.3g} it/s, ETA {format_duration((t.n_iters - done) / rate)}",
                          file=sys.stderr, flush=True)
                window_loss.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if (done % t.snapshot_freq == 0 or last) and rt.is_main:
                _snapshot(exp, workdir, done, net, ema, opt, loss_fn, t.keep_checkpoints)
                if t.snapshot_samples > 0 and spec.dataset != "toy" and t.target == "model":
                    imgs = sample_images(exp, ema, t.snapshot_samples, rt.device, seed=t.seed)
                    save_image_grid(to_unit_range(imgs, spec.value_range), workdir / "samples" /
                                    f"step_{done:08d}.png")
            bar.update(1)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if board is not None:
            board.close()
    if rt.world > 1:
        dist.barrier()
    return {"steps": t.n_iters, "resumed_from": start, "workdir": str(workdir)}
