"""The released improved-/guided-diffusion presets against the flags their READMEs give.

Every expectation here is read from the reference repositories, not from scorelib/presets.py: the READMEs'
command lines are pasted below as strings (openai/improved-diffusion README.md "Models and Hyperparameters";
openai/guided-diffusion README.md "Sampling from pre-trained models"), parsed over each repository's own
script_util.py defaults (written out below, as add_dict_to_argparser types them), and turned into the
config fields they imply. guided-diffusion's classifier_sample.py builds ONE diffusion from MODEL_FLAGS and
calls classifier(x_t, t) with that diffusion's t, so a released classifier's schedule is its model's.

tests/data/tiny_64x64_classifier.pt / .json were recorded with guided-diffusion's own code (CPU): an
`EncoderUNetModel` with `create_classifier`'s keyword arguments (use_scale_shift_norm, resblock_updown,
attention pool, 1000 steps of the 64x64 model's cosine schedule from `create_gaussian_diffusion`) but tiny
widths (8 px, channel_mult (1,), width 32, depth 1, attention at 8 px, 32 channels per head, 10 classes),
every weight 0.2·N(0, 1) from torch.Generator().manual_seed(2021) in state_dict order, rounded to float16
(stored so, to keep the file at 250 KB; the network ran in float32), every bias 0; its logits
`classifier(x_t, t)` at t = 10, 260, 500, 900 for x_t = torch.randn(4, 3, 8, 8) from a generator seeded 7.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from builds import exp_of, network

import scorelib
from scorelib.builder.configs import with_overrides
from scorelib.builder.fields import base
from scorelib.builder.samplers import respaced_timesteps
from scorelib.presets import OPENAI_PRESETS, openai_config
from scorelib.releases import stem_preset

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------ the references' defaults

# improved_diffusion/script_util.py model_and_diffusion_defaults (lines 11-35)
IMPROVED_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                         attention_resolutions="16,8", dropout=0.0, learn_sigma=False, sigma_small=False,
                         class_cond=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
                         use_kl=False, predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=True,
                         use_checkpoint=False, use_scale_shift_norm=True)
# guided_diffusion/script_util.py diffusion_defaults (lines 11-24) and model_and_diffusion_defaults (43-65)
GUIDED_DIFFUSION_DEFAULTS = dict(learn_sigma=False, diffusion_steps=1000, noise_schedule="linear",
                                 timestep_respacing="", use_kl=False, predict_xstart=False, rescale_timesteps=False,
                                 rescale_learned_sigmas=False)
GUIDED_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                       num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
                       class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
                       use_fp16=False, use_new_attention_order=False, **GUIDED_DIFFUSION_DEFAULTS)
# guided_diffusion/script_util.py classifier_defaults (lines 27-40)
CLASSIFIER_DEFAULTS = dict(image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
                           classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                           classifier_resblock_updown=True, classifier_pool="attention")
# scripts/classifier_sample.py create_argparser: its own defaults over both of the above
SAMPLE_DEFAULTS = dict(clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path="",
                       classifier_path="", classifier_scale=1.0, **GUIDED_DEFAULTS,
                       **{k: v for k, v in CLASSIFIER_DEFAULTS.items() if k != "image_size"})
# create_model / create_classifier: channel_mult by image size (guided-diffusion lines 148-158 and 238-247;
# improved-diffusion lines 99-106 has the 256, 64 and 32 rows)
CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4),
                32: (1, 2, 2, 2)}


def parse(command: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """`--key value` pairs over `defaults`, typed as script_util.py add_dict_to_argparser / str2bool type them."""
    out = dict(defaults)
    words = command.split()
    for key, value in zip(words[0::2], words[1::2], strict=True):
        name = key.removeprefix("--")
        kind = type(defaults[name])  # KeyError: a flag the reference's argparser does not know
        out[name] = value.lower() in ("yes", "true", "t", "y", "1") if kind is bool else kind(value)
    return out


# ------------------------------------------------------------------------------ the READMEs' flags

# openai/improved-diffusion README.md "Models and Hyperparameters": MODEL_FLAGS + DIFFUSION_FLAGS, by file
IMPROVED_README = {
    "imagenet64_uncond": ("lines 84-90",  # imagenet64_uncond_100M_1500K.pt
                          "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True "
                          "--diffusion_steps 4000 --noise_schedule cosine"),
    "cifar10_uncond": ("lines 92-98",  # cifar10_uncond_50M_500K.pt
                       "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 "
                       "--diffusion_steps 4000 --noise_schedule cosine"),
    "imagenet64_cond": ("lines 100-106",  # imagenet64_cond_270M_250K.pt
                        "--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True --class_cond True "
                        "--diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False "
                        "--rescale_timesteps False"),
    "lsun_uncond": ("lines 116-130",  # lsun_uncond_100M_1200K_bs128.pt and lsun_uncond_100M_2400K_bs64.pt
                    "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True "
                    "--use_scale_shift_norm False --attention_resolutions 16 "
                    "--diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False "
                    "--rescale_timesteps False"),
    "imagenet64_uncond_vlb": ("lines 132-138",  # imagenet64_uncond_vlb_100M_1500K.pt
                              "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True "
                              "--diffusion_steps 4000 --noise_schedule cosine --use_kl True"),
    "cifar10_uncond_vlb": ("lines 140-146",  # cifar10_uncond_vlb_50M_500K.pt
                           "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 "
                           "--diffusion_steps 4000 --noise_schedule cosine --use_kl True"),
}

_LSUN = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 "
         "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
         "--resblock_updown True --use_fp16 True --use_scale_shift_norm True")
# openai/guided-diffusion README.md "Sampling from pre-trained models": MODEL_FLAGS and the classifier flags of
# classifier_sample.py's command line (classifier guidance), or image_sample.py's (LSUN)
GUIDED_README = {
    "64x64_diffusion": ("lines 46-51",
                        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
                        "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
                        "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
                        "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
                        "--classifier_scale 1.0 --classifier_path models/64x64_classifier.pt --classifier_depth 4"),
    "128x128_diffusion": ("lines 53-58",
                          "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
                          "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 "
                          "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
                          "--classifier_scale 0.5 --classifier_path models/128x128_classifier.pt"),
    "256x256_diffusion": ("lines 60-65",
                          "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
                          "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
                          "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
                          "--classifier_scale 1.0 --classifier_path models/256x256_classifier.pt"),
    "256x256_diffusion_uncond": ("lines 67-72",
                                 "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 "
                                 "--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 "
                                 "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
                                 "--use_scale_shift_norm True",
                                 "--classifier_scale 10.0 --classifier_path models/256x256_classifier.pt"),
    "512x512_diffusion": ("lines 74-79",
                          "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 "
                          "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
                          "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",
                          "--classifier_scale 4.0 --classifier_path models/512x512_classifier.pt"),
    "lsun_bedroom": ("lines 99-106", _LSUN, ""),
    "lsun_cat": ("line 101: 'the other two LSUN checkpoints should work as well'", _LSUN, ""),
    "lsun_horse": ("line 101", _LSUN, ""),
    "lsun_horse_nodropout": ("lines 108-113", _LSUN.replace("--dropout 0.1", "--dropout 0.0"), ""),
}

# the released classifiers: the README model whose command line loads each (--classifier_path)
CLASSIFIER_OF = {"64x64_classifier": "64x64_diffusion", "128x128_classifier": "128x128_diffusion",
                 "256x256_classifier": "256x256_diffusion", "512x512_classifier": "512x512_diffusion"}


def _linear_or_cosine_abar(schedule: str, T: int) -> np.ndarray:
    """gaussian_diffusion.py get_named_beta_schedule (lines 18-42) and betas_for_alpha_bar, then cumprod."""
    if schedule == "linear":
        scale = 1000 / T
        betas = np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    else:
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1.0 - betas)


def _noise_fields(flags: dict[str, Any]) -> dict[str, Any]:
    T = flags["diffusion_steps"]
    out = {"noise.kind": "ddpm", "noise.num_scales": T, "noise.beta_schedule": flags["noise_schedule"]}
    if flags["noise_schedule"] == "linear":  # get_named_beta_schedule: 1e-4 .. 0.02, times 1000 / T
        out.update({"noise.beta_start": 1e-4 * 1000 / T, "noise.beta_end": 0.02 * 1000 / T})
    return out


def _classifier_fields(flags: dict[str, Any]) -> dict[str, Any]:
    """create_classifier (guided script_util.py lines 228-266): width, depth, attention (pixels), pool, 64
    channels per head, channel_mult by size; use_scale_shift_norm / resblock_updown True (scorelib fixes them)."""
    assert flags["classifier_use_scale_shift_norm"] and flags["classifier_resblock_updown"]
    return {"classifier.nf": flags["classifier_width"], "classifier.num_res_blocks": flags["classifier_depth"],
            "classifier.attn_resolutions": tuple(int(r) for r in flags["classifier_attention_resolutions"].split(",")),
            "classifier.pool": flags["classifier_pool"], "classifier.num_head_channels": 64,
            "classifier.ch_mult": CHANNEL_MULT[flags["image_size"]]}


def _model_fields(flags: dict[str, Any]) -> dict[str, Any]:
    """create_model of either repository: the network and its timestep convention."""
    size = flags["image_size"]
    return {
        "data.image_size": size, "data.channels": 3, "data.centered": True,
        "data.num_classes": 1000 if flags["class_cond"] else 0,  # NUM_CLASSES = 1000
        "model.nf": flags["num_channels"], "model.num_res_blocks": flags["num_res_blocks"],
        "model.ch_mult": CHANNEL_MULT[size],
        "model.attn_resolutions": tuple(int(r) for r in flags["attention_resolutions"].split(",")),
        "model.num_heads": flags["num_heads"], "model.num_head_channels": flags.get("num_head_channels", -1),
        "model.dropout": flags["dropout"], "model.learn_sigma": flags["learn_sigma"],
        "model.use_scale_shift_norm": flags["use_scale_shift_norm"],
        "model.resblock_updown": flags.get("resblock_updown", False),  # improved-diffusion: conv resampling
        "model.use_new_attention_order": flags.get("use_new_attention_order", False),  # improved: legacy order
        "model.rescale_timesteps": flags["rescale_timesteps"], "training.target": "model",
    }


def expected(stem: str) -> dict[str, Any]:
    """The config fields the README flags of released file `stem` imply."""
    if stem in IMPROVED_README:
        flags = parse(IMPROVED_README[stem][1], IMPROVED_DEFAULTS)
        # no released classifier guides an improved-diffusion model (the 64x64 one's t counts 1000 cosine steps,
        # not imagenet64's 4000): the classifier section keeps scorelib's defaults
        return {**_noise_fields(flags), **_model_fields(flags),
                **{f"classifier.{k}": _get(base(), f"classifier.{k}") for k in base().classifier}}
    if stem in GUIDED_README:
        _, model_flags, classifier_flags = GUIDED_README[stem]
        flags = parse(f"{model_flags} {classifier_flags}", SAMPLE_DEFAULTS)
        out = {**_noise_fields(flags), **_model_fields(flags)}
        if classifier_flags:
            out.update(_classifier_fields(flags))
            out["sampling.guidance_scale"] = flags["classifier_scale"]
        else:  # no released classifier guides it: the classifier section keeps scorelib's defaults
            out.update({f"classifier.{k}": _get(base(), f"classifier.{k}") for k in base().classifier})
        return out
    # a classifier: classifier_defaults + that command line's classifier_* flags; the model's diffusion flags
    _, model_flags, classifier_flags = GUIDED_README[CLASSIFIER_OF[stem]]
    flags = parse(f"{model_flags} {classifier_flags}", SAMPLE_DEFAULTS)
    assert Path(flags["classifier_path"]).stem == stem
    return {**_noise_fields(flags), **_classifier_fields(flags), "data.image_size": flags["image_size"],
            "data.num_classes": 1000, "training.target": "classifier"}


ALL_STEMS = sorted([*IMPROVED_README, *GUIDED_README, *CLASSIFIER_OF])


def _get(config: Any, dotted: str) -> Any:
    section, field = dotted.split(".")
    value = config[section][field]
    return tuple(value) if isinstance(value, list | tuple) else value


def test_every_preset_is_a_readme_release() -> None:
    assert sorted(OPENAI_PRESETS) == ALL_STEMS


@pytest.mark.parametrize("stem", ALL_STEMS)
def test_preset_config_follows_the_readme_flags(stem: str) -> None:
    config = openai_config(OPENAI_PRESETS[stem])
    want = expected(stem)
    got = {k: _get(config, k) for k in want}
    same = {k: math.isclose(got[k], v, rel_tol=1e-12) if isinstance(v, float) else got[k] == v
            for k, v in want.items()}
    assert all(same.values()), {k: (got[k], want[k]) for k, ok in same.items() if not ok}


@pytest.mark.parametrize("stem", ALL_STEMS)
def test_preset_schedule_is_the_references_alphas_cumprod(stem: str) -> None:
    want = expected(stem)
    abar = exp_of(openai_config(OPENAI_PRESETS[stem])).noise.schedule.alphas_cumprod
    ref = _linear_or_cosine_abar(want["noise.beta_schedule"], want["noise.num_scales"])
    np.testing.assert_allclose(abar.double().numpy(), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("classifier", sorted(CLASSIFIER_OF))
def test_classifier_carries_the_schedule_of_the_model_it_guides(classifier: str) -> None:
    """classifier_sample.py: one diffusion from MODEL_FLAGS; the classifier sees that diffusion's t."""
    keys = ("kind", "num_scales", "beta_schedule", "beta_start", "beta_end")
    c = openai_config(OPENAI_PRESETS[classifier])
    models = [m for m, (_, _, flags) in GUIDED_README.items() if f"models/{classifier}.pt" in flags]
    assert models  # 256: the class-conditional and the unconditional model
    for model in models:
        m = openai_config(OPENAI_PRESETS[model])
        assert {k: m.noise[k] for k in keys} == {k: c.noise[k] for k in keys}, (classifier, model)
        assert m.classifier.to_dict() == c.classifier.to_dict()  # the guided model's classifier section
        torch.testing.assert_close(exp_of(c).noise.schedule.alphas_cumprod, exp_of(m).noise.schedule.alphas_cumprod,
                                   rtol=0, atol=0)


