r"""DEIS tAB: the exponential integrator with the noise prediction extrapolated by a polynomial in $t$."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.polynomial import polynomial as P
from torch import Tensor

from diffode._utils import check_int
from diffode.integrators.base import History, Integrator, State, Update, apply_lower_order_final, linear_combination
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint, memoised

__all__ = ["DEIS", "tab_weights"]

MAX_ORDER = 4


def _rho(schedule: NoiseSchedule, t_s: float, t_t: float, u: np.ndarray) -> np.ndarray:
    """$\\rho = \\sigma/\\alpha = e^{-\\lambda}$ at the fractions ``u`` of the step from ``t_s`` to ``t_t``."""
    times = torch.as_tensor(t_s + u * (t_t - t_s), dtype=torch.float64)
    return np.exp(-schedule.lambda_(times).numpy())


GAUSS_NODES = 20
_GAUSS = np.polynomial.legendre.leggauss(GAUSS_NODES)


def _panels(schedule: NoiseSchedule, t_a: float, t_b: float) -> np.ndarray:
    r"""Breakpoints of ``[t_a, t_b]`` (``t_a < t_b``) between which $\rho$ is analytic well beyond each panel.

    $\rho$ is singular at $t \le 0$ (where $\sigma \to 0$ like $\sqrt t$), so the panels double in
    width away from 0 (each as wide as its distance from 0); a piecewise schedule (a DiscreteVP's
    knots, ``t_array``) is split at its knots too.
    """
    bounds = [t_a, t_b]
    if t_a > 0.0:
        x = 2.0 * t_a
        while x < t_b:
            bounds.append(x)
            x *= 2.0
    knots = getattr(schedule, "t_array", None)
    if isinstance(knots, Tensor):
        k = knots.detach().double().cpu().numpy()
        bounds.extend(k[(k > t_a) & (k < t_b)].tolist())
    return np.unique(np.asarray(bounds, dtype=np.float64))


def tab_weights(schedule: NoiseSchedule, times: Sequence[float], t_end: float) -> list[float]:
    r"""$C_j = \int_{t_s}^{t_e} \ell_j(\tau)\,\mathrm{d}\rho(\tau)$: the tAB weights of the outputs at ``times``.

    $\ell_j$ is the Lagrange basis polynomial in $t$ through ``times`` (the step start
    $t_s$ first) and $\rho = \sigma/\alpha$. Integrated by parts,
    $C_j = \ell_j(t_e)\rho_e - \ell_j(t_s)\rho_s - \int \rho\,\ell_j'\,\mathrm{d}\tau$, so only $\rho$
    itself is needed (no derivative of the schedule, which a discrete schedule has only piecewise).
    The remaining integral is composite Gauss--Legendre quadrature (20 nodes per panel, float64)
    on panels that keep $\rho$ analytic far around each (:func:`_panels`): accurate to round-off
    (``tests/integrators/test_families.py`` checks it against adaptive quadrature), and one
    vectorised evaluation of the schedule per step.

    Args:
        schedule: The noise schedule.
        times: The times of the stored outputs, the step start first; distinct.
        t_end: The end of the step.
    """
    t_s = float(times[0])
    dt = float(t_end) - t_s
    nodes = np.array([(float(t) - t_s) / dt for t in times])
    n = len(nodes)
    rho_s, rho_e = _rho(schedule, t_s, float(t_end), np.array([0.0, 1.0]))
    if n == 1:
        return [float(rho_e - rho_s)]
    bounds = np.sort((_panels(schedule, min(t_s, float(t_end)), max(t_s, float(t_end))) - t_s) / dt)  # in u
    left, width = bounds[:-1, None], np.diff(bounds)[:, None]
    x, w = _GAUSS
    u = (left + 0.5 * width * (x[None, :] + 1.0)).ravel()
    weight = (0.5 * width * w[None, :]).ravel()
    rho = _rho(schedule, t_s, float(t_end), u)
    out = []
    for j in range(n):
        others = np.delete(nodes, j)
        basis = P.polyfromroots(others) / np.prod(nodes[j] - others)
        inner = float(np.sum(weight * rho * P.polyval(u, P.polyder(basis))))
        out.append(float(P.polyval(1.0, basis) * rho_e - P.polyval(0.0, basis) * rho_s - inner))
    return out


class DEIS(Integrator):
    r"""DEIS tAB: the noise prediction extrapolated in $t$, integrated against the exponential weight.

    In noise form the probability-flow ODE has the exact solution
    $x_t = \frac{\alpha_t}{\alpha_s}x_s + \alpha_t\int_{t_s}^{t}\hat\epsilon(\tau)\,\mathrm{d}\rho(\tau)$,
    $\rho = \sigma/\alpha = e^{-\lambda}$. tAB-$r$ replaces $\hat\epsilon$ by the polynomial in $t$
    of degree $r$ through the current and the $r$ previous outputs:
    $$x_t = \frac{\alpha_t}{\alpha_s}x_s + \alpha_t\sum_{j=0}^{r} C_j\,\hat\epsilon_{s-j},\qquad
    C_j = \int_{t_s}^{t}\prod_{k\ne j}\frac{\tau - t_{s-k}}{t_{s-j} - t_{s-k}}\,\mathrm{d}\rho(\tau),$$
    with the weights $C_j$ by quadrature (:func:`tab_weights`; they depend on the grid only and are
    computed once per grid and schedule). tAB-0 is DDIM. Extrapolating in $\lambda$ instead gives
    the noise-form multistep DPM-Solver (:class:`~diffode.integrators.DPMSolverMultistep` with
    ``predict="noise"``, ``solver_type="taylor"``), which is what diffusers' ``DEISMultistepScheduler``
    (``"logrho"``) computes.

    * Order: ``order`` $= r + 1$ (1 to 4).
    * Model evaluations per step: 1.
    * Error estimate: none.

    The first steps warm up (orders $1, 2, \dots$); ``lower_order_final`` lowers the last ones
    (:func:`~diffode.integrators.base.apply_lower_order_final`), as for the other multistep methods.

    Args:
        order: $r + 1$: 1 (DDIM, tAB-0) to 4 (tAB-3).

    ??? cite "Reference"
        Zhang & Chen, *Fast Sampling of Diffusion Models with Exponential Integrator*, ICLR 2023,
        arXiv:2204.13902.
    """

    evals_per_step = 1
    predict = "noise"

    def __init__(self, order: int = 4):
        order = check_int("order", order, low=1)
        if order > MAX_ORDER:
            raise ValueError(f"order must be 1 to {MAX_ORDER} for DEIS (tAB-0 to tAB-{MAX_ORDER - 1}), got {order}")
        self.order = order

    def __repr__(self) -> str:
        return f"DEIS(order={self.order})"

    def step_orders(self, n_steps: int, lower_order_final: bool | int = False) -> list[int]:
        """Orders $1, 2, \\dots$ while the outputs accumulate, then
        :func:`~diffode.integrators.base.apply_lower_order_final`."""
        return apply_lower_order_final([min(self.order, i + 1) for i in range(n_steps)], lower_order_final)

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        eps = self.evaluate(model, x, s)
        keep = self.order - 1
        # state.history holds the outputs, state.carry their times (oldest first): tAB needs t, not lambda.
        past_times = state.carry or ()
        outputs = (*state.history, History(s.lam, eps))[-keep:] if keep else ()
        kept_times = (*past_times, s.t)[-keep:] if keep else ()
        if t.t == s.t:
            return Update(linear_combination(x, 1.0, []), history=outputs, carry=kept_times)
        values = [eps, *(p.value for p in state.history[::-1])][:order]
        times = (s.t, *past_times[::-1])[:order]
        schedule = model.schedule
        weights = memoised(schedule, ("deis_tab", times, t.t), lambda: tab_weights(schedule, times, t.t))
        return Update(linear_combination(x, t.alpha / s.alpha, [(v, t.alpha * w) for v, w in zip(values, weights)]),
                      history=outputs, carry=kept_times)
