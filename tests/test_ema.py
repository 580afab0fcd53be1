"""Power-function EMA and post-hoc reconstruction (EDM2 §3, Appendix C) against closed forms and against
EDM2's training/phema.py (`std_to_exp`, `exp_to_std`, `power_function_beta`, `solve_posthoc_coefficients`,
numbers recorded from NVlabs/edm2 in tests/data/edm2_reference.json)."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from scorelib.ema import (
    EMASnapshot,
    PowerEMA,
    _log_exponential_inner,
    ema_rate,
    gamma_to_sigma_rel,
    posthoc_coefficients,
    posthoc_ema,
    power_ema_beta,
    sigma_rel_to_gamma,
)

REF = json.loads((Path(__file__).parent / "data" / "edm2_reference.json").read_text())
F64 = torch.float64


def test_sigma_rel_and_gamma_follow_eq_123_and_edm2():
    for s, g in REF["std_to_exp"].items():
        assert sigma_rel_to_gamma(float(s)) == pytest.approx(g, rel=1e-12)
        assert gamma_to_sigma_rel(g) == pytest.approx(float(s), rel=1e-12)
    for g, s in REF["exp_to_std"].items():
        assert gamma_to_sigma_rel(float(g)) == pytest.approx(s, rel=1e-14)
    assert gamma_to_sigma_rel(0.0) == pytest.approx(math.sqrt(1 / 12))
    with pytest.raises(ValueError, match="sigma_rel"):
        sigma_rel_to_gamma(0.3)
    with pytest.raises(ValueError, match="sigma_rel"):
        sigma_rel_to_gamma(0.0)


def test_beta_counts_optimiser_steps_from_one_as_edm2():
    # EDM2 calls power_function_beta(std, t_next=images seen after the step, t_delta=batch): step t ↔ t·batch
    for s, t, beta in REF["beta"]:
        assert power_ema_beta(t, sigma_rel_to_gamma(s)) == pytest.approx(beta, rel=1e-12, abs=1e-300)
    assert power_ema_beta(1, 6.94) == 0.0  # the first update replaces the initial weights
    with pytest.raises(ValueError, match="from 1"):
        power_ema_beta(0, 6.94)


def _linear_run(n_steps: int, every: int, sigma_rels=(0.05, 0.10)):
    """A parameter θ_k = a + b·k over steps k = 1..n, tracked; snapshots every `every` steps."""
    a = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    b = torch.tensor([1.0, 0.5, -2.0], dtype=F64) / n_steps
    p = a.clone()
    ema = PowerEMA([p], sigma_rels)
    snaps = []
    for k in range(1, n_steps + 1):
        p.copy_(a + b * k)
        ema.update(k)
        if k % every == 0:
            snaps += ema.snapshots()
    return a, b, ema, snaps


def _power_ema_of_linear(a, b, n_steps: int, sigma_rel: float):
    """The power EMA of θ_k = a + b k at step T: step weights (k/T)^g - ((k-1)/T)^g, g = γ + 1 (they telescope
    from β_k = (1 - 1/k)^g), so the mean step is T - Σ_{k<T} (k/T)^g."""
    g = sigma_rel_to_gamma(sigma_rel) + 1
    k = np.arange(1, n_steps, dtype=np.float64)
    return a + b * (n_steps - float(((k / n_steps) ** g).sum()))


def test_power_ema_tracks_the_closed_form_average():
    a, b, ema, _ = _linear_run(500, 500)
    for i, s in enumerate(ema.sigma_rels):
        torch.testing.assert_close(ema.averages[i]["0"], _power_ema_of_linear(a, b, 500, s), rtol=1e-12, atol=1e-12)


def test_posthoc_coefficients_equal_edm2_solve_posthoc_coefficients():
    for case in REF["phema"]:
        for j, out_std in enumerate(case["out_std"]):
            gammas = [sigma_rel_to_gamma(s) for s in case["in_std"]]
            x = posthoc_coefficients(case["in_ofs"], gammas, case["out_ofs"], out_std)
            want = torch.tensor([row[j] for row in case["X"]], dtype=F64)
            torch.testing.assert_close(x, want, rtol=1e-9, atol=1e-9)


def test_posthoc_reconstructs_an_untracked_sigma_rel_on_a_linear_trajectory():
    """From 128 snapshots of each of σ_rel 0.05 and 0.10, the EMA of σ_rel 0.04, 0.07 and 0.15 (never
    tracked) at the last step equals the closed form of the tracked average to 1e-6 (measured: 2e-8, 9e-9,
    2e-7; the least-squares fit is not exact, its error falls as snapshots get denser: 64 per profile give
    3e-7, 1.5e-7, 2.6e-6)."""
    n = 3200
    a, b, _, snaps = _linear_run(n, 25)
    for target in (0.04, 0.07, 0.15):
        got = posthoc_ema(snaps, target)["0"]
        torch.testing.assert_close(got, _power_ema_of_linear(a, b, n, target), rtol=0, atol=1e-6)


def test_posthoc_classic_ema_half_life():
    # the series of the exponential target's inner products against quadrature
    for t, g, rate in [(1.0, 5.0, 3.0), (100.0, 20.0, 0.05), (3.0, 0.5, 0.001), (1000.0, 200.0, 1.0)]:
        q = quad(lambda tau, t=t, g=g, rate=rate: (g + 1) / t * (tau / t) ** g * math.exp(rate * (tau - t)), 0, t,
                 epsabs=0, epsrel=1e-13, limit=500)[0]
        mine = _log_exponential_inner(np.array([t]), np.array([g]), rate)[0] - rate * t
        assert mine == pytest.approx(math.log(q), abs=1e-12)
    # a classic EMA (β = 2^(-1/h), started from θ_0) tracked step by step, reconstructed
    n, h = 3200, 3200 / 30
    a, b, _, snaps = _linear_run(n, 25)
    beta = 0.5 ** (1 / h)
    classic = a.clone()
    for k in range(1, n + 1):
        classic = beta * classic + (1 - beta) * (a + b * k)
    # the target profile leaves out the initial weights' share β^n ≈ 1e-9
    torch.testing.assert_close(posthoc_ema(snaps, halflife=h)["0"], classic, rtol=0, atol=1e-6)


def test_posthoc_ema_of_a_tracked_profile_returns_that_snapshot():
    _, _, ema, snaps = _linear_run(400, 100)
    got = posthoc_ema(snaps, 0.10)
    torch.testing.assert_close(got["0"], ema.averages[1]["0"], rtol=0, atol=1e-12)
    # an earlier step: the snapshots after it are ignored
    early = posthoc_ema(snaps, 0.05, step=200)
    want = next(s.state_dict["0"] for s in snaps if s.step == 200 and abs(s.sigma_rel - 0.05) < 1e-12)
    torch.testing.assert_close(early["0"], want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="exactly one"):
        posthoc_ema(snaps, 0.07, halflife=10.0)
    with pytest.raises(ValueError, match="no snapshot"):
        posthoc_ema(snaps, 0.07, step=50)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("freqs", torch.arange(4.0))


def test_module_snapshots_store_step_and_gamma_and_load_weights_only():
    torch.manual_seed(0)
    net = _Net()
    ema = PowerEMA(net, sigma_rels=(0.05, 0.10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    stored = []
    for step in range(1, 31):
        opt.zero_grad()
        net.lin(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        net.count += 1
        ema.update(step)
        if step % 10 == 0:
            stored += [s._asdict() for s in ema.snapshots()]
    buf = io.BytesIO()
    torch.save({"ema": ema.state_dict(), "snapshots": stored}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    snaps = [EMASnapshot(**d) for d in loaded["snapshots"]]
    assert [(s.step, round(s.sigma_rel, 12)) for s in snaps[:2]] == [(10, 0.05), (10, 0.1)]
    assert set(snaps[0].state_dict) == set(net.state_dict())  # a full state_dict: loads into the network
    assert int(snaps[-1].state_dict["count"]) == 30
    again = PowerEMA(_Net(), sigma_rels=(0.05, 0.10))
    again.load_state_dict(loaded["ema"])
    assert again.step == 30
    torch.testing.assert_close(again.averages[0]["lin.weight"], ema.averages[0]["lin.weight"])
    out = posthoc_ema(snaps, 0.07)
    net2 = _Net()
    net2.load_state_dict(out)
    assert int(out["count"]) == 30 and out["count"].dtype == torch.long  # non-float entries: the latest
    with pytest.raises(ValueError, match="sigma_rels"):
        PowerEMA(_Net(), sigma_rels=(0.05,)).load_state_dict(loaded["ema"])


def test_ema_rate_follows_edms_training_loop_and_tensorflows_warm_up():
    """EDM training_loop.py, written out: after each optimiser step the half-life is
    min(ema_halflife_kimg·1000, cur_nimg·ema_rampup_ratio) with cur_nimg the images seen *before* the step,
    β = 0.5^(batch / max(half-life, 1e-8)), then cur_nimg += batch. So the first step copies the network."""
    batch, kimg, ratio, cur_nimg = 512, 500.0, 0.05, 0
    for step in range(300):
        half = min(kimg * 1000, cur_nimg * ratio)
        assert ema_rate(step, batch, 0.999, kimg, ratio) == 0.5 ** (batch / max(half, 1e-8)), step
        cur_nimg += batch
    assert ema_rate(0, batch, 0.999, kimg, ratio) == 0.0
    assert ema_rate(10**6, batch, 0.999, kimg, ratio) == 0.5 ** (batch / (kimg * 1000))  # the ramp-up is over
    assert ema_rate(10**6, batch, 0.999, kimg, 0.0) == 0.5 ** (batch / (kimg * 1000))  # no ramp-up
    # without a half-life: TensorFlow's ExponentialMovingAverage(num_updates) warm-up, capped at the rate
    assert [ema_rate(k, batch, 0.999) for k in (0, 1, 10**6)] == [1 / 10, 2 / 11, 0.999]


def test_an_edm_run_s_ema_starts_as_the_network(tmp_path):
    """Through the training loop: with training.ema_halflife_kimg the EMA after the first step is the
    network itself (EDM's β = 0 at cur_nimg = 0), not the initial weights mixed in."""
    from scorelib.builder import experiment
    from scorelib.builder.configs import with_overrides
    from scorelib.checkpoint import list_checkpoints, load_checkpoint
    from scorelib.presets import resolve_config
    from scorelib.train import train

    c = with_overrides(resolve_config("toy_gmm"), {
        "training.batch_size": 16, "training.n_iters": 1, "training.snapshot_freq": 1, "training.log_freq": 1,
        "training.snapshot_samples": 0, "training.ema_halflife_kimg": 0.5, "training.ema_rampup_ratio": 0.05,
        "device": "cpu"})
    train(experiment(c), tmp_path)
    state = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1][1])
    assert all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])

