r"""Time grids: where a fixed-step integrator puts its steps between ``t_start`` and ``t_end``.

Built-in rules (uniform in $t$, $\lambda$, $\sqrt t$, Karras's $\tilde\sigma^{1/\rho}$), tables of
noise levels (:class:`SigmaTable`, the published Align-Your-Steps schedules in :data:`AYS_SIGMAS`),
and grids the user gives (:class:`GivenTimes`, also from a JSON file: :func:`load_grid`).
"""

from __future__ import annotations

import abc
import functools
import json
import math
import os

from collections.abc import Sequence

import torch
from torch import Tensor

from diffode._utils import check_choice, check_finite_number, check_int
from diffode.schedules.base import NoiseSchedule

__all__ = ["AYS_SIGMAS", "GivenTimes", "Karras", "SigmaTable", "TimeGrid", "TimeQuadratic", "UniformLambda",
           "UniformTime", "exponential_lambda_times", "get_grid", "load_grid", "loglinear_interp"]


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


def exponential_lambda_times(schedule: NoiseSchedule, t_start: float, t_end: float, n: int, power: float) -> Tensor:
    r"""The ``n + 1`` times at equal steps in $e^{-p\lambda}$ (in $\lambda$ itself for $p = 0$).

    One family holds several named grids: $p = 0$ is ``logSNR``, $p = 1/\rho$ is Karras's grid
    ($e^{-\lambda} = \sigma/\alpha$), $p < 0$ puts more steps at low noise than ``logSNR`` does. On a
    VP path near $t = 0$, $e^{-2\lambda} \approx \sigma^2 \propto t$, so $p = 2$ and $p = 1$ resemble
    ``time_uniform`` and ``time_quadratic`` there.

    Args:
        schedule: The schedule.
        t_start: The first time.
        t_end: The last time.
        n: The number of steps.
        power: The exponent $p$ (any finite number).
    """
    t_start, t_end, n = check_grid_args(schedule, t_start, t_end, n)
    power = check_finite_number("power", power)
    lam = schedule.lambda_(torch.tensor([t_start, t_end], dtype=torch.float64))
    if power == 0.0:
        lam_grid = torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=torch.float64)
    else:
        # In log space: e^{-p lambda} over- or underflows for large |p lambda|.
        a, b = (-power * lam).tolist()
        shift = max(a, b)
        ramp = torch.linspace(math.exp(a - shift), math.exp(b - shift), n + 1, dtype=torch.float64)
        lam_grid = -(torch.log(ramp) + shift) / power
    t = schedule.inverse_lambda(lam_grid)
    t[0], t[-1] = t_start, t_end
    return t


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
        return exponential_lambda_times(schedule, t_start, t_end, n, 0.0)


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
        return exponential_lambda_times(schedule, t_start, t_end, n, 1.0 / self.rho)


class GivenTimes(TimeGrid):
    """A grid the user gives: :meth:`times` returns it whatever the arguments (a plan checks its length).

    Args:
        times: The times, strictly monotone (decreasing to sample).
        metadata: Anything to keep beside them (where they came from; written by :meth:`to_json`).
    """

    def __init__(self, times: Sequence[float] | Tensor, metadata: dict | None = None):
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
        self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return f"GivenTimes(n={self.values.numel() - 1})"

    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        return self.values.clone()

    def to_json(self, path: str | os.PathLike, **metadata) -> None:
        """Write ``{"times": [...], **metadata}`` to ``path`` (the format :meth:`from_json` reads).

        The times are written with 17 significant digits, so they read back bit for bit.
        """
        payload = {"times": self.values.tolist(), **self.metadata, **metadata}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> GivenTimes:
        """Read a grid written by :meth:`to_json` (or any JSON object with a ``"times"`` list).

        Every other key is kept in :attr:`metadata`.
        """
        payload = _read_json(path)
        if "times" not in payload:
            raise ValueError(f"{os.fspath(path)!r} has no \"times\" list (keys: {', '.join(payload) or 'none'}); "
                             "a table of noise levels (\"sigmas\") loads with diffode.integrators.load_grid")
        return cls(payload.pop("times"), payload)


