"""The released improved-diffusion / guided-diffusion models, by file stem: `--config=openai:cifar10_uncond`
(see scorelib.presets.OPENAI_PRESETS for the names and the README flags each one encodes). Sample from a
downloaded file with `--mode=sample --checkpoint=cifar10_uncond_50M_500K.pt`; DDIM 50 steps by default."""

from scorelib.presets import OPENAI_PRESETS, openai_config


def get_config(preset: str = "cifar10_uncond"):
    if preset not in OPENAI_PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {', '.join(sorted(OPENAI_PRESETS))}")
    return openai_config(OPENAI_PRESETS[preset])
