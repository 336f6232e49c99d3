r"""The ground truth: the probability-flow ODE solved with torchdiffeq's ``dopri5`` (RK45) in float64.

The ODE is integrated in the half log-SNR $\lambda$ for the scaled state $y = x/\alpha$:
$$\frac{\mathrm{d}y}{\mathrm{d}\lambda} = -e^{-\lambda}\,\hat\epsilon(\alpha_\lambda y, t_\lambda).$$
This is the exact change of variables behind DPM-Solver, and it is why $\lambda$ is the right
variable for an accurate reference: in $t$ the drift carries the factor $g^2(t)/(2\sigma_t)$, which
grows like $t^{-1/2}$ as $t \to 0$ on VP schedules, so an adaptive Runge--Kutta method crawls and
loses accuracy there; in $\lambda$ the vector field is smooth and its factor $e^{-\lambda}$ vanishes
as $t \to 0$. The linear part of the ODE is absorbed exactly by the scaling, so the tolerances act on
the model-driven part alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from diffode._utils import Number, as_time, check_finite_number
from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["ReferenceSolution", "integrate_in_lambda", "lambda_rhs", "solve_reference"]


@dataclass
class ReferenceSolution:
    """The result of :func:`solve_reference`.

    Attributes:
        x: The state at ``t_end`` (float64).
        xs: The states at the requested ``times`` (float64), stacked along a new first dimension,
            or ``None`` when no times were requested.
        nfe: The number of model evaluations used.
    """

    x: Tensor
    xs: Tensor | None
    nfe: int


def solve_reference(model: Predictor, x: Tensor, t_start: Number, t_end: Number, *,
                    times: Sequence[float] | Tensor | None = None, rtol: float = 1e-10, atol: float = 1e-10,
                    method: str = "dopri5") -> ReferenceSolution:
    """Solve the probability-flow ODE of ``model`` from ``t_start`` to ``t_end`` to high accuracy.

    Works in both directions (sampling: ``t_start > t_end``; inversion: ``t_start < t_end``).
    Computation is in float64: the model must accept float64 inputs.

    Args:
        model: The model (a :class:`~diffode.models.Predictor`).
        x: The state at ``t_start``.
        t_start: The start time.
        t_end: The end time.
        times: Optional intermediate times (monotone from ``t_start`` to ``t_end``) at which to
            record the state.
        rtol: Relative tolerance of the adaptive solver.
        atol: Absolute tolerance (on the scaled state $x/\\alpha$).
        method: Any torchdiffeq adaptive method; ``"dopri5"`` (RK45) by default.

    Returns:
        A :class:`ReferenceSolution` with the end state, the states at ``times`` and the NFE.
    """
    schedule = model.schedule
    t_start = check_finite_number("t_start", t_start)
    t_end = check_finite_number("t_end", t_end)
    rtol = check_finite_number("rtol", rtol, positive=True)
    atol = check_finite_number("atol", atol, positive=True)
    if t_start == t_end:
        return ReferenceSolution(x.to(torch.float64).clone(), None, 0)
    extra = [] if times is None else [float(v) for v in as_time(torch.as_tensor(times)).reshape(-1).tolist()]
    all_t = [t_start, *extra, t_end]
    lams = [p.lam for p in schedule.points(all_t)]
    diffs = torch.tensor(lams, dtype=torch.float64).diff()
    if not ((diffs > 0).all() or (diffs < 0).all()):
        raise ValueError("times must lie strictly between t_start and t_end, in order")
    xs, nfe = integrate_in_lambda(model, x, lams, schedule.point_at_lambda, rtol=rtol, atol=atol, method=method)
    return ReferenceSolution(x=xs[-1], xs=xs[1:-1] if extra else None, nfe=nfe)


_ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def odeint_options(method: str, lam_from: float, lam_to: float) -> dict | None:
    """torchdiffeq options for an integration in $\\lambda$: an adaptive method starts from a small step.

    Where the vector field is tiny at the start ($t \\sim 10^{-5}$ on a VP path), the solver's own
    first-step guess jumps far past the end, where $\\alpha$ underflows.
    """
    return {"first_step": 1e-3 * abs(lam_to - lam_from)} if method in _ADAPTIVE_METHODS else None


def lambda_rhs(model: Predictor, point_at: Callable[[float], TimePoint]) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The probability-flow ODE in $\lambda$ for $y = x/\alpha$: $(\lambda, y) \mapsto -e^{-\lambda}\hat\epsilon(\alpha y)$.

    The one right-hand side behind :func:`integrate_in_lambda` (the ground truth) and the
    torchdiffeq bridge (:class:`~diffode.integrators.torchdiffeq_bridge.Torchdiffeq`). Each call is
    one model evaluation, made through ``model.predict``.

    Args:
        model: Gives the noise prediction through ``model.predict(x, point, "noise")``.
        point_at: Maps a half log-SNR to its :class:`~diffode.schedules.TimePoint`.
    """

    def rhs(lam: Tensor, y: Tensor) -> Tensor:
        p = point_at(float(lam))
        eps = model.predict(p.alpha * y, p, "noise")
        return eps * (-p.sigma / p.alpha)  # -exp(-lambda) = -sigma/alpha

    return rhs


def integrate_in_lambda(model: Predictor, x: Tensor, lams: Sequence[float], point_at: Callable[[float], TimePoint], *,
                        rtol: float = 1e-10, atol: float = 1e-10, method: str = "dopri5") -> tuple[Tensor, int]:
    r"""Solve $\mathrm dy/\mathrm d\lambda = -e^{-\lambda}\hat\epsilon(\alpha y)$, $y = x/\alpha$, through ``lams``.

    The one integration behind :func:`solve_reference` (where ``point_at`` is the schedule's
    ``point_at_lambda``) and :func:`diffode.study.continue_in_lambda` (a VP path followed past the
    schedule's last time, where $\alpha$ and $\sigma$ are functions of $\lambda$ alone); its
    right-hand side is :func:`lambda_rhs`.

    Args:
        model: Gives the noise prediction through ``model.predict(x, point, "noise")``.
        x: The state at ``lams[0]``.
        lams: Monotone half log-SNR values; the first is the start.
        point_at: Maps a half log-SNR to its :class:`~diffode.schedules.TimePoint`.
        rtol: Relative tolerance.
        atol: Absolute tolerance (on $y$).
        method: A torchdiffeq adaptive method.

    Returns:
        The float64 states at every entry of ``lams`` (stacked along a new first dimension) and the
        number of model evaluations.
    """
    nfe = 0
    field = lambda_rhs(model, point_at)

    def rhs(lam: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return field(lam, y)

    points = [point_at(lam) for lam in lams]
    options = odeint_options(method, lams[0], lams[-1])
    ys = odeint(rhs, x.to(torch.float64) / points[0].alpha, torch.tensor(lams, dtype=torch.float64), rtol=rtol,
                atol=atol, method=method, options=options)
    alphas = torch.tensor([p.alpha for p in points], dtype=torch.float64, device=x.device)
    return ys * alphas.reshape(-1, *([1] * x.ndim)), nfe
