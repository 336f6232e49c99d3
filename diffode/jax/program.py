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
$x \leftarrow c_j u_j + \sum_i d_{ji}\,\mathrm{buf}_i$ (that is $u_j$ itself, except after the last
evaluation, where it is the final state). Two checks guard
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
        a_out: Coefficient of the evaluation's input in the state after it, shape ``(N,)``.
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
            x = self.a_out[j] * u + sum(c * v for c, v in zip(self.b_out[j], buf))
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
    recorder = _Recorder(schedule, plan.nfe + 1)
    final = solve(recorder, _basis(plan.nfe + 1, 0), integrator, plan).x
    program = from_calls(recorder.calls, final, plan, repr(integrator))

    def run_test_model(x0: Tensor) -> Tensor:
        return solve(_TestModel(schedule), x0, integrator, plan).x

    check_linear(program, run_test_model, repr(integrator))
    return program


def _basis(size: int, j: int) -> Tensor:
    e = torch.zeros(size, dtype=torch.float64)
    e[j] = 1.0
    return e


def from_calls(calls: list[tuple[TimePoint, str, Tensor]], final: Tensor, plan: Plan | None, name: str) -> Program:
    r"""The :class:`Program` of a recorded run: the inputs of its evaluations and its final state, as
    coefficient vectors over $[x_0, m_1, \dots]$ (the evaluations returned the basis vectors).

    Each vector is written relative to the one before, ``v = a * previous + (a window of outputs)``:
    an evaluation's input relative to the previous input (the state before the first), the final
    state relative to the last input. In a linear method every vector is a multiple of its step's
    start state plus outputs of that step, so the window stays short; that the rewriting is exact is
    checked (``NotRepresentableError`` otherwise).
    """
    n = len(calls)
    if n == 0:
        raise NotRepresentableError(f"{name} made no model evaluation")
    size = final.numel()
    vectors = [x.numpy() for _, _, x in calls] + [final.numpy()]
    rows = []
    previous = _basis(size, 0).numpy()
    for j, v in enumerate(vectors):
        rows.append(_split(v, previous, j))
        previous = v
    scale = max(max(np.abs(v).max() for v in vectors), 1.0)
    # At least _MIN_WINDOW: programs of the usual methods (windows 1 to 4) then share one compiled loop.
    window = max(_MIN_WINDOW, *(_window_of(r, scale) for _, r in rows))
    b = np.zeros((n + 1, window))
    for j, (_, r) in enumerate(rows):
        k = min(window, r.size)
        b[j, :k] = r[:k]
    a = np.array([c for c, _ in rows])
    # The state after an evaluation is its input (the next input is written relative to it), except
    # after the last one: the final state.
    a_out, b_out = np.ones(n), np.zeros((n, window))
    a_out[-1], b_out[-1] = a[n], b[n]
    program = Program(tuple(p for p, _, _ in calls), tuple(k for _, k, _ in calls), a[:n], b[:n], a_out, b_out, plan)
    _check_restructured(program, name, vectors, scale)
    return program


def _check_restructured(program: Program, name: str, vectors: list[np.ndarray], scale: float) -> None:
    inputs, final = vectors[:-1], vectors[-1]
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
        raise NotRepresentableError(f"{name}: its steps do not fit the scan form (state plus a window of "
                                    f"{program.window} outputs); the rewritten coefficients are off by {error:.3g}")


def check_linear(program: Program, run_test_model: Callable[[Tensor], Tensor], name: str) -> None:
    """Raise unless ``program`` reproduces ``run_test_model`` (the PyTorch solve with :class:`_TestModel`)
    on random states: a method that is not linear in the state and the outputs fails here."""
    x0 = np.random.default_rng(0).standard_normal((3, 2))
    reference = run_test_model(torch.from_numpy(x0)).numpy()
    ours = program.apply(x0, lambda u, j: _TestModel.value(u, program.points[j].t, program.kinds[j], np))
    error = np.abs(ours - reference).max() / max(np.abs(reference).max(), 1.0)
    if not error <= _LINEARITY_TOL:
        raise NotRepresentableError(f"{name} is not linear in the state and the model outputs (thresholding, "
                                    f"clipping or another nonlinear step): its coefficient program is off by {error:.3g} "
                                    "on a test model, so it cannot run on the JAX backend")
