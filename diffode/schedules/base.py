"""The noise-schedule protocol shared by every schedule.

A Gaussian diffusion path is ``x_t = alpha_t * x_0 + sigma_t * eps``. A schedule knows
``alpha_t`` and ``sigma_t`` (in log space), the half log-SNR
``lambda_t = log(alpha_t) - log(sigma_t)`` and its inverse, and the coefficients of the forward SDE
``dx = f(t) x dt + g(t) dW``.

Where times are checked against ``[t_min, T]``:

* **Host values are always checked.** :meth:`NoiseSchedule.points` and
  :meth:`~NoiseSchedule.point` compute in float64 on the host anyway, so they reject a NaN or
  out-of-range time for free, and snap a time that misses an end of the range by round-off (8
  float32 ulps relative, about 1e-6) to that end; every solver, grid and Python-number time
  argument (``Predictor.noise(x, 0.5)``, ``add_noise(x0, 0.5)``) goes through them or through
  :meth:`~NoiseSchedule.check_time`. The integrators' internal map
  :meth:`~NoiseSchedule.point_at_lambda` only rejects a NaN lambda or a non-finite point: an
  adaptive Runge--Kutta method may evaluate slightly past the end of its interval.
* **Device tensors are never checked implicitly.** The elementwise methods (``log_alpha``,
  ``alpha``, ``sigma``, ``lambda_``, ``inverse_lambda``, ``f``, ``g2``) and tensor time arguments of
  ``add_noise`` and ``Predictor.noise``/``data`` are hot paths that accept tensors on any device: a
  range check there would need a host-device synchronisation on every call. Outside ``[t_min, T]``
  they return whatever the formula gives (a linear extrapolation, NaN, an infinite lambda at
  ``t = 0``). Call :meth:`~NoiseSchedule.check_time` on a tensor to check it explicitly (one sync).
"""

from __future__ import annotations

import abc
import math
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import Number, as_time, check_choice, check_finite_number, expand_to

# Host times within this relative distance outside [t_min, T] are round-off, and are snapped to the
# end they miss. 8 float32 ulps (9.5e-7): a time computed in float32, or mapped from float32 values
# (a k-diffusion sigma grid lands at 0.00099999998 and 1.0000000025 for [0.001, 1]), is off by a few
# ulps; a time that means something else is off by far more (one step of a 1000-step grid is 1e-3).
# A zero t_min gets no slack, as t < 0 has no meaning.
_TIME_SLACK = 8 * torch.finfo(torch.float32).eps

__all__ = ["NoiseSchedule", "TimePoint", "VESchedule", "VPSchedule", "memoised"]

_V = TypeVar("_V")
_MEMOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MEMO_SIZE = 4096


def memoised(schedule: NoiseSchedule, key: Hashable, compute: Callable[[], _V]) -> _V:
    """``compute()``, memoised per schedule (held weakly) and ``key``.

    Host-side schedule work (a grid's points, the stage points of singlestep methods) costs dozens
    of small tensor operations; a sampler that runs the same grid again (the next batch, the next
    prompt) finds the result here. The key is completed with :meth:`NoiseSchedule.memo_token`, so a
    schedule whose values depend on a mode gets one table per mode. A schedule that cannot be
    weakly referenced or hashed is not memoised. Each schedule keeps at most 4096 entries.

    Args:
        schedule: The schedule the result belongs to.
        key: What the result depends on besides the schedule (hashable).
        compute: Computes the result; never returns ``None``.
    """
    try:
        table = _MEMOS.get(schedule)
        if table is None:
            table = _MEMOS[schedule] = {}
        key = (key, schedule.memo_token())
        value = table.get(key)
    except TypeError:  # not weakly referenceable or not hashable
        return compute()
    if value is None:
        if len(table) >= _MEMO_SIZE:
            table.clear()
        value = table[key] = compute()
    return value


@dataclass(frozen=True)
class TimePoint:
    """Schedule values at one time, as plain float64 Python numbers.

    The integrators precompute these on the host so that the sampling loop never does tensor
    arithmetic on schedule values.

    Attributes:
        t: The continuous time.
        lam: The half log-SNR $\\lambda_t$.
        alpha: $\\alpha_t$.
        sigma: $\\sigma_t$.
    """

    t: float
    lam: float
    alpha: float
    sigma: float


