"""Small shared helpers: the score-model type, broadcasting, σ-grid validation, the default-dtype context."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

# A σ-space score model: score(x [B, ...], sigma [B]) -> ∇ₓ log p_σ(x), x's shape (docs/design.md §1).
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so `v` ([B] or scalar) broadcasts against a rank-`ndim` tensor."""
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a rank-{v.ndim} tensor to rank {ndim}")
    return v.reshape(*v.shape, *(1,) * missing)


def batch_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """σ as a [B] tensor in `x`'s dtype and device (a float or 0-d tensor is expanded to the batch)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    return s


def check_sigmas(sigmas: Tensor, allow_zero_last: bool = True) -> None:
    """Raise ValueError unless `sigmas` is a 1-D, strictly descending, positive grid.

    The last entry may be 0 when `allow_zero_last` (a final step to the clean data). Runs once,
    before a sampling loop, never inside it.
    """
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas must be finite")
    body = sigmas[:-1] if allow_zero_last and sigmas.numel() > 1 and float(sigmas[-1]) == 0.0 else sigmas
    if bool((body <= 0).any()):
        raise ValueError(
            "sigmas must be positive" + (" (only the last entry may be 0)" if allow_zero_last else "")
        )
    if sigmas.numel() > 1 and bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError("sigmas must be strictly descending")


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise of `x`'s shape, dtype and device, from `generator` when given."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: [B, ...] -> [B]."""
    return x.flatten(1).mean(1)


def sum_flat(x: Tensor) -> Tensor:
    """Sum over all but the batch dimension: [B, ...] -> [B]."""
    return x.flatten(1).sum(1)


def frozen(**kw: Any) -> Mapping[str, Any]:
    """A read-only mapping of `kw` (the published constructor configurations of the networks)."""
    return MappingProxyType(kw)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily change torch's default floating dtype (for peers that build tensors with it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def format_duration(seconds: float) -> str:
    """Seconds as h:mm:ss ("?" when not finite), for progress lines."""
    if not math.isfinite(seconds):
        return "?"
    s = round(max(seconds, 0.0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_bytes(n: int) -> str:
    """n bytes in binary units: 512 -> "512 bytes", 1536 -> "1.50 KiB", 3 * 2**40 -> "3.00 TiB"."""
    value, unit = float(n), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{n} bytes" if unit == "bytes" else f"{value:.2f} {unit}"
