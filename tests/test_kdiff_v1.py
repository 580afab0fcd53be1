"""k-diffusion's ImageDenoiserModelV1 as scorelib's `kdiff_v1` network (scorelib.models.kdiff_v1), checked
against k-diffusion 0.1.1.post1 itself (the `peers` extra; skipped where it is not installed): the same
parameters, the same initial weights from the same seed, and, with k-diffusion's weights loaded unchanged,
EDM's preconditioned denoiser equal to k-diffusion's `Denoiser` around its model. End to end: a tiny
edm_digits run with model.name=kdiff_v1 trains and samples through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_main, sample_file

from scorelib.builder import experiment
from scorelib.builder.configs import run_config_file
from scorelib.models.kdiff_v1 import KDiffusionV1
from scorelib.peers import k_diffusion_image_v1
from scorelib.precond import EDMPrecond

KD = k_diffusion_image_v1()
needs_kd = pytest.mark.skipif(KD is None, reason="k-diffusion (the peers extra) is not installed")

# (name, ImageDenoiserModelV1 arguments): without attention; with attention at two levels, 3 levels and
# augmentation labels (the mapping condition); dropout and wider levels; 2×2 patches
CASES = {
    "plain": dict(c_in=1, feats_in=32, depths=[1, 1], channels=[16, 32], self_attn_depths=[False, False]),
    "attn_aug": dict(c_in=3, feats_in=64, depths=[2, 1, 2], channels=[32, 64, 96],
                     self_attn_depths=[False, True, True], mapping_cond_dim=9),
    "wide": dict(c_in=2, feats_in=48, depths=[2, 2], channels=[64, 128], self_attn_depths=[True, False],
                 dropout_rate=0.1),
    "patch": dict(c_in=3, feats_in=32, depths=[1, 1], channels=[16, 32], self_attn_depths=[False, True],
                  patch_size=2),
}


def ours(kw: dict) -> KDiffusionV1:
    """scorelib's network with the arguments of k-diffusion's `ImageDenoiserModelV1(**kw)`."""
    kw = dict(kw)
    kw["dropout"] = kw.pop("dropout_rate", 0.0)
    return KDiffusionV1(**kw)


def theirs(kw: dict) -> torch.nn.Module:
    return KD[1].ImageDenoiserModelV1(**kw)


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The model with every parameter redrawn (k-diffusion zero-initialises its output layers and AdaGN
    maps, which would hide most of the network): randn/√fan_in for rank ≥ 2, 0.3·randn for vectors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            w = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.copy_(w / p[0].numel() ** 0.5 if p.ndim >= 2 else 0.3 * w)
    return model


@needs_kd
@pytest.mark.parametrize("case", list(CASES))
def test_parameters_and_state_dict_keys_are_k_diffusions(case):
    """The same parameter count, and the same state_dict keys and shapes (buffers included)."""
    a, b = ours(CASES[case]), theirs(CASES[case])
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@needs_kd
@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_same_initial_weights(case):
    """Modules are created and initialised in k-diffusion's order: the same seed gives the same weights."""
    torch.manual_seed(7)
    a = ours(CASES[case]).state_dict()
    torch.manual_seed(7)
    b = theirs(CASES[case]).state_dict()
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


SIGMAS = torch.tensor([0.002, 0.02, 0.3, 1.0, 5.0, 80.0])


