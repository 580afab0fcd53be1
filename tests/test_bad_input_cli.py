"""Bad input through the real CLI (`python main.py`), one row per mistake: exit code 2, no traceback,
exactly one line `scorelib: <field or path>: ...` that names the field or path, and nothing written
into the workdir. The cases run concurrently in one fixture (each is a ~2 s process start); each row
is then its own test."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import run_main

TOY = "--config=toy_gmm"
DDPM = "--config=ddpm_cifar"
TRAIN_TOY = [TOY, "--config.training.n_iters=2", "--config.training.snapshot_freq=2",
             "--config.training.eval_at_end=False", "--config.training.log_freq=1"]

# (id, arguments, text the one line must contain). {tmp}: a folder with the fixtures below; each case
# gets its own workdir {tmp}/<id>/run unless it passes --workdir.
CASES: list[tuple[str, list[str], str]] = [
    # the command line and config files
    ("no-config", [], "--config: required"),
    ("unknown-config", ["--config=nonexistent"], "--config: unknown config 'nonexistent'"),
    ("missing-config-file", ["--config={tmp}/nope.py"], "--config: {tmp}/nope.py does not exist"),
    ("typo-in-config-file", ["--config={tmp}/typo.py"], "data.tyop: unknown config field (did you mean data.toy"),
    ("config-file-raises", ["--config={tmp}/raises.py"], "{tmp}/raises.py: the config file raised ZeroDivisionError"),
    ("config-file-no-get-config", ["--config={tmp}/empty.py"], "{tmp}/empty.py: the config file has no get_config()"),
    ("unknown-override", [TOY, "--config.training.nope=3"], "training.nope: unknown config field"),
    ("override-typo-suggests", [TOY, "--config.sampling.n_step=3"], "did you mean sampling.n_steps"),
    ("override-wrong-type", [TOY, "--config.training.batch_size=abc"], "--config.training.batch_size=abc"),
    ("unknown-mode", [TOY, "--mode=foo"], "--mode=foo"),
    ("stray-argument", [TOY, "extra"], "unexpected arguments: extra"),
    # one field out of its range or list
    ("log-freq-zero", [TOY, "--config.training.log_freq=0"], "training.log_freq: 0 is not allowed (> 0)"),
    ("batch-size-zero", [TOY, "--config.training.batch_size=0"], "training.batch_size: 0 is not allowed (> 0)"),
    ("n-samples-zero", [TOY, "--config.sampling.n_samples=0"], "sampling.n_samples: 0"),
    ("eval-n-samples-zero", [TOY, "--config.eval.n_samples=0"], "eval.n_samples: 0"),
    ("unknown-toy", [TOY, "--config.data.toy=spiral"], "data.toy: 'spiral' is not allowed (one of: gmm8"),
    ("unknown-predictor", [TOY, "--config.sampling.method=pc", "--config.sampling.predictor=foo"],
     "sampling.predictor: 'foo' is not allowed (one of: reverse_diffusion"),
    ("unknown-corrector", [TOY, "--config.sampling.method=pc", "--config.sampling.corrector=foo"],
     "sampling.corrector: 'foo'"),
    ("solver-order-4", [TOY, "--config.sampling.method=unipc", "--config.sampling.order=4"],
     "sampling.order: 4 is not allowed (one of: 1, 2, 3)"),
    ("init-typo", [TOY, "--config.sampling.init=gausian"], "sampling.init: 'gausian' is not allowed (one of: uniform"),
    ("eta-above-one", [TOY, "--config.sampling.eta=1.5"], "sampling.eta: 1.5"),
    ("unknown-variance", [TOY, "--config.sampling.variance=medium"], "sampling.variance: 'medium'"),
    ("unknown-ode-method", [TOY, "--config.sampling.ode_method=rk45"], "sampling.ode_method: 'rk45'"),
    ("unknown-spacing", [DDPM, "--config.sampling.spacing=random"], "sampling.spacing: 'random'"),
    ("unknown-method", [TOY, "--config.sampling.method=langevin"], "sampling.method: 'langevin'"),
    ("unknown-optimizer", [TOY, "--config.optim.optimizer=sgd"], "optim.optimizer: 'sgd'"),
    ("negative-lr", [TOY, "--config.optim.lr=-1"], "optim.lr: -1"),
    ("unknown-device", [TOY, "--config.device=tpu"], "device: 'tpu'"),
    ("unknown-dataset", [TOY, "--config.data.dataset=imagenet"], "data.dataset: 'imagenet'"),
    ("unknown-model", [TOY, "--config.model.name=unet"], "model.name: 'unet'"),
    ("dropout-above-one", [DDPM, "--config.model.dropout=1.5"], "model.dropout: 1.5"),
    ("unknown-beta-schedule", [DDPM, "--config.noise.beta_schedule=sigmoid"], "noise.beta_schedule: 'sigmoid'"),
    # rules across fields
    ("sigma-min-above-max", [TOY, "--config.noise.sigma_min=20.0"],
     "noise.sigma_max: 10 is not above noise.sigma_min=20"),
    ("class-label-is-the-null-label", ["--config=adm_cifar", "--config.sampling.class_label=10"],
     "sampling.class_label: 10 is not a class of this 10-class model (0..9"),
    ("cfg-on-unconditional", [TOY, "--config.sampling.guidance=cfg"], "sampling.guidance: 'cfg' needs a class-cond"),
    ("classifier-guidance-without-classifier", [DDPM, "--config.sampling.guidance=classifier"],
     "classifier.workdir: empty"),
    ("n-steps-above-T", [DDPM, "--config.sampling.n_steps=2000"],
     "sampling.n_steps: 2000 is more than the model's T=noise.num_scales=1000"),
    ("attention-resolution-missing", [DDPM, "--config.model.attn_resolutions=(5,)"],
     "model.attn_resolutions: 5 not among the network's resolutions at data.image_size=32 (32, 16, 8, 4)"),
    ("model-does-not-fit-noise", [TOY, "--config.noise.kind=ddpm"], "noise.kind: 'ddpm' does not fit model.name='mlp'"),
    ("loss-does-not-fit-noise", [TOY, "--config.training.loss=eps"], "training.loss: 'eps' needs noise.kind='ddpm'"),
    ("hybrid-without-learned-variance", [DDPM, "--config.training.loss=hybrid"],
     "training.loss: 'hybrid' trains a learned variance but model.learn_sigma=False"),
    ("cifar-at-64px", ["--config=ncsn_cifar", "--config.data.image_size=64"],
     "data.image_size: 64 does not fit data.dataset='cifar10' (32)"),
    # paths
    ("workdir-is-a-file", [TOY, "--workdir={tmp}/a_file"], "{tmp}/a_file: the workdir is a file"),
    ("workdir-under-a-file", [TOY, "--workdir={tmp}/a_file/run"],
     "{tmp}/a_file/run: the workdir cannot be created, {tmp}/a_file is a file"),
    ("sample-without-checkpoints", [TOY, "--mode=sample"], "{tmp}/sample-without-checkpoints/run/checkpoints: no "
                                                           "checkpoints"),
    ("missing-sampling-checkpoint", [TOY, "--mode=sample", "--config.sampling.checkpoint={tmp}/none.pt"],
     "sampling.checkpoint: {tmp}/none.pt does not exist"),
    ("resume-with-another-architecture", [*TRAIN_TOY, "--config.model.nf=64", "--workdir={tmp}/trained"],
     "{tmp}/trained: its checkpoints hold a different network (model.nf=128 there, 64 now)"),
    ("checkpoint-not-a-checkpoint", [TOY, "--mode=sample", "--config.sampling.checkpoint={tmp}/a_file"],
     "{tmp}/a_file"),  # the loader's reason follows the path
    ("cifar-missing", ["--config=ncsn_cifar", "--config.data.root={tmp}/no_cifar", "--config.data.download=False"],
     "CIFAR-10 not found: {tmp}/no_cifar/cifar-10-batches-py lacks"),
    ("mnist-missing", ["--config=ncsn_mnist", "--config.data.root={tmp}/no_mnist", "--config.data.download=False"],
     "MNIST file train-images-idx3-ubyte(.gz) not found in {tmp}/no_mnist"),
    ("image-folder-empty", ["--config=ncsnv2_celeba", "--config.data.root={tmp}/no_images"],
     "image folder {tmp}/no_images contains no images"),
]


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "typo.py").write_text("from configs.toy_gmm import get_config as toy\n\n\ndef get_config():\n"
                                 "    c = toy()\n    c.data.tyop = 'gmm8'\n    return c\n")
    (tmp / "raises.py").write_text("def get_config():\n    return 1 / 0\n")
    (tmp / "empty.py").write_text("X = 1\n")
    (tmp / "a_file").write_text("not a directory")
    (tmp / "no_images").mkdir()
    (tmp / "no_images" / "notes.txt").write_text("no images here")
    trained = run_main(*TRAIN_TOY, f"--workdir={tmp / 'trained'}")
    assert trained.returncode == 0, trained.stderr
    before = {"trained": _tree(tmp / "trained"), "a_file": (tmp / "a_file").read_text()}

    def one(case):
        name, args, needle = case
        args = [a.format(tmp=tmp) for a in args]
        workdir = tmp / name / "run"
        if args and not any(a.startswith("--workdir") for a in args):
            args.append(f"--workdir={workdir}")
        return name, run_main(*args, timeout=120), needle.format(tmp=tmp), workdir

    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        out = {name: rest for name, *rest in pool.map(one, CASES)}
    return tmp, out, before


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(results, name):
    tmp, out, before = results
    r, needle, workdir = out[name]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("scorelib: warning:")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("scorelib: ") and needle in lines[0], lines[0]
    assert not workdir.exists()  # nothing written, not even the folder
    assert _tree(tmp / "trained") == before["trained"]
    assert (tmp / "a_file").read_text() == before["a_file"]
