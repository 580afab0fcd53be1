"""Measuring a benchmark row: the model sampled from, the counting score, peak memory, the tight-ODE
reference solution, and the exchange of per-batch results between the processes of a torchrun job."""

from __future__ import annotations

import copy
import re
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..builder import Experiment
from ..checkpoint import CheckpointError
from ..data import toy_mixture
from ..runtime import Runtime
from ..samplers import probability_flow
from ..samplers._common import CountingScore
from ..tasks import guidance_classifier, guide_network, trained_network
from ..utils import ScoreFn

MIXTURE_TOYS = ("gmm8", "grid25", "two_modes")


class Meter(CountingScore):
    """Counts score evaluations and checks that the first one sees the shared initial noise (as the first
    rows of its batch: `fast_sample` appends its probe points after them)."""

    def __init__(self, score: ScoreFn, x0: Tensor):
        super().__init__(score)
        self.x0 = x0

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        head = x[: len(self.x0)]
        if self.nfe == 0 and (head.shape != self.x0.shape or not torch.allclose(
                head, self.x0, rtol=1e-4, atol=1e-6 * float(self.x0.abs().max()))):
            raise RuntimeError("the sampler did not start from the shared initial noise σ_max·z")
        return super().__call__(x, sigma, **kwargs)


def _read_status_kib(field_name: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field_name}:\s+(\d+)", text, re.MULTILINE).group(1))


class PeakMemory:
    """Peak memory of a block above its level at the start, in MiB. CUDA: max_memory_allocated minus
    memory_allocated at the start. CPU on Linux: the peak resident set size (VmHWM, reset through
    /proc/self/clear_refs) minus the RSS at the start (resolution about 0.25 MiB per thread). Elsewhere:
    the growth of getrusage's ru_maxrss, a process-lifetime peak, so a run below an earlier run's peak
    shows 0."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "CUDA max_memory_allocated above the start"
        elif self._reset_hwm():
            self.kind = "CPU peak RSS (VmHWM, reset per run) above the start"
        else:
            self.kind = "CPU ru_maxrss growth (process-lifetime peak)"
        self.start = 0.0

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _read_status_kib("VmHWM")
            return True
        except (OSError, AttributeError):
            return False

    @staticmethod
    def _maxrss_mib() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.kind.startswith("CPU peak RSS"):
            self._reset_hwm()
            self.start = _read_status_kib("VmRSS") / 1024
        else:
            self.start = self._maxrss_mib()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
        elif self.kind.startswith("CPU peak RSS"):
            # the kernel's RSS counters lag by up to 64 pages per thread: clamp the noise at 0
            self.peak = max(0.0, _read_status_kib("VmHWM") / 1024 - self.start)
        else:
            self.peak = self._maxrss_mib() - self.start


@dataclass
class Model:
    """What the benchmark samples from: a score function and where it came from."""

    score: ScoreFn
    source: str
    exact: Any | None = None  # the GaussianMixture when the score is exact
    net: torch.nn.Module | None = None


def load_model(exp: Experiment, workdir: Path, device: torch.device) -> Model:
    """The newest checkpoint's EMA network (`sampling.checkpoint` or WORKDIR/checkpoints; the builder
    laid its stored architecture over the config) as a σ-space score model; else the exact mixture of a
    mixture toy config."""
    if exp.source is not None:
        net = trained_network(exp, device)
        return Model(exp.wrap(net).eval(), f"checkpoint {exp.source} (EMA weights)", None, net)
    d = exp.data
    if d.dataset == "toy" and d.toy in MIXTURE_TOYS:
        gmm = toy_mixture(d.toy)
        return Model(gmm, f"exact {d.toy} mixture (no checkpoint in {workdir / 'checkpoints'})", gmm, None)
    raise CheckpointError(f"no checkpoints in {workdir / 'checkpoints'} and no exact score for this config; train "
                          f"first (--mode=train) or set --config.sampling.checkpoint")


def _guided(exp: Experiment, net: torch.nn.Module | None) -> bool:
    """Whether the score of a checkpoint's network takes labels (and maybe guidance)."""
    return net is not None and (exp.guidance.labelled or exp.guidance.kind == "auto")


