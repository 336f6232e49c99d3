r"""What a network takes as its time argument: the map from continuous time $t$ to ``t_input``.

A network is called as ``network(x, t_input, ...)`` with ``t_input`` a ``(B,)`` tensor. Networks
disagree on what that is: the training step of a discrete DDPM, the continuous time of a score-SDE
model, the noise level $\sigma_t$ of a flow model (SD3: $1000\,\sigma_t$), the VE noise level
$\sigma_t/\alpha_t$ of a k-diffusion denoiser, or EDM's $c_{noise} = \frac14\log(\sigma_t/\alpha_t)$.
Each is one small class here; :func:`default_time_input` picks one from the schedule and the
parameterization.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import Number, check_finite_number
from diffode.schedules.base import NoiseSchedule

__all__ = ["ContinuousTime", "DiscreteTime", "EDMNoiseLevel", "NoiseLevel", "VESigma", "default_time_input"]


def _time_dtype(x: Tensor) -> torch.dtype:
    # Half-precision time inputs would round t_input ~ 999 to steps of 0.5: keep them in float32.
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class ContinuousTime:
    """The network takes the continuous time, optionally scaled: ``t_input = scale * t``."""

    def __init__(self, scale: float = 1.0):
        self.scale = check_finite_number("scale", scale, positive=True)

    def map(self, t: Tensor | Number) -> Tensor | float:
        """``t_input`` at time ``t`` (a number or a tensor), before it is shaped to the batch."""
        return t * self.scale

    def __call__(self, t: Tensor | Number, x: Tensor) -> Tensor:
        """The ``(B,)`` time input for a batch ``x`` at time ``t`` (a number or a ``(B,)`` tensor)."""
        value = self.map(t)
        if isinstance(value, Tensor):
            return value.to(x.device, _time_dtype(x)).expand(x.shape[0])
        return torch.full((x.shape[0],), float(value), dtype=_time_dtype(x), device=x.device)

    def __repr__(self) -> str:
        return f"ContinuousTime(scale={self.scale})"


class DiscreteTime(ContinuousTime):
    """The network takes its training step: ``t_input = (t - 1/N) * 1000``.

    So ``t = 1/N`` maps to 0 and ``t = 1`` to 999 for ``N = 1000``, as in DPM-Solver.
    """

    def __init__(self, N: int):
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be a positive integer, got {N!r}")
        self.N = N
        self.scale = 1000.0

    def map(self, t: Tensor | Number) -> Tensor | float:
        return (t - 1.0 / self.N) * 1000.0

    def __repr__(self) -> str:
        return f"DiscreteTime(N={self.N})"


class _ScheduleTime(ContinuousTime):
    """A time input computed from the schedule's values at ``t`` (in the precision of ``t``)."""

    def __init__(self, schedule: NoiseSchedule, scale: float = 1.0):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"{type(self).__name__} needs the diffode NoiseSchedule of the network, "
                            f"got {type(schedule).__name__}")
        super().__init__(scale)
        self.schedule = schedule


class NoiseLevel(_ScheduleTime):
    r"""The network takes the path's noise level: ``t_input = scale * sigma_t``.

    This is what flow-matching networks are conditioned on. On
    :class:`~diffode.schedules.FlowMatching` with a shift $s \ne 1$, $\sigma_t = st/(1+(s-1)t)$ is not
    $t$, so passing $t$ would be wrong. diffusers' ``FlowMatchEulerDiscreteScheduler`` feeds its
    ``timesteps``, $1000\,\sigma$, to SD3-style transformers (``scale=1000``, the default for
    ``FlowMatching``); pipelines that divide those by 1000 first (Flux) need ``scale=1``.

    Args:
        schedule: The network's schedule.
        scale: The factor on $\sigma_t$.
    """

    def map(self, t: Tensor | Number) -> Tensor:
        return self.scale * self.schedule.sigma(t)

    def __repr__(self) -> str:
        return f"NoiseLevel({self.schedule!r}, scale={self.scale})"


class VESigma(_ScheduleTime):
    r"""The network takes the VE noise level $\sigma_t/\alpha_t = e^{-\lambda_t}$ (k-diffusion's ``sigma``).

    k-diffusion and EDM write every path in variance-exploding form, $x/\alpha_t = x_0 +
    (\sigma_t/\alpha_t)\,\epsilon$, and condition their denoisers on that $\sigma$. On the VE and EDM
    paths ($\alpha = 1$) it is $\sigma_t$ itself.

    Args:
        schedule: The network's schedule.
    """

    def __init__(self, schedule: NoiseSchedule):
        super().__init__(schedule)

    def map(self, t: Tensor | Number) -> Tensor:
        return namespace(t).exp(-self.schedule.lambda_(t))

    def __repr__(self) -> str:
        return f"VESigma({self.schedule!r})"


class EDMNoiseLevel(_ScheduleTime):
    r"""EDM's noise conditioning $c_{noise} = \frac14\log\sigma = -\lambda_t/4$, with $\sigma = \sigma_t/\alpha_t$.

    The time input of the raw network $F_\theta$ inside EDM's preconditioning (Karras et al. 2022,
    Table 1); see :class:`~diffode.models.parameterizations.EDMPreconditioned`.

    Args:
        schedule: The network's schedule.
    """

    def __init__(self, schedule: NoiseSchedule):
        super().__init__(schedule)

    def map(self, t: Tensor | Number) -> Tensor:
        return -0.25 * self.schedule.lambda_(t)

    def __repr__(self) -> str:
        return f"EDMNoiseLevel({self.schedule!r})"


def default_time_input(schedule: NoiseSchedule, parameterization=None) -> ContinuousTime:
    """The time input a network most likely expects.

    The parameterization decides first (a k-diffusion denoiser takes :class:`VESigma`, EDM's raw
    network :class:`EDMNoiseLevel`); then the schedule: discrete schedules feed the training step
    (:class:`DiscreteTime`), :class:`~diffode.schedules.FlowMatching` the noise level
    $1000\\,\\sigma_t$ (:class:`NoiseLevel`, as diffusers' flow-matching scheduler does), every other
    continuous schedule the time itself (:class:`ContinuousTime`).
    """
    from diffode.schedules.flow import FlowMatching

    chosen = parameterization.default_time_input(schedule) if parameterization is not None else None
    if chosen is not None:
        return chosen
    n = getattr(schedule, "N", None)
    if n is not None:
        return DiscreteTime(n)
    if isinstance(schedule, FlowMatching):
        return NoiseLevel(schedule, scale=1000.0)
    return ContinuousTime()
