"""Every config field, declared once: default, one-line doc and rule (docs/design.md §5).

`base()` (the ConfigDict every config file starts from), the checks that a config's fields are known,
typed and in range (`check_fields`), the frozen records the builder hands down (`records`) and the field
reference (`reference_markdown`, docs/fields.md) are generated from `SECTIONS`. The names a field may
take come from the tables that define them (networks, samplers, losses, noise processes), and each
sampler's own options are declared in its table (`samplers.OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from ml_collections import ConfigDict

from ..data import TOY_NAMES
from ..schedules import BETA_SCHEDULES, NOISE_KINDS
from .datasets import DATASETS, DataShape
from .declare import (
    FINITE,
    NETWORK_SIZE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    RATE,
    UNIT,
    ConfigError,
    F,
    Field,
    at_least,
    each,
    one_of,
    show,
)
from .guidance import FIELDS as GUIDANCE_FIELDS
from .networks import NETWORKS, PRECONDS
from .objectives import LOSSES, LR_SCHEDULES, OPTIMIZERS, TIMESTEP_SAMPLERS
from .samplers import COMMON_OPTIONS, OPTIONS

SECTIONS: dict[str, dict[str, Field]] = {
    "": {
        "seed": F(42, "the seed of training, sampling and evaluation", NON_NEGATIVE),
        "device": F("auto", "auto | cpu | cuda", one_of(("auto", "cpu", "cuda"))),
    },
    "data": {
        "dataset": F("cifar10", " | ".join(DATASETS), one_of(DATASETS)),
        "root": F("data", "where the data set lives (cifar10: contains cifar-10-batches-py/)"),
        "download": F(True, "fetch CIFAR-10 / MNIST when missing and the network allows it"),
        "image_size": F(32, "image side in pixels", POSITIVE),
        "channels": F(3, "image channels (2 for the 2-D toys)", POSITIVE),
        "random_flip": F(True, "random horizontal flips in training"),
        "uniform_dequantization": F(False, "train on (k + u)/256 instead of k/255"),
        "centered": F(False, "data in [-1, 1] (True) or [0, 1] (False)"),
        "num_classes": F(10, "classes of labelled data (used by class-conditional models)", NON_NEGATIVE),
        "toy": F("gmm8", "dataset=toy: " + " | ".join(TOY_NAMES), one_of(TOY_NAMES)),
        "crop": F(0, "folder: centre crop to this size before resizing (0: the shorter side)", NON_NEGATIVE),
        "test_fraction": F(0.05, "folder: share of the images held out as the test split (by file-name hash)",
                           PROBABILITY),
        "augment_p": F(0.0, "EDM's non-leaky augmentation probability (0: off; 0.12 for CIFAR-10)", UNIT),
    },
    "model": {
        "name": F("ncsnv2", " | ".join(NETWORKS), one_of(NETWORKS)),
        "precond": F("auto", "the conditioning of EDM / EDM2 networks: auto (the network's first) | "
                     + " | ".join(PRECONDS) + "; the other networks have their own (auto, native)",
                     one_of(("auto", "native", *PRECONDS))),
        "nf": F(128, "base width (ngf / ch / model_channels / nf; MLP hidden width)", POSITIVE),
        "ch_mult": F((1, 2, 2, 2), "width multiplier per resolution", each(POSITIVE)),
        "num_res_blocks": F(2, "residual blocks per resolution (MLP: hidden layers)", POSITIVE),
        "attn_resolutions": F((16,), "resolutions with self-attention", each(POSITIVE)),
        "dropout": F(0.0, "dropout rate", RATE),
        "resamp_with_conv": F(True, "ddpm / ncsnpp: learned up/down-sampling convolutions"),
        "learn_sigma": F(False, "ddpm family: the network also outputs the variance (improved DDPM)"),
        "normalization": F("instancenorm++", "ncsn / ncsnv2 normalisation",
                           one_of(("instancenorm++", "instancenorm", "variancenorm", "none"))),
        "nonlinearity": F("elu", "ncsn / ncsnv2 activation", one_of(("elu", "relu", "lrelu", "swish", "silu"))),
        "variant": F("base", "ncsnv2 depth: base | deeper | deepest", one_of(("base", "deeper", "deepest"))),
        "num_heads": F(4, "adm attention heads", POSITIVE),
        "num_head_channels": F(-1, "adm channels per head (-1: num_heads decides)", NETWORK_SIZE),
        "use_scale_shift_norm": F(True, "adm: AdaGN (scale and shift from the embedding)"),
        "resblock_updown": F(False, "adm: BigGAN residual up/down-sampling blocks"),
        "use_new_attention_order": F(False, "adm: split qkv before heads"),
        "class_dropout": F(0.0, "class-conditional models: label dropout for classifier-free guidance", RATE),
        "fir": F(True, "ncsnpp: FIR up/down-sampling"),
        "progressive_input": F("residual", "ncsnpp input pyramid: none | input_skip | residual",
                               one_of(("none", "input_skip", "residual"))),
        "progressive": F("none", "ncsnpp output pyramid: none | output_skip | residual",
                         one_of(("none", "output_skip", "residual"))),
        "progressive_combine": F("sum", "ncsnpp input_skip pyramid join: sum | cat", one_of(("sum", "cat"))),
        "resblock_type": F("biggan", "ncsnpp residual blocks: biggan | ddpm", one_of(("biggan", "ddpm"))),
        "embedding_type": F("fourier", "ncsnpp noise embedding: fourier | positional",
                            one_of(("fourier", "positional"))),
        "fourier_scale": F(16.0, "ncsnpp Gaussian Fourier feature scale", POSITIVE),
        "rescale_timesteps": F(False, "ddpm family: the network sees t·1000/T (improved-diffusion's default)"),
        "embed_dim": F(64, "mlp: noise-embedding width", POSITIVE),
        "data_std": F(0.5, "mlp / conv input scaling", POSITIVE),
        "sigma_data": F(0.5, "EDM preconditioning: the data's standard deviation", POSITIVE),
        "augment_dim": F(0, "EDM networks, kdiff_v1: augmentation-label inputs (9 with data.augment_p > 0)",
                         NON_NEGATIVE),
        "channel_mult_emb": F(4, "EDM networks, kdiff_v1: noise-embedding width as a multiple of nf", POSITIVE),
        "logvar_channels": F(128, "edm2: Fourier features of the learned uncertainty u(σ)", POSITIVE),
        "ema_rate": F(0.999, "EMA decay per step (used when training.ema_halflife_kimg is 0)", UNIT),
    },
    "noise": {
        "kind": F("ve", " | ".join(NOISE_KINDS), one_of(NOISE_KINDS)),
        "sigma_min": F(0.01, "smallest σ (ve / ve_continuous / edm)", POSITIVE),
        "sigma_max": F(50.0, "largest σ (ve / ve_continuous / edm)", POSITIVE),
        "num_scales": F(232, "L noise levels (ve) / T timesteps (ddpm) / default sampling steps", at_least(1)),
        "beta_schedule": F("linear", "ddpm: " + " | ".join(BETA_SCHEDULES), one_of(BETA_SCHEDULES)),
        "beta_start": F(1e-4, "ddpm linear β_1 (at T = 1000; rescaled by 1000/T)", PROBABILITY),
        "beta_end": F(0.02, "ddpm linear β_T (at T = 1000; rescaled by 1000/T)", PROBABILITY),
        "beta_min": F(0.1, "vp / subvp SDE β(0)", POSITIVE),
        "beta_max": F(20.0, "vp / subvp SDE β(1)", POSITIVE),
        "eps": F(1e-5, "vp / subvp / ve_continuous: smallest t of training and likelihoods (score_sde)", POSITIVE),
        "sampling_eps": F(1e-3, "vp / subvp: smallest t the samplers reach (score_sde run_lib.py)", POSITIVE),
        "P_mean": F(-1.2, "edm training: mean of ln σ", FINITE),
        "P_std": F(1.2, "edm training: standard deviation of ln σ", POSITIVE),
    },
    "training": {
        "batch_size": F(128, "global batch (over all processes)", POSITIVE),
        "n_iters": F(300_000, "training steps", NON_NEGATIVE),
        "snapshot_freq": F(5000, "checkpoint + sample grid every this many steps", POSITIVE),
        "checkpoint_minutes": F(10.0, "also checkpoint after this many minutes of wall time (0: never)",
                                NON_NEGATIVE),
        "log_freq": F(50, "log the loss every this many steps", POSITIVE),
        "keep_checkpoints": F(3, "how many checkpoints to keep (0: all)", NON_NEGATIVE),
        "loss": F("dsm", " | ".join(LOSSES), one_of(LOSSES)),
        "anneal_power": F(2.0, "dsm / ssm: λ(σ) = σ^anneal_power", FINITE),
        "reduce_mean": F(False, "dsm: average the squared error over dimensions (True) or sum it with ½ "
                                "(score_sde's reduce_mean: True in its VP / sub-VP configs)"),
        "n_projections": F(1, "ssm: random projections per example", POSITIVE),
        "lambda_vlb": F(0.001, "hybrid: weight of L_vlb", NON_NEGATIVE),
        "timestep_sampler": F("uniform", "ddpm: " + " | ".join(TIMESTEP_SAMPLERS), one_of(TIMESTEP_SAMPLERS)),
        "snapshot_samples": F(64, "EMA samples drawn at each snapshot (0: none)", NON_NEGATIVE),
        "amp": F(True, "bf16 autocast on CUDA"),
        "compile": F(False, "torch.compile the network"),
        "eval_at_end": F(False, "sample and evaluate when training finishes"),
        "threads": F(0, "CPU threads for torch (0: torch's default)", NON_NEGATIVE),
        "target": F("model", "what is trained: model | classifier (the noisy classifier of classifier guidance)",
                    one_of(("model", "classifier"))),
        "ema_halflife_kimg": F(0.0, "EMA half-life in thousands of images (EDM; 0: model.ema_rate per step)",
                               NON_NEGATIVE),
        "ema_rampup_ratio": F(0.05, "EDM EMA: half-life at most this fraction of the images seen (0: none)",
                              NON_NEGATIVE),
        "phema_sigma_rels": F((), "post-hoc EMA profiles tracked (EDM2: (0.05, 0.10); empty: none)",
                              each(PROBABILITY)),
        "phema_snapshot_freq": F(0, "steps between post-hoc EMA snapshots (0: training.snapshot_freq)",
                                 NON_NEGATIVE),
    },
    "sampling": {**COMMON_OPTIONS, **OPTIONS, **GUIDANCE_FIELDS},
    "optim": {
        "optimizer": F("adam", " | ".join(OPTIMIZERS), one_of(OPTIMIZERS)),
        "lr": F(1e-4, "learning rate", POSITIVE),
        "beta1": F(0.9, "Adam β1", RATE),
        "beta2": F(0.999, "Adam β2", RATE),
        "eps": F(1e-8, "Adam ε", POSITIVE),
        "weight_decay": F(0.0, "weight decay", NON_NEGATIVE),
        "warmup": F(0, "linear learning-rate warm-up steps", NON_NEGATIVE),
        "schedule": F("constant", " | ".join(LR_SCHEDULES) + " (edm2: inverse square root after lr_ref_kimg)",
                      one_of(LR_SCHEDULES)),
        "lr_ref_kimg": F(0.0, "edm2 schedule: images (thousands) before the decay starts", NON_NEGATIVE),
        "grad_clip": F(-1.0, "gradient-norm clipping (<= 0: none)", FINITE),
    },
    "eval": {
        "n_samples": F(1000, "samples for the metrics", POSITIVE),
        "batch_size": F(250, "sampling batch (= chunk) of --mode=eval, and the likelihood's batch", POSITIVE),
        "metrics": F(("fid", "kid", "is"), "metrics to compute (the ones the data allows)",
                     each(one_of(("fid", "kid", "is", "digits_fid")))),
        "inception_path": F("", "pt_inception-2015-12-05 weights (or $SCORELIB_INCEPTION)"),
        "stats_path": F("", "FID/KID reference file, read-only: pytorch-fid .npz (mu, sigma), score_sde's "
                            "cifar10_stats.npz or ADM's VIRTUAL_*.npz; \"\": statistics of eval.reference_split"),
        "reference_split": F("train", "train | test: the split whose statistics are the reference (papers: train)",
                             one_of(("train", "test"))),
        "reference_count": F(0, "0: all of that split (comparable with papers); > 0: its first N images",
                             NON_NEGATIVE),
        "likelihood": F(False, "also compute likelihoods in --mode=eval"),
        "likelihood_batches": F(4, "batches of eval.batch_size for likelihoods", POSITIVE),
        "likelihood_rtol": F(1e-5, "probability-flow ODE tolerance of the likelihood", POSITIVE),
        "exact_trace": F(False, "exact divergence instead of Hutchinson's estimator"),
    },
    "classifier": {
        "nf": F(128, "noisy classifier width", POSITIVE),
        "ch_mult": F((1, 2, 2, 2), "noisy classifier width multipliers", each(POSITIVE)),
        "num_res_blocks": F(2, "noisy classifier blocks per resolution", POSITIVE),
        "attn_resolutions": F((16, 8), "noisy classifier attention resolutions", each(POSITIVE)),
        "num_head_channels": F(64, "noisy classifier channels per head", NETWORK_SIZE),
        "pool": F("attention", "attention | adaptive", one_of(("attention", "adaptive"))),
        "workdir": F("", "its run directory or checkpoint, or a guided-diffusion classifier .pt"),
    },
    "phema": {
        "sigma_rel": F(0.05, "--mode=phema: the EMA profile to reconstruct (EDM2 σ_rel)", PROBABILITY),
        "halflife_kimg": F(0.0, "--mode=phema: a classic EMA half-life in thousands of images instead (0: off)",
                           NON_NEGATIVE),
    },
}


def base() -> ConfigDict:
    """Every field with its default, as the ConfigDict configs/*.py start from."""
    out = ConfigDict()
    for section, fields in SECTIONS.items():
        node = out
        if section:
            out[section] = node = ConfigDict()
        for name, f in fields.items():
            node[name] = f.default
    return out


def declaration(key: str) -> Field:
    """The Field of a dotted key ("sampling.eta", "seed"); KeyError when there is none."""
    section, _, name = key.rpartition(".")
    return SECTIONS[section][name]


def leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"section.field": value} of a config (tuples and lists as tuples)."""
    out: dict[str, Any] = {}
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys"):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, tuple | list) else value
    return out


def unknown_field_error(key: str, known: Iterable[str]) -> ConfigError:
    """`key: unknown config field (did you mean …? / the fields of its section)`."""
    *parents, leaf = key.split(".")
    known = sorted(known)
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.5)
    prefix = ".".join(parents) + "." if parents else ""
    hint = ("did you mean " + " or ".join(prefix + c for c in close) + "?") if close else (
        f"fields of {'.'.join(parents) or 'the config'}: {', '.join(known)}")
    return ConfigError(f"{key}: unknown config field ({hint}; every field is listed in docs/fields.md)")


def check_fields(config: Any) -> None:
    """Every field of `config` is declared, has its declaration's type and satisfies its rule."""
    sections = {k for k in SECTIONS if k}
    for key in config.keys():
        if key not in SECTIONS[""] and key not in sections:
            raise unknown_field_error(key, [*SECTIONS[""], *sections])
        if key in sections and not hasattr(config[key], "keys"):
            raise ConfigError(f"{key}: {show(config[key])} is not a section (a group of fields)")
        if key in sections:
            for name in config[key].keys():
                if name not in SECTIONS[key]:
                    raise unknown_field_error(f"{key}.{name}", SECTIONS[key])
    for key, value in leaves(config).items():
        f = declaration(key)
        if not f.type_ok(value):
            raise ConfigError(f"{key}: {show(value)} is a {type(value).__name__} ({f.type_name()})")
        if not f.rule[0](value):
            raise ConfigError(f"{key}: {show(value)} is not allowed ({f.rule[1]})")


# ---------------------------------------------------------------------------------------------
# Records: each section as a frozen dataclass generated from its declarations
# ---------------------------------------------------------------------------------------------


RECORD_BASES: dict[str, tuple[type, ...]] = {"data": (DataShape,)}  # properties derived from a section's fields


def _record_type(section: str, fields: Mapping[str, Field]) -> type:
    name = "".join(p.title() for p in (section or "top").split("_")) + "Fields"
    return dataclasses.make_dataclass(name, [(k, type(f.default)) for k, f in fields.items()],
                                      bases=RECORD_BASES.get(section, ()), frozen=True)


RECORD_TYPES = {section: _record_type(section, fields) for section, fields in SECTIONS.items()}


# A checked config as frozen records: `f.seed`, `f.data.image_size`, `f.sampling.eta`, ... (the top-level
# fields, then one record per section)
Fields = dataclasses.make_dataclass("Fields", [*((k, type(f.default)) for k, f in SECTIONS[""].items()),
                                               *((s, RECORD_TYPES[s]) for s in SECTIONS if s)], frozen=True)


def records(config: Any) -> Fields:
    """The config (checked by `check_fields`) as `Fields`; lists become tuples."""
    values = leaves(config)

    def section(name: str) -> Any:
        prefix = f"{name}." if name else ""
        return RECORD_TYPES[name](**{k: values[prefix + k] for k in SECTIONS[name]})

    top = section("")
    return Fields(**dataclasses.asdict(top), **{s: section(s) for s in SECTIONS if s})


def reference_markdown() -> str:
    """The field reference (docs/fields.md): one table row per field, from the declarations."""
    lines = ["# Config fields", "", "Generated from the declarations in `scorelib/builder/fields.py` (`python -c "
             "'from scorelib.builder.fields import reference_markdown as r; print(r(), end=\"\")' > docs/fields.md`; "
             "tests/test_builder.py fails when this file is stale): every field, its default, what it means and what "
             "it allows.", ""]
    for section, fields in SECTIONS.items():
        lines += [f"## {section or 'top level'}", "", "| field | default | meaning | allowed |", "|---|---|---|---|"]
        for name, f in fields.items():
            key = f"{section}.{name}" if section else name
            cells = (f"`{key}`", f"`{show(f.default)}`", f.doc, f.rule[1])
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)
