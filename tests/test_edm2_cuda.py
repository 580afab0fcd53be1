"""EDM2 network, post-hoc EMA and guidance on a CUDA device (skipped without one): the recorded EDM2 outputs
on the GPU, the float16 path EDM2 samples with, and no host synchronisation in the guidance transformers
or the EMA update (torch.cuda.set_sync_debug_mode("error") turns any device-to-host wait into an error)."""

import contextlib

import pytest
import torch
from test_models_edm2 import TINY, _close, _inputs, _tiny

from scorelib import AutoGuidance, ClassifierFreeGuidance, PowerEMA, guidance_interval
from scorelib.losses import edm2_loss
from scorelib.models import edm2
from scorelib.models.edm2 import EDM2Network, MPConv
from scorelib.precond import EDM2Precond

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEV = torch.device("cuda")


@contextlib.contextmanager
def no_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_recorded_outputs_on_the_gpu_and_in_float16():
    model = _tiny().to(DEV)
    x, sigma, y = (t.to(DEV) for t in _inputs())
    with torch.no_grad():
        denoised, logvar = model.denoise_and_logvar(x, sigma, y=y)
        _close(denoised.cpu(), TINY["D"], rel=1e-4)
        _close(logvar.cpu(), TINY["logvar"], rel=1e-4)
        model.use_fp16 = True  # EDM2's sampling precision: the network in float16, D in x's dtype
        half = model.denoise(x, sigma, y=y)
    assert half.dtype == torch.float32
    assert (half - denoised).abs().max() < 2e-2 * denoised.abs().max()


def test_training_step_on_the_gpu_keeps_unit_weights():
    torch.manual_seed(0)
    net = EDM2Network(**edm2.EDM2_IMG64_XS).to(DEV).train()
    model = EDM2Precond(net, use_fp16=True)
    ema = PowerEMA(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.9, 0.99))
    g = torch.Generator(DEV).manual_seed(0)
    x0 = torch.randn(8, 3, 64, 64, device=DEV, generator=g) * 0.5
    y = torch.randint(1000, (8,), device=DEV, generator=g)
    for step in range(1, 4):
        loss = edm2_loss(model, x0, P_mean=-0.8, P_std=1.6, generator=g, y=y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with no_sync():
            ema.update(step)
    assert torch.isfinite(loss)
    net(x0[:1], torch.zeros(1, device=DEV), y=y[:1])  # a training forward normalises the stored weights
    rms = torch.cat([m.weight.detach().flatten(1).square().mean(1).sqrt() for m in net.modules()
                     if isinstance(m, MPConv)])
    assert (rms - 1).abs().max() < 5e-4


class Linear(torch.nn.Module):
    """The exact score of N(m, 1): -(x - m)/(1 + σ²), made of device ops only."""

    def __init__(self, m: float):
        super().__init__()
        self.m = m

    def forward(self, x, sigma, y=None):
        shift = self.m if y is None else self.m + y[:, None].to(x.dtype)
        return -(x - shift) / (1 + sigma[:, None] ** 2)


def test_guidance_makes_no_host_sync():
    x = torch.randn(6, 4, device=DEV)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 50.0], device=DEV)
    y = torch.tensor([0, 1, 2, 0, 1, 3], device=DEV)
    auto = AutoGuidance(Linear(1.0), Linear(0.0), 2.0, y=y)
    cfg = ClassifierFreeGuidance(Linear(1.0), y, 1.5, null_label=3)
    with no_sync():
        outs = [auto(x, sigma), guidance_interval(auto, None, 0.3, 3.0)(x, sigma),
                guidance_interval(cfg, None, 0.3, 3.0)(x, sigma),
                guidance_interval(auto, Linear(1.0), 0.3, 3.0)(x, sigma, y=y)]
    inside = ((sigma > 0.3) & (sigma <= 3.0))[:, None]
    main, guide = Linear(1.0)(x, sigma, y), Linear(0.0)(x, sigma, y)
    want = torch.where(inside, 2 * main - guide, main)
    torch.testing.assert_close(outs[1], want)
    torch.testing.assert_close(outs[3], want)
    assert all(torch.isfinite(o).all() for o in outs)
