"""Training loop: Adam with warm-up and clipping, EMA, AMP on GPU, optional torch.compile,
data-parallel training under torchrun, atomic checkpoints and exact resume.

Determinism: the batch, the noise and the dropout masks of step k are functions of (seed, k, rank)
alone, and checkpoints hold model, EMA, optimizer, timestep-sampler and RNG states, so a resumed
run on the CPU ends with the same weights as an uninterrupted one.

Nothing is lost: besides every `training.snapshot_freq` steps, a checkpoint is written every
`training.checkpoint_minutes` of wall time and when SIGTERM or SIGINT arrives (SLURM and Kubernetes send
SIGTERM before they kill), after the step in flight; the run then stops with `TrainingInterrupted`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .builder import Experiment
from .builder.datasets import load_dataset
from .builder.objectives import LossFn
from .checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_newest,
    phema_path,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import Batches, save_image_grid
from .ema import PowerEMA, ema_rate, ema_update
from .metrics.fid import to_unit_range
from .runtime import Runtime, batch_fits, setup_runtime, step_seed, stop_requested, stop_signals
from .sampling import sample_images
from .utils import format_duration


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, bad setup); the message says why and what was kept."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint of the step reached was written first."""


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


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


@dataclass
class Run:
    """What a training run holds: the network, its EMA, the optimiser, the objective (with its timestep
    sampler's state) and the step it starts from."""

    net: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    loss_fn: LossFn
    start: int = 0
    last_loss: Tensor | None = None
    phema: PowerEMA | None = None  # EDM2's power-function EMAs (training.phema_sigma_rels)

    def state(self, exp: Experiment, step: int) -> dict[str, Any]:
        """The checkpoint of step `step`: model, EMA, optimiser, timestep sampler and RNG states, the config."""
        state: dict[str, Any] = {"model": self.net.state_dict(), "ema": self.ema.state_dict(),
                                 "optimizer": self.opt.state_dict(), "step": step, "config": exp.record,
                                 "rng": rng_state()}
        if self.loss_fn.timesteps is not None and hasattr(self.loss_fn.timesteps, "state_dict"):
            state["timesteps"] = self.loss_fn.timesteps.state_dict()
        if self.phema is not None:
            state["phema"] = self.phema.state_dict()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint `state` (see `state`)."""
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        if "timesteps" in state and hasattr(self.loss_fn.timesteps, "load_state_dict"):
            self.loss_fn.timesteps.load_state_dict(state["timesteps"])
        if self.phema is not None:
            self.phema.load_state_dict(state["phema"])
        set_rng_state(state["rng"])
        self.start = int(state["step"])


def _new_run(exp: Experiment, workdir: Path, rt: Runtime) -> Run:
    torch.manual_seed(exp.f.seed)  # the same initial weights on every rank and in every run
    net = exp.network().to(rt.device)
    run = Run(net, copy.deepcopy(net).eval().requires_grad_(False), exp.optimizer(net.parameters()), exp.loss.fresh())
    if exp.f.training.phema_sigma_rels:
        run.phema = PowerEMA(net, exp.f.training.phema_sigma_rels)
    resumed = load_newest(workdir / "checkpoints", map_location=rt.device)
    if resumed is not None:
        run.restore(resumed)
    return run


def _save(exp: Experiment, workdir: Path, run: Run, step: int) -> Path:
    path = checkpoint_path(workdir / "checkpoints", step)
    save_checkpoint(path, run.state(exp, step))
    prune_checkpoints(workdir / "checkpoints", exp.f.training.keep_checkpoints)
    return path


def _save_phema(exp: Experiment, workdir: Path, run: Run, step: int) -> None:
    """Store every tracked power-function EMA at `step` (EDM2 §3.2), for `--mode=phema` to combine."""
    snaps = [s._asdict() for s in run.phema.snapshots()]
    save_checkpoint(phema_path(workdir, step), {"snapshots": snaps, "step": step, "config": exp.record})


class _Log:
    """The loss window between log lines: metrics.jsonl, tensorboard, the bar or plain progress lines."""

    def __init__(self, workdir: Path, t: Any, start: int, rt: Runtime):
        self.t, self.rt, self.start = t, rt, start
        self.metrics = _metrics_writer(workdir, start) if rt.is_main else None
        self.board = _tensorboard(workdir) if rt.is_main else None
        self.bar = tqdm(total=t.n_iters, initial=start, disable=not (rt.is_main and sys.stderr.isatty()),
                        dynamic_ncols=True, desc="train")
        self.plain = rt.is_main and not sys.stderr.isatty()
        self.loss = torch.zeros((), device=rt.device, dtype=torch.float64)
        self.steps, self.last_good = 0, start
        self.t0 = self.window_start = time.perf_counter()

    def step(self, loss: Tensor) -> None:
        self.loss += loss.detach()
        self.steps += 1
        self.bar.update(1)

    def write(self, done: int, lr: float, grad_norm: Tensor, workdir: Path) -> None:
        total = self.loss.clone()
        if self.rt.world > 1:
            dist.all_reduce(total)
            total /= self.rt.world
        mean = float(total) / self.steps
        if not math.isfinite(mean):
            kept = list_checkpoints(workdir / "checkpoints")
            raise TrainingError(
                f"the loss became {mean} between steps {self.last_good} and {done}; stopped without saving. "
                + (f"The last good checkpoint is {kept[-1][1]}." if kept else "No checkpoint was written."))
        self.last_good = done
        record = {"step": done, "loss": mean, "lr": lr, "grad_norm": float(grad_norm),
                  "it_per_s": self.steps / max(time.perf_counter() - self.window_start, 1e-9)}
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
        if self.board is not None:
            for k, v in record.items():
                if k != "step":
                    self.board.add_scalar(k, v, done)
        self.bar.set_postfix(loss=f"{mean:.4g}")
        if self.plain:  # no terminal for the bar (a log file, a batch job): one line per log_freq
            n = self.t.n_iters
            rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            print(f"train: step {done}/{n} ({100 * done / n:.0f}%), loss {mean:.4g}, {record['it_per_s']:.3g} it/s, "
                  f"ETA {format_duration((n - done) / rate)}", file=sys.stderr, flush=True)
        self.loss.zero_()
        self.window_start, self.steps = time.perf_counter(), 0

    def close(self) -> None:
        self.bar.close()
        for h in (self.metrics, self.board):
            if h is not None:
                h.close()


def _snapshot_samples(exp: Experiment, workdir: Path, run: Run, done: int, rt: Runtime) -> None:
    t = exp.f.training
    if t.snapshot_samples > 0 and exp.data.dataset != "toy" and t.target == "model":
        imgs = sample_images(exp, run.ema, t.snapshot_samples, rt.device, seed=exp.f.seed)
        save_image_grid(to_unit_range(imgs, exp.data.value_range), workdir / "samples" / f"step_{done:08d}.png")


def train(exp: Experiment, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) the experiment's network in `workdir`. Returns a summary dict.

    Writes WORKDIR/checkpoints/checkpoint_<step>.pt (the last `training.keep_checkpoints`),
    WORKDIR/samples/step_<step>.png (EMA samples at every snapshot), WORKDIR/metrics.jsonl, and
    WORKDIR/config.json; only rank 0 writes.
    """
    if exp.loss is None:
        raise TrainingError("the experiment has no training objective (build it with mode='train')")
    t, workdir = exp.f.training, Path(workdir)
    rt = setup_runtime(exp.f.device, t.threads)
    d, data = exp.data, load_dataset(exp.data)
    try:  # Batches' own rule (a global batch that the processes share evenly), named by its field
        batches = Batches(data, exp.f.seed, t.batch_size, rt.rank, rt.world, rt.device, d.toy, d.random_flip,
                          d.uniform_dequantization, d.centered)
    except ValueError as e:
        raise TrainingError(f"training.batch_size={t.batch_size}: {e}") from None
    run = _new_run(exp, workdir, rt)
    if rt.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(exp.record)
    model: nn.Module = run.net
    if rt.world > 1:
        model = nn.parallel.DistributedDataParallel(run.net, device_ids=[rt.device.index] if rt.device.type ==
                                                    "cuda" else None)
    objective = run.loss_fn.bind(torch.compile(model) if t.compile else model)  # the σ-space wrapper, made once
    log = _Log(workdir, t, run.start, rt)
    saved_at = time.monotonic()
    try:
        with stop_signals() as caught:
            for step in range(run.start, t.n_iters):
                with batch_fits("training.batch_size", t.batch_size, rt.device):  # out of memory: one line
                    lr, grad_norm = _train_step(exp, run, objective, batches, step, rt)
                log.step(run.last_loss)
                done = step + 1
                if done % t.log_freq == 0 or done % t.snapshot_freq == 0 or done == t.n_iters:
                    log.write(done, lr, grad_norm, workdir)
                stop = stop_requested(caught, rt)
                due = t.checkpoint_minutes > 0 and time.monotonic() - saved_at > 60 * t.checkpoint_minutes
                if rt.is_main and run.phema is not None and (done % (t.phema_snapshot_freq or t.snapshot_freq) == 0
                                                              or done == t.n_iters):
                    _save_phema(exp, workdir, run, done)
                if rt.is_main and (done % t.snapshot_freq == 0 or done == t.n_iters or stop or due):
                    _save(exp, workdir, run, done)
                    saved_at = time.monotonic()
                    if not stop and not due:
                        _snapshot_samples(exp, workdir, run, done, rt)
                if stop:
                    raise TrainingInterrupted(f"interrupted by signal {caught[0] if caught else '?'} at step {done}; "
                                              f"the checkpoint of step {done} is in {workdir / 'checkpoints'}: "
                                              "rerun the same command to resume")
    finally:
        log.close()
    if rt.world > 1:
        dist.barrier()
    return {"steps": t.n_iters, "resumed_from": run.start, "workdir": str(workdir)}


def _train_step(exp: Experiment, run: Run, objective: Any, batches: Batches, step: int,
                rt: Runtime) -> tuple[float, Tensor]:
    """One optimiser step: the batch and noise of `step`, the learning rate, AMP, clipping, the EMA."""
    t, f = exp.f.training, exp.f
    seed = step_seed(f.seed, step, rt.rank)
    torch.manual_seed(seed)  # dropout masks depend on the step only
    g = torch.Generator(rt.device).manual_seed(seed)
    x, y = batches(step, g)
    lr = exp.learning_rate(step)
    for group in run.opt.param_groups:
        group["lr"] = lr
    amp = t.amp and rt.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
        loss = objective(x, y if exp.uses_labels else None, g).float().mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = f.optim.grad_clip if f.optim.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.net.parameters(), clip)
    run.opt.step()
    rate = ema_rate(step, t.batch_size, f.model.ema_rate, t.ema_halflife_kimg, t.ema_rampup_ratio)
    ema_update(run.ema, run.net, rate)
    if run.phema is not None:
        run.phema.update(step + 1)  # t = optimiser steps done (EDM2 phema.py counts from 1)
    run.last_loss = loss.detach()
    return lr, grad_norm
