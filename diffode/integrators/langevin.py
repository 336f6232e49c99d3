r"""score_sde's predictor-corrector sampler: reverse-diffusion predictor, Langevin corrector."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffode._utils import check_choice, check_finite_number, check_int, expand_to
from diffode.integrators.base import Integrator, State, Update, linear_combination
from diffode.models.predictor import Predictor
from diffode.noise import NoiseSource
from diffode.schedules.base import TimePoint

__all__ = ["PredictorCorrector"]


class PredictorCorrector(Integrator):
    r"""Langevin corrector steps at $s$, then the reverse-diffusion predictor from $s$ to $t$ (score_sde's PC sampler).

    With the score $\hat s(x) = -\hat\epsilon(x, s)/\sigma_s$ and $a = \alpha_s/\alpha_t$ (the forward
    transition from $t$ to $s$ is $x_s = a\,x_t + \sqrt{\sigma_s^2 - a^2\sigma_t^2}\,z$):

    * each of the ``n_steps`` corrector steps is
      $x \leftarrow x + \varepsilon\,\hat s(x) + \sqrt{2\varepsilon}\,z$ with
      $\varepsilon = 2a^2\,(\text{snr}\,\lVert z\rVert/\lVert\hat s(x)\rVert)^2$;
    * the predictor is $x_t = (2 - a)\,x + G^2\hat s(x) + G\,z$ with $G^2 = \sigma_s^2 - a^2\sigma_t^2$:
      score_sde's ``ReverseDiffusionPredictor`` (the reverse of the forward discretisation) on any
      grid. On score_sde's own grid it is its formula: SMLD's for :class:`~diffode.schedules.VE`
      ($a = 1$, $G^2 = \sigma_i^2 - \sigma_{i-1}^2$); on a VP path, DDPM's with
      $1 - \beta = a^2$ taken from the grid (score_sde uses $\beta_i = \beta(t_i)/N$ and its
      $\alpha = 1 - \beta_i$ in $\varepsilon$ where this uses $a^2$).

    The norms in $\varepsilon$ are by default each sample's own (``norms="sample"``), so that a
    sample's result does not depend on the rest of the batch; score_sde averages them over the batch
    (``norms="batch"``). A sample's norm ratio is a good estimate only in many dimensions (images);
    in a few dimensions a sample near a mode has a tiny score and takes a huge step, so use
    ``"batch"`` there. A zero-length step is the identity (no corrector either).

    * Order: 1 (the predictor). The corrector's step does not shrink with the grid: at a fixed
      ``snr`` the samples keep a bias of the Langevin steps, small for small ``snr``, as the step
      count grows. ``snr=0`` leaves the reverse-diffusion predictor alone.
    * Model evaluations per step: ``1 + n_steps``. Draws per step: ``1 + n_steps`` (not Brownian
      increments: :class:`~diffode.noise.BrownianNoise` refuses them).

    Args:
        snr: The corrector's signal-to-noise ratio (score_sde: 0.16 for its VE models, 0.01 to
            0.17 in its configs), >= 0.
        n_steps: Corrector steps per step, >= 0 (0: the predictor alone).
        norms: ``"sample"`` (each sample's norms) or ``"batch"`` (their batch means, as score_sde).

    ??? cite "Reference"
        Song et al., *Score-Based Generative Modeling through Stochastic Differential Equations*,
        ICLR 2021, arXiv:2011.13456 (Algorithms 2 and 3; score_sde's ``pc_sampler``).
    """

    order = 1
    stochastic = True
    predict = "noise"

    def __init__(self, snr: float = 0.16, n_steps: int = 1, norms: str = "sample"):
        self.snr = check_finite_number("snr", snr, nonnegative=True)
        self.n_steps = check_int("n_steps", n_steps, low=0)
        self.norms = check_choice("norms", norms, ("sample", "batch"))
        self.evals_per_step = 1 + self.n_steps

    def __repr__(self) -> str:
        return f"PredictorCorrector(snr={self.snr}, n_steps={self.n_steps}, norms={self.norms!r})"

    def _norms(self, v: Tensor) -> Tensor:
        """The Euclidean norm of each sample of ``v`` (shape ``(B,)``), or their batch mean."""
        norms = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)
        return norms.mean() if self.norms == "batch" else norms

    def plan_orders(self, nfe: int, lower_order_final: bool | int = True) -> list[int]:
        """``nfe // (1 + n_steps)`` steps; a budget below one step's cost is refused."""
        if nfe < self.evals_per_step:
            raise ValueError(f"{self!r} spends {self.evals_per_step} evaluations per step (1 predictor + "
                             f"{self.n_steps} corrector); give nfe >= {self.evals_per_step}, got {nfe}")
        return super().plan_orders(nfe, lower_order_final)

    def _score(self, model: Predictor, x: Tensor, s: TimePoint) -> Tensor:
        return model.predict(x, s, "noise") * (-1.0 / s.sigma)

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int,
              noise: NoiseSource) -> Update:
        h = t.lam - s.lam
        if h == 0.0:
            return Update(linear_combination(x, 1.0, []))
        a = s.alpha / t.alpha
        for _ in range(self.n_steps):
            score = self._score(model, x, s)
            z = noise.normal(x)
            epsilon = 2.0 * a * a * (self.snr * self._norms(z) / self._norms(score)).square()
            epsilon = expand_to(epsilon, x)
            x = x + epsilon * score + torch.sqrt(2.0 * epsilon) * z
        score = self._score(model, x, s)
        g2 = s.sigma * s.sigma * -math.expm1(-2.0 * h)  # sigma_s^2 - a^2 sigma_t^2, without cancellation
        z = noise.normal(x)
        return Update(linear_combination(x, 2.0 - a, [(score, g2), (z, math.sqrt(g2))]))