# Parameter counts of the released networks not pinned in tests/test_published.py, measured by building each
# with the reference's own script_util.create_model / create_classifier and the README flags above.
REFERENCE_COUNTS = {"imagenet64_cond": 273_049_350, "lsun_uncond": 113_676_678, "lsun_bedroom": 552_814_086,
                    "64x64_classifier": 65_438_568, "512x512_classifier": 54_448_360}


@pytest.mark.parametrize("stem", sorted(REFERENCE_COUNTS))
def test_preset_builds_the_released_network(stem: str) -> None:
    with torch.device("meta"):
        net = network(openai_config(OPENAI_PRESETS[stem]))
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_COUNTS[stem]


def test_readme_file_names_pick_their_preset() -> None:
    """The checkpoint links of both READMEs (improved lines 84-146, guided lines 13-27)."""
    files = {"imagenet64_uncond_100M_1500K.pt": "imagenet64_uncond", "cifar10_uncond_50M_500K.pt": "cifar10_uncond",
             "imagenet64_cond_270M_250K.pt": "imagenet64_cond", "lsun_uncond_100M_1200K_bs128.pt": "lsun_uncond",
             "lsun_uncond_100M_2400K_bs64.pt": "lsun_uncond",
             "imagenet64_uncond_vlb_100M_1500K.pt": "imagenet64_uncond_vlb",
             "cifar10_uncond_vlb_50M_500K.pt": "cifar10_uncond_vlb",
             "upsample_cond_500K.pt": None, "64_256_upsampler.pt": None, "128_512_upsampler.pt": None,
             **{f"{stem}.pt": stem for stem in [*GUIDED_README, *CLASSIFIER_OF]}}
    assert {name: stem_preset(Path(name)) for name in files} == files


