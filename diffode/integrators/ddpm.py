r"""DDPM's ancestral sampler with DDIM's ``eta``, on any Gaussian path."""

from __future__ import annotations

import math

from torch import Tensor

from diffode._utils import check_finite_number
from diffode.integrators.base import Integrator, State, Update, linear_combination
from diffode.models.predictor import Predictor
from diffode.noise import NoiseSource
from diffode.schedules.base import TimePoint

__all__ = ["DDPM"]


class DDPM(Integrator):
    r"""Ancestral sampling: draw $x_t$ from the Gaussian posterior $q(x_t \mid x_s, \hat x_0)$, with DDIM's ``eta``.

    With $h = \lambda_t - \lambda_s$ and $\hat\epsilon = (x_s - \alpha_s\hat x_0)/\sigma_s$,
    $$x_t = \alpha_t\hat x_0 + \sqrt{\sigma_t^2 - c^2}\,\hat\epsilon + c\,z,\qquad
    c = \eta\,\sigma_t\sqrt{1 - e^{-2h}},\quad z \sim \mathcal N(0, I).$$
    $c^2$ at $\eta = 1$ is the posterior variance $\sigma_t^2(1 - e^{-2h})$ of the forward process
    from $t$ to $s$ (DDPM's $\tilde\beta$ on a variance-preserving path, written for any path);
    $\eta = 0$ is DDIM (:func:`~diffode.get_integrator` ``("ddim")``, to round-off).
    At $\eta = 1$ the step equals SDE-DPM-Solver++(1) (:class:`SDEDPMSolverMultistep`), draw for draw.

    * Order: 1 (strong order 1 and weak order 1 at $\eta = 1$).
    * Model evaluations per step: 1. Draws per step: 1 (none when $\eta = 0$); Brownian clock
      $u = e^{2\lambda}$, as SDE-DPM-Solver++'s at $\eta = 1$.

    Args:
        eta: In $[0, 1]$: 1 ancestral sampling (DDPM), 0 DDIM.

    ??? cite "Reference"
        Ho et al., *Denoising Diffusion Probabilistic Models*, NeurIPS 2020, arXiv:2006.11239;
        Song et al., *Denoising Diffusion Implicit Models*, ICLR 2021, arXiv:2010.02502.
    """

    order = 1
    stochastic = True
    strong_order = 1.0
    weak_order = 1.0
    evals_per_step = 1

    def __init__(self, eta: float = 1.0):
        self.eta = check_finite_number("eta", eta, nonnegative=True)
        if self.eta > 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")

    def __repr__(self) -> str:
        return f"DDPM(eta={self.eta})"

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int,
              noise: NoiseSource) -> Update:
        x0 = model.predict(x, s, "data")
        h = t.lam - s.lam
        if h == 0.0:
            return Update(linear_combination(x, 1.0, []))
        one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        q = math.sqrt(1.0 - self.eta ** 2 * one_minus)  # sqrt(sigma_t^2 - c^2) / sigma_t
        # alpha_t - q sigma_t alpha_s / sigma_s = alpha_t (1 - q e^{-h}), without cancellation for small h
        b = t.alpha * (-math.expm1(-h) + math.exp(-h) * self.eta ** 2 * one_minus / (1.0 + q))
        x_t = linear_combination(x, q * t.sigma / s.sigma, [(x0, b)])
        if self.eta > 0.0:
            z = noise.normal(x, (math.exp(2.0 * s.lam), math.exp(2.0 * t.lam)))
            x_t.add_(z, alpha=self.eta * t.sigma * math.sqrt(one_minus))
        return Update(x_t)
