"""Power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", §3 and Appendix C).

**Profiles.** An average of the parameters θ_τ seen up to training step t is described by its profile, the
weight it gives each step. The power-function profile (eq. 121) in continuous time is

    p_t(τ) = (γ + 1) τ^γ / t^(γ+1)  on 0 ≤ τ ≤ t,

tracked during training by θ̂_t = β_t θ̂_{t-1} + (1 - β_t) θ_t with β_t = (1 - 1/t)^(γ+1) (eq. 127), t = 1, 2, …
counting optimiser steps: β_1 = 0, so the average starts as the parameters after the first step (EDM2's
training_loop.py calls training/phema.py `PowerFunctionEMA.update` after each step with the images seen so
far, t_next = images, t_delta = batch). The products of β telescope, so the step-τ weight is exactly
(τ/t)^(γ+1) - ((τ-1)/t)^(γ+1): the profile integrated over (τ - 1, τ].

Its width relative to t is σ_rel = √((γ + 1)/((γ + 2)²(γ + 3))) (eq. 123); γ for a given σ_rel is the
largest real root of γ³ + 7γ² + (16 - σ_rel⁻²)γ + (12 - σ_rel⁻²) = 0 (eq. 126).

**Post-hoc reconstruction** (Appendix C.3, Algorithm 3). Snapshots θ̂_i of profiles p_i (step t_i, exponent
γ_i) stored during training are combined as Σ x_i θ̂_i with x minimising ‖Σ x_i p_i - p‖² for a target
profile p: A x = b with A_ij = ⟨p_i, p_j⟩ and b_i = ⟨p_i, p⟩ (L² inner products over τ, closed forms
below), x then rescaled to sum to one (an average). Targets: a power-function σ_rel, or a classic EMA with
half-life h steps (β = 2^(-1/h) per step; profile ∝ exp(-ln 2 (T - τ)/h) on [0, T]).

A training loop makes `PowerEMA(net, sigma_rels)`, calls `update(step)` after every optimiser step and at
each snapshot stores `snapshots()` (one `EMASnapshot(step, gamma, state_dict)` per profile, saved with
`snapshot._asdict()` and read back with `EMASnapshot(**d)`); `posthoc_ema(snapshots, sigma_rel)` gives
the state_dict of any other EMA length afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import gammaln, logsumexp
from torch import Tensor, nn

__all__ = [
    "EMASnapshot",
    "PowerEMA",
    "gamma_to_sigma_rel",
    "posthoc_coefficients",
    "posthoc_ema",
    "power_ema_beta",
    "sigma_rel_to_gamma",
]

StateDict = Mapping[str, Tensor]
SIGMA_REL_MAX = math.sqrt(1 / 12)  # γ = 0


# ----------------------------------------------------------------------------------------------
# The power-function profile
# ----------------------------------------------------------------------------------------------


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = √((γ + 1)/((γ + 2)²(γ + 3))) of the power-function profile with exponent γ ≥ 0 (eq. 123)."""
    if not gamma >= 0:
        raise ValueError(f"the power-function exponent must be >= 0, got {gamma}")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 of the power-function profile with relative width σ_rel (eq. 126): the largest
    real root of (γ + 2)²(γ + 3) σ_rel² = γ + 1. σ_rel must lie in (0, √(1/12) ≈ 0.2887] (γ = 0, a uniform
    average; EDM2 accepts σ_rel < 0.289)."""
    s = float(sigma_rel)
    if not 0 < s <= SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.6f}], got {sigma_rel}")
    inv = s**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    g = max(0.0, float(roots[np.abs(roots.imag) <= 1e-9 * np.maximum(1.0, np.abs(roots))].real.max()))
    for _ in range(3):  # Newton polish of f(γ) = (γ+2)²(γ+3) σ² - (γ+1) in float64
        f = (g + 2) ** 2 * (g + 3) * s * s - (g + 1)
        df = (g + 2) * (3 * g + 8) * s * s - 1
        if df == 0:
            break
        g -= f / df
    return max(g, 0.0)


def power_ema_beta(step: int, gamma: float) -> float:
    """β_t = (1 - 1/t)^(γ+1), the decay of the update after optimiser step t ≥ 1 (eq. 127); β_1 = 0."""
    if step < 1:
        raise ValueError(f"steps are counted from 1 (the update after the first optimiser step), got {step}")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def _power_inner(t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray) -> np.ndarray:
    """⟨p_a, p_b⟩ = ∫ p_a p_b dτ of power-function profiles (broadcasting). With s ≤ l the earlier and later
    of the two (exponents γ_s, γ_l): (γ_s + 1)(γ_l + 1)/(γ_s + γ_l + 1) · (s/l)^γ_l / l (eq. 151)."""
    a_first = t_a <= t_b
    early, late = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    g_late = np.where(a_first, g_b, g_a)
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (early / late) ** g_late / late


def _log_exponential_inner(t: np.ndarray, g: np.ndarray, rate: float) -> np.ndarray:
    """log ∫_0^t p(τ) e^{rate·τ} dτ for power profiles (t, γ): log((γ+1) Σ_k c^k / (k! (γ+k+1))), c = rate·t.

    The series has positive terms peaked near k ≈ c; the terms more than 40√c + 40 away are below e^-800
    of the peak and are left out, so the sum is exact to float64 for any c.
    """
    out = np.empty(t.shape)
    for i, (ti, gi) in enumerate(zip(t.ravel(), g.ravel(), strict=True)):
        c = rate * ti
        width = 40.0 * math.sqrt(c) + 40.0
        k = np.arange(max(0, math.floor(c - width)), math.ceil(c + width) + 1, dtype=np.float64)
        terms = k * math.log(c) - gammaln(k + 1) - np.log(gi + k + 1)
        out.flat[i] = math.log(gi + 1) + logsumexp(terms)
    return out


def posthoc_coefficients(steps: Sequence[float], gammas: Sequence[float], step: float,
                         sigma_rel: float | None = None, *, halflife: float | None = None) -> Tensor:
    """The weights x [N] (float64, summing to 1) of the snapshots (steps t_i, exponents γ_i) whose
    combination Σ x_i θ̂_i best approximates, in L², the target profile at `step`: the power function of
    width `sigma_rel`, or a classic EMA with half-life `halflife` steps (Algorithm 3). Snapshots must be
    taken at 0 < t_i ≤ step; steps may be counted in any unit (optimiser steps, images) used throughout."""
    if (sigma_rel is None) == (halflife is None):
        raise ValueError("give exactly one target: sigma_rel or halflife")
    t = np.asarray(steps, dtype=np.float64)
    g = np.asarray(gammas, dtype=np.float64)
    if t.ndim != 1 or t.shape != g.shape or t.size == 0:
        raise ValueError("steps and gammas must be non-empty 1-D sequences of the same length")
    if (t <= 0).any() or (t > step).any():
        raise ValueError(f"snapshot steps must lie in (0, {step}], got {t.tolist()}")
    gram = _power_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    if sigma_rel is not None:
        rhs = _power_inner(t, g, np.float64(step), np.float64(sigma_rel_to_gamma(sigma_rel)))
    else:
        if not halflife > 0:
            raise ValueError(f"halflife must be positive, got {halflife}")
        # ∝ ⟨p_i, e^{-λ(T - τ)}⟩: the common factor e^{-λT} (and the normalisation) cancel below
        log_b = _log_exponential_inner(t, g, math.log(2.0) / halflife)
        rhs = np.exp(log_b - log_b.max())
    x = np.linalg.solve(gram, rhs)
    return torch.from_numpy(x / x.sum())


# ----------------------------------------------------------------------------------------------
# Tracking during training
# ----------------------------------------------------------------------------------------------


class EMASnapshot(NamedTuple):
    """One stored average: the optimiser step t it was taken at, its power-function exponent γ, and its
    state_dict (or a zero-argument callable that loads it, to keep one snapshot in memory at a time)."""

    step: int
    gamma: float
    state_dict: StateDict | Callable[[], StateDict]

    @property
    def sigma_rel(self) -> float:
        return gamma_to_sigma_rel(self.gamma)


def _named_tensors(params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor]) -> dict[str, Tensor]:
    if isinstance(params, nn.Module):
        return dict(params.named_parameters())
    if isinstance(params, Mapping):
        return dict(params)
    return {str(i): p for i, p in enumerate(params)}


class PowerEMA:
    """Power-function EMAs of `params` for each relative width in `sigma_rels` (EDM2 tracks 0.05 and 0.10).

    `params`: a module (its named parameters; `averaged` then returns a full state_dict with the module's
    current buffers, as EDM2 copies them), a mapping name -> tensor, or an iterable of tensors (named
    "0", "1", …). Only floating-point tensors are averaged. Averages start as copies of the parameters;
    `update(step)` after optimiser step `step` (1, 2, …) applies θ̂ ← β θ̂ + (1 - β) θ, β = (1 - 1/step)^(γ+1).
    """

    def __init__(self, params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor],
                 sigma_rels: Sequence[float] = (0.05, 0.10)):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        if not self.sigma_rels:
            raise ValueError("PowerEMA needs at least one sigma_rel")
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self._module = params if isinstance(params, nn.Module) else None
        self._live = {k: v for k, v in _named_tensors(params).items() if v.is_floating_point()}
        self.averages = [{k: v.detach().clone() for k, v in self._live.items()} for _ in self.gammas]
        self.step = 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the current parameters after optimiser step `step` (≥ 1)."""
        for gamma, avg in zip(self.gammas, self.averages, strict=True):
            weight = 1.0 - power_ema_beta(step, gamma)
            for name, live in self._live.items():
                avg[name].lerp_(live.detach(), weight)
        self.step = int(step)

    def averaged(self, index: int = 0) -> dict[str, Tensor]:
        """The average of profile `index` as a state_dict (copies): a full state_dict of the module (its
        buffers as they are now) when tracking a module, else the averaged tensors."""
        avg = self.averages[index]
        if self._module is None:
            return {k: v.clone() for k, v in avg.items()}
        return {k: (avg[k] if k in avg else v).detach().clone() for k, v in self._module.state_dict().items()}

    def snapshots(self) -> list[EMASnapshot]:
        """One `EMASnapshot(step, gamma, state_dict)` per profile at the current step, to store."""
        return [EMASnapshot(self.step, g, self.averaged(i)) for i, g in enumerate(self.gammas)]

    def state_dict(self) -> dict:
        """The step, the widths and the averages (plain types and tensors: `torch.load(weights_only=True)`)."""
        return {"step": self.step, "sigma_rels": list(self.sigma_rels),
                "averages": [dict(avg) for avg in self.averages]}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        if tuple(float(s) for s in state["sigma_rels"]) != self.sigma_rels:
            raise ValueError(f"the stored EMA tracks sigma_rels {list(state['sigma_rels'])}, "
                             f"this one {list(self.sigma_rels)}")
        for avg, stored in zip(self.averages, state["averages"], strict=True):
            if set(stored) != set(avg):
                raise ValueError(f"the stored EMA averages other tensors: {sorted(set(stored) ^ set(avg))}")
            for k, v in avg.items():
                v.copy_(stored[k])
        self.step = int(state["step"])


