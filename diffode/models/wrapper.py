"""Wrap any network into a :class:`~diffode.models.Predictor` the integrators can call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from diffode._utils import Number, check_choice, check_finite_number
from diffode.models.guidance import ClassifierFreeGuidance, ClassifierGuidance
from diffode.models.parameterizations import Parameterization, get_parameterization
from diffode.models.predictor import Predictor, resolve_point
from diffode.models.time_inputs import (
    ContinuousTime,
    DiscreteTime,
    NoiseLevel,
    default_time_input,
)
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["ModelWrapper", "resolve_time_input", "wrap"]

GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")
TIME_INPUTS = ("discrete", "continuous", "noise_level")


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
        network_dtype: The dtype the network runs in, or ``None`` for the dtype of the state. When
            set, the state is cast to it at the network's input and the output back to the state's
            dtype: a float16 or bfloat16 network then drives a float32 solver state.
    """

    def __init__(self, network: Callable, schedule: NoiseSchedule, parameterization: Parameterization,
                 time_input: ContinuousTime, model_kwargs: dict | None = None, condition: Any = None,
                 network_dtype: torch.dtype | None = None):
        if not callable(network):
            raise TypeError(f"the model must be callable, got {type(network).__name__}")
        if network_dtype is not None and (not isinstance(network_dtype, torch.dtype) or not network_dtype.is_floating_point):
            raise TypeError(f"network_dtype must be None or a floating torch.dtype (torch.bfloat16, torch.float16, ...), "
                            f"got {network_dtype!r}")
        self.network_dtype = network_dtype
        self.network = network
        self.schedule = schedule
        self.parameterization = parameterization
        self.time_input = time_input
        self.model_kwargs = dict(model_kwargs or {})
        self.condition = condition

    def forward(self, x: Tensor, t: TimePoint | Tensor | Number) -> Tensor:
        """The raw network output at ``x`` and time ``t`` (a number, a ``(B,)`` tensor or a TimePoint).

        The network sees ``x`` times the parameterization's
        :meth:`~diffode.models.parameterizations.Parameterization.input_scale` (1 for most), in
        ``network_dtype`` when one is set, and the time input of ``t``; the output is returned in
        the dtype of ``x`` then.
        """
        point = resolve_point(self.schedule, t, x)
        scale = self.parameterization.input_scale(point.alpha, point.sigma)
        x_in = x if not isinstance(scale, Tensor) and scale == 1.0 else (x * scale).to(x.dtype)
        if self.network_dtype is not None:
            x_in = x_in.to(self.network_dtype)
        t_input = self.time_input(point.t, x)
        if self.condition is None:
            out = self.network(x_in, t_input, **self.model_kwargs)
        else:
            out = self.network(x_in, t_input, self.condition, **self.model_kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, but it must return a tensor of the shape of x, "
                            f"{tuple(x.shape)}")
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}, but its output must have the shape of x, "
                             f"{tuple(x.shape)}")
        if out.device != x.device:
            raise ValueError(f"the model returned a tensor on {out.device}, but x is on {x.device}")
        return out if self.network_dtype is None else out.to(x.dtype)

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        return self.parameterization.convert(kind, self.forward(x, point), x, point.alpha, point.sigma)

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        # Only the network runs in its dtype: the conversion to the noise or data prediction divides
        # by alpha or sigma, which would magnify a half-precision cancellation in x - sigma * eps.
        out = self.forward(x.to(network_dtype), point).to(x.dtype)
        return self.parameterization.convert(kind, out, x, point.alpha, point.sigma)

    def __repr__(self) -> str:
        return f"ModelWrapper({self.parameterization!r}, {self.time_input!r}, {self.schedule!r})"


