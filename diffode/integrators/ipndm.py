r"""iPNDM: Adams--Bashforth on the noise prediction in $\rho = \sigma/\alpha$, with a lower-order warm start."""

from __future__ import annotations

import math
from fractions import Fraction

from torch import Tensor

from diffode._utils import check_int
from diffode.integrators.base import History, Integrator, State, Update, linear_combination, step_weights
from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["IPNDM", "ADAMS_BASHFORTH"]

#: The Adams--Bashforth weights for equal steps, newest output first (``ADAMS_BASHFORTH[k]``, order k).
ADAMS_BASHFORTH: dict[int, tuple[Fraction, ...]] = {
    1: (Fraction(1),),
    2: (Fraction(3, 2), Fraction(-1, 2)),
    3: (Fraction(23, 12), Fraction(-16, 12), Fraction(5, 12)),
    4: (Fraction(55, 24), Fraction(-59, 24), Fraction(37, 24), Fraction(-9, 24)),
}


class IPNDM(Integrator):
    r"""iPNDM: the linear multistep (Adams--Bashforth) method on $\mathrm{d}\bar x/\mathrm{d}\rho = \hat\epsilon$.

    With $\rho = \sigma/\alpha = e^{-\lambda}$ and $\bar x = x/\alpha$ the probability-flow ODE reads
    $\mathrm{d}\bar x/\mathrm{d}\rho = \hat\epsilon_\theta(x, t)$ (for EDM and VE paths, $\alpha = 1$:
    $\mathrm{d}x/\mathrm{d}\sigma = \hat\epsilon$). A step of order $k$ from $s$ to $t$ is
    $$x_t = \frac{\alpha_t}{\alpha_s}x_s + \alpha_t(\rho_t - \rho_s)\sum_{j=0}^{k-1} c_j\,\hat\epsilon_{s-j},$$
    with the Adams--Bashforth weights for equal steps, $c = 1$; $(3, -1)/2$; $(23, -16, 5)/12$;
    $(55, -59, 37, -9)/24$ (newest first). Order 1 is DDIM. The first steps use orders $1, 2, 3$
    (the improved warm start of Zhang & Chen: lower-order Adams--Bashforth instead of the Runge--Kutta
    steps of PNDM, so every step costs one evaluation).

    The fixed weights assume steps equal in $\rho$. On any other grid (logSNR, Karras, time-uniform)
    they stay consistent, and on a smooth grid the method converges at order 2 whatever $k$ is.
    ``variable_step=True`` integrates the interpolating polynomial in $\rho$ through the stored
    outputs exactly instead (DEIS's $\rho$AB, k-diffusion's ``ipndm_v``): order $k$ on any grid.

    * Order: ``order`` (1 to 4); on grids not equal in $\rho$, 2 for the fixed weights.
    * Model evaluations per step: 1.
    * Error estimate: none.

    Args:
        order: 1 to 4 (the default 4 is the iPNDM of the papers).
        variable_step: Weights for the actual steps (exact integration of the interpolant in
            $\rho$) instead of the equal-step weights.

    ??? cite "Reference"
        Zhang & Chen, *Fast Sampling of Diffusion Models with Exponential Integrator* (DEIS),
        ICLR 2023, arXiv:2204.13902 (iPNDM, Appendix); Zhou et al., *Fast ODE-based Sampling for
        Diffusion Models in Around 5 Steps* (AMED), CVPR 2024, arXiv:2312.00094.
    """

    evals_per_step = 1
    predict = "noise"

    def __init__(self, order: int = 4, variable_step: bool = False):
        order = check_int("order", order, low=1)
        if order > 4:
            raise ValueError(f"order must be 1, 2, 3 or 4 for IPNDM, got {order}")
        if not isinstance(variable_step, bool):
            raise TypeError(f"variable_step must be a bool, got {type(variable_step).__name__}")
        self.order = order
        self.variable_step = variable_step

    def __repr__(self) -> str:
        return f"IPNDM(order={self.order}, variable_step={self.variable_step})"

    def step_orders(self, n_steps: int, lower_order_final: bool | int = False) -> list[int]:
        """Orders $1, 2, \\dots$ on the first steps (the warm start); ``lower_order_final`` is not part
        of iPNDM and is ignored."""
        return [min(self.order, i + 1) for i in range(n_steps)]

    def weights(self, s: TimePoint, t: TimePoint, lams: list[float]) -> list[float]:
        """The weights $c_j$ of the outputs at half log-SNRs ``lams`` (newest first) for a step from ``s`` to ``t``."""
        if not self.variable_step or len(lams) == 1:
            return [float(c) for c in ADAMS_BASHFORTH[len(lams)]]
        rho_s, rho_t = math.exp(-s.lam), math.exp(-t.lam)
        # Nodes as fractions of the step in rho; with z = 0 the weights integrate the interpolant
        # over [0, 1] exactly (g_n = 1/(n+1)).
        nodes = [(math.exp(-lam) - rho_s) / (rho_t - rho_s) for lam in lams]
        return list(step_weights(1.0, nodes, 0.0, "taylor"))

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        eps = self.evaluate(model, x, s)
        current = History(s.lam, eps)
        used = (current, *state.history[::-1])[:order]
        keep = self.order - 1
        history = (*state.history, current)[-keep:] if keep else ()
        if t.lam == s.lam:
            return Update(linear_combination(x, 1.0, []), history=history)
        # alpha_t (rho_t - rho_s), written as sigma_t - alpha_t rho_s.
        b = t.sigma - t.alpha * s.sigma / s.alpha
        c = self.weights(s, t, [u.lam for u in used])
        return Update(linear_combination(x, t.alpha / s.alpha, [(u.value, b * w) for u, w in zip(used, c)]),
                      history=history)
