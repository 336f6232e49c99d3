r"""The sampling loop: one driver for fixed grids and one for adaptive steps.

Both drivers share these guarantees.

* **One loop.** Both drivers only ask the integrator: :meth:`~diffode.integrators.Integrator.plan`
  (or the given times) says where the steps go and at which order,
  :meth:`~diffode.integrators.Integrator.step` takes them and counts the model evaluations. No
  driver knows an integrator family.
* **Precision.** A float16 or bfloat16 state is integrated in float32: ``x`` is cast up once at the
  start, the network still sees the state in the caller's dtype (through
  :meth:`Predictor.predict_mixed <diffode.models.Predictor.predict_mixed>`, which casts its output
  back up), and the result is cast back to the caller's dtype at the end. Step coefficients and
  schedule values are float64 Python numbers throughout. Other dtypes are integrated as they are.
* **Memory that is not ours is never written.** Every update writes a new tensor; the model's
  outputs, the initial state and anything the network keeps stay as they are.
* **Clear failures.** Arguments are validated before the first model evaluation, every model
  output must have the shape and device of ``x``, and ``check_finite=True`` turns a NaN or an
  infinity into a :class:`NonFiniteError` that names the step, the time and the samples.
* **No host-device synchronisation in the fixed-grid loop.** Every schedule value and step
  coefficient is a Python float computed on the host before or between steps; the loop issues
  tensor operations on ``x`` and the model outputs only. ``check_finite=True`` adds exactly one
  synchronisation per step; with the default ``False`` it adds no work at all. The adaptive loop
  needs the error on the host and synchronises once per step anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffode._utils import HALF_DTYPES, NonFiniteError, check_int, check_tensor, nonfinite_samples
from diffode.controllers import AdaptiveController
from diffode.integrators.base import Integrator, Plan
from diffode.integrators.registry import get_integrator
from diffode.models.predictor import Predictor
from diffode.noise import NoiseSource, noise_source
from diffode.schedules.base import NoiseSchedule, TimePoint, memoised

__all__ = ["NonFiniteError", "Solution", "denoise", "solve", "solve_adaptive", "working_dtype"]


@dataclass
class Solution:
    """The result of a solve.

    Attributes:
        x: The final state, in the dtype of the initial state.
        times: The times the solution passed through (the grid, or the accepted adaptive steps).
        nfe: The exact number of model evaluations.
        intermediates: Every state on ``times`` (the start included) when asked for, else ``None``.
        n_accepted: Accepted steps.
        n_rejected: Rejected steps (adaptive solves only).
        lams: The half log-SNR at each of ``times``.
    """

    x: Tensor
    times: list[float]
    nfe: int
    intermediates: list[Tensor] | None = None
    n_accepted: int = 0
    n_rejected: int = 0
    lams: list[float] = field(default_factory=list)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a state of ``dtype`` is integrated in: float32 for float16 and bfloat16, else ``dtype``."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


class _Evaluator(Predictor):
    """The predictor the integrators see during a solve: the user's model behind the solve's guards.

    It runs the network in the caller's dtype when the state is integrated in a wider one, checks
    that every output has the shape and device of the state (metadata only, no synchronisation), and,
    when asked, records per-sample finiteness flags of the outputs as device tensors, to be read
    once per step by :meth:`check`.
    """

    def __init__(self, model: Predictor, network_dtype: torch.dtype | None, check_finite: bool):
        self.model = model
        self.schedule = model.schedule
        self.network_dtype = network_dtype
        self.records: list[tuple[float, str, Tensor]] | None = [] if check_finite else None

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        if self.network_dtype is None:
            out = self.model.predict(x, point, kind)
        else:
            out = self.model.predict_mixed(x, point, kind, self.network_dtype)
        if not isinstance(out, Tensor):
            raise TypeError(f"{type(self.model).__name__}.predict must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape or out.device != x.device:
            raise ValueError(f"the model's {kind} prediction at t={point.t:.6g} has shape {tuple(out.shape)} on "
                             f"{out.device}, but x has shape {tuple(x.shape)} on {x.device}; a model must return "
                             "a tensor of the shape of x on its device")
        if self.records is not None:
            self.records.append((point.t, kind, torch.isfinite(out).reshape(x.shape[0], -1).all(dim=1)))
        return out

    def check(self, x: Tensor, step: int, t: float) -> None:
        """Raise :class:`NonFiniteError` if a recorded output or ``x`` is not finite (one host sync)."""
        records, self.records = self.records, []
        flags = [flag for _, _, flag in records]
        flags.append(torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1))
        if bool(torch.stack(flags).all()):
            return
        raise self.diagnose(records, x, step, t, "state")

    @staticmethod
    def diagnose(records, x: Tensor, step: int, t: float, what: str) -> NonFiniteError:
        """The error for the first non-finite recorded output, else for ``x`` (an error path: syncs freely)."""
        for t_eval, kind, flag in records or ():
            bad = (~flag).nonzero().flatten().tolist()
            if bad:
                return NonFiniteError(step, t_eval, bad, f"model output ({kind} prediction)")
        return NonFiniteError(step, t, nonfinite_samples(x), what)


def _check_model(model: Predictor) -> None:
    if not isinstance(model, Predictor):
        raise TypeError(f"model must be a diffode Predictor, got {type(model).__name__}; wrap a network with "
                        "diffode.models.wrap(net, schedule, ...)")
    if not isinstance(getattr(model, "schedule", None), NoiseSchedule):
        raise TypeError(f"model.schedule must be a diffode NoiseSchedule, got {type(getattr(model, 'schedule', None)).__name__}")


def _check_callable(name: str, fn) -> None:
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be None or a callable, got {type(fn).__name__}")


def _corrected(fn: Callable, x: Tensor, t: float, step: int) -> Tensor:
    out = fn(x, t, step)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"correcting_xt_fn must return a tensor of the shape of x, {tuple(x.shape)}, got {got}")
    return out.to(x.dtype)


def _grid_points(schedule: NoiseSchedule, times: Sequence[float] | Tensor) -> tuple[TimePoint, ...]:
    """Validate a time grid (on the host) and return its points (memoised per schedule and grid)."""
    try:
        grid = torch.as_tensor(times.detach() if isinstance(times, Tensor) else times, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"times must be a 1-D sequence or tensor of numbers, got {type(times).__name__} ({error})") from None
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"times must be 1-D with at least 2 entries, got shape {tuple(grid.shape)}")
    values = tuple(grid.tolist())
    return memoised(schedule, ("grid", values), lambda: _checked_points(schedule, values))


def _checked_points(schedule: NoiseSchedule, grid: tuple[float, ...]) -> tuple[TimePoint, ...]:
    schedule.check_time("times", torch.tensor(grid, dtype=torch.float64))
    steps = [b - a for a, b in zip(grid, grid[1:])]
    if not (all(h < 0 for h in steps) or all(h > 0 for h in steps)):
        raise ValueError("times must be strictly monotone (decreasing to sample, increasing to invert), got "
                         f"{[round(v, 6) for v in grid]}")
    points = tuple(schedule.points(grid))
    for i, p in enumerate(points):
        if not math.isfinite(p.lam):
            raise ValueError(f"times[{i}] = {p.t!r} has an infinite half log-SNR under {schedule!r}; "
                             "the solvers need t > 0 (end sampling at a small positive time)")
    return points


def _check_orders(orders: Sequence[int], n: int, integrator: Integrator) -> list[int]:
    if isinstance(orders, (str, bytes)) or not isinstance(orders, Sequence):
        raise TypeError(f"orders must be a sequence of integers, got {type(orders).__name__}")
    if len(orders) != n:
        raise ValueError(f"orders has {len(orders)} entries for {n} steps")
    checked = [check_int(f"orders[{i}]", o, low=1) for i, o in enumerate(orders)]
    for i, o in enumerate(checked):
        if o > integrator.order:
            raise ValueError(f"orders[{i}] = {o} exceeds the order of {integrator!r}")
    return checked


def solve(model: Predictor, x: Tensor, integrator: Integrator | str, times: Plan | Sequence[float] | Tensor, *,
          orders: Sequence[int] | None = None, lower_order_final: bool | int = False, denoise_to_zero: bool = False,
          correcting_xt_fn: Callable | None = None, return_intermediate: bool = False,
          check_finite: bool = False, noise: NoiseSource | None = None, generator: torch.Generator | None = None,
          seeds: Sequence[int] | Tensor | None = None) -> Solution:
    """Integrate the probability-flow ODE of ``model`` through a plan or the given times, or sample its
    reverse SDE with a stochastic integrator.

    Every schedule value and step coefficient is a Python float computed on the host before or
    between steps, so the loop issues tensor operations only on ``x`` and the model outputs, and never
    waits for the device (unless ``check_finite``). A float16 or bfloat16 ``x`` is integrated in
    float32 and returned in its own dtype (see the module docstring).

    Args:
        model: The :class:`~diffode.models.Predictor`.
        x: The state at the first time, shape ``(B, ...)``.
        integrator: Any fixed-grid :class:`~diffode.integrators.Integrator`, a registered name, or
            ``package.module:name``.
        times: A :class:`~diffode.integrators.Plan` (``integrator.plan(schedule, nfe, ...)``: times,
            orders and the final denoising step), or the times themselves: strictly monotone
            (decreasing to sample, increasing to invert), inside the schedule's ``[t_min, T]``, > 0.
        orders: With plain times, the order of each step (default: the integrator's
            :meth:`~diffode.integrators.Integrator.step_orders`).
        lower_order_final: With plain times and no ``orders``, passed to ``step_orders``.
        denoise_to_zero: With plain times, end with one more evaluation that returns the data
            prediction at the last time (a plan says this itself).
        correcting_xt_fn: Called as ``fn(x, t, step)`` after each step; returns the corrected x. It
            sees the state in the working precision (float32 for a half-precision ``x``).
        return_intermediate: Keep every state on the grid (in the dtype of ``x``).
        check_finite: Check every model output and the state after every step, and raise
            :class:`NonFiniteError` at the first step with a NaN or an infinity. Costs one host
            synchronisation per step; off, it costs nothing.
        noise: For a stochastic integrator, the :class:`~diffode.noise.NoiseSource` of its draws
            (e.g. :data:`~diffode.noise.zero_noise`).
        generator: Or a ``torch.Generator`` to draw from.
        seeds: Or one integer seed per sample: sample ``i``'s result then depends on ``x[i]`` and
            ``seeds[i]`` only, whatever else is in the batch. With none of the three, draws come
            from torch's global RNG. Deterministic integrators ignore all three (they draw nothing).

    Returns:
        A :class:`Solution`.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For invalid arguments, or a model output whose shape differs from ``x``.
        NonFiniteError: With ``check_finite``, at the first non-finite model output or state.
    """
    _check_model(model)
    x = check_tensor("x", x)
    integrator = get_integrator(integrator)
    _check_callable("correcting_xt_fn", correcting_xt_fn)
    noise = noise_source(noise, generator, seeds)  # validated for every integrator, used by stochastic ones:
    noise_kw = {"noise": noise} if integrator.stochastic else {}  # an ODE integrator's step keeps its signature
    if integrator.adaptive:
        raise ValueError(f"{integrator!r} chooses its own steps (an embedded pair); use solve_adaptive")
    if isinstance(times, Plan):
        if orders is not None:
            raise ValueError("orders come from the plan; pass either a Plan or times with orders")
        times, orders, denoise_to_zero = times.times, times.orders, times.denoise_to_zero
    if not isinstance(denoise_to_zero, bool):
        raise TypeError(f"denoise_to_zero must be a bool, got {type(denoise_to_zero).__name__}")
    points = _grid_points(model.schedule, times)
    n = len(points) - 1
    if orders is None:
        orders = integrator.step_orders(n, lower_order_final)
    orders = _check_orders(orders, n, integrator)
    dtype = x.dtype
    work = working_dtype(dtype)
    evaluator = _Evaluator(model, dtype if work != dtype else None, bool(check_finite))
    return run_points(evaluator, x, integrator, points, orders, denoise_to_zero, noise_kw, correcting_xt_fn,
                      return_intermediate)


def run_points(evaluator: _Evaluator, x: Tensor, integrator: Integrator, points: Sequence[TimePoint],
               orders: Sequence[int], denoise_to_zero: bool, noise_kw: dict, correcting_xt_fn: Callable | None,
               return_intermediate: bool) -> Solution:
    """The fixed-grid loop over validated points and orders (shared by :func:`solve` and :mod:`diffode.fast`).

    It only issues tensor operations on the state and the model outputs; host work is on floats.
    """
    dtype = x.dtype
    state_x = x.to(working_dtype(dtype))
    check_finite = evaluator.records is not None
    if check_finite:
        evaluator.check(state_x, 0, points[0].t)
    state = integrator.init()
    n = len(orders)
    nfe = 0
    intermediates = [x] if return_intermediate else None
    for i in range(n):
        result = integrator.step(evaluator, state_x, points[i], points[i + 1], state, orders[i], **noise_kw)
        state_x, state, nfe = result.x, result.state, nfe + result.nfe
        if correcting_xt_fn is not None:
            state_x = _corrected(correcting_xt_fn, state_x, points[i + 1].t, i + 1)
        if check_finite:
            evaluator.check(state_x, i + 1, points[i + 1].t)
        if intermediates is not None:
            intermediates.append(state_x.to(dtype))
    solution = Solution(x=state_x.to(dtype), times=[p.t for p in points], nfe=nfe, intermediates=intermediates,
                        n_accepted=n, lams=[p.lam for p in points])
    return _denoised(solution, evaluator, state_x, points[-1]) if denoise_to_zero else solution


def _denoised(solution: Solution, evaluator: _Evaluator, x: Tensor, point: TimePoint) -> Solution:
    """The solution with one more evaluation: the data prediction at its last point (denoise-to-zero)."""
    out = evaluator.predict(x, point, "data")
    if evaluator.records is not None:
        evaluator.check(out, solution.n_accepted + 1, point.t)
    solution.x = out.to(solution.x.dtype)
    solution.nfe += 1
    if solution.intermediates is not None:
        solution.intermediates.append(solution.x)
    return solution


def denoise(model: Predictor, x: Tensor, t: float, *, check_finite: bool = False) -> Tensor:
    r"""The data prediction $\hat x_0(x, t)$ with the guards of :func:`solve` (a final denoising step).

    Args:
        model: The :class:`~diffode.models.Predictor`.
        x: The state at ``t``.
        t: The time (a host number).
        check_finite: Raise :class:`NonFiniteError` if the prediction is not finite.

    Returns:
        The data prediction, in the dtype of ``x`` (computed in float32 for half-precision ``x``).
    """
    _check_model(model)
    x = check_tensor("x", x)
    work = working_dtype(x.dtype)
    evaluator = _Evaluator(model, x.dtype if work != x.dtype else None, bool(check_finite))
    point = model.schedule.point(t)
    solution = Solution(x=x, times=[point.t], nfe=0)
    return _denoised(solution, evaluator, x.to(work), point).x


def _adaptive_failure(evaluator: _Evaluator, controller: AdaptiveController, result, x_prev: Tensor, attempt: int,
                      t: float) -> NonFiniteError | None:
    """The :class:`NonFiniteError` for a step whose error estimate is not finite (an error path).

    ``None`` when both states are finite: then the error only overflowed (a tolerance far below the
    step's accuracy), and the step is rejected like any other.
    """
    for what, value in (("state", result.x), ("lower-order state", result.x_low)):
        bad = nonfinite_samples(value)
        if bad:
            if evaluator.records:
                return evaluator.diagnose(evaluator.records, value, attempt, t, what)
            return NonFiniteError(attempt, t, bad, what, "pass check_finite=True to find the model evaluation")
    errors = controller.errors(result.x, result.x_low, x_prev)
    bad = torch.isnan(errors).nonzero().flatten().tolist()
    if bad:
        return NonFiniteError(attempt, t, bad, "error estimate")
    return None


def solve_adaptive(model: Predictor, x: Tensor, integrator: Integrator | str, t_start: float, t_end: float,
                   controller: AdaptiveController | None = None, *, denoise_to_zero: bool = False,
                   correcting_xt_fn: Callable | None = None, return_intermediate: bool = False,
                   check_finite: bool = False, noise: NoiseSource | None = None,
                   generator: torch.Generator | None = None, seeds: Sequence[int] | Tensor | None = None) -> Solution:
    """Integrate with an embedded pair, the step size chosen by ``controller``.

    The accept/reject decision needs the error on the host, so this loop synchronises once per step.
    Because that error mixes every sample, a NaN or an infinity anywhere shows up in it, and the
    solver raises :class:`NonFiniteError` at that step whatever ``check_finite`` says; with
    ``check_finite`` the error names the model evaluation where it first appeared. The loop ends
    after at most ``controller.max_nfe`` model evaluations.

    Args:
        model: The :class:`~diffode.models.Predictor`.
        x: The state at ``t_start``.
        integrator: An embedded pair (``integrator.error_order`` set), or a registered name.
        t_start: The start time (in ``(0, T]``).
        t_end: The end time (in ``[t_min, T]``, > 0, different from ``t_start``).
        controller: The step-size controller (default :class:`~diffode.controllers.AdaptiveController`):
            it accepts or rejects each step, places the next one and chooses its size.
        denoise_to_zero: End with one more evaluation that returns the data prediction at ``t_end``.
        correcting_xt_fn: Called as ``fn(x, t, step)`` after each accepted step.
        return_intermediate: Keep every accepted state.
        check_finite: Record finiteness of every model output for a precise report (see above).
        noise: The noise source of a stochastic integrator (see :func:`solve`). The draws of a
            rejected step are discarded, not conditioned on: an adaptive stochastic integrator must
            account for that itself.
        generator: Or a ``torch.Generator``.
        seeds: Or one seed per sample.

    Returns:
        A :class:`Solution`.

    Raises:
        RuntimeError: When the step count would pass ``controller.max_nfe`` evaluations, or the step
            size underflows because the tolerances cannot be met.
        NonFiniteError: When a step produces a NaN or an infinity.
    """
    _check_model(model)
    x = check_tensor("x", x)
    integrator = get_integrator(integrator)
    if not integrator.adaptive:
        raise ValueError(f"{integrator!r} has no error estimate; use an embedded pair such as DPMSolverAdaptive")
    noise = noise_source(noise, generator, seeds)
    noise_kw = {"noise": noise} if integrator.stochastic else {}
    if controller is None:
        controller = AdaptiveController()
    elif not isinstance(controller, AdaptiveController):
        raise TypeError(f"controller must be an AdaptiveController, got {type(controller).__name__}")
    _check_callable("correcting_xt_fn", correcting_xt_fn)
    schedule = model.schedule
    t_start = schedule.check_time("t_start", t_start)
    t_end = schedule.check_time("t_end", t_end)
    if t_start == t_end:
        raise ValueError(f"t_start and t_end must differ, got {t_start} for both")
    s, end = _grid_points(schedule, [t_start, t_end])
    dtype = x.dtype
    work = working_dtype(dtype)
    evaluator = _Evaluator(model, dtype if work != dtype else None, bool(check_finite))
    state_x = x.to(work)
    if check_finite:
        evaluator.check(state_x, 0, s.t)
    remaining = end.lam - s.lam
    h = controller.first_h(remaining)
    x_prev = state_x
    state = integrator.init()
    nfe = accepted = rejected = 0
    times, lams = [s.t], [s.lam]
    intermediates = [x] if return_intermediate else None
    while abs(s.t - end.t) > controller.t_err:
        if nfe + integrator.evals_per_step > controller.max_nfe:
            raise RuntimeError(f"the adaptive solver reached max_nfe={controller.max_nfe} at t={s.t:.6g} after "
                               f"{accepted} accepted and {rejected} rejected steps (atol={controller.atol}, "
                               f"rtol={controller.rtol}); loosen the tolerances or raise max_nfe")
        if s.lam + h == s.lam:
            raise RuntimeError(f"the adaptive solver's step size underflowed (h={h:.3g} in lambda) at t={s.t:.6g}: "
                               f"the tolerances atol={controller.atol}, rtol={controller.rtol} cannot be met; "
                               "loosen them")
        t = controller.next_point(schedule, s, h, end)
        result = integrator.step(evaluator, state_x, s, t, state, **noise_kw)
        nfe += result.nfe
        error = controller.error(result.x, result.x_low, x_prev)
        attempt = accepted + rejected + 1
        if not math.isfinite(error):
            failure = _adaptive_failure(evaluator, controller, result, x_prev, attempt, t.t)
            if failure is not None:
                raise failure
            error = math.inf
        if evaluator.records is not None:
            evaluator.records.clear()
        if error <= 1.0:
            state_x, x_prev, s, state = result.x, result.x_low, t, result.state
            accepted += 1
            if correcting_xt_fn is not None:
                state_x = _corrected(correcting_xt_fn, state_x, s.t, accepted)
            times.append(s.t)
            lams.append(s.lam)
            if intermediates is not None:
                intermediates.append(state_x.to(dtype))
        else:
            rejected += 1
        h = controller.next_h(h, error, integrator.order, end.lam - s.lam)
    solution = Solution(x=state_x.to(dtype), times=times, nfe=nfe, intermediates=intermediates,
                        n_accepted=accepted, n_rejected=rejected, lams=lams)
    return _denoised(solution, evaluator, state_x, s) if denoise_to_zero else solution
