"""``DPMSolver``: the familiar DPM-Solver front (``sample``, ``inverse``, ``add_noise``) above :func:`~diffode.solve`.

It maps the reference implementation's arguments to an integrator and that integrator's
:meth:`~diffode.integrators.Integrator.plan`, and runs :func:`~diffode.solve` (or
:func:`~diffode.solve_adaptive`); it knows no integrator's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffode._utils import Number, check_choice, check_finite_number, check_int, check_tensor
from diffode.controllers import AdaptiveController
from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import SOLVER_TYPES, Integrator
from diffode.integrators.grids import TimeGrid, get_grid
from diffode.integrators.multistep import WARMUPS, DPMSolverMultistep
from diffode.integrators.registry import get_integrator
from diffode.integrators.singlestep import DPMSolverSinglestep
from diffode.models.corrections import CorrectedData, dynamic_thresholding
from diffode.models.predictor import Predictor
from diffode.noise import noise_source
from diffode.schedules.base import NoiseSchedule
from diffode.solve import Solution, solve, solve_adaptive

__all__ = ["DPMSolver"]

ALGORITHMS = {"dpmsolver": "noise", "dpmsolver++": "data"}
METHODS = ("singlestep", "singlestep_fixed", "multistep", "adaptive")


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

    def integrator(self, method: str, order: int, solver_type: str = "dpmsolver", warmup: str = "lower_order",
                   stages: str | TimeGrid = "lambda") -> Integrator:
        """The integrator a ``method`` and ``order`` stand for (``stages``: see :class:`~diffode.integrators.DPMSolverSinglestep`)."""
        check_choice("method", method, METHODS)
        if method in ("multistep", "adaptive") and not (isinstance(stages, str) and stages == "lambda"):
            raise ValueError(f"stages={stages!r} places the inner stages of singlestep methods; method={method!r} "
                             "has none (leave stages='lambda')")
        if method == "multistep":
            return DPMSolverMultistep(order, self.predict, solver_type, warmup=warmup)
        if method == "adaptive":
            return DPMSolverAdaptive(order, self.predict, solver_type)
        split = "fast" if method == "singlestep" else "fixed"
        return DPMSolverSinglestep(order, self.predict, solver_type, split=split, stages=stages)

    def sample(self, x: Tensor, steps: int = 20, t_start: float | None = None, t_end: float | None = None,
               order: int = 2, skip_type: str | TimeGrid | Sequence[float] = "time_uniform", method: str = "multistep", lower_order_final: bool = True,
               denoise_to_zero: bool = False, solver_type: str = "dpmsolver", atol: float = 0.0078,
               rtol: float = 0.05, return_intermediate: bool = False, warmup: str = "lower_order",
               integrator: Integrator | str | None = None, generator: torch.Generator | None = None,
               seeds: Sequence[int] | Tensor | None = None,
               stages: str | TimeGrid = "lambda") -> Tensor | tuple[Tensor, list[Tensor]]:
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
            integrator: Any integrator instead of the one ``method``, ``order``, ``solver_type``
                and ``warmup`` describe (then leave those at their defaults): an
                :class:`~diffode.integrators.Integrator`, a registered name or
                ``package.module:name``. It spends ``steps`` evaluations as its own plan says.
            generator: For a stochastic integrator (``integrator="sde_dpmpp_2m"``, say), the
                ``torch.Generator`` of its draws.
            seeds: Or one seed per sample, so that each sample depends on its own seed only (see
                :func:`~diffode.solve`; the ODE integrators ignore both).
            stages: For the singlestep methods, where each step's inner stages go: ``"lambda"``
                (fixed fractions of the step in $\\lambda$), ``"grid"`` (where ``skip_type`` puts
                them, as the reference DPM-Solver does) or a grid of their own (see
                :class:`~diffode.integrators.DPMSolverSinglestep`).

        Returns:
            The sample, or the pair ``(sample, intermediates)`` with ``return_intermediate``. The
            exact NFE is in ``self.last_solution.nfe``.
        """
        t_start = self.schedule.T if t_start is None else t_start
        t_end = self.schedule.default_t_end if t_end is None else t_end
        return self._run(x, steps, t_start, t_end, order, skip_type, method, lower_order_final, denoise_to_zero,
                         solver_type, atol, rtol, return_intermediate, warmup, integrator, direction=-1,
                         noise=noise_source(None, generator, seeds), stages=stages)

    def inverse(self, x: Tensor, steps: int = 20, t_start: float | None = None, t_end: float | None = None,
                order: int = 2, skip_type: str | TimeGrid | Sequence[float] = "time_uniform", method: str = "multistep", lower_order_final: bool = True,
                denoise_to_zero: bool = False, solver_type: str = "dpmsolver", atol: float = 0.0078,
                rtol: float = 0.05, return_intermediate: bool = False, warmup: str = "lower_order",
                integrator: Integrator | str | None = None,
                stages: str | TimeGrid = "lambda") -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run the ODE forwards, from data at ``t_start`` (default 1/N or 1e-3) to noise at ``t_end`` (default T).

        Takes the arguments of :meth:`sample`; DDIM inversion is ``order=1``.
        """
        t_start = self.schedule.default_t_end if t_start is None else t_start
        t_end = self.schedule.T if t_end is None else t_end
        return self._run(x, steps, t_start, t_end, order, skip_type, method, lower_order_final, denoise_to_zero,
                         solver_type, atol, rtol, return_intermediate, warmup, integrator, direction=1, stages=stages)

    def _run(self, x, steps, t_start, t_end, order, skip_type, method, lower_order_final, denoise_to_zero,
             solver_type, atol, rtol, return_intermediate, warmup, integrator, direction, noise=None, stages="lambda"):
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
        if not isinstance(lower_order_final, bool) or not isinstance(denoise_to_zero, bool):
            raise TypeError("lower_order_final and denoise_to_zero must be bools")
        controller = AdaptiveController(atol=atol, rtol=rtol)
        grid = get_grid(skip_type)
        t_start, t_end = self.schedule.check_interval(t_start, t_end, towards="data" if direction < 0 else "noise")
        if isinstance(stages, str) and stages == "grid":
            stages = grid
        if integrator is None:
            integrator = self.integrator(method, order, solver_type, warmup, stages)
        else:
            described = dict(method=method, order=order, solver_type=solver_type, warmup=warmup,
                             stages=stages if isinstance(stages, str) else "a grid")
            defaults = dict(method="multistep", order=2, solver_type="dpmsolver", warmup="lower_order", stages="lambda")
            changed = [name for name in described if described[name] != defaults[name]]
            if changed:
                raise ValueError(f"integrator= replaces {', '.join(changed)}; pass one or the other")
            integrator = get_integrator(integrator)
        options = dict(correcting_xt_fn=self.correcting_xt_fn, return_intermediate=return_intermediate,
                       check_finite=self.check_finite, noise=noise)
        if integrator.adaptive:
            solution = solve_adaptive(self.predictor, x, integrator, t_start, t_end, controller,
                                      denoise_to_zero=denoise_to_zero, **options)
        else:
            plan = integrator.plan(self.schedule, steps, grid=grid, t_start=t_start, t_end=t_end,
                                   lower_order_final=lower_order_final, denoise_to_zero=denoise_to_zero)
            if (plan.times[-1] - plan.times[0]) * direction < 0:
                need, call = ("decreasing", "sample") if direction < 0 else ("increasing", "inverse")
                raise ValueError(f"{call}() needs a {need} time grid, got one from {plan.times[0]:g} to "
                                 f"{plan.times[-1]:g}")
            solution = solve(self.predictor, x, integrator, plan, **options)
        self.last_solution = solution
        if return_intermediate:
            return solution.x, solution.intermediates
        return solution.x