@needs_kd
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edm_denoiser_equals_k_diffusions_denoiser(case, dtype):
    """EDMPrecond(ours).denoise(x, σ) == k-diffusion's Denoiser(ImageDenoiserModelV1)(x, σ) with its weights
    loaded unchanged, for σ from 0.002 to 80 (and augmentation labels where the model takes them).
    k-diffusion's SelfAttention2d applies its dropout in eval mode too (it passes dropout_p=self.dropout.p
    to scaled_dot_product_attention whatever self.training); scorelib's does not, so for the comparison
    k-diffusion's attention dropout is set to 0 (its Dropout2d layers are off in eval)."""
    kw, sigma_data = CASES[case], 0.5
    torch.manual_seed(3)
    inner = randomised(theirs(kw), seed=11).to(dtype).eval()
    for module in inner.modules():
        if isinstance(module, KD[0].SelfAttention2d):
            module.dropout.p = 0.0
    net = ours(kw).to(dtype).eval()
    net.load_state_dict(inner.state_dict())
    g = torch.Generator().manual_seed(5)
    n, res = len(SIGMAS), 8 if len(kw["depths"]) <= 2 else 16
    sigma = SIGMAS.to(dtype)
    scale = (sigma**2 + sigma_data**2).sqrt()[:, None, None, None]
    x = torch.randn(n, kw["c_in"], res, res, generator=g, dtype=dtype) * scale
    labels = None
    if kw.get("mapping_cond_dim", 0):
        labels = torch.randn(n, kw["mapping_cond_dim"], generator=g, dtype=dtype)
    with torch.no_grad():
        want = KD[0].Denoiser(inner, sigma_data=sigma_data)(x, sigma, mapping_cond=labels)
        got = EDMPrecond(net, sigma_data).denoise(x, sigma, augment_labels=labels)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-11)
    assert want.abs().max() > 0.1  # the randomised weights matter
    torch.testing.assert_close(got, want, **tol)


@needs_kd
def test_the_builder_maps_the_config_to_k_diffusions_arguments():
    """model.nf·ch_mult → channels, num_res_blocks → depths, attn_resolutions → self_attn_depths by level,
    nf·channel_mult_emb → feats_in, augment_dim → mapping_cond_dim, dropout → dropout_rate; EDM's
    preconditioning with model.sigma_data is its conditioning."""
    c = run_config_file(Path(__file__).resolve().parents[1] / "configs" / "edm_digits.py")
    c.model.name, c.model.nf, c.model.ch_mult, c.model.num_res_blocks = "kdiff_v1", 16, (1, 2, 3), 2
    c.model.attn_resolutions, c.model.augment_dim = (4,), 9  # digits: 8×8, levels at 8, 4, 2
    c.data.augment_p, c.model.dropout, c.model.channel_mult_emb = 0.12, 0.1, 4
    exp = experiment(c)
    torch.manual_seed(0)
    net = exp.network()
    torch.manual_seed(0)
    ref = theirs(dict(c_in=1, feats_in=64, depths=[2, 2, 2], channels=[16, 32, 48],
                      self_attn_depths=[False, True, False], mapping_cond_dim=9, dropout_rate=0.1))
    assert isinstance(net, KDiffusionV1)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0, msg=k)
    wrapped = exp.wrap(net)
    assert isinstance(wrapped, EDMPrecond) and wrapped.sigma_data == c.model.sigma_data


def test_a_class_label_or_an_unexpected_augmentation_label_is_an_error():
    net = KDiffusionV1(1, 16, [1], [8], [False])
    x, c_noise = torch.zeros(2, 1, 4, 4), torch.zeros(2)
    assert net(x, c_noise).shape == x.shape
    with pytest.raises(ValueError, match="class labels"):
        net(x, c_noise, y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="mapping_cond_dim"):
        net(x, c_noise, augment_labels=torch.zeros(2, 9))


TINY = ["--config=edm_digits", "--config.model.name=kdiff_v1", "--config.model.nf=8",
        "--config.model.channel_mult_emb=2", "--config.model.attn_resolutions=(4,)",
        "--config.training.batch_size=8", "--config.training.n_iters=4", "--config.training.snapshot_freq=4",
        "--config.training.snapshot_samples=0", "--config.training.eval_at_end=False",
        "--config.training.log_freq=2", "--config.optim.warmup=0", "--config.sampling.n_steps=3",
        "--config.sampling.n_samples=4", "--config.sampling.batch_size=4", "--config.device=cpu"]


def test_trains_and_samples_through_the_cli(tmp_path):
    """A tiny edm_digits run with model.name=kdiff_v1 (attention at 4×4) trains 4 steps, then --mode=sample
    with Heun on 3 levels writes 4 finite 8×8 samples."""
    workdir = tmp_path / "run"
    r = run_main(*TINY, f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr
    ckpt = workdir / "checkpoints" / "checkpoint_00000004.pt"
    assert ckpt.exists(), sorted(p.name for p in (workdir / "checkpoints").iterdir())
    r = run_main(*TINY, "--mode=sample", f"--checkpoint={ckpt}", f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr
    x = np.load(sample_file(workdir, "heun"))["samples"]
    assert x.shape == (4, 1, 8, 8) and np.isfinite(x).all()
