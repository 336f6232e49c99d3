"""``DPMSolver``: the familiar DPM-Solver front (``sample``, ``inverse``, ``add_noise``) over diffode's integrators."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffode._utils import Number, check_choice, check_finite_number, check_int, check_tensor
from diffode.controllers import AdaptiveController
from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import SOLVER_TYPES, Integrator
from diffode.integrators.grids import GivenTimes, TimeGrid, UniformLambda, get_grid
from diffode.integrators.multistep import WARMUPS, DPMSolverMultistep
from diffode.integrators.singlestep import DPMSolverSinglestep
from diffode.models.parameterizations import Scaled
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint
from diffode.solve import Solution, denoise, solve, solve_adaptive

__all__ = ["DPMSolver", "CorrectedData", "dynamic_thresholding", "singlestep_orders", "singlestep_times"]

ALGORITHMS = {"dpmsolver": "noise", "dpmsolver++": "data"}
METHODS = ("singlestep", "singlestep_fixed", "multistep", "adaptive")


def dynamic_thresholding(x0: Tensor, ratio: float = 0.995, max_val: float = 1.0) -> Tensor:
    r"""Imagen's dynamic thresholding: per sample, $s = \max(q_{ratio}(|x_0|), \text{max\_val})$, then $\mathrm{clip}(x_0, -s, s)/s$."""
    flat = x0.abs().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat, ratio, dim=1)
    s = torch.clamp_min(s, max_val).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class CorrectedData(Predictor):
    """A predictor whose data predictions pass through ``fn(x0, t)`` (e.g. dynamic thresholding)."""

    def __init__(self, predictor: Predictor, fn: Callable[[Tensor, float], Tensor]):
        self.predictor = predictor
        self.schedule = predictor.schedule
        self.fn = fn

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Scaled:
        if kind != "data":
            return self.predictor.predict(x, point, kind)
        return Scaled(self.fn(self.predictor.predict(x, point, "data").value(), point.t))

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Scaled:
        out = self.predictor.predict_mixed(x, point, kind, network_dtype)
        if kind != "data":
            return out
        return Scaled(self.fn(out.value(), point.t))