def loglinear_interp(values: Sequence[float] | Tensor, m: int) -> Tensor:
    r"""Resample a decreasing positive table to ``m`` values, linearly in $\log$ over equal index steps.

    The interpolation the Align-Your-Steps paper gives for other step counts: place the table's
    entries at equal spacing on $[0, 1]$, interpolate $\log\sigma$ piecewise linearly, take ``m``
    equally spaced points. With ``m`` equal to the table's length it returns the table.

    Args:
        values: The table (at least 2 entries, all > 0).
        m: How many values to return (>= 2).
    """
    table = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    m = check_int("m", m, low=2)
    if table.numel() < 2 or not torch.isfinite(table).all() or (table <= 0).any():
        raise ValueError(f"a table of noise levels needs >= 2 finite entries > 0, got {table.tolist()}")
    logs = table.log()
    position = torch.linspace(0.0, 1.0, m, dtype=torch.float64) * (table.numel() - 1)
    left = position.floor().long().clamp(max=table.numel() - 2)
    frac = position - left
    out = torch.exp(logs[left] + frac * (logs[left + 1] - logs[left]))
    out[0], out[-1] = table[0], table[-1]
    return out


#: The optimised 10-step schedules of Align Your Steps: noise levels $\sigma/\alpha$ from the
#: noisiest to the cleanest (Sabour, Fidler, Kreis, *Align Your Steps: Optimizing Sampling Schedules
#: in Diffusion Models*, ICML 2024, arXiv:2404.14507, Table 3).
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "deepfloyd_if": (160.41, 8.081, 3.315, 1.885, 1.207, 0.785, 0.553, 0.293, 0.186, 0.030, 0.006),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}
# Published tables round to 3 decimals (SD's sigma_min 0.02917 is written 0.029): levels this far
# (in log sigma) beyond a schedule's range are clamped onto it rather than refused.
_TABLE_SLACK = 1e-2
AYS_SOURCE = "Sabour et al., Align Your Steps, arXiv:2404.14507, Table 3"


class SigmaTable(TimeGrid):
    r"""A grid given as noise levels $\tilde\sigma = \sigma/\alpha = e^{-\lambda}$ (EDM's and k-diffusion's sigmas).

    For ``n`` steps the table is resampled to ``n + 1`` levels by :func:`loglinear_interp`, each
    level becomes $\lambda = -\log\tilde\sigma$, and the schedule's ``inverse_lambda`` gives the time.

    Args:
        sigmas: The noise levels, noisiest first, all > 0.
        rescale: ``False``: use the levels as they are (they must lie in the schedule's range; levels
            up to 1% beyond it, the rounding of published tables, are clamped onto it; the plan's
            ``t_start`` and ``t_end`` are then ignored, as for :class:`GivenTimes`). ``True``:
            map $\log\tilde\sigma$ affinely so that the table's ends land on ``t_start`` and
            ``t_end``: the table's shape carried over to another model's range.
        source: Where the numbers come from (shown in ``repr`` and kept in JSON files).
    """

    def __init__(self, sigmas: Sequence[float] | Tensor, *, rescale: bool = False, source: str = ""):
        table = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
        loglinear_interp(table, 2)  # validates
        if not (table.diff() < 0).all():
            raise ValueError(f"a table of noise levels must decrease strictly (noisiest first), got {table.tolist()}")
        if not isinstance(rescale, bool):
            raise TypeError(f"rescale must be a bool, got {type(rescale).__name__}")
        self.sigmas, self.rescale, self.source = table, rescale, str(source)

    def __repr__(self) -> str:
        return f"SigmaTable(n={self.sigmas.numel() - 1}, rescale={self.rescale}" + \
            (f", source={self.source!r})" if self.source else ")")

    def levels(self, n: int) -> Tensor:
        """The ``n + 1`` noise levels of an ``n``-step grid (before any rescaling)."""
        return loglinear_interp(self.sigmas, check_int("n", n, low=1) + 1)

    def times(self, schedule: NoiseSchedule, t_start: float, t_end: float, n: int) -> Tensor:
        t_start, t_end, n = check_grid_args(schedule, t_start, t_end, n)
        levels = self.levels(n)
        lam = -levels.log()
        if self.rescale:
            ends = schedule.lambda_(torch.tensor([t_start, t_end], dtype=torch.float64))
            lam = ends[0] + (lam - lam[0]) * (ends[1] - ends[0]) / (lam[-1] - lam[0])
            t = schedule.inverse_lambda(lam)
            t[0], t[-1] = t_start, t_end
            return t
        lam_high_noise = float(schedule.lambda_(schedule.T))
        lam_low_noise = float(schedule.lambda_(schedule.t_min)) if schedule.t_min > 0 else math.inf
        slack = _TABLE_SLACK
        if float(lam.min()) < lam_high_noise - slack or float(lam.max()) > lam_low_noise + slack:
            raise ValueError(f"{self!r} spans noise levels sigma/alpha from {float(levels[0]):.4g} to "
                             f"{float(levels[-1]):.4g}, outside {schedule!r}, whose range is "
                             f"{math.exp(-lam_high_noise):.4g} to {math.exp(-lam_low_noise):.4g}; pass rescale=True "
                             "to map the table's ends onto t_start and t_end")
        return schedule.inverse_lambda(lam.clamp(lam_high_noise, lam_low_noise))


