r"""Variance-exploding paths ($\alpha_t = 1$): score_sde's VE SDE and the EDM path of Karras et al."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import Number, as_time, check_finite_number
from diffode.schedules.base import VESchedule

__all__ = ["EDM", "VE"]


def _check_sigma_range(sigma_min, sigma_max) -> tuple[float, float]:
    sigma_min = check_finite_number("sigma_min", sigma_min, positive=True)
    sigma_max = check_finite_number("sigma_max", sigma_max, positive=True)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}")
    return sigma_min, sigma_max


class VE(VESchedule):
    r"""The VE SDE of score-based generative modelling (SMLD in continuous time).

    $\alpha_t = 1$ and $\sigma_t = \sigma_{min}(\sigma_{max}/\sigma_{min})^t$ on $t\in[0, 1]$, so
    $\lambda_t = -\log\sigma_{min} - t\log(\sigma_{max}/\sigma_{min})$ is affine in $t$ and finite at
    both ends; $f = 0$ and $g^2(t) = 2\sigma_t^2\log(\sigma_{max}/\sigma_{min})$. As in score_sde,
    $\sigma_0 = \sigma_{min} > 0$: the path's $x_0$ is the clean data and $x_{t=0}$ carries noise
    $\sigma_{min}$. Sampling ends by default at $t = 10^{-5}$ (score_sde's sampling epsilon for VE
    models); the prior is $\mathcal N(0, \sigma_{max}^2 I)$.

    Args:
        sigma_min: $\sigma_0$, > 0.
        sigma_max: $\sigma_1$, > ``sigma_min``.

    ??? cite "Reference"
        Song et al., *Score-Based Generative Modeling through Stochastic Differential Equations*,
        arXiv:2011.13456 (the VE SDE).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min, self.sigma_max = _check_sigma_range(sigma_min, sigma_max)
        self._log_sigma_min = math.log(self.sigma_min)
        self._log_ratio = math.log(self.sigma_max) - self._log_sigma_min
        self.T, self.t_min = 1.0, 0.0

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    @property
    def default_t_end(self) -> float:
        return 1e-5

    def log_sigma(self, t: Tensor | Number) -> Tensor:
        return self._log_sigma_min + as_time(t) * self._log_ratio

    def d_sigma2_dt(self, t: Tensor | Number) -> Tensor:
        return (2.0 * self._log_ratio) * torch.exp(2.0 * self.log_sigma(t))

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        return (-as_time(lam) - self._log_sigma_min) / self._log_ratio

    def prior_std(self) -> float:
        return self.sigma_max  # exactly, as score_sde (sigma(1) rounds to within an ulp or two of it)


class EDM(VESchedule):
    r"""The path of Karras et al. (EDM): $\alpha_t = 1$, $\sigma_t = t$.

    Time is the noise level itself, $t \in [\sigma_{min}, \sigma_{max}]$; $\lambda_t = -\log t$,
    $f = 0$ and $g^2(t) = 2t$, so the probability-flow ODE is EDM's
    $\mathrm{d}x/\mathrm{d}\sigma = \hat\epsilon(x, \sigma)$. Sampling runs from
    $T = \sigma_{max}$ (prior $\mathcal N(0, \sigma_{max}^2 I)$) down to $\sigma_{min}$.

    Args:
        sigma_min: The smallest noise level, > 0 (also ``t_min`` and the default end of sampling).
        sigma_max: The largest noise level, > ``sigma_min`` (also ``T``).

    ??? cite "Reference"
        Karras et al., *Elucidating the Design Space of Diffusion-Based Generative Models*,
        arXiv:2206.00364, Table 1.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = _check_sigma_range(sigma_min, sigma_max)
        self.T, self.t_min = self.sigma_max, self.sigma_min

    def __repr__(self) -> str:
        return f"EDM(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    @property
    def default_t_end(self) -> float:
        return self.sigma_min

    def log_sigma(self, t: Tensor | Number) -> Tensor:
        return namespace(t).log(as_time(t))

    def sigma(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return t.clone() if isinstance(t, Tensor) else t

    def d_sigma2_dt(self, t: Tensor | Number) -> Tensor:
        return 2.0 * as_time(t)

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        return namespace(lam).exp(-as_time(lam))
