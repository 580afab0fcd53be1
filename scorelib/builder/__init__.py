"""The experiment builder, the only code that reads a config (docs/design.md §4): config -> one frozen
`Experiment` holding every object and setting a run needs, made once by `experiment(config, workdir, mode)`.
Building is validating: every field is checked against its declaration and every cross-field rule is a
ConfigError raised where the object that needs it is built. Training, sampling, the CLI modes and the
benchmark take the Experiment, never the config.

    exp = experiment(config, workdir, mode="sample")   # a checkpoint's stored network applied
    net = exp.network()                                # a new network (its arguments bound)
    x = exp.sampler(exp.wrap(net), (16, *exp.data.shape), generator, device)

Modules, one concern each: `declare` (how a field is declared), `fields` (every field), `networks` (the
network table), `samplers` (the sampler table and its options), `objectives` (the loss table, optimiser,
learning rate), `noise` (the noise process), `guidance` (labels and guidance), `configs` (config files,
stored configs, overrides, fingerprints).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, config_to_json, unknown_network, weights_source
from ..schedules import Noise
from .configs import for_evaluation, sampling_fingerprint, stored_config, with_stored_model
from .datasets import DATASETS
from .declare import ConfigError, show
from .fields import Fields, check_fields, records
from .guidance import Guidance, make_guidance
from .networks import NETWORKS, build_classifier, check_noise_kind, class_conditional, wrap_classifier, wrapper
from .noise import make_noise
from .objectives import AUGMENTED, LOSSES, LearningRate, LossFn, learning_rate, loss_fn, optimizer_factory
from .samplers import SAMPLERS, Sampler

MODES = ("train", "sample", "eval", "likelihood", "bench", "phema")
# the modes that run a trained network: its checkpoint's stored architecture replaces the config's
CHECKPOINT_MODES = ("sample", "eval", "likelihood", "bench")
# the modes that read the data set (its shape must fit the data set)
DATA_MODES = ("train", "eval", "likelihood", "bench")


@dataclass(frozen=True, eq=False)
class Experiment:
    """A config turned into objects, once (`experiment`).

    `f`: the checked config as frozen records (`f.training.batch_size`, `f.data.shape`, ...). `network()`
    builds a new network and `wrap(net)` is its one σ-space conditioning (docs/design.md §4a), used for
    training, sampling and likelihoods alike; `loss` is the training objective (mode train); `sampler`
    and `guidance` draw samples; `record` is the config JSON stored with checkpoints; `fingerprints` what
    a drawn sample depends on, per purpose ("sample", "eval"); `source` where the weights come from
    (checkpoint modes); `replaced` the data fields the checkpoint's stored config changed (old, new)."""

    f: Fields
    mode: str
    record: str
    noise: Noise
    network: Callable[[], nn.Module]
    wrap: Callable[[nn.Module], nn.Module]
    sampler: Sampler
    guidance: Guidance
    optimizer: Callable[[Iterable[Any]], torch.optim.Optimizer]
    learning_rate: LearningRate
    loss: LossFn | None = None
    classifier: Callable[[], nn.Module] | None = None
    wrap_classifier: Callable[[nn.Module], nn.Module] | None = None
    source: Path | None = None
    replaced: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Any:
        """The data.* record (with `shape` and `value_range`)."""
        return self.f.data

    @property
    def family(self) -> str:
        """What network() builds: model.name, or "classifier" (the noisy classifier)."""
        return "classifier" if self.f.training.target == "classifier" else self.f.model.name

    @property
    def formats(self) -> tuple[str, ...]:
        """The published checkpoint layouts network() can read (the network table's)."""
        return ("openai_classifier",) if self.family == "classifier" else NETWORKS[self.family].formats

    @property
    def uses_labels(self) -> bool:
        """Whether training feeds class labels (a conditional model, or the noisy classifier)."""
        return self.guidance.conditional or self.f.training.target == "classifier"

    @property
    def vlb_variance(self) -> str | None:
        """The discrete VLB's variance for DDPM models (learned | small | large), None otherwise."""
        if self.noise.kind != "ddpm":
            return None
        return "learned" if self.f.model.learn_sigma else self.f.sampling.variance

    def describe(self) -> str:
        """The data set and network in a few words, e.g. "toy/gmm8, model mlp"."""
        d = self.f.data
        return d.dataset + (f"/{d.toy}" if d.dataset == "toy" else "") + f", model {self.f.model.name}"


