"""Published checkpoints of the reference code, read into scorelib networks (docs/design.md §4). Core: it
reads files and maps their keys, and knows no configs (which network a format fits is the network
table's fact, scorelib.builder.networks; the architecture comes from a config, scorelib.presets).

Every file is read with `torch.load(weights_only=True)`: tensors, dicts, lists and numbers only, so no
file can run code. The format is told from the file's structure; the architecture and noise process
come from a scorelib config (the files carry none; scorelib.presets resolves it and holds the
improved-/guided-diffusion release presets). Formats and the layouts they are written in:

- ``ncsn``: ermongroup/ncsn `checkpoint.pth`, ``[DataParallel state_dict, optimizer]``
  (runners/anncal_runner.py `train`); CondRefineNetDilated, conditioned on the level index.
- ``ncsnv2``: ermongroup/ncsnv2 `checkpoint*.pth`, ``[state_dict, optimizer, epoch, step(, ema)]``
  (runners/ncsn_runner.py `train`); the EMA shadow (models/ema.py `EMAHelper`, parameter names without
  the DataParallel prefix) is used unless ``ema=False``.
- ``score_sde``: yang-song/score_sde_pytorch `checkpoint_*.pth`, ``{optimizer, model, ema, step}``
  (utils.py `save_checkpoint`); NCSN++ / DDPM++ keep their modules in one flat ``all_modules`` list
  (models/ncsnpp.py), renamed here; ``ema["shadow_params"]`` lists the trainable parameters in
  registration order (models/ema.py `ExponentialMovingAverage`).
- ``ddim``: the DDPM U-Net as ermongroup/ddim reads it (runners/diffusion.py `sample`): a plain
  state_dict (the converted DDPM CIFAR-10 / LSUN checkpoints of pesser/pytorch_diffusion) or the
  ``[state_dict, optimizer, epoch, step(, ema)]`` list of its own training runs (CelebA).
- ``openai``: openai/improved-diffusion and guided-diffusion `.pt` files, plain state_dicts of
  `UNetModel` (with or without learned Σ, class-conditional) or `EncoderUNetModel` (noisy classifier).
- ``diffusers``: a folder written by diffusers' `save_pretrained` (``unet/`` + ``scheduler/``, or a
  model folder with ``scheduler_config.json`` beside it), read through diffusers when it is installed.

EDM's `network-snapshot-*.pkl` files are pickles of code (torch_utils.persistence): `scorelib.pickles`
reads them as data. `read_checkpoint` reads any of these, or scorelib's own files (a training checkpoint,
a workdir's newest, a shared .safetensors model with its JSON config), without knowing any config.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from .adapters import timestep_to_sigma
from .checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_newest, read_torch
from .models.edm import convert_dhariwalunet_state, convert_songunet_state
from .models.ncsn_layers import convert_reference_state_dict
from .models.ncsnpp_layers import (
    AttnBlockpp,
    Combine,
    Downsample,
    FIRConv2d,
    GaussianFourierProjection,
    ResnetBlockBigGANpp,
    ResnetBlockDDPMpp,
    Upsample,
)
from .pickles import PickledObject, read_pickle
from .precond import EpsToScore
from .schedules import vp_sigmas
from .utils import append_dims

FORMATS = ("ncsn", "ncsnv2", "score_sde", "ddim", "openai", "openai_classifier", "edm", "edm2", "diffusers")
EDM2_RECORD = "Precond"  # EDM2's training/networks_edm2.py wrapper; EDM's are EDMPrecond, VPPrecond, ...


# ---------------------------------------------------------------------------------------------
# Reading a file
# ---------------------------------------------------------------------------------------------

_CODE_MARKERS = (b"torch_utils.persistence", b"dnnlib")


def read_torch_file(path: Path) -> Any:
    """The object in a `torch.save` file (`checkpoint.read_torch`: weights_only), or an EDM / EDM2 network
    pickle read as data (`pickles.read_pickle`); one CheckpointError line naming the file when it is missing,
    unreadable or would need code to unpickle."""
    if path.is_file() and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(1 << 20)
        if any(m in head for m in _CODE_MARKERS):  # EDM / EDM2 snapshots: read as data, their code never runs
            return read_pickle(path)
    return read_torch(path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _strip(state: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _family(state: Mapping[str, Tensor]) -> str | None:
    """Which reference network a state_dict belongs to, from its key names."""
    keys = set(_strip(state))
    if any(k.startswith("all_modules.") for k in keys):
        return "score_sde"
    if "temb.dense.0.weight" in keys and "conv_in.weight" in keys:
        return "ddim"
    if "time_embed.0.weight" in keys and "input_blocks.0.0.weight" in keys:
        return "openai" if any(k.startswith("output_blocks.") for k in keys) else "openai_classifier"
    if "begin_conv.weight" in keys:
        # CondRefineNetDilated normalises with the level embedding everywhere; NCSNv2 never does.
        return "ncsn" if any(".embed." in k for k in keys) else "ncsnv2"
    return None


def snapshot_record(obj: Any, ema: bool = True) -> PickledObject | None:
    """The network record of an EDM / EDM2 snapshot (the EMA network EDM stores under "ema"), or None."""
    record = obj.get("ema") if isinstance(obj, Mapping) else None
    return record if isinstance(record, PickledObject) else None


def detect_format(obj: Any, path: Path) -> str:
    """The published format of a loaded checkpoint object (one of FORMATS), from its structure."""
    if (record := snapshot_record(obj)) is not None:
        return "edm2" if record.class_name == EDM2_RECORD else "edm"
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj.get("ema"), Mapping) \
            and "shadow_params" in obj["ema"]:
        return "score_sde"
    if _is_state_dict(obj):
        family = _family(obj)
        if family is not None:
            return family
    if isinstance(obj, list | tuple) and obj and _is_state_dict(obj[0]):
        family = _family(obj[0])
        if family == "ncsn" and len(obj) == 2:
            return "ncsn"
        if family in ("ncsnv2", "ddim") and len(obj) in (4, 5) and all(isinstance(v, int) for v in obj[2:4]):
            return family
    if isinstance(obj, Mapping):
        what = f"a dict with keys {', '.join(sorted(map(str, obj))[:6])}"
    elif isinstance(obj, list | tuple):
        what = f"a list of {len(obj)} entries"
    else:
        what = f"a {type(obj).__name__}"
    raise CheckpointError(f"{path}: unknown checkpoint layout ({what}); scorelib reads its own checkpoints "
                          f"and those of ncsn, ncsnv2, score_sde, ddim, improved-/guided-diffusion, diffusers")


# ---------------------------------------------------------------------------------------------
# Weights of each format, in scorelib's parameter names
# ---------------------------------------------------------------------------------------------


def _ema_list_weights(obj: list, ema: bool) -> dict[str, Tensor]:
    """ncsnv2 / ddim training lists: the raw state_dict, overlaid with the EMA shadow (parameter names
    without `module.`, models/ema.py `EMAHelper.register`) when there is one and `ema`."""
    weights = _strip(obj[0])
    if ema and len(obj) == 5:
        shadow = obj[-1]
        if not _is_state_dict(shadow):
            raise CheckpointError("the EMA entry is not a dict of tensors")
        weights.update(_strip(shadow))
    return weights


def ncsnpp_reference_names(net: nn.Module) -> list[tuple[str, str, bool]]:
    """(score_sde name, scorelib name, is_nin) for every tensor of an `NCSNpp`, in the order
    score_sde's models/ncsnpp.py registers them in `all_modules` (its state_dict order).

    score_sde keeps one flat ModuleList (HEAD of yang-song/score_sde_pytorch: the parameter-free pyramid
    resamplers of "input_skip" / "output_skip" are attributes outside it, every other module takes an
    index). Its NIN layers (models/layers.py `NIN`, W: [in, out]) are our 1×1 convs (weight
    [out, in, 1, 1]): `is_nin` marks the tensors that need that transpose.
    """
    prefix = {id(m): name for name, m in net.named_modules()}
    names = []
    for i, m in enumerate(_ncsnpp_modules(net)):
        base = prefix[id(m)]
        names += [(f"all_modules.{i}.{ref}", f"{base}.{ours}", nin) for ref, ours, nin in _score_sde_tensors(m)]
    return names


def _ncsnpp_modules(net: nn.Module) -> Iterator[nn.Module]:
    """The modules of an `NCSNpp` that hold tensors, in the order of score_sde's `all_modules`."""
    if net.fourier is not None:
        yield net.fourier
    if net.temb_mlp is not None:
        yield from (net.temb_mlp[0], net.temb_mlp[2])
    yield net.conv_in
    for level in net.down:
        for block, attn in zip(level.blocks, level.attns, strict=True):
            yield block
            if not isinstance(attn, nn.Identity):
                yield attn
        if level.downsample is not None:
            yield level.downsample
            if level.progressive_input == "input_skip":  # its FIR / pooling downsampler is no list entry
                yield level.combine
            elif level.progressive_input == "residual":
                yield level.pyramid_down
    yield from (net.mid_block1, net.mid_attn, net.mid_block2)
    for level in net.up:
        yield from level.blocks
        if not isinstance(level.attn, nn.Identity):
            yield level.attn
        if level.progressive != "none":
            if level.pyramid_up is not None and level.progressive == "residual":
                yield level.pyramid_up  # output_skip's conv-less upsampler is no list entry
            if level.pyramid_norm is not None:
                yield from (level.pyramid_norm, level.pyramid_conv)
        if level.upsample is not None:
            yield level.upsample
    if net.norm_out is not None:
        yield from (net.norm_out, net.conv_out)


