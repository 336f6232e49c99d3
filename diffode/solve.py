"""The sampling loop: one driver for fixed grids and one for adaptive steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffode.controllers import AdaptiveController
from diffode.integrators.base import Integrator
from diffode.models.predictor import Predictor

__all__ = ["Solution", "solve", "solve_adaptive"]


@dataclass
class Solution:
    """The result of a solve.

    Attributes:
        x: The final state.
        times: The times the solution passed through (the grid, or the accepted adaptive steps).
        nfe: The exact number of model evaluations.
        intermediates: Every state on ``times`` (the start included) when asked for, else ``None``.
        n_accepted: Accepted steps.
        n_rejected: Rejected steps (adaptive solves only).
    """

    x: Tensor
    times: list[float]
    nfe: int
    intermediates: list[Tensor] | None = None
    n_accepted: int = 0
    n_rejected: int = 0
    lams: list[float] = field(default_factory=list)


def solve(model: Predictor, x: Tensor, integrator: Integrator, times: Sequence[float] | Tensor, *,
          orders: Sequence[int] | None = None, lower_order_final: bool = False,
          correcting_xt_fn: Callable | None = None, return_intermediate: bool = False) -> Solution:
    """Integrate the probability-flow ODE of ``model`` through the given times.

    Every schedule value and step coefficient is a Python float computed on the host before or
    between steps, so the loop issues tensor operations only on ``x`` and the model outputs, and never
    waits for the device.

    Args:
        model: The :class:`~diffode.models.Predictor`.
        x: The state at ``times[0]``.
        integrator: Any fixed-grid :class:`~diffode.integrators.Integrator`.
        times: The grid, monotone (decreasing to sample, increasing to invert).
        orders: The order of each step (default: the integrator's :meth:`step_orders`).
        lower_order_final: Passed to :meth:`step_orders` when ``orders`` is not given.
        correcting_xt_fn: Called as ``fn(x, t, step)`` after each step; returns the corrected x.
        return_intermediate: Keep every state on the grid.

    Returns:
        A :class:`Solution`.
    """
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1).cpu()
    points = model.schedule.points(times)
    n = len(points) - 1
    if orders is None:
        orders = integrator.step_orders(n, lower_order_final)
    if len(orders) != n:
        raise ValueError(f"orders has {len(orders)} entries for {n} steps")
    state = integrator.init()
    nfe = 0
    intermediates = [x] if return_intermediate else None
    for i in range(n):
        result = integrator.step(model, x, points[i], points[i + 1], state, orders[i])
        x, state, nfe = result.x, result.state, nfe + result.nfe
        if correcting_xt_fn is not None:
            x = correcting_xt_fn(x, points[i + 1].t, i + 1)
        if intermediates is not None:
            intermediates.append(x)
    return Solution(x=x, times=[p.t for p in points], nfe=nfe, intermediates=intermediates,
                    n_accepted=n, lams=[p.lam for p in points])


def solve_adaptive(model: Predictor, x: Tensor, integrator: Integrator, t_start: float, t_end: float,
                   controller: AdaptiveController | None = None, *, correcting_xt_fn: Callable | None = None,
                   return_intermediate: bool = False) -> Solution:
    """Integrate with an embedded pair, the step size chosen by ``controller``.

    The accept/reject decision needs the error on the host, so this loop synchronises once per step.

    Raises:
        RuntimeError: When the step count would pass ``controller.max_nfe`` evaluations.
    """
    if integrator.error_order is None:
        raise ValueError(f"{integrator!r} has no error estimate; use an embedded pair such as DPMSolverAdaptive")
    controller = controller or AdaptiveController()
    schedule = model.schedule
    s = schedule.point(t_start)
    end = schedule.point(t_end)
    remaining = end.lam - s.lam
    h = min(controller.h_init, abs(remaining)) * (1.0 if remaining >= 0 else -1.0)
    x_prev = x
    state = integrator.init()
    nfe = accepted = rejected = 0
    times, lams = [s.t], [s.lam]
    intermediates = [x] if return_intermediate else None
    while abs(s.t - end.t) > controller.t_err:
        if nfe + integrator.evals_per_step > controller.max_nfe:
            raise RuntimeError(f"the adaptive solver reached max_nfe={controller.max_nfe} at t={s.t:.6g} "
                               f"(atol={controller.atol}, rtol={controller.rtol}); loosen the tolerances or raise max_nfe")
        t = end if abs(h - (end.lam - s.lam)) <= 1e-12 * max(1.0, abs(h)) else schedule.point_at_lambda(s.lam + h)
        result = integrator.step(model, x, s, t, state)
        nfe += result.nfe
        error = controller.error(result.x, result.x_low, x_prev)
        if error <= 1.0:
            x, x_prev, s, state = result.x, result.x_low, t, result.state
            accepted += 1
            if correcting_xt_fn is not None:
                x = correcting_xt_fn(x, s.t, accepted)
            times.append(s.t)
            lams.append(s.lam)
            if intermediates is not None:
                intermediates.append(x)
        else:
            rejected += 1
        h = controller.next_h(h, error, integrator.order, end.lam - s.lam)
    return Solution(x=x, times=times, nfe=nfe, intermediates=intermediates, n_accepted=accepted,
                    n_rejected=rejected, lams=lams)
