"""Configs derived from configs: dotted overrides, a checkpoint's stored network laid over the current
config, and the fingerprint of what a drawn sample depends on."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from ..checkpoint import stored_config_text, weights_source
from ..defaults import config_from_json
from .names import ARCHITECTURE_DATA_FIELDS, ConfigError


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the config with dotted keys set, e.g. {"sampling.n_steps": 10}; an unknown key raises
    ConfigError naming it."""
    out = copy.deepcopy(config)
    with out.unlocked():
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                if part not in node:
                    raise ConfigError(f"unknown config key {key!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"unknown config key {key!r}")
            node[leaf] = value
    return out


def with_stored_model(config: Any, stored: Any) -> Any:
    """A copy of the config whose model, noise and the data fields that shape the network come from
    `stored` (a checkpoint's config), so sampling and evaluation flags still apply to a trained model."""
    out = copy.deepcopy(config)
    with out.unlocked():
        out.model, out.noise = copy.deepcopy(stored.model), copy.deepcopy(stored.noise)
        for key in ARCHITECTURE_DATA_FIELDS:
            out.data[key] = stored.data[key]
    return out


def sampling_fingerprint(config: Any, purpose: str) -> str:
    """The config fields a drawn sample depends on, as sorted JSON: everything but how many samples are
    drawn, where from and what is done with them (n_samples, sampling.checkpoint — the weights are
    fingerprinted separately —, data.root, training, optim, eval), tagged with `purpose`
    ("sample" / "eval"). Chunks of a sharded run are reused only under the same fingerprint."""
    fields = {k: v for k, v in config.to_dict().items() if k not in ("training", "optim", "eval")}
    fields["sampling"] = {k: v for k, v in fields["sampling"].items() if k not in ("n_samples", "checkpoint")}
    fields["data"] = {k: v for k, v in fields["data"].items() if k not in ("root", "download")}
    return json.dumps({"purpose": purpose, "config": fields}, sort_keys=True, default=str)


def for_evaluation(config: Any) -> Any:
    """The config with sampling.batch_size = eval.batch_size (evaluation draws in its own batches)."""
    return with_overrides(config, {"sampling.batch_size": config.eval.batch_size})



def stored_config(source: str | Path) -> ConfigDict | None:
    """The config stored with the newest readable checkpoint at `source` (see
    `checkpoint.stored_config_text`), over the current defaults; None when there is none."""
    found = stored_config_text(source)
    return None if found is None else config_from_json(*found)


def checkpoint_source(config: Any, workdir: str | Path | None) -> Path | None:
    """Where the run's weights come from: sampling.checkpoint when set, else the workdir when it holds
    checkpoints, else None."""
    return weights_source(config.sampling.checkpoint, workdir)
