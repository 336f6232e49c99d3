r"""A fixed-grid integrator as a table of per-evaluation coefficients, read off the PyTorch integrator.

A deterministic integrator on a fixed grid is linear: every model input and every new state is a
combination of the initial state $x_0$ and the model outputs $m_1, \dots, m_N$ so far, with
coefficients fixed by the grid (the weights of
:func:`~diffode.integrators.coefficients.update_weights`, the schedule values, the conversions
between noise and data predictions). :func:`record` reads those coefficients off the PyTorch
integrator itself: it runs :func:`diffode.solve` with the integrator and its :class:`~diffode.integrators.Plan`
on float64 coefficient vectors over the basis $[x_0, m_1, \dots, m_N]$, with a model whose
$j$-th output is the $j$-th basis vector. Nothing of the method is written a second time.

The recorded combinations are then written relative to the current state and a window of the
last $K$ outputs, the form a ``lax.scan`` applies (:class:`Program`): evaluation $j$ sees
$u_j = a_j x + \sum_i b_{ji}\,\mathrm{buf}_i$, and after it the state becomes
$x \leftarrow c_j x + \sum_i d_{ji}\,\mathrm{buf}_i$ (the identity inside a step). Two checks guard
every program: the rewritten form reproduces the recorded coefficients to 1e-12, and the program
applied to a nonlinear test model reproduces the PyTorch solve on random states to 1e-9, which an
integrator that is not linear in the state and the outputs (thresholding, clipping, noise) fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffode.integrators.base import Integrator, Plan
from diffode.integrators.registry import get_integrator
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["NotRepresentableError", "Program", "record"]

_RESTRUCTURE_TOL = 1e-12
_LINEARITY_TOL = 1e-9
_MIN_WINDOW = 4


class NotRepresentableError(ValueError):
    """The integrator cannot run as a coefficient table (not linear, stochastic or adaptive)."""


@dataclass(frozen=True, eq=False)
class Program:
    """A fixed-grid solve as coefficient tables (float64 NumPy arrays, one row per model evaluation).

    Attributes:
        points: The :class:`~diffode.schedules.base.TimePoint` of each evaluation.
        kinds: ``"data"`` or ``"noise"``: which prediction each evaluation returns.
        a_in: Coefficient of the state in each evaluation's input, shape ``(N,)``.
        b_in: Coefficients of the last ``K`` outputs (newest first) in it, shape ``(N, K)``.
        a_out: Coefficient of the state in the state after each evaluation, shape ``(N,)``.
        b_out: Coefficients of the last ``K`` outputs (the new one first) in it, shape ``(N, K)``.
        plan: The plan the program was recorded from.
    """

    points: tuple[TimePoint, ...]
    kinds: tuple[str, ...]
    a_in: np.ndarray
    b_in: np.ndarray
    a_out: np.ndarray
    b_out: np.ndarray
    plan: Plan

    @property
    def nfe(self) -> int:
        """The number of model evaluations."""
        return len(self.kinds)

    @property
    def window(self) -> int:
        """``K``, how many past outputs the program keeps."""
        return self.b_in.shape[1]

    def apply(self, x0: np.ndarray, evaluate: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
        """Run the program in NumPy (float64): ``evaluate(u, j)`` returns the ``j``-th model output at ``u``.

        The checks of :func:`record` use this; :mod:`diffode.jax` runs the same tables in a compiled loop.
        """
        x = np.asarray(x0, dtype=np.float64)
        buf = [np.zeros_like(x) for _ in range(self.window)]
        for j in range(self.nfe):
            u = self.a_in[j] * x + sum(c * v for c, v in zip(self.b_in[j], buf))
            buf = [np.asarray(evaluate(u, j), dtype=np.float64), *buf[:-1]]
            x = self.a_out[j] * x + sum(c * v for c, v in zip(self.b_out[j], buf))
        return x


class _Recorder(Predictor):
    """Returns the basis vector ``e_j`` at its ``j``-th call and records the input and the point."""

    def __init__(self, schedule: NoiseSchedule, size: int):
        self.schedule = schedule
        self.size = size
        self.calls: list[tuple[TimePoint, str, Tensor]] = []

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        j = len(self.calls) + 1
        if j >= self.size:
            raise NotRepresentableError(f"the integrator evaluated the model more often than its plan says "
                                        f"({self.size - 1} evaluations)")
        if not all(isinstance(v, float) for v in (point.t, point.alpha, point.sigma)):
            raise NotRepresentableError("the integrator evaluated the model at per-sample times; a program needs "
                                        "one time per evaluation")
        self.calls.append((point, kind, x.detach().clone()))
        out = torch.zeros(self.size, dtype=torch.float64)
        out[j] = 1.0
        return out


class _TestModel(Predictor):
    """A smooth nonlinear model of the state and the time (the linearity check)."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    @staticmethod
    def value(x, t: float, kind: str, xp=torch):
        return xp.tanh(x + t) if kind == "data" else xp.sin(0.5 * x) + t

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        return self.value(x, point.t, kind)


def _split(v: np.ndarray, state: np.ndarray, newest: int) -> tuple[float, np.ndarray]:
    """``v = a * state + r`` with ``r`` on the outputs only; returns ``a`` and ``r`` over outputs ``newest, newest-1, ...``."""
    a = v[0] / state[0]
    r = v - a * state
    r[0] = 0.0
    scale = max(np.abs(v).max(), abs(a) * np.abs(state).max(), 1.0)
    r[np.abs(r) <= 1e-15 * scale] = 0.0  # round-off of the subtraction, not a dependence
    return float(a), r[newest:0:-1] if newest > 0 else np.zeros(0)


