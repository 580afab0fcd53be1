"""The only package that reads configs (docs/design.md §4): config -> one frozen `Experiment` holding
every object and setting a run needs, made once by `experiment(config)`. The training loop, the CLI
modes and the benchmark take that object, never the config.

    exp = build.experiment(config, workdir, mode="sample")   # a checkpoint's stored network applied
    net = exp.network()                                      # a new network (functools.partial)
    x = exp.sampler(exp.to_score(net), (16, *exp.data.shape), generator, device)

The modules, one concern each: `names` (the names a field may take, ConfigError), `noise` (levels,
schedules, SDEs, σ ranges), `networks` (networks and their σ-space adapters), `objectives` (loss,
optimiser, learning rate), `sampling` (the sampler table), `guidance` (labels and guidance),
`settings` (typed data / train / sample / eval settings) and `configs` (derived configs). The
config-taking functions they define (`create_model(config)`, `sampling_grid(config)`, ...) stay
available here for scripts and tests; each reads its fields once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import config_to_json, unknown_network
from ..schedules import DDPMSchedule
from .configs import (
    checkpoint_source,
    for_evaluation,
    sampling_fingerprint,
    stored_config,
    with_overrides,
    with_stored_model,
)
from .guidance import Guidance, guidance, guidance_convention, guided_score, sampling_labels
from .names import (
    ARCHITECTURE_DATA_FIELDS,
    BETA_SCHEDULES,
    DATASETS,
    DDPM_LOSSES,
    DEVICES,
    GUIDANCE,
    GUIDANCE_CONVENTIONS,
    INITS,
    LOSSES,
    MODEL_NAMES,
    NOISE_KINDS,
    ODE_METHODS,
    OPTIMIZERS,
    REFERENCE_SPLITS,
    SOLVER_ORDERS,
    SPACINGS,
    TIMESTEP_SAMPLERS,
    TRAINING_TARGETS,
    VARIANCES,
    ConfigError,
    choice,
    format_value,
)
from .networks import (
    classifier_factory,
    create_classifier,
    create_model,
    create_network,
    create_score_model,
    create_sigma_model,
    is_class_conditional,
    model_factory,
    network_factory,
    network_family,
    network_variant,
    score_adapter,
    sigma_adapter,
    uses_labels,
)
from .noise import create_schedule, create_sde, create_sigmas, likelihood_sigma_range, noise_kind, sigma_range
from .objectives import (
    LearningRate,
    LossFn,
    create_loss,
    create_optimizer,
    create_sigma_sampler,
    learning_rate,
    learning_rate_schedule,
    optimizer_factory,
)
from .sampling import (
    FAST_DEFAULT_NFE,
    SAMPLER_FIELDS,
    SAMPLERS,
    SAMPLING_METHODS,
    Sampler,
    SamplerEntry,
    SamplerOptions,
    create_sampler,
    describe_sampler,
    is_deterministic,
    make_sampler,
    pc_betas,
    sampler_options,
    sampler_reads,
    sampling_grid,
    sampling_nfe,
)
from .settings import (
    INCEPTION_PREPROCESSING,
    DataSpec,
    EvalSettings,
    FidReference,
    SampleSettings,
    TrainSettings,
    create_dataset,
    data_spec,
    describe_model,
    eval_settings,
    evaluation_arguments,
    evaluation_kwargs,
    fid_reference,
    load_dataset,
    reference_of,
    sample_settings,
    train_settings,
)

# the modes that run a trained network: its checkpoint's stored architecture replaces the config's
CHECKPOINT_MODES = ("sample", "eval", "likelihood", "bench")


@dataclass(frozen=True, eq=False)
class Experiment:
    """A config turned into objects, once (`experiment`).

    Networks are constructors with their arguments bound (`network()`, `classifier()`); `to_sigma` /
    `to_score` wrap a network as its σ-space model (docs/design.md §1). `loss` is the training
    objective (None outside --mode=train); `sampler` the configured sampler, `guidance` its labels and
    guidance. `record` is the config
    as the JSON stored with checkpoints, `fingerprints` what drawn samples depend on, per purpose
    ("sample", "eval"), for `scorelib.sharding`.
    """

    record: str
    description: str
    family: str  # what network() builds: model.name, or "classifier"
    variant: str  # NCSN / NCSNv2 depth (reading published checkpoints)
    network: Callable[[], nn.Module]
    to_sigma: Callable[[nn.Module], nn.Module]
    to_score: Callable[[nn.Module], nn.Module]
    optimizer: Callable[[Iterable[Any]], torch.optim.Optimizer]
    learning_rate: LearningRate
    data: DataSpec
    train: TrainSettings
    sample: SampleSettings
    eval: EvalSettings
    sampler: Sampler
    guidance: Guidance
    sigma_range: tuple[float, float]
    likelihood_range: tuple[float, float]
    schedule: DDPMSchedule | None  # noise.kind = ddpm: the discrete VLB's
    loss: LossFn | None = None
    classifier: Callable[[], nn.Module] | None = None  # the guidance classifier (sampling.guidance=classifier)
    fingerprints: Mapping[str, str] = field(default_factory=dict)


def experiment(config: Any, workdir: str | Path | None = None, mode: str = "train") -> Experiment:
    """The config as an `Experiment`. For the modes that run a trained network (CHECKPOINT_MODES), the
    model, noise and architecture data fields come from the checkpoint's stored config when it has
    one (sampling.checkpoint, else WORKDIR's newest; see `with_stored_model`), so the sampling and
    evaluation fields still come from `config`; a published checkpoint carries none, and `config`
    describes it; a stored config that describes no known network is a CheckpointError naming the
    file. The guidance classifier is built from its own checkpoint's stored config likewise."""
    source = checkpoint_source(config, workdir) if mode in CHECKPOINT_MODES else None
    stored = stored_config(source) if source is not None and source.exists() else None
    if stored is not None:
        config = with_stored_model(config, stored)
    try:
        family, variant, network = network_family(config), network_variant(config), network_factory(config)
        to_sigma, to_score = sigma_adapter(config), score_adapter(config)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if stored is None:
            raise
        raise unknown_network(source, e) from e
    sample = sample_settings(config)
    classifier = None
    if sample.guidance == "classifier":
        path = Path(sample.classifier_workdir) if sample.classifier_workdir else None
        classifier = functools.partial(_classifier_network, path, classifier_factory(config))
    kind = noise_kind(config)
    return Experiment(
        record=config_to_json(config), description=describe_model(config), family=family, variant=variant,
        network=network, to_sigma=to_sigma, to_score=to_score, optimizer=optimizer_factory(config),
        learning_rate=learning_rate_schedule(config), data=data_spec(config), train=train_settings(config),
        sample=sample, eval=eval_settings(config), sampler=make_sampler(sampler_options(config), strict=False),
        guidance=guidance(config), sigma_range=sigma_range(config), likelihood_range=likelihood_sigma_range(config),
        schedule=create_schedule(config) if kind == "ddpm" else None,
        loss=create_loss(config) if mode == "train" else None, classifier=classifier,
        fingerprints={"sample": sampling_fingerprint(config, "sample"),
                      "eval": sampling_fingerprint(for_evaluation(config), "eval")})


def _classifier_network(path: Path | None, published: Callable[[], nn.Module]) -> nn.Module:
    """A new guidance classifier network: the one its checkpoint's stored config describes (a scorelib
    run, read when guidance first needs it), else `published()` (a guided-diffusion file carries no
    architecture: the config's classifier section gives it)."""
    trained = stored_config(path) if path is not None and path.exists() else None
    return network_factory(trained)() if trained is not None else published()

__all__ = [
    "ARCHITECTURE_DATA_FIELDS", "BETA_SCHEDULES", "CHECKPOINT_MODES", "DATASETS", "DDPM_LOSSES", "DEVICES",
    "FAST_DEFAULT_NFE", "GUIDANCE", "GUIDANCE_CONVENTIONS", "INCEPTION_PREPROCESSING", "INITS", "LOSSES",
    "MODEL_NAMES", "NOISE_KINDS", "ODE_METHODS", "OPTIMIZERS", "REFERENCE_SPLITS", "SAMPLERS", "SAMPLER_FIELDS",
    "SAMPLING_METHODS", "SOLVER_ORDERS", "SPACINGS", "TIMESTEP_SAMPLERS", "TRAINING_TARGETS", "VARIANCES",
    "ConfigError", "DataSpec", "EvalSettings", "Experiment", "FidReference", "Guidance", "LearningRate", "LossFn",
    "SampleSettings", "Sampler", "SamplerEntry", "SamplerOptions", "TrainSettings", "checkpoint_source", "choice",
    "classifier_factory", "create_classifier", "create_dataset", "create_loss", "create_model", "create_network",
    "create_optimizer", "create_sampler", "create_schedule", "create_score_model", "create_sde",
    "create_sigma_model", "create_sigma_sampler", "create_sigmas", "data_spec", "describe_model",
    "describe_sampler", "eval_settings", "evaluation_arguments", "evaluation_kwargs", "experiment",
    "fid_reference", "for_evaluation", "format_value", "guidance", "guidance_convention", "guided_score",
    "is_class_conditional", "is_deterministic", "learning_rate", "learning_rate_schedule", "likelihood_sigma_range",
    "load_dataset", "make_sampler", "model_factory", "network_factory", "network_family", "network_variant",
    "noise_kind", "optimizer_factory", "pc_betas", "reference_of", "sample_settings", "sampler_options",
    "sampler_reads", "sampling_fingerprint", "sampling_grid", "sampling_labels", "sampling_nfe", "score_adapter",
    "sigma_adapter", "sigma_range", "stored_config", "train_settings", "uses_labels", "with_overrides",
    "with_stored_model",
]
