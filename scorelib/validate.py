"""Every check a run needs before it starts, so a mistake costs one line and no work:

- the config's rules (`scorelib.rules`: fields known, typed and in range; cross-field and per-mode
  rules) and what the run will build, built cheaply (the network on the meta device, the σ grid);
- the workdir creatable and writable, the checkpoint to sample from present, and a workdir's
  checkpoints holding the network the config describes before training resumes from them.

Each failure is a `build.ConfigError` whose message reads `<field or path>: <what is wrong>
(<what is allowed>)`; the CLI prints it as one line and exits 2. `check_run` also returns one-line
warnings for fields set on the command line that the chosen method ignores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from ml_collections import ConfigDict

from . import build
from .build import ConfigError
from .checkpoint import list_checkpoints
from .rules import (  # noqa: F401 (the rules are part of validate's interface)
    CROSS_RULES,
    FIELD_RULES,
    MODE_RULES,
    _get,
    check_cross_fields,
    check_fields,
    check_ranges,
    unknown_field_error,
)


def check_buildable(config: Any, mode: str) -> None:
    """Build what the run will build, cheaply (the network on the meta device, the σ grid), so a value
    the constructors reject is reported now; their message is prefixed with the section."""
    try:
        build.sampling_grid(config)
        build.sigma_range(config)
        build.create_sampler(config)  # its own checks (e.g. a learned variance the model lacks)
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"sampling: the σ grid cannot be built: {e} (see sampling.n_steps, sampling.spacing)") from e
    try:
        with torch.device("meta"):
            build.create_network(config)
            if config.sampling.guidance == "classifier" and mode != "train":
                build.create_classifier(config)
    except ConfigError:
        raise
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        section = "classifier" if config.training.target == "classifier" else "model"
        raise ConfigError(f"{section}: the {config.model.name if section == 'model' else 'classifier'} network "
                          f"cannot be built: {str(e).splitlines()[0]} (see the {section}.* fields)") from e


def check_config(config: Any, mode: str = "train") -> None:
    """All config checks: fields, ranges, cross-field rules, buildability."""
    check_fields(config)
    check_ranges(config)
    check_cross_fields(config, mode)
    check_buildable(config, mode)


# ---------------------------------------------------------------------------------------------
# Paths: the workdir, the checkpoint to sample from, resuming a workdir
# ---------------------------------------------------------------------------------------------


def check_workdir(workdir: str | Path) -> None:
    """The workdir exists as a writable directory, or can be created (nothing is created here)."""
    path = Path(workdir)
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


def _leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys"):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple | list) else value
    return out


def _network_shapes(config: Any) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in build.create_network(config).state_dict().items()}
    except Exception:  # a stored config of an older layout: the loader reports it
        return None


def check_resume(config: Any, workdir: str | Path) -> None:
    """Training into a workdir that has checkpoints resumes from them: they must hold the network the
    config describes (compared on the meta device, before any weights are read). A mismatch names the
    workdir, the fields that differ, and suggests a new workdir."""
    workdir = Path(workdir)
    stored = build.stored_config(workdir / "checkpoints") if (workdir / "checkpoints").is_dir() else None
    if stored is None:
        return
    want, have = _network_shapes(config), _network_shapes(stored)
    if want is None or have is None or want == have:
        return
    now, then = _leaves(config), _leaves(stored)
    arch = ("model.", "noise.", "classifier.", "training.target",
            *(f"data.{k}" for k in build.ARCHITECTURE_DATA_FIELDS))
    diff = [k for k in now if k.startswith(arch) and k in then and now[k] != then[k] and k != "model.ema_rate"]
    shown = ", ".join(f"{k}={build.format_value(then[k])} there, {build.format_value(now[k])} now" for k in diff[:4])
    raise ConfigError(f"{workdir}: its checkpoints hold a different network ({shown or 'other layer shapes'}); "
                      f"training would resume from them (use a new --workdir, e.g. {workdir}-2, or the stored "
                      f"values{' of ' + ', '.join(diff[:4]) if diff else ''})")


def check_checkpoint_source(config: Any, workdir: Path) -> ConfigDict | None:
    """For sample / eval / likelihood: the checkpoint exists; returns its stored config (None if unknown)."""
    if path := config.sampling.checkpoint:
        if not Path(path).exists():
            raise ConfigError(f"sampling.checkpoint: {path} does not exist (a checkpoint .pt, a .safetensors "
                              "file or a workdir)")
        return build.stored_config(path)
    if config.sampling.guidance == "classifier" and config.classifier.workdir:
        if not Path(config.classifier.workdir).exists():
            raise ConfigError(f"classifier.workdir: {config.classifier.workdir} does not exist (a workdir trained "
                              "with --config.training.target=classifier, its checkpoint, or a guided-diffusion "
                              "classifier .pt)")
    if not list_checkpoints(workdir / "checkpoints"):
        raise ConfigError(f"{workdir / 'checkpoints'}: no checkpoints (train first with --mode=train, or set "
                          "--config.sampling.checkpoint)")
    return build.stored_config(workdir)


# ---------------------------------------------------------------------------------------------
# Warnings: fields set on the command line that the run ignores
# ---------------------------------------------------------------------------------------------

GRID_FIELDS = ("n_steps", "spacing")
SAMPLER_SPECIFIC = frozenset({f for fields in build.SAMPLER_FIELDS.values() for f in fields} | set(GRID_FIELDS))


def sampler_reads(config: Any) -> set[str]:
    """The method-specific sampling.* fields the configured sampler reads (its `build.SAMPLERS` entry)."""
    return build.sampler_reads(build.sampler_options(config))


def ignored_fields(config: Any, mode: str, overridden: Iterable[str] = (), quick: bool = False) -> list[str]:
    """One-line warnings for fields given on the command line that this run does not read."""
    out = []
    reads = sampler_reads(config)
    s = config.sampling
    for key in overridden:
        section, _, field = key.partition(".")
        if section == "sampling" and field in SAMPLER_SPECIFIC and field not in reads:
            out.append(f"{key} is ignored by sampling.method={s.method!r} (it reads "
                       f"{', '.join(sorted(reads)) or 'none of the method fields'})")
        elif key == "sampling.guidance_scale" and s.guidance == "none":
            out.append(f"{key} is ignored with sampling.guidance='none'")
        elif section == "training" and field != "threads" and mode in ("sample", "eval", "likelihood"):
            out.append(f"{key} is ignored by --mode={mode}")
    labelled = build.is_class_conditional(config) or s.guidance == "classifier"
    if s.class_label != -1 and not labelled:
        out.append(f"sampling.class_label={s.class_label} is ignored: the model is not class-conditional")
    if quick and mode != "bench":
        out.append(f"--quick is ignored by --mode={mode} (it selects the small grid of --mode=bench)")
    return out


def check_run(config: Any, workdir: str | Path, mode: str, overridden: Iterable[str] = (),
              quick: bool = False) -> list[str]:
    """Everything a `main.py --mode=MODE` run needs checked before it reads data or writes a file.
    Raises ConfigError (one line); returns the warnings."""
    workdir = Path(workdir)
    check_config(config, mode)
    check_workdir(workdir)
    if mode == "train":
        check_resume(config, workdir)
    elif mode in ("sample", "eval", "likelihood"):
        stored = check_checkpoint_source(config, workdir)
        if stored is not None:  # sampling runs the stored network: its labels and guidance apply
            model_config = build.with_stored_model(config, stored)
            check_cross_fields(model_config, mode)
            config = model_config
    return ignored_fields(config, mode, overridden, quick)
