"""Running the benchmark: every case on the same initial noise, measured, scored and written out."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import evaluate
from ..builder import Experiment
from ..builder.datasets import load_dataset
from ..data import toy_data
from ..runtime import Progress, Runtime
from ..tasks import evaluation_arguments, runtime
from .cases import Case, default_cases
from .measure import (
    Meter,
    PeakMemory,
    all_batches,
    batch_scores,
    error_text,
    float_cols,
    load_model,
    max_over_processes,
    metric_columns,
    reference_solution,
)
from .report import BenchReport, write_outputs

BASE_COLUMNS = ("sampler", "family", "settings", "nfe", "nfe_expected", "nfe_ok", "wall_s", "samples_per_s",
                "peak_mem_mib", "transport_error")
TAIL_COLUMNS = ("status", "error", "flags")


def new_row(columns: Sequence[str], name: str, family: str, settings: str, status: str,
            flags: str = "") -> dict[str, Any]:
    """An empty result row (NaN in every column) with its identity filled in."""
    row: dict[str, Any] = {c: math.nan for c in columns}
    row.update(sampler=name, family=family, settings=settings, flags=flags, nfe_expected=None, nfe_ok=None,
               status=status, error="")
    return row


def quality(x: Tensor, eval_kwargs: dict[str, Any], metric_cols: Sequence[str], seed: int) -> tuple[dict[str, Any],
                                                                                                    dict[str, Any]]:
    """(metric columns of samples x, the other scalars the metrics report): the same random projections
    etc. for every row (the global RNG seeded `seed` inside a fork). A failure (e.g. missing Inception
    weights) puts its text into every metric column."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            metrics = evaluate.evaluate_samples(x.float(), **eval_kwargs)
    except Exception as e:
        return {c: error_text(e) for c in metric_cols}, {}
    cols = {k: v for k, v in metrics.items() if k in metric_cols or isinstance(v, list)}
    extra = {k: v for k, v in metrics.items() if k not in cols and k != "n_samples"}
    return cols, extra


def measure_case(case: Case, row: dict[str, Any], scores: Any, x0s: Sequence[Tensor], starts: Sequence[int],
                 mine: Sequence[int], seed: int, rt: Runtime) -> Tensor | None:
    """Run `case` on this process's batches `mine` (noise x0s[k], generator seeded seed + k), fill the
    row's NFE, time and memory columns and return all samples (every process's, in batch order), or None
    when the case failed on any process (the row then says why)."""
    device = rt.device
    outs, counts, expected, error, wall = [], [], [], "", 0.0
    try:
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            for k in mine:
                meter = Meter(scores(starts[k], len(x0s[k])), x0s[k])
                g = torch.Generator(device).manual_seed(seed + k)
                with torch.no_grad():
                    out = case.sample(meter, x0s[k], g)
                x, reported = out if isinstance(out, tuple) else (out, None)
                outs.append(x)
                counts.append(meter.nfe)
                expected.append(case.nfe if case.nfe is not None else reported)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - t0
    except Exception as e:
        error = error_text(e)
    errors = [err for err in all_batches(rt, [rt.rank], [error]) if err]
    if errors:  # every process records the failure, so all skip the exchange below alike
        row.update(status="failed", error=errors[0])
        return None
    n = sum(len(x) for x in x0s)
    wall = max_over_processes(rt, wall)
    counts, expected = all_batches(rt, mine, counts), all_batches(rt, mine, expected)
    x = torch.cat(all_batches(rt, mine, outs)).to(device)
    nfe = sum(counts) / len(counts)
    row.update(nfe=int(nfe) if nfe == int(nfe) else round(nfe, 1), wall_s=wall, samples_per_s=n / wall,
               peak_mem_mib=mem.peak)
    if all(e is not None for e in expected):
        exp = sum(expected) / len(expected)
        row["nfe_expected"] = int(exp) if exp == int(exp) else round(exp, 1)
        row["nfe_ok"] = counts == expected
        if not row["nfe_ok"]:
            row.update(status="nfe mismatch", error=f"counted {counts}, the sampler / grid says {expected}")
    bad = int((~torch.isfinite(x.flatten(1)).all(1)).sum())
    if bad:
        row["error"] = (row["error"] + "; " if row["error"] else "") + f"{bad} of {n} samples not finite"
    return x