def _score_sde_tensors(m: nn.Module) -> list[tuple[str, str, bool]]:
    """(score_sde name inside its `all_modules` entry, our name inside the module, is_nin) of a module's tensors."""
    wb = ("weight", "bias")
    if isinstance(m, GaussianFourierProjection):
        return [("W", "W", False)]
    if isinstance(m, nn.Linear | nn.Conv2d | nn.GroupNorm | FIRConv2d | Combine):
        sub = "conv." if isinstance(m, Combine) else ""
        return [(f"{'Conv_0.' if sub else ''}{p}", f"{sub}{p}", False) for p in wb]
    if isinstance(m, Upsample | Downsample):
        if m.conv is None:
            return []
        ref = "Conv2d_0" if isinstance(m.conv, FIRConv2d) else "Conv_0"
        return [(f"{ref}.{p}", f"conv.{p}", False) for p in wb]
    if isinstance(m, AttnBlockpp):
        out = [(f"GroupNorm_0.{p}", f"norm.{p}", False) for p in wb]
        for i, ours in enumerate(("q", "k", "v", "proj_out")):
            out += [(f"NIN_{i}.W", f"{ours}.weight", True), (f"NIN_{i}.b", f"{ours}.bias", True)]
        return out
    if isinstance(m, ResnetBlockBigGANpp | ResnetBlockDDPMpp):
        return _score_sde_resnet_tensors(m)
    raise CheckpointError(f"no score_sde name for {type(m).__name__}")


