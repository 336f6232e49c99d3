"""The interface the integrators call: noise and data predictions at a point of the schedule."""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from diffode._utils import Number, as_time, expand_to
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["Predictor", "resolve_point"]


def resolve_point(schedule: NoiseSchedule, t: TimePoint | Tensor | Number, x: Tensor) -> TimePoint:
    """Turn a time argument into a :class:`TimePoint`.

    A number gives float fields; a tensor of shape ``()`` or ``(B,)`` gives tensor fields shaped to
    broadcast against ``x`` (per-sample times). Numbers and 0-d tensors are checked against the
    schedule's ``[t_min, T]``; ``(B,)`` tensors are not, as that would synchronise with the device
    (call ``schedule.check_time`` to check them).
    """
    if isinstance(t, TimePoint):
        return t
    if not isinstance(t, Tensor):
        return schedule.point(float(t))
    t = as_time(t).to(x.device)
    if t.ndim == 0:
        return schedule.point(float(t))
    if t.ndim != 1 or t.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"a tensor time must have shape () or (B,) with B = {x.shape[0]} (the batch of x), "
                         f"got {tuple(t.shape)}")
    log_alpha = schedule.log_alpha(t)
    log_sigma = schedule.log_sigma(t)
    return TimePoint(
        t=t,
        lam=log_alpha - log_sigma,
        alpha=expand_to(torch.exp(log_alpha).to(x.dtype), x),
        sigma=expand_to(torch.exp(log_sigma).to(x.dtype), x),
    )


class Predictor(abc.ABC):
    """A model seen through a noise schedule: gives $\\hat\\epsilon(x, t)$ and $\\hat x_0(x, t)$.

    Integrators only ever call :meth:`predict`. Subclasses implement it; the public
    :meth:`noise` and :meth:`data` accept plain times too.

    Attributes:
        schedule: The noise schedule the model was trained with.
    """

    schedule: NoiseSchedule

    @abc.abstractmethod
    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        """The ``"noise"`` or ``"data"`` prediction at ``x`` and ``point``: a plain tensor of the shape of ``x``.

        It must not modify ``x``; the integrators never modify what it returns.
        """

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        """:meth:`predict` with the network run in ``network_dtype`` while ``x`` and the result stay in ``x.dtype``.

        The solvers use this to integrate a float16 or bfloat16 state in float32: the network sees
        the state in the caller's dtype, everything else happens in ``x.dtype``. This default casts
        ``x`` down, calls :meth:`predict` and casts the prediction up; wrappers that can do better
        (convert the raw network output in ``x.dtype``) override it.

        Args:
            x: The state in the working precision.
            point: Where to evaluate.
            kind: ``"noise"`` or ``"data"``.
            network_dtype: The dtype in which to run the network.
        """
        return self.predict(x.to(network_dtype), point, kind).to(x.dtype)

    def noise(self, x: Tensor, t: TimePoint | Tensor | Number) -> Tensor:
        """The noise prediction $\\hat\\epsilon(x, t)$; ``t`` is a number, a ``(B,)`` tensor or a TimePoint."""
        return self.predict(x, resolve_point(self.schedule, t, x), "noise")

    def data(self, x: Tensor, t: TimePoint | Tensor | Number) -> Tensor:
        """The data prediction $\\hat x_0(x, t)$; ``t`` is a number, a ``(B,)`` tensor or a TimePoint."""
        return self.predict(x, resolve_point(self.schedule, t, x), "data")

    def __call__(self, x: Tensor, t: TimePoint | Tensor | Number) -> Tensor:
        """Same as :meth:`noise`."""
        return self.noise(x, t)
