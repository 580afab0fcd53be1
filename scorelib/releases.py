"""The published improved-/guided-diffusion releases: the flags their READMEs give for each released file
(`OPENAI_PRESETS`, by file stem), the channel multipliers their script_util.py derives, and the preset a
file's name implies. Facts about the files, no config: `scorelib.presets.openai_config` turns flags into
a scorelib config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError

IDDPM = dict(num_heads=4, num_head_channels=-1, attention_resolutions="16,8", dropout=0.0, learn_sigma=False,
              class_cond=False, diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=True,
              use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False, channel_mult="")
ADM = {**IDDPM, "rescale_timesteps": False}  # guided_diffusion/script_util.py diffusion_defaults
CLASSIFIER = dict(classifier=True, classifier_width=128, classifier_depth=2,
                   classifier_attention_resolutions="32,16,8", classifier_pool="attention", diffusion_steps=1000,
                   noise_schedule="linear")  # guided_diffusion/script_util.py classifier_and_diffusion_defaults

#: Flags of the released models (openai/improved-diffusion README "Models and Hyperparameters";
#: openai/guided-diffusion README "Sampling from pre-trained models"), by file stem. The guided-diffusion
#: models the README samples with classifier guidance carry the classifier's flags of that command line
#: (classifier_path, classifier_scale, classifier_depth).
OPENAI_PRESETS: dict[str, dict[str, Any]] = {
    # improved-diffusion (rescale_timesteps=True unless the README turns it off)
    "cifar10_uncond": {**IDDPM, "image_size": 32, "num_channels": 128, "num_res_blocks": 3, "learn_sigma": True,
                       "dropout": 0.3, "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "cifar10_uncond_vlb": {**IDDPM, "image_size": 32, "num_channels": 128, "num_res_blocks": 3,
                           "learn_sigma": True, "dropout": 0.3, "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "imagenet64_uncond": {**IDDPM, "image_size": 64, "num_channels": 128, "num_res_blocks": 3, "learn_sigma": True,
                          "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "imagenet64_uncond_vlb": {**IDDPM, "image_size": 64, "num_channels": 128, "num_res_blocks": 3,
                              "learn_sigma": True, "diffusion_steps": 4000, "noise_schedule": "cosine"},
    "imagenet64_cond": {**IDDPM, "image_size": 64, "num_channels": 192, "num_res_blocks": 3, "learn_sigma": True,
                        "class_cond": True, "diffusion_steps": 4000, "noise_schedule": "cosine",
                        "rescale_timesteps": False},
    "lsun_uncond": {**IDDPM, "image_size": 256, "num_channels": 128, "num_res_blocks": 2, "num_heads": 1,
                    "learn_sigma": True, "use_scale_shift_norm": False, "attention_resolutions": "16",
                    "rescale_timesteps": False},
    # guided-diffusion (ADM)
    "64x64_diffusion": {**ADM, "attention_resolutions": "32,16,8", "class_cond": True, "dropout": 0.1,
                        "image_size": 64, "learn_sigma": True, "noise_schedule": "cosine", "num_channels": 192,
                        "num_head_channels": 64, "num_res_blocks": 3, "resblock_updown": True,
                        "use_new_attention_order": True,
                        "classifier_path": "models/64x64_classifier.pt", "classifier_scale": 1.0,
                        "classifier_depth": 4},
    "128x128_diffusion": {**ADM, "attention_resolutions": "32,16,8", "class_cond": True, "image_size": 128,
                          "learn_sigma": True, "num_channels": 256, "num_heads": 4, "num_res_blocks": 2,
                          "resblock_updown": True,
                          "classifier_path": "models/128x128_classifier.pt", "classifier_scale": 0.5},
    "256x256_diffusion": {**ADM, "attention_resolutions": "32,16,8", "class_cond": True, "image_size": 256,
                          "learn_sigma": True, "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                          "resblock_updown": True,
                          "classifier_path": "models/256x256_classifier.pt", "classifier_scale": 1.0},
    "256x256_diffusion_uncond": {**ADM, "attention_resolutions": "32,16,8", "image_size": 256, "learn_sigma": True,
                                 "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                                 "resblock_updown": True,
                                 "classifier_path": "models/256x256_classifier.pt", "classifier_scale": 10.0},
    "512x512_diffusion": {**ADM, "attention_resolutions": "32,16,8", "class_cond": True, "image_size": 512,
                          "learn_sigma": True, "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
                          "resblock_updown": True,
                          "classifier_path": "models/512x512_classifier.pt", "classifier_scale": 4.0},
    "lsun_bedroom": {**ADM, "attention_resolutions": "32,16,8", "dropout": 0.1, "image_size": 256,
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
    return {**CLASSIFIER, **own, "image_size": m["image_size"], "diffusion_steps": m["diffusion_steps"],
            "noise_schedule": m["noise_schedule"]}


for _model in ("64x64_diffusion", "128x128_diffusion", "256x256_diffusion", "512x512_diffusion"):
    OPENAI_PRESETS[Path(OPENAI_PRESETS[_model]["classifier_path"]).stem] = _paired_classifier(_model)


def channel_mult(image_size: int, given: str) -> tuple[float, ...]:
    """improved-/guided-diffusion script_util.py `create_model`: the multipliers per image size."""
    if given:
        return tuple(float(m) if "." in m else int(m) for m in given.split(","))
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4),
             32: (1, 2, 2, 2)}
    if image_size not in table:
        raise CheckpointError(f"unsupported image size {image_size} for an improved-/guided-diffusion model")
    return table[image_size]


def stem_preset(path: Path) -> str | None:
    """The OPENAI_PRESETS name a released file's stem implies (cifar10_uncond_50M_500K.pt ->
    cifar10_uncond), or None."""
    stem = re.sub(r"_\d+M_\d+K(_bs\d+)?$", "", path.stem)
    return stem if stem in OPENAI_PRESETS else None
