"""Mutation check: do the tests catch plausible one-line bugs?

    python benchmarks/mutants.py                 # every mutant
    python benchmarks/mutants.py --only NAME ... # some of them (names from --list)
    python benchmarks/mutants.py --list

Each mutant names a file, one line of it exactly as it is (compared without its indentation, which the
mutated line keeps), the mutated line, and the pytest node ids that should catch it. The script copies the
working tree (tracked and untracked, not ignored files) into a temporary folder once, runs the named tests
there unmutated (they must pass), then for each mutant writes the mutated file, runs
`python -m pytest -x -q <node ids>` with OMP_NUM_THREADS=1, and writes the file back. The working tree is
never touched. It prints one row per mutant (killed: a named test failed; alive: they all passed; stale: the
line is no longer in the file, or is there more than once; error: pytest could not run the tests) and the
kill rate over killed + alive. A developer's routine, not run in CI (it takes minutes: every mutant starts
pytest anew).

To add a mutant, append a `Mutant(...)` to `CORE` or `EXPERIMENT` (the experiment layer's: builder/, cli,
sharing, sampling, train, ...) below; nothing else needs changing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str  # short, unique
    file: str  # relative to the repository root
    original: str  # the line as it is in the file (leading and trailing whitespace ignored)
    mutated: str  # what it becomes (the original's indentation is kept)
    tests: tuple[str, ...]  # pytest node ids (files, or file::test) that should catch it
    why: str = ""  # the bug it stands for


T_PC = "tests/test_pc_score_sde.py"
T_REF = "tests/test_reference_conventions.py"
T_DDIM = "tests/test_ddim_reference.py"
T_KD = "tests/test_k_diffusion_reference.py"

CORE: list[Mutant] = [
    # --- the bugs the tests once let through ---------------------------------------------------------------
    Mutant("is-drops-remainder", "scorelib/metrics/fid.py",
           "part = p[i * n // splits:(i + 1) * n // splits]",
           "part = p[i * (n // splits):(i + 1) * (n // splits)]",
           ("tests/test_evaluate.py::test_inception_score_splits_are_torch_fidelitys_for_any_n",),
           "Inception Score chunks drop the last N mod splits rows"),
    Mutant("quantize-floors", "scorelib/precond.py",
           "t = t.round().long() if self.quantize else t.to(sigma.dtype)",
           "t = t.floor().long() if self.quantize else t.to(sigma.dtype)",
           ("tests/test_adapters.py::test_eps_to_score_quantize_rounds_to_the_nearest_timestep",),
           "EpsToScore(quantize=True) floors t(σ) instead of rounding"),
    Mutant("dsm-ignores-anneal-power", "scorelib/losses.py",
           "return per * sigma**anneal_power",
           "return per * sigma**2",
           ("tests/test_losses.py::test_dsm_weighting_follows_anneal_power",),
           "the DSM weight is always σ²"),
    Mutant("fast-sample-order-2", "scorelib/samplers/solvers.py",
           "order = 2 if nfe < 20 else 3",
           "order = 2",
           ("tests/test_ode_solvers.py::test_fast_sample_is_unipc_of_order_2_below_20_nfe_and_3_from_20",),
           "fast_sample never uses order 3"),
    # --- reference conventions -------------------------------------------------------------------------------
    Mutant("pc-vp-rd-euler-drift", "scorelib/samplers/pc.py",
           "a, c, tau = (m / m_next) * (2 - (1 - beta).sqrt()), beta / (m * m_next), beta.sqrt() / m_next",
           "a, c, tau = (m / m_next) * (1 + beta / 2), beta / (m * m_next), beta.sqrt() / m_next",
           (T_PC,), "VP reverse diffusion with the first-order drift 1 + β/2 instead of 2 - √(1-β)"),
    Mutant("pc-em-dt", "scorelib/samplers/pc.py",
           "dt = 1.0 / N",
           "dt = 1.0 / (N - 1)",
           (T_PC,), "Euler–Maruyama dt from the grid spacing instead of score_sde's 1/N"),
    Mutant("pc-index-rounds", "scorelib/schedules.py",
           "return (_f64(times) * (N - 1) / sde.T).long()",
           "return (_f64(times) * (N - 1) / sde.T).round().long()",
           (T_PC,), "score_sde's discrete table index rounded instead of floored"),
    Mutant("pc-langevin-noise", "scorelib/samplers/pc.py",
           "return x_mean + (2 * step).sqrt() * z, x_mean",
           "return x_mean + step.sqrt() * z, x_mean",
           (T_PC,), "Langevin corrector noise √ε instead of √(2ε)"),
    Mutant("pc-vp-ancestral-sqrt", "scorelib/samplers/pc.py",
           "r = 1 / (m_next * (1 - b).sqrt())",
           "r = 1 / (m_next * (1 - b))",
           (f"{T_REF}::test_vp_ancestral_predictor_and_corrector_alpha_match_score_sde",),
           "VP ancestral step divided by 1-β instead of √(1-β)"),
    Mutant("ddim-guidance-scale", "scorelib/samplers/ddim.py",
           "d = torch.add(d, guidance(x, sig_b[i]), alpha=cur[i] ** 2)",
           "d = torch.add(d, guidance(x, sig_b[i]), alpha=cur[i])",
           (T_DDIM,), "condition_score's shift of x̂₀ by σ g instead of σ² g"),
    Mutant("ddim-eta-noise", "scorelib/samplers/ddim.py",
           "up = (eta * nxt * (cur**2 - nxt**2).clamp(min=0).sqrt() / cur).minimum(nxt)",
           "up = (eta * (cur**2 - nxt**2).clamp(min=0).sqrt() / cur).minimum(nxt)",
           (T_DDIM, "tests/test_ddim.py"), "DDIM's σ_η without its σ' factor"),
    Mutant("ddpm-learned-variance-swapped", "scorelib/samplers/ddim.py",
           "var = torch.exp(v * log_b[i] + (1 - v) * log_bt[i])  # p_mean_variance, LEARNED_RANGE",
           "var = torch.exp(v * log_bt[i] + (1 - v) * log_b[i])  # p_mean_variance, LEARNED_RANGE",
           (f"{T_REF}::test_ddpm_ancestral_matches_improved_diffusion_on_a_respaced_grid",),
           "the learned-range interpolation between β̃ and β reversed"),
    Mutant("respaced-beta", "scorelib/samplers/ddim.py",
           "beta = (cur**2 - nxt**2) / (1 + cur**2)",
           "beta = (cur**2 - nxt**2) / (1 + nxt**2)",
           (f"{T_REF}::test_ddpm_ancestral_matches_improved_diffusion_on_a_respaced_grid",),
           "respaced β = 1 - ᾱ_t/ᾱ_t' taken at the wrong end of the step"),
    Mutant("respacing-half-up", "scorelib/schedules.py",
           "return [start + round(c) for c in itertools.accumulate([0.0] + [stride] * (count - 1))][:count]",
           "return [start + int(c + 0.5) for c in itertools.accumulate([0.0] + [stride] * (count - 1))][:count]",
           ("tests/test_schedules.py::test_uniform_respacing_is_improved_diffusions_for_every_length",),
           "respacing rounds ties up instead of to even"),
    Mutant("dpmpp-3m-warm-up", "scorelib/samplers/solvers.py",
           "taylor_warmup = to_zero and order == 3  # k-diffusion's 3M: its 2nd-order step is the Taylor form",
           "taylor_warmup = False",
           (T_KD,), "DPM-Solver++(3M)'s warm-up with 2M's coefficient"),
    Mutant("dpmpp-2m-coefficient", "scorelib/samplers/solvers.py",
           "x = x.add(d1_0, alpha=-0.5 * phi1)  # -φ₁ · (1/2r)(D_i - D_{i-1})",
           "x = x.add(d1_0, alpha=-phi1)  # -φ₁ · (1/2r)(D_i - D_{i-1})",
           (T_KD,), "DPM-Solver++(2M) correction without its ½"),
    # --- core primitives -------------------------------------------------------------------------------------
    Mutant("tweedie-sigma", "scorelib/adapters.py",
           "return x + _sig(sigma, x) ** 2 * score",
           "return x + _sig(sigma, x) * score",
           ("tests/test_adapters.py",), "Tweedie's D = x + σ s instead of x + σ² s"),
    Mutant("eps-input-scale", "scorelib/precond.py",
           "return x / append_dims(1 + sigma**2, x.ndim).sqrt(), self.timestep(sigma), cond",
           "return x / append_dims(1 + sigma**2, x.ndim), self.timestep(sigma), cond",
           ("tests/test_adapters.py",), "EpsToScore feeds x/(1+σ²) instead of x/√(1+σ²)"),
    Mutant("langevin-step-size", "scorelib/samplers/langevin.py",
           "alphas = (step_lr * (s64 / s64[-1]) ** 2).tolist()  # host floats, computed once",
           "alphas = (step_lr * (s64 / s64[-1])).tolist()  # host floats, computed once",
           ("tests/test_langevin.py",), "annealed Langevin α_i = step_lr·σ_i/σ_L instead of (σ_i/σ_L)²"),
    Mutant("heun-average", "scorelib/samplers/solvers.py",
           "x_next = torch.add(x, slope + slope2, alpha=0.5 * (sigma_next - sigma_hat))",
           "x_next = torch.add(x, slope + slope2, alpha=sigma_next - sigma_hat)",
           ("tests/test_ode_solvers.py::test_solvers_converge_at_their_order",), "Heun's average without its ½"),
    Mutant("bits-per-dim-sign", "scorelib/likelihood.py",
           "return -(nats + dims * math.log(bin_width)) / (dims * math.log(2))",
           "return -(nats - dims * math.log(bin_width)) / (dims * math.log(2))",
           ("tests/test_likelihood.py",), "the dequantisation offset subtracted instead of added"),
    Mutant("hutchinson-gaussian", "scorelib/likelihood.py",
           "probes = probes.sign()",
           "probes = probes",
           (f"{T_REF}::test_hutchinson_probes_are_rademacher_by_default",),
           "Hutchinson probes Gaussian where Rademacher is asked for"),
    Mutant("prior-logp-dims", "scorelib/schedules.py",
           "logp = -0.5 * (x64**2).sum(1) / std**2 - d * torch.log(std) - 0.5 * d * math.log(2 * math.pi)",
           "logp = -0.5 * (x64**2).sum(1) / std**2 - torch.log(std) - 0.5 * d * math.log(2 * math.pi)",
           ("tests/test_likelihood.py",), "the Gaussian prior's normaliser counted once, not per dimension"),
    Mutant("cfg-weight", "scorelib/guidance.py",
           "return torch.lerp(uncond, cond, 1 + _weight(w, x))",
           "return torch.lerp(uncond, cond, _weight(w, x))",
           ("tests/test_guidance.py",), "classifier-free guidance w·cond + (1-w)·uncond instead of (1+w, -w)"),
    Mutant("ema-rampup-counts-the-step", "scorelib/ema.py",
           "half = min(half, step * batch_size * rampup_ratio)",
           "half = min(half, (step + 1) * batch_size * rampup_ratio)",
           ("tests/test_ema.py",), "EDM's EMA ramp-up counts the images of the step being taken"),
    Mutant("pc-sigma-grid-em", "scorelib/samplers/pc.py",
           "c = 2 * cur * (cur - nxt)",
           "c = cur * (cur - nxt)",
           ("tests/test_sampler_contract.py", "tests/test_reference_conventions.py"),
           "the σ-grid Euler–Maruyama drift without its 2 (d[σ²] = 2σ dσ)"),
    Mutant("unipc-bh2", "scorelib/samplers/solvers.py",
           "b_h = math.expm1(hh)",
           "b_h = hh",
           ("tests/test_ode_solvers.py",), "UniPC's B(h) of bh1 where bh2 is asked for"),
    Mutant("ddpm-large-variance", "scorelib/samplers/ddim.py",
           "up = ((cur**2 - nxt**2) * (1 + nxt**2) / (1 + cur**2)).sqrt() * (nxt > 0)",
           "up = ((cur**2 - nxt**2) / (1 + cur**2)).sqrt() * (nxt > 0)",
           (T_REF, "tests/test_ddim.py"), "DDPM's σ_t² = β noise not carried into σ-space (× (1 + σ'²))"),
    Mutant("importance-weights", "scorelib/losses.py",
           "w = (self.losses**2).mean(1).sqrt()",
           "w = (self.losses**2).mean(1)",
           ("tests/test_losses.py",), "timesteps drawn ∝ E[L²] instead of √E[L²]"),
    Mutant("flow-drift", "scorelib/likelihood.py",
           "drift = -(sigma**2) * score(y, sigma.expand(batch))  # dx/du with u = log σ",
           "drift = -sigma * score(y, sigma.expand(batch))  # dx/du with u = log σ",
           ("tests/test_likelihood.py",), "the flow integrated in σ with the log σ drift's σ² (dx/dσ = -σ s)"),
    Mutant("classifier-grad-mean", "scorelib/guidance.py",
           "picked = logp.gather(1, self.y[:, None].to(logp.device)).sum()",
           "picked = logp.gather(1, self.y[:, None].to(logp.device)).mean()",
           (T_DDIM, "tests/test_guidance.py"), "classifier gradient of the batch mean: scaled by 1/B"),
]

# The experiment layer's mutants (builder/, cli, sharing, sampling, train, ...): append here.
EXPERIMENT: list[Mutant] = [
    Mutant("score-sde-ignores-ema", "scorelib/formats.py",
           'if ema and isinstance(obj.get("ema"), Mapping):',
           'if False and ema and isinstance(obj.get("ema"), Mapping):',
           ("tests/test_published.py::test_score_sde_discrete_checkpoints_use_level_and_timestep_labels",),
           "a score_sde checkpoint loads its raw weights where the EMA is asked for"),
    Mutant("fingerprint-without-weights", "scorelib/sampling.py",
           "fingerprint = hashlib.sha256((exp.fingerprints[purpose] + weights",
           "fingerprint = hashlib.sha256((exp.fingerprints[purpose]",
           ("tests/test_sharding.py::test_a_setting_is_named_by_its_config_weights_seed_and_chunk",),
           "chunks drawn with other weights are found again and reused"),
    Mutant("fingerprint-without-noise", "scorelib/builder/configs.py",
           'NOT_SAMPLING = ("training", "optim", "eval", "phema")',
           'NOT_SAMPLING = ("training", "optim", "eval", "phema", "noise")',
           ("tests/test_sharding.py::test_a_setting_is_named_by_its_config_weights_seed_and_chunk",),
           "chunks drawn under another noise process are found again and reused"),
    Mutant("importance-history-not-restored", "scorelib/train.py",
           'if "timesteps" in state and hasattr(self.loss_fn.timesteps, "load_state_dict"):',
           'if False and "timesteps" in state and hasattr(self.loss_fn.timesteps, "load_state_dict"):',
           ("tests/test_train_toy.py::test_resume_restores_the_importance_sampler_history",),
           "a resumed improved-DDPM run forgets its importance sampler's loss history"),
    Mutant("ema-rate-unchecked", "scorelib/builder/fields.py",
           '"ema_rate": F(0.999, "EMA decay per step (used when training.ema_halflife_kimg is 0)", UNIT),',
           '"ema_rate": F(0.999, "EMA decay per step (used when training.ema_halflife_kimg is 0)"),',
           ("tests/test_validate.py::test_range_rules",), "model.ema_rate = 1.5 passes validation"),
    Mutant("sigma-max-ignored", "scorelib/builder/samplers.py",
           "return min(cap, self.noise.sigma_max) if cap > 0 else self.noise.sigma_max",
           "return self.noise.sigma_max",
           ("tests/test_sampler_table.py",), "sampling.sigma_max does not move where the samplers start"),
]

MUTANTS = CORE + EXPERIMENT


def copy_tree(dst: Path) -> None:
    """The working tree's tracked and untracked (not ignored) files into `dst`."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split()[1].split(" - ")[0]
    return "?"