def _digits(dtype: torch.dtype) -> int:
    """Significant decimal digits of a floating dtype (integers: as many as float64)."""
    if not dtype.is_floating_point:
        return 17
    return max(int(-math.log10(torch.finfo(dtype).resolution)) + 1, 3)


class NoiseSchedule(abc.ABC):
    """Base class of all noise schedules.

    Subclasses implement :meth:`log_alpha` and :meth:`log_sigma` in numerically stable forms and
    :meth:`f` (the drift coefficient $f(t) = \\mathrm{d}\\log\\alpha_t/\\mathrm{d}t$). They override
    :meth:`inverse_lambda` when a closed form exists; the default bisects the monotone
    $\\lambda_t$ in float64.

    Every method accepts a Python number or a tensor of any shape and returns a tensor with the
    input tensor's dtype and device (Python numbers give float64 CPU tensors).

    Attributes:
        T: The largest time of the schedule (the noisy end), also available as :attr:`t_max`.
        t_min: The smallest time at which the schedule may be evaluated.
        default_t_end: The default end time of sampling (``1/N`` for discrete schedules).
    """

    T: float = 1.0
    t_min: float = 0.0

    @property
    def t_max(self) -> float:
        """The largest time of the schedule (alias of :attr:`T`)."""
        return self.T

    @property
    def default_t_end(self) -> float:
        """The default final time of sampling."""
        return 1e-3

    # -- alpha, sigma, lambda -------------------------------------------------------------------

    @abc.abstractmethod
    def log_alpha(self, t: Tensor | Number) -> Tensor:
        """$\\log\\alpha_t$."""

    @abc.abstractmethod
    def log_sigma(self, t: Tensor | Number) -> Tensor:
        """$\\log\\sigma_t$."""

    @abc.abstractmethod
    def f(self, t: Tensor | Number) -> Tensor:
        """Drift coefficient of the forward SDE, $f(t) = \\mathrm{d}\\log\\alpha_t/\\mathrm{d}t$."""

    def alpha(self, t: Tensor | Number) -> Tensor:
        """$\\alpha_t$, the scale of the data in $x_t$."""
        return namespace(t).exp(self.log_alpha(t))

    def sigma(self, t: Tensor | Number) -> Tensor:
        """$\\sigma_t$, the standard deviation of the noise in $x_t$."""
        return namespace(t).exp(self.log_sigma(t))

    def lambda_(self, t: Tensor | Number) -> Tensor:
        """Half log-SNR $\\lambda_t = \\log\\alpha_t - \\log\\sigma_t$, strictly decreasing in t."""
        return self.log_alpha(t) - self.log_sigma(t)

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        """The time t with $\\lambda_t$ = ``lam``; the default bisects in float64."""
        lam = as_time(lam)
        target = lam.detach().to(torch.float64)
        lo = torch.full_like(target, self.t_min)
        hi = torch.full_like(target, self.T)
        # lambda decreases in t: move lo up where lambda(mid) is still above the target.
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            above = self.lambda_(mid) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
            if torch.all(hi - lo <= 4 * torch.finfo(torch.float64).eps * hi.abs().clamp_min(1e-300)):
                break
        return (0.5 * (lo + hi)).to(lam.dtype)

    # -- SDE view --------------------------------------------------------------------------------

    def g2(self, t: Tensor | Number) -> Tensor:
        """Squared diffusion coefficient $g^2(t) = \\mathrm{d}\\sigma_t^2/\\mathrm{d}t - 2 f(t) \\sigma_t^2$."""
        t = as_time(t)
        return self.d_sigma2_dt(t) - 2.0 * self.f(t) * torch.exp(2.0 * self.log_sigma(t))

    def d_sigma2_dt(self, t: Tensor | Number) -> Tensor:
        """Time derivative of $\\sigma_t^2$ (by autograd unless a subclass gives a closed form)."""
        t = as_time(t)
        with torch.enable_grad():
            tt = t.detach().clone().requires_grad_(True)
            s2 = torch.exp(2.0 * self.log_sigma(tt))
            (grad,) = torch.autograd.grad(s2.sum(), tt)
        return grad

    def memo_token(self) -> Hashable:
        """What, besides a time, the values of :meth:`points` depend on (part of :func:`memoised` keys).

        ``None`` for a schedule fixed at construction; a schedule with a mode that changes its
        values (the compatibility layer's evaluation dtype) returns that mode.
        """
        return None

    def point(self, t: Number) -> TimePoint:
        """All schedule values at one time as Python floats (computed in float64)."""
        (p,) = self.points([t])
        return p

    def points(self, ts: Sequence[float] | Tensor) -> list[TimePoint]:
        """Schedule values at several times, computed in one float64 pass on the host.

        A time that misses an end of ``[t_min, T]`` by round-off (see :meth:`check_time`) is taken
        as that end.

        Raises:
            ValueError: If a time is NaN or outside ``[t_min, T]``, or so close to 0 that
                $\\lambda_t$ overflows in float64.
        """
        t = torch.as_tensor(ts, dtype=torch.float64).reshape(-1).cpu()
        self._check_host_times("t", t.tolist())
        points = self._points(t.clamp(self.t_min, self.T))
        for p in points:
            # At t > 0 lambda is finite; it overflows only when sigma_t underflows in float64
            # (t around 1e-300 and below), where an infinite lambda would be a silently wrong value.
            if p.t > 0 and not math.isfinite(p.lam):
                raise ValueError(f"t={p.t!r} is too close to 0 for {self!r}: sigma_t underflows in float64 and "
                                 "lambda_t is not finite; use a larger time")
        return points

    def _points(self, t: Tensor) -> list[TimePoint]:
        log_alpha, log_sigma = self.log_alpha(t), self.log_sigma(t)
        rows = zip(t.tolist(), (log_alpha - log_sigma).tolist(), log_alpha.exp().tolist(), log_sigma.exp().tolist())
        return [TimePoint(t=a, lam=b, alpha=c, sigma=d) for a, b, c, d in rows]

    def point_at_lambda(self, lam: float) -> TimePoint:
        """The :class:`TimePoint` whose half log-SNR is ``lam``.

        This is the integrators' map from $\\lambda$ to time. Unlike :meth:`points` it does not
        confine the time to ``[t_min, T]``: adaptive Runge--Kutta stages (the reference solver's)
        may step slightly past the end of the interval, where the schedule's formulas extend.

        Raises:
            ValueError: If ``lam`` is NaN, or the schedule has no finite point there.
        """
        lam = float(lam)
        if math.isnan(lam):
            raise ValueError(f"point_at_lambda needs a half log-SNR, got lam=nan for {self!r}")
        t = self.inverse_lambda(torch.tensor(lam, dtype=torch.float64))
        (p,) = self._points(t.reshape(1))
        if not all(math.isfinite(v) for v in (p.t, p.alpha, p.sigma)):
            raise ValueError(f"lam={lam!r} lies outside the range of {self!r} (t={p.t!r}, alpha={p.alpha!r}, "
                             f"sigma={p.sigma!r})")
        # Keep the lambda that was asked for: the integrators' step sizes are defined in lambda.
        return TimePoint(t=p.t, lam=lam, alpha=p.alpha, sigma=p.sigma)

    def array_point(self, lam) -> TimePoint:
        """The :class:`TimePoint` at half log-SNR ``lam`` given as an array (a JAX scalar in a compiled loop).

        :meth:`point_at_lambda` for values that stay on the device: the same formulas
        (:meth:`inverse_lambda`, :meth:`alpha`, :meth:`sigma`), with no checks, the fields arrays.
        """
        t = self.inverse_lambda(lam)
        xp = namespace(t)
        # exp(log alpha), exp(log sigma) as in :meth:`points`, so both paths agree to the last bit.
        return TimePoint(t=t, lam=lam, alpha=xp.exp(self.log_alpha(t)), sigma=xp.exp(self.log_sigma(t)))

    def add_noise(self, x0: Tensor, t: Tensor | Number, noise: Tensor | None = None) -> Tensor:
        """Sample $x_t = \\alpha_t x_0 + \\sigma_t\\,\\epsilon$ (``noise`` is drawn if not given).

        ``t`` may be a number (checked against ``[t_min, T]``) or a tensor of shape ``(B,)`` (not
        checked, to keep this free of host-device synchronisation; see :meth:`check_time`).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0, {tuple(x0.shape)}, got {tuple(noise.shape)}")
        if not isinstance(t, Tensor):
            t = self.check_time("t", t)
        t = as_time(t).to(x0.device)
        alpha_t = expand_to(self.alpha(t).to(x0.dtype), x0)
        sigma_t = expand_to(self.sigma(t).to(x0.dtype), x0)
        return alpha_t * x0 + sigma_t * noise

    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior at ``T`` (1 for VP schedules)."""
        return float(self.sigma(self.T))

    def prior_sample(self, shape, *, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """Draw $x_T$ from the prior $\\mathcal N(0, \\sigma_{prior}^2 I)$."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z * self.prior_std()

    def sde(self, x: Tensor, t: Tensor | Number) -> tuple[Tensor, Tensor]:
        """The forward SDE: returns the drift $f(t)\\,x$ and the diffusion $g(t)$."""
        t = as_time(t).to(x.device)
        return expand_to(self.f(t).to(x.dtype), x) * x, torch.sqrt(self.g2(t)).to(x.dtype)

    def probability_flow_drift(self, x: Tensor, t: Tensor | Number, eps: Tensor) -> Tensor:
        """Drift of the probability-flow ODE, $f x + g^2/(2\\sigma_t)\\,\\hat\\epsilon$."""
        t = as_time(t).to(x.device)
        f = expand_to(self.f(t).to(x.dtype), x)
        c = expand_to((self.g2(t) / (2.0 * self.sigma(t))).to(x.dtype), x)
        return f * x + c * eps

    def reverse_sde_drift(self, x: Tensor, t: Tensor | Number, eps: Tensor) -> Tensor:
        """Drift of the reverse-time SDE, $f x + g^2/\\sigma_t\\,\\hat\\epsilon$ (score $=-\\hat\\epsilon/\\sigma_t$)."""
        t = as_time(t).to(x.device)
        f = expand_to(self.f(t).to(x.dtype), x)
        c = expand_to((self.g2(t) / self.sigma(t)).to(x.dtype), x)
        return f * x + c * eps

    def _time_bounds(self, low: float) -> tuple[float, float]:
        """The widest times accepted for ``[low, T]``: the range widened by the round-off slack."""
        return low - _TIME_SLACK * abs(low), self.T + _TIME_SLACK * abs(self.T)

    def _host_time_ok(self, t: float, low: float | None = None) -> bool:
        lowest, highest = self._time_bounds(self.t_min if low is None else low)
        return lowest <= t <= highest

    def _check_host_times(self, name: str, times: list[float]) -> None:
        for i, t in enumerate(times):
            if not self._host_time_ok(t):
                where = name if len(times) == 1 else f"{name}[{i}]"
                raise ValueError(f"{where} must lie in [{self.t_min:g}, {self.T:g}] for {self!r}, got {t!r}")

    def check_time(self, name: str, t: Tensor | Number, *, low: float | None = None) -> Tensor | float:
        """Validate a time argument against ``[low, T]`` (``low`` defaults to :attr:`t_min`).

        Public entry points call this on the times a user gives them. A tensor is checked elementwise,
        which costs one host-device synchronisation: never call it inside a sampling loop (see the
        module docstring for where diffode checks times and why the elementwise methods do not).

        A time that misses an end of the range by round-off, a relative $8\\cdot 2^{-23}$ (a few
        float32 ulps; times computed in float32 or from float32 noise levels land there), is
        snapped to that end.

        Args:
            name: The argument's name, for the error message.
            t: A number or a tensor of times.
            low: The smallest allowed time.

        Returns:
            ``t``, with the times within round-off outside the range snapped to its ends: a number
            comes back as a float; a tensor comes back itself when no time needed snapping, else
            as a new tensor.

        Raises:
            ValueError: If ``t`` is NaN or infinite or lies outside the range.
            TypeError: If ``t`` is neither a real number nor a tensor.
        """
        low = self.t_min if low is None else float(low)
        if isinstance(t, Tensor):
            values = t.detach()
            if values.is_complex() or values.dtype == torch.bool:
                raise TypeError(f"{name} must be a real tensor of times, got dtype {t.dtype}")
            values = values.to(torch.float64)
            lowest, highest = self._time_bounds(low)
            bad = ~torch.isfinite(values) | (values < lowest) | (values > highest)
            outside = (values < low) | (values > self.T)
            any_bad, any_outside = torch.stack([bad.any(), outside.any()]).tolist()  # one synchronisation
            if any_bad:
                index = tuple(int(i) for i in bad.nonzero()[0])
                where = f"{name}[{', '.join(map(str, index))}]" if index else name
                value = t.detach()[index].item()
                # Show the value at its own precision: a float32 1.3 is not 1.2999999523162842.
                shown = repr(value) if t.dtype == torch.float64 else f"{value:.{_digits(t.dtype)}g}"
                raise ValueError(f"{name} must lie in [{low:g}, {self.T:g}] for {self!r}; {where} = {shown}")
            return t.clamp(low, self.T) if any_outside else t
        value = check_finite_number(name, t)
        if not self._host_time_ok(value, low):
            raise ValueError(f"{name} must lie in [{low:g}, {self.T:g}] for {self!r}, got {value!r}")
        return min(max(value, low), self.T)

    def check_interval(self, t_start: Number, t_end: Number, *, towards: str = "data") -> tuple[float, float]:
        r"""Validate the start and end times of a solve, as every sampling front end does.

        Both times must lie in ``[t_min, T]`` and be > 0 ($\lambda$ is infinite at $t = 0$), and the
        solve must run in the direction asked: towards the data (sampling, ``t_start > t_end``) or
        towards the noise (inversion, ``t_start < t_end``).

        Args:
            t_start: The start time.
            t_end: The end time.
            towards: ``"data"`` (sampling) or ``"noise"`` (inversion).

        Returns:
            ``(t_start, t_end)`` as floats.

        Raises:
            ValueError: If a time is out of range or not finite, or the direction is the wrong one.
        """
        check_choice("towards", towards, ("data", "noise"))
        t_start = self.check_time("t_start", t_start)
        t_end = self.check_time("t_end", t_end)
        for name, value in (("t_start", t_start), ("t_end", t_end)):
            if value <= 0.0:
                raise ValueError(f"{name} must be > 0 (lambda is infinite at t = 0), got {value}")
        if towards == "data" and not t_start > t_end:
            raise ValueError(f"sampling needs t_start > t_end, got t_start={t_start}, t_end={t_end}; "
                             "use inverse() to go from data to noise")
        if towards == "noise" and not t_start < t_end:
            raise ValueError(f"inverse needs t_start < t_end, got t_start={t_start}, t_end={t_end}")
        return t_start, t_end


class VPSchedule(NoiseSchedule):
    """A variance-preserving schedule: $\\alpha_t^2 + \\sigma_t^2 = 1$.

    Subclasses implement :meth:`log_alpha` and :meth:`f` only; $\\sigma_t$ and
    $g^2(t) = -2 f(t)$ follow.
    """

    def log_sigma(self, t: Tensor | Number) -> Tensor:
        # sigma^2 = 1 - alpha^2 = -expm1(2 log alpha): exact near t = 0 where alpha -> 1.
        xp = namespace(t)
        return 0.5 * xp.log(-xp.expm1(2.0 * self.log_alpha(t)))

    def g2(self, t: Tensor | Number) -> Tensor:
        return -2.0 * self.f(t)

    def d_sigma2_dt(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return -2.0 * self.f(t) * torch.exp(2.0 * self.log_alpha(t))

    def prior_std(self) -> float:
        return 1.0

    @staticmethod
    def log_alpha_from_lambda(lam: Tensor) -> Tensor:
        """$\\log\\alpha$ of any VP path at half log-SNR ``lam``: $\\alpha^2 = 1/(1 + e^{-2\\lambda})$
        (the path's time variable does not enter)."""
        xp = namespace(lam)
        return -0.5 * xp.logaddexp(xp.zeros_like(lam), -2.0 * lam)


class VESchedule(NoiseSchedule):
    """A variance-exploding schedule: $\\alpha_t = 1$, so $\\lambda_t = -\\log\\sigma_t$.

    Subclasses implement :meth:`log_sigma` and :meth:`d_sigma2_dt`; $f = 0$ and
    $g^2(t) = \\mathrm{d}\\sigma_t^2/\\mathrm{d}t$ follow. The prior is $\\mathcal N(0, \\sigma_T^2 I)$.
    """

    def log_alpha(self, t: Tensor | Number) -> Tensor:
        return namespace(t).zeros_like(as_time(t))

    def f(self, t: Tensor | Number) -> Tensor:
        return torch.zeros_like(as_time(t))

    def g2(self, t: Tensor | Number) -> Tensor:
        return self.d_sigma2_dt(t)

    def lambda_(self, t: Tensor | Number) -> Tensor:
        return -self.log_sigma(t)
