"""NCSN and NCSNv2 score networks: shapes, gradients, conditioning, parameter counts, autocast."""

from __future__ import annotations

import pytest
import torch

from scorelib.models.ncsn import NCSN
from scorelib.models.ncsn_layers import (
    InstanceNorm2dPlus,
    convert_reference_state_dict,
    make_norm,
)
from scorelib.models.ncsnv2 import NCSNv2

# Parameter counts measured by instantiating the reference code (torch 2.13, CPU):
#   ermongroup/ncsn   CondRefineNetDilated, CIFAR-10 (3 ch, 32 px, ngf 128, 10 levels)  30,117,635
#   ermongroup/ncsn   CondRefineNetDilated, MNIST (1 ch, 28 px, ngf 64, 10 levels)        7,638,657
#   ermongroup/ncsnv2 NCSNv2, CIFAR-10 (3 ch, 32 px, ngf 128, 232 levels)                29,694,083
#   ermongroup/ncsnv2 NCSNv2Deeper (3 ch, ngf 128)                                       83,445,379
#   ermongroup/ncsnv2 NCSNv2Deepest (3 ch, ngf 128)                                      94,132,611
REF_NCSN_CIFAR10 = 30_117_635
REF_NCSN_MNIST = 7_638_657
REF_NCSNV2_CIFAR10 = 29_694_083
REF_NCSNV2_DEEPER = 83_445_379
REF_NCSNV2_DEEPEST = 94_132_611


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_ncsn(size: int, channels: int = 1) -> NCSN:
    return NCSN(channels=channels, image_size=size, ngf=8, num_classes=5)


def small_ncsnv2(size: int, channels: int = 1, variant: str = "base") -> NCSNv2:
    return NCSNv2(channels=channels, image_size=size, ngf=8, variant=variant)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_ncsn_shape_and_gradients(size: int) -> None:
    torch.manual_seed(0)
    model = small_ncsn(size, channels=3)
    x = torch.rand(3, 3, size, size)
    labels = torch.tensor([0, 2, 4])
    out = model(x, labels)
    assert out.shape == x.shape
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    # Embedding rows of unused levels get no gradient; every used row and every conv does.
    for name, p in model.named_parameters():
        if name.endswith("embed.weight"):
            assert p.grad[labels].abs().sum() > 0, name
        else:
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("variant", ["base", "deeper"])
def test_ncsnv2_shape_and_gradients(size: int, variant: str) -> None:
    torch.manual_seed(0)
    model = small_ncsnv2(size, variant=variant)
    x = torch.rand(3, 1, size, size)
    out = model(x, torch.tensor([1.0, 0.3, 0.05]))
    assert out.shape == x.shape
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("size", [7, 28])
def test_odd_and_mnist_sizes(size: int) -> None:
    x = torch.rand(2, 1, size, size)
    assert small_ncsn(size)(x, torch.tensor([0, 1])).shape == x.shape
    assert small_ncsnv2(size, variant="deepest")(x, torch.tensor([1.0, 0.1])).shape == x.shape


