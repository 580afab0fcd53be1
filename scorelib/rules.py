"""The rules a config must satisfy, each one line when broken (`scorelib.validate` runs them):

- every config field: known (a field missing from `scorelib.defaults.base()` is a typo), of the
  default's type, and in range (`FIELD_RULES`, one line per field; names against build's lists);
- cross-field rules (`CROSS_RULES`, and `MODE_RULES` per --mode): σ_max > σ_min, model and noise
  process that fit together, attention resolutions that exist at the image size, class labels in
  range, guidance only with a model that supports it, n_steps within T, ...

Each failure is a `build.ConfigError` whose message reads `<field>: <what is wrong> (<what is allowed>)`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from ml_collections import ConfigDict

from . import build
from .build import ConfigError
from .data import TOY_NAMES
from .defaults import base
from .samplers.pc import CORRECTORS, PREDICTORS

Rule = tuple[Callable[[Any], bool], str]  # (value is allowed, what is allowed)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE: Rule = (lambda v: _number(v) and v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: _number(v) and v >= 0, ">= 0")
UNIT: Rule = (lambda v: _number(v) and 0 <= v <= 1, "0 <= value <= 1")
RATE: Rule = (lambda v: _number(v) and 0 <= v < 1, "0 <= value < 1")
PROBABILITY: Rule = (lambda v: _number(v) and 0 < v < 1, "0 < value < 1")
FINITE: Rule = (_number, "a finite number")


def one_of(names: Iterable[Any]) -> Rule:
    names = tuple(names)
    return (lambda v: v in names, "one of: " + ", ".join(map(str, names)))


def at_least(k: int) -> Rule:
    return (lambda v: _number(v) and v >= k, f">= {k}")


def each(rule: Rule) -> Rule:
    return (lambda v: isinstance(v, tuple | list) and all(rule[0](x) for x in v), f"each {rule[1]}")


NETWORK_SIZE: Rule = (lambda v: (_number(v) and v > 0) or v == -1, "> 0, or -1")

# One line per field. Fields without a rule are still checked for type (against the default's) and
# for being known; rules of fields a config lacks are skipped.
FIELD_RULES: dict[str, Rule] = {
    "seed": NON_NEGATIVE,
    "device": one_of(build.DEVICES),
    "data.dataset": one_of(build.DATASETS),
    "data.image_size": POSITIVE,
    "data.channels": POSITIVE,
    "data.num_classes": NON_NEGATIVE,
    "data.toy": one_of(TOY_NAMES),
    "data.crop": NON_NEGATIVE,
    "data.test_fraction": PROBABILITY,
    "model.name": one_of(build.MODEL_NAMES),
    "model.nf": POSITIVE,
    "model.ch_mult": each(POSITIVE),
    "model.num_res_blocks": POSITIVE,
    "model.attn_resolutions": each(POSITIVE),
    "model.dropout": RATE,
    "model.normalization": one_of(("instancenorm++", "instancenorm", "variancenorm", "none")),  # ncsn_layers
    "model.nonlinearity": one_of(("elu", "relu", "lrelu", "swish", "silu")),  # ncsn_layers.make_activation
    "model.variant": one_of(("base", "deeper", "deepest")),
    "model.num_heads": POSITIVE,
    "model.num_head_channels": NETWORK_SIZE,
    "model.class_dropout": RATE,
    "model.progressive_input": one_of(("none", "input_skip", "residual")),  # models/ncsnpp.py
    "model.progressive": one_of(("none", "output_skip", "residual")),
    "model.progressive_combine": one_of(("sum", "cat")),
    "model.resblock_type": one_of(("biggan", "ddpm")),
    "model.embedding_type": one_of(("fourier", "positional")),
    "model.fourier_scale": POSITIVE,
    "model.embed_dim": POSITIVE,
    "model.data_std": POSITIVE,
    "model.ema_rate": UNIT,
    "noise.kind": one_of(build.NOISE_KINDS),
    "noise.sigma_min": POSITIVE,
    "noise.sigma_max": POSITIVE,
    "noise.num_scales": at_least(1),
    "noise.beta_schedule": one_of(build.BETA_SCHEDULES),
    "noise.beta_start": PROBABILITY,
    "noise.beta_end": PROBABILITY,
    "noise.beta_min": POSITIVE,
    "noise.beta_max": POSITIVE,
    "training.batch_size": POSITIVE,
    "training.n_iters": NON_NEGATIVE,
    "training.snapshot_freq": POSITIVE,
    "training.log_freq": POSITIVE,
    "training.keep_checkpoints": NON_NEGATIVE,
    "training.loss": one_of(build.LOSSES),
    "training.anneal_power": FINITE,
    "training.n_projections": POSITIVE,
    "training.lambda_vlb": NON_NEGATIVE,
    "training.timestep_sampler": one_of(build.TIMESTEP_SAMPLERS),
    "training.snapshot_samples": NON_NEGATIVE,
    "training.threads": NON_NEGATIVE,
    "training.target": one_of(build.TRAINING_TARGETS),
    "sampling.method": one_of(build.SAMPLING_METHODS),
    "sampling.init": one_of(build.INITS),
    "sampling.n_steps_each": POSITIVE,
    "sampling.step_lr": POSITIVE,
    "sampling.n_steps": NON_NEGATIVE,
    "sampling.spacing": one_of(build.SPACINGS),
    "sampling.eta": UNIT,
    "sampling.variance": one_of(build.VARIANCES),
    "sampling.predictor": one_of(PREDICTORS),
    "sampling.corrector": one_of(CORRECTORS),
    "sampling.snr": POSITIVE,
    "sampling.n_corrector_steps": NON_NEGATIVE,
    "sampling.ode_method": one_of(build.ODE_METHODS),
    "sampling.rtol": POSITIVE,
    "sampling.atol": POSITIVE,
    "sampling.order": one_of(build.SOLVER_ORDERS),
    "sampling.rho": POSITIVE,
    "sampling.data_diameter": NON_NEGATIVE,
    "sampling.batch_size": POSITIVE,
    "sampling.n_samples": POSITIVE,
    "sampling.guidance": one_of(build.GUIDANCE),
    "sampling.guidance_scale": NON_NEGATIVE,
    "sampling.guidance_convention": one_of(build.GUIDANCE_CONVENTIONS),
    "sampling.class_label": at_least(-1),
    "optim.optimizer": one_of(build.OPTIMIZERS),
    "optim.lr": POSITIVE,
    "optim.beta1": RATE,
    "optim.beta2": RATE,
    "optim.eps": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup": NON_NEGATIVE,
    "optim.grad_clip": FINITE,
    "eval.n_samples": POSITIVE,
    "eval.batch_size": POSITIVE,
    "eval.metrics": each(one_of(("fid", "kid", "is", "digits_fid"))),
    "eval.reference_split": one_of(build.REFERENCE_SPLITS),
    "eval.reference_count": NON_NEGATIVE,
    "eval.likelihood_batches": POSITIVE,
    "eval.likelihood_rtol": POSITIVE,
    "classifier.nf": POSITIVE,
    "classifier.ch_mult": each(POSITIVE),
    "classifier.num_res_blocks": POSITIVE,
    "classifier.attn_resolutions": each(POSITIVE),
    "classifier.num_head_channels": NETWORK_SIZE,
    "classifier.pool": one_of(("attention", "adaptive")),  # models/adm.py ADMClassifier
}


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else build.format_value(v)


def _get(config: Any, field: str) -> Any:
    node = config
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise KeyError(field)
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------
# Fields: known, typed, in range
# ---------------------------------------------------------------------------------------------


def _type_name(default: Any) -> str | None:
    """What a value replacing `default` must be (None: anything)."""
    if isinstance(default, bool):
        return "a bool"
    if isinstance(default, int):
        return "an int"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, tuple | list):
        return "a list"
    return None


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple | list):
        return isinstance(value, tuple | list)
    return True


def unknown_field_error(field: str, known: Iterable[str]) -> ConfigError:
    """`field: unknown config field (did you mean …? / the fields of its section)`."""
    *parents, leaf = field.split(".")
    known = sorted(known)
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.5)
    prefix = ".".join(parents) + "." if parents else ""
    hint = ("did you mean " + " or ".join(prefix + c for c in close) + "?") if close else (
        f"fields of {'.'.join(parents) or 'the config'}: {', '.join(known)}")
    return ConfigError(f"{field}: unknown config field ({hint}; every field is listed in scorelib/defaults.py)")


def check_fields(config: Any, defaults: Any | None = None, prefix: str = "") -> None:
    """Every field of `config` exists in `defaults` (base() when None) and has the default's type."""
    defaults = base() if defaults is None else defaults
    for key in config.keys():
        field = prefix + key
        if key not in defaults:
            raise unknown_field_error(field, defaults.keys())
        value, default = config[key], defaults[key]
        if isinstance(default, ConfigDict):
            if not hasattr(value, "keys"):
                raise ConfigError(f"{field}: {_show(value)} is not a section (a group of fields)")
            check_fields(value, default, field + ".")
        elif not _type_ok(value, default):
            raise ConfigError(f"{field}: {_show(value)} is a {type(value).__name__} ({_type_name(default)})")


