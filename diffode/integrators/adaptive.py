r"""Adaptive DPM-Solver (DPM-Solver-12 and DPM-Solver-23): embedded pairs in $\lambda$."""

from __future__ import annotations

from torch import Tensor

from diffode.integrators.base import ExponentialIntegrator, State, Update, exponential_update
from diffode.integrators.singlestep import run_stages, stages_for
from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["DPMSolverAdaptive"]


class DPMSolverAdaptive(ExponentialIntegrator):
    r"""An embedded pair of singlestep DPM-Solvers that share their model evaluations.

    * ``order=2`` (DPM-Solver-12): DPM-Solver-1 and DPM-Solver-2 with $r_1 = 1/2$; 2 evaluations per step.
    * ``order=3`` (DPM-Solver-23): DPM-Solver-2 with $r_1 = 1/3$ and DPM-Solver-3 with
      $r_1, r_2 = 1/3, 2/3$; 3 evaluations per step.

    :meth:`step` returns the higher-order solution and the lower-order one (``x_low``); the
    difference is the error estimate that :class:`~diffode.controllers.AdaptiveController` uses to
    accept or reject the step and choose the next $h$ (:func:`~diffode.solve_adaptive`).

    Args:
        order: 2 or 3, the higher order of the pair.
        predict: ``"data"`` (DPM-Solver++) or ``"noise"`` (DPM-Solver).
        solver_type: ``"dpmsolver"`` or ``"taylor"``.

    ??? cite "Reference"
        Lu et al., *DPM-Solver*, arXiv:2206.00927, Section 4 and Appendix C.
    """

    def __init__(self, order: int = 3, predict: str = "data", solver_type: str = "dpmsolver"):
        if order not in (2, 3) or isinstance(order, bool):
            raise ValueError(f"the adaptive solver has order 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
        super().__init__(order, predict, solver_type)
        self.evals_per_step = order
        self.error_order = order - 1
        self._high = stages_for(order, solver_type, 0.5 if order == 2 else 1.0 / 3.0)

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        x_high, values, fractions = run_stages(self, model, x, s, t, self._high, self.evaluate(model, x, s))
        # The lower member reuses the first outputs: DPM-Solver-1 (order 2) or DPM-Solver-2 with r1 (order 3).
        n_low = self.order - 1
        x_low = exponential_update(x, s, t, values[:n_low], fractions[:n_low], self.predict, self.solver_type)
        return Update(x_high, x_low=x_low)