def apply(path: Path, m: Mutant) -> str | None:
    """Write the mutant into `path`; returns the original text, or None when the line is not there once."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == m.original.strip()]
    if len(hits) != 1:
        return None
    line = lines[hits[0]]
    indent = line[: len(line) - len(line.lstrip())]
    lines[hits[0]] = indent + m.mutated.strip() + ("\n" if line.endswith("\n") else "")
    path.write_text("".join(lines))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args()
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("mutant names must be unique")
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:32s} {m.file:32s} {m.why}")
        return 0
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    if args.only is not None and len(chosen) != len(set(args.only)):
        raise SystemExit(f"unknown mutant names: {sorted(set(args.only) - set(names))}")
    with tempfile.TemporaryDirectory(prefix="scorelib-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        baseline = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, out = run_tests(tree, baseline, args.timeout)
        if rc != 0:
            print(out[-4000:])
            raise SystemExit("the named tests fail without a mutant: fix them first")
        rows = []
        for m in chosen:
            path = tree / m.file
            start = time.perf_counter()
            original = apply(path, m) if path.is_file() else None
            if original is None:
                rows.append((m, "-", "stale", 0.0))
                continue
            try:
                rc, out = run_tests(tree, m.tests, args.timeout)
            finally:
                path.write_text(original)
            status = {0: "alive", 1: "killed", -1: "killed (timeout)"}.get(rc, "error")
            caught = first_failure(out) if rc == 1 else ("-" if rc == 0 else out.strip().splitlines()[-1][:60])
            rows.append((m, caught, status, time.perf_counter() - start))
            print(f"  {m.name}: {status}", file=sys.stderr, flush=True)
    print("| mutant | file | caught by | result | s |")
    print("| --- | --- | --- | --- | ---: |")
    for m, caught, status, secs in rows:
        print(f"| {m.name} | {m.file} | {caught} | {status} | {secs:.0f} |")
    killed = sum(status.startswith("killed") for _, _, status, _ in rows)
    alive = sum(status == "alive" for _, _, status, _ in rows)
    other = len(rows) - killed - alive
    rate = killed / (killed + alive) if killed + alive else float("nan")
    print(f"\nkill rate: {killed}/{killed + alive} = {rate:.0%}" + (f" ({other} stale or error)" if other else ""))
    return 0 if alive == 0 and other == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
