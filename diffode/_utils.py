"""Small shared helpers: broadcasting, time conversion, argument validation, non-finite reports."""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from diffode._namespace import is_jax_array

Number = float | int

# Half-precision states are integrated in this dtype (see diffode.solve); others in their own.
HALF_DTYPES = (torch.float16, torch.bfloat16)


class NonFiniteError(ValueError):
    """A model output or the state became NaN or infinite during a solve.

    Raised by :func:`diffode.solve` and :func:`diffode.solve_adaptive` (and the
    :class:`~diffode.integrators.DPMSolver` front) when they are asked to check
    (``check_finite=True``), and always by the adaptive solver, whose error estimate exposes a
    non-finite step for free.

    Attributes:
        step: The 1-based index of the step where it appeared (0: the initial state).
        t: The time of the model evaluation (or of the state) that was not finite.
        samples: The batch indices of the samples with non-finite values.
        what: What was not finite, e.g. ``"model output (data prediction)"`` or ``"state"``.
    """

    def __init__(self, step: int, t: float, samples: Sequence[int], what: str, detail: str = ""):
        self.step, self.t, self.samples, self.what = step, float(t), list(samples), what
        shown = self.samples if len(self.samples) <= 16 else [*self.samples[:16], "..."]
        where = "in the initial state" if step == 0 else f"at step {step}"
        message = (f"non-finite {what} {where} (t={self.t:.6g}) in {len(self.samples)} sample(s), "
                   f"batch indices {shown}")
        super().__init__(message + (f"; {detail}" if detail else ""))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Torch's default dtype set to ``dtype`` inside the block, restored after it (errors included)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def nonfinite_samples(value: Tensor) -> list[int]:
    """Batch indices of the samples of ``value`` (shape ``(B, ...)``) that hold a NaN or an infinity.

    Synchronises with the device: call it only on an error path or where a sync is allowed.
    """
    flags = ~torch.isfinite(value.detach()).reshape(value.shape[0], -1).all(dim=1)
    return flags.nonzero().flatten().tolist()


def check_int(name: str, value: Any, *, low: int | None = None) -> int:
    """Validate an integer argument (``bool`` excluded, NumPy integers accepted) and return it as an ``int``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool ({value!r})")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})") from None
    if low is not None and value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return value


def check_tensor(name: str, x: Any) -> Tensor:
    """Validate a state argument: a non-empty floating tensor of shape ``(B, ...)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                        f"got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} must have shape (B, ...) with B >= 1 and no empty dimension, got {tuple(x.shape)}")
    return x


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

    Python numbers become float64 CPU tensors; integer tensors become float64. A JAX array (the
    JAX backend evaluates the schedules' formulas in its compiled loops) is returned as it is.
    """
    if is_jax_array(t):
        return t
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
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
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


def preview(values: Any, head: int = 4) -> str:
    """A short rendering of a long sequence for an error message: the first ``head`` values and the last.

    ``[999, 998, 997, 996, ..., 0] (1000 values)`` rather than a thousand numbers.
    """
    items = values.tolist() if hasattr(values, "tolist") else list(values) if isinstance(values, Iterable) else values
    if not isinstance(items, list) or len(items) <= head + 2:
        return repr(items)
    return f"[{', '.join(map(repr, items[:head]))}, ..., {items[-1]!r}] ({len(items)} values)"
