r"""Euler--Maruyama on the reverse-time SDE of :mod:`diffode.sde`."""

from __future__ import annotations

import math

from torch import Tensor

from diffode._utils import expand_to
from diffode.integrators.base import Integrator, State, Update
from diffode.models.predictor import Predictor
from diffode.noise import NoiseSource
from diffode.schedules.base import TimePoint
from diffode.sde import SDE

__all__ = ["EulerMaruyama"]


class EulerMaruyama(Integrator):
    r"""Euler--Maruyama in time on the reverse SDE $\mathrm dx = [f(t)x - g(t)^2 s(x, t)]\,\mathrm dt + g(t)\,\mathrm d\bar W$.

    With $\Delta t = t - s < 0$ and the score $s = -\hat\epsilon/\sigma$ (drift and diffusion from
    ``SDE(schedule).reverse(model).sde``, :mod:`diffode.sde`),
    $$x_t = x_s + \big[f(s)x_s - g(s)^2 s(x_s, s)\big]\Delta t + g(s)\sqrt{-\Delta t}\;z,\qquad z \sim \mathcal N(0, I).$$

    * Order: 1; strong order 1 (the noise $g(t)\,\mathrm d\bar W$ is additive) and weak order 1.
    * Model evaluations per step: 1. Draws per step: 1; Brownian clock: the time $t$.
    * Take steps uniform in time (``grid="time_uniform"``): near $t = 0$ the drift is stiff in $t$,
      and a step much larger than $\sigma_t^2/g(t)^2$ there is unstable.

    ??? cite "Reference"
        Song et al., *Score-Based Generative Modeling through Stochastic Differential Equations*,
        ICLR 2021, arXiv:2011.13456 (the ``EulerMaruyamaPredictor`` of score_sde).
    """

    order = 1
    stochastic = True
    strong_order = 1.0
    weak_order = 1.0
    evals_per_step = 1
    predict = "noise"

    def __repr__(self) -> str:
        return "EulerMaruyama()"

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int,
              noise: NoiseSource) -> Update:
        drift, diffusion = SDE(model.schedule).reverse(model).sde(x, s.t)
        dt = t.t - s.t
        z = noise.normal(x, (s.t, t.t))
        return Update(x + drift * dt + expand_to(diffusion, x) * (math.sqrt(-dt) * z))
