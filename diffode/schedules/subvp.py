r"""score_sde's sub-VP path: the linear VP's $\alpha_t$ with $\sigma_t = 1 - \alpha_t^2$."""

from __future__ import annotations

import torch
from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import Number, as_time
from diffode.schedules.base import NoiseSchedule
from diffode.schedules.vp import LinearVP

__all__ = ["SubVP"]


class SubVP(NoiseSchedule):
    r"""The sub-VP SDE of score-based generative modelling.

    $\alpha_t$ is that of :class:`~diffode.schedules.LinearVP`,
    $\log\alpha_t = -\tfrac12 I(t)$ with $I(t) = \int_0^t\beta = \beta_0 t + \tfrac12(\beta_1-\beta_0)t^2$,
    and $\sigma_t = 1 - \alpha_t^2$ (computed as $-\mathrm{expm1}(2\log\alpha_t)$, exact near
    $t = 0$), so $\alpha_t^2 + \sigma_t^2 \le 1$. The forward SDE has $f = -\tfrac12\beta(t)$ and
    $g^2(t) = \beta(t)\,(1 - e^{-2I(t)})$. The inverse of $\lambda_t = \log\alpha_t - \log(1-\alpha_t^2)$
    is closed form: $-\log\alpha = \operatorname{asinh}(e^{-\lambda}/2)$, then $t$ from $I$.
    The prior is $\mathcal N(0, I)$ as in score_sde (the marginal at $t = 1$ has
    $\sigma_1 = 1 - e^{-I(1)}$, about $1 - 4\cdot10^{-5}$ with the default betas).

    Args:
        beta_0: $\beta$ at $t = 0$, >= 0.
        beta_1: $\beta$ at $t = 1$, >= ``beta_0`` and > 0.

    ??? cite "Reference"
        Song et al., *Score-Based Generative Modeling through Stochastic Differential Equations*,
        arXiv:2011.13456 (the sub-VP SDE).
    """

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0):
        self._vp = LinearVP(beta_0, beta_1)  # validates the betas
        self.beta_0, self.beta_1 = self._vp.beta_0, self._vp.beta_1
        self.T, self.t_min = 1.0, 0.0

    def __repr__(self) -> str:
        return f"SubVP(beta_0={self.beta_0}, beta_1={self.beta_1})"

    def log_alpha(self, t: Tensor | Number) -> Tensor:
        return self._vp.log_alpha(t)

    def log_sigma(self, t: Tensor | Number) -> Tensor:
        xp = namespace(t)
        return xp.log(-xp.expm1(2.0 * self.log_alpha(t)))

    def f(self, t: Tensor | Number) -> Tensor:
        return self._vp.f(t)

    def g2(self, t: Tensor | Number) -> Tensor:
        # beta(t) (1 - alpha_t^4), with beta = -2 f.
        t = as_time(t)
        return 2.0 * self.f(t) * torch.expm1(4.0 * self.log_alpha(t))

    def d_sigma2_dt(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return self.g2(t) + 2.0 * self.f(t) * torch.exp(2.0 * self.log_sigma(t))

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        lam, xp = as_time(lam), namespace(lam)
        # alpha solves e^lam (1 - alpha^2) = alpha: -log alpha = asinh(e^{-lam} / 2). For lam < 0 the
        # same value is written -lam + log(1/2 + sqrt(1/4 + e^{2 lam})), which cannot overflow.
        small = xp.asinh(0.5 * xp.exp(-xp.clamp(lam, min=0.0)))
        large = -lam + xp.log(0.5 + xp.sqrt(0.25 + xp.exp(2.0 * xp.clamp(lam, max=0.0))))
        minus_log_alpha = xp.where(lam >= 0, small, large)
        return self._vp.time_from_integral(2.0 * minus_log_alpha)

    def prior_std(self) -> float:
        return 1.0