def check_ranges(config: Any) -> None:
    """Every field with a rule in FIELD_RULES satisfies it."""
    for field, (ok, allowed) in FIELD_RULES.items():
        try:
            value = _get(config, field)
        except KeyError:
            continue
        if not ok(value):
            raise ConfigError(f"{field}: {_show(value)} is not allowed ({allowed})")


# ---------------------------------------------------------------------------------------------
# Cross-field rules: each returns (field, what is wrong, what is allowed) or None
# ---------------------------------------------------------------------------------------------

Problem = tuple[str, str, str] | None
SCORE_MODELS = ("mlp", "conv", "ncsnv2", "ncsnpp")  # output the score directly (VE)
EPS_MODELS = ("ddpm", "iddpm", "adm", "ddpmpp")  # output ε (DDPM / VP)
UNET_MODELS = ("conv", "ddpm", "iddpm", "adm", "ncsnpp", "ddpmpp")  # halve the resolution per ch_mult entry
LEARNED_VARIANCE_MODELS = ("ddpm", "iddpm", "adm")
DATA_SHAPES = {"cifar10": (32, (3,)), "mnist": (None, (1,)), "digits": (8, (1,)), "toy": (None, (2,)),
               "folder": (None, (1, 3))}  # image size (None: any) and channel counts each data set gives


