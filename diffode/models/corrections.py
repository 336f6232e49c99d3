"""Corrections of the data prediction: Imagen's dynamic thresholding, or any ``fn(x0, t)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["CorrectedData", "dynamic_thresholding"]


def dynamic_thresholding(x0: Tensor, ratio: float = 0.995, max_val: float = 1.0, *,
                         max_scale: float | None = None) -> Tensor:
    r"""Imagen's dynamic thresholding: per sample $s = \mathrm{clip}(q_{ratio}(|x_0|), \text{max\_val}, \text{max\_scale})$,
    then $\mathrm{clip}(x_0, -s, s)/s$.

    The DPM-Solver reference bounds $s$ from below only (``max_scale=None``); diffusers' schedulers
    (``thresholding=True``) use ``max_val=1`` and ``max_scale=sample_max_value``, which with their
    default ``sample_max_value=1`` is plain clipping to $[-1, 1]$.

    Args:
        x0: The data prediction, batch first.
        ratio: The quantile of $|x_0|$ per sample.
        max_val: The lower bound of $s$.
        max_scale: The upper bound of $s$ (``None``: none).
    """
    flat = x0.abs().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat, ratio, dim=1)
    s = torch.clamp(s, min=max_val, max=max_scale).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class CorrectedData(Predictor):
    """A predictor whose data predictions pass through ``fn(x0, t)`` (e.g. dynamic thresholding).

    Args:
        predictor: The model.
        fn: ``fn(x0, t) -> x0``, ``t`` the time as a host number (or a per-sample tensor).
    """

    def __init__(self, predictor: Predictor, fn: Callable[[Tensor, float], Tensor]):
        self.predictor = predictor
        self.schedule = predictor.schedule
        self.fn = fn

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        out = self.predictor.predict(x, point, kind)
        return self.fn(out, point.t) if kind == "data" else out

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        out = self.predictor.predict_mixed(x, point, kind, network_dtype)
        return self.fn(out, point.t) if kind == "data" else out
