"""DDPM U-Net (Ho et al. 2020): shapes, gradients, timestep handling, parameter count, autocast, compile."""

from __future__ import annotations

import math

import pytest
import torch

from scorelib.models.ddpm_unet import DDPMUNet
from scorelib.models.layers import AttnBlock, Downsample, timestep_embedding


def small_net(image_size: int, **kw) -> DDPMUNet:
    """The toy / digits configuration: one level of downsampling, one res block, tiny width."""
    defaults = dict(
        in_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
        image_size=image_size,
    )  # fmt: skip
    defaults.update(kw)
    return DDPMUNet(**defaults)


def perturb_(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its initial value.

    DDPM zero-initialises the last conv of every residual branch and the output conv, so a fresh
    network outputs exactly 0 and most gradients vanish until the first optimiser step.
    """
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("size", [8, 16, 32])
def test_output_shape_matches_input(size: int) -> None:
    torch.manual_seed(0)
    net = small_net(size, attn_resolutions=(size // 2,))
    x = torch.randn(3, 1, size, size)
    t = torch.tensor([0, 17, 999])
    assert net(x, t).shape == x.shape


def test_out_channels_learned_variance_head() -> None:
    net = small_net(8, in_channels=3, out_channels=6)
    assert net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2])).shape == (2, 6, 8, 8)


def test_fresh_network_outputs_zero() -> None:
    # Ho et al.'s reference code initialises conv_out (and each residual branch's last layer) to zero.
    net = small_net(16, attn_resolutions=(8,))
    assert torch.equal(net(torch.randn(2, 1, 16, 16), torch.tensor([3, 500])), torch.zeros(2, 1, 16, 16))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = perturb_(small_net(8, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(4,), dropout=0.1))
    x = torch.randn(2, 1, 8, 8)
    net(x, torch.randint(0, 1000, (2,))).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing}"


def test_timestep_changes_output_and_float_matches_int() -> None:
    torch.manual_seed(0)
    net = perturb_(small_net(8)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out5 = net(x, torch.tensor([5, 5]))
        out_f = net(x, torch.tensor([5.0, 5.0]))
        out6 = net(x, torch.tensor([6, 6]))
        out_frac = net(x, torch.tensor([5.5, 5.5], dtype=torch.float64))
        out_scalar = net(x, torch.tensor(5))
    assert torch.equal(out5, out_f)
    assert torch.equal(out5, out_scalar)
    assert not torch.allclose(out5, out6)
    assert torch.isfinite(out_frac).all() and not torch.allclose(out_frac, out5)


def test_timestep_embedding_formula() -> None:
    # DDPM / tensor2tensor: ω_i = 10000^(-i / (dim/2 - 1)), [sin, cos].
    t = torch.tensor([0.0, 1.0, 2.5, 999.0])
    dim = 8
    emb = timestep_embedding(t, dim)
    w = torch.tensor([10000.0 ** (-i / 3) for i in range(4)])
    torch.testing.assert_close(emb, torch.cat([torch.sin(t[:, None] * w), torch.cos(t[:, None] * w)], 1))
    assert emb.dtype == torch.float32
    assert timestep_embedding(t, 9).shape == (4, 9)
    assert timestep_embedding(torch.tensor([3]), 8)[0, 0] == pytest.approx(math.sin(3.0))
    # improved-diffusion / ADM variant: ω_i = 10000^(-i / (dim/2)), [cos, sin].
    w0 = torch.tensor([10000.0 ** (-i / 4) for i in range(4)])
    adm = timestep_embedding(t, dim, freq_shift=0.0, cos_first=True)
    torch.testing.assert_close(adm, torch.cat([torch.cos(t[:, None] * w0), torch.sin(t[:, None] * w0)], 1))


def test_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    block = perturb_(AttnBlock(64))
    x = torch.randn(2, 64, 4, 4)
    h = block.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in (block.q, block.k, block.v))  # [B, C, HW]
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(64), dim=-1)  # [B, HW(q), HW(k)]
    ref = x + block.proj_out((v @ w.transpose(1, 2)).reshape(2, 64, 4, 4))
    torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-5)


def test_downsample_pads_bottom_right_like_tf_same() -> None:
    down = Downsample(32)
    x = torch.randn(1, 32, 8, 8)
    ref = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2
    )
    assert down(x).shape == (1, 32, 4, 4)
    torch.testing.assert_close(down(x), ref)


def test_rejects_indivisible_size() -> None:
    net = small_net(8)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 7, 7), torch.tensor([1]))


def test_cifar10_parameter_count() -> None:
    # ermongroup/ddim models.diffusion.Model with configs/cifar10.yml: 35,746,307 parameters
    # (measured; Ho et al. report 35.7M). CelebA-HQ / LSUN 256 px config: 113,673,219 (114M).
    with torch.device("meta"):
        net = DDPMUNet(
            ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
            resamp_with_conv=True, image_size=32,
        )  # fmt: skip
        big = DDPMUNet(ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), dropout=0.0, image_size=256)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 35.7e6) / 35.7e6 < 0.01
    assert n == 35_746_307
    assert sum(p.numel() for p in big.parameters()) == 113_673_219


def test_state_dict_names_match_reference_checkpoints() -> None:
    # Key names and shapes of ermongroup/ddim's Model (and of the converted DDPM TF checkpoints),
    # so their weights load with load_state_dict(strict=True).
    with torch.device("meta"):
        sd = DDPMUNet().state_dict()
    expected = {
        "temb.dense.0.weight": (512, 128),
        "temb.dense.1.bias": (512,),
        "conv_in.weight": (128, 3, 3, 3),
        "down.0.block.0.norm1.weight": (128,),
        "down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "down.1.attn.1.q.weight": (256, 256, 1, 1),
        "down.2.downsample.conv.weight": (256, 256, 3, 3),
        "mid.block_1.temb_proj.weight": (256, 512),
        "mid.attn_1.proj_out.weight": (256, 256, 1, 1),
        "mid.block_2.conv2.weight": (256, 256, 3, 3),
        "up.0.block.2.nin_shortcut.weight": (128, 256, 1, 1),
        "up.1.attn.2.k.bias": (256,),
        "up.3.upsample.conv.weight": (256, 256, 3, 3),
        "norm_out.weight": (128,),
        "conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == 328


def test_float64_model() -> None:
    net = perturb_(small_net(8)).double()
    out = net(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([1.5, 2.0]))
    assert out.dtype == torch.float64


def test_autocast_bf16_forward_is_finite() -> None:
    torch.manual_seed(0)
    net = perturb_(small_net(8, attn_resolutions=(4,))).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        ref = net(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    torch.manual_seed(0)
    net = perturb_(small_net(8, attn_resolutions=(4,))).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3.0, 250.5])
    compiled = torch.compile(net)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), net(x, t), rtol=1e-4, atol=1e-4)
