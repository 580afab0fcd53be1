"""Configs for published checkpoints (docs/design.md §4), which carry no architecture: the flags of the
improved-/guided-diffusion releases (OPENAI_PRESETS, by file stem), the scorelib config those flags
imply (`openai_config`), and `resolve_config`, which turns `scorelib.load`'s config argument (a
ConfigDict, a configs/ name, a config file or "openai:<preset>") into a ConfigDict. `scorelib.formats`
reads the files themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from .builder.configs import REPO_ROOT, run_config_file
from .builder.fields import base
from .checkpoint import CheckpointError

# ---------------------------------------------------------------------------------------------
# improved-diffusion / guided-diffusion presets: the flags their READMEs give for each released file
# ---------------------------------------------------------------------------------------------

_IDDPM = dict(num_heads=4, num_head_channels=-1, attention_resolutions="16,8", dropout=0.0, learn_sigma=False,
              class_cond=False, diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=True,
              use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False, channel_mult="")
_ADM = {**_IDDPM, "rescale_timesteps": False}  # guided_diffusion/script_util.py diffusion_defaults
_CLASSIFIER = dict(classifier=True, classifier_width=128, classifier_depth=2,
                   classifier_attention_resolutions="32,16,8", classifier_pool="attention", diffusion_steps=1000,
                   noise_schedule="linear")  # guided_diffusion/script_util.py classifier_and_diffusion_defaults

#: Flags of the released models (openai/improved-diffusion README "Models and Hyperparameters";
#: openai/guided-diffusion README "Sampling from pre-trained models"), by file stem. The guided-diffusion
#: models the README samples with classifier guidance carry the classifier's flags of that command line
#: (classifier_path, classifier_scale, classifier_depth).
OPENAI_PRESETS: dict[str, dict[str, Any]] = {
    # improved-diffusion (rescale_timesteps=True unless the README turns it off)
    "cifar10_uncond": {**_IDDPM, "image_size": 32, "num_channels": 128, "num_res_blocks": 3, "learn_sigma": True,
                       "dropout": 0.3, "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "cifar10_uncond_vlb": {**_IDDPM, "image_size": 32, "num_channels": 128, "num_res_blocks": 3,
                           "learn_sigma": True, "dropout": 0.3, "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "imagenet64_uncond": {**_IDDPM, "image_size": 64, "num_channels": 128, "num_res_blocks": 3, "learn_sigma": True,
                          "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "imagenet64_uncond_vlb": {**_IDDPM, "image_size": 64, "num_channels": 128, "num_res_blocks": 3,
                              "learn_sigma": True, "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "imagenet64_cond": {**_IDDPM, "image_size": 64, "num_channels": 192, "num_res_blocks": 3, "learn_sigma": True,
                        "class_cond": True, "diffusion_steps": 4000, "noise_schedule": "cosine",
                        "rescale_timesteps": False},
    "lsun_uncond": {**_IDDPM, "image_size": 256, "num_channels": 128, "num_res_blocks": 2, "num_heads": 1,
                    "learn_sigma": True, "use_scale_shift_norm": False, "attention_resolutions": "16",
                    "rescale_timesteps": False},
    # guided-diffusion (ADM)
    "64x64_diffusion": {**_ADM, "attention_resolutions": "32,16,8", "class_cond": True, "dropout": 0.1,
                        "image_size": 64, "learn_sigma": True, "noise_schedule": "cosine", "num_channels": 192,
                        "num_head_channels": 64, "num_res_blocks": 3, "resblock_updown": True,
                        "use_new_attention_order": True,
                        "classifier_path": "models/64x64_classifier.pt", "classifier_scale": 1.0,
                        "classifier_depth": 4},
    "128x128_diffusion": {**_ADM, "attention_resolutions": "32,16,8", "class_cond": True, "image_size": 128,
                          "learn_sigma": True, "num_channels": 256, "num_heads": 4, "num_res_blocks": 2,
                          "resblock_updown": True,
                          "classifier_path": "models/128x128_classifier.pt", "classifier_scale": 0.5},
    "256x256_diffusion": {**_ADM, "attention_resolutions": "32,16,8", "class_cond": True, "image_size": 256,
                          "learn_sigma": True, "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                          "resblock_updown": True,
                          "classifier_path": "models/256x256_classifier.pt", "classifier_scale": 1.0},
    "256x256_diffusion_uncond": {**_ADM, "attention_resolutions": "32,16,8", "image_size": 256, "learn_sigma": True,
                                 "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                                 "resblock_updown": True,
                                 "classifier_path": "models/256x256_classifier.pt", "classifier_scale": 10.0},
    "512x512_diffusion": {**_ADM, "attention_resolutions": "32,16,8", "class_cond": True, "image_size": 512,
                          "learn_sigma": True, "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                          "resblock_updown": True,
                          "classifier_path": "models/512x512_classifier.pt", "classifier_scale": 4.0},
    "lsun_bedroom": {**_ADM, "attention_resolutions": "32,16,8", "dropout": 0.1, "image_size": 256,
                     "learn_sigma": True, "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                     "resblock_updown": True},
}
for _stem in ("lsun_cat", "lsun_horse"):
    OPENAI_PRESETS[_stem] = OPENAI_PRESETS["lsun_bedroom"]
OPENAI_PRESETS["lsun_horse_nodropout"] = {**OPENAI_PRESETS["lsun_bedroom"], "dropout": 0.0}


def _paired_classifier(model: str) -> dict[str, Any]:
    """The flags of the classifier the README samples `model` with: guided-diffusion's classifier defaults,
    the classifier flags of that command line, and the model's diffusion flags. classifier_sample.py builds
    one diffusion from MODEL_FLAGS and calls classifier(x_t, t) with that diffusion's t (cond_fn through
    respace.py `_WrappedModel`), so the classifier's t is a timestep of its model's schedule."""
    m = OPENAI_PRESETS[model]
    own = {k: v for k, v in m.items() if k.startswith("classifier_") and k not in ("classifier_path",
                                                                                   "classifier_scale")}
    return {**_CLASSIFIER, **own, "image_size": m["image_size"], "diffusion_steps": m["diffusion_steps"],
            "noise_schedule": m["noise_schedule"]}


for _model in ("64x64_diffusion", "128x128_diffusion", "256x256_diffusion", "512x512_diffusion"):
    OPENAI_PRESETS[Path(OPENAI_PRESETS[_model]["classifier_path"]).stem] = _paired_classifier(_model)


def _channel_mult(image_size: int, given: str) -> tuple[float, ...]:
    """improved-/guided-diffusion script_util.py `create_model`: the multipliers per image size."""
    if given:
        return tuple(float(m) if "." in m else int(m) for m in given.split(","))
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4),
             32: (1, 2, 2, 2)}
    if image_size not in table:
        raise CheckpointError(f"unsupported image size {image_size} for an improved-/guided-diffusion model")
    return table[image_size]


def openai_config(flags: Mapping[str, Any], num_classes: int = 1000) -> ConfigDict:
    """A scorelib config from improved-/guided-diffusion command-line flags (script_util.py names:
    image_size, num_channels, num_res_blocks, attention_resolutions in pixels, learn_sigma, class_cond,
    diffusion_steps, noise_schedule, rescale_timesteps, ...; classifier=True for a noisy classifier, whose
    diffusion flags are those of the model it guides). With classifier_path (a model guided in the README), the
    classifier section and sampling.guidance_scale are those of classifier_sample.py's classifier_* flags."""
    f = {**(_CLASSIFIER if flags.get("classifier") else _IDDPM), **flags}
    out = base()
    size = int(f["image_size"])
    out.data.dataset, out.data.image_size, out.data.channels, out.data.centered = "folder", size, 3, True
    out.noise.kind, out.noise.num_scales = "ddpm", int(f["diffusion_steps"])
    out.noise.beta_schedule = f["noise_schedule"]
    # get_named_beta_schedule("linear"): β from 1e-4 to 0.02, scaled by 1000 / T.
    scale = 1000.0 / out.noise.num_scales
    out.noise.beta_start, out.noise.beta_end = 1e-4 * scale, 0.02 * scale
    out.sampling.method, out.sampling.init, out.sampling.n_steps = "ddim", "gaussian", 50
    guided = "classifier_path" in f  # a model the README samples with classifier guidance
    if f.get("classifier") or guided:
        # guided-diffusion classifier_sample.py: create_classifier(classifier_defaults() overridden by the command
        # line's classifier_* flags): 64 channels per head, AdaGN, BigGAN blocks. A guided model's classifier
        # section is its README classifier's, for sampling.guidance = "classifier" with the README's scale.
        g = {**_CLASSIFIER, **{k: v for k, v in f.items() if k.startswith("classifier_")}}
        k = out.classifier
        k.nf, k.num_res_blocks, k.ch_mult = int(g["classifier_width"]), int(g["classifier_depth"]), \
            _channel_mult(size, "")
        k.attn_resolutions = tuple(int(r) for r in str(g["classifier_attention_resolutions"]).split(","))
        k.num_head_channels, k.pool = 64, g["classifier_pool"]
    if guided:
        out.sampling.guidance_scale = float(f.get("classifier_scale", 1.0))  # classifier_sample.py default 1.0
    if f.get("classifier"):
        out.training.target = "classifier"
        out.data.num_classes = num_classes
        return out
    conditional = bool(f["class_cond"])
    m = out.model
    m.name = "adm" if conditional else "iddpm"
    out.data.num_classes = num_classes if conditional else 0
    m.nf, m.num_res_blocks = int(f["num_channels"]), int(f["num_res_blocks"])
    m.ch_mult = _channel_mult(size, str(f.get("channel_mult", "")))
    m.attn_resolutions = tuple(int(r) for r in str(f["attention_resolutions"]).split(","))
    m.dropout, m.learn_sigma = float(f["dropout"]), bool(f["learn_sigma"])
    m.num_heads, m.num_head_channels = int(f["num_heads"]), int(f["num_head_channels"])
    m.use_scale_shift_norm, m.resblock_updown = bool(f["use_scale_shift_norm"]), bool(f["resblock_updown"])
    m.use_new_attention_order, m.class_dropout = bool(f["use_new_attention_order"]), 0.0
    m.rescale_timesteps = bool(f["rescale_timesteps"])
    return out


