"""Sampler benchmark: a grid of samplers on one config's model, with NFE, time, memory and quality.

    python main.py --config=toy_gmm --mode=bench --workdir=runs/toy [--quick] [--config.KEY=VALUE]
    python -m scorelib.bench --config configs/toy_gmm.py --workdir runs/toy [--quick]   # the same (an alias)

The model: the EMA weights of the newest checkpoint in WORKDIR/checkpoints (or `sampling.checkpoint`),
built from the checkpoint's own stored config; with no checkpoint, a toy config whose `data.toy` is a
Gaussian mixture (gmm8, grid25, two_modes) runs on the exact mixture (`data.toy_mixture`), whose
score is known at every σ. The σ range is the noise process's `sigma_range`; every sampler starts from the
same initial noise σ_max·z (z fixed per batch by the seed; `sampling.init` is not used here).

The grid (`grid_spec`; the quick one in brackets). Every scorelib row is the experiment's sampler
with a few options changed (`Sampler.replace`; column `flags` gives the same change as config
flags), so its grid and expected NFE are those of its entry in `builder.samplers.SAMPLERS`:
  - the config's own sampler;
  - annealed Langevin, NCSN setting: 100 steps per level, step_lr = 2e-5·(σ_min/0.01)², no denoising,
    L = 5, 10, 20 levels [5]; NCSNv2 setting: 5 steps per level + denoising, step_lr by NCSNv2's
    Technique 4 for the grid's ratio, L = 10, 20, 50, 100, 200 [10] (an index-conditioned NCSN maps
    other levels to its nearest trained one);
  - predictor-corrector (reverse diffusion + Langevin, snr 0.16): 10, 50, 100, 500 steps [10];
  - DDPM ancestral ("small" variance in VE, where it equals DDIM η = 1; else "large"):
    10, 20, 50, 100, 1000 steps [10]; DDIM at 10, 20, 50, 100, 1000 steps [10] × η = 0, 0.5, 1;
  - probability_flow (dopri5) at rtol = atol = 1e-2, 1e-3, 1e-4, 1e-5 [1e-3];
  - Heun (EDM) on 5, 10, 25, 50 Karras levels [5]; DPM-Solver++ 2M and 3M, UniPC (order 3) and
    fast_sample at 5, 10, 20, 50 steps / NFE [10].
Peers, when installed (`scorelib.peers`), on the same score and noise: k-diffusion's sample_euler,
sample_heun and sample_dpmpp_2m over D = x + σ² s on its Karras and exponential grids (5, 10, 20, 50
levels [10]); diffusers' DDIMScheduler (η = 0; 10, 50, 100 [10] steps) and DPMSolverMultistepScheduler
through `ScoreToEps` when the model has a DDPM schedule (`noise.kind = "ddpm"`); other σ ranges skip
DDIMScheduler with a note and run diffusers' σ-space EDMDPMSolverMultistepScheduler instead.

Per row: NFE counted by a counting score wrapper (checked against what the grid / sampler says),
wall time of sampling, samples/s, peak memory above the start of the run (`PeakMemory`), and
quality: the transport error ‖x - x_ref‖₂ (mean over samples) against a tight probability-flow ODE
solution from the same noise (deterministic samplers, toy data by default; NaN for stochastic ones),
plus the metrics of `evaluate.evaluate_samples(..., **tasks.evaluation_arguments(...))`:
sliced Wasserstein, MMD² and the mean true log-density for toys, the digits FID, or FID / KID / IS (a
metric that cannot be computed, e.g. without Inception weights, holds the error text). Toy runs
start with two reference rows: fresh draws of the data (the metrics' sampling noise at this sample
size) and the tight ODE solution itself. A sampler that raises gets a failed row; the rest still run.
Outputs in WORKDIR/bench/: results.md (also printed), results.csv, results.json and, when matplotlib
is importable, quality_vs_nfe.png and quality_vs_time.png.

Modules: `cases` (the rows), `measure` (the model, counting, memory, the reference solution),
`runner` (`run`), `report` (table, CSV, JSON, plots); `__main__` is the command-line alias.
"""

from ..checkpoint import CheckpointError
from .cases import Case, GridSpec, default_cases, diffusers_cases, grid_spec, k_diffusion_cases, scorelib_cases
from .measure import Model, PeakMemory, load_model
from .report import HEADERS, BenchReport, markdown_table
from .runner import BASE_COLUMNS, TAIL_COLUMNS, run

__all__ = ["BASE_COLUMNS", "HEADERS", "TAIL_COLUMNS", "BenchReport", "Case", "CheckpointError", "GridSpec", "Model",
           "PeakMemory", "default_cases", "diffusers_cases", "grid_spec", "k_diffusion_cases", "load_model",
           "markdown_table", "run", "scorelib_cases"]