def _check_network(f: Fields, noise: Noise) -> None:
    """The cross-field rules of the network table: learned variance, resolutions, toy data."""
    m, d, entry = f.model, f.data, NETWORKS[f.model.name]
    if m.learn_sigma and not entry.learned_variance:
        raise ConfigError(f"model.learn_sigma: model.name={m.name!r} has no learned variance "
                          f"({', '.join(k for k, e in NETWORKS.items() if e.learned_variance)})")
    if entry.unet and d.dataset != "toy":
        _check_resolutions(d.image_size, m.ch_mult, m.attn_resolutions, "model")
    if d.dataset == "toy" and not entry.toy:
        raise ConfigError(f"model.name: {m.name!r} does not fit data.dataset='toy' (2-D points) "
                          f"({', '.join(k for k, e in NETWORKS.items() if e.toy)})")


def _check_resolutions(size: int, ch_mult: Any, attn: Any, section: str) -> None:
    levels = len(ch_mult)
    if size % 2 ** (levels - 1):
        raise ConfigError(f"{section}.ch_mult: {levels} levels halve data.image_size={size} {levels - 1} times "
                          f"(an image size divisible by {2 ** (levels - 1)})")
    have = [size // 2**i for i in range(levels)]
    bad = [r for r in attn if r not in have]
    if bad:
        raise ConfigError(f"{section}.attn_resolutions: {', '.join(map(str, bad))} not among the network's "
                          f"resolutions at data.image_size={size} ({', '.join(map(str, have))})")


def _check_data(f: Fields) -> None:
    """The data set gives the shape the config says (modes that read the data)."""
    d, spec = f.data, DATASETS[f.data.dataset]
    if d.channels not in spec.channels:
        raise ConfigError(f"data.channels: {d.channels} does not fit data.dataset={d.dataset!r} "
                          f"({', '.join(map(str, spec.channels))})")
    if spec.image_size is not None and d.image_size != spec.image_size:
        raise ConfigError(f"data.image_size: {d.image_size} does not fit data.dataset={d.dataset!r} "
                          f"({spec.image_size})")


def _noisy_classifier(f: Fields, noise: Noise) -> tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.Module]]:
    """(constructor, σ-space wrapper) of the noisy classifier of the classifier.* section."""
    _check_resolutions(f.data.image_size, f.classifier.ch_mult, f.classifier.attn_resolutions, "classifier")
    return functools.partial(build_classifier, f, noise), wrap_classifier(noise)


def _network(f: Fields, noise: Noise) -> tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.Module]]:
    """(constructor, σ-space wrapper) of what training.target trains: the score network, or the noisy
    classifier."""
    if f.training.target == "classifier":
        return _noisy_classifier(f, noise)
    wrap = wrapper(f, noise)
    _check_network(f, noise)
    return functools.partial(NETWORKS[f.model.name].build, f, noise), wrap


def _make_loss(f: Fields, noise: Noise, wrap: Callable[[nn.Module], nn.Module]) -> LossFn:
    t = f.training
    if t.target == "classifier":
        if f.data.num_classes < 1:
            raise ConfigError("data.num_classes: 0: training.target='classifier' needs labelled data (>= 1)")
        return loss_fn("classifier", wrap, noise, f)
    entry = LOSSES[t.loss]
    if noise.kind not in entry.noise:
        fits = ", ".join(k for k, e in LOSSES.items() if noise.kind in e.noise)
        if entry.noise == ("ddpm",):
            raise ConfigError(f"training.loss: {t.loss!r} needs noise.kind='ddpm' ({fits})")
        raise ConfigError(f"training.loss: {t.loss!r} does not fit noise.kind={noise.kind!r} ({fits})")
    if entry.learned_variance and not f.model.learn_sigma:
        raise ConfigError(f"training.loss: {t.loss!r} trains a learned variance but model.learn_sigma=False "
                          "(eps, or --config.model.learn_sigma=True)")
    if (t.loss == "edm2") != (f.model.name == "edm2"):
        raise ConfigError(f"training.loss: {t.loss!r} does not fit model.name={f.model.name!r} (edm2 trains the "
                          "EDM2 network's learned uncertainty, which only it has)")
    if f.data.augment_p > 0 and t.loss not in AUGMENTED:
        raise ConfigError(f"data.augment_p: {f.data.augment_p:g} needs one of EDM's losses, whose networks take the "
                          f"augmentation labels ({', '.join(AUGMENTED)}; or 0)")
    fn = loss_fn(t.loss, wrap, noise, f)
    if fn.augment is not None and fn.augment.label_dim != f.model.augment_dim:
        raise ConfigError(f"model.augment_dim: {f.model.augment_dim} does not fit data.augment_p={f.data.augment_p:g} "
                          f"({fn.augment.label_dim}: the augmentation labels the network takes)")
    return fn


