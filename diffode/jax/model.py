"""A JAX network seen through a schedule and a parameterization: the noise and data predictions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from diffode.models.parameterizations import Parameterization, get_parameterization
from diffode.models.predictor import Predictor
from diffode.models.time_inputs import ContinuousTime
from diffode.models.wrapper import resolve_time_input
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["Model", "wrap"]


class Model(Predictor):
    """A JAX network ``network(x, t_input, *args)`` as a :class:`~diffode.models.Predictor` on JAX arrays.

    The conversion to the noise and data predictions, the input scaling and the time input are
    diffode's own (:class:`~diffode.models.parameterizations.Parameterization`,
    :mod:`~diffode.models.time_inputs`): their coefficients are host numbers on a fixed grid and
    JAX scalars inside the adaptive loop.

    Attributes:
        network: The JAX function.
        schedule: Its noise schedule.
        parameterization: What it predicts.
        time_input: The map from continuous time to its time argument.
        args: Extra arguments passed to the network after ``t_input`` (set by :meth:`bind`).
    """

    def __init__(self, network: Callable, schedule: NoiseSchedule, parameterization: Parameterization,
                 time_input: ContinuousTime, args: tuple = ()):
        self.network = network
        self.schedule = schedule
        self.parameterization = parameterization
        self.time_input = time_input
        self.args = args

    def __repr__(self) -> str:
        return f"diffode.jax.Model({self.parameterization!r}, {self.time_input!r}, {self.schedule!r})"

    def bind(self, args: tuple) -> Model:
        """The same model with the network's extra arguments ``args`` (traced values inside a compiled loop)."""
        return Model(self.network, self.schedule, self.parameterization, self.time_input, tuple(args))

    def coefficients(self, point: TimePoint, kind: str) -> tuple[Any, Any, Any, Any]:
        """``(t_input, input_scale, a, b)`` at ``point``: the prediction is ``a * x + b * network(input_scale * x, t_input)``."""
        t_input = self.time_input.map(point.t)
        scale = self.parameterization.input_scale(point.alpha, point.sigma)
        a, b = self.parameterization.affine(kind, point.alpha, point.sigma)
        return t_input, scale, a, b

    def apply(self, x, t_input, scale, a, b):
        """The prediction from the coefficients of :meth:`coefficients` (host numbers or JAX scalars)."""
        t = jnp.broadcast_to(jnp.asarray(t_input, dtype=x.dtype), (x.shape[0],))
        out = self.network(x * jnp.asarray(scale, dtype=x.dtype), t, *self.args)
        if getattr(out, "shape", None) != x.shape:
            raise ValueError(f"the network returned {getattr(out, 'shape', type(out).__name__)}, but its output must "
                             f"have the shape of x, {x.shape}")
        return jnp.asarray(a, dtype=x.dtype) * x + jnp.asarray(b, dtype=x.dtype) * out.astype(x.dtype)

    def predict(self, x, point: TimePoint, kind: str):
        return self.apply(x, *self.coefficients(point, kind))


def wrap(network: Callable, schedule: NoiseSchedule, parameterization: str | Parameterization = "noise", *,
         time_input: str | ContinuousTime | None = None) -> Model:
    """Wrap a JAX network for the JAX samplers, as :func:`diffode.models.wrap` wraps a PyTorch one.

    Args:
        network: ``network(x, t_input, *args) -> output`` on JAX arrays, ``t_input`` of shape ``(B,)``;
            ``args`` are the extra arguments given to the sampler (a condition, a guidance scale).
        schedule: Its diffode noise schedule.
        parameterization: ``"noise"``, ``"data"``, ``"v"``, ``"score"``, ``"flow"``, ``"denoiser"``,
            ``"edm"`` or a :class:`~diffode.models.parameterizations.Parameterization`.
        time_input: As in :func:`diffode.models.wrap` (``None``: the schedule's default).

    Raises:
        TypeError: For a network that is not callable or a schedule that is not a diffode schedule.
        ValueError: For an unknown parameterization or time input.
    """
    if not callable(network):
        raise TypeError(f"network must be callable, network(x, t_input, *args) -> array; got {type(network).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a diffode NoiseSchedule (e.g. diffode.schedules.LinearVP()), got "
                        f"{type(schedule).__name__}")
    param = get_parameterization(parameterization)
    return Model(network, schedule, param, resolve_time_input(time_input, schedule, param))
