"""EDM2's magnitude-preserving U-Net, its conditioning, loss and learning rate against NVlabs/edm2.

Golden numbers (tests/data/edm2_reference.json) come from EDM2's code (training/networks_edm2.py `Precond`,
training/training_loop.py `EDM2Loss` and `learning_rate_schedule`) on CPU in float32: parameter counts of
its presets built on the meta device, the state_dict layout of img64-XS, and the outputs of a tiny network
whose every state_dict entry i (keys sorted) is `torch.randn(shape, generator=Generator().manual_seed(1000 + i))`
on x = 1.3·randn([4, 2, 8, 8], seed 1), σ = (0.05, 0.8, 3, 40), labels (0, 2, 1, none).
"""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from scorelib.losses import edm2_loss
from scorelib.models import edm2
from scorelib.models.edm2 import (
    EDM2Network,
    MPConv,
    MPFourier,
    edm2_learning_rate,
    mp_cat,
    mp_normalize_,
    mp_silu,
    mp_sum,
)
from scorelib.precond import EDM2Precond

REF = json.loads((Path(__file__).parent / "data" / "edm2_reference.json").read_text())
TINY = REF["tiny"]


@pytest.mark.parametrize("name", sorted(REF["param_counts"]))
def test_parameter_counts_equal_edm2_presets(name):
    preset = getattr(edm2, "EDM2_" + name.upper().replace("-", "_"))
    with torch.device("meta"):
        net = EDM2Network(**preset)
    assert sum(p.numel() for p in net.parameters()) == REF["param_counts"][name]
    assert sum(b.numel() for b in net.buffers()) == REF["buffer_counts"][name]


def test_state_dict_layout_equals_edm2():
    with torch.device("meta"):
        net = EDM2Network(**edm2.EDM2_IMG64_XS)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == REF["img64_xs_state_dict"]
    assert list(net.state_dict()) == list(REF["img64_xs_state_dict"])  # the same order


def _tiny() -> EDM2Precond:
    kw = {k: v for k, v in TINY["kwargs"].items() if k != "use_fp16"}
    net = EDM2Network(**kw)
    sd = net.state_dict()
    assert sorted(sd) == TINY["keys"]
    net.load_state_dict({k: torch.randn(sd[k].shape, generator=torch.Generator().manual_seed(1000 + i))
                         for i, k in enumerate(TINY["keys"])})
    return EDM2Precond(net.eval())


def _inputs():
    x = torch.randn([4, 2, 8, 8], generator=torch.Generator().manual_seed(1)) * 1.3
    return x, torch.tensor(TINY["sigma"]), torch.tensor(TINY["y"])


def _close(got, want, rel=1e-5):
    want = torch.tensor(want, dtype=got.dtype).reshape(got.shape)
    torch.testing.assert_close(got, want, rtol=0, atol=rel * want.abs().max().item())


def test_outputs_equal_edm2_on_recorded_inputs():
    model = _tiny()
    x, sigma, y = _inputs()
    with torch.no_grad():
        denoised, logvar = model.denoise_and_logvar(x, sigma, y=y)  # label 3 = label_dim: no class
        _close(denoised, TINY["D"])
        _close(logvar, TINY["logvar"])
        _close(model.denoise(x, sigma), TINY["D_uncond"])  # y=None: EDM2's class_labels=None
        # the score is Tweedie's (D - x)/σ² (computed from F without the cancellation; compared in float64)
        m64, x64, s64 = model.double(), x.double(), sigma.double()
        d64 = m64.denoise(x64, s64, y=y)
        torch.testing.assert_close(m64(x64, s64, y=y), (d64 - x64) / s64[:, None, None, None] ** 2)
        model.float()
        # float class vectors as EDM2 takes them: the same
        onehot = torch.nn.functional.one_hot(y, 4)[:, :3].float()
        torch.testing.assert_close(model.denoise(x, sigma, y=onehot), denoised)


def test_training_forward_forces_weight_normalisation_as_edm2():
    model = _tiny().train()
    x, sigma, y = _inputs()
    with torch.no_grad():
        _close(model.denoise(x, sigma, y=y), TINY["D_train"])
    for k, v in model.net.state_dict().items():
        if k.endswith("weight"):
            assert v.double().norm().item() == pytest.approx(TINY["post_train_norms"][k], rel=1e-6), k


def test_edm2_loss_equals_edm2_draw_for_draw():
    model = _tiny()
    _, _, y = _inputs()
    x0 = torch.randn([4, 2, 8, 8], generator=torch.Generator().manual_seed(2)) * 0.5
    with torch.no_grad():
        # EDM2: torch.manual_seed(7); EDM2Loss(P_mean=-0.8, P_std=1.6)(net, x0, labels).sum(dim=(1, 2, 3))
        loss = edm2_loss(model, x0, P_mean=-0.8, P_std=1.6, generator=torch.Generator().manual_seed(7), y=y)
    _close(loss, TINY["loss"])


