"""A multistep integrator written outside diffode: exponential Adams-Bashforth 2 in data form.

Each step evaluates the model once, at its start, and integrates exactly the straight line through
that output and the one stored from the step before (unequal steps allowed). The stored output
travels in ``state.history``, not in the object: one instance serves any number of solves. On its
first step there is no stored output yet, and the step is DDIM (first order): the warm-up.

This is DPM-Solver++ 2M with the ``"taylor"`` weights, written from scratch; the tests check that
it agrees with the built-in ``DPMSolverMultistep(2, solver_type="taylor")`` to round-off.
"""

from __future__ import annotations

from diffode.integrators import ExponentialIntegrator, History, Update, exponential_update


class ExponentialAB2(ExponentialIntegrator):
    r"""Exponential Adams--Bashforth of order 2 (data form).

    With $h = \lambda_t - \lambda_s$ and the previous output at $\lambda_p$, $c = (\lambda_p - \lambda_s)/h$:
    $x_t = \frac{\sigma_t}{\sigma_s}x_s + \alpha_t\,(w_0\,\hat x_0^{(s)} + w_1\,\hat x_0^{(p)})$, the
    exact integral of the line through both outputs.

    * Order: 2 (the first step is first order).
    * Model evaluations per step: 1.
    * Error estimate: none.
    """

    max_order = 2

    def __init__(self):
        super().__init__(order=2, predict="data", solver_type="taylor")

    def step_orders(self, n_steps, lower_order_final=False):
        """The first step has no stored output: first order; then second order."""
        return [min(2, i + 1) for i in range(n_steps)]

    def _step(self, model, x, s, t, state, order):
        m_s = self.evaluate(model, x, s)
        if order == 1 or not state.history:
            x_t = exponential_update(x, s, t, [m_s], [0.0], self.predict)
        else:
            previous = state.history[-1]
            c = (previous.lam - s.lam) / (t.lam - s.lam)
            x_t = exponential_update(x, s, t, [m_s, previous.value], [0.0, c], self.predict, "taylor")
        return Update(x_t, history=(History(s.lam, m_s),))