# ----------------------------------------------------------------------------------------------
# Reconstruction after training
# ----------------------------------------------------------------------------------------------


def _as_snapshot(s: EMASnapshot | Sequence | Mapping) -> EMASnapshot:
    if isinstance(s, EMASnapshot):
        return s
    if isinstance(s, Mapping):
        return EMASnapshot(int(s["step"]), float(s["gamma"]), s["state_dict"])
    step, gamma, sd = s
    return EMASnapshot(int(step), float(gamma), sd)


def _load(s: EMASnapshot) -> StateDict:
    return s.state_dict() if callable(s.state_dict) else s.state_dict


def posthoc_ema(snapshots: Iterable[EMASnapshot | Sequence | Mapping], sigma_rel: float | None = None, *,
                halflife: float | None = None, step: int | None = None) -> dict[str, Tensor]:
    """The state_dict of the EMA with relative width `sigma_rel` (or a classic EMA of half-life `halflife`
    steps) at training step `step` (default: the latest snapshot), reconstructed from power-EMA snapshots.

    `snapshots`: `EMASnapshot`s, (step, gamma, state_dict) tuples or {"step", "gamma", "state_dict"} dicts;
    those after `step` are ignored. Floating-point entries are combined with `posthoc_coefficients`
    (accumulated in at least float32, returned in the latest snapshot's dtype); other entries are copied
    from the latest snapshot.
    """
    snaps = [_as_snapshot(s) for s in snapshots]
    if not snaps:
        raise ValueError("posthoc_ema needs at least one snapshot")
    target = max(s.step for s in snaps) if step is None else int(step)
    snaps = sorted((s for s in snaps if 0 < s.step <= target), key=lambda s: s.step)
    if not snaps:
        raise ValueError(f"no snapshot at or before step {target}")
    coefs = posthoc_coefficients([s.step for s in snaps], [s.gamma for s in snaps], target, sigma_rel,
                                 halflife=halflife).tolist()
    sums: dict[str, Tensor] = {}
    last: StateDict = {}
    for s, c in zip(snaps, coefs, strict=True):
        last = _load(s)
        for k, v in last.items():
            if not v.is_floating_point():
                continue
            acc = torch.promote_types(v.dtype, torch.float32)
            term = v.detach().to(acc) * c
            sums[k] = term if k not in sums else sums[k].add_(term)
    return {k: (sums[k].to(v.dtype) if k in sums else v.clone()) for k, v in last.items()}


def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """θ_ema ← rate·θ_ema + (1 - rate)·θ; buffers copied."""
    with torch.no_grad():
        e_params = [p for p in ema.parameters()]
        m_params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(e_params, m_params, 1.0 - rate)
        for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
            eb.copy_(mb)


def ema_rate(step: int, batch_size: int, rate: float, halflife_kimg: float = 0.0, rampup_ratio: float = 0.0) -> float:
    """The EMA decay of optimiser step `step` (0-based). With `halflife_kimg` > 0, EDM's half-life in
    images: 0.5^(B / h), h = 1000·halflife_kimg, at most `rampup_ratio` × the images seen before the step
    (EDM training_loop.py: `cur_nimg` before its increment, so the first step copies the network); else
    min(rate, (1 + step)/(10 + step)) (TensorFlow's ExponentialMovingAverage with num_updates), so short runs
    do not keep the initial weights."""
    if halflife_kimg > 0:
        half = halflife_kimg * 1000
        if rampup_ratio > 0:
            half = min(half, step * batch_size * rampup_ratio)
        return 0.5 ** (batch_size / max(half, 1e-8))
    return min(rate, (1 + step) / (10 + step))

