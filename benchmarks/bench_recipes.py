"""Every recipe learns: a miniature of each recipe family scorelib ships, trained on the bundled 8×8 digits
at one equal budget, sampled with its own sampler and with DDIM, the probability-flow ODE and `fast_sample`,
and scored by the digits FID (against the 597 held-out digits; the floor is the FID between two halves of
them, scorelib/metrics/digits.py).

A miniature is the recipe's config file with overrides (`RECIPES`: the config name and its miniature
overrides; adding a recipe is one entry): a small network of the recipe's own family, so the run takes
the same code paths as the full recipe (the network's conditioning wrapper, the loss, the sampler), on
the digits (`DIGITS`). Every miniature trains with the same batch size, number of steps, learning rate and
warm-up (`Budget`) through the library's entry points: `builder.experiment(config, workdir, "train")` +
`train.train`; then `builder.experiment(config, workdir, "sample")` + `tasks.trained_network` (the EMA
weights of the checkpoint) + `sampling.sample_images`, so each row is what `python main.py --mode=sample`
with those overrides draws. Per recipe × sampler it prints the digits FID and its floor, the NFE (network
evaluations per sample, counted on the network), the sampling and training wall times and, per recipe, the
held-out digits' negative log-likelihood in bits/dim: the probability-flow ODE's (`tasks.likelihood_metrics`:
digits dequantised within their 17 levels, Hutchinson's trace) and, for DDPM-family recipes, the discrete
VLB (`likelihood.ddpm_vlb`, the digits written as 8-bit images, the bins its decoder assumes) of the chain
the recipe samples with (its respaced steps; `--full-vlb`: all T).

    python benchmarks/bench_recipes.py [--only ddpm iddpm] [--samplers own ddim] [--steps N] [--batch B]
        [--samples N] [--workdir DIR] [--json PATH] [--untrained] [--no-nll] [--full-vlb]

`--untrained` adds each recipe's network at its initial weights (own sampler): what a model that learned
nothing scores. `--tree DIR` takes scorelib and configs/ from another checkout, also one from before the
experiment-layer rebuild (`scorelib.build`; train and sample only): e.g. the iddpm miniature on commit
ed27fca, whose training fed the network the raw timestep t ∈ [0, 4000) while its sampler fed t·1000/T:

    cd OLD && PYTHONPATH=OLD python /path/to/benchmarks/bench_recipes.py --tree OLD --only iddpm --samplers own

A recipe whose config file is missing (in an older checkout) is skipped with a note. The defaults take about
20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _tree_from_argv(argv: list[str]) -> Path:
    """The checkout whose scorelib and configs/ are used (--tree DIR; default this one), read before scorelib
    is imported."""
    for i, a in enumerate(argv):
        if a == "--tree" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--tree="):
            return Path(a.split("=", 1)[1]).resolve()
    return ROOT


TREE = _tree_from_argv(sys.argv)
sys.path.insert(0, str(TREE))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import ensure_passive_omp, markdown_table  # noqa: E402

from scorelib.metrics.digits import digits_fid, digits_split  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The recipes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One recipe family: its config file in configs/ (without .py), the dotted overrides that make its
    miniature (the network, and what the 8×8 digits or the CPU budget need), and what they change."""

    config: str
    miniature: dict[str, Any]
    note: str = ""


# a U-Net for 8×8: two resolutions (8, 4), one block each, attention at 4, no dropout
UNET8 = {"model.ch_mult": (1, 2), "model.num_res_blocks": 1, "model.attn_resolutions": (4,), "model.dropout": 0.0}

