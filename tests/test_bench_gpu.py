"""CPU smoke test of benchmarks/bench_gpu.py at tiny sizes: every task row of the device table runs."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_gpu():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] not in ("config", "---"):
            rows[(cells[0], cells[1])] = cells
    return rows


def test_bench_gpu_runs_every_task_on_the_cpu(capsys):
    bench = _bench_gpu()
    bench.main(["--device", "cpu", "--tiny", "--batch", "2", "--steps", "1", "--configs", "toy_gmm"])
    rows = _rows(capsys.readouterr().out)
    tasks = ["train", *(f"sample {m}" for m in bench.SAMPLERS), "likelihood"]
    for task in tasks:
        cells = rows[("toy_gmm", task)]
        assert re.fullmatch(r"\d+\.\d\d (it|samples)/s", cells[3]) and float(cells[3].split()[0]) > 0, cells
    assert rows[("-", "FID pipeline")][3].endswith("samples/s")


@pytest.mark.slow
def test_bench_gpu_runs_every_config_on_the_cpu(capsys):
    bench = _bench_gpu()
    bench.main(["--device", "cpu", "--tiny", "--batch", "2", "--steps", "1", "--no-fid"])
    rows = _rows(capsys.readouterr().out)
    for name in bench.CONFIGS:
        assert rows[(name, "train")][3].endswith("it/s")
        likelihood = rows[(name, "likelihood")]  # random weights may make dopri5 underflow: reported, not raised
        assert likelihood[3].endswith("samples/s") or "dopri5 failed" in likelihood[4]
