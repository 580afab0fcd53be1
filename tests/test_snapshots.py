"""EDM and EDM2 network snapshots through scorelib's own entry points: `scorelib.load` and the CLI's
`--checkpoint=` read the network an EDM / EDM2 pickle describes (its records' constructor arguments, read as
data: tests/test_pickles.py pins the reader and the weight conversion against EDM's code), build it from a
config (builder/configs.py `snapshot_config`), give EDM's / EDM2's outputs, sample, and export to
safetensors. The fixtures are those of tests/test_pickles.py; EDM2's outputs on its fixture,
edm2-tiny-snapshot-outputs.json, were recorded by building EDM2's training/networks_edm2.py `Precond` from
the record's constructor arguments and loading its state_dict (CPU, float32)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_main, sample_file

import scorelib
from scorelib.builder.configs import snapshot_config
from scorelib.builder.fields import base

DATA = Path(__file__).parent / "data" / "edm"
OUTPUTS = torch.load(DATA / "edm_tiny_outputs.pt", weights_only=True)


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_scorelib_load_gives_edms_denoiser(name):
    case = OUTPUTS[name]
    model = scorelib.load(DATA / f"edm-tiny-{name}.pkl")
    assert not model.training and model.scorelib_config.model.name.startswith("edm_")
    kw = {"y": case["y"]} if case["y"] is not None and model.scorelib_config.data.num_classes else {}
    if case["augment_labels"] is not None:
        kw["augment_labels"] = case["augment_labels"]
    sigma = case["sigma"]
    with torch.no_grad():  # the recorder's input: x·(1 + σ)
        d = model.denoise(case["x"] * (1 + sigma.reshape(-1, 1, 1, 1)), sigma, **kw)
    assert float((d - case["D"]).abs().max() / case["D"].abs().max()) < 1e-5


def test_scorelib_load_gives_edm2s_denoiser_and_uncertainty():
    rec = json.loads((DATA / "edm2-tiny-snapshot-outputs.json").read_text())
    model = scorelib.load(DATA / "edm2-tiny-snapshot.pkl")
    c = model.scorelib_config
    assert (c.model.name, c.model.nf, c.data.image_size, c.data.num_classes) == ("edm2", 8, 8, 3)
    x, sigma, y = torch.tensor(rec["x"]), torch.tensor(rec["sigma"]), torch.tensor(rec["y"])
    with torch.no_grad():
        d, logvar = model.denoise_and_logvar(x, sigma, y=y)
    want = torch.tensor(rec["D"])
    assert float((d - want).abs().max() / want.abs().max()) < 1e-5
    torch.testing.assert_close(logvar, torch.tensor(rec["logvar"]), rtol=1e-5, atol=1e-6)


def test_an_edm_snapshot_exports_to_safetensors_and_back(tmp_path):
    model = scorelib.load(DATA / "edm-tiny-ncsnpp-ve-cond.pkl")
    scorelib.save(model, tmp_path / "m.safetensors")
    again = scorelib.load(tmp_path / "m.safetensors")
    case = OUTPUTS["ncsnpp-ve-cond"]
    with torch.no_grad():
        torch.testing.assert_close(again.denoise(case["x"], case["sigma"], y=case["y"]),
                                   model.denoise(case["x"], case["sigma"], y=case["y"]), rtol=0, atol=0)


def test_a_pickle_without_an_edm_network_names_the_file(tmp_path):
    path = tmp_path / "other.pkl"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(scorelib.checkpoint.CheckpointError, match=r"other\.pkl: no EDM / EDM2 network under 'ema'"):
        snapshot_config(path, base())


def test_cli_samples_from_an_edm_snapshot(tmp_path):
    """`--mode=sample --checkpoint=x.pkl`: the snapshot's network and conditioning with the config's sampler
    (EDM's Heun); the data shape it was trained at must be given when the config's differs."""
    pkl = DATA / "edm-tiny-ddpmpp-edm-uncond.pkl"
    args = ["--config=edm_cifar", "--mode=sample", f"--checkpoint={pkl}", "--config.sampling.n_steps=4",
            "--config.sampling.n_samples=6", "--config.sampling.batch_size=6", "--config.device=cpu"]
    wrong = run_main(*args, f"--workdir={tmp_path / 'w'}")
    assert wrong.returncode == 2 and "data.image_size=8 there, 32 in the config" in wrong.stderr, wrong.stderr
    r = run_main(*args, "--config.data.image_size=8", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    x = np.load(sample_file(tmp_path / "run", "heun", 6))["samples"]
    assert x.shape == (6, 3, 8, 8) and np.isfinite(x).all()