def batch_scores(exp: Experiment, score: ScoreFn, net: torch.nn.Module | None, device: torch.device, n: int,
                 seed: int) -> Callable[[int, int], ScoreFn]:
    """`scores(start, b)`: the score of samples [start, start+b). Class-conditional models get the
    experiment's labels (drawn once for all n) and guidance, as in `sampling.sample_images`."""
    if not _guided(exp, net):
        return lambda start, b: score
    raw, guide = guidance_classifier(exp, device), guide_network(exp, device)
    classifier = None if raw is None else exp.wrap_classifier(raw).eval()
    labels = exp.guidance.labels(n, torch.Generator().manual_seed(seed), torch.device("cpu"))

    def scores(start: int, b: int) -> ScoreFn:
        y = None if labels is None else labels[start:start + b].to(device)
        return exp.guidance.guided(score, y, classifier, guide)

    return scores


def reference_solution(exp: Experiment, model: Model, x0s: Sequence[Tensor], starts: Sequence[int], n: int, seed: int,
               device: torch.device, tol: float) -> tuple[list[Tensor], list[int], str]:
    """The probability-flow ODE solution (dopri5 at rtol = atol = tol, then the Tweedie step) from each
    batch of initial noise: in float64 (a float64 copy of a network), float32 for guided models. Returns
    the per-batch solutions (float64), the per-batch NFE and a description of the solve."""
    guided = _guided(exp, model.net)
    if model.exact is not None or guided:
        scores = batch_scores(exp, model.score, model.net, device, n, seed)
        dtype = torch.float32 if guided else torch.float64
    else:
        net64 = copy.deepcopy(model.net).double()
        score64 = exp.wrap(net64).eval()
        scores, dtype = (lambda start, b: score64), torch.float64
    sigma_max, sigma_min = exp.noise.sigma_range
    outs, nfes = [], []
    with torch.no_grad():
        for start, x0 in zip(starts, x0s, strict=True):
            out, k = probability_flow(scores(start, len(x0)), x0.to(dtype), sigma_max, sigma_min, rtol=tol, atol=tol,
                                      return_nfe=True)
            outs.append(out.double())
            nfes.append(int(k))
    return outs, nfes, (f"probability_flow dopri5, rtol=atol={tol:g}, {str(dtype).removeprefix('torch.')}, "
                        f"+ Tweedie step at σ_min")


def all_batches(rt: Runtime, mine: Sequence[int], parts: Sequence[Any]) -> list[Any]:
    """Under torchrun: the per-batch values of every process (parts[j] belongs to batch mine[j]), in
    batch order, on every process; tensors travel through the CPU. One process: `parts` itself."""
    if rt.world == 1:
        return list(parts)
    local = [(k, p.cpu() if isinstance(p, Tensor) else p) for k, p in zip(mine, parts, strict=True)]
    everyone: list[Any] = [None] * rt.world
    dist.all_gather_object(everyone, local)
    return [p for _, p in sorted((kp for r in everyone for kp in r), key=lambda kp: kp[0])]


def max_over_processes(rt: Runtime, value: float) -> float:
    """The largest `value` over the processes (the wall time of work done side by side)."""
    if rt.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def metric_columns(eval_kwargs: dict[str, Any]) -> tuple[str, ...]:
    kind = eval_kwargs["kind"]
    if kind == "toy":
        return ("sliced_wasserstein", "mmd_rbf") + (("mean_log_density",) if eval_kwargs.get("gmm") else ())
    if kind == "digits":
        return ("fid", "class_entropy")
    names = {"fid": ("fid",), "kid": ("kid", "kid_std"), "is": ("is", "is_std")}
    return tuple(c for m in eval_kwargs.get("metrics", ()) for c in names.get(m, ()))


def error_text(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:500]


def float_cols(row: dict[str, Any]) -> None:
    for k, v in list(row.items()):
        if isinstance(v, Tensor):
            row[k] = float(v)
