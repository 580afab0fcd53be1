"""The sampler benchmark (`scorelib.bench`): outputs, failed rows, NFE accounting, checkpoints, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builds import exp_of, network

from scorelib import bench
from scorelib.builder import experiment
from scorelib.checkpoint import config_to_json, save_checkpoint
from scorelib.data import toy_mixture
from scorelib.presets import resolve_config
from scorelib.samplers._common import CountingScore

ROOT = Path(__file__).resolve().parents[1]
N = 64  # samples per row: enough for the metrics, seconds for the quick grid


def toy_config():
    config = resolve_config("toy_gmm")
    config.eval.n_samples = 512  # the true samples the metrics compare with
    return config


def _boom(score, x0, g):
    score(x0, torch.full((x0.shape[0],), 10.0))
    raise RuntimeError("boom: this sampler always fails")


def _overspends(score, x0, g):  # claims 1 evaluation, makes 2
    s = torch.full((x0.shape[0],), 10.0)
    score(x0, s)
    return x0 + score(x0, s)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    config = toy_config()
    workdir = tmp_path_factory.mktemp("toy")
    exp = experiment(config, workdir, "bench")
    cases = bench.default_cases(exp, quick=True)
    broken = bench.Case("broken", "broken", "raises", _boom, 1, True)
    liar = bench.Case("liar", "liar", "reports 1 NFE, makes 2", _overspends, 1, True)
    cases = [*cases[:3], broken, liar, *cases[3:]]
    report = bench.run(exp, workdir, quick=True, n_samples=N, cases=cases, progress=False)
    return config, cases, workdir, report


def test_toy_run_writes_table_csv_json_with_the_expected_columns(toy_run):
    _, cases, workdir, report = toy_run
    out = workdir / "bench"
    expected = {"sampler", "family", "settings", "nfe", "nfe_expected", "nfe_ok", "wall_s", "samples_per_s",
                "peak_mem_mib", "transport_error", "sliced_wasserstein", "mmd_rbf", "mean_log_density", "status",
                "error", "flags"}
    assert set(report.columns) == expected
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert set(reader.fieldnames) == expected
        csv_rows = list(reader)
    payload = json.loads((out / "results.json").read_text())
    # + two reference rows: fresh draws of the data and the tight ODE solution from the same noise
    assert len(csv_rows) == len(payload["rows"]) == len(cases) + 2
    assert [r["family"] for r in payload["rows"] if r["status"] == "reference"] == ["true samples",
                                                                                    "tight ODE (reference)"]
    assert set(payload["columns"]) == expected and "exact gmm8" in payload["meta"]["model"]
    md = (out / "results.md").read_text()
    assert "| family | settings | NFE | wall s | samples/s | peak MiB | transport err | SW₂ | MMD² | mean log p |" in md
    assert md.count("\n| ") == len(cases) + 3  # header + one line per row
    for family in ("ald (NCSN", "ald (NCSNv2", "pc (", "ddpm ancestral", "ddim η=0", "ddim η=0.5", "ddim η=1",
                   "ode (dopri5)", "heun", "dpm-solver++ 2M", "dpm-solver++ 3M", "unipc", "fast_sample"):
        assert any(r["family"].startswith(family) for r in payload["rows"]), family


def test_plots_are_written(toy_run):  # matplotlib is a dependency: the default install draws them
    _, _, workdir, _ = toy_run
    for name in ("quality_vs_nfe.png", "quality_vs_time.png"):
        assert (workdir / "bench" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sampler_that_raises_is_a_failed_row_and_the_rest_run(toy_run):
    _, cases, _, report = toy_run
    rows = {(r["sampler"], r["settings"]): r for r in report.rows}
    broken = rows[("broken", "raises")]
    assert broken["status"] == "failed" and "boom" in broken["error"] and math.isnan(broken["wall_s"])
    after = report.rows[report.rows.index(broken) + 1:]
    # every scorelib sampler after the broken one still ran (peer rows depend on what is installed)
    peer = ("k-diffusion", "diffusers", "liar")
    ours = [r for r in after if not r["sampler"].startswith(peer)]
    expected = [c for c in cases[cases.index(next(c for c in cases if c.name == "broken")) + 1:]
                if not c.name.startswith(peer)]
    assert len(ours) == len(expected) >= 10, [(r["sampler"], r["status"]) for r in ours]
    assert all(r["status"] == "ok" for r in ours), [(r["sampler"], r["status"]) for r in ours]
    for r in report.rows:
        if r["status"] == "ok":
            assert r["nfe"] > 0 and r["wall_s"] > 0 and r["samples_per_s"] > 0 and r["peak_mem_mib"] >= 0
            assert math.isfinite(r["sliced_wasserstein"]) and math.isfinite(r["mean_log_density"])


def test_transport_error_for_deterministic_samplers_only(toy_run):
    _, cases, _, report = toy_run
    for case, row in zip(cases, report.rows[2:], strict=True):
        if row["status"] != "ok":
            continue
        assert math.isfinite(row["transport_error"]) == case.deterministic, row["family"]
    by = {r["family"] + ", " + r["settings"]: r for r in report.rows}
    # the tighter the ODE or the better the solver, the smaller the error against the tight ODE solution
    assert by["ode (dopri5), rtol=atol=0.001"]["transport_error"] < 0.05
    assert by["fast_sample, budget 10"]["transport_error"] < by["ddim η=0, 10 steps, η=0"]["transport_error"]


def test_same_settings_give_the_same_samples_as_the_peers(toy_run):
    """Same initial noise everywhere: DPM-Solver++(2M) on a Karras grid agrees across scorelib, k-diffusion
    and diffusers' σ-space scheduler; DDIM η=0 on a geometric grid is k-diffusion's Euler on its exponential grid;
    DDPM ancestral (small variance) is DDIM η=1."""
    _, _, _, report = toy_run
    by = {r["family"]: r for r in report.rows if r["status"] == "ok"}
    if "k-diffusion sample_dpmpp_2m (Karras)" in by:
        a, b = by["dpm-solver++ 2M"]["transport_error"], by["k-diffusion sample_dpmpp_2m (Karras)"]["transport_error"]
        assert a == pytest.approx(b, rel=1e-3)
        a, b = by["ddim η=0"]["transport_error"], by["k-diffusion sample_euler (exponential)"]["transport_error"]
        assert a == pytest.approx(b, rel=1e-3)
    if "diffusers EDM dpm-solver++ 2M" in by:
        a, b = by["dpm-solver++ 2M"]["transport_error"], by["diffusers EDM dpm-solver++ 2M"]["transport_error"]
        assert a == pytest.approx(b, rel=1e-2)
    assert by["ddpm ancestral (small variance)"]["sliced_wasserstein"] == by["ddim η=1"]["sliced_wasserstein"]


def test_nfe_counted_by_the_bench_equals_what_each_sampler_says(toy_run):
    _, _, _, report = toy_run
    for r in report.rows:
        if r["sampler"] == "liar":
            assert r["status"] == "nfe mismatch" and r["nfe"] == 2 and r["nfe_expected"] == 1
        elif r["status"] == "ok":
            assert r["nfe_ok"] is True and r["nfe"] == r["nfe_expected"], r


def test_equal_nfe_accounting_with_an_independent_counting_score():
    """Every sampler of the quick grid, run on a counting wrapper of the exact score, makes exactly the number
    of evaluations the grid says (or, for the adaptive ODE, the number it reports itself); the numbers
    match the closed forms of each method."""
    config = toy_config()
    gmm = toy_mixture("gmm8")
    sigma_max, _ = exp_of(config).noise.sigma_range
    x0 = sigma_max * torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    closed_form = {"ald (NCSN: 100 steps/level)": 5 * 100, "ald (NCSNv2: 5 steps/level + denoise)": 10 * 5 + 1,
                   "pc (reverse diffusion + Langevin)": 2 * 10, "ddpm ancestral (small variance)": 10,
                   "ddim η=0": 10, "ddim η=0.5": 10, "ddim η=1": 10, "heun (EDM)": 2 * 5 - 1, "dpm-solver++ 2M": 10,
                   "dpm-solver++ 3M": 10, "unipc (3, bh2)": 10, "fast_sample": 10, "config": 20 * 20 + 1,
                   "k-diffusion sample_euler (Karras)": 10, "k-diffusion sample_heun (Karras)": 2 * 10 - 1,
                   "k-diffusion sample_dpmpp_2m (exponential)": 10, "diffusers EDM dpm-solver++ 2M": 10}
    seen = 0
    for case in bench.default_cases(experiment(config), quick=True):
        if case.skip:
            continue
        counting = CountingScore(gmm)
        out = case.sample(counting, x0.clone(), torch.Generator().manual_seed(5))
        x, reported = out if isinstance(out, tuple) else (out, None)
        assert x.shape == x0.shape and torch.isfinite(x).all(), case.family
        expected = case.nfe if case.nfe is not None else reported
        assert expected is not None and counting.nfe == expected, (case.family, counting.nfe, expected)
        if case.family in closed_form:
            assert counting.nfe == closed_form[case.family], case.family
            seen += 1
    assert seen >= 13


def test_a_checkpoint_in_the_workdir_is_benchmarked_instead_of_the_exact_score(tmp_path):
    config = toy_config()
    with config.unlocked():
        config.model.nf, config.model.num_res_blocks = 16, 1
    net = network(config)
    save_checkpoint(tmp_path / "checkpoints" / "checkpoint_00000001.pt",
                    {"model": net.state_dict(), "ema": net.state_dict(), "config": config_to_json(config), "step": 1})
    cases = [c for c in bench.default_cases(experiment(config), quick=True, peers=False)
             if c.family in ("ddim η=0", "ddim η=1")]
    report = bench.run(experiment(toy_config(), tmp_path, "bench"), tmp_path, n_samples=32, cases=cases,
                       progress=False, plots=False)
    assert "checkpoint" in report.meta["model"] and "EMA" in report.meta["model"]
    assert [r["status"] for r in report.rows] == ["reference", "reference", "ok", "ok"]
    assert math.isfinite(report.rows[2]["transport_error"]) and math.isnan(report.rows[3]["transport_error"])


def test_no_checkpoint_and_no_exact_score_is_a_clear_error(tmp_path):
    config = toy_config()
    with config.unlocked():
        config.data.toy = "moons"
    with pytest.raises(bench.CheckpointError, match="no checkpoints"):
        bench.run(experiment(config, tmp_path, "bench"), tmp_path, quick=True, progress=False)


def test_module_entry_point(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    args = ["--config", "configs/toy_gmm.py", "--workdir", str(tmp_path), "--quick", "--no-peers",
            "--n-samples", "32", "--config.sampling.n_steps_each=2", "--config.eval.n_samples=256"]
    r = subprocess.run([sys.executable, "-m", "scorelib.bench", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "| family | settings | NFE |" in r.stdout
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    assert rows[2]["family"] == "config" and rows[2]["nfe"] == 20 * 2 + 1
    # stderr is no terminal here: plain progress lines as --mode=sample writes them, no tqdm carriage returns
    n = len(rows) - 2
    assert "\r" not in r.stderr and r.stderr.splitlines()[0].startswith(f"bench: 1/{n} runs (")
    assert re.search(rf"^bench: {n}/{n} runs \(100%\), \S+ runs/s, ETA 0:00:00; ", r.stderr, re.M), r.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--config", "nope"], "no config 'nope'"),
    (["--config", "toy_gmm", "--config.sampling.method=bad"], "sampling.method: 'bad' is not allowed"),
])
def test_module_entry_point_user_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    workdir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "scorelib.bench", *args, "--workdir", str(workdir)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorelib.bench: ") and needle in lines[0], r.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_main_mode_bench_runs_the_full_grid(tmp_path):
    from cli_helpers import run_main

    r = run_main("--config=toy_gmm", "--mode=bench", f"--workdir={tmp_path}", "--config.eval.n_samples=64")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    # every case of the full grid (peer rows: those of the peers installed, or one skip row) + 2 reference rows
    expected = len(bench.default_cases(experiment(resolve_config("toy_gmm")), quick=False, peers=True)) + 2
    assert len(rows) == expected > 60 and all(r["status"] in ("ok", "reference", "skipped") for r in rows)
    ddim = {r["settings"] for r in rows if r["sampler"] == "ddim"}
    assert {f"{n} steps, η={eta}" for n in (10, 20, 50, 100, 1000) for eta in ("0", "0.5", "1")} <= ddim