def _read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{os.fspath(path)!r} must hold a JSON object with \"times\" or \"sigmas\", "
                         f"got {type(payload).__name__}")
    return payload


def load_grid(path: str | os.PathLike) -> TimeGrid:
    """A grid from a JSON file: ``{"times": [...]}`` (a :class:`GivenTimes`) or ``{"sigmas": [...]}`` (a
    :class:`SigmaTable`; an optional ``"rescale"`` says whether to map its ends onto the plan's).

    ``diffode calibrate -o grid.json`` writes the first form; ``--grid grid.json`` and
    ``get_grid("grid.json")`` read both.
    """
    payload = _read_json(path)
    if "times" in payload:
        return GivenTimes.from_json(path)
    if "sigmas" in payload:
        return SigmaTable(payload["sigmas"], rescale=bool(payload.get("rescale", False)),
                          source=str(payload.get("source", os.fspath(path))))
    raise ValueError(f"{os.fspath(path)!r} has neither \"times\" nor \"sigmas\" (keys: {', '.join(payload) or 'none'})")


GRIDS = {"time_uniform": UniformTime, "logSNR": UniformLambda, "time_quadratic": TimeQuadratic, "karras": Karras}
# The Align-Your-Steps tables by name, their shape carried over to any schedule's range (rescale=True).
GRIDS.update({f"ays_{name}": functools.partial(SigmaTable, sigmas, rescale=True, source=AYS_SOURCE)
              for name, sigmas in AYS_SIGMAS.items()})


def get_grid(skip_type) -> TimeGrid:
    """A :class:`TimeGrid` from a name (``"time_uniform"``, ``"logSNR"``, ``"time_quadratic"``,
    ``"karras"``, ``"ays_sd15"``, ``"ays_sdxl"``, ``"ays_deepfloyd_if"``, ``"ays_svd"``), a JSON file
    (``"grid.json"``, see :func:`load_grid`), an instance, or a sequence of times."""
    if isinstance(skip_type, TimeGrid):
        return skip_type
    if isinstance(skip_type, os.PathLike) or (isinstance(skip_type, str) and skip_type.endswith(".json")):
        return load_grid(skip_type)
    if isinstance(skip_type, str):
        check_choice("skip_type", skip_type, GRIDS)
        return GRIDS[skip_type]()
    if isinstance(skip_type, (list, tuple, Tensor)) or hasattr(skip_type, "__array__"):
        return GivenTimes(skip_type)
    raise TypeError(f"skip_type must be a name, a TimeGrid or a sequence of times, got {type(skip_type).__name__}")
