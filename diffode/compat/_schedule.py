r"""``NoiseScheduleVP`` of the reference DPM-Solver file, and its view as a diffode schedule.

The reference computes every schedule value with tensors in the dtype of the time tensor (the torch
default dtype for its time grids) and with the plain formulas
$\sigma_t = \sqrt{1 - e^{2\log\alpha_t}}$, $\lambda_t = \log\alpha_t - \tfrac12\log(1 - e^{2\log\alpha_t})$.
In float32 near $t = 10^{-3}$ those formulas lose about three digits; to give the same samples, the
compat layer evaluates them exactly so (:class:`ReferenceSchedule`) and hands the integrators the
resulting numbers, while the interpolation itself is diffode's (:class:`~diffode.schedules.DiscreteVP`,
:class:`~diffode.schedules.LinearVP`, :class:`~diffode.schedules.CosineVP`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from diffode._namespace import is_jax_array, namespace
from diffode._utils import as_time
from diffode.schedules.base import TimePoint, VPSchedule
from diffode.schedules.vp import CosineVP, DiscreteVP, LinearVP, clip_log_alphas

__all__ = ["NoiseScheduleVP", "ReferenceSchedule", "expand_dims", "interpolate_fn", "schedule_view"]

SCHEDULES = ("discrete", "linear", "cosine")
COSINE_S = 0.008
COSINE_T = 0.9946


def _tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value if value.is_floating_point() else value.to(torch.get_default_dtype())
    try:
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(value).__name__}") from None


class NoiseScheduleVP:
    r"""The VP noise schedule of the reference DPM-Solver, with its attributes and methods.

    ``'discrete'``: $\log\alpha$ at $t_n = (n+1)/N$ from ``betas``
    ($\tfrac12\sum_{i\le n}\log(1-\beta_i)$) or ``alphas_cumprod`` ($\tfrac12\log\bar\alpha_n$),
    interpolated piecewise-linearly by :class:`~diffode.schedules.DiscreteVP`; trailing steps with
    $\lambda < -5.1$ are dropped and the rest re-spread over $(0, 1]$ (:meth:`numerical_clip_alpha`).
    ``'linear'``: the VP SDE with $\beta(t) = \beta_0 + t(\beta_1-\beta_0)$ (:class:`~diffode.schedules.LinearVP`).
    ``'cosine'``: improved DDPM's cosine schedule truncated at ``T = 0.9946``
    (:class:`~diffode.schedules.CosineVP`; the v2 generation's only, the current one rejects it).

    Args:
        schedule: ``'discrete'``, ``'linear'`` or ``'cosine'``.
        betas: The training betas of a discrete schedule (a 1-D tensor).
        alphas_cumprod: Or their cumulative products $\bar\alpha_n$ (used when ``betas`` is None).
        continuous_beta_0: $\beta_0$ of the linear schedule.
        continuous_beta_1: $\beta_1$ of the linear schedule.
        dtype: The dtype of ``t_array`` and ``log_alpha_array`` (discrete only), float32 as in the
            current generation; the v2 generation kept the dtype of its input instead.

    Attributes:
        schedule: The schedule name.
        T: The noisy end of the time axis (1, or 0.9946 for cosine).
        total_N: The number of discrete steps (after clipping), 1000 for continuous schedules.
        t_array: ``(1, N)`` tensor of the knot times (discrete only).
        log_alpha_array: ``(1, N)`` tensor of $\log\alpha$ at the knots (discrete only).
        native: The diffode schedule doing the work.
        diffode: This schedule as a diffode :class:`~diffode.schedules.NoiseSchedule` with the
            reference's arithmetic (what the compat solvers integrate with).
    """

    def __init__(self, schedule: str = 'discrete', betas: Tensor | None = None, alphas_cumprod: Tensor | None = None,
                 continuous_beta_0: float = 0.1, continuous_beta_1: float = 20., dtype: torch.dtype = torch.float32):
        if schedule not in SCHEDULES:
            raise ValueError(f"Unsupported noise schedule {schedule!r}; expected one of 'discrete', 'linear', 'cosine'")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.schedule = schedule
        self.dtype = dtype
        if schedule == 'discrete':
            if betas is not None:
                log_alphas = 0.5 * torch.log(1 - _tensor(betas, "betas")).cumsum(dim=0)
            elif alphas_cumprod is not None:
                log_alphas = 0.5 * torch.log(_tensor(alphas_cumprod, "alphas_cumprod"))
            else:
                raise ValueError("schedule='discrete' needs betas= or alphas_cumprod=")
            if log_alphas.ndim != 1 or log_alphas.numel() < 2:
                raise ValueError("betas / alphas_cumprod must be 1-D with at least 2 entries, "
                                 f"got shape {tuple(log_alphas.shape)}")
            log_alphas = self.numerical_clip_alpha(log_alphas)
            self.T = 1.
            self.log_alpha_array = log_alphas.reshape((1, -1)).to(dtype=dtype)
            self.total_N = self.log_alpha_array.shape[1]
            self.t_array = torch.linspace(0., 1., self.total_N + 1)[1:].reshape((1, -1)).to(dtype=dtype)
            # The knots' log alpha reach DiscreteVP unchanged (exp then log round-trips in float64).
            alphas_cumprod64 = torch.exp(2.0 * self.log_alpha_array[0].detach().to("cpu", torch.float64))
            self.native = DiscreteVP(alphas_cumprod=alphas_cumprod64, clip_lambda=None)
        else:
            self.total_N = 1000
            self.beta_0 = continuous_beta_0
            self.beta_1 = continuous_beta_1
            self.cosine_s = COSINE_S
            self.cosine_beta_max = 999.
            self.cosine_t_max = (math.atan(self.cosine_beta_max * (1. + self.cosine_s) / math.pi)
                                 * 2. * (1. + self.cosine_s) / math.pi - self.cosine_s)
            self.cosine_log_alpha_0 = math.log(math.cos(self.cosine_s / (1. + self.cosine_s) * math.pi / 2.))
            if schedule == 'cosine':
                self.T = COSINE_T
                self.native = CosineVP(s=COSINE_S, T=COSINE_T)
            else:
                self.T = 1.
                self.native = LinearVP(continuous_beta_0, continuous_beta_1)
        self.diffode = ReferenceSchedule(self)

    def __repr__(self) -> str:
        return f"NoiseScheduleVP({self.schedule!r}, total_N={self.total_N}, T={self.T})"

    @staticmethod
    def numerical_clip_alpha(log_alphas: Tensor, clipped_lambda: float = -5.1) -> Tensor:
        """Drop the trailing entries whose half log-SNR is below ``clipped_lambda`` (for cosine-beta schedules)."""
        return clip_log_alphas(log_alphas, clipped_lambda)

    def _discrete_time(self, t: Tensor) -> Tensor:
        if is_jax_array(t):  # the JAX reference keeps the dtype of t
            return t.reshape(-1)
        # The reference concatenates t with float arrays, which promotes to the wider dtype.
        return t.reshape(-1).to(torch.promote_types(t.dtype, self.dtype))

    def marginal_log_mean_coeff(self, t: Tensor) -> Tensor:
        r"""$\log\alpha_t$ (shape ``(n,)`` for discrete schedules, the shape of ``t`` otherwise)."""
        t = as_time(t)
        if self.schedule == 'discrete':
            return self.native.log_alpha(self._discrete_time(t))
        return self.native.log_alpha(t)

    def marginal_alpha(self, t: Tensor) -> Tensor:
        r"""$\alpha_t$."""
        return namespace(t).exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: Tensor) -> Tensor:
        r"""$\sigma_t = \sqrt{1 - \alpha_t^2}$ (the reference's formula)."""
        xp = namespace(t)
        return xp.sqrt(1. - xp.exp(2. * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: Tensor) -> Tensor:
        r"""$\lambda_t = \log\alpha_t - \log\sigma_t$ (the reference's formula)."""
        xp = namespace(t)
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * xp.log(1. - xp.exp(2. * log_mean_coeff))
        return log_mean_coeff - log_std

    def inverse_lambda(self, lamb: Tensor) -> Tensor:
        r"""The time $t$ with $\lambda_t$ = ``lamb`` (exact for the piecewise-linear discrete schedule)."""
        lamb = as_time(lamb)
        if self.schedule == 'discrete':
            return self.native.inverse_lambda(self._discrete_time(lamb))
        # The reference's continuous formulas broadcast against a (1,) tensor.
        return self.native.inverse_lambda(lamb).reshape(namespace(lamb).broadcast_shapes(tuple(lamb.shape), (1,)))


class ReferenceSchedule(VPSchedule):
    """A reference-style schedule object seen as a diffode :class:`~diffode.schedules.NoiseSchedule`.

    Wraps anything with the reference's ``NoiseScheduleVP`` interface (``marginal_log_mean_coeff``,
    ``inverse_lambda``, ``T``, ``total_N``, ``schedule``). The :class:`~diffode.schedules.TimePoint`
    values the integrators use are computed with the reference's formulas in :attr:`eval_dtype`, the
    dtype the reference would use for the same times (the torch default dtype unless a solver sets
    another with :meth:`evaluating_in`).

    Args:
        ns: The reference-style schedule.

    Attributes:
        ns: The wrapped schedule.
        N: The number of discrete steps (discrete schedules only; selects the ``1000 (t - 1/N)``
            time input of the model wrapper).
    """

    def __init__(self, ns: Any):
        for name in ("marginal_log_mean_coeff", "inverse_lambda", "T", "total_N", "schedule"):
            if not hasattr(ns, name):
                raise TypeError(f"noise_schedule must behave like NoiseScheduleVP; {type(ns).__name__} has no {name!r}")
        self.ns = ns
        self.T = float(ns.T)
        self.t_min = 0.0
        self.time_dtype: torch.dtype | None = None
        if ns.schedule == 'discrete':
            self.N = int(ns.total_N)

    def __repr__(self) -> str:
        return f"ReferenceSchedule({self.ns!r})"

    @property
    def default_t_end(self) -> float:
        return 1.0 / self.ns.total_N

    @property
    def eval_dtype(self) -> torch.dtype:
        """The dtype schedule values are computed in (see :meth:`evaluating_in`)."""
        return self.time_dtype or torch.get_default_dtype()

    def memo_token(self) -> torch.dtype:
        return self.eval_dtype

    @contextlib.contextmanager
    def evaluating_in(self, dtype: torch.dtype) -> Iterator[ReferenceSchedule]:
        """Compute time points in ``dtype`` inside the ``with`` block."""
        previous, self.time_dtype = self.time_dtype, dtype
        try:
            yield self
        finally:
            self.time_dtype = previous

    def log_alpha(self, t: Tensor | float) -> Tensor:
        t = as_time(t)
        return self.ns.marginal_log_mean_coeff(t).reshape(t.shape)

    def log_sigma(self, t: Tensor | float) -> Tensor:
        return 0.5 * torch.log(1. - torch.exp(2. * self.log_alpha(t)))

    def f(self, t: Tensor | float) -> Tensor:
        native = getattr(self.ns, "native", None)
        if native is not None:
            return native.f(t)
        t = as_time(t)
        with torch.enable_grad():
            tt = t.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_alpha(tt).sum(), tt)
        return grad

    def inverse_lambda(self, lam: Tensor | float) -> Tensor:
        lam = as_time(lam)
        return self.ns.inverse_lambda(lam).reshape(lam.shape)

    def points(self, ts) -> list[TimePoint]:
        t = torch.as_tensor(ts, dtype=torch.float64).reshape(-1).cpu().to(self.eval_dtype)
        log_alpha = self.ns.marginal_log_mean_coeff(t).reshape(-1)
        one_minus = 1. - torch.exp(2. * log_alpha)
        lam = log_alpha - 0.5 * torch.log(one_minus)
        rows = zip(t.tolist(), lam.tolist(), torch.exp(log_alpha).tolist(), torch.sqrt(one_minus).tolist())
        return [TimePoint(t=a, lam=b, alpha=c, sigma=d) for a, b, c, d in rows]

    def point_at_lambda(self, lam: float) -> TimePoint:
        t = self.ns.inverse_lambda(torch.tensor(float(lam), dtype=self.eval_dtype))
        (p,) = self.points(t.reshape(-1)[:1])
        # The reference steps to lambda_s + r h exactly and takes alpha, sigma at the inverted time.
        return TimePoint(t=p.t, lam=float(lam), alpha=p.alpha, sigma=p.sigma)


def schedule_view(noise_schedule: Any) -> ReferenceSchedule:
    """The :class:`ReferenceSchedule` of a ``NoiseScheduleVP`` (or of any object with its interface)."""
    if isinstance(noise_schedule, NoiseScheduleVP):
        return noise_schedule.diffode
    if isinstance(noise_schedule, ReferenceSchedule):
        return noise_schedule
    return ReferenceSchedule(noise_schedule)


def interpolate_fn(x: Tensor, xp: Tensor, yp: Tensor) -> Tensor:
    """Piecewise-linear interpolation per channel, extrapolating with the end segments (the reference's helper).

    Args:
        x: ``(N, C)`` query points.
        xp: ``(C, K)`` increasing knots (K >= 2).
        yp: ``(C, K)`` values at the knots.

    Returns:
        ``(N, C)`` interpolated values.
    """
    k = xp.shape[1]
    if k < 2:
        raise ValueError(f"interpolate_fn needs at least 2 knots, got {k}")
    query = x.transpose(0, 1).contiguous()
    idx = torch.searchsorted(xp.contiguous(), query).clamp(1, k - 1)
    x0, x1 = torch.gather(xp, 1, idx - 1), torch.gather(xp, 1, idx)
    y0, y1 = torch.gather(yp, 1, idx - 1), torch.gather(yp, 1, idx)
    return (y0 + (query - x0) * (y1 - y0) / (x1 - x0)).transpose(0, 1)


def expand_dims(v: Tensor, dims: int) -> Tensor:
    """Append ``dims - 1`` singleton dimensions to ``v`` (the reference's helper)."""
    return v[(...,) + (None,) * (dims - 1)]
