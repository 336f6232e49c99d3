"""Corrections of the data prediction: Imagen's dynamic thresholding, or any ``fn(x0, t)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["CorrectedData", "dynamic_thresholding"]


def dynamic_thresholding(x0: Tensor, ratio: float = 0.995, max_val: float = 1.0) -> Tensor:
    r"""Imagen's dynamic thresholding: per sample, $s = \max(q_{ratio}(|x_0|), \text{max\_val})$, then $\mathrm{clip}(x_0, -s, s)/s$."""
    flat = x0.abs().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat, ratio, dim=1)
    s = torch.clamp_min(s, max_val).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
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
