"""Configs -> networks and score models (build), and sharing them (save / load)."""

from __future__ import annotations

import importlib
import os
import pickle

import pytest
import torch
from builds import exp_of, network, wrapped
from ml_collections import ConfigDict

import scorelib
from scorelib.checkpoint import CheckpointError, save_checkpoint

# parameter counts of the reference implementations (see README)
REFERENCE_COUNTS = {
    "ncsn_cifar": 30_117_635,
    "ncsn_mnist": 7_638_657,
    "ncsnv2_cifar": 29_694_083,
    "ncsnv2_celeba": 29_694_083,
    "ddpm_cifar": 35_746_307,
    "iddpm_cifar": 52_546_438,
    "ncsnpp_cifar": 62_758_787,  # trainable; score_sde also counts 128 frozen Fourier frequencies
    "ddpmpp_cifar": 61_804_419,
    "adm_cifar": 57_100_294,
}


def config(name: str) -> ConfigDict:
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_configs_build_the_reference_networks(name):
    with torch.device("meta"):
        net = network(config(name))
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_COUNTS[name]


def tiny(name: str) -> ConfigDict:
    c = config(name)
    c.model.nf = 32 if c.model.name not in ("ncsn", "ncsnv2") else 8
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (8,)
    c.model.num_head_channels = -1
    c.model.num_heads = 1
    c.data.image_size = 16
    return c


@pytest.mark.parametrize("name", ["ncsn_cifar", "ncsnv2_cifar", "ddpm_cifar", "iddpm_cifar", "ncsnpp_cifar",
                                  "ddpmpp_cifar", "adm_cifar", "ncsn_digits", "toy_gmm"])
def test_score_models_of_every_config(name):
    c = tiny(name) if name not in ("ncsn_digits", "toy_gmm") else config(name)
    torch.manual_seed(0)
    net = network(c)
    with torch.no_grad():  # reference inits zero the output layers: perturb so outputs depend on inputs
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    score = wrapped(c, net)
    shape = (3, c.data.channels) if c.data.dataset == "toy" else (3, c.data.channels, c.data.image_size,
                                                                     c.data.image_size)
    x = torch.randn(shape)
    kw = {"y": torch.tensor([1, 2, 3])} if exp_of(c).guidance.conditional else {}
    s1 = score(x, torch.full((3,), 0.5), **kw)
    s2 = score(x, torch.full((3,), 2.0), **kw)
    assert s1.shape == x.shape and torch.isfinite(s1).all()
    assert not torch.allclose(s1, s2)


def test_ddpm_score_model_is_eps_consistent():
    c = tiny("iddpm_cifar")  # learned variance: the score uses the ε channels only
    torch.manual_seed(0)
    net = network(c)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    net.eval()  # dropout off
    score = wrapped(c, net)
    abar = exp_of(c).noise.schedule.alphas_cumprod
    eps = scorelib.ScoreToEps(score, abar)
    x_t = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 3000])
    with torch.no_grad():
        t_net = t * (1000.0 / len(abar)) if c.model.rescale_timesteps else t  # improved-diffusion's t·1000/T
        torch.testing.assert_close(eps(x_t, t), net(x_t, t_net)[:, :3], rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    c = tiny("ddpm_cifar")
    torch.manual_seed(0)
    net = network(c)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    score = wrapped(c, net).eval()
    scorelib.save(score, tmp_path / "m.safetensors", c)  # the wrapper or the network both work
    assert (tmp_path / "m.json").exists()
    loaded = scorelib.load(tmp_path / "m.safetensors")
    assert not loaded.training
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), score(x, sigma), rtol=0, atol=0)


def test_load_from_a_training_checkpoint_prefers_ema(tmp_path):
    c = config("toy_gmm")
    net = network(c)
    ema = network(c)
    save_checkpoint(tmp_path / "checkpoints" / "checkpoint_00000010.pt",
                    {"model": net.state_dict(), "ema": ema.state_dict(), "step": 10,
                     "config": scorelib.checkpoint.config_to_json(c)})
    loaded = scorelib.load(tmp_path)
    x, sigma = torch.randn(4, 2), torch.full((4,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), ema(x, sigma))


def test_load_errors_name_the_file(tmp_path):
    c = config("toy_gmm")
    net = network(c)
    scorelib.save(net, tmp_path / "ok.safetensors", c)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors"):
        scorelib.load(tmp_path / "missing.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    (tmp_path / "garbage.json").write_text((tmp_path / "ok.json").read_text())
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        scorelib.load(tmp_path / "garbage.safetensors")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt"):
        scorelib.load(foreign)
    # a config that disagrees with the weights: the message lists the keys
    other = config("toy_gmm")
    other.model.num_res_blocks = 4
    (tmp_path / "ok.json").write_text(scorelib.checkpoint.config_to_json(other))
    with pytest.raises(CheckpointError, match=r"ok.safetensors.*(missing|unexpected) net\.\d"):
        scorelib.load(tmp_path / "ok.safetensors")


def test_a_code_carrying_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": Payload(), "config": "{}"}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        scorelib.load(bad)
    assert not marker.exists()
