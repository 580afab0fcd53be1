"""A few training steps of every model family through `train.train`, on a fake CIFAR-10 directory:
the losses, timestep samplers, labels and samplers of each config are wired end to end."""

from __future__ import annotations

import importlib

import pytest
import torch
from cli_helpers import write_fake_cifar10

from scorelib.builder import ConfigError, experiment
from scorelib.checkpoint import list_checkpoints, load_checkpoint
from scorelib.sampling import sample_images
from scorelib.sharing import load_network
from scorelib.train import train


def tiny(name: str, root) -> object:
    module, *arg = name.split(":")
    c = importlib.import_module(f"configs.{module}").get_config(*arg)
    c.data.root = str(root)
    c.model.nf = 32 if c.model.name not in ("ncsn", "ncsnv2") else 8
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (16,)
    c.model.num_head_channels, c.model.num_heads = -1, 1
    c.noise.num_scales = min(c.noise.num_scales, 50)
    c.training.batch_size, c.training.n_iters = 4, 3
    c.training.snapshot_freq, c.training.log_freq, c.training.snapshot_samples = 3, 1, 2
    c.sampling.n_steps = 3
    c.sampling.n_steps_each = 1
    c.sampling.batch_size = 2
    c.optim.warmup = 0
    return c


@pytest.mark.parametrize("name", ["ddpm_cifar", "iddpm_cifar", "adm_cifar", "ncsnpp_cifar", "ddpmpp_cifar",
                                  "ncsnv2_cifar", "edm_cifar", "edm_cifar:vp", "edm_cifar:ve", "edm_cifar_ve"])
def test_few_training_steps(name, tmp_path):
    data = write_fake_cifar10(tmp_path / "data", n_per_batch=4)
    c = tiny(name, data)
    train(experiment(c), tmp_path / "run")
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_00000003.pt")
    if c.training.timestep_sampler == "importance":
        assert "timesteps" in state and int(state["timesteps"]["counts"].sum()) == 12
    assert (tmp_path / "run" / "samples" / "step_00000003.png").exists()
    net, _, _ = load_network(tmp_path / "run")
    x = sample_images(experiment(c, mode="sample"), net, 2, torch.device("cpu"))
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


def test_noisy_classifier_training_and_classifier_guidance(tmp_path):
    data = write_fake_cifar10(tmp_path / "data", n_per_batch=4)
    c = tiny("adm_cifar", data)
    c.training.target = "classifier"
    c.classifier.nf, c.classifier.ch_mult, c.classifier.num_res_blocks = 32, (1, 2), 1
    c.classifier.attn_resolutions, c.classifier.num_head_channels = (16,), 8
    train(experiment(c), tmp_path / "clf")
    clf, stored, clf_exp = load_network(tmp_path / "clf")
    assert stored.training.target == "classifier"
    m = tiny("adm_cifar", data)
    train(experiment(m), tmp_path / "model")
    net, _, _ = load_network(tmp_path / "model")
    m.sampling.guidance, m.sampling.guidance_scale = "classifier", 2.0
    m.classifier.workdir = str(tmp_path / "clf")
    x = sample_images(experiment(m, mode="sample"), net, 2, torch.device("cpu"), classifier=clf_exp.wrap(clf))
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    with pytest.raises(ConfigError, match="classifier"):
        sample_images(experiment(m, mode="sample"), net, 2, torch.device("cpu"))
