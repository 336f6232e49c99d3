"""Small shared helpers: broadcasting, time conversion, argument validation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

Number = float | int


def expand_to(v: Tensor | Number, x: Tensor) -> Tensor | float:
    """Make a per-sample quantity broadcast against ``x``.

    A Python number is returned unchanged (it broadcasts already). A tensor of
    shape ``(B,)`` or ``()`` gets trailing singleton dimensions so that it
    broadcasts against ``x`` of shape ``(B, ...)``.
    """
    if not isinstance(v, Tensor):
        return float(v)
    if v.ndim > x.ndim:
        raise ValueError(f"cannot broadcast a tensor of shape {tuple(v.shape)} against x of shape {tuple(x.shape)}")
    return v.reshape(tuple(v.shape) + (1,) * (x.ndim - v.ndim))


def as_float64(t: Tensor | Number) -> Tensor:
    """Return ``t`` as a float64 tensor on its own device (Python numbers go to the CPU)."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.tensor(float(t), dtype=torch.float64)


def as_time(t: Tensor | Number) -> Tensor:
    """Return a floating tensor for a time argument, keeping a tensor's dtype and device.

    Python numbers become float64 CPU tensors; integer tensors become float64.
    """
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.to(torch.float64)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"a time must be a float or a tensor, got {type(t).__name__}")
    return torch.tensor(float(t), dtype=torch.float64)


def check_finite_number(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    """Validate a scalar argument and return it as a float, with an error that names it."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Validate that ``value`` is one of ``allowed`` and say which are allowed if not."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(repr(a) for a in allowed)}")
    return value
