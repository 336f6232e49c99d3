r"""The place where the reference's numbers differ from diffode's native integrators, as a subclass,
and the compat module's helpers.

* :class:`ReferenceMultistep`: the reference's multistep order-3 update weights the second divided
  difference by $\varphi_3$ where the Taylor expansion needs $2\varphi_3$ (so it is asymptotically
  second order); it is diffode's multistep method with the factors $[\varphi_1, \varphi_2, \varphi_3]$.

(The reference's singlestep methods place the intermediate points of each step where the time grid
of the step's own skip type puts them; that is the native
:class:`~diffode.integrators.DPMSolverSinglestep` with ``stages=`` that grid.)
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
from torch import Tensor

from diffode.controllers import AdaptiveController
from diffode.integrators.coefficients import phis
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["Primed", "ReferenceController", "ReferenceMultistep"]


class ReferenceMultistep(DPMSolverMultistep):
    r"""Multistep DPM-Solver with the reference's order-3 weights ($\varphi_3$ on the second difference)."""

    def update_factors(self, n_nodes: int, z: float):
        """``[phi_1, phi_2, phi_3]`` for three nodes (the reference), the exact factors otherwise."""
        return phis(3, z) if n_nodes == 3 else None


class Primed(Predictor):
    """A predictor that answers its first requests from given outputs, then asks ``predictor``.

    The reference sometimes updates with a model output taken elsewhere: the first multistep output
    is computed before ``correcting_xt_fn`` changes x, and the third-order singlestep update accepts
    a precomputed ``model_s1``.

    Args:
        predictor: The model.
        outputs: The outputs to return first, in order.
    """

    def __init__(self, predictor: Predictor, outputs: Sequence[Tensor]):
        self.predictor = predictor
        self.schedule = predictor.schedule
        self._queue = list(outputs)

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        if self._queue:
            return self._queue.pop(0)
        return self.predictor.predict(x, point, kind)


class ReferenceController(AdaptiveController):
    """diffode's adaptive controller with the reference's rounding: the step in $\\lambda$ and the
    next time are computed in the state's dtype, and the step factor is rounded to float32.

    Args:
        dtype: The dtype of the state (the reference keeps ``s``, $\\lambda$ and ``h`` in it).
        **options: The :class:`~diffode.controllers.AdaptiveController` arguments.
    """

    def __init__(self, dtype: torch.dtype, **options):
        super().__init__(**options)
        self.dtype = dtype

    def next_point(self, schedule: NoiseSchedule, s: TimePoint, h: float, end: TimePoint) -> TimePoint:
        lam = torch.tensor(s.lam, dtype=self.dtype) + torch.tensor(h, dtype=self.dtype)
        return schedule.points(schedule.inverse_lambda(lam.reshape(1)))[0]

    def next_h(self, h: float, error: float, order: int, remaining: float) -> float:
        factor = float(torch.float_power(torch.tensor(max(error, 1e-300), dtype=self.dtype), -1.0 / order).float())
        step = torch.tensor(self.theta, dtype=self.dtype) * torch.tensor(abs(h), dtype=self.dtype) * factor
        new = float(torch.minimum(step, torch.tensor(abs(remaining), dtype=self.dtype)))
        return math.copysign(new, remaining)
