"""EDM2's three tools on scikit-learn's 8×8 digits, each against the plain model at equal NFE (35: EDM's Heun,
18 steps), measured by the digits FID (scorelib.metrics.digits; floor = two halves of the real digits):

1. autoguidance (Karras et al. 2024b): the `edm_digits` model guided by an early checkpoint of the same run
   (step 500 of 1000: a worse version of itself), D_w = w D_main + (1 - w) D_guide, for a few w;
2. post-hoc EMA (Karras et al. 2024a, §3): `edm2_digits` tracks two power-function EMAs (σ_rel 0.05 and 0.10)
   in snapshots every 100 steps; the EMA of any σ_rel is reconstructed afterwards (`--mode=phema`) and
   swept, against the run's classic EMA; the sweep is plotted (benchmarks/results/phema_sweep.png);
3. the guidance interval (Kynkäänniemi et al. 2024): autoguidance of the class-conditional `edm2_digits`
   model by its step-500 checkpoint, applied at every σ or only for σ in (σ_lo, σ_hi].

    python benchmarks/bench_edm2_digits.py [--workdir runs/edm2_story] [--samples 1000]

Everything goes through the library's own entry points (the builder, the training loop, the post-hoc EMA
task, the sampler and guidance of an Experiment), as `python main.py` runs them. Prints one markdown table
and writes benchmarks/results/edm2_digits.json (and the plot). About 19 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_passive_omp, markdown_table

import scorelib
from scorelib import tasks
from scorelib.builder import experiment
from scorelib.builder.configs import run_config_file, with_overrides
from scorelib.checkpoint import checkpoint_path
from scorelib.metrics.digits import digits_fid
from scorelib.sampling import sample_images
from scorelib.sharing import load_experiment_weights
from scorelib.train import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIGMA_RELS = (0.01, 0.02, 0.035, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25)
AUTOGUIDANCE_W = (1.5, 2.0, 3.0)
INTERVALS = ((0.3, 3.0), (0.1, 1.0), (1.0, 80.0))


def config(name: str, **overrides: object):
    return with_overrides(run_config_file(ROOT / "configs" / f"{name}.py"), {"training.eval_at_end": False,
                                                                           "device": "cpu", **overrides})


def fid(exp, checkpoint: Path, n: int, seed: int = 0, guide: Path | None = None) -> float:
    """The digits FID of n samples of the experiment's sampler from a checkpoint's EMA (and a guide)."""
    net = load_experiment_weights(exp, exp.network(), checkpoint)
    guide_model = None if guide is None else scorelib.load(guide).eval()
    x = sample_images(exp, net, n, torch.device("cpu"), seed=seed, batch_size=500, guide=guide_model)
    return digits_fid(x, cache_dir=RESULTS.parent / "cache", value_range=exp.data.value_range)["fid"]


def trained(name: str, workdir: Path) -> tuple[float, Path]:
    """Train a recipe once (resumed when its workdir holds the run); its final checkpoint."""
    c = config(name)
    t0 = time.perf_counter()
    train(experiment(c, workdir, "train"), workdir)
    return time.perf_counter() - t0, checkpoint_path(workdir / "checkpoints", c.training.n_iters)


def sample_exp(name: str, workdir: Path, **sampling: object):
    return experiment(config(name, **{f"sampling.{k}": v for k, v in sampling.items()}), workdir, "sample")


def main() -> None:
    ensure_passive_omp()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/edm2_story")
    p.add_argument("--samples", type=int, default=1000)
    a = p.parse_args()
    torch.set_num_threads(2)
    work, n, rows, out = Path(a.workdir), a.samples, [], {}

    # 1. autoguidance of edm_digits by its own step-500 checkpoint
    secs, final = trained("edm_digits", work / "edm")
    early = checkpoint_path(work / "edm" / "checkpoints", 500)
    plain = fid(sample_exp("edm_digits", work / "edm"), final, n)
    rows.append(["edm_digits", "plain (classic EMA)", "35", f"{plain:.2f}"])
    out["edm_digits"] = {"train_seconds": secs, "plain": plain, "autoguidance": {}}
    for w in AUTOGUIDANCE_W:
        e = sample_exp("edm_digits", work / "edm", guidance="auto", guide_checkpoint=str(early), guidance_scale=w)
        out["edm_digits"]["autoguidance"][w] = v = fid(e, final, n, guide=early)
        rows.append(["edm_digits", f"autoguidance by step 500, w={w:g}", "70", f"{v:.2f}"])

    # 2. post-hoc EMA sweep of edm2_digits
    secs, final2 = trained("edm2_digits", work / "edm2")
    exp2 = sample_exp("edm2_digits", work / "edm2")
    out["edm2_digits"] = {"train_seconds": secs, "plain": fid(exp2, final2, n), "phema": {}}
    rows.append(["edm2_digits", "plain (classic EMA)", "35", f"{out['edm2_digits']['plain']:.2f}"])
    for s in SIGMA_RELS:
        ckpt = tasks.run_phema(experiment(config("edm2_digits", **{"phema.sigma_rel": s}), work / "edm2", "phema"),
                               work / "edm2")
        out["edm2_digits"]["phema"][s] = v = fid(exp2, ckpt, n)
        rows.append(["edm2_digits", f"post-hoc EMA σ_rel={s:g}", "35", f"{v:.2f}"])
    best = min(out["edm2_digits"]["phema"], key=out["edm2_digits"]["phema"].get)

    # 3. the guidance interval: autoguidance of the class-conditional edm2_digits by its step-500 checkpoint
    early2 = checkpoint_path(work / "edm2" / "checkpoints", 500)
    out["interval"] = {}
    for interval in ((), *INTERVALS):
        e = sample_exp("edm2_digits", work / "edm2", guidance="auto", guide_checkpoint=str(early2),
                       guidance_scale=2.0, guidance_interval=interval)
        out["interval"][str(interval or "every σ")] = v = fid(e, final2, n, guide=early2)
        rows.append(["edm2_digits", f"autoguidance w=2, σ in {interval or 'every σ'}", "70", f"{v:.2f}"])

    floor = digits_fid(torch.zeros(4, 1, 8, 8), cache_dir=RESULTS.parent / "cache")["fid_floor"]
    print(markdown_table(["model", "setting", "NFE", f"digits FID ({n} samples; floor {floor:.2f})"], rows, "llrr"))
    print(f"post-hoc EMA: best σ_rel {best:g}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "edm2_digits.json").write_text(json.dumps({"floor": floor, "samples": n, **out}, indent=2,
                                                         default=str) + "\n")
    plot(out["edm2_digits"], floor, RESULTS / "phema_sweep.png")


def plot(res: dict, floor: float, path: Path) -> None:
    """Digits FID against σ_rel of the reconstructed EMA, the classic EMA and the floor as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sorted(res["phema"])
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(s, [res["phema"][k] for k in s], "o-", label="post-hoc EMA (reconstructed)")
    ax.axhline(res["plain"], color="gray", ls="--", label="classic EMA (half-life 20 kimg)")
    ax.axhline(floor, color="green", ls=":", label="floor (real vs real)")
    ax.set_xscale("log")
    ax.set_xlabel("σ_rel")
    ax.set_ylabel("digits FID")
    ax.set_title("edm2_digits: post-hoc EMA sweep (35 NFE)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
