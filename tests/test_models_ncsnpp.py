"""Tests for NCSN++ / DDPM++ (scorelib.models.ncsnpp) and their layers (scorelib.models.ncsnpp_layers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

from scorelib.models import ncsnpp
from scorelib.models.layers import timestep_embedding
from scorelib.models.ncsnpp import NCSNpp
from scorelib.models.ncsnpp_layers import (
    AttnBlockpp,
    Downsample,
    FIRConv2d,
    GaussianFourierProjection,
    Upsample,
    downsample_2d,
    fir_kernel_2d,
    upfirdn2d,
    upsample_2d,
)

K = fir_kernel_2d((1, 3, 3, 1))


def _small(size: int = 16, **kw) -> dict:
    """A tiny config: nf=16, one block per level, attention at the second level."""
    levels = {8: (1, 2), 16: (1, 2, 2), 32: (1, 2, 2, 2)}[size]
    base = dict(
        image_size=size,
        nf=16,
        ch_mult=levels,
        num_res_blocks=1,
        attn_resolutions=(size // 2,),
        dropout=0.0,
    )
    base.update(kw)
    return base


def _randomize(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Replace the (near-zero) final-layer initialisation so every parameter influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ shapes

PYRAMIDS = [(p, q) for p in ("none", "output_skip", "residual") for q in ("none", "input_skip", "residual")]


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("resblock_type", ["biggan", "ddpm"])
@pytest.mark.parametrize(("progressive", "progressive_input"), PYRAMIDS)
def test_output_shape(size: int, resblock_type: str, progressive: str, progressive_input: str) -> None:
    kw = _small(size, resblock_type=resblock_type, progressive=progressive, progressive_input=progressive_input)
    model = NCSNpp(**kw).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = model(x, torch.tensor([0.1, 10.0]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("fir", [True, False])
@pytest.mark.parametrize("resblock_type", ["biggan", "ddpm"])
@pytest.mark.parametrize("combine", ["sum", "cat"])
def test_output_shape_fir_and_combine(fir: bool, resblock_type: str, combine: str) -> None:
    kw = _small(
        16,
        fir=fir,
        resblock_type=resblock_type,
        progressive="residual",
        progressive_input="input_skip",
        progressive_combine=combine,
    )
    model = NCSNpp(**kw).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert model(x, torch.tensor([0.5, 2.0])).shape == x.shape


def test_ddpmpp_style_positional_shape() -> None:
    kw = _small(
        32, embedding_type="positional", scale_by_sigma=False, centered=True, fir=False, progressive_input="none"
    )
    model = NCSNpp(**kw).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert model(x, torch.tensor([0.0, 499.5, 999.0])).shape == x.shape


# ---------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "kw",
    [
        dict(resblock_type="biggan", fir=True, progressive="none", progressive_input="residual"),
        dict(
            resblock_type="biggan",
            fir=False,
            progressive="output_skip",
            progressive_input="input_skip",
            progressive_combine="cat",
        ),
        dict(resblock_type="ddpm", fir=True, progressive="residual", progressive_input="input_skip"),
        dict(
            resblock_type="ddpm",
            fir=False,
            progressive="residual",
            progressive_input="residual",
            embedding_type="positional",
            scale_by_sigma=False,
        ),
        dict(resblock_type="biggan", conditional=False, progressive="output_skip", progressive_input="residual"),
    ],
    ids=["ncsnpp", "biggan-outskip-cat", "ddpm-fir-residual", "ddpm-positional", "unconditional"],
)
def test_gradients_reach_every_parameter(kw: dict) -> None:
    model = _randomize(NCSNpp(**_small(16, **kw)))
    x = torch.rand(2, 3, 16, 16)
    model(x, torch.tensor([0.3, 3.0])).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_fourier_frequencies_are_not_trained() -> None:
    model = NCSNpp(**_small(8))
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("fourier") for n in names)
    assert "fourier.W" in model.state_dict()


# --------------------------------------------------------------------------------- time conditioning


@pytest.mark.parametrize("embedding_type", ["fourier", "positional"])
def test_time_cond_changes_output(embedding_type: str) -> None:
    # scale_by_sigma off so a change can only come through the embedding
    model = _randomize(NCSNpp(**_small(16, embedding_type=embedding_type, scale_by_sigma=False))).eval()
    x = torch.rand(1, 3, 16, 16).expand(2, -1, -1, -1)
    t = torch.tensor([0.5, 5.0]) if embedding_type == "fourier" else torch.tensor([10.0, 900.0])
    with torch.no_grad():
        out = model(x, t)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_unconditional_ignores_time() -> None:
    model = _randomize(NCSNpp(**_small(8, conditional=False, scale_by_sigma=False))).eval()
    assert model.temb_mlp is None
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([0.1, 0.2])), model(x, torch.tensor([5.0, 9.0])))


def test_scale_by_sigma_divides_by_sigma() -> None:
    scaled = _randomize(NCSNpp(**_small(8, scale_by_sigma=True))).eval()
    raw = NCSNpp(**_small(8, scale_by_sigma=False)).eval()
    raw.load_state_dict(scaled.state_dict())
    x, sigma = torch.rand(3, 3, 8, 8), torch.tensor([0.01, 1.0, 50.0])
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, sigma) * sigma.reshape(3, 1, 1, 1), raw(x, sigma))


def test_uncentered_maps_to_minus_one_one() -> None:
    raw = _randomize(NCSNpp(**_small(8, centered=False))).eval()
    centered = NCSNpp(**_small(8, centered=True)).eval()
    centered.load_state_dict(raw.state_dict())
    x, sigma = torch.rand(2, 3, 8, 8), torch.tensor([0.2, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(raw(x, sigma), centered(2 * x - 1, sigma))


def test_scalar_time_cond_broadcasts() -> None:
    model = _randomize(NCSNpp(**_small(8))).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(0.7)), model(x, torch.full((2,), 0.7)))


def test_batch_elements_are_independent() -> None:
    model = _randomize(NCSNpp(**_small(16, progressive="output_skip", progressive_input="input_skip"))).eval()
    x, sigma = torch.rand(3, 3, 16, 16), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        full = model(x, sigma)
        one = model(x[1:2], sigma[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-5)


def test_timestep_embedding_values() -> None:
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8)
    freqs = 10000.0 ** (-torch.arange(4) / 3.0)
    torch.testing.assert_close(emb[1], torch.cat([torch.sin(3.0 * freqs), torch.cos(3.0 * freqs)]))
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert timestep_embedding(t, 7).shape == (2, 7)


def test_fourier_projection_values() -> None:
    torch.manual_seed(3)
    proj = GaussianFourierProjection(4, scale=16.0)
    torch.manual_seed(3)
    torch.testing.assert_close(proj.W, torch.randn(4) * 16.0)  # W ~ N(0, scale²)
    arg = 2 * math.pi * 0.5 * proj.W
    torch.testing.assert_close(proj(torch.tensor([0.5]))[0], torch.cat([arg.sin(), arg.cos()]))


# ----------------------------------------------------------------------------------------- attention


def test_attention_matches_explicit_softmax() -> None:
    block = _randomize(AttnBlockpp(16, skip_rescale=True)).eval()
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (m(h).flatten(2) for m in (block.q, block.k, block.v))  # [B, C, N]
        w = torch.softmax(torch.einsum("bcn,bcm->bnm", q, k) / math.sqrt(16), dim=-1)
        out = torch.einsum("bnm,bcm->bcn", w, v).reshape(2, 16, 4, 4)
        expected = (x + block.proj_out(out)) / math.sqrt(2)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------- FIR resampling


def _scipy_separable(x: np.ndarray, taps: np.ndarray, up: int, down: int, start: int, length: int) -> np.ndarray:
    """Apply scipy.signal.upfirdn along both spatial axes and crop [start, start + length)."""
    for axis in (-1, -2):
        x = scipy.signal.upfirdn(taps, x, up=up, down=down, axis=axis)
        x = np.take(x, np.arange(start, start + length), axis=axis)
    return x


def test_fir_upsample_by_hand() -> None:
    # 1-D factor [1, 3, 3, 1] / 4 with zero boundary: x -> [3x0/4, (3x0 + x1)/4, (x0 + 3x1)/4, 3x1/4].
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    expected = torch.tensor(
        [
            [0.5625, 0.9375, 1.3125, 1.125],
            [1.125, 1.75, 2.25, 1.875],
            [1.875, 2.75, 3.25, 2.625],
            [1.6875, 2.4375, 2.8125, 2.25],
        ]
    )
    torch.testing.assert_close(upsample_2d(x, K)[0, 0], expected)


def test_fir_downsample_by_hand() -> None:
    # y[i] = (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2]) / 8 per axis, zero outside the image.
    # x[r, c] = 4r + c: columns give (28r + 5)/8 and (28r + 16)/8, then the same along rows.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    expected = torch.tensor([[175.0, 252.0], [483.0, 560.0]]) / 64
    torch.testing.assert_close(downsample_2d(x, K)[0, 0], expected)


@pytest.mark.parametrize("size", [5, 6])
def test_fir_against_scipy(size: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, size, size))
    xt = torch.from_numpy(x)
    taps = np.array([1.0, 3.0, 3.0, 1.0])
    up = _scipy_separable(x, taps / 4, up=2, down=1, start=1, length=2 * size)
    np.testing.assert_allclose(upsample_2d(xt, K.double()).numpy(), up, rtol=1e-12, atol=1e-12)
    if size % 2 == 0:
        down = _scipy_separable(x, taps / 8, up=1, down=2, start=1, length=size // 2)
        np.testing.assert_allclose(downsample_2d(xt, K.double()).numpy(), down, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("up", "down", "pad"), [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (3, 2, (0, 3)), (2, 2, (4, 0))]
)
def test_upfirdn2d_general_against_scipy(up: int, down: int, pad: tuple[int, int]) -> None:
    # An asymmetric 5-tap filter catches flips and off-by-one padding; scipy gives the full convolution
    # of the zero-inserted signal, of which upfirdn keeps samples n·down + K - 1 - pad_before.
    taps = np.array([1.0, -2.0, 0.5, 3.0, 0.25])
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 6))
    ours = upfirdn2d(torch.from_numpy(x), torch.from_numpy(np.outer(taps, taps)), up=up, down=down, pad=pad)
    expected, k, margin = x, len(taps), len(taps) + sum(pad) + up
    for axis in (-1, -2):
        n = expected.shape[axis]
        full = scipy.signal.upfirdn(taps, expected, up=up, axis=axis)
        widths = [(0, 0)] * full.ndim
        widths[axis] = (margin, margin)
        full = np.pad(full, widths)
        length = (n * up + pad[0] + pad[1] - k) // down + 1
        expected = np.take(full, margin + np.arange(length) * down + k - 1 - pad[0], axis=axis)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fir_upsample_of_constant_is_constant_inside() -> None:
    y = upsample_2d(torch.full((1, 2, 6, 6), 2.5), K)
    assert y.shape == (1, 2, 12, 12)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full((1, 2, 10, 10), 2.5))
    torch.testing.assert_close(y[..., 0, 0], torch.full((1, 2), 2.5 * 9 / 16))  # corner: (3/4)²
    torch.testing.assert_close(y[..., 0, 5], torch.full((1, 2), 2.5 * 3 / 4))  # edge
    z = downsample_2d(torch.full((1, 1, 8, 8), 2.0), K)
    torch.testing.assert_close(z[..., 1:-1, 1:-1], torch.full((1, 1, 2, 2), 2.0))
    torch.testing.assert_close(z[..., 0, 0], torch.tensor([[2.0 * 49 / 64]]))  # (7/8)²


def test_fir_down_after_up_is_near_identity_for_smooth_images() -> None:
    n = 32
    r = torch.arange(n, dtype=torch.float64)
    img = (torch.sin(2 * math.pi * r / n)[:, None] * torch.cos(2 * math.pi * 2 * r / n)[None, :]).reshape(1, 1, n, n)
    back = downsample_2d(upsample_2d(img, K.double()), K.double())
    inner = (..., slice(2, -2), slice(2, -2))
    assert (back - img)[inner].abs().max() < 0.05
    # Exact for affine images (the composite filter is symmetric with unit sum).
    affine = (0.3 * r[:, None] - 0.7 * r[None, :] + 1.0).reshape(1, 1, n, n)
    torch.testing.assert_close(downsample_2d(upsample_2d(affine, K.double()), K.double())[inner], affine[inner])


def test_fir_modules_without_conv_have_no_parameters() -> None:
    up, down = Upsample(4, fir=True), Downsample(4, fir=True)
    assert _n_params(up) == _n_params(down) == 0
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(up(x), upsample_2d(x, K))
    torch.testing.assert_close(down(x), downsample_2d(x, K))
    torch.testing.assert_close(Upsample(4)(x), x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    torch.testing.assert_close(Downsample(4)(x), F.avg_pool2d(x, 2))


def test_fir_conv_up_equals_upsample_then_conv_inside() -> None:
    conv = _randomize(FIRConv2d(3, 5, up=True)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fused = conv(x)
    separate = F.conv2d(upsample_2d(x, conv.fir), conv.weight, conv.bias, padding=1)
    assert fused.shape == (2, 5, 16, 16)
    torch.testing.assert_close(fused[..., 2:-2, 2:-2], separate[..., 2:-2, 2:-2])


def test_fir_conv_down_equals_conv_then_downsample_inside() -> None:
    conv = _randomize(FIRConv2d(3, 5, down=True)).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    fused = conv(x)
    separate = downsample_2d(F.conv2d(x, conv.weight, padding=1), conv.fir) + conv.bias.reshape(1, 5, 1, 1)
    assert fused.shape == (2, 5, 8, 8)
    torch.testing.assert_close(fused[..., 1:-1, 1:-1], separate[..., 1:-1, 1:-1])


# ------------------------------------------------------------------------------- reference parameter counts

# score_sde_pytorch (yang-song, HEAD), models/ncsnpp.py built from the four CIFAR-10 configs, counted with
# sum(p.numel() for p in model.parameters()). The reference stores the 128 Gaussian Fourier frequencies
# as a frozen nn.Parameter (counted there); we keep them in a buffer, so our count is theirs minus nf.
REFERENCE_PARAMS = {
    "NCSNPP_CIFAR10": 62_758_915,  # configs/ve/cifar10_ncsnpp_continuous.py (62,758,787 trainable)
    "DDPMPP_CIFAR10": 61_804_419,  # configs/vp/cifar10_ddpmpp_continuous.py
    "NCSNPP_DEEP_CIFAR10": 107_587_075,  # configs/ve/cifar10_ncsnpp_deep_continuous.py (107,586,947 trainable)
    "DDPMPP_DEEP_CIFAR10": 106_632_579,  # configs/vp/cifar10_ddpmpp_deep_continuous.py
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_counts(name: str) -> None:
    kw = getattr(ncsnpp, name)
    with torch.device("meta"):
        model = NCSNpp(**kw)
    ours = _n_params(model)
    ref = REFERENCE_PARAMS[name]
    assert abs(ours - ref) / ref < 0.01
    fourier = kw["nf"] if kw["embedding_type"] == "fourier" else 0
    assert ours == ref - fourier  # the layer structure matches exactly


def test_meta_init_then_load_state_dict_restores_everything() -> None:
    kw = _small(16, progressive="residual", progressive_input="input_skip")
    model = _randomize(NCSNpp(**kw)).eval()
    with torch.device("meta"):
        empty = NCSNpp(**kw)
    empty = empty.to_empty(device="cpu").eval()
    empty.load_state_dict(model.state_dict())
    x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.3, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(empty(x, sigma), model(x, sigma))


def test_presets_are_read_only() -> None:
    with pytest.raises(TypeError):
        ncsnpp.NCSNPP_CIFAR10["nf"] = 64  # type: ignore[index]


# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kw",
    [
        dict(resblock_type="resnet"),
        dict(progressive="skip"),
        dict(progressive_input="output_skip"),
        dict(progressive_combine="mean"),
        dict(embedding_type="learned"),
        dict(embedding_type="positional", scale_by_sigma=True),
        dict(image_size=10),
    ],
)
def test_invalid_arguments_raise(kw: dict) -> None:
    with pytest.raises(ValueError):
        NCSNpp(**_small(16, **kw))


def test_wrong_input_size_raises() -> None:
    model = NCSNpp(**_small(16))
    with pytest.raises(ValueError, match="16x16"):
        model(torch.rand(1, 3, 8, 8), torch.ones(1))


# --------------------------------------------------------------------------------- autocast / compile


def test_autocast_bf16_cpu() -> None:
    model = _randomize(NCSNpp(**_small(16, progressive="output_skip"))).eval()
    x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.5, 5.0])
    with torch.no_grad():
        ref = model(x, sigma)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, sigma)
    assert low.shape == x.shape
    assert torch.isfinite(low).all()
    assert ((low.float() - ref).norm() / ref.norm()) < 0.05


def test_autocast_bf16_backward() -> None:
    model = _randomize(NCSNpp(**_small(8)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.rand(2, 3, 8, 8), torch.tensor([0.5, 5.0])).float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    model = _randomize(NCSNpp(**_small(16, progressive="residual", progressive_input="input_skip"))).eval()
    compiled = torch.compile(model)
    x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.5, 5.0])
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, sigma), model(x, sigma), rtol=1e-4, atol=1e-4)
