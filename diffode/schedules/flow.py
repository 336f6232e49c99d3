r"""The rectified-flow (flow-matching) path, with the time shift of SD3 and Flux."""

from __future__ import annotations

import math

from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import Number, as_time, check_finite_number
from diffode.schedules.base import NoiseSchedule

__all__ = ["FlowMatching"]


class FlowMatching(NoiseSchedule):
    r"""The straight path of rectified flow, $x_t = (1-\sigma_t)\,x_0 + \sigma_t\,\epsilon$.

    The shift $s$ of SD3 and Flux acts on time: $t$ is the unshifted time and the path's noise
    level is the shifted one, $\sigma_t = s t / (1 + (s-1)t)$, with $\alpha_t = 1 - \sigma_t =
    (1-t)/(1+(s-1)t)$; $s = 1$ is plain rectified flow, $\sigma_t = t$. So a grid uniform in $t$ is
    the shifted grid of diffusers' ``FlowMatchEulerDiscreteScheduler``, and a flow network that takes
    the noise level (SD3: ``1000 * sigma``) must be given $\sigma_t$, not $t$. In closed form,
    $$\lambda_t = \log(1-t) - \log t - \log s,\qquad t = \frac{1}{1 + s e^{\lambda}},\qquad
    f(t) = -\frac{1}{1-t} - \frac{s-1}{1+(s-1)t},\qquad g^2(t) = \frac{2\sigma_t^2}{t(1-t)}.$$

    Both ends have an infinite $\lambda$: at $t = 0$, $\sigma = 0$ and $\lambda = +\infty$; at
    $t = 1$, $\alpha = 0$ and $\lambda = -\infty$. The methods return these infinities exactly
    (``lambda_(0) = inf``, ``inverse_lambda(-inf) = 1``), but the solvers need finite $\lambda$ at
    every grid time, so the schedule's range is $[0, T]$ with $T < 1$ ($0.999$ by default,
    $\alpha_T \approx 10^{-3}/s$; cf. :class:`~diffode.schedules.CosineVP`) and sampling ends at
    $t = 10^{-3}$ by default. Starting at $T$ from the prior $\mathcal N(0, \sigma_T^2 I)$ ignores
    the data term $\alpha_T x_0$ of $x_T$.

    Args:
        shift: The time shift $s$, > 0 (SD3 uses 3).
        T: The noisy end of the schedule's range, in $(0, 1)$.

    ??? cite "Reference"
        Liu et al., *Flow Straight and Fast*, arXiv:2209.03003; Esser et al., *Scaling Rectified Flow
        Transformers for High-Resolution Image Synthesis* (SD3), arXiv:2403.03206 (the resolution-dependent time shift).
    """

    def __init__(self, shift: float = 1.0, T: float = 0.999):
        self.shift = check_finite_number("shift", shift, positive=True)
        self.T = check_finite_number("T", T, positive=True)
        if self.T >= 1.0:
            raise ValueError(f"T must be < 1 (alpha = 0 and lambda = -inf at t = 1), got {T}")
        self.t_min = 0.0
        self._log_shift = math.log(self.shift)

    def __repr__(self) -> str:
        return f"FlowMatching(shift={self.shift}, T={self.T})"

    def log_alpha(self, t: Tensor | Number) -> Tensor:
        t, xp = as_time(t), namespace(t)
        return xp.log1p(-t) - xp.log1p((self.shift - 1.0) * t)

    def log_sigma(self, t: Tensor | Number) -> Tensor:
        t, xp = as_time(t), namespace(t)
        return self._log_shift + xp.log(t) - xp.log1p((self.shift - 1.0) * t)

    def lambda_(self, t: Tensor | Number) -> Tensor:
        t, xp = as_time(t), namespace(t)
        return xp.log1p(-t) - xp.log(t) - self._log_shift

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        return namespace(lam).sigmoid(-(as_time(lam) + self._log_shift))

    def f(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return -1.0 / (1.0 - t) - (self.shift - 1.0) / (1.0 + (self.shift - 1.0) * t)

    def g2(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return 2.0 * self.shift**2 * t / ((1.0 + (self.shift - 1.0) * t) ** 2 * (1.0 - t))