def _guidance(f: Fields, noise: Noise) -> Guidance:
    s, conditional = f.sampling, class_conditional(f)
    g = make_guidance(s, conditional, f.data.num_classes, conditional and f.model.class_dropout > 0)
    if g.labelled and s.class_label >= f.data.num_classes:
        raise ConfigError(f"sampling.class_label: {s.class_label} is not a class of this {f.data.num_classes}-class "
                          f"model (0..{f.data.num_classes - 1}, or -1 for random labels)")
    if s.guidance == "classifier":
        if noise.kind != "ddpm":
            raise ConfigError(f"sampling.guidance: 'classifier' needs noise.kind='ddpm', not {noise.kind!r} "
                              "(none, or a DDPM config)")
        if not f.classifier.workdir:
            raise ConfigError("classifier.workdir: empty: sampling.guidance='classifier' needs the classifier's run "
                              "(a workdir trained with --config.training.target=classifier)")
    return g


def _sampler(f: Fields, noise: Noise, labelled: bool) -> Sampler:
    s = f.sampling
    if noise.kind == "ddpm" and s.method in ("ddim", "ddpm", "pc") and s.n_steps > noise.num_scales:
        raise ConfigError(f"sampling.n_steps: {s.n_steps} is more than the model's T=noise.num_scales="
                          f"{noise.num_scales} (1..{noise.num_scales}, or 0 for all)")
    if 0 < s.sigma_max <= noise.sigma_min:
        raise ConfigError(f"sampling.sigma_max: {s.sigma_max:g} is not above the noise process's σ_min="
                          f"{noise.sigma_min:.4g} (a larger σ, or 0 for its σ_max)")
    return Sampler(s, noise, f.data.centered, f.model.learn_sigma, labelled)


def _classifier_network(path: Path | None, published: Callable[[], nn.Module]) -> nn.Module:
    """A new guidance classifier: the one its checkpoint's stored config describes (a scorelib run, read
    when guidance first needs it), else `published()` (a guided-diffusion file carries no architecture:
    the config's classifier section gives it)."""
    trained = stored_config(path) if path is not None and path.exists() else None
    return build_classifier(records(trained), None) if trained is not None else published()


def _replaced(config: Any, stored: Any) -> dict[str, tuple[Any, Any]]:
    return {f"data.{k}": (config.data[k], stored.data[k]) for k in ("dataset", "toy", "channels", "image_size")
            if config.data[k] != stored.data[k]}


def experiment(config: Any, workdir: str | Path | None = None, mode: str = "train") -> Experiment:
    """The config as an `Experiment`, validated by building it (a ConfigError names the field).

    For the modes that run a trained network (CHECKPOINT_MODES) the model, noise and architecture data
    fields come from the checkpoint's stored config when it has one (sampling.checkpoint, else WORKDIR's
    newest), read once and without the weights, so the sampling and evaluation fields still come from
    `config`; a published checkpoint carries none, and `config` describes it. A stored config that
    describes no known network is a CheckpointError naming the file. The builder's own tables (schedules,
    levels) are made on the CPU whatever the caller's default device (e.g. `torch.device("meta")`)."""
    with torch.device("cpu"):
        return _experiment(config, workdir, mode)


def _experiment(config: Any, workdir: str | Path | None, mode: str) -> Experiment:
    check_fields(config)
    source = weights_source(config.sampling.checkpoint, workdir) if mode in CHECKPOINT_MODES else None
    stored = stored_config(source, config) if source is not None and source.exists() else None
    replaced = {}
    if stored is not None:
        replaced = _replaced(config, stored)
        config = with_stored_model(config, stored)
        try:
            check_fields(config)
        except ConfigError as e:
            raise CheckpointError(f"{source}: its stored config does not describe a known network ({e})") from e
    f = records(config)
    if stored is None and f.training.target != "classifier":
        check_noise_kind(f, f.noise.kind)  # before the schedule, whose own limits depend on the kind
    noise = make_noise(f.noise)
    try:
        network, wrap = _network(f, noise)
    except ConfigError as e:
        if stored is None:
            raise
        raise unknown_network(source, e) from e
    if mode in DATA_MODES:
        _check_data(f)
    guide = _guidance(f, noise)
    classifier = wrap_cls = None
    if f.sampling.guidance == "classifier":
        published, wrap_cls = _noisy_classifier(f, noise)
        path = Path(f.classifier.workdir) if f.classifier.workdir else None
        classifier = functools.partial(_classifier_network, path, published)
    loss = _make_loss(f, noise, wrap) if mode == "train" else None
    return Experiment(
        f=f, mode=mode, record=config_to_json(config), noise=noise, network=network, wrap=wrap,
        sampler=_sampler(f, noise, guide.labelled), guidance=guide, optimizer=optimizer_factory(f.optim),
        learning_rate=learning_rate(f.optim, f.training.batch_size), loss=loss, classifier=classifier,
        wrap_classifier=wrap_cls, source=source, replaced=replaced,
        fingerprints={"sample": sampling_fingerprint(config, "sample"),
                      "eval": sampling_fingerprint(for_evaluation(config), "eval")})


__all__ = ["CHECKPOINT_MODES", "MODES", "SAMPLERS", "ConfigError", "Experiment", "experiment", "show"]
