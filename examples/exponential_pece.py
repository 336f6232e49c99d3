"""A predictor-corrector integrator written outside diffode, at one model evaluation per step.

Step ``i`` starts by evaluating the model at the state the previous step *predicted*. That output
serves twice: it first *corrects* the previous step (the exact integral of the line through the
outputs at both of its ends, the exponential trapezoidal rule, taken again from the previous state),
then it *predicts* the next state (exponential Adams-Bashforth 2 from the corrected state). So the
correction of a step happens at the start of the next one, and what a step needs from the one before
travels in its ``state``: the stored output in ``state.history`` and the state to correct from in
``state.carry``.

**The last step.** Its correction would need the model at the end of the run, one evaluation more:
the last step returns its prediction uncorrected (as UniPC skips its corrector on the last step).
"""

from __future__ import annotations

from diffode.integrators import ExponentialIntegrator, History, Update, exponential_update


class ExponentialPECE(ExponentialIntegrator):
    r"""Exponential Adams--Bashforth 2 predictor, exponential trapezoidal corrector (data form).

    With the previous step from $(x_p, \lambda_p)$ to $\lambda_s$ and its prediction $\tilde x_s$:
    $m_s = \hat x_0(\tilde x_s, \lambda_s)$; corrector
    $x_s = \frac{\sigma_s}{\sigma_p}x_p + \alpha_s h_p[(\varphi_1 - \varphi_2)(-h_p)\,m_p + \varphi_2(-h_p)\,m_s]$;
    predictor: the exponential AB2 step from $x_s$ with $m_s$ and $m_p$.

    * Order: 2.
    * Model evaluations per step: 1.
    * Error estimate: none.
    """

    max_order = 2

    def __init__(self):
        super().__init__(order=2, predict="data", solver_type="taylor")

    def _step(self, model, x, s, t, state, order):
        m_s = self.evaluate(model, x, s)
        if state.carry is not None:                      # correct the previous step with m_s
            x_p, p = state.carry
            m_p = state.history[-1].value
            x = exponential_update(x_p, p, s, [m_p, m_s], [0.0, 1.0], self.predict, "taylor")
        if state.history:                                # predict: AB2 through m_s and m_p
            m_p, lam_p = state.history[-1].value, state.history[-1].lam
            c = (lam_p - s.lam) / (t.lam - s.lam)
            x_t = exponential_update(x, s, t, [m_s, m_p], [0.0, c], self.predict, "taylor")
        else:                                            # first step: DDIM
            x_t = exponential_update(x, s, t, [m_s], [0.0], self.predict)
        return Update(x_t, history=(History(s.lam, m_s),), carry=(x, s))
