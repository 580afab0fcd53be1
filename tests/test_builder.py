"""The typed records and objects of `scorelib.builder` and the rule that only the builder reads configs."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from scorelib.builder import ConfigError, experiment
from scorelib.builder.configs import for_evaluation, with_overrides, with_stored_model
from scorelib.builder.fields import base

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = set(base().keys())  # seed, device, data, model, noise, training, sampling, optim, eval, classifier


def _config_reads(path: Path) -> list[str]:
    """`<name>.<section>` attribute reads of a config-like name (config, cfg, stored) in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.name}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("config", "cfg", "stored", "c") and node.attr in SECTIONS]


def test_only_the_builder_reads_config_fields():
    # presets.py writes configs (the published releases' flags); everything else takes the Experiment
    files = [p for p in sorted((ROOT / "scorelib").rglob("*.py"))
             if p.parent.name != "builder" and p.name not in ("presets.py",)]
    reads = [r for p in files for r in _config_reads(p)]
    assert reads == []
    # the check sees reads where they are allowed, so it can fail
    assert any(".sampling" in r for r in _config_reads(ROOT / "scorelib" / "builder" / "__init__.py"))


def test_train_records_and_labels_and_validate_names():
    config = base()
    assert experiment(config).f.optim.grad_clip == -1.0  # <= 0: the loop clips at math.inf
    config.optim.grad_clip = 1.0
    config.training.target = "classifier"
    config.noise.kind, config.model.name = "ddpm", "ddpm"
    exp = experiment(config)
    assert exp.f.optim.grad_clip == 1.0 and exp.f.training.target == "classifier" and exp.uses_labels
    config.device = "tpu"
    with pytest.raises(ConfigError, match="device: 'tpu'"):
        experiment(config)
    assert math.isinf(math.inf)


def test_data_spec_shape():
    config = base()
    assert experiment(config).data.shape == (3, 32, 32)
    config.data.dataset, config.data.channels, config.model.name = "toy", 2, "mlp"
    assert experiment(config).data.shape == (2,)


def test_sampling_labels_fixed_random_or_none():
    config = base()
    g = torch.Generator().manual_seed(0)
    assert experiment(config, mode="sample").guidance.labels(4, g, torch.device("cpu")) is None  # ncsnv2: unconditional
    config.model.name, config.noise.kind = "adm", "ddpm"
    labels = experiment(config, mode="sample").guidance.labels(500, g, torch.device("cpu"))
    assert labels.shape == (500,) and set(labels.tolist()) == set(range(10))
    config.sampling.class_label = 3
    assert experiment(config, mode="sample").guidance.labels(4, g, torch.device("cpu")).tolist() == [3, 3, 3, 3]
    config.model.name, config.sampling.guidance = "ddpm", "classifier"  # the classifier needs labels too
    config.classifier.workdir = "somewhere"
    assert experiment(config, mode="sample").guidance.labelled
    config.sampling.guidance = "sometimes"
    with pytest.raises(ConfigError, match=r"sampling\.guidance: 'sometimes'"):
        experiment(config, mode="sample")


def test_eval_settings_vlb_variance_only_for_ddpm_models():
    config = base()
    assert experiment(config, mode="sample").vlb_variance is None
    config.noise.kind, config.sampling.variance, config.model.name = "ddpm", "small", "ddpm"
    assert experiment(config, mode="sample").vlb_variance == "small"
    config.model.learn_sigma = True
    assert experiment(config, mode="sample").vlb_variance == "learned"


def test_with_overrides_copies_and_names_unknown_keys():
    config = base()
    out = with_overrides(config, {"sampling.n_steps": 10, "noise.sigma_max": 1.0})
    assert out.sampling.n_steps == 10 and out.noise.sigma_max == 1.0
    assert config.sampling.n_steps == 0 and config.noise.sigma_max == 50.0  # the original is untouched
    for key in ("sampling.nope", "nope.n_steps"):
        with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
            with_overrides(config, {key: 1})
    assert for_evaluation(config).sampling.batch_size == config.eval.batch_size != config.sampling.batch_size


def test_with_stored_model_takes_the_architecture_and_keeps_the_sampler():
    config, stored = base(), base()
    stored.model.name, stored.model.nf, stored.noise.kind = "ddpm", 32, "ddpm"
    stored.data.image_size, stored.data.root = 8, "/elsewhere"
    config.sampling.method = "ode"
    out = with_stored_model(config, stored)
    assert (out.model.name, out.model.nf, out.noise.kind, out.data.image_size) == ("ddpm", 32, "ddpm", 8)
    assert out.sampling.method == "ode" and out.data.root == config.data.root  # run settings stay the user's
    assert config.model.name == "ncsnv2" and config.data.image_size == 32
    out.model.nf = 64
    assert stored.model.nf == 32  # no aliasing into the stored config


def test_describe_sampler_and_determinism():
    config = base()
    config.noise.num_scales = 10
    assert experiment(config).sampler.describe() == "ald, 10 levels, n_steps_each=5, step_lr=6.2e-06, denoise=True"
    assert not experiment(config).sampler.deterministic
    config.sampling.method = "ddim"
    assert experiment(config).sampler.deterministic
    config.sampling.eta = 0.5
    assert not experiment(config).sampler.deterministic
    assert experiment(config).describe() == "cifar10, model ncsnv2"


def test_the_field_reference_is_generated_from_the_declarations():
    """docs/fields.md is `reference_markdown()` of today's declarations (regenerate it with the command in
    its first paragraph)."""
    from scorelib.builder.fields import SECTIONS, reference_markdown

    text = (ROOT / "docs" / "fields.md").read_text()
    assert text == reference_markdown()
    assert sum(len(f) for f in SECTIONS.values()) == text.count("\n| `")  # one row per declared field
