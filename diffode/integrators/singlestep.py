r"""Singlestep DPM-Solver and DPM-Solver++ (exponential Runge--Kutta methods)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffode._utils import check_choice, check_finite_number
from diffode.integrators.base import ExponentialIntegrator, State, Update, exponential_update, point_at_lambda
from diffode.integrators.grids import GivenTimes, SigmaTable, TimeGrid, get_grid
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint, memoised

__all__ = ["DPMSolverSinglestep", "Stage", "grid_stage_fractions", "run_stages", "singlestep_orders", "stages_for"]

SPLITS = ("fast", "fixed")


@dataclass(frozen=True)
class Stage:
    """One stage of a singlestep method.

    Attributes:
        c: Where the stage lands, as a fraction of the step in $\\lambda$ (1 for the step's end).
        nodes: Which model outputs it uses: 0 is the output at the step start, ``i`` the output at
            stage ``i``'s point.
        solver_type: ``"taylor"`` (exact weights) or ``"dpmsolver"`` (the paper's order-2 weight).
    """

    c: float
    nodes: tuple[int, ...]
    solver_type: str = "taylor"


def stages_for(order: int, solver_type: str, r1: float | None = None, r2: float | None = None) -> tuple[Stage, ...]:
    """The stages of DPM-Solver-``order`` (defaults $r_1 = 1/2$ at order 2, $r_1, r_2 = 1/3, 2/3$ at order 3)."""
    if order == 1:
        return (Stage(1.0, (0,)),)
    if order == 2:
        r1 = 0.5 if r1 is None else r1
        return (Stage(r1, (0,)), Stage(1.0, (0, 1), solver_type))
    r1 = 1.0 / 3.0 if r1 is None else r1
    r2 = 2.0 / 3.0 if r2 is None else r2
    # "dpmsolver": the paper's DPM-Solver-3 ends with the two outputs at 0 and r2 only; it is third
    # order because r2 = 2/3 cancels the leading error term. "taylor" uses all three.
    final = (0, 1, 2) if solver_type == "taylor" else (0, 2)
    return (Stage(r1, (0,)), Stage(r2, (0, 1)), Stage(1.0, final))


STAGES = {(k, st): stages_for(k, st) for k in (1, 2, 3) for st in ("dpmsolver", "taylor")}


def grid_stage_fractions(schedule: NoiseSchedule, grid: TimeGrid, s: float, t: float, order: int) -> tuple[float, ...]:
    r"""Where ``grid`` puts the inner stages of an order-``order`` step from ``s`` to ``t``, as fractions of the step.

    The reference DPM-Solver's rule for its singlestep methods: the grid's own ``order`` steps from
    ``s`` to ``t`` give the stage times $s_1, \dots, s_{k-1}$, and
    $r_i = (\lambda_{s_i} - \lambda_{s_0}) / (\lambda_{s_k} - \lambda_{s_0})$. On an equal-$\lambda$
    grid these are $1/2$ (order 2) and $1/3, 2/3$ (order 3); on a grid equal in $t$ or $\sqrt t$ they
    follow that grid, and DPM-Solver-fast's steps with their stages then cover exactly the grid of
    ``nfe`` intervals.

    Args:
        schedule: The noise schedule.
        grid: A grid whose times depend on the interval (not :class:`~diffode.integrators.GivenTimes`).
        s: The step's start time.
        t: The step's end time.
        order: The step's order (the number of stages).

    Returns:
        The ``order - 1`` fractions $r_1 < r_2 < \dots$ (empty for order 1).
    """
    if order <= 1:
        return ()
    # In the grid's own dtype (the reference's float32 grids give the reference's fractions).
    lam = schedule.lambda_(grid.times(schedule, s, t, order)).reshape(-1)
    if lam.numel() != order + 1:
        raise ValueError(f"{grid!r} gave {lam.numel()} times for {order} steps from t={s:.6g} to t={t:.6g}; the stages "
                         "of a singlestep step need a grid rule whose times follow the interval")
    return tuple(((lam[1:-1] - lam[0]) / (lam[-1] - lam[0])).tolist())


@torch.compiler.assume_constant_result
def stage_fractions(schedule: NoiseSchedule, grid: TimeGrid, s: float, t: float, order: int) -> tuple[float, ...]:
    """:func:`grid_stage_fractions`, memoised per schedule (host numbers; a constant for the compiler)."""
    return memoised(schedule, ("grid_stage_fractions", grid, s, t, order),
                    lambda: grid_stage_fractions(schedule, grid, s, t, order))


def singlestep_orders(nfe: int, order: int) -> list[int]:
    """How DPM-Solver-fast splits ``nfe`` evaluations into steps of order 3, 2 and 1 (as the paper does).

    Order 3: ``nfe = 3K`` gives ``[3]*(K-1) + [2, 1]``, ``3K+1`` gives ``[3]*K + [1]``, ``3K+2`` gives
    ``[3]*K + [2]``; order 2: ``[2]*K`` plus a final ``1`` when ``nfe`` is odd; order 1: ``[1]*nfe``.
    """
    if order == 3:
        k = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if nfe % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (nfe // 2) + ([1] if nfe % 2 else [])
    return [1] * nfe


def run_stages(integrator: ExponentialIntegrator, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint,
               stages: tuple[Stage, ...], m_s: Tensor) -> tuple[Tensor, list[Tensor], list[float]]:
    """Run the stages of one singlestep step, the model output at the start ``m_s`` given.

    Returns:
        ``(x_t, values, fractions)``: the new state, and the model output of every stage with its
        fraction of the step (0 for the output at the start), which embedded pairs reuse for their
        lower-order member.
    """
    h = t.lam - s.lam
    values, fractions = [m_s], [0.0]
    for stage in stages[:-1]:
        point = point_at_lambda(model.schedule, s.lam + stage.c * h)
        u = exponential_update(x, s, point, [values[j] for j in stage.nodes],
                               [fractions[j] / stage.c for j in stage.nodes], integrator.predict, stage.solver_type)
        values.append(integrator.evaluate(model, u, point))
        fractions.append(stage.c)
    final = stages[-1]
    x_t = exponential_update(x, s, t, [values[j] for j in final.nodes], [fractions[j] for j in final.nodes],
                             integrator.predict, final.solver_type)
    return x_t, values, fractions


class DPMSolverSinglestep(ExponentialIntegrator):
    r"""Singlestep DPM-Solver: ``order`` model evaluations inside each step, nothing stored between steps.

    Intermediate points sit at $\lambda_s + r_i h$. In data form (DPM-Solver++) the order-2 step is
    $$u = \frac{\sigma_{s_1}}{\sigma_s}x_s + \alpha_{s_1} r_1 h\,\varphi_1(-r_1h)\,\hat x_0^{(s)},\qquad
    x_t = \frac{\sigma_t}{\sigma_s}x_s + \alpha_t h\Big[\varphi_1(-h)\,\hat x_0^{(s)}
    + \varphi_2(-h)\,\frac{\hat x_0^{(s_1)} - \hat x_0^{(s)}}{r_1}\Big],$$
    (the ``"dpmsolver"`` type puts $\tfrac12\varphi_1(-h)$ for $\varphi_2(-h)$); order 3 adds a
    stage at $r_2$ and ends with the exact integral of the quadratic interpolant (``"taylor"``) or of
    the line through the outputs at 0 and $r_2$ (``"dpmsolver"``, the paper's DPM-Solver-3).

    * Order: ``order`` (1, 2 or 3); 1 is DDIM.
    * Model evaluations per step: the step's order.
    * Error estimate: none (see :class:`~diffode.integrators.DPMSolverAdaptive`).

    Args:
        order: 1, 2 or 3.
        predict: ``"data"`` (DPM-Solver++) or ``"noise"`` (DPM-Solver).
        solver_type: ``"dpmsolver"`` or ``"taylor"``.
        r1: First intermediate fraction (default 1/2 at order 2, 1/3 at order 3).
        r2: Second intermediate fraction at order 3 (default 2/3). Third order needs
            $r_2 = 2/3$: with another value the ``"dpmsolver"`` type fails the quadrature order
            condition and the ``"taylor"`` type the stage condition (its weight on the first-order
            stage at $r_1$ is then $O(h)$), so both converge at order 2 on a model that depends on
            $x$ (see ``tests/integrators/test_coefficients_sympy.py``).
        split: How :meth:`plan` spends a budget: ``"fast"`` (DPM-Solver-fast: steps of order 3, 2
            and 1 that use every evaluation, :func:`singlestep_orders`; the step ends taken from the
            grid of ``nfe`` points, or equal in $\lambda$ on a ``logSNR`` grid, as the reference does)
            or ``"fixed"`` (every step of ``order``, ``nfe // order`` steps).
        stages: Where the inner stages of a step go: ``"lambda"`` (at the fixed fractions $r_1, r_2$
            of $h$) or a grid (a name such as ``"time_quadratic"``, or a
            :class:`~diffode.integrators.TimeGrid`) whose own ``k`` steps from $s$ to $t$ place the
            stages of an order-``k`` step (:func:`grid_stage_fractions`, the reference DPM-Solver's
            rule; :class:`~diffode.DPMSolver`'s ``sample(..., stages="grid")`` passes its
            ``skip_type``). With the sampling grid itself, DPM-Solver-fast's stages and step ends
            together are that grid's ``nfe`` intervals, and the results equal the reference's. On
            ``logSNR`` both choices are the same.

    ??? cite "Reference"
        Lu et al., *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in
        Around 10 Steps*, NeurIPS 2022, arXiv:2206.00927.
    """

    def __init__(self, order: int = 3, predict: str = "data", solver_type: str = "dpmsolver",
                 r1: float | None = None, r2: float | None = None, split: str = "fast",
                 stages: str | TimeGrid = "lambda"):
        super().__init__(order, predict, solver_type)
        self.stages = _check_stages(stages)
        if self.stages != "lambda" and (r1 is not None or r2 is not None):
            raise ValueError(f"r1 and r2 fix the stages' fractions of the step; with stages={stages!r} the grid "
                             "places them: pass one or the other")
        for name, r in (("r1", r1), ("r2", r2)):
            if r is not None and not 0.0 < check_finite_number(name, r) < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {r}")
        if r1 is not None and r2 is not None and r1 >= r2:
            raise ValueError(f"r1 must be < r2, got r1={r1}, r2={r2}")
        self.r1, self.r2 = r1, r2
        self.split = check_choice("split", split, SPLITS)
        self.evals_per_step = order
        self._stages = {k: stages_for(k, solver_type, r1 if k > 1 else None, r2 if k == 3 else None)
                        for k in (1, 2, 3)}

    def __repr__(self) -> str:
        stages = "" if self.stages == "lambda" else f", stages={self.stages!r}"
        return (f"DPMSolverSinglestep(order={self.order}, predict={self.predict!r}, solver_type={self.solver_type!r}, "
                f"split={self.split!r}{stages})")

    def evaluations(self, orders: Sequence[int]) -> int:
        """A step of order ``k`` costs ``k`` evaluations."""
        return sum(orders)

    def plan_orders(self, nfe: int, lower_order_final: bool | int = True) -> list[int]:
        if self.split == "fast":
            return singlestep_orders(nfe, self.order)
        if nfe < self.order:  # one step of the order the budget allows
            return [nfe]
        return [self.order] * (nfe // self.order)

    def plan_times(self, schedule: NoiseSchedule, grid: TimeGrid, t_start: float, t_end: float,
                   orders: Sequence[int]) -> Tensor:
        if self.split == "fixed" or grid.uniform_in_lambda or isinstance(grid, GivenTimes):
            return grid.times(schedule, t_start, t_end, len(orders))
        full = grid.times(schedule, t_start, t_end, sum(orders))
        return full[torch.cumsum(torch.tensor([0, *orders]), 0)]

    def stages_of(self, schedule: NoiseSchedule, s: TimePoint, t: TimePoint, order: int) -> tuple[Stage, ...]:
        """The stages of an order-``order`` step from ``s`` to ``t`` (placed by ``stages``)."""
        if self.stages == "lambda" or order == 1:
            return self._stages[order]
        # A pure function of the grid: memoised per schedule, so a rerun of the plan does no tensor work here.
        fractions = stage_fractions(schedule, self.stages, float(s.t), float(t.t), order)
        return stages_for(order, self.solver_type, *fractions)

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        stages = self.stages_of(model.schedule, s, t, order)
        x_t, _, _ = run_stages(self, model, x, s, t, stages, self.evaluate(model, x, s))
        return Update(x_t)


def _check_stages(stages: str | TimeGrid) -> str | TimeGrid:
    """``"lambda"``, or the grid (from its name or instance) whose rule places the stages."""
    if isinstance(stages, str) and stages == "lambda":
        return stages
    if isinstance(stages, str) and stages == "grid":
        raise ValueError("stages='grid' needs the grid itself here: pass its name (stages='time_quadratic') or a "
                         "TimeGrid; DPMSolver.sample(..., stages='grid') takes it from skip_type")
    if not isinstance(stages, (str, TimeGrid)):
        raise TypeError(f"stages must be 'lambda', a grid name or a TimeGrid, got {type(stages).__name__}")
    grid = get_grid(stages)
    if isinstance(grid, GivenTimes) or (isinstance(grid, SigmaTable) and not grid.rescale):
        raise ValueError(f"stages={stages!r}: {grid!r} gives the same times whatever the interval, so it cannot place "
                         "the stages inside a step; use 'lambda' or a grid rule ('time_quadratic', 'karras', ...)")
    return grid
