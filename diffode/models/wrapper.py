"""Wrap any network into a :class:`~diffode.models.Predictor` the integrators can call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from diffode._utils import Number, check_choice, check_finite_number
from diffode.models.guidance import ClassifierFreeGuidance, ClassifierGuidance
from diffode.models.parameterizations import Parameterization, get_parameterization
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["ContinuousTime", "DiscreteTime", "ModelWrapper", "wrap"]

GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")


def _time_dtype(x: Tensor) -> torch.dtype:
    # Half-precision time inputs would round t_input ~ 999 to steps of 0.5: keep them in float32.
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class ContinuousTime:
    """The network takes the continuous time, optionally scaled: ``t_input = scale * t``."""

    def __init__(self, scale: float = 1.0):
        self.scale = check_finite_number("scale", scale, positive=True)

    def map(self, t: Tensor | Number) -> Tensor | float:
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


def default_time_input(schedule: NoiseSchedule) -> ContinuousTime:
    """Discrete schedules feed the training step, continuous ones the time itself."""
    n = getattr(schedule, "N", None)
    return DiscreteTime(n) if n is not None else ContinuousTime()


class ModelWrapper(Predictor):
    """A network with its parameterization, time input and keyword arguments.

    Args:
        network: Called as ``network(x, t_input, **model_kwargs)``, or
            ``network(x, t_input, condition, **model_kwargs)`` when a condition is given.
        schedule: The noise schedule the network was trained with.
        parameterization: What the network predicts.
        time_input: Maps continuous time to the network's time input.
        model_kwargs: Extra keyword arguments passed through unchanged.
        condition: A condition passed as the third positional argument (unguided).
    """

    def __init__(self, network: Callable, schedule: NoiseSchedule, parameterization: Parameterization,
                 time_input: ContinuousTime, model_kwargs: dict | None = None, condition: Any = None):
        if not callable(network):
            raise TypeError(f"the model must be callable, got {type(network).__name__}")
        self.network = network
        self.schedule = schedule
        self.parameterization = parameterization
        self.time_input = time_input
        self.model_kwargs = dict(model_kwargs or {})
        self.condition = condition

    def forward(self, x: Tensor, t: Tensor | Number) -> Tensor:
        """The raw network output at ``x`` and continuous time ``t``."""
        t_input = self.time_input(t, x)
        if self.condition is None:
            out = self.network(x, t_input, **self.model_kwargs)
        else:
            out = self.network(x, t_input, self.condition, **self.model_kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, but it must return a tensor of the shape of x, "
                            f"{tuple(x.shape)}")
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}, but its output must have the shape of x, "
                             f"{tuple(x.shape)}")
        if out.device != x.device:
            raise ValueError(f"the model returned a tensor on {out.device}, but x is on {x.device}")
        return out

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        return self.parameterization.convert(kind, self.forward(x, point.t), x, point.alpha, point.sigma)

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        # Only the network runs in its dtype: the conversion to the noise or data prediction divides
        # by alpha or sigma, which would magnify a half-precision cancellation in x - sigma * eps.
        out = self.forward(x.to(network_dtype), point.t).to(x.dtype)
        return self.parameterization.convert(kind, out, x, point.alpha, point.sigma)

    def __repr__(self) -> str:
        return f"ModelWrapper({self.parameterization!r}, {self.time_input!r}, {self.schedule!r})"


def wrap(model: Callable, schedule: NoiseSchedule, parameterization: str | Parameterization = "noise", *,
         guidance: str = "uncond", condition: Any = None, unconditional_condition: Any = None,
         scale: float = 1.0, classifier_fn: Callable | None = None, classifier_kwargs: dict | None = None,
         model_kwargs: dict | None = None, time_input: str | ContinuousTime | None = None) -> Predictor:
    """Wrap a network so the integrators can call it.

    Args:
        model: The network, ``model(x, t_input[, condition], **model_kwargs)``.
        schedule: Its noise schedule.
        parameterization: ``"noise"`` (eps), ``"data"`` (x_start), ``"v"`` or ``"score"``.
        guidance: ``"uncond"``, ``"classifier"`` or ``"classifier-free"``.
        condition: The condition (a tensor, or a dict / list of tensors).
        unconditional_condition: The empty condition for classifier-free guidance.
        scale: The guidance scale.
        classifier_fn: ``classifier_fn(x, t_input, condition, **classifier_kwargs)`` returning
            $\\log p(c\\mid x_t)$, for classifier guidance.
        classifier_kwargs: Extra keyword arguments for the classifier.
        model_kwargs: Extra keyword arguments for the network, passed through unchanged.
        time_input: ``"discrete"`` (``(t - 1/N) * 1000``), ``"continuous"`` (``t``), a
            :class:`ContinuousTime` instance, or ``None`` to pick by the schedule.

    Returns:
        The :class:`Predictor` to hand to an integrator.

    Raises:
        ValueError: For an unknown parameterization or guidance type, a missing condition or
            classifier, a non-finite scale, or guidance arguments that the chosen guidance would
            silently ignore (a ``scale`` other than 1 or an ``unconditional_condition`` without
            ``guidance="classifier-free"``, a ``classifier_fn`` without ``guidance="classifier"``).
        TypeError: For a model that is not callable, a schedule that is not a
            :class:`~diffode.schedules.NoiseSchedule`, or keyword arguments that are not dicts.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, model(x, t_input, ...) -> tensor; got {type(model).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a diffode NoiseSchedule (e.g. DiscreteVP(betas=...)), got {type(schedule).__name__}")
    for name, value in (("model_kwargs", model_kwargs), ("classifier_kwargs", classifier_kwargs)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a dict of keyword arguments or None, got {type(value).__name__}")
    param = get_parameterization(parameterization)
    check_choice("guidance", guidance, GUIDANCE_TYPES)
    scale = check_finite_number("scale", scale)
    if guidance == "uncond" and scale != 1.0:
        raise ValueError(f"scale={scale} has no effect with guidance='uncond'; "
                         "pass guidance='classifier-free' or 'classifier'")
    if unconditional_condition is not None and guidance != "classifier-free":
        raise ValueError(f"unconditional_condition is used by guidance='classifier-free' only, got guidance={guidance!r}")
    if classifier_fn is not None and guidance != "classifier":
        raise ValueError(f"classifier_fn is used by guidance='classifier' only, got guidance={guidance!r}")
    if time_input is None:
        time_input = default_time_input(schedule)
    elif isinstance(time_input, str):
        check_choice("time_input", time_input, ("discrete", "continuous"))
        if time_input == "discrete":
            n = getattr(schedule, "N", None)
            if n is None:
                raise ValueError(f"time_input='discrete' needs a discrete schedule, got {schedule!r}")
            time_input = DiscreteTime(n)
        else:
            time_input = ContinuousTime()
    elif not isinstance(time_input, ContinuousTime):
        raise TypeError("time_input must be 'discrete', 'continuous', a ContinuousTime or None")
    if guidance == "classifier-free":
        network = ClassifierFreeGuidance(model, condition, unconditional_condition, scale)
        return ModelWrapper(network, schedule, param, time_input, model_kwargs)
    if guidance == "classifier":
        if classifier_fn is None:
            raise ValueError("guidance='classifier' needs classifier_fn=")
        if condition is None:
            raise ValueError("guidance='classifier' needs condition= (the class for the classifier)")
        base = ModelWrapper(model, schedule, param, time_input, model_kwargs)
        return ClassifierGuidance(base, classifier_fn, condition, scale, time_input, classifier_kwargs)
    return ModelWrapper(model, schedule, param, time_input, model_kwargs, condition=condition)
