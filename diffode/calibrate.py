r"""Calibrated time grids: the grid on which an integrator, at a given budget, best follows a model's ODE.

For a model, an integrator and an NFE budget, :func:`calibrate_grid` looks for the ``n + 1`` times
(``n`` the number of steps the integrator's plan takes for that budget) that minimise the RMSE of
the sample against the high-accuracy solution (:func:`diffode.study.ground_truth`) on a few pilot
trajectories. Three methods:

* ``"search"`` (the default): the best, on the pilots, of the standard grids (:data:`BASELINE_GRIDS`)
  and of the one-parameter family of equal steps in $e^{-p\lambda}$
  (:func:`~diffode.integrators.grids.exponential_lambda_times`; $p$ by a scan and a golden-section
  search), then its $\lambda$ positions warped through a monotone piecewise-linear map of $[0, 1]$
  with a few knots (``knots=2``), whose heights a coordinate search chooses. Every candidate is
  scored by the final error of the actual run (any integrator, its warm-up, history and
  lower-order steps included), and replaces the current best only when it is better by more
  than ``significance`` standard errors of the paired per-sample difference: at low NFE a
  few pilots that change mixture component dominate the RMSE, and a grid that merely moves
  those does not carry over to other noise.
* ``"family"``: the first two stages alone (no warp).
* ``"dp"``, as GITS does (Chen et al. 2024): the ground-truth trajectories are recorded at a fine
  set of candidate times (equal steps in $\lambda$); the cost of a step from candidate $i$ to
  candidate $j$ is the RMSE of one step of the integrator from the true state at $i$ against the
  true state at $j$ (a multistep method's first, lower-order step, as it has no history there);
  dynamic programming finds the path of exactly ``n`` steps with the least total cost. The local
  costs ignore how errors propagate and, for multistep methods, the history; measured on the
  mixture, its grids were worse on held-out noise than the best standard grid.

A calibrated grid fits its pilot noise; judge it on other noise (``diffode calibrate`` does). The
measured gains are in the documentation's "Calibrate a time grid" tutorial.

??? cite "References"
    Chen, Zhou, Ye, Wang, Wang, *On the Trajectory Regularity of ODE-based Diffusion Sampling*
    (GITS), ICML 2024, arXiv:2405.11326. Sabour, Fidler, Kreis, *Align Your Steps*, ICML 2024,
    arXiv:2404.14507.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffode._utils import check_choice, check_finite_number, check_int, check_tensor
from diffode.integrators.base import Integrator
from diffode.integrators.grids import GivenTimes, exponential_lambda_times
from diffode.integrators.reference import solve_reference
from diffode.integrators.registry import get_integrator
from diffode.models.predictor import Predictor
from diffode.solve import solve
from diffode.study import ground_truth, rmse

__all__ = ["BASELINE_GRIDS", "Calibration", "calibrate_grid", "grid_error", "step_cost_matrix"]

BASELINE_GRIDS = ("logSNR", "time_uniform", "time_quadratic", "karras", "ays_sd15")
METHODS = ("search", "family", "dp")
#: The exponents :func:`calibrate_grid`'s family scan starts from (0: logSNR, 1/7: Karras, 2: near time_uniform).
FAMILY_POWERS = (-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)


@dataclass
class Calibration:
    """The result of :func:`calibrate_grid`.

    Attributes:
        grid: The calibrated grid (its ``metadata`` says how it was made).
        pilot_error: Its RMSE on the pilot noise.
        baselines: The pilot RMSE of each standard grid (and of the ``"dp"`` grid for ``"search"``).
        runs: How many sampling runs (or single steps, for ``"dp"``) the search spent.
        orders: The per-step orders of the integrator's plan on it.
    """

    grid: GivenTimes
    pilot_error: float
    baselines: dict[str, float] = field(default_factory=dict)
    runs: int = 0
    orders: tuple[int, ...] = ()


def _mean_squares(model: Predictor, x: Tensor, exact: Tensor, integrator: Integrator, times: Sequence[float] | Tensor,
                  orders: Sequence[int]) -> Tensor:
    """Each sample's mean-square error (float64, shape ``(B,)``) after ``integrator`` through ``times``."""
    with torch.no_grad():
        out = solve(model, x, integrator, [float(t) for t in times], orders=list(orders)).x
    squares = (out.double() - exact.double()).square().flatten(1).mean(dim=1)
    return torch.where(torch.isfinite(squares), squares, torch.full_like(squares, math.inf))