# ---------------------------------------------------------------------------------------------
# Config arguments
# ---------------------------------------------------------------------------------------------


def resolve_config(config: Any) -> ConfigDict:
    """A ConfigDict from `config`: a ConfigDict, a configs/ name, a path to a config file, or
    "openai:<preset>" (an improved-/guided-diffusion release, see OPENAI_PRESETS)."""
    if isinstance(config, ConfigDict):
        return config
    if not isinstance(config, str | Path):
        raise CheckpointError(f"config must be a ConfigDict, a configs/ name or a path, got {type(config).__name__}")
    text = str(config)
    if text.startswith("openai:"):
        name = text.split(":", 1)[1]
        if name not in OPENAI_PRESETS:
            raise CheckpointError(f"unknown preset {text!r}; known: "
                                  f"{', '.join('openai:' + k for k in sorted(OPENAI_PRESETS))}")
        return openai_config(OPENAI_PRESETS[name])
    path = Path(text)
    if path.suffix != ".py":
        path = REPO_ROOT / "configs" / f"{text}.py"
    if not path.is_file():
        raise CheckpointError(f"unknown config {text!r} (not a file, not in {REPO_ROOT / 'configs'}, "
                              f"not openai:<preset>)")
    return run_config_file(path)


def stem_preset(path: Path) -> str | None:
    """The OPENAI_PRESETS name a released file's stem implies (cifar10_uncond_50M_500K.pt ->
    cifar10_uncond), or None."""
    stem = re.sub(r"_\d+M_\d+K(_bs\d+)?$", "", path.stem)
    return stem if stem in OPENAI_PRESETS else None
