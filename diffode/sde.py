r"""The SDE view of a noise schedule, with the interface of score_sde's ``sde_lib``.

Every schedule defines the forward SDE $\mathrm dx = f(t)\,x\,\mathrm dt + g(t)\,\mathrm dW$ with
$f = \mathrm d\log\alpha_t/\mathrm dt$ and $g^2 = \mathrm d\sigma_t^2/\mathrm dt - 2f\sigma_t^2$, whose
marginals are $x_t \sim \mathcal N(\alpha_t x_0, \sigma_t^2 I)$. Its reverse in time, given the score
$s(x, t) = \nabla_x\log p_t(x)$, is
$$\mathrm dx = \big[f(t)\,x - g(t)^2 s(x, t)\big]\mathrm dt + g(t)\,\mathrm d\bar W,$$
and the probability-flow ODE with the same marginals is
$\mathrm dx/\mathrm dt = f(t)\,x - \tfrac12 g(t)^2 s(x, t)$.

:class:`SDE` wraps any :class:`~diffode.schedules.NoiseSchedule`; :class:`VPSDE`,
:class:`SubVPSDE` and :class:`VESDE` are score_sde's three SDEs with its parameter names and
results. Times are Python numbers or tensors of shape ``(B,)`` (per sample), as in score_sde;
diffusion coefficients come back with the shape of ``t``.

Differences from score_sde, all deliberate:

* ``prior_sampling(shape, generator=None, dtype=..., device=...)`` takes a ``torch.Generator``
  instead of a JAX key.
* The time range is the schedule's: ``T`` is ``schedule.T`` (1 for score_sde's SDEs) and the
  discretisations span ``[t_min, T]`` (``[0, 1]`` for score_sde's SDEs), so that they also apply to
  EDM ($T = \sigma_{max}$) and flow-matching ($T < 1$) paths.
* The DDPM discretisation applies to every variance-preserving schedule with
  $\beta_i = g^2(t_i)\,\Delta t$, which is score_sde's ``linspace(beta_min / N, beta_max / N, N)`` for
  the linear VP SDE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffode._utils import Number, as_time, check_int, check_tensor, expand_to
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, VPSchedule
from diffode.schedules.subvp import SubVP
from diffode.schedules.ve import VE
from diffode.schedules.vp import LinearVP

__all__ = ["SDE", "VESDE", "VPSDE", "ReverseSDE", "SubVPSDE", "score_function"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _times(t: Tensor | Number, x: Tensor) -> Tensor:
    """``t`` as a float64 tensor on the device of ``x`` (numbers and tensors of any shape)."""
    return as_time(t).to(device=x.device, dtype=torch.float64)


def score_function(model: Predictor) -> ScoreFn:
    r"""The score $\nabla_x\log p_t(x) = -\hat\epsilon(x, t)/\sigma_t$ of a :class:`~diffode.models.Predictor`.

    Returns:
        ``score_fn(x, t)`` for a time ``t`` given as a number or a ``(B,)`` tensor.
    """
    if not isinstance(model, Predictor):
        raise TypeError(f"score_function needs a diffode Predictor, got {type(model).__name__}")

    def score_fn(x: Tensor, t: Tensor | Number) -> Tensor:
        sigma_t = model.schedule.sigma(_times(t, x)).to(x.dtype)
        return -model.noise(x, t) / expand_to(sigma_t, x)

    return score_fn


class SDE:
    r"""The forward SDE of a noise schedule, discretised into ``N`` steps where asked.

    Args:
        schedule: Any :class:`~diffode.schedules.NoiseSchedule`.
        N: The number of discretisation steps of :meth:`discretize` (>= 2).

    Attributes:
        schedule: The schedule.
        N: The number of discretisation steps.
    """

    def __init__(self, schedule: NoiseSchedule, N: int = 1000):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.N = check_int("N", N, low=2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r}, N={self.N})"

    @property
    def T(self) -> float:
        """The end time of the SDE (the schedule's ``T``)."""
        return self.schedule.T

    # -- the continuous SDE ------------------------------------------------------------------------

    def sde(self, x: Tensor, t: Tensor | Number) -> tuple[Tensor, Tensor]:
        """Drift $f(t)\\,x$ (shape of ``x``) and diffusion $g(t)$ (shape of ``t``) of the forward SDE."""
        return self.schedule.sde(x, _times(t, x))

    def marginal_prob(self, x: Tensor, t: Tensor | Number) -> tuple[Tensor, Tensor]:
        """Mean $\\alpha_t x_0$ and standard deviation $\\sigma_t$ (shape of ``t``) of $x_t$ given $x_0$ = ``x``."""
        t = _times(t, x)
        alpha_t = self.schedule.alpha(t).to(x.dtype)
        return expand_to(alpha_t, x) * x, self.schedule.sigma(t).to(x.dtype)

    def prior_sampling(self, shape: Sequence[int], generator: torch.Generator | None = None, *,
                       dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """A draw from the prior $\\mathcal N(0, \\sigma_{prior}^2 I)$ at ``T`` (see ``schedule.prior_std``)."""
        return self.schedule.prior_sample(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log density of the prior at each sample of ``z`` (shape ``(B, ...)``), summed over the other dimensions."""
        z = check_tensor("z", z)
        std = self.schedule.prior_std()
        dims = math.prod(z.shape[1:])
        return -0.5 * dims * math.log(2.0 * math.pi * std * std) - z.reshape(z.shape[0], -1).square().sum(1) / (2.0 * std * std)

    # -- discretisation ----------------------------------------------------------------------------

    def _grid_time(self, index: Tensor) -> Tensor:
        """The time $t_i = t_{min} + i\\,(T - t_{min})/(N - 1)$ of step ``index``."""
        s = self.schedule
        return s.t_min + index.to(torch.float64) * ((s.T - s.t_min) / (self.N - 1))

    def _index(self, t: Tensor) -> Tensor:
        """score_sde's step index of ``t``, ``floor((t - t_min) (N - 1) / (T - t_min))``."""
        s = self.schedule
        return ((t - s.t_min) * (self.N - 1) / (s.T - s.t_min)).long().clamp(0, self.N - 1)

    @property
    def dt(self) -> float:
        """The step of the discretisations, $(T - t_{min})/N$ (score_sde: $1/N$)."""
        return (self.schedule.T - self.schedule.t_min) / self.N

    @property
    def discrete_betas(self) -> Tensor:
        """The DDPM betas $\\beta_i = g^2(t_i)\\,\\Delta t$, ``i = 0, ..., N-1`` (variance-preserving schedules only)."""
        if not isinstance(self.schedule, VPSchedule):
            raise AttributeError(f"discrete_betas exist for variance-preserving schedules only, not {self.schedule!r}")
        return self.schedule.g2(self._grid_time(torch.arange(self.N))) * self.dt

    @property
    def discrete_sigmas(self) -> Tensor:
        """The noise levels $\\sigma(t_i)$, ``i = 0, ..., N-1``, of the SMLD discretisation (:class:`~diffode.schedules.VE` only)."""
        if not isinstance(self.schedule, VE):
            raise AttributeError(f"discrete_sigmas exist for the VE schedule only, not {self.schedule!r}")
        return self.schedule.sigma(self._grid_time(torch.arange(self.N)))

    def discretize(self, x: Tensor, t: Tensor | Number) -> tuple[Tensor, Tensor]:
        r"""One step of the discretised forward process, $x_{i+1} = x_i + f_i(x_i) + G_i z_i$.

        * Variance-preserving schedules: DDPM's ancestral form, $f_i = (\sqrt{1-\beta_i} - 1)\,x$,
          $G_i = \sqrt{\beta_i}$ with $\beta_i$ from :attr:`discrete_betas` at the step of ``t``.
        * :class:`~diffode.schedules.VE`: SMLD's form, $f_i = 0$,
          $G_i = \sqrt{\sigma_i^2 - \sigma_{i-1}^2}$ ($\sigma_{-1} = 0$).
        * Any other schedule: Euler--Maruyama, $f_i = f(t)\,x\,\Delta t$, $G_i = g(t)\sqrt{\Delta t}$.

        The step of ``t`` is score_sde's $i = \lfloor (t - t_{min})(N-1)/(T - t_{min})\rfloor$.

        Returns:
            ``(f, G)``: ``f`` with the shape of ``x``, ``G`` with the shape of ``t``.
        """
        t = _times(t, x)
        if isinstance(self.schedule, VPSchedule):
            beta = self.schedule.g2(self._grid_time(self._index(t))) * self.dt
            # sqrt(1 - beta) - 1 without cancellation (beta ~ 1e-4).
            shrink = -beta / (1.0 + torch.sqrt(1.0 - beta))
            return expand_to(shrink.to(x.dtype), x) * x, torch.sqrt(beta).to(x.dtype)
        if isinstance(self.schedule, VE):
            index = self._index(t)
            sigma = self.schedule.sigma(self._grid_time(index))
            previous = torch.where(index == 0, torch.zeros_like(sigma), self.schedule.sigma(self._grid_time(index - 1)))
            return torch.zeros_like(x), torch.sqrt(sigma.square() - previous.square()).to(x.dtype)
        drift, diffusion = self.sde(x, t)
        return drift * self.dt, diffusion * math.sqrt(self.dt)

    # -- reverse time --------------------------------------------------------------------------------

    def reverse(self, score_fn: ScoreFn | Predictor, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE, or with ``probability_flow=True`` the probability-flow ODE.

        Args:
            score_fn: ``score_fn(x, t)`` giving $\\nabla_x\\log p_t(x)$, or a
                :class:`~diffode.models.Predictor` (its score is $-\\hat\\epsilon/\\sigma_t$).
            probability_flow: Return the ODE (zero diffusion, half the score term) instead of the SDE.
        """
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    r"""The reverse-time SDE $\mathrm dx = [f x - g^2 s]\,\mathrm dt + g\,\mathrm d\bar W$ of an :class:`SDE`,
    or its probability-flow ODE $\mathrm dx = [f x - \tfrac12 g^2 s]\,\mathrm dt$.

    Built by :meth:`SDE.reverse`. Time runs from ``T`` down to 0; ``sde`` and ``discretize`` give the
    coefficients in forward-time form, as score_sde's reverse SDE does (a reverse step is
    $x \leftarrow x - f + G z$). ``prior_sampling``, ``prior_logp`` and ``marginal_prob`` are the
    forward SDE's.

    Attributes:
        forward: The forward :class:`SDE`.
        probability_flow: Whether this is the probability-flow ODE.
        N: The forward SDE's number of steps.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn | Predictor, probability_flow: bool = False):
        if isinstance(score_fn, Predictor):
            score_fn = score_function(score_fn)
        elif not callable(score_fn):
            raise TypeError(f"score_fn must be a callable score_fn(x, t) or a Predictor, got {type(score_fn).__name__}")
        if not isinstance(probability_flow, bool):
            raise TypeError(f"probability_flow must be a bool, got {type(probability_flow).__name__}")
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N

    def __repr__(self) -> str:
        return f"ReverseSDE({self.forward!r}, probability_flow={self.probability_flow})"

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def _weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def _reverse(self, x: Tensor, t: Tensor | Number, f: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        score = self.score_fn(x, t)
        f = f - expand_to(G.square(), x) * score * self._weight
        return f, (torch.zeros_like(G) if self.probability_flow else G)

    def sde(self, x: Tensor, t: Tensor | Number) -> tuple[Tensor, Tensor]:
        """Drift $f x - g^2 s$ (ODE: $f x - \\tfrac12 g^2 s$) and diffusion $g$ (ODE: 0)."""
        drift, diffusion = self.forward.sde(x, t)
        return self._reverse(x, t, drift, diffusion)

    def discretize(self, x: Tensor, t: Tensor | Number) -> tuple[Tensor, Tensor]:
        """The forward discretisation with the score term: $f_i - G_i^2 s$ (ODE: $f_i - \\tfrac12 G_i^2 s$) and $G_i$ (ODE: 0)."""
        f, G = self.forward.discretize(x, t)
        return self._reverse(x, t, f, G)

    def marginal_prob(self, x: Tensor, t: Tensor | Number) -> tuple[Tensor, Tensor]:
        """The forward SDE's :meth:`SDE.marginal_prob`."""
        return self.forward.marginal_prob(x, t)

    def prior_sampling(self, shape: Sequence[int], generator: torch.Generator | None = None, **kwargs) -> Tensor:
        """The forward SDE's :meth:`SDE.prior_sampling`."""
        return self.forward.prior_sampling(shape, generator, **kwargs)

    def prior_logp(self, z: Tensor) -> Tensor:
        """The forward SDE's :meth:`SDE.prior_logp`."""
        return self.forward.prior_logp(z)


class VPSDE(SDE):
    r"""score_sde's VP SDE: $\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})$ on $[0, 1]$, prior $\mathcal N(0, I)$.

    The schedule is :class:`~diffode.schedules.LinearVP`; :meth:`discretize` is DDPM's.

    Args:
        beta_min: $\beta(0)$.
        beta_max: $\beta(1)$.
        N: The number of discretisation steps.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(LinearVP(beta_min, beta_max), N)
        self.beta_0, self.beta_1 = self.schedule.beta_0, self.schedule.beta_1

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_0}, beta_max={self.beta_1}, N={self.N})"


class SubVPSDE(SDE):
    r"""score_sde's sub-VP SDE (schedule :class:`~diffode.schedules.SubVP`), prior $\mathcal N(0, I)$.

    Args:
        beta_min: $\beta(0)$.
        beta_max: $\beta(1)$.
        N: The number of steps of the Euler--Maruyama :meth:`discretize`.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(SubVP(beta_min, beta_max), N)
        self.beta_0, self.beta_1 = self.schedule.beta_0, self.schedule.beta_1

    def __repr__(self) -> str:
        return f"SubVPSDE(beta_min={self.beta_0}, beta_max={self.beta_1}, N={self.N})"


class VESDE(SDE):
    r"""score_sde's VE SDE, $\sigma(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^t$, prior $\mathcal N(0, \sigma_{max}^2 I)$.

    The schedule is :class:`~diffode.schedules.VE`; :meth:`discretize` is SMLD's.

    Args:
        sigma_min: $\sigma(0)$.
        sigma_max: $\sigma(1)$.
        N: The number of discretisation steps.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(VE(sigma_min, sigma_max), N)
        self.sigma_min, self.sigma_max = self.schedule.sigma_min, self.schedule.sigma_max

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"