def run(exp: Experiment, workdir: str | Path, *, quick: bool = False, n_samples: int | None = None,
        batch_size: int | None = None, peers: bool = True, reference: bool | None = None,
        reference_tol: float = 1e-9, cases: Sequence[Case] | None = None, plots: bool = True,
        progress: bool = True, seed: int | None = None) -> BenchReport:
    """Run the sampler grid (`default_cases(exp, quick, peers)`, or `cases`) on the experiment's model
    and write WORKDIR/bench/results.{md,csv,json} (+ PNG plots when matplotlib is importable).

    n_samples: samples per row (default: 256 with `quick`, else eval.n_samples), drawn in batches of
    `batch_size` (default sampling.batch_size). reference: compute the tight-ODE transport error
    (default: for toy data, whose ODE is cheap), solved in float64 with dopri5 at rtol = atol =
    `reference_tol`. seed: of the initial noise and the samplers' noise (default config.seed + 3).
    A row whose sampler raises records the error and the grid goes on.

    Under torchrun the batches are shared out (batch k on process k mod world; each batch's noise is
    seeded by its index, so the samples are those of one process); wall time is the slowest process's,
    peak memory rank 0's, and only rank 0 computes metrics and writes files.
    """
    workdir = Path(workdir)
    rt = runtime(exp)
    device = rt.device
    if device.type == "cpu" and "OMP_WAIT_POLICY" not in os.environ:
        print("scorelib.bench: OMP_WAIT_POLICY is unset; spinning OpenMP threads distort timings on shared cores "
              "(set OMP_WAIT_POLICY=PASSIVE)", file=sys.stderr)
    model = load_model(exp, workdir, device)
    d, e = exp.data, exp.f.eval
    n = n_samples or (min(256, e.n_samples) if quick else e.n_samples)
    g = _Grid(n, min(batch_size or exp.f.sampling.batch_size, n), exp.f.seed + 3 if seed is None else seed, rt)
    x0s = [exp.noise.sigma_range[0] * torch.randn((min(g.bs, n - s), *d.shape), device=device,
                                                  generator=torch.Generator(device).manual_seed(g.seed + k))
           for k, s in enumerate(g.starts)]
    scores = batch_scores(exp, model.score, model.net, device, n, g.seed)
    cases = list(default_cases(exp, quick, peers) if cases is None else cases)
    want_ref = d.dataset == "toy" if reference is None else reference
    ref = _tight_reference(exp, model, g, x0s, reference_tol) if want_ref else None

    data = load_dataset(d, train=False)
    eval_kwargs = evaluation_arguments(exp, workdir, None if data is None else data.images)
    if eval_kwargs.get("kind") == "images" and "device" not in eval_kwargs:
        eval_kwargs["device"] = device
    metric_cols = metric_columns(eval_kwargs)
    columns = BASE_COLUMNS + metric_cols + TAIL_COLUMNS
    with torch.no_grad():  # warm-up: one untimed evaluation (lazy initialisation, first-call costs)
        scores(0, len(x0s[0]))(x0s[0], torch.full((len(x0s[0]),), exp.noise.sigma_range[0], device=device))
    mem_probe = PeakMemory(device)
    reference_metrics: dict[str, Any] = {}

    def add_quality(row: dict[str, Any], x: Tensor) -> None:  # rank 0 scores the samples
        if rt.is_main:
            cols, extra = quality(x, eval_kwargs, metric_cols, g.seed)
            row.update(cols)
            for key, value in extra.items():
                reference_metrics.setdefault(key, value)

    rows = _reference_rows(exp, columns, ref, g, reference_tol, eval_kwargs["kind"], add_quality)
    rows += _case_rows(cases, columns, scores, x0s, g, ref, add_quality, progress)
    meta = _meta(exp, model.source, device, g, quick, mem_probe.kind, eval_kwargs["kind"], ref, reference_metrics)
    if not rt.is_main:
        return BenchReport(rows, meta, columns)
    return write_outputs(rows, meta, columns, metric_cols, workdir / "bench", plots)


def _meta(exp: Experiment, source: str, device: torch.device, g: _Grid, quick: bool, memory: str, kind: str,
          ref: _Reference | None, reference_metrics: dict[str, Any]) -> dict[str, Any]:
    """What the table was measured on and how (results.json's `meta`)."""
    sigma_max, sigma_min = exp.noise.sigma_range
    return {
        "config": exp.describe(), "model": source, "device": str(device),
        "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "python": platform.python_version(), "torch": torch.__version__, "machine": platform.processor() or
        platform.machine(), "sigma_max": sigma_max, "sigma_min": sigma_min, "sample_shape": list(exp.data.shape),
        "n_samples": g.n, "batch_size": g.bs, "seed": g.seed, "quick": quick,
        "initial_noise": "σ_max·z for every sampler, z from torch.Generator(device).manual_seed(seed + batch)",
        "wall_time": "sampling only (all batches), one run per row; metrics excluded",
        "peak_memory": memory, "metrics": f"evaluate.evaluate_samples kind={kind!r}",
        "transport_reference": ref.info if ref is not None else "not computed (image data: pass reference=True)",
        "reference_metrics": reference_metrics,
    }