def _sigma_order(c: Any) -> Problem:
    n = c.noise
    if n.sigma_max <= n.sigma_min:
        return "noise.sigma_max", f"{_show(n.sigma_max)} is not above noise.sigma_min={_show(n.sigma_min)}", \
            "sigma_max > sigma_min"
    return None


def _beta_order(c: Any) -> Problem:
    n = c.noise
    if n.kind == "ddpm" and n.beta_schedule == "linear" and n.beta_end <= n.beta_start:
        return "noise.beta_end", f"{_show(n.beta_end)} is not above noise.beta_start={_show(n.beta_start)}", \
            "beta_end > beta_start"
    if n.kind in ("vp", "subvp") and n.beta_max <= n.beta_min:
        return "noise.beta_max", f"{_show(n.beta_max)} is not above noise.beta_min={_show(n.beta_min)}", \
            "beta_max > beta_min"
    return None


def _model_fits_noise(c: Any) -> Problem:
    name, kind = c.model.name, c.noise.kind
    if c.training.target != "model":  # the noisy classifier is built from classifier.*
        return None
    if name == "ncsn" and kind != "ve":
        return "noise.kind", f"{kind!r} does not fit model.name='ncsn' (indexed by the NCSN levels)", "ve"
    if name in SCORE_MODELS and kind not in ("ve", "ve_continuous"):
        return "noise.kind", f"{kind!r} does not fit model.name={name!r} (a score network)", "ve, ve_continuous"
    if name in EPS_MODELS and kind not in ("ddpm", "vp", "subvp"):
        return "noise.kind", f"{kind!r} does not fit model.name={name!r} (an ε network)", "ddpm, vp, subvp"
    return None


def _loss_fits_noise(c: Any) -> Problem:
    t = c.training
    if t.target != "model":
        return None
    if c.noise.kind == "ddpm" and t.loss not in build.DDPM_LOSSES:
        return "training.loss", f"{t.loss!r} does not fit noise.kind='ddpm'", ", ".join(build.DDPM_LOSSES)
    if c.noise.kind != "ddpm" and t.loss in build.DDPM_LOSSES:
        return "training.loss", f"{t.loss!r} needs noise.kind='ddpm'", "dsm, ssm"
    if t.loss in ("hybrid", "vlb") and not c.model.learn_sigma:
        return "training.loss", f"{t.loss!r} trains a learned variance but model.learn_sigma=False", \
            "eps, or --config.model.learn_sigma=True"
    return None


def _learned_variance(c: Any) -> Problem:
    m = c.model
    if m.learn_sigma and c.training.target == "model" and m.name not in LEARNED_VARIANCE_MODELS:
        return "model.learn_sigma", f"model.name={m.name!r} has no learned variance", \
            ", ".join(LEARNED_VARIANCE_MODELS)
    return None