# ------------------------------------------------------------------------------ the 64x64 classifier


def _tiny(config: Any) -> Any:
    """The recorder's tiny widths (module docstring) on a classifier config; noise section untouched."""
    return with_overrides(config, {
        "data.image_size": 8, "data.num_classes": 10, "classifier.nf": 32, "classifier.ch_mult": (1,),
        "classifier.num_res_blocks": 1, "classifier.attn_resolutions": (8,), "classifier.num_head_channels": 32})


def _relative_error(config: Any) -> float:
    rec = json.loads((DATA / "tiny_64x64_classifier.json").read_text())
    classifier = scorelib.load(DATA / "tiny_64x64_classifier.pt", config=config)
    abar = _linear_or_cosine_abar("cosine", 1000)[rec["t"]]  # the 64x64 model's schedule (README line 49)
    sigma = torch.tensor(np.sqrt((1 - abar) / abar))
    x_t = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(rec["x_t_seed"]))
    x = (x_t.double() * (1 + sigma**2).sqrt()[:, None, None, None]).float()  # x_σ = x_t·√(1+σ_t²)
    with torch.no_grad():
        logits = classifier(x, sigma.float())
    want = torch.tensor(rec["logits"])
    return float((logits - want).norm() / want.norm())


def test_64x64_classifier_gives_the_reference_logits_at_cosine_noise_levels() -> None:
    assert _relative_error(_tiny(openai_config(OPENAI_PRESETS["64x64_classifier"], num_classes=10))) < 1e-5
    # the fixture tells the schedules apart: read on the linear schedule, σ ≈ 1 is t ≈ 260, not 500
    linear = {**OPENAI_PRESETS["64x64_classifier"], "noise_schedule": "linear"}
    assert _relative_error(_tiny(openai_config(linear, num_classes=10))) > 1e-2


