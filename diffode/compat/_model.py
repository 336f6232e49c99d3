"""``model_wrapper`` of the reference DPM-Solver file, built on :mod:`diffode.models`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffode._utils import check_choice
from diffode.models.guidance import ClassifierFreeGuidance, ClassifierGuidance
from diffode.models.parameterizations import get_parameterization
from diffode.models.predictor import Predictor
from diffode.models.wrapper import ContinuousTime, ModelWrapper
from diffode.schedules.base import TimePoint

from diffode.compat._schedule import ReferenceSchedule, schedule_view

__all__ = ["ModelFunction", "NoiseFunction", "ReferenceTimeInput", "model_wrapper"]

# The reference's model types and the diffode parameterizations they are.
MODEL_TYPES = {"noise": "noise", "x_start": "data", "v": "v", "score": "score"}
GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")


class ReferenceTimeInput(ContinuousTime):
    """The reference's model time: ``1000 (t - 1/N)`` for discrete schedules, ``t`` otherwise.

    Computed, as the reference does, in the dtype of the time tensor (a plain number is first made a
    tensor in the schedule's evaluation dtype), and passed on in that dtype.

    Args:
        schedule: The schedule view.
    """

    def __init__(self, schedule: ReferenceSchedule):
        self.schedule = schedule
        self.N = getattr(schedule, "N", None)
        self.scale = 1.0 if self.N is None else 1000.0

    def __repr__(self) -> str:
        return f"ReferenceTimeInput(N={self.N})"

    def map(self, t: Tensor | float) -> Tensor | float:
        return t if self.N is None else (t - 1. / self.N) * 1000.

    def __call__(self, t: Tensor | float, x: Tensor) -> Tensor:
        if isinstance(t, Tensor):
            t = t.to(x.device).reshape(-1).expand(x.shape[0])
        else:
            t = torch.full((x.shape[0],), float(t), dtype=self.schedule.eval_dtype, device=x.device)
        return self.map(t)


class ModelFunction(Predictor):
    """What :func:`model_wrapper` returns: ``model_fn(x, t_continuous)`` gives the noise prediction.

    It is also a diffode :class:`~diffode.models.Predictor`, so the compat solver (and diffode's own
    integrators) take the data or noise prediction from it directly.

    Attributes:
        predictor: The diffode predictor (model, parameterization, time input, guidance).
        noise_schedule: The schedule it was wrapped with.
        model_type: The reference's name of the parameterization.
        guidance_type: The reference's name of the guidance.
    """

    def __init__(self, predictor: Predictor, noise_schedule: Any, model_type: str, guidance_type: str):
        self.predictor = predictor
        self.schedule = predictor.schedule
        self.noise_schedule = noise_schedule
        self.model_type = model_type
        self.guidance_type = guidance_type

    def __repr__(self) -> str:
        return f"ModelFunction(model_type={self.model_type!r}, guidance_type={self.guidance_type!r})"

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        return self.predictor.predict(x, point, kind)

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        return self.predictor.predict_mixed(x, point, kind, network_dtype)

    def __call__(self, x: Tensor, t_continuous: Tensor) -> Tensor:
        """The noise prediction at ``x`` and time ``t_continuous`` (a tensor of shape ``()``, ``(1,)`` or ``(B,)``)."""
        return self.noise(x, t_continuous)


class NoiseFunction(Predictor):
    """Any noise-prediction callable ``fn(x, t_continuous)`` as a diffode predictor.

    The function receives ``t_continuous`` as a ``(B,)`` tensor in the schedule's evaluation dtype,
    as the reference's solver passes it.

    Args:
        fn: The noise-prediction function.
        schedule: The schedule view of the solver.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], schedule: ReferenceSchedule):
        if not callable(fn):
            raise TypeError(f"model_fn must be callable (x, t_continuous) -> noise, got {type(fn).__name__}")
        self.fn = fn
        self.schedule = schedule
        self._noise = get_parameterization("noise")

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        return self._convert(self._call(x, point), x, point, kind)

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        # The function runs in the caller's dtype; the conversion to x0 stays in the working dtype.
        return self._convert(self._call(x.to(network_dtype), point).to(x.dtype), x, point, kind)

    def _call(self, x: Tensor, point: TimePoint) -> Tensor:
        t = point.t
        if isinstance(t, Tensor):
            t = t.reshape(-1).expand(x.shape[0])
        else:
            t = torch.full((x.shape[0],), t, dtype=self.schedule.eval_dtype, device=x.device)
        return self.fn(x, t)

    def _convert(self, eps: Tensor, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        return self._noise.convert(kind, eps, x, point.alpha, point.sigma)


def model_wrapper(
    model: Callable,
    noise_schedule: Any,
    model_type: str = "noise",
    model_kwargs: dict = {},  # noqa: B006 -- the reference's signature; never mutated
    guidance_type: str = "uncond",
    condition: Any = None,
    unconditional_condition: Any = None,
    guidance_scale: float = 1.,
    classifier_fn: Callable | None = None,
    classifier_kwargs: dict = {},  # noqa: B006
) -> ModelFunction:
    """Wrap a diffusion model into the noise-prediction function ``model_fn(x, t_continuous)``.

    The model is called as ``model(x, t_input, **model_kwargs)`` (or ``model(x, t_input, cond,
    **model_kwargs)`` with classifier-free guidance) with ``t_input = 1000 (t - 1/N)`` for discrete
    schedules and ``t_input = t`` for continuous ones.

    Args:
        model: The network.
        noise_schedule: Its :class:`NoiseScheduleVP`.
        model_type: What the network predicts: ``"noise"``, ``"x_start"``, ``"v"`` or ``"score"``.
        model_kwargs: Extra keyword arguments for the network.
        guidance_type: ``"uncond"``, ``"classifier"`` or ``"classifier-free"``.
        condition: The condition (a tensor, or a dict / list of tensors for classifier-free guidance).
        unconditional_condition: The unconditional condition of classifier-free guidance (the
            batch is ``[unconditional, conditional]``); without it, or with ``guidance_scale == 1``,
            the network is called once with ``condition``.
        guidance_scale: The guidance scale.
        classifier_fn: ``classifier_fn(x, t_input, condition, **classifier_kwargs)`` returning
            $\\log p(c\\mid x_t)$, for classifier guidance.
        classifier_kwargs: Extra keyword arguments for the classifier.

    Returns:
        A :class:`ModelFunction`: ``model_fn(x, t_continuous)`` returns the noise prediction.

    Raises:
        ValueError: For an unknown model or guidance type, or classifier guidance without a
            classifier.
    """
    check_choice("model_type", model_type, MODEL_TYPES)
    check_choice("guidance_type", guidance_type, GUIDANCE_TYPES)
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    schedule = schedule_view(noise_schedule)
    param = get_parameterization(MODEL_TYPES[model_type])
    time_input = ReferenceTimeInput(schedule)
    if guidance_type == "classifier-free":
        if guidance_scale == 1. or unconditional_condition is None:
            predictor = ModelWrapper(model, schedule, param, time_input, model_kwargs, condition=condition)
        else:
            # The guidance combination is affine, so combining the raw outputs equals combining the
            # noise predictions the reference forms first.
            network = ClassifierFreeGuidance(model, condition, unconditional_condition, float(guidance_scale))
            predictor = ModelWrapper(network, schedule, param, time_input, model_kwargs)
    elif guidance_type == "classifier":
        if classifier_fn is None:
            raise ValueError("guidance_type='classifier' needs classifier_fn=")
        base = ModelWrapper(model, schedule, param, time_input, model_kwargs)
        predictor = ClassifierGuidance(base, classifier_fn, condition, float(guidance_scale), time_input,
                                       classifier_kwargs)
    else:
        predictor = ModelWrapper(model, schedule, param, time_input, model_kwargs)
    return ModelFunction(predictor, noise_schedule, model_type, guidance_type)