def _resolutions(size: int, ch_mult: Any, attn: Any, section: str) -> Problem:
    levels = len(ch_mult)
    if size % 2 ** (levels - 1):
        return f"{section}.ch_mult", f"{levels} levels halve data.image_size={size} {levels - 1} times", \
            f"an image size divisible by {2 ** (levels - 1)}"
    have = [size // 2**i for i in range(levels)]
    bad = [r for r in attn if r not in have]
    if bad:
        return f"{section}.attn_resolutions", f"{', '.join(map(str, bad))} not among the network's resolutions " \
            f"at data.image_size={size}", ", ".join(map(str, have))
    return None


def _attention(c: Any) -> Problem:
    if c.model.name in UNET_MODELS and c.data.dataset != "toy" and c.training.target == "model":
        return _resolutions(c.data.image_size, c.model.ch_mult, c.model.attn_resolutions, "model")
    return None


def _classifier_attention(c: Any) -> Problem:
    if c.training.target == "classifier" or c.sampling.guidance == "classifier":
        return _resolutions(c.data.image_size, c.classifier.ch_mult, c.classifier.attn_resolutions, "classifier")
    return None


def _data_shape(c: Any) -> Problem:
    d = c.data
    size, channels = DATA_SHAPES[d.dataset]
    if d.channels not in channels:
        return "data.channels", f"{d.channels} does not fit data.dataset={d.dataset!r}", \
            ", ".join(map(str, channels))
    if size is not None and d.image_size != size:
        return "data.image_size", f"{d.image_size} does not fit data.dataset={d.dataset!r}", str(size)
    if d.dataset == "toy" and c.model.name != "mlp":
        return "model.name", f"{c.model.name!r} does not fit data.dataset='toy' (2-D points)", "mlp"
    return None


def _classes(c: Any) -> Problem:
    if c.training.target == "classifier" and c.data.num_classes < 1:
        return "data.num_classes", "0: training.target='classifier' needs labelled data", ">= 1"
    return None


def _class_label(c: Any) -> Problem:
    s, k = c.sampling, c.data.num_classes
    labelled = build.is_class_conditional(c) or s.guidance == "classifier"
    if labelled and s.class_label >= k:
        return "sampling.class_label", f"{s.class_label} is not a class of this {k}-class model", \
            f"0..{k - 1}, or -1 for random labels"
    return None


def _guidance(c: Any) -> Problem:
    s = c.sampling
    if s.guidance == "cfg" and not (build.is_class_conditional(c) and c.model.class_dropout > 0):
        return "sampling.guidance", "'cfg' needs a class-conditional model trained with a null label", \
            "model.name='adm', data.num_classes > 0, model.class_dropout > 0; or none"
    if s.guidance == "classifier":
        if c.noise.kind != "ddpm":
            return "sampling.guidance", f"'classifier' needs noise.kind='ddpm', not {c.noise.kind!r}", \
                "none, or a DDPM config"
        if not c.classifier.workdir:
            return "classifier.workdir", "empty: sampling.guidance='classifier' needs the classifier's run", \
                "a workdir trained with --config.training.target=classifier"
    return None


def _steps_within_T(c: Any) -> Problem:
    s, n = c.sampling, c.noise
    if n.kind == "ddpm" and s.method in ("ddim", "ddpm", "pc") and s.n_steps > n.num_scales:
        return "sampling.n_steps", f"{s.n_steps} is more than the model's T=noise.num_scales={n.num_scales}", \
            f"1..{n.num_scales}, or 0 for all"
    return None


CROSS_RULES: tuple[Callable[[Any], Problem], ...] = (
    _sigma_order, _beta_order, _model_fits_noise, _learned_variance, _attention, _classifier_attention,
    _class_label, _guidance, _steps_within_T)
# rules of what only some modes read: the loss (training) and the data set (the modes that load it)
MODE_RULES: dict[str, tuple[Callable[[Any], Problem], ...]] = {
    "train": (_loss_fits_noise, _classes, _data_shape), "eval": (_data_shape,), "likelihood": (_data_shape,),
    "bench": (_data_shape,)}


def check_cross_fields(config: Any, mode: str = "train") -> None:
    """The cross-field rules and those of `mode` (MODE_RULES); the first broken one raises."""
    for rule in CROSS_RULES + MODE_RULES.get(mode, ()):
        if (problem := rule(config)) is not None:
            field, wrong, allowed = problem
            raise ConfigError(f"{field}: {wrong} ({allowed})")