RECIPES: dict[str, Recipe] = {
    "ncsn": Recipe("ncsn_cifar", {"model.nf": 8, "sampling.n_steps_each": 10, "sampling.step_lr": 2e-4},
                   "CondRefineNetDilated ngf 8 (instance norm++ conditioned on the level index), the recipe's 10 "
                   "levels 1 → 0.01; annealed Langevin 10 steps per level at step_lr 2e-4 (shipped: 100 at 2e-5)"),
    "ncsnv2": Recipe("ncsnv2_cifar", {"model.nf": 8, "noise.num_scales": 29, "sampling.step_lr": 2.4e-5},
                     "NCSNv2 ngf 8 (output /σ), σ 50 → 0.01 over 29 levels: NCSNv2's γ rule at 64 dimensions "
                     "(shipped: 232 levels for 3072) and its step_lr rule for T = 5"),
    "ddpm": Recipe("ddpm_cifar", {**UNET8, "model.nf": 32, "sampling.n_steps": 100},
                   "DDPM U-Net ch 32, T = 1000 linear β, L_simple; ancestral σ² = β on 100 respaced steps "
                   "(shipped: all 1000)"),
    "iddpm": Recipe("iddpm_cifar", {**UNET8, "model.nf": 32},
                    "improved-DDPM U-Net ch 32, learned Σ, cosine T = 4000, hybrid loss, the network sees t·1000/T; "
                    "ancestral with the learned Σ on 100 respaced steps (as shipped)"),
    "ncsnpp": Recipe("ncsnpp_cifar", {**UNET8, "model.nf": 16, "sampling.n_steps": 100},
                     "NCSN++ nf 16 (FIR, residual input pyramid, Fourier σ embedding), continuous VE σ 0.01 → 50; "
                     "PC reverse diffusion + Langevin on 100 levels (shipped: 1000)"),
    "ddpmpp": Recipe("ddpmpp_cifar", {**UNET8, "model.nf": 16, "sampling.n_steps": 100},
                     "DDPM++ nf 16, continuous VP β 0.1 → 20; PC Euler–Maruyama on 100 times (shipped: 1000)"),
    "adm": Recipe("adm_cifar", {**UNET8, "model.nf": 32, "model.num_head_channels": 16},
                  "ADM ch 32 conditioned on the digit labels, null label (10% label dropout), cosine T = 1000, "
                  "hybrid loss; DDIM 50 steps with classifier-free guidance w = 1 (as shipped)"),
    "ncsn_digits": Recipe("ncsn_digits", {},
                          "the demo as shipped: conv net, 22 levels 4.8 → 0.01, annealed Langevin 5 steps per level"),
    "edm": Recipe("edm_digits", {}, "EDM (Karras et al. 2022) on the digits, as shipped"),
    "edm2": Recipe("edm2_digits", {}, "EDM2 (Karras et al. 2024) on the digits, as shipped"),
}

# the data of every miniature
DIGITS: dict[str, Any] = {"data.dataset": "digits", "data.image_size": 8, "data.channels": 1,
                          "data.random_flip": False, "data.num_classes": 10}

