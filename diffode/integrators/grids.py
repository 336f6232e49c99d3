r"""Time grids: where a fixed-step integrator puts its steps between ``t_start`` and ``t_end``."""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from diffode._utils import check_choice, check_finite_number, check_int
from diffode.schedules.base import NoiseSchedule

__all__ = ["GivenTimes", "Karras", "TimeGrid", "TimeQuadratic", "UniformLambda", "UniformTime", "get_grid"]


def check_grid_args(schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> tuple[float, float, int]:
    """Validate the arguments of :meth:`TimeGrid.times` (host numbers; no device work).

    Returns:
        ``(t_start, t_end, n)`` as floats and an int.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    t_start = schedule.check_time("t_start", t_start)
    t_end = schedule.check_time("t_end", t_end)
    n = check_int("n", n, low=1)
    if t_start == t_end:
        raise ValueError(f"t_start and t_end must differ, got {t_start} for both")
    if min(t_start, t_end) <= 0.0:
        raise ValueError(f"a time grid needs t > 0 (lambda is infinite at t = 0), got t_start={t_start}, t_end={t_end}")
    return t_start, t_end, n


class TimeGrid(abc.ABC):
    """A rule that places ``n`` steps (``n + 1`` times) from ``t_start`` to ``t_end``.

    The built-in grids validate their arguments with :func:`check_grid_args`.

    Attributes:
        uniform_in_lambda: Whether its steps are equal in $\\lambda$ (then any subset of equal
            steps is again such a grid, which DPM-Solver-fast's plan uses).
    """

    uniform_in_lambda: bool = False

    @abc.abstractmethod
    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        """The ``n + 1`` times (float64, CPU), ``t_start`` first and ``t_end`` last."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class UniformTime(TimeGrid):
    """Equal steps in t (``skip_type="time_uniform"``)."""

    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        t_start, t_end, n = check_grid_args(schedule, t_start, t_end, n)
        return torch.linspace(t_start, t_end, n + 1, dtype=torch.float64)


class UniformLambda(TimeGrid):
    r"""Equal steps in the half log-SNR $\lambda$ (``skip_type="logSNR"``)."""

    uniform_in_lambda = True

    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        t_start, t_end, n = check_grid_args(schedule, t_start, t_end, n)
        lam = schedule.lambda_(torch.tensor([t_start, t_end], dtype=torch.float64))
        t = schedule.inverse_lambda(torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=torch.float64))
        t[0], t[-1] = t_start, t_end
        return t


class TimeQuadratic(TimeGrid):
    r"""Equal steps in $\sqrt t$ (``skip_type="time_quadratic"``): denser near $t = 0$."""

    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        t_start, t_end, n = check_grid_args(schedule, t_start, t_end, n)
        return torch.linspace(math.sqrt(t_start), math.sqrt(t_end), n + 1, dtype=torch.float64).square()


class Karras(TimeGrid):
    r"""Karras et al.'s grid: equal steps in $\tilde\sigma^{1/\rho}$ with $\tilde\sigma = \sigma/\alpha = e^{-\lambda}$.

    Args:
        rho: The exponent $\rho$ (7 in the EDM paper); larger values put more steps at low noise.
    """

    def __init__(self, rho: float = 7.0):
        self.rho = check_finite_number("rho", rho, positive=True)

    def __repr__(self) -> str:
        return f"Karras(rho={self.rho})"

    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        t_start, t_end, n = check_grid_args(schedule, t_start, t_end, n)
        lam = schedule.lambda_(torch.tensor([t_start, t_end], dtype=torch.float64))
        a, b = torch.exp(-lam / self.rho).tolist()
        ramp = torch.linspace(a, b, n + 1, dtype=torch.float64)
        t = schedule.inverse_lambda(-self.rho * torch.log(ramp))
        t[0], t[-1] = t_start, t_end
        return t


class GivenTimes(TimeGrid):
    """A grid the user gives: :meth:`times` returns it whatever the arguments (a plan checks its length)."""

    def __init__(self, times):
        try:
            values = torch.as_tensor(times.detach() if isinstance(times, Tensor) else times, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"a time grid must be a 1-D sequence of numbers, got {type(times).__name__} ({error})") from None
        if values.ndim > 1:
            raise ValueError(f"a given time grid must be 1-D, got shape {tuple(values.shape)}")
        values = values.reshape(-1).cpu()
        if values.numel() < 2:
            raise ValueError(f"a given time grid needs at least 2 times, got {values.numel()}")
        if not torch.isfinite(values).all():
            raise ValueError("the given time grid contains NaN or Inf")
        d = values[1:] - values[:-1]
        if not ((d < 0).all() or (d > 0).all()):
            raise ValueError(f"the given time grid must be strictly monotone, got {values.tolist()}")
        self.values = values

    def __repr__(self) -> str:
        return f"GivenTimes(n={self.values.numel() - 1})"

    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        return self.values.clone()


GRIDS = {"time_uniform": UniformTime, "logSNR": UniformLambda, "time_quadratic": TimeQuadratic, "karras": Karras}


def get_grid(skip_type) -> TimeGrid:
    """A :class:`TimeGrid` from a name (``"time_uniform"``, ``"logSNR"``, ``"time_quadratic"``,
    ``"karras"``), an instance, or a sequence of times."""
    if isinstance(skip_type, TimeGrid):
        return skip_type
    if isinstance(skip_type, str):
        check_choice("skip_type", skip_type, GRIDS)
        return GRIDS[skip_type]()
    if isinstance(skip_type, (list, tuple, Tensor)) or hasattr(skip_type, "__array__"):
        return GivenTimes(skip_type)
    raise TypeError(f"skip_type must be a name, a TimeGrid or a sequence of times, got {type(skip_type).__name__}")
