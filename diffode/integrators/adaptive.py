r"""Adaptive DPM-Solver (DPM-Solver-12 and DPM-Solver-23): embedded pairs in $\lambda$."""

from __future__ import annotations

from torch import Tensor

from diffode.integrators.base import ExponentialIntegrator, State, StepResult, exponential_update
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
    accept or reject the step and choose the next $h$.

    Args:
        order: 2 or 3, the higher order of the pair.
        predict: ``"data"`` (DPM-Solver++) or ``"noise"`` (DPM-Solver).
        solver_type: ``"dpmsolver"`` or ``"taylor"``.

    ??? cite "Reference"
        Lu et al., *DPM-Solver*, arXiv:2206.00927, Section 4 and Appendix C.
    """

    def __init__(self, order: int = 3, predict: str = "data", solver_type: str = "dpmsolver"):
        if order not in (2, 3):
            raise ValueError(f"the adaptive solver has order 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
        super().__init__(order, predict, solver_type)
        self._high = stages_for(order, solver_type, 0.5 if order == 2 else 1.0 / 3.0)

    @property
    def evals_per_step(self) -> int:  # type: ignore[override]
        return self.order

    @property
    def error_order(self) -> int:  # type: ignore[override]
        return self.order - 1

    def step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State,
             order: int | None = None) -> StepResult:
        m_s = self.evaluate(model, x, s, defer=True)
        x_high, nfe, values, fractions = run_stages(self, model, x, s, t, self._high, m_s)
        # The lower member reuses the first outputs: DPM-Solver-1 (order 2) or DPM-Solver-2 with r1 (order 3).
        n_low = self.order - 1
        x_low = exponential_update(x, s, t, values[:n_low], fractions[:n_low], self.predict, self.solver_type)
        return StepResult(x=x_high, state=State(step_index=state.step_index + 1), nfe=nfe, x_low=x_low)