# The samplers each recipe is drawn with: own is the recipe's sampling section as it stands; the others
# start from σ_max·z (the NCSN recipes' own sampler starts from U[0, 1]).
SAMPLERS: dict[str, dict[str, Any]] = {
    "own": {},
    "ddim": {"sampling.method": "ddim", "sampling.n_steps": 25, "sampling.eta": 0.0, "sampling.init": "gaussian"},
    "ode": {"sampling.method": "ode", "sampling.init": "gaussian", "sampling.rtol": 1e-3, "sampling.atol": 1e-3},
    "fast": {"sampling.method": "fast", "sampling.n_steps": 10, "sampling.init": "gaussian"},
    # not run by default: the ODE started at σ = 80 (sampling.sigma_max), below the cosine schedules' 8·10⁴
    "ode80": {"sampling.method": "ode", "sampling.init": "gaussian", "sampling.rtol": 1e-3, "sampling.atol": 1e-3,
              "sampling.sigma_max": 80.0},
}
SAMPLER_NOTES = {"own": "the recipe's own sampler (table above)", "ddim": "DDIM η = 0 on 25 steps of the recipe's "
                 "grid", "ode": "probability-flow ODE, dopri5 at rtol = atol = 1e-3, then the Tweedie step",
                 "fast": "fast_sample at 10 NFE", "ode80": "the ODE as above, started at σ = 80"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """The equal training budget of every miniature and the evaluation sizes."""

    batch_size: int = 64
    n_iters: int = 500
    lr: float = 1e-3
    warmup: int = 100
    n_samples: int = 300  # per FID, drawn in one sampler call
    n_nll: int = 100  # held-out digits in the likelihoods
    nll_rtol: float = 1e-4  # the probability-flow likelihood's ODE tolerance
    seed: int = 0
    device: str = "cpu"

    def overrides(self) -> dict[str, Any]:
        return {"seed": self.seed, "device": self.device,
                "training.batch_size": self.batch_size, "training.n_iters": self.n_iters,
                "training.snapshot_freq": max(self.n_iters, 1), "training.log_freq": max(self.n_iters, 1),
                "training.snapshot_samples": 0, "training.eval_at_end": False, "training.keep_checkpoints": 1,
                "training.checkpoint_minutes": 0.0, "optim.lr": self.lr, "optim.warmup": self.warmup,
                "sampling.batch_size": self.n_samples, "sampling.n_samples": self.n_samples,
                "eval.batch_size": self.n_nll, "eval.likelihood_batches": 1, "eval.likelihood_rtol": self.nll_rtol}


def config_file(name: str, tree: Path = TREE) -> Path:
    return tree / "configs" / f"{RECIPES[name].config}.py"


def _run_config_file(path: Path) -> Any:
    """get_config() of a config file (the checkout is on sys.path: configs/*.py import configs.default)."""
    spec = importlib.util.spec_from_file_location(f"_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _set(config: Any, overrides: dict[str, Any], strict: bool = True) -> list[str]:
    """Set dotted keys of `config` in place. Returns the keys it does not have (strict: KeyError instead)."""
    missing = []
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p] if node is not None and p in node else None
        if node is None or leaf not in node:
            if strict:
                raise KeyError(f"{key}: not a field of the config")
            missing.append(key)
            continue
        node[leaf] = value
    return missing


def recipe_config(name: str, budget: Budget, sampler: str = "own", strict: bool = True) -> Any:
    """The miniature's config: configs/<config>.py, then the digits, the budget, the recipe's miniature overrides
    and the sampler's (later ones win). `strict=False` drops fields an older checkout does not have."""
    config = _run_config_file(config_file(name))
    for overrides in (DIGITS, budget.overrides(), RECIPES[name].miniature, SAMPLERS[sampler]):
        _set(config, overrides, strict)
    return config


# ---------------------------------------------------------------------------------------------
# Train, sample and evaluate through the library's entry points
# ---------------------------------------------------------------------------------------------


def rebuilt() -> bool:
    """Whether the scorelib in use has the experiment builder (scorelib/builder/); else the API before it.
    (Looked up on disk: an editable install's finder can resolve `scorelib.builder` in another checkout.)"""
    import scorelib

    return (Path(scorelib.__file__).parent / "builder").is_dir()


def build(config: Any, workdir: Path | None, mode: str) -> Any:
    if rebuilt():
        from scorelib.builder import experiment
    else:  # before the rebuild (e.g. commit ed27fca)
        from scorelib.build import experiment
    return experiment(config, workdir, mode)


def _sample_images(exp: Any, net: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    if rebuilt():
        from scorelib.sampling import sample_images
    else:
        from scorelib.train import sample_images
    return sample_images(exp, net, n, next(net.parameters()).device, seed=seed)


class Timer:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0


class CallCounter:
    """Counts a network's forward calls: the score evaluations (a guided evaluation puts its conditional and
    unconditional rows in one call)."""

    def __init__(self, net: torch.nn.Module):
        self.calls = 0
        self.handle = net.register_forward_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        self.handle.remove()


def train_recipe(config: Any, workdir: Path) -> dict[str, float]:
    """Train the miniature in `workdir` (`train.train`). A run finished there before is kept: its recorded
    times come back."""
    from scorelib.train import train

    record = workdir / "bench_train.json"
    if record.exists():
        return json.loads(record.read_text())
    exp = build(config, workdir, "train")
    with Timer() as t:
        train(exp, workdir)
    out = {"train_s": t.wall, "train_cpu_s": t.cpu}
    record.write_text(json.dumps(out))
    return out


def trained(config: Any, workdir: Path) -> tuple[Any, torch.nn.Module]:
    """(the sampling Experiment, the EMA network of the newest checkpoint in `workdir`, eval mode), as
    `--mode=sample` gets them."""
    if rebuilt():
        from scorelib.tasks import runtime, trained_network

        exp = build(config, workdir, "sample")
        return exp, trained_network(exp, runtime(exp).device)
    from scorelib.checkpoint import load_newest

    exp = build(config, workdir, "train")
    net = exp.network()
    net.load_state_dict(load_newest(workdir / "checkpoints", map_location="cpu")["ema"])
    return exp, net.eval()


def _centered(exp: Any) -> bool:
    return exp.data.centered if rebuilt() else exp.data.value_range[0] < 0


def fid_of(exp: Any, net: torch.nn.Module, n: int, seed: int) -> dict[str, Any]:
    """n samples of the experiment's sampler from `net` (`sampling.sample_images`), their digits FID and its
    floor, the NFE per sample (network calls per sampler call) and the sampling time."""
    batch = exp.f.sampling.batch_size if rebuilt() else exp.sample.batch_size
    counter = CallCounter(net)
    try:
        with Timer() as t:
            x = _sample_images(exp, net, n, seed)
    finally:
        counter.close()
    m = digits_fid(x.float().cpu(), value_range=(-1.0, 1.0) if _centered(exp) else (0.0, 1.0))
    return {"fid": m["fid"], "fid_floor": m["fid_floor"], "class_entropy": m["class_entropy"],
            "nfe": counter.calls / math.ceil(n / batch), "sample_s": t.wall, "sample_cpu_s": t.cpu, "n_samples": n}


def respaced_schedule(schedule: Any, timesteps: torch.Tensor) -> Any:
    """The DDPM schedule of the chain on the kept timesteps: β_k = 1 - ᾱ_{t_k}/ᾱ_{t_(k-1)} (improved-diffusion
    respace.py `SpacedDiffusion`)."""
    from scorelib.schedules import DDPMSchedule

    abar = schedule.alphas_cumprod[timesteps.sort().values]
    return DDPMSchedule(1 - abar / torch.cat([abar.new_ones(1), abar[:-1]]))


def likelihoods(exp: Any, net: torch.nn.Module, seed: int, full_vlb: bool = False) -> dict[str, Any]:
    """Bits/dim of the first eval.batch_size held-out digits: the probability-flow ODE's
    (`tasks.likelihood_metrics`: dequantised within the digits' 17 levels, Hutchinson's trace, at
    eval.likelihood_rtol) and, for DDPM-family recipes, the discrete VLB (`likelihood.ddpm_vlb`) of those digits
    written as 8-bit images (its decoder's 256 bins) on the chain the recipe samples with (its respaced
    timesteps), or on all T with `full_vlb`."""
    from scorelib.builder.datasets import load_dataset
    from scorelib.builder.samplers import respaced_timesteps
    from scorelib.likelihood import ddpm_vlb
    from scorelib.tasks import likelihood_metrics, runtime

    out: dict[str, Any] = {}
    with Timer() as t:
        out.update(likelihood_metrics(exp, net, load_dataset(exp.data, train=False), runtime(exp)))
    out["nll_s"] = t.wall
    if exp.vlb_variance is not None:
        device = next(net.parameters()).device
        x8 = (digits_split()[2][: exp.f.eval.batch_size] * 255).round() / 127.5 - 1  # the nearest 8-bit levels
        schedule = exp.noise.schedule
        if not full_vlb:
            schedule = respaced_schedule(schedule, respaced_timesteps(exp.sampler))
        g = torch.Generator(device).manual_seed(seed)
        with Timer() as t:
            total, _ = ddpm_vlb(exp.wrap(net).eval(), x8.to(device), schedule, exp.vlb_variance, g,
                                clip_denoised=True)  # as --mode=likelihood and improved-diffusion's calc_bpd_loop
        out.update({"vlb_bpd": float(total.mean()), "vlb_steps": schedule.T, "vlb_examples": len(x8),
                    "vlb_s": t.wall})
    return out


def miniature_fid(name: str, budget: Budget, workdir: str | Path, threads: int = 1) -> float:
    """Train the miniature `name` at `budget` in WORKDIR/<name>-<steps> and return its digits FID with its own
    sampler (`budget.n_samples` samples): one recipe's whole story, for a worker process."""
    torch.set_num_threads(threads)
    config = recipe_config(name, budget)
    wd = Path(workdir) / f"{name}-{budget.n_iters}"
    train_recipe(config, wd)
    exp, net = trained(config, wd)
    return fid_of(exp, net, budget.n_samples, budget.seed + 1)["fid"]


def untrained_fid(config: Any, n: int, seed: int) -> dict[str, Any]:
    """The digits FID of the recipe's network at its initial weights (as training starts), own sampler."""
    exp = build(config, None, "train")
    torch.manual_seed(exp.f.seed if rebuilt() else exp.train.seed)
    net = exp.network().to(torch.device("cuda" if config.device == "cuda" else "cpu"))
    return fid_of(exp, net.eval(), n, seed)


def run_recipe(name: str, budget: Budget, samplers: list[str], workdir: Path, nll: bool = True,
               untrained: bool = False, full_vlb: bool = False, log: Any = print) -> dict[str, Any]:
    """Train one miniature in WORKDIR/<name>, then draw and score it with each sampler (a sampler whose
    settings equal the recipe's own is not drawn twice). Returns its numbers, JSON-ready."""
    with Timer() as t:
        out = _run_recipe(name, budget, samplers, workdir, nll, untrained, full_vlb, log)
    out.update({"wall_s": t.wall, "cpu_s": t.cpu})
    return out


def _run_recipe(name: str, budget: Budget, samplers: list[str], workdir: Path, nll: bool, untrained: bool,
                full_vlb: bool, log: Any) -> dict[str, Any]:
    strict = rebuilt()
    config = recipe_config(name, budget, "own", strict)
    r = RECIPES[name]
    out: dict[str, Any] = {"recipe": name, "config": r.config, "note": r.note, "samplers": {},
                           "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in r.miniature.items()}}
    wd = workdir / name
    out.update(train_recipe(config, wd))
    log(f"{name}: trained {budget.n_iters} steps in {out['train_s']:.0f} s")
    own = None
    for sampler in samplers:
        exp, net = trained(recipe_config(name, budget, sampler, strict), wd)
        settings = exp.f.sampling if strict else sampler
        if sampler != "own" and settings == own:
            out["samplers"][sampler] = {"same_as": "own"}
            continue
        row = fid_of(exp, net, budget.n_samples, budget.seed + 1)
        row["describe"] = exp.sampler.describe() if strict else sampler
        out["samplers"][sampler] = row
        log(f"{name} / {sampler}: digits FID {row['fid']:.2f} (floor {row['fid_floor']:.2f}), NFE {row['nfe']:.0f}, "
            f"{row['sample_s']:.1f} s")
        if sampler == "own":
            own = settings
            out["params"] = sum(p.numel() for p in net.parameters())
            if nll and strict and exp.noise.kind != "ve":
                try:
                    out["nll"] = likelihoods(exp, net, budget.seed + 2, full_vlb)
                except Exception as e:  # a likelihood that fails is a result to report, not a crash
                    out["nll"] = {"error": f"{type(e).__name__}: {e}"}
                log(f"{name}: NLL " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in out["nll"].items()))
    if untrained:
        out["untrained"] = untrained_fid(config, budget.n_samples, budget.seed + 1)
        log(f"{name} / untrained: digits FID {out['untrained']['fid']:.2f}")
    return out


def _print(line: str) -> None:
    print(line, flush=True)


def _job(name: str, budget: Budget, samplers: list[str], workdir: Path, nll: bool, untrained: bool,
         full_vlb: bool, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return run_recipe(name, budget, samplers, workdir, nll, untrained, full_vlb, _print)


def run_all(names: list[str], budget: Budget, samplers: list[str], workdir: Path, nll: bool = True,
            untrained: bool = False, full_vlb: bool = False, jobs: int = 2, threads: int = 1) -> list[dict[str, Any]]:
    """`run_recipe` for each recipe (a note for those whose config file is missing), `jobs` recipes at a time
    in worker processes of `threads` torch threads each (jobs = 1: in this process), in the order given."""
    todo = [n for n in names if skipped(n) is None]
    args = (budget, samplers, workdir, nll, untrained, full_vlb, threads)
    if jobs <= 1:
        done = {n: _job(n, *args) for n in todo}
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {n: pool.submit(_job, n, *args) for n in todo}
            done = {n: f.result() for n, f in futures.items()}
    return [done[n] if n in done else skipped(n) for n in names]


def skipped(name: str) -> dict[str, Any] | None:
    """The note of a recipe whose config file does not exist (yet), else None."""
    path = config_file(name)
    if path.exists():
        return None
    return {"recipe": name, "config": RECIPES[name].config, "skipped": f"configs/{path.name} does not exist yet"}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    """The recipe × sampler markdown table."""
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["recipe"], "", "", "", "", "", "", "", "", r["skipped"]])
            continue
        nll = r.get("nll", {})
        first = True
        for sampler, s in r["samplers"].items():
            if "same_as" in s:
                continue
            own = sampler == "own"
            vlb = f"{nll['vlb_bpd']:.2f} ({nll['vlb_steps']} steps)" if own and "vlb_bpd" in nll else ""
            rows.append([r["recipe"] if first else "", sampler, _fmt(s["nfe"], 0), _fmt(s["fid"], 2),
                         _fmt(s["fid_floor"], 2), _fmt(nll.get("ode_bpd"), 2) if own and nll else "", vlb,
                         _fmt(r["train_s"], 0) if first else "", _fmt(s["sample_s"], 1),
                         s["describe"] if own else ""])
            first = False
        if "untrained" in r:
            u = r["untrained"]
            rows.append(["", "own, untrained", _fmt(u["nfe"], 0), _fmt(u["fid"], 2), _fmt(u["fid_floor"], 2), "", "",
                         "", _fmt(u["sample_s"], 1), "the network's initial weights"])
    header = ["recipe", "sampler", "NFE", "digits FID", "floor", "NLL ODE (bpd)", "VLB (bpd)", "train (s)",
              "sample (s)", "sampler settings"]
    return markdown_table(header, rows, "llrrrrrrrl")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(RECIPES), help="recipes to run (default: all)")
    p.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=[k for k in SAMPLERS if k != "ode80"])
    p.add_argument("--steps", type=int, default=Budget.n_iters, help="training steps of every recipe")
    p.add_argument("--batch", type=int, default=Budget.batch_size, help="training batch of every recipe")
    p.add_argument("--lr", type=float, default=Budget.lr, help="learning rate of every recipe")
    p.add_argument("--samples", type=int, default=Budget.n_samples, help="samples per FID")
    p.add_argument("--nll-examples", type=int, default=Budget.n_nll, help="held-out digits in the likelihoods")
    p.add_argument("--seed", type=int, default=Budget.seed)
    p.add_argument("--device", default=Budget.device, choices=("cpu", "cuda"))
    p.add_argument("--jobs", type=int, default=2, help="recipes run at a time, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per recipe")
    p.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary directory); a run "
                                                "finished there before is reused")
    p.add_argument("--json", type=Path, help="write the numbers here (default: WORKDIR/recipes.json)")
    p.add_argument("--no-nll", action="store_true", help="skip the likelihoods")
    p.add_argument("--full-vlb", action="store_true", help="the DDPM VLB over all T steps (iddpm: 4000 network "
                                                          "calls), not the sampled chain's")
    p.add_argument("--untrained", action="store_true", help="also score each recipe's untrained network")
    p.add_argument("--tree", type=Path, help="take scorelib and configs/ from this checkout (read at start-up)")
    args = p.parse_args(argv)
    budget = Budget(args.batch, args.steps, args.lr, Budget.warmup, args.samples, args.nll_examples, Budget.nll_rtol,
                    args.seed, args.device)
    names = args.only or list(RECIPES)
    tmp = tempfile.TemporaryDirectory(prefix="bench_recipes_") if args.workdir is None else None
    workdir = args.workdir or Path(tmp.name)
    for name in names:
        if skipped(name) is not None:
            print(f"{name}: skipped, {skipped(name)['skipped']}", flush=True)
    with Timer() as total:
        results = run_all(names, budget, args.samplers, workdir, not args.no_nll, args.untrained, args.full_vlb,
                          args.jobs, args.threads)
    cpu = total.cpu + sum(r.get("cpu_s", 0.0) for r in results) * (args.jobs > 1)
    print(f"\nDigits miniatures, every recipe: batch {budget.batch_size}, {budget.n_iters} steps, lr {budget.lr:g} "
          f"(warm-up {budget.warmup}); {budget.n_samples} samples per FID; NLL on {budget.n_nll} held-out digits; "
          f"{args.jobs} recipe(s) at a time, {args.threads} thread(s) each, on {args.device}; scorelib from {TREE}\n")
    print(table(results) + "\n")
    for s in args.samplers:
        print(f"- {s}: {SAMPLER_NOTES[s]}")
    for name in names:
        print(f"- {name} ({RECIPES[name].config}): {RECIPES[name].note}")
    print(f"\ntotal {total.wall:.0f} s wall, {cpu:.0f} s CPU (all processes)")
    report = {"budget": dataclasses.asdict(budget), "jobs": args.jobs, "threads": args.threads, "tree": str(TREE),
              "samplers": {k: SAMPLER_NOTES[k] for k in args.samplers}, "total_s": total.wall,
              "total_cpu_s": cpu, "recipes": results}
    out = args.json or workdir / "recipes.json"
    if tmp is None or args.json is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"numbers: {out}")
    if tmp is not None:
        tmp.cleanup()
    return results


if __name__ == "__main__":
    ensure_passive_omp()
    main()
