r"""Guidance: classifier-free guidance in one batched forward, and classifier guidance by autograd."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from diffode._namespace import is_jax_array, namespace
from diffode._utils import check_finite_number
from diffode.models.parameterizations import Noise
from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "concat_conditions"]


def concat_conditions(first: Any, second: Any) -> Any:
    """Concatenate two conditions along the batch: tensors, dicts of them, lists of them, nested.

    This is how ControlNet-style conditions (``{"c_concat": [...], "c_crossattn": [...]}``) are
    batched for classifier-free guidance.
    """
    if _is_array(first) and _is_array(second):
        if first.shape != second.shape:
            # Unequal batches would shift the halves of the doubled batch against each other.
            raise ValueError(f"unconditional_condition and condition must have the same shape, got "
                             f"{tuple(first.shape)} and {tuple(second.shape)} (expand the smaller one to the batch)")
        return namespace(first).cat([first, second])
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        if set(first) != set(second):
            raise ValueError(f"condition and unconditional_condition have different keys: {sorted(first)} vs {sorted(second)}")
        return {k: concat_conditions(first[k], second[k]) for k in first}
    if isinstance(first, Sequence) and isinstance(second, Sequence) and not isinstance(first, str):
        if len(first) != len(second):
            raise ValueError(f"condition lists differ in length: {len(first)} vs {len(second)}")
        return [concat_conditions(a, b) for a, b in zip(first, second)]
    raise TypeError("conditions must be tensors, or dicts / lists of tensors with the same structure; "
                    f"got {type(first).__name__} and {type(second).__name__}")


class ClassifierFreeGuidance:
    r"""A network adapter: $\hat o = o_u + s\,(o_c - o_u)$ from one forward of the doubled batch.

    The batch is ``[unconditional, conditional]`` (unconditional first, as latent-diffusion code
    bases expect). A scale of 1 evaluates the conditional model alone.

    Args:
        network: Called as ``network(x, t_input, condition, **kwargs)``.
        condition: The condition: a tensor, or a dict / list of tensors.
        unconditional_condition: The "empty" condition, with the same structure.
        scale: The guidance scale $s$ (0: unconditional, 1: conditional).
    """

    def __init__(self, network: Callable, condition: Any, unconditional_condition: Any, scale: float):
        if condition is None or unconditional_condition is None:
            raise ValueError("classifier-free guidance needs both condition= and unconditional_condition=")
        self.network = network
        self.condition = condition
        self.unconditional_condition = unconditional_condition
        self.scale = check_finite_number("scale", scale)
        self._both = concat_conditions(unconditional_condition, condition)

    def __call__(self, x: Tensor, t_input: Tensor, **kwargs) -> Tensor:
        if self.scale == 1.0:
            return self.network(x, t_input, self.condition, **kwargs)
        xp = namespace(x)
        out = self.network(xp.cat([x, x]), xp.cat([t_input, t_input]), self._both, **kwargs)
        if not _is_array(out) or tuple(out.shape[:1]) != (2 * x.shape[0],):
            got = tuple(out.shape) if _is_array(out) else type(out).__name__
            raise ValueError(f"classifier-free guidance calls the model on the doubled batch of {2 * x.shape[0]} "
                             f"samples and needs an output with that batch, got {got}")
        n = x.shape[0]
        return xp.lerp(out[:n], out[n:], self.scale)


class ClassifierGuidance(Predictor):
    r"""Classifier guidance: $\hat\epsilon - s\,\sigma_t\nabla_x\log p(c\mid x_t)$.

    Args:
        predictor: The model being guided.
        classifier_fn: Called as ``classifier_fn(x, t_input, condition, **classifier_kwargs)``; returns
            $\log p(c\mid x_t)$ per sample (any shape that sums to the batch's total).
        condition: The class condition passed to the classifier.
        scale: The guidance scale $s$.
        time_input: Maps the continuous time to the classifier's own time input.
        classifier_kwargs: Extra keyword arguments for the classifier.
    """

    def __init__(self, predictor: Predictor, classifier_fn: Callable, condition: Any, scale: float,
                 time_input: Callable, classifier_kwargs: dict | None = None):
        if not callable(classifier_fn):
            raise ValueError("classifier guidance needs classifier_fn=, a callable (x, t_input, condition) -> log p(c|x)")
        self.predictor = predictor
        self.schedule = predictor.schedule
        self.classifier_fn = classifier_fn
        self.condition = condition
        self.scale = check_finite_number("scale", scale)
        self.time_input = time_input
        self.classifier_kwargs = dict(classifier_kwargs or {})

    def gradient(self, x: Tensor, point: TimePoint) -> Tensor:
        """$\\nabla_x \\log p(c\\mid x_t)$ by autograd."""
        t_input = self.time_input(point.t, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_prob = self.classifier_fn(x_in, t_input, self.condition, **self.classifier_kwargs)
            if not isinstance(log_prob, Tensor) or not log_prob.requires_grad:
                raise TypeError("classifier_fn must return log p(c|x) as a tensor that depends differentiably on x, "
                                f"got {type(log_prob).__name__}")
            (grad,) = torch.autograd.grad(log_prob.sum(), x_in)
        return grad

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        eps = self.predictor.predict(x, point, "noise")
        return self._guide(x, eps, x, point, kind)

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        eps = self.predictor.predict_mixed(x, point, "noise", network_dtype)
        return self._guide(x, eps, x.to(network_dtype), point, kind)

    def _guide(self, x: Tensor, eps: Tensor, x_classifier: Tensor, point: TimePoint, kind: str) -> Tensor:
        if self.scale != 0.0:
            grad = self.gradient(x_classifier, point).to(x.dtype)
            eps = eps - (self.scale * point.sigma) * grad
        return _NOISE.convert(kind, eps, x, point.alpha, point.sigma)


_NOISE = Noise()


def _is_array(value) -> bool:
    """A torch tensor, or a JAX array (the JAX backend's classifier-free guidance uses this class too)."""
    return isinstance(value, Tensor) or is_jax_array(value)
