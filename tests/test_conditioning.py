"""One network, one conditioning (docs/design.md §4a): for every shipped config and every published preset,
the network is only ever called through its σ-space wrapper, with the inputs that wrapper gives (x, σ) —
in training (the loss), in sampling (the configured sampler), in the probability-flow likelihood and, for
DDPM models, in the discrete VLB. A stub network records what it receives; each record must equal what a
freshly built wrapper of the same config makes of the (x, σ) the path passed it. A path that calls the raw
network (improved-diffusion's t·1000/T forgotten in training, say) or builds its own conditioning fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from scorelib.builder import experiment
from scorelib.builder.configs import run_config_file, with_overrides
from scorelib.likelihood import ddpm_vlb, log_likelihood
from scorelib.precond import Precond
from scorelib.presets import OPENAI_PRESETS, openai_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "default", "openai"))


class Stub(nn.Module):
    """A network that records its inputs and returns a smooth function of them (C or 2C channels)."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels, self.calls = out_channels, []
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, x_in, label, **kw):
        self.calls.append((x_in.detach().clone(), label.detach().clone(),
                           {k: v.detach().clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}))
        lab = label.to(x_in.dtype).reshape(-1, *([1] * (x_in.ndim - 1)))
        out = torch.tanh(self.scale * x_in + 1e-3 * lab)
        return torch.cat([out] * (self.out_channels // x_in.shape[1]), dim=1)

    def logvar(self, label):  # EDM2's uncertainty head
        return 0 * label


class Recorder:
    """Records the (x, σ, cond) every wrapper's `inputs` is asked for (the path's own calls)."""

    def __init__(self, monkeypatch):
        self.asked, self.paused, self.depth = [], False, 0
        for cls in {c for c in _subclasses(Precond)} | {Precond}:
            if "inputs" in cls.__dict__:
                monkeypatch.setattr(cls, "inputs", self._wrap(cls.__dict__["inputs"]))

    def _wrap(self, inputs):
        def recorded(wrapper, x, sigma, **cond):
            if not self.paused and self.depth == 0:  # a subclass's inputs calling its parent's: one call
                self.asked.append((x.detach().clone(), sigma.detach().clone(), dict(cond)))
            self.depth += 1
            try:
                return inputs(wrapper, x, sigma, **cond)
            finally:
                self.depth -= 1

        return recorded


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _out_channels(exp) -> int:
    c = exp.data.channels
    return 2 * c if exp.f.model.learn_sigma or exp.f.model.precond == "iddpm" else c


def _check_path(exp, stub, recorder, reference):
    """Every stub call is the reference wrapper's inputs of the (x, σ) its path asked for, in order."""
    assert stub.calls, "the path never called the network"
    assert len(stub.calls) == len(recorder.asked), (len(stub.calls), len(recorder.asked))
    recorder.paused = True
    for (x_in, label, kw), (x, sigma, cond) in zip(stub.calls, recorder.asked, strict=True):
        want_x, want_label, want_kw = reference.inputs(x, sigma, **cond)
        torch.testing.assert_close(x_in, want_x.to(x_in.dtype), rtol=0, atol=0)
        torch.testing.assert_close(label, want_label, rtol=0, atol=0)
        assert set(kw) == {k for k, v in want_kw.items() if isinstance(v, torch.Tensor)}
    stub.calls.clear()
    recorder.asked.clear()
    recorder.paused = False


def _short(config):
    """Few sampling steps and a short VLB, the network's conditioning untouched."""
    s = {"sampling.n_steps": 3, "sampling.n_steps_each": 1, "sampling.guidance": "none", "sampling.spacing": "uniform"}
    if config.noise.kind == "ve" and config.sampling.method == "ald":
        s = {**s, "sampling.method": "ddim"}
    return with_overrides(config, s)


def _paths(config, monkeypatch):
    config = _short(config)
    exp = experiment(config, mode="train" if config.training.target == "model" else "network")
    if exp.f.training.target != "model":
        pytest.skip("the noisy classifier: tests/test_guidance.py checks its one conditioning (VPClassifier)")
    recorder = Recorder(monkeypatch)
    stub = Stub(_out_channels(exp))
    reference = exp.wrap(Stub(_out_channels(exp)))
    shape = (2, *exp.data.shape[:1], *(4 for _ in exp.data.shape[1:]))  # any size: the stub is size-blind
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    y = torch.tensor([1, 0]) if exp.uses_labels else None
    cond = {} if y is None else {"y": y}
    # training: the configured loss (a fresh LossFn, the wrapper bound once, as the training loop does)
    if exp.loss is not None:
        exp.loss.fresh().bind(stub)(x0, y, g)
        _check_path(exp, stub, recorder, reference)
    # sampling: the configured sampler (few steps)
    score = exp.wrap(stub)
    labelled = exp.guidance.guided(score, y)  # the labels bound, the learned variance kept
    with torch.no_grad():
        exp.sampler(labelled, shape, g, torch.device("cpu"))
    _check_path(exp, stub, recorder, reference)
    # the probability-flow likelihood over the likelihood's σ range
    hi, lo = exp.noise.likelihood_range
    log_likelihood(labelled, x0, hi, lo, method="euler", generator=g)  # one step: the inputs, not the value
    _check_path(exp, stub, recorder, reference)
    # the discrete VLB of DDPM models (every timestep, through the wrapper)
    if exp.noise.kind == "ddpm":
        ddpm_vlb(score, x0, exp.noise.schedule, exp.vlb_variance, g, **cond)
        _check_path(exp, stub, recorder, reference)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_feeds_its_network_through_one_conditioning(name, monkeypatch):
    _paths(run_config_file(ROOT / "configs" / f"{name}.py"), monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(OPENAI_PRESETS))
def test_every_published_preset_feeds_its_network_through_one_conditioning(preset, monkeypatch):
    config = openai_config(OPENAI_PRESETS[preset])
    with config.unlocked():
        config.training.loss = "hybrid" if config.model.learn_sigma else "eps"
        config.data.dataset = "folder"
    _paths(config, monkeypatch)


def test_the_check_sees_a_path_that_bypasses_the_wrapper(monkeypatch):
    """The test can fail: a loss that hands the raw network the raw timestep (the iddpm bug) is caught."""
    from scorelib import losses

    def raw_eps_loss(model, x0, schedule, t, noise, **cond):
        out = model.net(schedule.q_sample(x0, t, noise), t.to(x0.dtype), **cond)  # raw t: no t·1000/T
        return (out[:, : x0.shape[1]] - noise).pow(2).flatten(1).mean(1)

    monkeypatch.setattr(losses, "hybrid_loss", lambda model, x0, schedule, t, noise, lambda_vlb, **c:
                        raw_eps_loss(model, x0, schedule, t, noise, **c))
    with pytest.raises(AssertionError):
        _paths(run_config_file(ROOT / "configs" / "iddpm_cifar.py"), monkeypatch)