def grid_error(model: Predictor, x: Tensor, exact: Tensor, integrator: Integrator, times: Sequence[float] | Tensor,
               orders: Sequence[int]) -> float:
    """The RMSE of ``integrator`` run through ``times`` at ``orders`` from ``x``, against ``exact``."""
    return _score(_mean_squares(model, x, exact, integrator, times, orders))


def _score(squares: Tensor) -> float:
    """The RMSE from each sample's mean-square error."""
    return float(squares.mean().sqrt())


def step_cost_matrix(model: Predictor, integrator: Integrator, candidates: Sequence[float], states: Tensor) -> Tensor:
    """GITS's local costs: ``cost[i, j]`` is the RMSE of one step from the true state at candidate ``i`` to candidate ``j``.

    Args:
        model: The model.
        integrator: The integrator (its first step, at the order its plan gives a first step).
        candidates: The candidate times, in sampling order.
        states: The true states at the candidates, stacked (``states[i]`` at ``candidates[i]``).

    Returns:
        An ``(M, M)`` float64 tensor, ``inf`` where ``j <= i``.
    """
    points = model.schedule.points(list(candidates))
    m = len(points)
    first_order = integrator.step_orders(1, False)[0]
    cost = torch.full((m, m), math.inf, dtype=torch.float64)
    with torch.no_grad():
        for i in range(m - 1):
            x_i = states[i].to(states.dtype)
            for j in range(i + 1, m):
                result = integrator.step(model, x_i, points[i], points[j], integrator.init(), first_order)
                error = rmse(result.x, states[j])
                cost[i, j] = error if math.isfinite(error) else math.inf
    return cost


def _cheapest_path(cost: Tensor, n: int) -> list[int]:
    """The indices ``0 = k_0 < ... < k_n = M - 1`` that minimise ``sum cost[k_i, k_{i+1}]`` (dynamic programming)."""
    m = cost.shape[0]
    best = torch.full((n + 1, m), math.inf, dtype=torch.float64)
    came = torch.zeros((n + 1, m), dtype=torch.long)
    best[0, 0] = 0.0
    for s in range(1, n + 1):
        total = best[s - 1].unsqueeze(1) + cost  # total[i, j]: reach i in s-1 steps, then i -> j
        best[s], came[s] = total.min(dim=0)
    if not math.isfinite(float(best[n, m - 1])):
        raise ValueError(f"no path of {n} steps through {m} candidate times; use more candidates")
    path = [m - 1]
    for s in range(n, 0, -1):
        path.append(int(came[s, path[-1]]))
    return path[::-1]


def _warp(fractions: Tensor, controls: Sequence[float]) -> Tensor:
    """Map fractions in [0, 1] through the monotone piecewise-linear function with equally spaced knots
    at heights ``0, *controls, 1`` (the identity when ``controls`` are the knots' abscissas)."""
    knots = torch.linspace(0.0, 1.0, len(controls) + 2, dtype=torch.float64)
    heights = torch.tensor([0.0, *controls, 1.0], dtype=torch.float64)
    k = torch.bucketize(fractions.clamp(0.0, 1.0), knots[1:-1])
    w = (fractions - knots[k]) / (knots[k + 1] - knots[k])
    return heights[k] + w * (heights[k + 1] - heights[k])


def _significantly_better(new: Tensor, old: Tensor, significance: float) -> bool:
    """Whether per-sample squared errors ``new`` beat ``old`` on their score by more than ``significance``
    standard errors of the mean paired difference (a few samples that change mode on the pilots
    otherwise pass for an improvement, and do not carry over to other noise)."""
    if not _score(new) < _score(old):
        return False
    if significance == 0.0:
        return True
    d = new - old
    if not torch.isfinite(d).all():
        return bool(torch.isfinite(new).all())
    return float(d.mean()) + significance * float(d.std()) / math.sqrt(d.numel()) < 0.0


