"""Configs for published checkpoints (docs/design.md §4), which carry no architecture: the scorelib config
that the flags of an improved-/guided-diffusion release (`scorelib.releases.OPENAI_PRESETS`) imply
(`openai_config`), and `resolve_config`, which turns `scorelib.load`'s config argument (a
ConfigDict, a configs/ name, a config file or "openai:<preset>") into a ConfigDict. `scorelib.formats`
reads the files themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from .builder.configs import REPO_ROOT, run_config_file
from .builder.fields import base
from .checkpoint import CheckpointError
from .releases import CLASSIFIER, IDDPM, OPENAI_PRESETS, channel_mult


def openai_config(flags: Mapping[str, Any], num_classes: int = 1000) -> ConfigDict:
    """A scorelib config from improved-/guided-diffusion command-line flags (script_util.py names:
    image_size, num_channels, num_res_blocks, attention_resolutions in pixels, learn_sigma, class_cond,
    diffusion_steps, noise_schedule, rescale_timesteps, ...; classifier=True for a noisy classifier, whose
    diffusion flags are those of the model it guides). With classifier_path (a model guided in the README), the
    classifier section and sampling.guidance_scale are those of classifier_sample.py's classifier_* flags."""
    f = {**(CLASSIFIER if flags.get("classifier") else IDDPM), **flags}
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
        g = {**CLASSIFIER, **{k: v for k, v in f.items() if k.startswith("classifier_")}}
        k = out.classifier
        k.nf, k.num_res_blocks, k.ch_mult = int(g["classifier_width"]), int(g["classifier_depth"]), \
            channel_mult(size, "")
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
    m.ch_mult = channel_mult(size, str(f.get("channel_mult", "")))
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
