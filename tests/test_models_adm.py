"""Tests for the improved-DDPM / ADM U-Net and the ADM noisy classifier (scorelib.models.adm)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scorelib.models import adm
from scorelib.models.adm import ADMClassifier, ADMUNet


def _small(**kw) -> dict:
    """A tiny ADM-style config exercising every block type (AdaGN, BigGAN up/down, attention)."""
    base = dict(
        image_size=16,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_head_channels=32,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    )
    base.update(kw)
    return base


def _randomize(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Replace the (partly zero) initialisation so every parameter influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_unet_output_shape(size: int, learn_sigma: bool) -> None:
    model = ADMUNet(
        image_size=size,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(size // 2, size // 4),
        num_heads=2,
        learn_sigma=learn_sigma,
    ).eval()
    x = torch.randn(2, 3, size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == (2, 6 if learn_sigma else 3, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [8, 16, 32])
def test_adm_style_output_shape(size: int) -> None:
    model = ADMUNet(**_small(image_size=size, attention_resolutions=(size // 2,), num_classes=4)).eval()
    out = model(torch.randn(3, 3, size, size), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3]))
    assert out.shape == (3, 6, size, size)


def test_non_square_and_other_size_than_built() -> None:
    model = ADMUNet(**_small()).eval()  # built for 16 px, fully convolutional
    assert model(torch.randn(1, 3, 8, 24), torch.tensor([5])).shape == (1, 6, 8, 24)


def test_bad_inputs_raise() -> None:
    model = ADMUNet(**_small()).eval()
    with pytest.raises(ValueError, match="multiples"):
        model(torch.randn(1, 3, 15, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="attention_resolutions"):
        ADMUNet(**_small(attention_resolutions=(4,)))
    cond = ADMUNet(**_small(num_classes=3)).eval()
    with pytest.raises(ValueError, match="pass y"):
        cond(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="null_label"):
        ADMUNet(**_small(num_classes=3, class_dropout=0.1))


# --------------------------------------------------------------------------------------- gradients


def test_gradients_reach_every_parameter() -> None:
    model = _randomize(ADMUNet(**_small(num_classes=3, null_label=True))).train()
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([10, 500]), torch.tensor([0, 2]))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradients_at_default_init_reach_output_layer() -> None:
    # Zero-initialised output convs: at init only the last conv gets gradient; it must not be None.
    model = ADMUNet(**_small()).train()
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))
    assert out.abs().max() == 0  # the output starts at zero (zero-initialised last conv)
    (out - 1).square().mean().backward()
    assert model.out[2].weight.grad is not None and model.out[2].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_matches() -> None:
    torch.manual_seed(0)
    a = _randomize(ADMUNet(**_small())).train()
    b = _randomize(ADMUNet(**_small(use_checkpoint=True))).train()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    a(x, t).sum().backward()
    b(x, t).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


# ---------------------------------------------------------------------------------- conditioning


def test_t_changes_output() -> None:
    model = _randomize(ADMUNet(**_small())).eval()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(model(x, torch.tensor([1, 1])), model(x, torch.tensor([900, 900])))


def test_float_t_equals_int_t_at_integers() -> None:
    model = _randomize(ADMUNet(**_small())).eval()
    x = torch.randn(3, 3, 16, 16)
    ti = torch.tensor([0, 17, 999])
    torch.testing.assert_close(model(x, ti), model(x, ti.float()), rtol=0, atol=0)
    torch.testing.assert_close(model(x, ti), model(x, ti.double()), rtol=0, atol=0)


def test_fractional_t_interpolates() -> None:
    model = _randomize(ADMUNet(**_small())).eval()
    x = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    out = model(x, torch.tensor([100.0, 100.5, 101.0]))
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[1], out[0]) and not torch.allclose(out[1], out[2])
    # the network is smooth in t: the midpoint lies close to the mean of its neighbours
    mid = 0.5 * (out[0] + out[2])
    assert (out[1] - mid).abs().max() < 0.5 * (out[2] - out[0]).abs().max() + 1e-6


def test_scalar_t_broadcasts() -> None:
    model = _randomize(ADMUNet(**_small())).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x, 7), model(x, torch.tensor([7, 7])))


def test_y_changes_output() -> None:
    model = _randomize(ADMUNet(**_small(num_classes=5))).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 10])
    assert not torch.allclose(model(x, t, torch.tensor([0, 1])), model(x, t, torch.tensor([3, 4])))


def test_null_label() -> None:
    model = _randomize(ADMUNet(**_small(num_classes=5, null_label=True))).eval()
    assert model.label_emb is not None and model.label_emb.num_embeddings == 6
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 10])
    uncond = model(x, t)  # y=None -> the null label (index num_classes)
    torch.testing.assert_close(uncond, model(x, t, torch.tensor([5, 5])))
    assert not torch.allclose(uncond, model(x, t, torch.tensor([0, 0])))


def test_class_dropout_only_in_training() -> None:
    model = _randomize(ADMUNet(**_small(num_classes=5, null_label=True, class_dropout=1.0, dropout=0.0)))
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 10]), torch.tensor([1, 2])
    model.eval()
    cond, uncond = model(x, t, y), model(x, t)
    model.train()  # every label dropped to the null label
    torch.testing.assert_close(model(x, t, y), uncond)
    assert not torch.allclose(cond, uncond)


# ---------------------------------------------------------------------------------------- attention


def _attention_oracle(block: adm._AttentionBlock, x: torch.Tensor, new_order: bool) -> torch.Tensor:
    """Plain-einsum multi-head attention, reading the qkv layout as the reference code does."""
    b, c, hh, ww = x.shape
    h = x.reshape(b, c, -1)
    qkv = block.qkv(block.norm(h))
    n = block.num_heads
    d = c // n
    if new_order:  # [q | k | v], then heads
        q, k, v = (z.reshape(b * n, d, -1) for z in qkv.chunk(3, dim=1))
    else:  # per head [q_h, k_h, v_h]
        q, k, v = qkv.reshape(b * n, 3 * d, -1).split(d, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
    return x + block.proj_out(a).reshape(b, c, hh, ww)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_matches_einsum_oracle(new_order: bool) -> None:
    block = _randomize(adm._AttentionBlock(64, num_head_channels=32, new_order=new_order), std=0.2)
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(block(x), _attention_oracle(block, x, new_order), rtol=1e-5, atol=1e-5)


def test_num_heads_options() -> None:
    assert adm._AttentionBlock(128, num_heads=4).num_heads == 4
    assert adm._AttentionBlock(128, num_heads=4, num_head_channels=64).num_heads == 2
    model = ADMUNet(**_small(num_head_channels=-1, num_heads=2, num_heads_upsample=1))
    assert model.input_blocks[-1][-1].num_heads == 2  # the attention after the last down block
    assert model.output_blocks[0][-1].num_heads == 1


def test_timestep_embedding() -> None:
    t = torch.tensor([0.0, 1.0, 2.5])
    emb = adm._timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[2], torch.cat([torch.cos(2.5 * freqs), torch.sin(2.5 * freqs)]))
    assert adm._timestep_embedding(t, 7).shape == (3, 7)


# ---------------------------------------------------------------------- reference parameter layout


def test_state_dict_uses_reference_names() -> None:
    # Names follow improved-diffusion / guided-diffusion so released checkpoints load strictly.
    keys = ADMUNet(**_small(num_classes=3)).state_dict().keys()
    for k in [
        "time_embed.0.weight",
        "time_embed.2.weight",
        "label_emb.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.2.0.in_layers.0.weight",  # the residual downsampling block
        "input_blocks.3.0.skip_connection.weight",
        "input_blocks.3.1.qkv.weight",
        "input_blocks.3.1.proj_out.weight",
        "middle_block.1.norm.weight",
        "output_blocks.0.0.skip_connection.weight",
        "out.0.weight",
        "out.2.weight",
    ]:
        assert k in keys, k
    plain = ADMUNet(**_small(resblock_updown=False)).state_dict().keys()
    assert "input_blocks.2.0.op.weight" in plain and "output_blocks.1.2.conv.weight" in plain
    cls = ADMClassifier(image_size=16, model_channels=32, num_classes=3, channel_mult=(1, 2),
                        attention_resolutions=(8,), num_head_channels=32).state_dict().keys()  # fmt: skip
    assert {"out.2.positional_embedding", "out.2.qkv_proj.weight", "out.2.c_proj.weight"} <= set(cls)


# Parameter counts measured with the reference code (improved-diffusion / guided-diffusion
# `create_model` / `create_classifier`, or their UNetModel for the CIFAR ADM variant).
REFERENCE_COUNTS = {
    "IDDPM_CIFAR10": 52_546_438,
    "IDDPM_IMAGENET64": 121_063_942,
    "ADM_IMAGENET64": 295_904_454,
    "ADM_IMAGENET128": 421_529_606,
    "ADM_IMAGENET256": 553_838_086,
    "ADM_IMAGENET256_UNCOND": 552_814_086,
    "ADM_IMAGENET512": 558_997_638,
    "ADM_CIFAR10": 57_099_782 + 512,  # reference with 10 classes, plus our null-label row
}
REFERENCE_CLASSIFIER_COUNTS = {64: 41_287_016, 128: 42_568_040, 256: 54_096_360}


def test_iddpm_cifar10_is_52_55m() -> None:
    with torch.device("meta"):
        n = _n_params(ADMUNet(**adm.IDDPM_CIFAR10))
    assert abs(n - 52.55e6) / 52.55e6 < 0.01


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_match_reference(name: str) -> None:
    with torch.device("meta"):
        model = ADMUNet(**getattr(adm, name))
    assert _n_params(model) == REFERENCE_COUNTS[name]


@pytest.mark.parametrize("size", sorted(REFERENCE_CLASSIFIER_COUNTS))
def test_classifier_parameter_counts_match_reference(size: int) -> None:
    with torch.device("meta"):
        model = ADMClassifier(**getattr(adm, f"ADM_CLASSIFIER_{size}"))
    assert _n_params(model) == REFERENCE_CLASSIFIER_COUNTS[size]


def test_presets_are_read_only() -> None:
    with pytest.raises(TypeError):
        adm.IDDPM_CIFAR10["dropout"] = 0.0  # type: ignore[index]


# -------------------------------------------------------------------------------------- classifier


def _small_classifier(size: int, pool: str = "attention") -> ADMClassifier:
    return ADMClassifier(
        image_size=size,
        model_channels=32,
        num_classes=7,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(size // 2, size // 4),
        num_head_channels=32,
        pool=pool,
    )


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("pool", ["attention", "adaptive"])
def test_classifier_logits_shape(size: int, pool: str) -> None:
    clf = _small_classifier(size, pool).eval()
    logits = clf(torch.randn(4, 3, size, size), torch.tensor([0, 10, 500.5, 999]))
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()


def test_classifier_input_gradient_for_guidance() -> None:
    # Classifier guidance needs ∇ₓ log p_φ(y | x_t, t); it must exist at the default init.
    clf = _small_classifier(16).eval()
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    y = torch.tensor([0, 3, 6])
    log_p = torch.log_softmax(clf(x, torch.tensor([5, 50, 500])), dim=-1)
    (grad,) = torch.autograd.grad(log_p[torch.arange(3), y].sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_classifier_t_changes_logits_and_attention_pool_size_is_fixed() -> None:
    clf = _randomize(_small_classifier(16)).eval()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(clf(x, torch.tensor([1, 1])), clf(x, torch.tensor([800, 800])))
    with pytest.raises(ValueError, match="attention pooling"):
        clf(torch.randn(1, 3, 32, 32), torch.tensor([1]))


def test_classifier_gradients_reach_every_parameter() -> None:
    clf = _randomize(_small_classifier(16)).train()
    clf(torch.randn(2, 3, 16, 16), torch.tensor([3, 300])).logsumexp(-1).sum().backward()
    for name, p in clf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------ autocast / compile


def test_bf16_autocast_cpu() -> None:
    model = _randomize(ADMUNet(**_small(num_classes=3)), std=0.05).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 2])
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    clf = _small_classifier(16).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = clf(torch.randn(2, 3, 16, 16), t)
    assert torch.isfinite(logits.float()).all()


@pytest.mark.slow
def test_torch_compile() -> None:
    model = _randomize(ADMUNet(**_small(num_classes=3, null_label=True)), std=0.05).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.5]), torch.tensor([0, 2])
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), rtol=1e-4, atol=1e-4)