def test_ncsn_label_changes_output() -> None:
    torch.manual_seed(0)
    model = small_ncsn(8)
    x = torch.rand(2, 1, 8, 8)
    a = model(x, torch.tensor([0, 0]))
    b = model(x, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    # Each example only sees its own label.
    c = model(x, torch.tensor([0, 3]))
    torch.testing.assert_close(c[0], a[0])
    torch.testing.assert_close(c[1], b[1])


def test_ncsnv2_output_scales_as_one_over_sigma() -> None:
    torch.manual_seed(0)
    model = small_ncsnv2(8)
    x = torch.rand(2, 1, 8, 8)
    a = model(x, torch.tensor([1.0, 1.0]))
    b = model(x, torch.tensor([0.25, 0.5]))
    assert not torch.allclose(a, b)
    # Technique 3 of NCSNv2: s(x, σ) = f(x) / σ, at any σ.
    torch.testing.assert_close(b, a * torch.tensor([4.0, 2.0]).reshape(2, 1, 1, 1))
    torch.testing.assert_close(model(x, 0.25), a * 4.0)


def test_centered_input_is_the_2x_minus_1_map() -> None:
    torch.manual_seed(0)
    raw = small_ncsnv2(8)
    centred = small_ncsnv2(8)
    centred.load_state_dict(raw.state_dict())
    centred.centered_input = True
    x = torch.rand(2, 1, 8, 8)
    sigma = torch.tensor([0.5, 0.1])
    torch.testing.assert_close(raw(x, sigma), centred(2 * x - 1, sigma))


def test_parameter_counts_match_reference() -> None:
    with torch.device("meta"):
        ncsn_cifar = NCSN(channels=3, image_size=32, ngf=128, num_classes=10)
        ncsn_mnist = NCSN(channels=1, image_size=28, ngf=64, num_classes=10)
        v2_cifar = NCSNv2(channels=3, image_size=32, ngf=128)
        v2_deeper = NCSNv2(channels=3, image_size=128, ngf=128, variant="deeper")
        v2_deepest = NCSNv2(channels=3, image_size=256, ngf=128, variant="deepest")
    # Required to be within 1%; the layer structure follows the reference, so they are exact.
    assert n_params(ncsn_cifar) == REF_NCSN_CIFAR10
    assert n_params(ncsn_mnist) == REF_NCSN_MNIST
    assert n_params(v2_cifar) == REF_NCSNV2_CIFAR10
    assert n_params(v2_deeper) == REF_NCSNV2_DEEPER
    assert n_params(v2_deepest) == REF_NCSNV2_DEEPEST
    assert abs(n_params(ncsn_cifar) / 30.12e6 - 1) < 0.01
    assert abs(n_params(v2_cifar) / 29.69e6 - 1) < 0.01


@pytest.mark.parametrize("model_kind", ["ncsn", "ncsnv2"])
def test_autocast_bf16_forward_is_finite(model_kind: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    if model_kind == "ncsn":
        model, cond = small_ncsn(16, channels=3), torch.tensor([1, 4])
    else:
        model, cond = small_ncsnv2(16, channels=3), torch.tensor([0.5, 0.02])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, cond)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    ref = model(x, cond)
    assert torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref) < 0.1


@pytest.mark.parametrize("norm", ["instancenorm++", "instancenorm", "variancenorm", "none"])
@pytest.mark.parametrize("num_classes", [None, 4])
def test_norms_match_definition(norm: str, num_classes: int | None) -> None:
    torch.manual_seed(0)
    layer = make_norm(norm, 6, num_classes)
    for p in layer.parameters():
        p.data.normal_()
    x = 3 * torch.randn(2, 6, 5, 5) + 1
    y = None if num_classes is None else torch.tensor([1, 3])
    # Direct, unfolded statement of each normalisation (the layers fold it into one affine map).
    if num_classes is None:
        params = {k: v.reshape(1, -1, 1, 1) for k, v in layer.named_parameters()}
    else:
        rows = layer.embed(y)
        k = rows.shape[1] // 6
        names = {3: ["gamma", "alpha", "beta"], 2: ["gamma", "beta"], 1: ["alpha"]}[k]
        params = {n: r.reshape(2, 6, 1, 1) for n, r in zip(names, rows.chunk(k, 1), strict=True)}
    mu = x.mean((2, 3), keepdim=True)
    inorm = (x - mu) / torch.sqrt(x.var((2, 3), keepdim=True, unbiased=False) + 1e-5)
    if norm == "instancenorm++":
        m = mu.flatten(1)
        m = ((m - m.mean(1, keepdim=True)) / torch.sqrt(m.var(1, keepdim=True) + 1e-5)).reshape(2, 6, 1, 1)
        want = params["gamma"] * (inorm + m * params["alpha"]) + params["beta"]
    elif norm == "instancenorm":
        want = inorm if num_classes is None else params["gamma"] * inorm + params["beta"]
    elif norm == "variancenorm":
        want = params["alpha"] * x / torch.sqrt(x.var((2, 3), keepdim=True) + 1e-5)
    else:
        want = x if num_classes is None else params["gamma"] * x + params["beta"]
    torch.testing.assert_close(layer(x, y), want, rtol=1e-5, atol=1e-5)


