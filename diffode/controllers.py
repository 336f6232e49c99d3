r"""Step-size control for embedded pairs: accept or reject a step and choose the next $h$ in $\lambda$."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import check_finite_number, check_int
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["AdaptiveController"]


@dataclass
class AdaptiveController:
    r"""DPM-Solver's controller for its adaptive solvers.

    The error of a step is the RMS norm, per sample, of
    $(x_{high} - x_{low}) / \max(\mathrm{atol}, \mathrm{rtol}\cdot\max(|x_{low}|, |x_{prev}|))$;
    the step is accepted when the largest one is at most 1 (the whole batch moves together). Either
    way the next step is $h \leftarrow \min(\theta\,h\,E^{-1/p}, \lambda_{end} - \lambda)$ with $p$ the
    higher order of the pair.

    :meth:`errors`, :meth:`first_h`, :meth:`reaches_end` and :meth:`next_h` also take JAX arrays: the
    compiled adaptive loop of :mod:`diffode.jax` applies this same rule inside its graph.

    Args:
        atol: Absolute tolerance (> 0); 0.0078 is about one 8-bit colour level in [-1, 1].
        rtol: Relative tolerance (> 0).
        theta: Safety factor in (0, 1].
        h_init: The first step in $\lambda$ (> 0).
        t_err: Stop when the time is within this distance of the end (> 0).
        max_nfe: Give up with a ``RuntimeError`` before passing this many model evaluations, so
            that a tolerance that cannot be met never loops for ever.
    """

    atol: float = 0.0078
    rtol: float = 0.05
    theta: float = 0.9
    h_init: float = 0.05
    t_err: float = 1e-5
    max_nfe: int = 10_000

    def __post_init__(self):
        self.atol = check_finite_number("atol", self.atol, positive=True)
        self.rtol = check_finite_number("rtol", self.rtol, positive=True)
        self.theta = check_finite_number("theta", self.theta, positive=True)
        if self.theta > 1:
            raise ValueError(f"theta must lie in (0, 1], got {self.theta}")
        self.h_init = check_finite_number("h_init", self.h_init, positive=True)
        self.t_err = check_finite_number("t_err", self.t_err, positive=True)
        self.max_nfe = check_int("max_nfe", self.max_nfe, low=1)

    def errors(self, x_high: Tensor, x_low: Tensor, x_prev: Tensor) -> Tensor:
        """The scaled error of a step per sample (RMS norm), a ``(B,)`` tensor on the state's device."""
        xp = namespace(x_high)
        delta = xp.clamp(self.rtol * xp.maximum(xp.abs(x_low), xp.abs(x_prev)), min=self.atol)
        ratio = ((x_high - x_low) / delta).reshape(x_low.shape[0], -1)
        return xp.sqrt(xp.mean(xp.square(ratio), 1))

    def error(self, x_high: Tensor, x_low: Tensor, x_prev: Tensor) -> float:
        """The scaled error $E$ of a step: the largest per-sample RMS norm (NaN if any sample is NaN).

        This is the adaptive loop's one host-device synchronisation per step.
        """
        return float(self.errors(x_high, x_low, x_prev).max())

    def first_h(self, remaining):
        """The first step: ``h_init``, at most the whole distance ``remaining``, signed like it."""
        return self._towards(self.h_init, remaining)

    def reaches_end(self, h, remaining):
        """Whether a step of ``h`` lands on the end, ``remaining`` away in $\\lambda$ (to round-off)."""
        if _host(h, remaining):
            return abs(h - remaining) <= 1e-12 * max(1.0, abs(h))
        xp = namespace(h, remaining)
        return xp.abs(h - remaining) <= 1e-12 * xp.maximum(1.0, xp.abs(h))

    def next_point(self, schedule: NoiseSchedule, s: TimePoint, h: float, end: TimePoint) -> TimePoint:
        """Where a step of ``h`` in $\\lambda$ from ``s`` lands: ``end`` itself when the step reaches it."""
        if self.reaches_end(h, end.lam - s.lam):
            return end
        return schedule.point_at_lambda(s.lam + h)

    def next_h(self, h, error, order: int, remaining):
        """The next step, signed like ``remaining`` (the distance left to the end in $\\lambda$)."""
        if _host(h, error, remaining):
            factor = self.theta * (max(error, 1e-300) ** (-1.0 / order))
        else:
            factor = self.theta * (namespace(h, error, remaining).maximum(error, 1e-300) ** (-1.0 / order))
        return self._towards(abs(h) * factor, remaining)

    @staticmethod
    def _towards(size, remaining):
        """``size``, at most ``|remaining|``, signed like ``remaining``."""
        if _host(size, remaining):
            return min(size, abs(remaining)) * (1.0 if remaining >= 0 else -1.0)
        xp = namespace(size, remaining)
        return xp.minimum(size, xp.abs(remaining)) * xp.where(remaining >= 0, 1.0, -1.0)


def _host(*values) -> bool:
    """Whether every value is a host number (the PyTorch loop), not an array (the compiled JAX loop)."""
    return all(isinstance(v, (int, float)) for v in values)