def resolve_time_input(time_input: str | ContinuousTime | None, schedule: NoiseSchedule,
                       param: Parameterization) -> ContinuousTime:
    """The time input a ``time_input=`` argument names (see :func:`wrap`); ``None`` picks the default."""
    if time_input is None:
        return default_time_input(schedule, param)
    if isinstance(time_input, str):
        check_choice("time_input", time_input, TIME_INPUTS)
        if time_input == "noise_level":
            return NoiseLevel(schedule, scale=1000.0)
        if time_input == "discrete":
            n = getattr(schedule, "N", None)
            if n is None:
                raise ValueError(f"time_input='discrete' needs a discrete schedule, got {schedule!r}")
            return DiscreteTime(n)
        return ContinuousTime()
    if not isinstance(time_input, ContinuousTime):
        raise TypeError("time_input must be 'discrete', 'continuous', 'noise_level', a ContinuousTime or None")
    return time_input


def wrap(model: Callable, schedule: NoiseSchedule, parameterization: str | Parameterization = "noise", *,
         guidance: str = "uncond", condition: Any = None, unconditional_condition: Any = None,
         scale: float = 1.0, classifier_fn: Callable | None = None, classifier_kwargs: dict | None = None,
         model_kwargs: dict | None = None, time_input: str | ContinuousTime | None = None,
         network_dtype: torch.dtype | None = None) -> Predictor:
    """Wrap a network so the integrators can call it.

    Args:
        model: The network, ``model(x, t_input[, condition], **model_kwargs)``.
        schedule: Its noise schedule.
        parameterization: ``"noise"`` (eps), ``"data"`` (x_start), ``"v"``, ``"score"``, ``"flow"``
            (the flow velocity eps - x0), ``"denoiser"`` (a k-diffusion denoiser), ``"edm"`` (EDM's
            preconditioned $F_\\theta$), or a :class:`~diffode.models.parameterizations.Parameterization`.
        guidance: ``"uncond"``, ``"classifier"`` or ``"classifier-free"``.
        condition: The condition (a tensor, or a dict / list of tensors).
        unconditional_condition: The empty condition for classifier-free guidance.
        scale: The guidance scale.
        classifier_fn: ``classifier_fn(x, t_input, condition, **classifier_kwargs)`` returning
            $\\log p(c\\mid x_t)$, for classifier guidance.
        classifier_kwargs: Extra keyword arguments for the classifier.
        model_kwargs: Extra keyword arguments for the network, passed through unchanged.
        time_input: ``"discrete"`` (``(t - 1/N) * 1000``), ``"continuous"`` (``t``),
            ``"noise_level"`` (``1000 * sigma_t``, SD3-style flow networks), a :class:`ContinuousTime`
            instance (e.g. :class:`~diffode.models.time_inputs.NoiseLevel` with another scale), or
            ``None`` to pick by the parameterization and the schedule
            (:func:`~diffode.models.time_inputs.default_time_input`: the training step for discrete
            schedules, ``1000 * sigma_t`` for ``FlowMatching``, ``t`` for other continuous ones).
        network_dtype: The dtype of the network's weights when it differs from the state's, e.g.
            ``torch.bfloat16`` for a bfloat16 network sampled with a float32 state: the state is
            cast to it at the network's input and the output back (the solver's arithmetic stays in
            the state's dtype). ``None`` (the default) calls the network on the state as it is.

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
    time_input = resolve_time_input(time_input, schedule, param)
    if guidance == "classifier-free":
        network = ClassifierFreeGuidance(model, condition, unconditional_condition, scale)
        return ModelWrapper(network, schedule, param, time_input, model_kwargs, network_dtype=network_dtype)
    if guidance == "classifier":
        if classifier_fn is None:
            raise ValueError("guidance='classifier' needs classifier_fn=")
        if condition is None:
            raise ValueError("guidance='classifier' needs condition= (the class for the classifier)")
        base = ModelWrapper(model, schedule, param, time_input, model_kwargs, network_dtype=network_dtype)
        return ClassifierGuidance(base, classifier_fn, condition, scale, time_input, classifier_kwargs)
    return ModelWrapper(model, schedule, param, time_input, model_kwargs, condition=condition,
                        network_dtype=network_dtype)