def test_edm2_loss_formula():
    class Stub(torch.nn.Module):  # F = 0 and u = c_noise: D = c_skip x, written out below
        logvar = staticmethod(lambda c_noise: c_noise)

        def forward(self, x, c_noise):
            return torch.zeros_like(x)

    model = EDM2Precond(Stub())
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    got = edm2_loss(model, x0, P_mean=0.1, P_std=0.7, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sigma = (torch.randn(3, generator=g, dtype=torch.float64) * 0.7 + 0.1).exp()
    s = sigma[:, None, None, None]
    noisy = x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    denoised = 0.25 / (s**2 + 0.25) * noisy
    u = sigma.log()[:, None, None, None] / 4
    want = ((s**2 + 0.25) / (s * 0.5) ** 2 / u.exp() * (denoised - x0) ** 2 + u).sum(dim=(1, 2, 3))
    torch.testing.assert_close(got, want)


def test_learning_rate_equals_edm2_schedule():
    # EDM2 img64-XS: ref_lr 0.012, ref_batches 35k, batch 2048, ramp-up 10 Mimg
    for images, lr in REF["lr"]:
        assert edm2_learning_rate(images, 2048, ref_lr=0.012, ref_batches=35e3) == pytest.approx(lr, rel=1e-12)
    # the paper's α_ref/√max(t/t_ref, 1): 4× the reference time halves the rate
    t_ref = 35e3 * 2048
    assert edm2_learning_rate(4 * t_ref, 2048, 0.012, 35e3, rampup_images=0) == pytest.approx(0.006)
    assert edm2_learning_rate(0.5 * t_ref, 2048, 0.012, 35e3, rampup_images=0) == 0.012


def test_magnitude_preserving_primitives():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 400_000, generator=g, dtype=torch.float64)

    def rms(v):
        return v.square().mean().sqrt().item()

    assert rms(mp_silu(a)) == pytest.approx(1.0, abs=0.01)  # eq. 81
    assert rms(mp_sum(a, b, 0.3)) == pytest.approx(1.0, abs=0.01)  # eq. 88
    cat = mp_cat(a.reshape(1000, 400)[:, :100], b.reshape(1000, 400)[:, :300], t=0.3)  # eq. 103
    assert rms(cat) == pytest.approx(1.0, abs=0.01)
    assert rms(cat[:, :100]) / rms(cat[:, 100:]) == pytest.approx(0.7 / 0.3 * math.sqrt(300 / 100), rel=0.02)
    assert rms(MPFourier(4000)(torch.randn(100, generator=g))) == pytest.approx(1.0, abs=0.02)  # eq. 75
    conv = MPConv(64, 32, (3, 3)).double()
    y = conv(torch.randn(256, 64, 8, 8, generator=g, dtype=torch.float64))
    assert rms(y[:, :, 1:-1, 1:-1]) == pytest.approx(1.0, abs=0.02)  # eq. 47 (away from the zero padding)


def _train_digits(steps: int) -> tuple[EDM2Precond, list[Tensor]]:
    """A few EDM2 training steps of the digits-scale network on random data; the RMS of every stored
    weight vector as each training forward saw it."""
    torch.manual_seed(0)
    net = EDM2Network(**edm2.EDM2_DIGITS)
    model = EDM2Precond(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.02, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, 1, 8, 8, generator=g) * 0.5
    y = torch.randint(11, (16,), generator=g)  # 10 = no class
    layers = [m for m in net.modules() if isinstance(m, MPConv)]
    seen = []
    net.train()
    for step in range(steps):
        loss = edm2_loss(model, x0, P_mean=-0.8, P_std=1.6, generator=g, y=y).mean()
        assert torch.isfinite(loss)
        rms = torch.cat([m.weight.detach().flatten(1).square().mean(1).sqrt() for m in layers])
        seen.append(rms)
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = edm2_learning_rate(4096 * (step + 1), 16, ref_lr=0.02, ref_batches=100, rampup_images=0)
        opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    return model, seen


def test_digits_scale_trains_and_forced_normalisation_keeps_unit_weights(monkeypatch):
    model, seen = _train_digits(4)
    # each stored weight vector had unit RMS (norm √fan_in) when a training forward used it (eq. 66)
    assert max((rms - 1).abs().max().item() for rms in seen) < 5e-4
    with torch.no_grad():
        x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 9, 10])
        out = model.eval()(x, torch.full((4,), 0.5), y=y)
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()
    # without forcing, the optimiser's steps move the norms away from √fan_in
    monkeypatch.setattr(MPConv, "force_normalize_", lambda self: None)
    _, drifting = _train_digits(4)
    assert (drifting[-1] - drifting[0]).abs().max() > 1e-3
    net = EDM2Network(**edm2.EDM2_DIGITS)
    monkeypatch.undo()
    mp_normalize_(net)
    assert max((m.weight.flatten(1).square().mean(1).sqrt() - 1).abs().max().item()
               for m in net.modules() if isinstance(m, MPConv)) < 5e-4