def _score_sde_resnet_tensors(m: nn.Module) -> list[tuple[str, str, bool]]:
    """A ResNet block's tensors (layerspp.py `ResnetBlockBigGANpp` / `ResnetBlockDDPMpp`)."""
    wb = ("weight", "bias")
    out = [(f"GroupNorm_0.{p}", f"norm0.{p}", False) for p in wb]
    out += [(f"Conv_0.{p}", f"conv0.{p}", False) for p in wb]
    if m.temb_proj is not None:
        out += [(f"Dense_0.{p}", f"temb_proj.{p}", False) for p in wb]
    out += [(f"GroupNorm_1.{p}", f"norm1.{p}", False) for p in wb]
    out += [(f"Conv_1.{p}", f"conv1.{p}", False) for p in wb]
    if m.shortcut is not None:
        if isinstance(m, ResnetBlockBigGANpp):  # a real 1×1 conv (layerspp.conv1x1)
            out += [(f"Conv_2.{p}", f"shortcut.{p}", False) for p in wb]
        else:  # layers.NIN
            out += [("NIN_0.W", "shortcut.weight", True), ("NIN_0.b", "shortcut.bias", True)]
    return out


def _score_sde_weights(obj: Mapping[str, Any], net: nn.Module, ema: bool, path: Path) -> dict[str, Tensor]:
    """score_sde's `model` state_dict (or its EMA shadow_params) in scorelib names for `net` (an NCSNpp)."""
    state = _strip(obj["model"]) if "model" in obj else _strip(obj)
    state.pop("sigmas", None)  # a buffer of the config's geometric σ levels (models/ncsnpp.py)
    names = ncsnpp_reference_names(net)
    _check_names(state, [ref for ref, _, _ in names], path, "score_sde")
    if ema and isinstance(obj.get("ema"), Mapping):
        shadow = list(obj["ema"]["shadow_params"])
        # ExponentialMovingAverage keeps the parameters with requires_grad, in registration order: all
        # but the Gaussian Fourier frequencies (layerspp.GaussianFourierProjection, requires_grad=False).
        trainable = [ref for ref, ours, _ in names if not ours.endswith("fourier.W")]
        if len(shadow) != len(trainable):
            raise CheckpointError(f"{path}: the EMA holds {len(shadow)} tensors, the network has "
                                  f"{len(trainable)} trainable ones")
        state.update(zip(trainable, shadow, strict=True))
    out = {}
    for ref, ours, nin in names:
        v = state[ref]
        out[ours] = v.t()[:, :, None, None] if nin and v.ndim == 2 else v
    for key, value in net.state_dict().items():  # FIR kernels: buffers the reference computes on the fly
        out.setdefault(key, value)
    return out


