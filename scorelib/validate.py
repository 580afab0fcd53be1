"""Everything a run needs checked before it starts, so a mistake costs one line and no work.

The config itself is checked by building its `Experiment` (`builder.experiment`: every field against its
declaration, every cross-field rule where its object is built). `check` then builds what the run will
build, cheaply (the networks on the meta device, the σ grid), and checks the paths: the workdir
creatable and writable, the checkpoint to sample from present and of the data the config names, and a
workdir's checkpoints holding the network the config describes before training resumes from them.
Each failure is a `ConfigError` whose message reads `<field or path>: <what is wrong> (<what is allowed>)`;
the CLI prints it as one line and exits 2. `check` returns one-line warnings for fields set on the
command line that the run ignores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from .builder import Experiment, experiment
from .builder.configs import ARCHITECTURE_DATA_FIELDS, stored_config
from .builder.declare import ConfigError, format_value
from .builder.fields import leaves
from .builder.samplers import METHOD_FIELDS
from .checkpoint import CheckpointError, list_checkpoints, list_phema, none_readable, read_torch


def check_buildable(exp: Experiment) -> None:
    """Build what the run will build, cheaply (the networks on the meta device, the σ grid), so a value
    the constructors reject is reported now; their message is prefixed with the section."""
    try:
        exp.sampler.grid  # noqa: B018 (built and cached)
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"sampling: the σ grid cannot be built: {e} (see sampling.n_steps, sampling.spacing)") from e
    if exp.mode not in ("likelihood", "train") and (problem := exp.sampler.problem()):
        raise ConfigError(problem)
    section = "classifier" if exp.family == "classifier" else "model"
    try:
        with torch.device("meta"):
            exp.network()
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        what = exp.f.model.name if section == "model" else "classifier"
        raise ConfigError(f"{section}: the {what} network cannot be built: {str(e).splitlines()[0]} "
                          f"(see the {section}.* fields)") from e


def check_workdir(workdir: str | Path) -> None:
    """The workdir exists as a writable directory, or can be created (nothing is created here)."""
    path = Path(workdir)
    if not str(workdir):
        raise ConfigError("--workdir: empty (a directory path)")
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path}: the workdir is a file (a directory, or a path that can be created)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{path}: the workdir is not writable (a directory you can write to)")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{path}: the workdir cannot be created, {parent} is a file (a directory path)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: the workdir cannot be created, {parent} is not writable "
                          "(a directory you can write to)")


def check_writable(out: Path, workdir: Path) -> None:
    """A file can be written in the folder `out` (a folder of `workdir`), checked without leaving anything behind."""
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"--workdir={workdir} is not writable ({out}: {err})") from err
    finally:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _network_shapes(config: object) -> dict[str, tuple[int, ...]] | None:
    try:
        exp = experiment(config, mode="resume")
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in exp.network().state_dict().items()}
    except Exception:  # a stored config of an older layout: the loader reports it
        return None


def check_resume(config: object, workdir: str | Path) -> None:
    """Training into a workdir that has checkpoints resumes from them: they must hold the network the
    config describes (compared on the meta device, before any weights are read). A mismatch names the
    workdir, the fields that differ, and suggests a new workdir."""
    workdir = Path(workdir)
    stored = stored_config(workdir / "checkpoints") if (workdir / "checkpoints").is_dir() else None
    if stored is None:
        check_some_checkpoint_readable(workdir / "checkpoints")
        return
    want, have = _network_shapes(config), _network_shapes(stored)
    if want is None or have is None or want == have:
        return
    now, then = leaves(config), leaves(stored)
    arch = ("model.", "noise.", "classifier.", "training.target", *(f"data.{k}" for k in ARCHITECTURE_DATA_FIELDS))
    diff = [k for k in now if k.startswith(arch) and k in then and now[k] != then[k] and k != "model.ema_rate"]
    shown = ", ".join(f"{k}={format_value(then[k])} there, {format_value(now[k])} now" for k in diff[:4])
    raise ConfigError(f"{workdir}: its checkpoints hold a different network ({shown or 'other layer shapes'}); "
                      f"training would resume from them (use a new --workdir, e.g. {workdir}-2, or the stored "
                      f"values{' of ' + ', '.join(diff[:4]) if diff else ''})")


def check_some_checkpoint_readable(directory: Path) -> None:
    """A workdir whose checkpoints are all unreadable (empty, truncated, ...) is not trained again from step 0
    over them: that would lose the run without a word. The error names the newest file and what it is."""
    found, newest_error = list_checkpoints(directory), None
    for _, path in reversed(found):
        try:
            read_torch(path, mmap=True)  # memory-mapped: no weights are read
            return
        except CheckpointError as e:
            newest_error = newest_error or e
    if newest_error is not None:
        it = "it" if len(found) == 1 else "them"
        raise ConfigError(f"{none_readable(newest_error, len(found))}: training does not start again from step 0 "
                          f"over {it} (move {it} away to train from scratch)")


def check_checkpoint_source(exp: Experiment, workdir: Path, overridden: Iterable[str]) -> None:
    """For the modes that run a trained network: the checkpoint exists, and holds a model of the data the
    config names (unless the data fields were given on the command line)."""
    s = exp.f.sampling
    if s.checkpoint and not Path(s.checkpoint).exists():
        raise ConfigError(f"sampling.checkpoint: {s.checkpoint} does not exist (a checkpoint .pt, a .safetensors "
                          "file, an EDM .pkl or a workdir)")
    if s.guidance == "classifier" and exp.f.classifier.workdir and not Path(exp.f.classifier.workdir).exists():
        raise ConfigError(f"classifier.workdir: {exp.f.classifier.workdir} does not exist (a workdir trained "
                          "with --config.training.target=classifier, its checkpoint, or a guided-diffusion "
                          "classifier .pt)")
    if s.guidance == "auto" and not Path(s.guide_checkpoint).exists():
        raise ConfigError(f"sampling.guide_checkpoint: {s.guide_checkpoint} does not exist (the guide's checkpoint, "
                          "run directory or EDM2 .pkl)")
    if exp.source is None:
        raise ConfigError(f"{workdir / 'checkpoints'}: no checkpoints (train first with --mode=train, or set "
                          "--config.sampling.checkpoint)")
    changed = {k: v for k, v in exp.replaced.items() if k not in set(overridden)}
    if changed:
        shown = ", ".join(f"{k}={format_value(new)!s} there, {format_value(old)} in the config"
                          for k, (old, new) in changed.items())
        raise ConfigError(f"{exp.source}: holds a model of other data ({shown}); use the config it was trained "
                          f"with, or give {', '.join(f'--config.{k}' for k in changed)} to sample it anyway")


def ignored_fields(exp: Experiment, overridden: Iterable[str] = (), quick: bool = False) -> list[str]:
    """One-line warnings for fields given on the command line that this run does not read."""
    out = []
    reads, s, mode = exp.sampler.reads(), exp.f.sampling, exp.mode
    for key in overridden:
        section, _, name = key.partition(".")
        if section == "sampling" and name in METHOD_FIELDS and name not in reads:
            out.append(f"{key} is ignored by sampling.method={s.method!r} (it reads "
                       f"{', '.join(sorted(reads)) or 'none of the method fields'})")
        elif key == "sampling.guidance_scale" and s.guidance == "none":
            out.append(f"{key} is ignored with sampling.guidance='none'")
        elif section == "training" and name != "threads" and mode in ("sample", "eval", "likelihood"):
            out.append(f"{key} is ignored by --mode={mode}")
    if s.class_label != -1 and not exp.guidance.labelled:
        out.append(f"sampling.class_label={s.class_label} is ignored: the model is not class-conditional")
    if quick and mode != "bench":
        out.append(f"--quick is ignored by --mode={mode} (it selects the small grid of --mode=bench)")
    return out


def check(exp: Experiment, config: object, workdir: str | Path, overridden: Iterable[str] = (),
          quick: bool = False) -> list[str]:
    """Everything a `main.py --mode=MODE` run needs checked before it reads data or writes a file, given
    its experiment (already built, so the config's fields and rules hold). Raises ConfigError (one line);
    returns the warnings."""
    workdir = Path(workdir)
    check_buildable(exp)
    check_workdir(workdir)
    if exp.mode == "train":
        check_resume(config, workdir)
    elif exp.mode in ("sample", "eval", "likelihood"):
        check_checkpoint_source(exp, workdir, overridden)
    elif exp.mode == "phema" and not list_phema(workdir):
        raise ConfigError(f"{workdir / 'phema'}: no power-EMA snapshots (train with "
                          "--config.training.phema_sigma_rels='(0.05, 0.1)' first)")
    return ignored_fields(exp, overridden, quick)