# ------------------------------------------------------------------------------ the READMEs' SAMPLE_FLAGS


def space_timesteps(T: int, section_counts: str) -> list[int]:
    """guided/improved-diffusion respace.py space_timesteps for one section: "N" takes round(k·(T-1)/(N-1)),
    "ddimN" the integer stride that gives N steps (range(0, T, stride))."""
    if section_counts.startswith("ddim"):
        n = int(section_counts[4:])
        stride = next(i for i in range(1, T) if len(range(0, T, i)) == n)
        return list(range(0, T, stride))
    n = int(section_counts)
    stride = (T - 1) / (n - 1) if n > 1 else 1
    out, cur = [], 0.0
    for _ in range(n):
        out.append(round(cur))
        cur += stride
    return out


@pytest.mark.parametrize(("respacing", "n_steps", "spacing"), [
    ("250", 250, "uniform"),  # guided README line 38: SAMPLE_FLAGS --timestep_respacing 250
    ("1000", 1000, "uniform"),  # line 118: LSUN models, --timestep_respacing 1000
    ("ddim25", 25, "leading"),  # line 169: --timestep_respacing ddim25 --use_ddim True
])
def test_readme_respacing_is_a_sampling_setting(respacing: str, n_steps: int, spacing: str) -> None:
    config = with_overrides(openai_config(OPENAI_PRESETS["128x128_diffusion"]),
                                  {"sampling.n_steps": n_steps, "sampling.spacing": spacing})
    got = respaced_timesteps(exp_of(config).sampler).flip(0).tolist()
    assert got == space_timesteps(1000, respacing)