def _check_names(state: Mapping[str, Tensor], want: list[str], path: Path, fmt: str) -> None:
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in set(want)]
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"{path}: the {fmt} weights do not fit the config's network: {first} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected)")


def published_weights(fmt: str, obj: Any, net: nn.Module, variant: str, ema: bool,
                      path: Path) -> dict[str, Tensor]:
    """The state_dict for `net` (built from the config) out of a checkpoint object of format `fmt`."""
    if fmt == "ncsn":
        return convert_reference_state_dict(obj[0])
    if fmt == "ncsnv2":
        if _is_state_dict(obj):
            return convert_reference_state_dict(obj, variant)
        return convert_reference_state_dict(_ema_list_weights(obj, ema), variant)
    if fmt == "score_sde":
        return _score_sde_weights(obj, net, ema, path)
    if fmt == "ddim":
        return _strip(obj) if _is_state_dict(obj) else _ema_list_weights(obj, ema)
    if fmt in ("openai", "openai_classifier"):
        return dict(obj)
    if fmt == "edm2":  # EDM2's Precond has the state_dict layout of scorelib's EDM2Network
        return {k: v.float() for k, v in snapshot_record(obj).state_dict().items()}
    if fmt == "edm":
        model = snapshot_record(obj).child("model")
        convert = convert_songunet_state if model.class_name == "SongUNet" else convert_dhariwalunet_state
        try:
            return convert({k: v.float() for k, v in model.state_dict().items()}, target=net, **model.init_kwargs)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: the EDM weights do not fit the config's network ({e})") from e
    raise CheckpointError(f"{path}: format {fmt!r} has no weights reader")


def fit_weights(net: nn.Module, state: Mapping[str, Tensor], path: Path, fmt: str) -> None:
    """Load `state` into `net` strictly; the error names the file and the first key that does not fit
    (missing, unexpected, or of another shape)."""
    own = net.state_dict()
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"{path}: the {fmt} weights do not fit the config's network: missing {key}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: the {fmt} weights do not fit the config's network: {key} has shape "
                                  f"{tuple(state[key].shape)} in the file, {tuple(value.shape)} in the network")
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"{path}: the {fmt} weights do not fit the config's network: unexpected {extra[0]} "
                              f"(+{len(extra) - 1} more)" if len(extra) > 1 else
                              f"{path}: the {fmt} weights do not fit the config's network: unexpected {extra[0]}")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# ---------------------------------------------------------------------------------------------
# diffusers folders
# ---------------------------------------------------------------------------------------------


def is_diffusers_folder(path: Path) -> bool:
    """A pipeline folder (unet/ + scheduler/) or a model folder with a scheduler config beside it."""
    return path.is_dir() and ((path / "unet" / "config.json").exists()
                              or ((path / "config.json").exists() and _scheduler_config(path) is not None))


def _scheduler_config(path: Path) -> Path | None:
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json",
                      path.parent / "scheduler" / "scheduler_config.json"):
        if candidate.exists():
            return candidate
    return None