@dataclass(frozen=True)
class _Grid:
    """How the n samples of every row are batched and shared out: batch k = [starts[k], starts[k] + bs),
    drawn by process k mod world (`mine`: this process's batches), its noise seeded by seed + k."""

    n: int
    bs: int
    seed: int
    rt: Any

    @property
    def starts(self) -> list[int]:
        return list(range(0, self.n, self.bs))

    @property
    def mine(self) -> list[int]:
        return list(range(len(self.starts)))[self.rt.rank::self.rt.world]


@dataclass(frozen=True)
class _Reference:
    """The tight probability-flow solution from the rows' shared noise, for the transport error."""

    x: Tensor
    nfe: float
    seconds: float
    info: str


def _tight_reference(exp: Experiment, model: Any, g: _Grid, x0s: list[Tensor], tol: float) -> _Reference:
    t0 = time.perf_counter()
    parts, nfes, info = reference_solution(exp, model, [x0s[k] for k in g.mine], [g.starts[k] for k in g.mine], g.n,
                                           g.seed, x0s[0].device, tol)
    seconds = max_over_processes(g.rt, time.perf_counter() - t0)
    nfe = sum(all_batches(g.rt, g.mine, nfes)) / len(g.starts)
    x = torch.cat(all_batches(g.rt, g.mine, parts)).to(x0s[0].device)
    return _Reference(x, nfe, seconds, info + f"; {nfe:.0f} NFE per batch, {seconds:.1f} s")


def _reference_rows(exp: Experiment, columns: list[str], ref: _Reference | None, g: _Grid, tol: float, kind: str,
                    add_quality: Callable[[dict[str, Any], Tensor], None]) -> list[dict[str, Any]]:
    """Independent draws of the data (the metrics' sampling noise at this n) and the tight ODE solution from
    the shared noise (what an exact deterministic solver would give)."""
    rows: list[dict[str, Any]] = []
    if kind == "toy":
        d = exp.data
        rows.append(new_row(columns, "true samples", "true samples", f"{g.n} fresh draws of {d.toy}", "reference"))
        add_quality(rows[-1], toy_data(d.toy, g.n, torch.Generator().manual_seed(g.seed + 11)))
    if ref is not None:
        rows.append(new_row(columns, "probability_flow (reference)", "tight ODE (reference)",
                            f"dopri5, rtol=atol={tol:g}, float64", "reference"))
        rows[-1].update(nfe=round(ref.nfe, 1), wall_s=ref.seconds, samples_per_s=g.n / ref.seconds)
        add_quality(rows[-1], ref.x)
    return rows


def _case_rows(cases: list[Case], columns: list[str], scores: Any, x0s: list[Tensor], g: _Grid,
               ref: _Reference | None, add_quality: Callable[[dict[str, Any], Tensor], None],
               progress: bool) -> list[dict[str, Any]]:
    """One row per case: its samples from the shared noise, timed, with the transport error of a
    deterministic sampler and the quality metrics; a bar on a terminal, plain lines in a log."""
    rows: list[dict[str, Any]] = []
    bar = Progress(len(cases), "bench", enabled=progress and g.rt.is_main, unit="runs")
    for case in cases:
        bar.set_note(f"{case.family}, {case.settings}"[:60])
        row = new_row(columns, case.name, case.family, case.settings, "ok", case.flags)
        row["nfe_expected"] = case.nfe
        rows.append(row)
        if case.skip or case.sample is None:
            row.update(status="skipped", error=case.skip or "no sampler", nfe=math.nan)
        elif (x := measure_case(case, row, scores, x0s, g.starts, g.mine, g.seed, g.rt)) is None:
            if g.rt.is_main:
                bar.write(f"{case.family} [{case.settings}] failed: {row['error']}")
        else:
            if ref is not None and case.deterministic:
                row["transport_error"] = float((x.double() - ref.x).flatten(1).norm(dim=1).mean())
            add_quality(row, x)
            float_cols(row)
        bar.update(1)
    bar.close()
    return rows