def singlestep_orders(steps: int, order: int) -> list[int]:
    """How DPM-Solver-fast splits ``steps`` evaluations into steps of order 3, 2 and 1 (as the paper does).

    Order 3: ``steps = 3K`` gives ``[3]*(K-1) + [2, 1]``, ``3K+1`` gives ``[3]*K + [1]``, ``3K+2`` gives
    ``[3]*K + [2]``; order 2: ``[2]*K`` plus a final ``1`` when ``steps`` is odd; order 1: ``[1]*steps``.
    """
    if order == 3:
        k = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (steps // 2) + ([1] if steps % 2 else [])
    return [1] * steps


def singlestep_times(schedule: NoiseSchedule, grid: TimeGrid, t_start: float, t_end: float,
                     orders: Sequence[int]) -> Tensor:
    """The step ends of DPM-Solver-fast for the per-step ``orders`` (see :func:`singlestep_orders`).

    On a ``logSNR`` grid the steps are equal in $\\lambda$; on any other grid, as the reference does,
    the grid of ``sum(orders)`` points is built and the step ends are taken from it.
    """
    if isinstance(grid, UniformLambda):
        return grid.times(schedule, t_start, t_end, len(orders))
    full = grid.times(schedule, t_start, t_end, sum(orders))
    return full[torch.cumsum(torch.tensor([0, *orders]), 0)]


class DPMSolver:
    """DPM-Solver and DPM-Solver++ with the arguments users of the reference implementation know.

    Args:
        model: The wrapped model (:func:`diffode.models.wrap` or any :class:`~diffode.models.Predictor`).
        schedule: Its noise schedule (default: ``model.schedule``).
        algorithm: ``"dpmsolver++"`` (data prediction; recommended, required for thresholding) or
            ``"dpmsolver"`` (noise prediction).
        correcting_x0_fn: ``None``, ``"dynamic_thresholding"`` or a callable ``fn(x0, t) -> x0``
            applied to every data prediction (DPM-Solver++ only).
        correcting_xt_fn: A callable ``fn(x, t, step) -> x`` applied after every step.
        thresholding_max_val: The lower bound of the dynamic-thresholding scale.
        dynamic_thresholding_ratio: The quantile of dynamic thresholding.
        check_finite: Check every model output and the state after every step, and raise
            :class:`~diffode.solve.NonFiniteError` (a ``ValueError``) at the first NaN or infinity,
            naming the step, the time and the samples. It costs one host-device synchronisation per
            step, nothing when off (the default). It is an option of the solver, not of
            :meth:`sample`, so that ``sample`` keeps the reference implementation's signature.

    Attributes:
        last_solution: The :class:`~diffode.solve.Solution` of the last call (with its exact ``nfe``).
    """

    def __init__(self, model: Predictor, schedule: NoiseSchedule | None = None, algorithm: str = "dpmsolver++",
                 correcting_x0_fn: str | Callable | None = None, correcting_xt_fn: Callable | None = None,
                 thresholding_max_val: float = 1.0, dynamic_thresholding_ratio: float = 0.995,
                 check_finite: bool = False):
        if not isinstance(model, Predictor):
            raise TypeError("model must be a diffode Predictor; wrap a network with diffode.models.wrap(net, schedule, ...)")
        if schedule is not None and schedule is not model.schedule:
            raise ValueError("schedule differs from the model's own schedule (model.schedule)")
        self.model = model
        self.schedule = model.schedule
        self.algorithm = check_choice("algorithm", algorithm, ALGORITHMS)
        self.predict = ALGORITHMS[algorithm]
        self.thresholding_max_val = check_finite_number("thresholding_max_val", thresholding_max_val, positive=True)
        ratio = check_finite_number("dynamic_thresholding_ratio", dynamic_thresholding_ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1], got {ratio}")
        self.dynamic_thresholding_ratio = ratio
        if correcting_x0_fn == "dynamic_thresholding":
            correcting_x0_fn = self.dynamic_thresholding_fn
        elif isinstance(correcting_x0_fn, str):
            raise ValueError(f"unknown correcting_x0_fn {correcting_x0_fn!r}; expected None, 'dynamic_thresholding' or a callable")
        elif correcting_x0_fn is not None and not callable(correcting_x0_fn):
            raise TypeError("correcting_x0_fn must be None, 'dynamic_thresholding' or a callable fn(x0, t)")
        if correcting_x0_fn is not None and self.predict == "noise":
            raise ValueError("correcting_x0_fn (thresholding) needs algorithm='dpmsolver++'; "
                             "algorithm='dpmsolver' never forms the data prediction")
        if correcting_xt_fn is not None and not callable(correcting_xt_fn):
            raise TypeError("correcting_xt_fn must be None or a callable fn(x, t, step)")
        self.correcting_x0_fn = correcting_x0_fn
        self.correcting_xt_fn = correcting_xt_fn
        self.predictor = model if correcting_x0_fn is None else CorrectedData(model, correcting_x0_fn)
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
        self.check_finite = check_finite
        self.last_solution: Solution | None = None

    def dynamic_thresholding_fn(self, x0: Tensor, t=None) -> Tensor:
        """Imagen's dynamic thresholding with this solver's ratio and max value."""
        return dynamic_thresholding(x0, self.dynamic_thresholding_ratio, self.thresholding_max_val)

    def add_noise(self, x0: Tensor, t: Tensor | Number, noise: Tensor | None = None) -> Tensor:
        """$x_t = \\alpha_t x_0 + \\sigma_t\\epsilon$ (see :meth:`NoiseSchedule.add_noise`)."""
        return self.schedule.add_noise(x0, t, noise)

    def integrator(self, method: str, order: int, solver_type: str = "dpmsolver", warmup: str = "lower_order") -> Integrator:
        """The integrator a ``method`` and ``order`` stand for."""
        check_choice("method", method, METHODS)
        if method == "multistep":
            return DPMSolverMultistep(order, self.predict, solver_type, warmup=warmup)
        if method == "adaptive":
            return DPMSolverAdaptive(order, self.predict, solver_type)
        return DPMSolverSinglestep(order, self.predict, solver_type)

    def sample(self, x: Tensor, steps: int = 20, t_start: float | None = None, t_end: float | None = None,
               order: int = 2, skip_type: str | TimeGrid | Sequence[float] = "time_uniform", method: str = "multistep", lower_order_final: bool = True,
               denoise_to_zero: bool = False, solver_type: str = "dpmsolver", atol: float = 0.0078,
               rtol: float = 0.05, return_intermediate: bool = False, warmup: str = "lower_order") -> Tensor | tuple[Tensor, list[Tensor]]:
        """Sample from ``x`` at ``t_start`` (default T) down to ``t_end`` (default 1/N or 1e-3).

        Args:
            x: The initial noise $x_T$.
            steps: Model evaluations for the fixed-grid methods (the adaptive method ignores it).
            t_start: The start time.
            t_end: The end time.
            order: 1, 2 or 3 (2 or 3 for ``method="adaptive"``).
            skip_type: ``"time_uniform"``, ``"logSNR"``, ``"time_quadratic"``, ``"karras"``, a
                :class:`~diffode.integrators.grids.TimeGrid` or a sequence of times.
            method: ``"multistep"``, ``"singlestep"`` (DPM-Solver-fast: ``steps`` evaluations split
                into orders 3/2/1), ``"singlestep_fixed"`` (every step of ``order``; with fewer
                ``steps`` than ``order``, one step of order ``steps``) or ``"adaptive"``.
            lower_order_final: Lower orders on the last steps of a multistep run with fewer than 10
                steps, which keeps tiny final steps stable.
            denoise_to_zero: One more evaluation that returns the data prediction at ``t_end``.
            solver_type: ``"dpmsolver"`` or ``"taylor"``.
            atol: Absolute tolerance of the adaptive method.
            rtol: Relative tolerance of the adaptive method.
            return_intermediate: Also return every state on the grid.
            warmup: ``"lower_order"`` or ``"singlestep"`` for multistep methods (see
                :class:`~diffode.integrators.DPMSolverMultistep`).

        Returns:
            The sample, or the pair ``(sample, intermediates)`` with ``return_intermediate``. The
            exact NFE is in ``self.last_solution.nfe``.
        """
        t_start = self.schedule.T if t_start is None else t_start
        t_end = self.schedule.default_t_end if t_end is None else t_end
        return self._run(x, steps, t_start, t_end, order, skip_type, method, lower_order_final, denoise_to_zero,
                         solver_type, atol, rtol, return_intermediate, warmup, direction=-1)

    def inverse(self, x: Tensor, steps: int = 20, t_start: float | None = None, t_end: float | None = None,
                order: int = 2, skip_type: str | TimeGrid | Sequence[float] = "time_uniform", method: str = "multistep", lower_order_final: bool = True,
                denoise_to_zero: bool = False, solver_type: str = "dpmsolver", atol: float = 0.0078,
                rtol: float = 0.05, return_intermediate: bool = False, warmup: str = "lower_order") -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run the ODE forwards, from data at ``t_start`` (default 1/N or 1e-3) to noise at ``t_end`` (default T).

        Takes the arguments of :meth:`sample`; DDIM inversion is ``order=1``.
        """
        t_start = self.schedule.default_t_end if t_start is None else t_start
        t_end = self.schedule.T if t_end is None else t_end
        return self._run(x, steps, t_start, t_end, order, skip_type, method, lower_order_final, denoise_to_zero,
                         solver_type, atol, rtol, return_intermediate, warmup, direction=1)

    def _run(self, x, steps, t_start, t_end, order, skip_type, method, lower_order_final, denoise_to_zero,
             solver_type, atol, rtol, return_intermediate, warmup, direction):
        # Validate everything before the first model evaluation, whatever the method ignores.
        x = check_tensor("x", x)
        steps = check_int("steps", steps, low=1)
        order = check_int("order", order)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        check_choice("method", method, METHODS)
        if method == "adaptive" and order == 1:
            raise ValueError("order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23) for method='adaptive', got 1")
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        check_choice("warmup", warmup, WARMUPS)
        controller = AdaptiveController(atol=atol, rtol=rtol)
        grid = get_grid(skip_type)
        t_start = self.schedule.check_time("t_start", t_start)
        t_end = self.schedule.check_time("t_end", t_end)
        for name, value in (("t_start", t_start), ("t_end", t_end)):
            if value <= 0.0:
                raise ValueError(f"{name} must be > 0 (lambda is infinite at t = 0), got {value}")
        if direction < 0 and not t_start > t_end:
            raise ValueError(f"sampling needs t_start > t_end, got t_start={t_start}, t_end={t_end}; use inverse() to go from data to noise")
        if direction > 0 and not t_start < t_end:
            raise ValueError(f"inverse needs t_start < t_end, got t_start={t_start}, t_end={t_end}")
        integrator = self.integrator(method, order, solver_type, warmup)
        check = self.check_finite
        if method == "adaptive":
            solution = solve_adaptive(self.predictor, x, integrator, t_start, t_end, controller,
                                      correcting_xt_fn=self.correcting_xt_fn, return_intermediate=return_intermediate,
                                      check_finite=check)
        else:
            if method == "multistep":
                n, orders = steps, None
            elif method == "singlestep":
                orders = singlestep_orders(steps, order)
                n = len(orders)
            else:
                n = max(steps // order, 1)
                orders = [min(order, steps)] * n
            times = self._grid(grid, t_start, t_end, steps, n, orders, method, direction)
            solution = solve(self.predictor, x, integrator, times, orders=orders, lower_order_final=lower_order_final,
                             correcting_xt_fn=self.correcting_xt_fn, return_intermediate=return_intermediate,
                             check_finite=check)
        if denoise_to_zero:
            solution.x = denoise(self.predictor, solution.x, solution.times[-1], check_finite=check,
                                 step=solution.n_accepted + 1)
            solution.nfe += 1
            if solution.intermediates is not None:
                solution.intermediates.append(solution.x)
        self.last_solution = solution
        if return_intermediate:
            return solution.x, solution.intermediates
        return solution.x

    def _grid(self, grid, t_start, t_end, steps, n, orders, method, direction):
        if isinstance(grid, GivenTimes):
            times = grid.values
            if times.numel() != n + 1:
                raise ValueError(f"the given time grid has {times.numel() - 1} steps but method={method!r} "
                                 f"with steps={steps} needs {n}")
            if (times[-1] - times[0]).item() * direction < 0:
                need, call = ("decreasing", "sample") if direction < 0 else ("increasing", "inverse")
                raise ValueError(f"{call}() needs a {need} time grid, got one from {times[0].item():g} to "
                                 f"{times[-1].item():g}")
            return times
        if method == "singlestep":
            return singlestep_times(self.schedule, grid, t_start, t_end, orders)
        return grid.times(self.schedule, t_start, t_end, n)