class DiffusersEps(nn.Module):
    """A diffusers UNet2DModel as an ε(x_t, t) network: `.sample` of its output, converted to ε when the
    scheduler's prediction_type is "v_prediction" (ε = √ᾱ v + √(1-ᾱ) x_t, Salimans & Ho 2022)."""

    def __init__(self, unet: nn.Module, prediction_type: str, alphas_cumprod: Tensor):
        super().__init__()
        self.unet, self.prediction_type = unet, prediction_type
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)

    def forward(self, x_t: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        """x_t: [B, C, H, W]; t: [B] (fractional timesteps allowed) -> ε, x_t's shape."""
        out = self.unet(x_t, t, **kwargs).sample
        if self.prediction_type == "epsilon":
            return out
        sigma = timestep_to_sigma(t, vp_sigmas(self.alphas_cumprod)).to(x_t.dtype)
        a = append_dims(1 / (1 + sigma**2), x_t.ndim)  # ᾱ at t
        return a.sqrt() * out + (1 - a).sqrt() * x_t


def load_diffusers(path: Path) -> nn.Module:
    """A σ-space score model (eval mode) from a diffusers folder, through diffusers (an optional peer)."""
    try:
        import diffusers
    except ImportError as e:
        raise CheckpointError(f"{path} is a diffusers folder; reading it needs diffusers "
                              f"(pip install diffusers)") from e
    model_dir = path / "unet" if (path / "unet" / "config.json").exists() else path
    sched_path = _scheduler_config(path)
    if sched_path is None:
        raise CheckpointError(f"{path}: no scheduler config (scheduler/scheduler_config.json) beside the model")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(model_dir))
        scheduler = diffusers.DDPMScheduler.from_config(json.loads(sched_path.read_text()))
    except Exception as e:  # a foreign folder, a UNet2DConditionModel, unreadable weights, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: diffusers could not read it as a UNet2DModel with a DDPM-type "
                              f"scheduler ({first[:200]})") from e
    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise CheckpointError(f"{sched_path}: prediction_type={kind!r} is not supported (epsilon, v_prediction)")
    abar = scheduler.alphas_cumprod.to(torch.float64)
    return EpsToScore(DiffusersEps(unet, kind, abar), abar).eval()


# ---------------------------------------------------------------------------------------------
# Any checkpoint: scorelib's own (training checkpoints, workdirs, shared .safetensors) or a published one
# ---------------------------------------------------------------------------------------------

Weights = dict[str, torch.Tensor]


def newest_checkpoint(path: Path, ema: bool) -> tuple[Weights, str, Path]:
    """(weights, stored config JSON, file) of the newest readable checkpoint of a workdir or folder."""
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    ckpts = list_checkpoints(directory)
    if not ckpts:
        raise CheckpointError(f"no checkpoint_*.pt in {directory}")
    state = load_newest(directory)  # a CheckpointError naming the newest file when none is readable
    used = checkpoint_path(directory, int(state["step"])) if "step" in state else ckpts[-1][1]
    return state["ema"] if ema and state.get("ema") else state["model"], state["config"], used


def read_safetensors(path: Path) -> tuple[Weights, str, Path]:
    """(weights, config JSON, its file) of a shared model (`save`'s format)."""
    cfg_path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not cfg_path.exists():
        raise CheckpointError(f"{path}: its config {cfg_path} is missing")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    return weights, cfg_path.read_text(), path


def read_checkpoint(path: str | Path, ema: bool = True) -> tuple[Any, str | None, Path]:
    """What a checkpoint file or folder holds: (weights, stored config JSON, source) for scorelib's own
    formats (EMA weights when present and `ema`), or (the object as read, None, path) for a published
    file of the reference code, whose layout `detect_format` tells."""
    path = Path(path)
    if path.is_dir() and is_diffusers_folder(path):
        raise CheckpointError(f"{path} is a diffusers folder: scorelib.load gives its score model, but it has "
                              f"no scorelib network to train, sample with the CLI or export")
    if path.is_dir():
        return newest_checkpoint(path, ema)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = read_torch_file(path)
    if isinstance(state, dict) and "model" in state and "config" in state:
        return state["ema"] if ema and state.get("ema") else state["model"], state["config"], path
    return state, None, path


def fit_state(net: nn.Module, state: Weights, source: Path) -> None:
    """Load scorelib-format weights into `net`; a mismatch names the keys or the shapes that differ."""
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        def fmt(keys: set[str]) -> str:
            keys_sorted = sorted(keys)
            return ", ".join(keys_sorted[:5]) + (f" (+{len(keys_sorted) - 5} more)" if len(keys_sorted) > 5 else "")

        parts = ([f"missing {fmt(missing)}"] if missing else []) + ([f"unexpected {fmt(unexpected)}"] if unexpected
                                                                    else [])
        raise CheckpointError(f"{source}: the weights do not match the config's network: {'; '.join(parts)}")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: the weights do not match the config's network: "
                              f"{str(e).splitlines()[-1].strip()}") from e