def _window_of(r: np.ndarray, scale: float) -> int:
    nonzero = np.nonzero(np.abs(r) > 1e-14 * scale)[0]
    return int(nonzero[-1]) + 1 if nonzero.size else 0


def record(integrator: Integrator | str, schedule: NoiseSchedule, plan: Plan) -> Program:
    """Read the coefficient program of ``integrator`` on ``plan`` off its PyTorch implementation.

    Args:
        integrator: A deterministic fixed-grid integrator (an instance or a registered name).
        schedule: The noise schedule.
        plan: ``integrator.plan(schedule, nfe, ...)``.

    Returns:
        The :class:`Program`.

    Raises:
        NotRepresentableError: For a stochastic or adaptive integrator, or one whose steps are not
            linear in the state and the model outputs (the checks above).
    """
    from diffode.solve import solve

    integrator = get_integrator(integrator)
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a diffode Plan (integrator.plan(schedule, nfe, ...)), got {type(plan).__name__}")
    if integrator.stochastic:
        raise NotRepresentableError(f"{integrator!r} is a stochastic sampler: its steps draw noise, so they are no "
                                    "fixed table of coefficients; the JAX backend runs deterministic integrators")
    if integrator.adaptive:
        raise NotRepresentableError(f"{integrator!r} chooses its own steps: use diffode.jax.AdaptiveSampler")
    size = plan.nfe + 1
    recorder = _Recorder(schedule, size)
    ends: list[tuple[int, Tensor]] = []

    def mark(x: Tensor, _t: float, _step: int) -> Tensor:
        ends.append((len(recorder.calls), x.detach().clone()))
        return x

    start = torch.zeros(size, dtype=torch.float64)
    start[0] = 1.0
    final = solve(recorder, start, integrator, plan, correcting_xt_fn=mark).x.numpy()
    n = len(recorder.calls)
    if n == 0:
        raise NotRepresentableError(f"{integrator!r} made no model evaluation on this plan")
    # The state after evaluation j: a step end's state, the final state after the last evaluation.
    after = {count: x.numpy() for count, x in ends if count > 0}
    after[n] = final
    inputs = [x.numpy() for _, _, x in recorder.calls]
    rows_in, rows_out = [], []
    state = start.numpy()
    for j in range(n):
        rows_in.append(_split(inputs[j], state, j))
        if j + 1 in after:
            rows_out.append(_split(after[j + 1], state, j + 1))
            state = after[j + 1]
        else:
            rows_out.append((1.0, np.zeros(j + 1)))
    scale = max(max(np.abs(v).max() for v in inputs), np.abs(final).max(), 1.0)
    # At least _MIN_WINDOW: programs of the usual methods (windows 1 to 4) then share one compiled loop.
    window = max(_MIN_WINDOW, *(_window_of(r, scale) for _, r in rows_in + rows_out))

    def table(rows):
        b = np.zeros((n, window))
        for j, (_, r) in enumerate(rows):
            k = min(window, r.size)
            b[j, :k] = r[:k]
        return np.array([a for a, _ in rows]), b

    a_in, b_in = table(rows_in)
    a_out, b_out = table(rows_out)
    program = Program(tuple(p for p, _, _ in recorder.calls), tuple(k for _, k, _ in recorder.calls),
                      a_in, b_in, a_out, b_out, plan)
    _check_restructured(program, integrator, inputs, final, scale)
    _check_linear(program, integrator, schedule, plan)
    return program


def _check_restructured(program: Program, integrator: Integrator, inputs: list[np.ndarray], final: np.ndarray,
                        scale: float) -> None:
    size = final.size
    seen = []

    def basis(u: np.ndarray, j: int) -> np.ndarray:
        seen.append(u)
        e = np.zeros(size)
        e[j + 1] = 1.0
        return e

    start = np.zeros(size)
    start[0] = 1.0
    out = program.apply(start, basis)
    error = max(max(np.abs(a - b).max() for a, b in zip(seen, inputs)), np.abs(out - final).max())
    if error > _RESTRUCTURE_TOL * scale:
        raise NotRepresentableError(f"{integrator!r}: its steps do not fit the scan form (state plus a window of "
                                    f"{program.window} outputs); the rewritten coefficients are off by {error:.3g}")


def _check_linear(program: Program, integrator: Integrator, schedule: NoiseSchedule, plan: Plan) -> None:
    from diffode.solve import solve

    x0 = np.random.default_rng(0).standard_normal((3, 2))
    reference = solve(_TestModel(schedule), torch.from_numpy(x0), integrator, plan).x.numpy()
    ours = program.apply(x0, lambda u, j: _TestModel.value(u, program.points[j].t, program.kinds[j], np))
    error = np.abs(ours - reference).max() / max(np.abs(reference).max(), 1.0)
    if not error <= _LINEARITY_TOL:
        raise NotRepresentableError(f"{integrator!r} is not linear in the state and the model outputs (thresholding, "
                                    f"clipping or another nonlinear step): its coefficient program is off by {error:.3g} "
                                    "on a test model, so it cannot run on the JAX backend")
