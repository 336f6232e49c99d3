r"""Step-size control for embedded pairs: accept or reject a step and choose the next $h$ in $\lambda$."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
        delta = torch.clamp_min(self.rtol * torch.maximum(x_low.abs(), x_prev.abs()), self.atol)
        ratio = ((x_high - x_low) / delta).reshape(x_low.shape[0], -1)
        return ratio.square().mean(dim=1).sqrt()

    def error(self, x_high: Tensor, x_low: Tensor, x_prev: Tensor) -> float:
        """The scaled error $E$ of a step: the largest per-sample RMS norm (NaN if any sample is NaN).

        This is the adaptive loop's one host-device synchronisation per step.
        """
        return float(self.errors(x_high, x_low, x_prev).max())

    def next_point(self, schedule: NoiseSchedule, s: TimePoint, h: float, end: TimePoint) -> TimePoint:
        """Where a step of ``h`` in $\\lambda$ from ``s`` lands: ``end`` itself when the step reaches it."""
        if abs(h - (end.lam - s.lam)) <= 1e-12 * max(1.0, abs(h)):
            return end
        return schedule.point_at_lambda(s.lam + h)

    def next_h(self, h: float, error: float, order: int, remaining: float) -> float:
        """The next step, signed like ``remaining`` (the distance left to the end in $\\lambda$)."""
        factor = self.theta * (max(error, 1e-300) ** (-1.0 / order))
        new = abs(h) * factor
        return min(new, abs(remaining)) * (1.0 if remaining >= 0 else -1.0)
