"""An integrator written outside diffode: the exponential trapezoidal rule (docs/extending/new-integrator.md).

A DDIM predictor to the end of the step, one model evaluation there, then the exact integral of the
straight line through the model outputs at both ends: second order, two evaluations per step.

Every front end takes it, by instance or as ``exponential_trapezoid:ExponentialTrapezoid`` when this
folder is importable::

    PYTHONPATH=examples diffode converge --integrators exponential_trapezoid:ExponentialTrapezoid
"""

from __future__ import annotations

import diffode as dd
from diffode.integrators import ExponentialIntegrator, Update, exponential_update


class ExponentialTrapezoid(ExponentialIntegrator):
    r"""Exponential trapezoidal rule: a DDIM predictor to $\lambda_t$, then the exact integral of the
    line through the model outputs at $\lambda_s$ and $\lambda_t$.

    * Order: 2.
    * Model evaluations per step: 2.
    * Error estimate: none.

    Args:
        predict: ``"data"`` (DPM-Solver++ form) or ``"noise"`` (DPM-Solver form).
    """

    evals_per_step = 2
    max_order = 2

    def __init__(self, predict: str = "data"):
        super().__init__(order=2, predict=predict, solver_type="taylor")

    def _step(self, model, x, s, t, state, order):
        m_s = self.evaluate(model, x, s)                                    # output at the start
        u = exponential_update(x, s, t, [m_s], [0.0], self.predict)         # DDIM predictor
        m_t = self.evaluate(model, u, t)                                    # output at the end
        return Update(exponential_update(x, s, t, [m_s, m_t], [0.0, 1.0], self.predict, "taylor"))


def main() -> None:
    import torch

    schedule = dd.LinearVP()
    mixture = dd.GaussianMixture([0.3, 0.7], [[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]], [0.3, 0.6])
    model = mixture.predictor(schedule)
    x_T = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    solver = dd.DPMSolver(model)
    x0 = solver.sample(x_T, steps=20, skip_type="logSNR", integrator=ExponentialTrapezoid())
    print(f"20 evaluations in {len(solver.last_solution.times) - 1} steps, NFE {solver.last_solution.nfe}, "
          f"|x0| = {x0.norm():.3f}")


if __name__ == "__main__":
    main()
