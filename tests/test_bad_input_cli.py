"""Bad input through the real CLI (`python main.py`), one row per mistake: exit code 2, no traceback,
exactly one line `scorelib: <field or path>: ...` that names the field or path (never torch's own text,
which advises loading with weights_only=False), and nothing written: not the row's `absent` path (by
default its workdir), and nothing in the fixtures (trained runs, files) changed or deleted. The cases run
concurrently in one fixture (each is a ~2 s process start); each row is then its own test."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from builds import network
from cli_helpers import run_main, write_fake_cifar10

from scorelib.checkpoint import config_to_json, save_checkpoint
from scorelib.presets import resolve_config

TOY = "--config=toy_gmm"
DDPM = "--config=ddpm_cifar"
TRAIN_TOY = [TOY, "--config.training.n_iters=2", "--config.training.snapshot_freq=2",
             "--config.training.eval_at_end=False", "--config.training.log_freq=1"]
SAMPLE = [TOY, "--mode=sample"]
HUGE = 10**14  # a batch of 10^14 2-D points asks for 728 TiB: refused by the allocator at once
# a tiny image run whose evaluation needs the FID Inception (training first checks what the evaluation needs)
CIFAR = ["--config=ncsn_cifar", "--config.data.root={tmp}/cifar", "--config.data.download=False"]
CIFAR_TRAIN = [*CIFAR, "--config.model.nf=8", "--config.training.eval_at_end=True", "--config.training.n_iters=1",
               "--config.training.batch_size=2"]
CIFAR_EVAL = [*CIFAR, "--mode=eval", "--config.sampling.checkpoint={tmp}/image_run"]


class Case(NamedTuple):
    name: str
    args: list[str]
    line: str  # what the one line must contain
    absent: str  # what must not exist afterwards ({run}: the case's own workdir)
    memory_gib: float | None  # an address-space cap for the rows that fail an allocation


def case(name: str, args: list[str], line: str, absent: str = "{run}", memory_gib: float | None = None) -> Case:
    return Case(name, args, line, absent, memory_gib)


# {tmp}: a folder with the fixtures below; each case gets its own workdir {run} = {tmp}/<name>/run unless it
# passes --workdir.
CASES: list[Case] = [
    # the command line and config files
    case("no-config", [], "--config: required"),
    case("unknown-config", ["--config=nonexistent"], "--config: unknown config 'nonexistent'"),
    case("missing-config-file", ["--config={tmp}/nope.py"], "--config: {tmp}/nope.py does not exist"),
    case("typo-in-config-file", ["--config={tmp}/typo.py"], "data.tyop: unknown config field (did you mean data.toy"),
    case("config-file-raises", ["--config={tmp}/raises.py"],
         "{tmp}/raises.py: the config file raised ZeroDivisionError"),
    case("config-file-no-get-config", ["--config={tmp}/empty.py"],
         "{tmp}/empty.py: the config file has no get_config()"),
    case("unknown-override", [TOY, "--config.training.nope=3"], "training.nope: unknown config field"),
    case("override-typo-suggests", [TOY, "--config.sampling.n_step=3"], "did you mean sampling.n_steps"),
    case("override-wrong-type", [TOY, "--config.training.batch_size=abc"], "--config.training.batch_size=abc"),
    case("unknown-mode", [TOY, "--mode=foo"], "--mode=foo"),
    case("stray-argument", [TOY, "extra"], "unexpected arguments: extra"),
    # one field out of its range or list
    case("log-freq-zero", [TOY, "--config.training.log_freq=0"], "training.log_freq: 0 is not allowed (> 0)"),
    case("batch-size-zero", [TOY, "--config.training.batch_size=0"], "training.batch_size: 0 is not allowed (> 0)"),
    case("n-samples-zero", [TOY, "--config.sampling.n_samples=0"], "sampling.n_samples: 0"),
    case("eval-n-samples-zero", [TOY, "--config.eval.n_samples=0"], "eval.n_samples: 0"),
    case("unknown-toy", [TOY, "--config.data.toy=spiral"], "data.toy: 'spiral' is not allowed (one of: gmm8"),
    case("unknown-predictor", [TOY, "--config.sampling.method=pc", "--config.sampling.predictor=foo"],
         "sampling.predictor: 'foo' is not allowed (one of: reverse_diffusion"),
    case("unknown-corrector", [TOY, "--config.sampling.method=pc", "--config.sampling.corrector=foo"],
         "sampling.corrector: 'foo'"),
    case("solver-order-4", [TOY, "--config.sampling.method=unipc", "--config.sampling.order=4"],
         "sampling.order: 4 is not allowed (one of: 1, 2, 3)"),
    case("init-typo", [TOY, "--config.sampling.init=gausian"],
         "sampling.init: 'gausian' is not allowed (one of: uniform"),
    case("eta-above-one", [TOY, "--config.sampling.eta=1.5"], "sampling.eta: 1.5"),
    case("unknown-variance", [TOY, "--config.sampling.variance=medium"], "sampling.variance: 'medium'"),
    case("unknown-ode-method", [TOY, "--config.sampling.ode_method=rk45"], "sampling.ode_method: 'rk45'"),
    case("unknown-spacing", [DDPM, "--config.sampling.spacing=random"], "sampling.spacing: 'random'"),
    case("unknown-method", [TOY, "--config.sampling.method=langevin"], "sampling.method: 'langevin'"),
    case("unknown-optimizer", [TOY, "--config.optim.optimizer=sgd"], "optim.optimizer: 'sgd'"),
    case("negative-lr", [TOY, "--config.optim.lr=-1"], "optim.lr: -1"),
    case("unknown-device", [TOY, "--config.device=tpu"], "device: 'tpu'"),
    case("unknown-dataset", [TOY, "--config.data.dataset=imagenet"], "data.dataset: 'imagenet'"),
    case("unknown-model", [TOY, "--config.model.name=unet"], "model.name: 'unet'"),
    case("dropout-above-one", [DDPM, "--config.model.dropout=1.5"], "model.dropout: 1.5"),
    case("unknown-beta-schedule", [DDPM, "--config.noise.beta_schedule=sigmoid"], "noise.beta_schedule: 'sigmoid'"),
    # rules across fields
    case("sigma-min-above-max", [TOY, "--config.noise.sigma_min=20.0"],
         "noise.sigma_max: 10 is not above noise.sigma_min=20"),
    case("class-label-is-the-null-label", ["--config=adm_cifar", "--config.sampling.class_label=10"],
         "sampling.class_label: 10 is not a class of this 10-class model (0..9"),
    case("cfg-on-unconditional", [TOY, "--config.sampling.guidance=cfg"],
         "sampling.guidance: 'cfg' needs a class-cond"),
    case("classifier-guidance-without-classifier", [DDPM, "--config.sampling.guidance=classifier"],
         "classifier.workdir: empty"),
    case("n-steps-above-T", [DDPM, "--config.sampling.n_steps=2000"],
         "sampling.n_steps: 2000 is more than the model's T=noise.num_scales=1000"),
    case("attention-resolution-missing", [DDPM, "--config.model.attn_resolutions=(5,)"],
         "model.attn_resolutions: 5 not among the network's resolutions at data.image_size=32 (32, 16, 8, 4)"),
    case("model-does-not-fit-noise", [TOY, "--config.noise.kind=ddpm"],
         "noise.kind: 'ddpm' does not fit model.name='mlp'"),
    case("linear-betas-too-few-steps", [DDPM, "--config.noise.num_scales=10"],
         "noise.num_scales: 10 is too few for noise.beta_end=0.02"),
    case("loss-does-not-fit-noise", [TOY, "--config.training.loss=eps"],
         "training.loss: 'eps' needs noise.kind='ddpm'"),
    case("hybrid-without-learned-variance", [DDPM, "--config.training.loss=hybrid"],
         "training.loss: 'hybrid' trains a learned variance but model.learn_sigma=False"),
    case("cifar-at-64px", ["--config=ncsn_cifar", "--config.data.image_size=64"],
         "data.image_size: 64 does not fit data.dataset='cifar10' (32)"),
    # paths
    case("workdir-is-a-file", [TOY, "--workdir={tmp}/a_file"], "{tmp}/a_file: the workdir is a file"),
    case("workdir-under-a-file", [TOY, "--workdir={tmp}/a_file/run"],
         "{tmp}/a_file/run: the workdir cannot be created, {tmp}/a_file is a file"),
    case("sample-without-checkpoints", [TOY, "--mode=sample"], "{tmp}/sample-without-checkpoints/run/checkpoints: no "
                                                           "checkpoints"),
    case("missing-sampling-checkpoint", [TOY, "--mode=sample", "--config.sampling.checkpoint={tmp}/none.pt"],
         "sampling.checkpoint: {tmp}/none.pt does not exist"),
    case("resume-with-another-architecture", [*TRAIN_TOY, "--config.model.nf=64", "--workdir={tmp}/trained"],
         "{tmp}/trained: its checkpoints hold a different network (model.nf=128 there, 64 now)"),
    case("checkpoint-not-a-checkpoint", [TOY, "--mode=sample", "--config.sampling.checkpoint={tmp}/a_file"],
         "{tmp}/a_file is a text file, not a PyTorch checkpoint (it starts with 'not a directory')"),
    case("cifar-missing", ["--config=ncsn_cifar", "--config.data.root={tmp}/no_cifar", "--config.data.download=False"],
         "CIFAR-10 not found: {tmp}/no_cifar/cifar-10-batches-py lacks"),
    case("mnist-missing", ["--config=ncsn_mnist", "--config.data.root={tmp}/no_mnist", "--config.data.download=False"],
         "MNIST file train-images-idx3-ubyte(.gz) not found in {tmp}/no_mnist"),
    case("image-folder-empty", ["--config=ncsnv2_celeba", "--config.data.root={tmp}/no_images"],
         "image folder {tmp}/no_images contains no images"),
    # files that are not what they claim: one line naming the file and what it is
    case("checkpoint-empty", [*SAMPLE, "--config.sampling.checkpoint={tmp}/files/empty.pt"],
         "{tmp}/files/empty.pt is empty (0 bytes: a write that never finished?)"),
    case("checkpoint-truncated", [*SAMPLE, "--checkpoint={tmp}/files/cut.pt"],
         "{tmp}/files/cut.pt is truncated (1000 bytes, a zip archive without its end: a copy or write cut short)"),
    case("checkpoint-random-bytes", [TOY, "--mode=likelihood", "--checkpoint={tmp}/files/noise.pt"],
         "{tmp}/files/noise.pt is not a PyTorch checkpoint (neither a zip archive nor a pickle; its first bytes are "
         "07 08 09 0a)"),
    case("only-checkpoint-truncated", [*TRAIN_TOY, "--workdir={tmp}/only_cut"],
         "{tmp}/only_cut/checkpoints/checkpoint_00000002.pt is truncated (1000 bytes, a zip archive without its end: "
         "a copy or write cut short), and it is the only checkpoint there: training does not start again from step 0 "
         "over it (move it away to train from scratch)", absent="{tmp}/only_cut/.lock"),
    case("only-checkpoint-empty", [*SAMPLE, "--config.sampling.checkpoint={tmp}/only_empty"],
         "{tmp}/only_empty/checkpoints/checkpoint_00000002.pt is empty (0 bytes: a write that never finished?), and "
         "it is the only checkpoint there"),
    case("inception-weights-random-bytes", [*CIFAR_TRAIN, "--config.eval.inception_path={tmp}/files/noise.pt"],
         "eval.inception_path: the Inception weights file {tmp}/files/noise.pt is not a PyTorch checkpoint"),
    case("inception-weights-truncated", [*CIFAR_EVAL, "--config.eval.inception_path={tmp}/files/cut.pt"],
         "eval.inception_path: the Inception weights file {tmp}/files/cut.pt is truncated (1000 bytes"),
    # a batch that does not fit in memory: the field and the memory it asked for
    case("training-batch-too-large", [*TRAIN_TOY, f"--config.training.batch_size={HUGE}"],
         f"training.batch_size={HUGE}: the batch does not fit in CPU memory (an allocation of 727.60 TiB failed); "
         "use a smaller training.batch_size", absent="{run}/checkpoints", memory_gib=4),
    case("sampling-batch-too-large", [*SAMPLE, "--config.sampling.checkpoint={tmp}/trained",
                                      f"--config.sampling.batch_size={HUGE}", f"--config.sampling.n_samples={HUGE}"],
         f"sampling.batch_size={HUGE}: the batch does not fit in CPU memory (an allocation of 727.60 TiB failed)",
         memory_gib=4),
    case("eval-batch-too-large", [TOY, "--mode=eval", "--config.sampling.checkpoint={tmp}/trained",
                                  f"--config.eval.batch_size={HUGE}", f"--config.eval.n_samples={HUGE}"],
         f"eval.batch_size={HUGE}: the batch does not fit in CPU memory (an allocation of 727.60 TiB failed)",
         memory_gib=4),
    # the run's place and what it reads
    case("workdir-empty", [TOY, "--workdir="], "--workdir: empty (a directory path)"),
    case("stats-path-not-read", [TOY, "--mode=eval", "--config.sampling.checkpoint={tmp}/trained",
                                 "--config.eval.stats_path={tmp}/files/stats.npz"],
         "eval.stats_path: {tmp}/files/stats.npz is not read by this evaluation (it computes"),
    case("checkpoint-of-other-data",
         ["--config={tmp}/grid.py", "--mode=sample", "--config.sampling.checkpoint={tmp}/trained"],
         "{tmp}/trained: holds a model of other data (data.toy=gmm8 there, grid25 in the config); use the config it "
         "was trained with, or give --config.data.toy to sample it anyway"),
]


def _tree(path: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))
            if p.relative_to(path).parts[0] not in skip}


def _write_fixtures(tmp: Path) -> None:
    (tmp / "typo.py").write_text("from configs.toy_gmm import get_config as toy\n\n\ndef get_config():\n"
                                 "    c = toy()\n    c.data.tyop = 'gmm8'\n    return c\n")
    (tmp / "grid.py").write_text("from configs.toy_gmm import get_config as toy\n\n\ndef get_config():\n"
                                 "    c = toy()\n    c.data.toy = 'grid25'\n    return c\n")
    (tmp / "raises.py").write_text("def get_config():\n    return 1 / 0\n")
    (tmp / "empty.py").write_text("X = 1\n")
    (tmp / "a_file").write_text("not a directory")
    (tmp / "no_images").mkdir()
    (tmp / "no_images" / "notes.txt").write_text("no images here")
    files = tmp / "files"
    files.mkdir()
    head = (tmp / "trained" / "checkpoints" / "checkpoint_00000002.pt").read_bytes()[:1000]
    (files / "empty.pt").write_bytes(b"")
    (files / "cut.pt").write_bytes(head)
    (files / "noise.pt").write_bytes(bytes(range(7, 256)) * 8)
    np.savez(files / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    for name, data in (("only_cut", head), ("only_empty", b"")):
        (tmp / name / "checkpoints").mkdir(parents=True)
        (tmp / name / "checkpoints" / "checkpoint_00000002.pt").write_bytes(data)
    write_fake_cifar10(tmp / "cifar", n_per_batch=4)
    image = resolve_config("ncsn_cifar")
    image.model.nf = 8
    net = network(image)
    save_checkpoint(tmp / "image_run" / "checkpoints" / "checkpoint_00000001.pt",
                    {"model": net.state_dict(), "ema": net.state_dict(), "config": config_to_json(image), "step": 1})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    trained = run_main(*TRAIN_TOY, f"--workdir={tmp / 'trained'}")
    assert trained.returncode == 0, trained.stderr
    _write_fixtures(tmp)
    names = tuple(c.name for c in CASES)
    before = _tree(tmp, names)
    keys = {"tmp": tmp}

    def one(c: Case):
        run = tmp / c.name / "run"
        args = [a.format(**keys) for a in c.args]
        if args and not any(a.startswith("--workdir") for a in args):
            args.append(f"--workdir={run}")
        r = run_main(*args, timeout=180, memory_limit_gib=c.memory_gib)
        return c.name, (r, c.line.format(**keys), Path(c.absent.format(run=run, **keys)))

    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        out = dict(pool.map(one, CASES))
    if os.environ.get("SCORELIB_BAD_INPUT_TABLE"):  # the table of what each case prints, for the docs
        rows = [f"| {n} | `{' '.join(a.format(**keys) for a in c.args)}` | `{out[n][0].stderr.strip()}` |"
                for n, c in zip(names, CASES, strict=True)]
        Path(os.environ["SCORELIB_BAD_INPUT_TABLE"]).write_text(
            "| case | arguments | what it prints (exit 2) |\n|---|---|---|\n" + "\n".join(rows).replace(str(tmp), "TMP")
            + "\n")
    return tmp, out, before, names


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(results, name):
    tmp, out, before, names = results
    r, needle, absent = out[name]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout and "weights_only" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("scorelib: warning:")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("scorelib: ") and needle in lines[0], lines[0]
    assert not absent.exists()  # by default the workdir: nothing written, not even the folder
    assert _tree(tmp, names) == before  # no fixture written, changed or deleted
