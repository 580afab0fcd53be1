"""The names a config may use, one tuple per field, and the error a config that cannot be built raises.

`validate` checks configs against these same tuples; the sampler names are the keys of
`build.sampling.SAMPLERS`.
"""

from __future__ import annotations

MODEL_NAMES = ("mlp", "conv", "ncsn", "ncsnv2", "ddpm", "iddpm", "adm", "ncsnpp", "ddpmpp")
NOISE_KINDS = ("ve", "ve_continuous", "ddpm", "vp", "subvp")
DATASETS = ("cifar10", "mnist", "folder", "digits", "toy")
DEVICES = ("auto", "cpu", "cuda")
TRAINING_TARGETS = ("model", "classifier")
BETA_SCHEDULES = ("linear", "cosine")
LOSSES = ("dsm", "ssm", "eps", "hybrid", "vlb")
DDPM_LOSSES = ("eps", "hybrid", "vlb")
TIMESTEP_SAMPLERS = ("uniform", "importance")
GUIDANCE = ("none", "cfg", "classifier")
OPTIMIZERS = ("adam", "adamw")
INITS = ("uniform", "gaussian")
SPACINGS = ("uniform", "leading", "trailing", "quadratic")  # schedules.respace_timesteps
VARIANCES = ("small", "large", "learned")  # samplers.ddpm_ancestral
GUIDANCE_CONVENTIONS = ("auto", "mean", "score")
ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's adaptive solvers
SOLVER_ORDERS = (1, 2, 3)  # dpm_solver_pp, unipc
REFERENCE_SPLITS = ("train", "test")
# the data fields that shape the network: a checkpoint's stored values replace the current ones
ARCHITECTURE_DATA_FIELDS = ("dataset", "toy", "channels", "image_size", "centered", "num_classes")


class ConfigError(ValueError):
    """A config value that cannot be built; the message names the field."""


def choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    """`value` if it is one of `allowed`, else a ConfigError naming `field`."""
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not one of: {', '.join(allowed)}")
    return value


def format_value(v: object) -> str:
    """A config value as a flag writes it (floats with %g)."""
    return f"{v:g}" if isinstance(v, float) else str(v)
