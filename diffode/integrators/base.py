"""The integrator protocol, its explicit state, and the one exponential update every DPM-Solver shares."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from diffode._utils import check_choice
from diffode.integrators.coefficients import linear_coefficients, update_weights
from diffode.kernels import convert_and_combine, converts_in_place, linear_combination
from diffode.models.parameterizations import Deferred, Scaled
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint, memoised

__all__ = ["ExponentialIntegrator", "History", "Integrator", "State", "StepResult", "exponential_update",
           "linear_combination", "point_at_lambda", "settled"]

PREDICTIONS = ("data", "noise")
SOLVER_TYPES = ("dpmsolver", "taylor")


@dataclass(frozen=True)
class History:
    """One stored model output: its half log-SNR and value."""

    lam: float
    value: Scaled


@dataclass(frozen=True)
class State:
    """What an integrator carries from one step to the next (explicit, never hidden in the object).

    Attributes:
        history: Model outputs of earlier steps, oldest first (multistep methods only).
        step_index: How many steps were taken.
    """

    history: tuple[History, ...] = ()
    step_index: int = 0


@dataclass
class StepResult:
    """The outcome of one step.

    Attributes:
        x: The new state $x_t$.
        state: The integrator state for the next step.
        nfe: Model evaluations spent on this step.
        x_low: For embedded pairs, the lower-order solution (the error estimate is ``x - x_low``).
    """

    x: Tensor
    state: State
    nfe: int
    x_low: Tensor | None = field(default=None)


@functools.lru_cache(maxsize=16384)
def _cached_weights(h: float, nodes: tuple[float, ...], z: float, solver_type: str,
                    factors: tuple[float, ...] | None) -> tuple[float, ...]:
    return tuple(update_weights(h, nodes, z, solver_type, factors))


def step_weights(h: float, nodes: Sequence[float], z: float, solver_type: str = "taylor",
                 factors: Sequence[float] | None = None) -> tuple[float, ...]:
    """:func:`~diffode.integrators.coefficients.update_weights`, memoised.

    The weights depend on the time grid only, so sampling again on the same grid (the next batch,
    the next prompt) reuses them instead of re-evaluating the $\\varphi$-functions and the small
    Vandermonde solve on every step.
    """
    return _cached_weights(h, tuple(nodes), z, solver_type, None if factors is None else tuple(factors))


def exponential_update(x: Tensor, s: TimePoint, t: TimePoint, values: Sequence[Scaled | Deferred],
                       nodes: Sequence[float], predict: str, solver_type: str = "taylor",
                       factors: Sequence[float] | None = None) -> Tensor:
    r"""One exponential-integrator update from ``s`` to ``t`` using model outputs at ``nodes``.

    $x_t = a\,x_s + b\sum_j w_j m_j$ (see :mod:`diffode.integrators.coefficients`), applied by
    :func:`diffode.kernels.linear_combination` (one pass over memory on the CPU and on CUDA, else
    one scaled copy of ``x`` and one fused ``add_`` per model output); every coefficient is a Python
    float (the scale of each :class:`~diffode.models.Scaled` output is folded into its weight), and
    the weights are memoised per grid (:func:`step_weights`).

    A :class:`~diffode.models.parameterizations.Deferred` output not yet computed is computed in
    the same pass and settled (:func:`diffode.kernels.convert_and_combine`) when nothing else holds
    the network output it comes from; otherwise it is computed first.
    """
    a, b, z = linear_coefficients(s, t, predict)
    weights = step_weights(t.lam - s.lam, nodes, z, solver_type, factors)
    terms, pending, fusable = [], None, converts_in_place(x)
    for w, v in zip(weights, values):
        if type(v) is Deferred:
            if fusable and pending is None and not v.settled and v.output_is_exclusive():
                pending = (v, b * w)
                continue
            v = v.scaled()
        terms.append((v.tensor, b * w * v.scale))
    if pending is not None:
        d, c = pending
        x_t = convert_and_combine(x, a, terms, d.x, d.a, d.out, d.b, c)
        if x_t is not None:
            d.settle(Scaled(d.out))
            return x_t
        v = d.scaled()
        terms.append((v.tensor, c * v.scale))
    return linear_combination(x, a, terms)


def settled(value: Scaled | Deferred) -> Scaled:
    """A model output as a :class:`~diffode.models.Scaled` tensor (a deferred one computed if no update did)."""
    return value.scaled() if type(value) is Deferred else value


def point_at_lambda(schedule: NoiseSchedule, lam: float) -> TimePoint:
    """``schedule.point_at_lambda(lam)``, memoised per schedule (the stage points of singlestep methods).

    Inverting $\\lambda$ costs a few dozen small host tensor operations; a sampler that runs the
    same grid again (every batch) finds its intermediate points here instead.
    """
    lam = float(lam)
    return memoised(schedule, ("point_at_lambda", lam), lambda: schedule.point_at_lambda(lam))


class Integrator(abc.ABC):
    """Base class of the fixed-grid integrators.

    A subclass declares its nominal ``order`` and ``evals_per_step`` and implements :meth:`step`.
    History travels in the explicit :class:`State` that ``step`` returns.

    Attributes:
        order: The nominal global order of accuracy.
        evals_per_step: Model evaluations per step (at full order).
        error_order: The order of the embedded error estimate, or ``None`` if there is none.
        predict: ``"data"`` (DPM-Solver++) or ``"noise"`` (DPM-Solver): which model output is integrated.
    """

    order: int
    evals_per_step: ClassVar[int] = 1
    error_order: ClassVar[int | None] = None
    predict: str = "data"

    def init(self) -> State:
        """The state before the first step."""
        return State()

    def step_orders(self, n_steps: int, lower_order_final: bool = False) -> list[int]:
        """The order used at each of ``n_steps`` steps (lower at the start or end where a method needs it)."""
        return [self.order] * n_steps

    @abc.abstractmethod
    def step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State,
             order: int | None = None) -> StepResult:
        """Advance ``x`` from ``s`` to ``t``."""

    def evaluate(self, model: Predictor, x: Tensor, point: TimePoint, defer: bool = False) -> Scaled | Deferred:
        """The model output this integrator integrates (data or noise prediction).

        With ``defer``, a :class:`~diffode.models.parameterizations.Deferred` output may come back,
        for :func:`exponential_update` to compute in its own pass (:func:`settled` computes it
        otherwise); without, always a :class:`~diffode.models.Scaled` tensor.
        """
        if defer:
            return model.predict_deferred(x, point, self.predict)
        return model.predict(x, point, self.predict)


class ExponentialIntegrator(Integrator):
    """Shared constructor of the DPM-Solver family.

    Args:
        order: 1, 2 or 3.
        predict: ``"data"`` for DPM-Solver++ or ``"noise"`` for DPM-Solver.
        solver_type: ``"dpmsolver"`` or ``"taylor"``: the two second-order variants of the papers.
    """

    max_order: ClassVar[int] = 3

    def __init__(self, order: int = 2, predict: str = "data", solver_type: str = "dpmsolver"):
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= self.max_order:
            raise ValueError(f"order must be 1, 2 or 3 for {type(self).__name__}, got {order!r}")
        self.order = order
        self.predict = check_choice("predict", predict, PREDICTIONS)
        self.solver_type = check_choice("solver_type", solver_type, SOLVER_TYPES)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order}, predict={self.predict!r}, solver_type={self.solver_type!r})"
