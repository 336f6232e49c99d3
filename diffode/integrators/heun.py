r"""EDM's Heun sampler (Karras et al. 2022, Algorithm 1, deterministic), on any diffode schedule.

EDM integrates $\mathrm dx/\mathrm d\sigma = (x - D(x;\sigma))/\sigma$ on the path $x = x_0 + \sigma\epsilon$.
Any Gaussian path $x_t = \alpha_t x_0 + \sigma_t\epsilon$ becomes that one in the scaled variables

$$y = x/\alpha, \qquad \tilde\sigma = \sigma/\alpha = e^{-\lambda}:$$

from the probability-flow ODE in $\lambda$, $\mathrm dy/\mathrm d\lambda = -e^{-\lambda}\hat\epsilon$, and
$\mathrm d\tilde\sigma/\mathrm d\lambda = -e^{-\lambda}$,

$$\frac{\mathrm dy}{\mathrm d\tilde\sigma} = \hat\epsilon(\alpha y, t) = \frac{y - \hat x_0}{\tilde\sigma},$$

which is EDM's ODE with $D = \hat x_0$. So VP, VE, EDM and flow schedules all run the same Heun
step, in $\tilde\sigma$, with the noise prediction as the slope.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from diffode.integrators.base import Integrator, State, Update, linear_combination
from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["Heun"]


class Heun(Integrator):
    r"""EDM's second-order Heun method in $\tilde\sigma = \sigma/\alpha$ for $y = x/\alpha$.

    With $\Delta = \tilde\sigma_t - \tilde\sigma_s$ and $d_s = \hat\epsilon(x_s, s)$, one step is

    $$\tilde x_t = \frac{\alpha_t}{\alpha_s}x_s + \alpha_t\Delta\,d_s, \qquad
    x_t = \frac{\alpha_t}{\alpha_s}x_s + \alpha_t\Delta\,\frac{d_s + \hat\epsilon(\tilde x_t, t)}{2}.$$

    The Euler predictor $\tilde x_t$ is exactly DDIM (noise form: $\sigma_t(e^h - 1) = -\alpha_t\Delta$),
    so a step of order 1 is DDIM and costs one evaluation.

    * Order: 2 (a step at ``order=1`` is the Euler step, DDIM).
    * Model evaluations per step: 2 (1 at order 1).
    * Error estimate: none.
    * Plan: ``nfe // 2`` Heun steps on the grid, and with an odd budget one final Euler step.

    **The final step to $\sigma = 0$.** EDM's Algorithm 1 ends on $\sigma = 0$ with an Euler step,
    whose result is $y - \tilde\sigma\,(y - \hat x_0)/\tilde\sigma = \hat x_0$: the data prediction.
    diffode's grids end at $t > 0$ (finite $\lambda$), where every step is a Heun step; pass
    ``denoise_to_zero=True`` to a plan for EDM's last step: it is that one evaluation. EDM's
    $N$-step run ($2N - 1$ evaluations) is then a plan of ``2N - 2`` evaluations with
    ``denoise_to_zero=True``.

    ??? cite "Reference"
        Karras, Aittala, Aila, Laine, *Elucidating the Design Space of Diffusion-Based Generative
        Models*, NeurIPS 2022, arXiv:2206.00364 (Algorithm 1).
    """

    order = 2
    evals_per_step = 2
    predict = "noise"

    def __repr__(self) -> str:
        return "Heun()"

    def evaluations(self, orders: Sequence[int]) -> int:
        """A Heun step costs 2 evaluations, an Euler step 1."""
        return sum(orders)

    def plan_orders(self, nfe: int, lower_order_final: bool | int = True) -> list[int]:
        """``nfe // 2`` Heun steps, then an Euler step if ``nfe`` is odd (one Euler step for ``nfe = 1``)."""
        return [2] * (nfe // 2) + [1] * (nfe % 2)

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        a = t.alpha / s.alpha
        delta = t.sigma / t.alpha - s.sigma / s.alpha
        d_s = self.evaluate(model, x, s)
        euler = linear_combination(x, a, [(d_s, t.alpha * delta)])
        if order == 1:
            return Update(euler)
        d_t = self.evaluate(model, euler, t)
        half = 0.5 * t.alpha * delta
        return Update(linear_combination(x, a, [(d_s, half), (d_t, half)]))
