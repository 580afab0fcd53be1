"""Configs as files and as derived values: config files run once, dotted overrides, the config stored with
a checkpoint (read without its weights) laid over the current one, and the fingerprint of what a drawn
sample depends on."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from ..checkpoint import CheckpointError, stored_config_text
from ..formats import EDM2_RECORD, read_torch_file, snapshot_record
from ..models.edm import DHARIWALUNET_DEFAULTS, PRECOND_DEFAULTS, PRECOND_KINDS, SONGUNET_DEFAULTS, SONGUNET_VARIANTS
from ..pickles import PickledObject
from .declare import ConfigError
from .fields import base
from .networks import PRECONDS

REPO_ROOT = Path(__file__).resolve().parents[2]  # holds configs/, which the config files import
# the data fields that shape the network: a checkpoint's stored values replace the current ones
ARCHITECTURE_DATA_FIELDS = ("dataset", "toy", "channels", "image_size", "centered", "num_classes")
# the sections a drawn sample does not depend on
NOT_SAMPLING = ("training", "optim", "eval", "phema")


class NoGetConfig(AttributeError):
    """A config file without a get_config() function."""


def run_config_file(path: Path, arg: str | None = None) -> Any:
    """What the config file at `path` returns from `get_config()` (`get_config(arg)` when `arg` is given),
    run with `REPO_ROOT` importable, since configs/*.py start from `configs.default`. The file's own
    exceptions propagate; a file without get_config() raises NoGetConfig."""
    spec = importlib.util.spec_from_file_location(f"_scorelib_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise NoGetConfig(f"{path}: the config file has no get_config()")
        return module.get_config() if arg is None else module.get_config(arg)
    finally:
        sys.path.remove(str(REPO_ROOT))


def merged(stored: dict) -> ConfigDict:
    """A stored config (a plain dict, e.g. from JSON) laid over `base()`: unknown fields are kept,
    missing ones get their defaults."""
    out = base()

    def lay(target: ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and key in target and isinstance(target[key], ConfigDict):
                lay(target[key], value)
            else:
                with target.ignore_type():
                    target[key] = value

    lay(out, stored)
    return out


def config_from_json(text: str, source: str | Path) -> ConfigDict:
    """A stored config (JSON text from `source`), laid over the current defaults (`merged`)."""
    try:
        stored = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{source}: the config is not valid JSON ({e})") from e
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: the config is not a JSON object")
    return merged(stored)


def stored_config(source: str | Path, over: Any = None) -> ConfigDict | None:
    """The config stored with the newest readable checkpoint at `source` (see
    `checkpoint.stored_config_text`), over the current defaults; for an EDM / EDM2 snapshot the config its
    records describe (`snapshot_config`, over `over`); None when there is none."""
    if Path(source).suffix == ".pkl" and Path(source).is_file():  # an EDM / EDM2 network pickle
        return snapshot_config(source, base() if over is None else over)
    found = stored_config_text(source)
    return None if found is None else config_from_json(*found)


def _variant(kwargs: dict[str, Any]) -> str:
    """Which of EDM's SongUNet variants (DDPM++ / NCSN++) the constructor arguments are."""
    for name, variant in SONGUNET_VARIANTS.items():
        if all(tuple(kwargs[k]) == tuple(v) if isinstance(v, tuple) else kwargs[k] == v for k, v in variant.items()):
            return name
    raise ValueError("a SongUNet that is neither EDM's DDPM++ nor its NCSN++ (train.py --arch)")


def _edm_network(config: ConfigDict, record: PickledObject) -> None:
    """model.* / noise.* / data shape of an EDM network record (EDM training/networks.py `*Precond` around
    `SongUNet` / `DhariwalUNet`; EDM's constructor defaults where the record has none)."""
    m, n, d = config.model, config.noise, config.data
    net = record.child("model")
    song = net.class_name == "SongUNet"
    k = {**(SONGUNET_DEFAULTS if song else DHARIWALUNET_DEFAULTS), **net.init_kwargs}
    m.name = f"edm_{_variant(k)}" if song else "edm_adm"
    m.precond = PRECOND_KINDS[record.class_name]
    p = {**PRECOND_DEFAULTS[record.class_name], **record.init_kwargs}
    m.nf, m.ch_mult, m.num_res_blocks = k["model_channels"], tuple(k["channel_mult"]), k["num_blocks"]
    m.attn_resolutions, m.dropout = tuple(k["attn_resolutions"]), k["dropout"]
    m.channel_mult_emb = k["channel_mult_emb"]
    m.augment_dim, m.class_dropout = k["augment_dim"], k["label_dropout"]
    d.image_size, d.channels, d.num_classes = k["img_resolution"], k["in_channels"], k["label_dim"]
    n.kind = PRECONDS[m.precond].noise[0]  # the noise process the preconditioning is trained and sampled in
    if m.precond == "edm":
        m.sigma_data = p["sigma_data"]
    if m.precond == "vp":
        n.beta_min, n.beta_max, n.eps = p["beta_min"], p["beta_min"] + p["beta_d"], p["epsilon_t"]
    if m.precond == "ve":
        n.sigma_min, n.sigma_max = p["sigma_min"], p["sigma_max"]


def _edm2_network(config: ConfigDict, record: PickledObject) -> None:
    """model.* / data shape of an EDM2 network record (EDM2 training/networks_edm2.py `Precond`)."""
    m, d, k = config.model, config.data, record.init_kwargs
    m.name, m.precond, m.nf = "edm2", "edm2", k["model_channels"]
    m.ch_mult, m.num_res_blocks = tuple(k.get("channel_mult", (1, 2, 3, 4))), k.get("num_blocks", 3)
    m.attn_resolutions, m.dropout = tuple(k.get("attn_resolutions", (16, 8))), k.get("dropout", 0.0)
    m.num_head_channels, m.logvar_channels = k.get("channels_per_head", 64), k.get("logvar_channels", 128)
    m.sigma_data = k.get("sigma_data", 0.5)
    d.image_size, d.channels, d.num_classes = k["img_resolution"], k["img_channels"], k.get("label_dim", 0)
    config.noise.kind = PRECONDS[m.precond].noise[0]


def snapshot_config(path: str | Path, over: Any) -> ConfigDict:
    """`over` with the network an EDM / EDM2 snapshot describes: its records' constructor arguments read as
    data (scorelib.pickles; no code from the file runs). EDM's sampling range σ ∈ [0.002, 80] (generate.py)."""
    obj = read_torch_file(Path(path))
    record = snapshot_record(obj)
    if record is None:
        raise CheckpointError(f"{path}: no EDM / EDM2 network under 'ema'")
    config = copy.deepcopy(over)
    with config.unlocked():
        try:
            (_edm2_network if record.class_name == EDM2_RECORD else _edm_network)(config, record)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: not one of the networks scorelib reads from EDM / EDM2 ({e})") from e
        if config.noise.kind == "edm":
            config.noise.sigma_min, config.noise.sigma_max = 0.002, 80.0
        config.data.centered = True
    return config


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
    `stored` (a checkpoint's config), so sampling and evaluation fields still apply to a trained model."""
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
    fields = {k: v for k, v in config.to_dict().items() if k not in NOT_SAMPLING}
    fields["sampling"] = {k: v for k, v in fields["sampling"].items() if k not in ("n_samples", "checkpoint")}
    fields["data"] = {k: v for k, v in fields["data"].items() if k not in ("root", "download")}
    return json.dumps({"purpose": purpose, "config": fields}, sort_keys=True, default=str)


def for_evaluation(config: Any) -> Any:
    """The config with sampling.batch_size = eval.batch_size (evaluation draws in its own batches)."""
    return with_overrides(config, {"sampling.batch_size": config.eval.batch_size})
