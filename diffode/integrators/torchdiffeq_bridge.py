r"""Any torchdiffeq method as a diffode integrator: ``get_integrator("torchdiffeq:rk4")``.

The method integrates the probability-flow ODE in the half log-SNR for $y = x/\alpha$,
$\mathrm dy/\mathrm d\lambda = -e^{-\lambda}\hat\epsilon(\alpha y)$
(:func:`~diffode.integrators.reference.lambda_rhs`, the ground truth's right-hand side), and every
evaluation of that right-hand side is one model evaluation made through the model the step is
given, so the base class counts it. torchdiffeq's methods fall in three kinds, and each kind maps
onto the contract differently:

* **One-step methods** (``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``): one torchdiffeq step per
  diffode step, on the planned grid; the cost per step is the method's stage count, so a plan
  spends its budget exactly (``rk4``: ``nfe // 4`` steps).
* **Multistep methods** (``explicit_adams``: Adams--Bashforth of order ``max_order - 1`` after two
  RK4 warm-up steps, the order rising by one a step; ``implicit_adams``: Adams--Bashforth--Moulton of
  order ``max_order`` with functional iteration). diffode's default ``max_order`` is 4 (AB3, ABM4),
  not torchdiffeq's 12: Adams--Bashforth of high order has a tiny stability region, and
  torchdiffeq's default diverges on this ODE (RMSE $10^7$ at 24 steps on a Gaussian mixture) and even
  on $y' = -y + \cos t$ (error $10^3$ at 40 steps). Their past slopes live
  inside one torchdiffeq call, which no public API lets a caller resume. Step $i$ therefore calls
  torchdiffeq over the whole grid so far, from the first state, and answers the calls it has already
  seen from ``state.carry`` (the slopes, in call order): torchdiffeq replays its arithmetic to
  the same numbers, and only the new calls reach the model. The result equals one torchdiffeq call
  over the whole grid; the price is $O(n^2)$ cheap vector operations and the memory of every slope.
  ``explicit_adams`` costs 4, 4, then 1 evaluation per step (exact plans); ``implicit_adams``
  iterates its corrector until ``rtol``/``atol`` are met, so its cost is known only after the run.
* **Adaptive methods** (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``): they choose their
  own steps from ``rtol`` and ``atol`` and expose no error estimate per step through the public
  API, so they cannot be diffode embedded pairs (``error_order``). A plan is **one step across the
  whole interval** (the grid is ignored), in which torchdiffeq adapts; on given times (``solve``
  with a list of times) it adapts inside each of their steps.

For methods whose cost is known only after the run (adaptive ones and ``implicit_adams``) the budget
does not bind and ``Plan.nfe`` is 0; ``Solution.nfe`` is the exact count either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from diffode._utils import check_choice, check_finite_number, check_int
from diffode.integrators.base import Integrator, State, Update
from diffode.integrators.grids import TimeGrid
from diffode.integrators.reference import lambda_rhs
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["METHODS", "Torchdiffeq"]


@dataclass(frozen=True)
class Method:
    """What diffode needs to know about a torchdiffeq method.

    Attributes:
        kind: ``"onestep"``, ``"multistep"`` or ``"adaptive"``.
        order: Its order of accuracy.
        stages: Model evaluations per step (one-step methods; for the multistep ones, per step after the warm-up).
    """

    kind: str
    order: int
    stages: int


METHODS: dict[str, Method] = {
    "euler": Method("onestep", 1, 1),
    "midpoint": Method("onestep", 2, 2),
    "heun2": Method("onestep", 2, 2),
    "heun3": Method("onestep", 3, 3),
    "rk4": Method("onestep", 4, 4),
    "explicit_adams": Method("multistep", 3, 1),
    "implicit_adams": Method("multistep", 4, 2),
    "dopri5": Method("adaptive", 5, 6),
    "dopri8": Method("adaptive", 8, 12),
    "bosh3": Method("adaptive", 3, 3),
    "fehlberg2": Method("adaptive", 2, 2),
    "adaptive_heun": Method("adaptive", 2, 2),
}

# explicit_adams takes its first two steps with RK4 (torchdiffeq starts Adams-Bashforth 3 once it
# holds three slopes), 4 evaluations each.
_WARMUP_STEPS, _WARMUP_COST = 2, 4


@dataclass(frozen=True)
class _Replay:
    """The carry of a multistep method: where its torchdiffeq call starts and every slope it saw."""

    y0: Tensor
    lams: tuple[float, ...]
    slopes: tuple[tuple[float, Tensor], ...]


class Torchdiffeq(Integrator):
    """A torchdiffeq method on the probability-flow ODE in $\\lambda$ (see the module docstring).

    ``get_integrator("torchdiffeq:METHOD")`` builds one with the default tolerances;
    ``diffode.study.configure_integrator("torchdiffeq:dopri5", rtol=1e-4)`` changes them.

    * Order: the method's (``rk4``: 4, ``explicit_adams``: 3, ``dopri5``: 5, ...).
    * Model evaluations per step: its stage count (one-step methods); see the module docstring for the others.
    * Error estimate: none that diffode sees (adaptive methods adapt inside a step).

    Args:
        method: A torchdiffeq method name (:data:`METHODS`).
        rtol: Relative tolerance of adaptive methods and of ``implicit_adams``'s corrector.
        atol: Absolute tolerance (on $y = x/\\alpha$), likewise.
        max_order: For the Adams methods, torchdiffeq's ``max_order`` (4 to 12; default 4): the
            explicit method reaches order ``max_order - 1``, the implicit one ``max_order``.
    """

    predict = "noise"

    def __init__(self, method: str = "rk4", rtol: float = 1e-5, atol: float = 1e-5, max_order: int = 4):
        self.method = check_choice("torchdiffeq method", method, METHODS)
        self.rtol = check_finite_number("rtol", rtol, positive=True)
        self.atol = check_finite_number("atol", atol, positive=True)
        self.max_order = check_int("max_order", max_order, low=4)
        if self.max_order > 12:
            raise ValueError(f"max_order must be an integer in [4, 12] (torchdiffeq's Adams tables), got {max_order}")
        spec = METHODS[method]
        self.kind = spec.kind
        self.order = spec.order
        if method == "explicit_adams":
            self.order = self.max_order - 1
        elif method == "implicit_adams":
            self.order = self.max_order
        self.evals_per_step = spec.stages

    def __repr__(self) -> str:
        extra = "" if self.kind == "onestep" or self.method == "explicit_adams" else \
            f", rtol={self.rtol}, atol={self.atol}"
        if self.kind == "multistep":
            extra += f", max_order={self.max_order}"
        return f"Torchdiffeq({self.method!r}{extra})"

    @property
    def cost_known(self) -> bool:
        """Whether a plan's NFE is known before the run (not for adaptive methods and ``implicit_adams``)."""
        return self.kind == "onestep" or self.method == "explicit_adams"

    # -- the budget -------------------------------------------------------------------------------

    def evaluations(self, orders: Sequence[int]) -> int:
        """Exact for one-step methods and ``explicit_adams``; 0 (known only after the run) otherwise."""
        n = len(orders)
        if self.kind == "onestep":
            return self.evals_per_step * n
        if self.method == "explicit_adams":
            return _WARMUP_COST * min(n, _WARMUP_STEPS) + max(n - _WARMUP_STEPS, 0)
        return 0

    def plan_orders(self, nfe: int, lower_order_final: bool | int = True) -> list[int]:
        """As many steps as fit; adaptive methods: one step across the interval (the budget does not bind)."""
        if self.kind == "adaptive":
            return [self.order]
        if self.method == "implicit_adams":  # at least its warm-up cost and two evaluations a step
            warm = _WARMUP_COST * _WARMUP_STEPS
            n = nfe // _WARMUP_COST if nfe < warm else _WARMUP_STEPS + (nfe - warm) // 2
            return [self.order] * max(n, 1)
        if self.method == "explicit_adams":
            warm = _WARMUP_COST * _WARMUP_STEPS
            n = nfe // _WARMUP_COST if nfe < warm else _WARMUP_STEPS + nfe - warm
            return [self.order] * max(n, 1)
        return super().plan_orders(nfe, lower_order_final)

    def plan_times(self, schedule: NoiseSchedule, grid: TimeGrid, t_start: float, t_end: float,
                   orders: Sequence[int]) -> Tensor:
        """The grid's times; adaptive methods: just ``[t_start, t_end]``."""
        if self.kind == "adaptive":
            return torch.tensor([t_start, t_end], dtype=torch.float64)
        return super().plan_times(schedule, grid, t_start, t_end, orders)

    # -- stepping ---------------------------------------------------------------------------------

    def _odeint(self, rhs, y: Tensor, lams: Sequence[float]) -> Tensor:
        options = {"max_order": self.max_order} if self.kind == "multistep" else None
        return odeint(rhs, y, torch.tensor(lams, dtype=torch.float64), method=self.method, rtol=self.rtol,
                      atol=self.atol, options=options)

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        schedule = model.schedule
        rhs = lambda_rhs(model, schedule.point_at_lambda)
        if self.kind != "multistep":
            y_t = self._odeint(rhs, x / s.alpha, [s.lam, t.lam])[-1]
            return Update(y_t * t.alpha)
        replay = state.carry
        if replay is None or replay.lams[-1] != s.lam:  # the first step (or a run restarted elsewhere)
            replay = _Replay(x / s.alpha, (s.lam,), ())
        seen, calls = replay.slopes, []

        def replaying(lam: Tensor, y: Tensor) -> Tensor:
            k = len(calls)
            if k < len(seen):
                if seen[k][0] != float(lam):
                    raise RuntimeError(f"torchdiffeq's {self.method} did not replay its earlier steps "
                                       f"(call {k} at lambda={float(lam)!r}, recorded at {seen[k][0]!r})")
                calls.append(seen[k])
            else:
                calls.append((float(lam), rhs(lam, y)))
            return calls[-1][1]

        lams = (*replay.lams, t.lam)
        y_t = self._odeint(replaying, replay.y0, lams)[-1]
        return Update(y_t * t.alpha, carry=_Replay(replay.y0, lams, tuple(calls)))


def torchdiffeq_integrator(method: str) -> Torchdiffeq:
    """The factory behind the ``torchdiffeq:`` prefix of :func:`~diffode.integrators.get_integrator`."""
    if method not in METHODS:
        raise ValueError(f"unknown torchdiffeq method {method!r}; expected one of {', '.join(METHODS)}")
    return Torchdiffeq(method)