def _search(objective, controls: list[float], value, better, max_runs: int) -> tuple[list[float], object, int]:
    """Coordinate search on increasing ``controls`` inside (0, 1): move each a fraction of the gap toward
    a neighbour, keep moves that ``better(trial, current)`` accepts, halve the fraction when a sweep
    finds none."""
    runs, fraction = 0, 0.5
    while runs < max_runs and fraction > 1e-3:
        improved = False
        for k in range(len(controls)):
            for direction in (-1, 1):
                padded = [0.0, *controls, 1.0]
                trial = list(controls)
                trial[k] = controls[k] + fraction * (padded[k + 1 + direction] - controls[k])
                trial_value = objective(trial)
                runs += 1
                if better(trial_value, value):
                    controls, value, improved = trial, trial_value, True
                    break
                if runs >= max_runs:
                    return controls, value, runs
        if not improved:
            fraction /= 2
    return controls, value, runs


def _family_search(objective, powers: Sequence[float], max_runs: int) -> tuple[float, float, int]:
    """Minimise ``objective(p)`` over the exponent of :func:`exponential_lambda_times`: scan ``powers``,
    then golden-section search in the bracket around the best. Returns ``(p, value, runs)``."""
    values = [objective(p) for p in powers]
    runs = len(powers)
    k = min(range(len(powers)), key=values.__getitem__)
    best_p, best = powers[k], values[k]
    a, b = powers[max(k - 1, 0)], powers[min(k + 1, len(powers) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = objective(c), objective(d)
    runs += 2
    while runs < max_runs and b - a > 1e-3:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = objective(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = objective(d)
        runs += 1
    for p, value in ((c, fc), (d, fd)):
        if value < best:
            best_p, best = p, value
    return best_p, best, runs


def calibrate_grid(model: Predictor, integrator: Integrator | str, nfe: int, x: Tensor, *, method: str = "search",
                   exact: Tensor | None = None, t_start: float | None = None, t_end: float | None = None,
                   candidates: int | None = None, knots: int = 2, max_runs: int = 200, significance: float = 2.0, rtol: float = 1e-7) -> Calibration:
    """The grid on which ``integrator`` with ``nfe`` evaluations best reproduces the ODE's solution from ``x``.

    Args:
        model: The model (a :class:`~diffode.models.Predictor`).
        integrator: A fixed-grid integrator, a registered name or ``package.module:name``.
        nfe: The budget; the integrator's plan for it says how many steps the grid has.
        x: The pilot noise at ``t_start`` (judge the result on other noise).
        method: ``"search"`` (default), ``"family"`` or ``"dp"`` (see the module docstring).
        exact: The ground truth at ``t_end`` from ``x`` (default: computed with ``rtol``).
        t_start: The first time (default the schedule's ``T``).
        t_end: The last time (default the schedule's ``default_t_end``).
        candidates: How many candidate times the ``"dp"`` step uses (default ``max(6 n, 48) + 1``).
        knots: How many interior knots the ``"search"``'s warp has (at most ``n - 1``; 0: the family's
            grid alone): few knots keep the grid smooth, which is what carries over to other noise.
        max_runs: The most sampling runs the ``"search"`` (and the family's scan) may spend.
        significance: A grid replaces the current best (the best standard grid, then the family's,
            then each warp) only when its pilot error is lower by more than this many standard errors
            of the paired per-sample difference (0: whenever it is lower).
        rtol: Tolerance of the ground truth (and of the ``"dp"`` trajectories).

    Returns:
        A :class:`Calibration`; ``calibration.grid`` works wherever a grid is taken
        (``integrator.plan(schedule, nfe, grid=calibration.grid)``), and ``grid.to_json(path)`` saves it.

    Raises:
        ValueError: For an adaptive integrator, or a budget whose plan has a single step (nothing to place).
    """
    x = check_tensor("x", x).to(torch.float64)
    integrator = get_integrator(integrator)
    method = check_choice("method", method, METHODS)
    nfe = check_int("nfe", nfe, low=1)
    max_runs = check_int("max_runs", max_runs, low=0)
    knots = check_int("knots", knots, low=0)
    significance = check_finite_number("significance", significance, nonnegative=True)
    if integrator.adaptive:
        raise ValueError(f"{integrator!r} chooses its own steps; calibrate a fixed-grid integrator")
    schedule = model.schedule
    t_start = schedule.T if t_start is None else float(t_start)
    t_end = schedule.default_t_end if t_end is None else float(t_end)
    plan = integrator.plan(schedule, nfe, grid="logSNR", t_start=t_start, t_end=t_end)
    n, orders = plan.steps, plan.orders
    if n < 2 or len(plan.times) != n + 1 or plan.times[0] != t_start:
        raise ValueError(f"{integrator!r} spends {nfe} evaluations in {n} step(s) here; a grid needs at least 2 steps "
                         "to calibrate (raise the budget)")
    with torch.no_grad():
        if exact is None:
            exact = ground_truth(model, x, t_start, t_end, rtol=rtol, atol=rtol)

    def squares_of(times: Sequence[float] | Tensor) -> Tensor:
        d = torch.as_tensor(times, dtype=torch.float64).diff()
        if not ((d < 0).all() or (d > 0).all()):
            return torch.full((x.shape[0],), math.inf, dtype=torch.float64)
        return _mean_squares(model, x, exact, integrator, times, orders)

    def better(new: Tensor, old: Tensor) -> bool:
        return _significantly_better(new, old, significance)

    baselines = {}
    for name in BASELINE_GRIDS:
        times = integrator.plan(schedule, nfe, grid=name, t_start=t_start, t_end=t_end).times
        baselines[name] = (squares_of(times), tuple(times))
    runs = len(BASELINE_GRIDS)

    if method == "dp":
        lam_start, lam_end = (p.lam for p in schedule.points([t_start, t_end]))
        m = (max(6 * n, 48) + 1) if candidates is None else check_int("candidates", candidates, low=n + 1)
        cand_times = schedule.inverse_lambda(torch.linspace(lam_start, lam_end, m, dtype=torch.float64))
        cand_times[0], cand_times[-1] = t_start, t_end
        with torch.no_grad():
            states = solve_reference(model, x, t_start, t_end, times=cand_times[1:-1], rtol=rtol, atol=rtol).xs
        states = torch.cat([x.unsqueeze(0), states, exact.unsqueeze(0)])
        cost = step_cost_matrix(model, integrator, cand_times.tolist(), states)
        runs += m * (m - 1) // 2
        best_times = cand_times[_cheapest_path(cost, n)]
        best = squares_of(best_times)
    else:
        def family(power: float) -> Tensor:
            return exponential_lambda_times(schedule, t_start, t_end, n, power)

        power, _, spent = _family_search(lambda p: _score(squares_of(family(p))), FAMILY_POWERS, max_runs)
        runs += spent + 1
        family_times = family(power)
        start = min(baselines, key=lambda k: _score(baselines[k][0]))
        best, best_times = baselines[start][0], torch.tensor(baselines[start][1], dtype=torch.float64)
        family_squares = squares_of(family_times)
        baselines["family"] = (family_squares, tuple(family_times.tolist()))
        if better(family_squares, best):
            best, best_times = family_squares, family_times
        k = min(knots, n - 1)
        if method == "search" and k > 0 and runs < max_runs:
            lam0 = schedule.lambda_(best_times)
            fractions = (lam0 - lam0[0]) / (lam0[-1] - lam0[0])

            def grid_of(controls: Sequence[float]) -> Tensor:
                lam = lam0[0] + _warp(fractions, controls) * (lam0[-1] - lam0[0])
                times = schedule.inverse_lambda(lam)
                times[0], times[-1] = t_start, t_end
                return times

            identity = [(j + 1) / (k + 1) for j in range(k)]
            controls, warped, spent = _search(lambda c: squares_of(grid_of(c)), identity, best, better,
                                              max_runs - runs)
            runs += spent
            if warped is not best:
                best, best_times = warped, grid_of(controls)
    best_error = _score(best)
    metadata = {"integrator": repr(integrator), "nfe": nfe, "method": method, "schedule": repr(schedule),
                "pilot_samples": int(x.shape[0]), "pilot_rmse": best_error, "significance": significance}
    grid = GivenTimes(best_times, metadata)
    return Calibration(grid, best_error, {k: _score(v[0]) for k, v in baselines.items()}, runs, tuple(orders))
