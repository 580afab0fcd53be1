"""The typed run settings of `scorelib.build` and the rule that only build.py reads configs."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from scorelib import build
from scorelib.defaults import base

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = set(base().keys())  # seed, device, data, model, noise, training, sampling, optim, eval, classifier


def _config_reads(path: Path) -> list[str]:
    """`<name>.<section>` attribute reads of a config-like name (config, cfg, stored) in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.name}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("config", "cfg", "stored", "c") and node.attr in SECTIONS]


def test_only_build_reads_config_fields():
    # validate.py / rules.py check the fields the build package reads, before build turns them into objects
    files = [p for p in sorted((ROOT / "scorelib").rglob("*.py"))
             if p.parent.name != "build" and p.name not in ("defaults.py", "validate.py", "rules.py")]
    reads = [r for p in files for r in _config_reads(p)]
    assert reads == []
    # the check sees reads where they are allowed, so it can fail
    assert any(".sampling" in r for r in _config_reads(ROOT / "scorelib" / "build" / "sampling.py"))


def test_train_settings_turn_no_clipping_into_inf_and_validate_names():
    config = base()
    assert build.train_settings(config).grad_clip == math.inf
    config.optim.grad_clip = 1.0
    config.training.target = "classifier"
    t = build.train_settings(config)
    assert t.grad_clip == 1.0 and t.target == "classifier" and t.uses_labels
    config.device = "tpu"
    with pytest.raises(build.ConfigError, match="device='tpu'"):
        build.train_settings(config)


def test_data_spec_shape():
    config = base()
    assert build.data_spec(config).shape == (3, 32, 32)
    config.data.dataset, config.data.channels = "toy", 2
    assert build.data_spec(config).shape == (2,)


def test_sampling_labels_fixed_random_or_none():
    config = base()
    g = torch.Generator().manual_seed(0)
    assert build.sampling_labels(config, 4, g, torch.device("cpu")) is None  # ncsnv2: unconditional
    config.model.name = "adm"
    labels = build.sampling_labels(config, 500, g, torch.device("cpu"))
    assert labels.shape == (500,) and set(labels.tolist()) == set(range(10))
    config.sampling.class_label = 3
    assert build.sampling_labels(config, 4, g, torch.device("cpu")).tolist() == [3, 3, 3, 3]
    config.model.name, config.sampling.guidance = "ddpm", "classifier"  # the classifier needs labels too
    assert build.sample_settings(config).labelled
    config.sampling.guidance = "sometimes"
    with pytest.raises(build.ConfigError, match=r"sampling\.guidance="):
        build.sample_settings(config)


def test_eval_settings_vlb_variance_only_for_ddpm_models():
    config = base()
    assert build.eval_settings(config).vlb_variance is None
    config.noise.kind, config.sampling.variance = "ddpm", "small"
    assert build.eval_settings(config).vlb_variance == "small"
    config.model.learn_sigma = True
    assert build.eval_settings(config).vlb_variance == "learned"


def test_with_overrides_copies_and_names_unknown_keys():
    config = base()
    out = build.with_overrides(config, {"sampling.n_steps": 10, "noise.sigma_max": 1.0})
    assert out.sampling.n_steps == 10 and out.noise.sigma_max == 1.0
    assert config.sampling.n_steps == 0 and config.noise.sigma_max == 50.0  # the original is untouched
    for key in ("sampling.nope", "nope.n_steps"):
        with pytest.raises(build.ConfigError, match=f"unknown config key '{key}'"):
            build.with_overrides(config, {key: 1})
    assert build.for_evaluation(config).sampling.batch_size == config.eval.batch_size != config.sampling.batch_size


def test_with_stored_model_takes_the_architecture_and_keeps_the_sampler():
    config, stored = base(), base()
    stored.model.name, stored.model.nf, stored.noise.kind = "ddpm", 32, "ddpm"
    stored.data.image_size, stored.data.root = 8, "/elsewhere"
    config.sampling.method = "ode"
    out = build.with_stored_model(config, stored)
    assert (out.model.name, out.model.nf, out.noise.kind, out.data.image_size) == ("ddpm", 32, "ddpm", 8)
    assert out.sampling.method == "ode" and out.data.root == config.data.root  # run settings stay the user's
    assert config.model.name == "ncsnv2" and config.data.image_size == 32
    out.model.nf = 64
    assert stored.model.nf == 32  # no aliasing into the stored config


def test_describe_sampler_and_determinism():
    config = base()
    config.noise.num_scales = 10
    assert build.describe_sampler(config) == "ald, 10 levels, n_steps_each=5, step_lr=6.2e-06, denoise=True"
    assert not build.is_deterministic(config)
    config.sampling.method = "ddim"
    assert build.is_deterministic(config)
    config.sampling.eta = 0.5
    assert not build.is_deterministic(config)
    assert build.describe_model(config) == "cifar10, model ncsnv2"