def test_instance_norm_plus_initialisation() -> None:
    torch.manual_seed(0)
    cond = InstanceNorm2dPlus(64, num_classes=10)
    scale_alpha, beta = cond.embed.weight[:, :128], cond.embed.weight[:, 128:]
    assert abs(scale_alpha.mean().item() - 1) < 0.01 and abs(scale_alpha.std().item() - 0.02) < 0.005
    assert (beta == 0).all()
    with pytest.raises(ValueError, match="conditional"):
        cond(torch.randn(1, 64, 4, 4))


def test_reference_state_dict_names_map_onto_ours() -> None:
    with torch.device("meta"):
        ours = dict(NCSNv2(ngf=8, variant="deepest").state_dict().items())
        ncsn = dict(NCSN(ngf=8).state_dict().items())
    # Names as the reference modules write them (setattr-named RCU layers, res31/refine31 stages).
    reference = {
        "module.sigmas": None,
        "module.res31.0.conv2.conv.weight": "stages.3.0.conv2.conv.weight",
        "module.res5.1.normalize1.alpha": "stages.5.1.normalize1.alpha",
        "module.refine31.adapt_convs.1.2_2_conv.weight": "refines.2.adapt_convs.1.convs.1.1.weight",
        "module.refine5.output_convs.3_1_conv.weight": "refines.5.output_convs.convs.2.0.weight",
        "module.refine3.msf.convs.0.bias": "refines.3.msf.convs.0.bias",
        "module.refine1.crp.convs.1.weight": "refines.0.crp.convs.1.weight",
        "module.normalizer.gamma": "normalizer.gamma",
    }
    converted = convert_reference_state_dict({k: torch.zeros(1) for k in reference}, "deepest")
    assert sorted(converted) == sorted(v for v in reference.values() if v is not None)
    assert set(converted) <= set(ours)
    ncsn_ref = {
        "res4.0.shortcut.weight": "stages.3.0.shortcut.weight",
        "refine4.adapt_convs.0.1_2_norm.embed.weight": "refines.3.adapt_convs.0.norms.0.1.embed.weight",
        "refine2.crp.norms.0.embed.weight": "refines.1.crp.norms.0.embed.weight",
    }
    converted = convert_reference_state_dict({k: torch.zeros(1) for k in ncsn_ref})
    assert sorted(converted) == sorted(ncsn_ref.values())
    assert set(converted) <= set(ncsn)


def test_bad_names_raise() -> None:
    with pytest.raises(ValueError, match="variant"):
        NCSNv2(ngf=8, variant="huge")
    with pytest.raises(ValueError, match="normalisation"):
        NCSN(ngf=8, norm="batchnorm")
    with pytest.raises(ValueError, match="activation"):
        NCSNv2(ngf=8, activation="tanh")


@pytest.mark.slow
def test_torch_compile_ncsnv2_inductor() -> None:
    # fullgraph=True: the whole network traces without graph breaks. Minutes on 2 CPU cores.
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    model = small_ncsnv2(8)
    sigma = torch.tensor([0.5, 0.05])
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x, sigma), model(x, sigma), rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_torch_compile_ncsn_traces_fwd_and_bwd() -> None:
    # aot_eager checks tracing and the backward graph without inductor's C++ build.
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    model = small_ncsn(8)
    labels = torch.tensor([0, 3])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x, labels)
    torch.testing.assert_close(out, model(x, labels), rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
