"""The integrator contract: declared order and cost, a plan for a budget, and a public ``step``.

Every front end (:class:`~diffode.DPMSolver`, :func:`~diffode.solve`, the studies and the command
line, :mod:`diffode.compat`, the LDM sampler, the diffusers scheduler) talks to an integrator through
this class only:

* :meth:`Integrator.plan` turns a budget of model evaluations, a time grid and the options
  (lower orders at the end, a final denoising step) into a :class:`Plan`: the times and the order
  of each step, with its exact NFE;
* :meth:`Integrator.step` advances the state by one step. The base class implements it around the
  subclass's :meth:`Integrator._step` (as scipy's ``OdeSolver.step`` does around ``_step_impl``):
  it validates the order, counts the model evaluations and the steps, and builds the next
  :class:`State`. No subclass counts anything by hand.

A new integrator is one subclass: its ``order``, its ``evals_per_step`` (or :meth:`evaluations`
when the cost depends on the orders), and ``_step``.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffode._namespace import is_jax_array
from diffode._utils import check_choice, check_int
from diffode.integrators.coefficients import linear_coefficients, update_weights
from diffode.integrators.grids import TimeGrid, get_grid
from diffode.models.predictor import Predictor
from diffode.noise import NoiseSource
from diffode.schedules.base import NoiseSchedule, TimePoint, memoised

__all__ = ["CountingPredictor", "ExponentialIntegrator", "History", "Integrator", "LOWER_ORDER_FINAL_BELOW", "Plan", "State", "StepResult",
           "Update", "exponential_update", "apply_lower_order_final", "linear_combination", "point_at_lambda"]

PREDICTIONS = ("data", "noise")
SOLVER_TYPES = ("dpmsolver", "taylor")

LOWER_ORDER_FINAL_BELOW = 10
"""With ``lower_order_final=True``, runs of fewer steps than this lower the order of their last
steps (the reference DPM-Solver's rule; diffusers and the LDM plugin use 15, passed as an integer)."""


@dataclass(frozen=True)
class History:
    """One stored model output: its half log-SNR and value."""

    lam: float
    value: Tensor


@dataclass(frozen=True)
class State:
    """What an integrator carries from one step to the next (explicit, never hidden in the object).

    Attributes:
        history: Model outputs of earlier steps, oldest first (multistep methods only).
        step_index: How many steps were taken (kept by :meth:`Integrator.step`).
        carry: Anything else an integrator keeps for its next step (a predictor-corrector method,
            say, keeps the previous state to correct from); ``None`` for most.
    """

    history: tuple[History, ...] = ()
    step_index: int = 0
    carry: Any = None


@dataclass(frozen=True)
class Update:
    """What a subclass's :meth:`Integrator._step` returns.

    Attributes:
        x: The new state $x_t$.
        history: The model outputs the next steps need (multistep methods; empty otherwise).
        x_low: For embedded pairs, the lower-order solution (the error estimate is ``x - x_low``).
        carry: Anything else the next step needs (becomes ``state.carry``).
    """

    x: Tensor
    history: tuple[History, ...] = ()
    x_low: Tensor | None = None
    carry: Any = None


@dataclass
class StepResult:
    """The outcome of :meth:`Integrator.step`.

    Attributes:
        x: The new state $x_t$.
        state: The integrator state for the next step.
        nfe: Model evaluations spent on this step (counted by the base class).
        x_low: For embedded pairs, the lower-order solution.
    """

    x: Tensor
    state: State
    nfe: int
    x_low: Tensor | None = field(default=None)


@dataclass(frozen=True)
class Plan:
    """How an integrator spends a budget: where its steps go and the order of each.

    Attributes:
        times: The ``n + 1`` times (host floats), start first.
        orders: The order of each of the ``n`` steps.
        nfe: The exact number of model evaluations the plan spends, a final denoising step included.
        denoise_to_zero: Whether one more evaluation returns the data prediction at the last time.
    """

    times: tuple[float, ...]
    orders: tuple[int, ...]
    nfe: int
    denoise_to_zero: bool = False

    @property
    def steps(self) -> int:
        """The number of steps, ``len(orders)``."""
        return len(self.orders)


def apply_lower_order_final(orders: Sequence[int], below: bool | int = True) -> list[int]:
    """The one lower-order-final rule: at most ``n - i`` at step ``i`` of a run of ``n < below`` steps.

    The last step is then first order and the one before at most second order, which keeps the
    short final steps of a coarse grid stable.

    Args:
        orders: The order of each step.
        below: ``True`` for :data:`LOWER_ORDER_FINAL_BELOW`, ``False`` to keep ``orders``, or the
            step count below which the rule applies.
    """
    if isinstance(below, bool):
        below = LOWER_ORDER_FINAL_BELOW if below else 0
    else:
        below = check_int("lower_order_final", below, low=0)
    n = len(orders)
    return [min(o, n - i) for i, o in enumerate(orders)] if n < below else list(orders)


@functools.lru_cache(maxsize=16384)
def _cached_weights(h: float, nodes: tuple[float, ...], z: float, solver_type: str,
                    factors: tuple[float, ...] | None) -> tuple[float, ...]:
    return tuple(update_weights(h, nodes, z, solver_type, factors))


@torch.compiler.assume_constant_result
def step_weights(h: float, nodes: Sequence[float], z: float, solver_type: str = "taylor",
                 factors: Sequence[float] | None = None) -> tuple[float, ...]:
    """:func:`~diffode.integrators.coefficients.update_weights`, memoised (a pure function of the grid)."""
    return _cached_weights(float(h), tuple(float(c) for c in nodes), float(z), solver_type,
                           None if factors is None else tuple(float(f) for f in factors))


def linear_combination(x: Tensor, a: float | Tensor, terms: Sequence[tuple[Tensor, float | Tensor]]) -> Tensor:
    r"""$a\,x + \sum_j c_j m_j$ in a new tensor; no input is modified.

    The one place where an update does its tensor arithmetic: one scaled copy of ``x`` and one
    fused ``add_`` per term into that new tensor.

    Args:
        x: The state.
        a: Its coefficient (a Python number or a broadcastable tensor).
        terms: ``(tensor, coefficient)`` pairs; coefficients are Python numbers or broadcastable tensors.

    JAX arrays (the compiled loops of :mod:`diffode.jax`, which run the integrators' own steps) are
    combined with plain arithmetic, JAX arrays being immutable.
    """
    if is_jax_array(x):  # coefficients may be wider (float64 times): the state keeps its dtype, as in torch
        out = x * (a.astype(x.dtype) if is_jax_array(a) else a)
        for tensor, c in terms:
            out = out + tensor * (c.astype(x.dtype) if is_jax_array(c) else c)
        return out
    out = torch.mul(x, a)
    for tensor, c in terms:
        if isinstance(c, Tensor):
            out.add_(tensor * c)
        elif c != 0.0:
            out.add_(tensor, alpha=c)
    return out


def exponential_update(x: Tensor, s: TimePoint, t: TimePoint, values: Sequence[Tensor], nodes: Sequence[float],
                       predict: str, solver_type: str = "taylor", factors: Sequence[float] | None = None) -> Tensor:
    r"""One exponential-integrator update from ``s`` to ``t`` using model outputs at ``nodes``.

    $x_t = a\,x_s + b\sum_j w_j m_j$: the exact linear part (:func:`~diffode.integrators.coefficients.linear_coefficients`)
    and the exact integral of the polynomial through ``values`` at ``nodes`` (fractions of the step,
    :func:`~diffode.integrators.coefficients.update_weights`). Every coefficient is a float64
    Python number computed from the time points; the tensors are only combined.

    Args:
        x: The state at ``s``.
        s: The start point.
        t: The end point.
        values: The model outputs (data or noise predictions, as ``predict`` says).
        nodes: Their positions as fractions of the step (0 at ``s``, 1 at ``t``, negative before ``s``).
        predict: ``"data"`` or ``"noise"``.
        solver_type: ``"taylor"`` or ``"dpmsolver"`` (they differ for two nodes only).
        factors: Override of the Taylor factors (to reproduce other implementations).

    Inside a compiled JAX loop the points hold JAX scalars: then the weights are computed in the
    graph by the same :func:`~diffode.integrators.coefficients.update_weights` (a zero-length step
    is still the identity: its weights vanish with $h$).
    """
    a, b, z = linear_coefficients(s, t, predict)
    if is_jax_array(t.lam) or is_jax_array(s.lam):
        weights = update_weights(t.lam - s.lam, nodes, z, solver_type, factors)
        return linear_combination(x, a, [(v, b * w) for v, w in zip(values, weights)])
    if t.lam == s.lam:  # a zero-length step is the identity (the weights carry a factor h)
        return linear_combination(x, a, [])
    weights = step_weights(t.lam - s.lam, nodes, z, solver_type, factors)
    return linear_combination(x, a, [(v, b * w) for v, w in zip(values, weights)])


@torch.compiler.assume_constant_result
def point_at_lambda(schedule: NoiseSchedule, lam: float) -> TimePoint:
    """``schedule.point_at_lambda(lam)``, memoised per schedule (the stage points of singlestep methods).

    Inverting $\\lambda$ costs a few dozen small host tensor operations; a sampler that runs the
    same grid again (every batch) finds its intermediate points here instead.
    """
    if is_jax_array(lam):  # inside a compiled JAX loop
        return schedule.array_point(lam)
    lam = float(lam)
    return memoised(schedule, ("point_at_lambda", lam), lambda: schedule.point_at_lambda(lam))


class CountingPredictor(Predictor):
    """A model whose predictions are counted (``count``): how :meth:`Integrator.step` knows a step's NFE."""

    def __init__(self, model: Predictor):
        self.model = model
        self.schedule = model.schedule
        self.count = 0

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        self.count += 1
        return self.model.predict(x, point, kind)

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        self.count += 1
        return self.model.predict_mixed(x, point, kind, network_dtype)


class Integrator(abc.ABC):
    """Base class of the integrators.

    A subclass declares ``order`` (and ``evals_per_step``, or overrides :meth:`evaluations`) and
    implements :meth:`_step`. Multistep methods also say how their first steps warm up
    (:meth:`step_orders`); methods whose budget is spent another way override :meth:`plan_orders`
    or :meth:`plan_times`.

    Attributes:
        order: The nominal global order of accuracy.
        evals_per_step: Model evaluations per step (at full order).
        error_order: The order of the embedded error estimate, or ``None`` if there is none
            (then :func:`~diffode.solve_adaptive` can drive it).
        predict: ``"data"`` (DPM-Solver++) or ``"noise"`` (DPM-Solver): which model output is integrated.
        stochastic: Whether the integrator samples a stochastic process: then its :meth:`_step` takes
            a seventh argument, the :class:`~diffode.noise.NoiseSource` its draws come from, and it
            only runs from noise to data (the half log-SNR increases).
    """

    order: int
    evals_per_step: int = 1
    error_order: int | None = None
    predict: str = "data"
    stochastic: bool = False

    @property
    def adaptive(self) -> bool:
        """Whether the integrator estimates its error and so chooses its own steps."""
        return self.error_order is not None

    def init(self) -> State:
        """The state before the first step."""
        return State()

    # -- the budget -------------------------------------------------------------------------------

    def evaluations(self, orders: Sequence[int]) -> int:
        """The model evaluations a run with these per-step orders spends (default ``evals_per_step`` each)."""
        return self.evals_per_step * len(orders)

    def step_orders(self, n_steps: int, lower_order_final: bool | int = False) -> list[int]:
        """The order of each of ``n_steps`` steps on a given grid (default: ``order`` throughout).

        Multistep methods lower the first orders while their history fills and, with
        ``lower_order_final``, the last ones (:func:`apply_lower_order_final`).
        """
        return [self.order] * n_steps

    def plan_orders(self, nfe: int, lower_order_final: bool | int = True) -> list[int]:
        """The per-step orders that spend at most ``nfe`` evaluations: as many steps as fit (at least one)."""
        n = max(nfe // max(self.evals_per_step, 1), 1)
        while n > 1 and self.evaluations(self.step_orders(n, lower_order_final)) > nfe:
            n -= 1
        return self.step_orders(n, lower_order_final)

    def plan_times(self, schedule: NoiseSchedule, grid: TimeGrid, t_start: float, t_end: float,
                   orders: Sequence[int]) -> Tensor:
        """Where the steps of ``orders`` go (default: the grid's ``len(orders)`` steps)."""
        return grid.times(schedule, t_start, t_end, len(orders))

    def plan(self, schedule: NoiseSchedule, nfe: int, *, grid: str | TimeGrid | Sequence[float] = "logSNR",
             t_start: float | None = None, t_end: float | None = None, lower_order_final: bool | int = True,
             denoise_to_zero: bool = False) -> Plan:
        """The times and per-step orders with which this integrator spends ``nfe`` model evaluations.

        Args:
            schedule: The noise schedule.
            nfe: The budget of the steps (a final denoising step is one more).
            grid: The time grid: a name (``"logSNR"``, ``"time_uniform"``, ``"time_quadratic"``,
                ``"karras"``), a :class:`~diffode.integrators.TimeGrid` or the times themselves.
            t_start: The first time (default the schedule's ``T``).
            t_end: The last time (default the schedule's ``default_t_end``).
            lower_order_final: Lower the orders of the last steps of short runs where the
                integrator has such a rule (:func:`apply_lower_order_final`; an integer sets the threshold).
            denoise_to_zero: End with one more evaluation that returns the data prediction.

        Raises:
            ValueError: For an adaptive integrator (it chooses its own steps), a budget it cannot
                spend, or a given grid whose step count does not match the budget.
        """
        if self.adaptive:
            raise ValueError(f"{self!r} chooses its own steps (an embedded pair): run it with "
                             "diffode.solve_adaptive, not with a planned grid")
        nfe = check_int("nfe", nfe, low=1)
        if not isinstance(denoise_to_zero, bool):
            raise TypeError(f"denoise_to_zero must be a bool, got {type(denoise_to_zero).__name__}")
        grid = get_grid(grid)
        t_start = schedule.T if t_start is None else t_start
        t_end = schedule.default_t_end if t_end is None else t_end
        orders = self.plan_orders(nfe, lower_order_final)
        times = self.plan_times(schedule, grid, t_start, t_end, orders)
        if times.numel() != len(orders) + 1:
            raise ValueError(f"{self!r} spends {nfe} evaluations in {len(orders)} steps, but the given grid has "
                             f"{times.numel() - 1}; give {len(orders) + 1} times or a budget that fits the grid")
        return Plan(tuple(times.tolist()), tuple(orders), self.evaluations(orders) + int(denoise_to_zero),
                    denoise_to_zero)

    # -- stepping ---------------------------------------------------------------------------------

    def step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State,
             order: int | None = None, noise: NoiseSource | None = None) -> StepResult:
        """Advance ``x`` from ``s`` to ``t`` at ``order`` (default the integrator's own).

        Counts the model evaluations of the step and advances ``state.step_index``; the step itself is
        the subclass's :meth:`_step`. A stochastic integrator needs ``noise``; the others ignore it.
        """
        order = self.order if order is None else order
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= self.order:
            raise ValueError(f"order must be an integer in [1, {self.order}] for {self!r}, got {order!r}")
        counting = CountingPredictor(model)
        if self.stochastic:
            if not isinstance(noise, NoiseSource):
                raise TypeError(f"{self!r} is a stochastic sampler: pass noise=, a diffode.noise.NoiseSource "
                                f"(NoiseSource.from_seeds(...), .from_generator(...) or zero_noise), got "
                                f"{type(noise).__name__}")
            if t.lam < s.lam:
                raise ValueError(f"{self!r} samples from noise to data only: the step from t={s.t:.6g} to "
                                 f"t={t.t:.6g} lowers the half log-SNR")
            update = self._step(counting, x, s, t, state, order, noise)
        else:
            update = self._step(counting, x, s, t, state, order)
        if not isinstance(update, Update):
            raise TypeError(f"{type(self).__name__}._step must return a diffode.integrators.Update, "
                            f"got {type(update).__name__}")
        return StepResult(x=update.x, state=State(update.history, state.step_index + 1, update.carry),
                          nfe=counting.count, x_low=update.x_low)

    @abc.abstractmethod
    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        """One step from ``s`` to ``t`` at ``order``: the subclass's method.

        A stochastic integrator's ``_step`` takes one more argument, ``noise`` (a
        :class:`~diffode.noise.NoiseSource`), and calls ``noise.normal(x, interval)`` for each draw.
        """

    def evaluate(self, model: Predictor, x: Tensor, point: TimePoint) -> Tensor:
        """The model output this integrator integrates (data or noise prediction): one model evaluation."""
        return model.predict(x, point, self.predict)


class ExponentialIntegrator(Integrator):
    """Shared constructor of the DPM-Solver family.

    Args:
        order: 1 to ``max_order``.
        predict: ``"data"`` for DPM-Solver++ or ``"noise"`` for DPM-Solver.
        solver_type: ``"dpmsolver"`` or ``"taylor"``: the two second-order variants of the papers.
    """

    max_order: ClassVar[int] = 3

    def __init__(self, order: int = 2, predict: str = "data", solver_type: str = "dpmsolver"):
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= self.max_order:
            allowed = ", ".join(str(k) for k in range(1, self.max_order)) + f" or {self.max_order}"
            raise ValueError(f"order must be {allowed} for {type(self).__name__}, got {order!r}")
        self.order = order
        self.predict = check_choice("predict", predict, PREDICTIONS)
        self.solver_type = check_choice("solver_type", solver_type, SOLVER_TYPES)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order}, predict={self.predict!r}, solver_type={self.solver_type!r})"
