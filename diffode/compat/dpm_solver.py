r"""Drop-in replacement for the reference DPM-Solver file, on diffode's schedules, models and integrators.

Code written against the reference implementation changes one import line::

    # from dpm_solver_pytorch import NoiseScheduleVP, model_wrapper, DPM_Solver
    # from ldm.models.diffusion.dpm_solver.dpm_solver import NoiseScheduleVP, model_wrapper, DPM_Solver
    from diffode.compat.dpm_solver import NoiseScheduleVP, model_wrapper, DPM_Solver

and gets the same samples (measured on the golden runs of both generations: relative differences
below 1e-12 in float64 and a few 1e-6 in float32, the reference's own rounding), including the
reference's quirks, from diffode's update formulas.

**Two generations.** The module accepts both API generations of the reference:

* *current* (``LuChengTHU/dpm-solver``, ``dpm_solver_pytorch.py``):
  ``DPM_Solver(model_fn, noise_schedule, algorithm_type="dpmsolver++", correcting_x0_fn=None,
  correcting_xt_fn=None, thresholding_max_val=1., dynamic_thresholding_ratio=0.995)``, with
  ``sample`` defaults ``order=2, method='multistep', solver_type='dpmsolver'``, ``inverse`` and
  ``add_noise``;
* *v2* (the copy bundled with latent-diffusion code bases, e.g. Stable Diffusion's
  ``ldm/models/diffusion/dpm_solver``): ``DPM_Solver(model_fn, noise_schedule, predict_x0=False,
  thresholding=False, max_val=1.)``. A call with any of ``predict_x0``, ``thresholding``,
  ``max_val`` as keywords, or with a ``bool`` as the third positional argument, returns a
  :class:`DPM_SolverV2` (a subclass), whose ``sample`` has the v2 defaults ``order=3,
  method='singlestep', solver_type='dpm_solver'``, the v2 ``lower_order_final`` rule (lower orders
  at the end when ``steps < 15``; the current generation uses ``steps < 10``) and the v2
  ``callback(step)`` / ``img_callback(x, step)`` arguments.

Both spellings of the solver type, ``'dpmsolver'`` and ``'dpm_solver'``, and ``'taylor'`` are
accepted by both.

**Reproduced quirks.** Time grids are built in the torch default dtype and every schedule value is
computed with the reference's formulas in the dtype the reference uses (see
:class:`~diffode.compat._schedule.ReferenceSchedule`); discrete model time ``1000 (t - 1/N)``;
classifier-free batches ``[unconditional, conditional]``; the multistep order-3 update weights its
second difference by $\varphi_3$ (it is asymptotically second order;
:class:`~diffode.compat._integrators.ReferenceMultistep`); multistep runs start with orders 1, 2;
singlestep steps take ``r1, r2`` from the skip type's own grid inside each step; the adaptive solver
takes the batch-wide largest error, rounds its step factor to float32 and prints its NFE;
``correcting_xt_fn`` is called at step 0 after the first model call, after every step and (with
``step + 1``) after ``denoise_to_zero``; ``return_intermediate`` lists ``steps + 1`` states for
multistep (the start included) and one per step for singlestep; ``add_noise`` returns
``(n, *x.shape)``, squeezed when ``n == 1``.

**Deviations** (where the reference crashes, loops or cannot be told apart):

* v2 singlestep methods with ``skip_type`` other than ``'logSNR'`` raise ``TypeError`` (``cumsum``
  without ``dim``) in the reference, so its own ``sample()`` defaults fail; here they run with the
  current generation's grid. v2 singlestep ``order=1`` (an ``IndexError`` there) runs ``steps``
  first-order steps.
* v2 multistep ``order=3`` with ``lower_order_final`` and ``steps < 15`` raises ``ValueError`` in
  the reference (its second-order update unpacks the whole history); here the lowered steps use the
  last outputs, as in the current generation.
* v2 ``denoise_to_zero`` with a callback after multistep or adaptive sampling raises ``NameError``
  in the reference; here the callback receives the last step index (multistep) or the NFE (adaptive).
* ``NoiseScheduleVP`` follows the current generation (it cannot tell which code base calls it):
  ``log_alpha_array`` is cast to ``dtype`` (float32 by default) and steps with $\lambda < -5.1$
  are clipped; the v2 file kept its input's dtype and did not clip. Pass ``dtype=torch.float64`` to
  keep float64 arrays. ``'cosine'`` is accepted (v2), computed by
  :class:`~diffode.schedules.CosineVP` (which avoids the cancellation of ``log cos`` near ``t = 0``;
  float32 values can differ from the reference's there).
* ``model_type="score"`` works with either generation (v2 asserted against it).
* ``inverse(method='adaptive')`` steps towards ``t_end`` (the reference's step rule assumes
  $\lambda$ grows and never finishes); the adaptive loop raises instead of looping forever when the
  error is not finite or the NFE passes 10 000.
* Invalid arguments raise ``ValueError`` / ``TypeError`` with a message where the reference asserts
  (``AssertionError``) or fails later; ``steps < order`` for multistep, ``return_intermediate`` or
  ``correcting_xt_fn`` with the adaptive method are rejected as in the reference.
* The compat update helpers (``dpm_solver_first_update``, ``multistep_dpm_solver_update``, ...)
  need one time per call (a scalar, or a vector of equal entries as v2 passes).
* A float16 / bfloat16 ``x`` is integrated in float32 by the fixed-grid methods (diffode's
  :func:`~diffode.solve.solve`; the network still sees the caller's dtype and the result is returned
  in it); the reference computes in the half dtype. The adaptive method keeps the caller's dtype for
  the state and float32 for its times.

:class:`DPM_Solver` records the exact number of model evaluations of its last ``sample`` in
``last_nfe``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffode._utils import as_time, check_choice
from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import CountingPredictor, exponential_update
from diffode.integrators.grids import TimeGrid
from diffode.integrators.singlestep import DPMSolverSinglestep, run_stages, stages_for
from diffode.models.corrections import CorrectedData, dynamic_thresholding
from diffode.models.parameterizations import get_parameterization
from diffode.models.predictor import Predictor, resolve_point
from diffode.schedules.base import TimePoint
from diffode.solve import solve, solve_adaptive

from diffode.compat._integrators import Primed, ReferenceController, ReferenceMultistep
from diffode.compat._model import ModelFunction, NoiseFunction, model_wrapper
from diffode.compat._schedule import NoiseScheduleVP, ReferenceSchedule, expand_dims, interpolate_fn, schedule_view

__all__ = ["DPM_Solver", "DPM_SolverV2", "NoiseScheduleVP", "expand_dims", "interpolate_fn", "model_wrapper"]

_ALGORITHMS = ("dpmsolver", "dpmsolver++")
_METHODS = ("singlestep", "singlestep_fixed", "multistep", "adaptive")
_SOLVER_TYPES = {"dpmsolver": "dpmsolver", "dpm_solver": "dpmsolver", "taylor": "taylor"}
_V2_KEYWORDS = ("predict_x0", "thresholding", "max_val")
_CURRENT_KEYWORDS = ("algorithm_type", "correcting_x0_fn", "correcting_xt_fn", "thresholding_max_val",
                     "dynamic_thresholding_ratio")
_MAX_ADAPTIVE_NFE = 10_000


def _solver_type(solver_type: str) -> str:
    if solver_type not in _SOLVER_TYPES:
        raise ValueError("'solver_type' must be 'dpmsolver' (v2 spelling 'dpm_solver') or 'taylor', "
                         f"got {solver_type!r}")
    return _SOLVER_TYPES[solver_type]


def _is_v2_call(args: tuple, kwargs: dict) -> bool:
    v2 = any(k in kwargs for k in _V2_KEYWORDS) or (len(args) >= 3 and isinstance(args[2], bool))
    if v2:
        mixed = [k for k in _CURRENT_KEYWORDS if k in kwargs]
        if mixed:
            given = ", ".join(k for k in _V2_KEYWORDS if k in kwargs) or "predict_x0"
            raise TypeError(f"DPM_Solver got v2 arguments ({given}) together with current ones "
                            f"({', '.join(mixed)}); use one form")
    return v2


def _notify(callback: Callable | None, img_callback: Callable | None, step: int, x: Tensor) -> None:
    if callback is not None:
        callback(step)
    if img_callback is not None:
        img_callback(x, step)


class _GenerationDispatch:
    """Picks :class:`DPM_SolverV2` when :class:`DPM_Solver` is called with the v2 constructor form."""

    def __new__(cls, *args, **kwargs):
        if cls is DPM_Solver and _is_v2_call(args, kwargs):
            cls = DPM_SolverV2
        return super().__new__(cls)


class DPM_Solver(_GenerationDispatch):
    """DPM-Solver and DPM-Solver++ with the reference implementation's interface (current generation).

    Called with the v2 arguments (``predict_x0=``, ``thresholding=``, ``max_val=``), the constructor
    returns a :class:`DPM_SolverV2` instead (see the module documentation).

    Args:
        model_fn: The noise-prediction function ``model_fn(x, t_continuous)``, usually from
            :func:`model_wrapper`.
        noise_schedule: The :class:`NoiseScheduleVP`.
        algorithm_type: ``"dpmsolver++"`` (integrate the data prediction) or ``"dpmsolver"`` (the noise
            prediction).
        correcting_x0_fn: ``None``, ``"dynamic_thresholding"`` or a callable ``fn(x0, t) -> x0``
            applied to every data prediction.
        correcting_xt_fn: A callable ``fn(x, t, step) -> x`` applied after every step.
        thresholding_max_val: The lower bound of the dynamic-thresholding scale.
        dynamic_thresholding_ratio: The quantile of dynamic thresholding.

    Attributes:
        last_nfe: Model evaluations of the last ``sample`` / ``inverse`` call.
    """

    lower_order_final_below = 10

    def __init__(self, model_fn: Callable, noise_schedule: Any, algorithm_type: str = "dpmsolver++",
                 correcting_x0_fn: str | Callable | None = None, correcting_xt_fn: Callable | None = None,
                 thresholding_max_val: float = 1., dynamic_thresholding_ratio: float = 0.995):
        check_choice("algorithm_type", algorithm_type, _ALGORITHMS)
        if isinstance(correcting_x0_fn, str):
            if correcting_x0_fn != "dynamic_thresholding":
                raise ValueError(f"unknown correcting_x0_fn {correcting_x0_fn!r}; expected None, "
                                 "'dynamic_thresholding' or a callable fn(x0, t)")
            correcting_x0_fn = self.dynamic_thresholding_fn
        elif correcting_x0_fn is not None and not callable(correcting_x0_fn):
            raise TypeError("correcting_x0_fn must be None, 'dynamic_thresholding' or a callable fn(x0, t)")
        if correcting_xt_fn is not None and not callable(correcting_xt_fn):
            raise TypeError("correcting_xt_fn must be None or a callable fn(xt, t, step)")
        self.model = lambda x, t: model_fn(x, t.expand((x.shape[0])))
        self.noise_schedule = noise_schedule
        self.algorithm_type = algorithm_type
        self.correcting_x0_fn = correcting_x0_fn
        self.correcting_xt_fn = correcting_xt_fn
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
        self.thresholding_max_val = thresholding_max_val
        self._connect(model_fn, noise_schedule)

    def _connect(self, model_fn: Callable, noise_schedule: Any) -> None:
        if isinstance(model_fn, ModelFunction) and model_fn.noise_schedule is noise_schedule:
            self._schedule: ReferenceSchedule = model_fn.schedule
            self._base: Predictor = model_fn
        else:
            self._schedule = schedule_view(noise_schedule)
            self._base = NoiseFunction(model_fn, self._schedule)
        self.last_nfe: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(algorithm_type={self.algorithm_type!r}, noise_schedule={self.noise_schedule!r})"

    # -- predictions -----------------------------------------------------------------------------

    def _kind(self) -> str:
        return "data" if self.algorithm_type == "dpmsolver++" else "noise"

    def _x0_correction(self) -> Callable | None:
        return self.correcting_x0_fn

    def _predictor(self) -> Predictor:
        fn = self._x0_correction()
        if fn is None:
            return self._base
        return CorrectedData(self._base, lambda x0, t: fn(x0, self._time_tensor(t, x0)))

    def _time_tensor(self, t: Tensor | float, like: Tensor) -> Tensor:
        if isinstance(t, Tensor):
            return t
        return torch.tensor(t, dtype=self._schedule.eval_dtype, device=like.device)

    def dynamic_thresholding_fn(self, x0: Tensor, t: Tensor) -> Tensor:
        """Imagen's dynamic thresholding with this solver's ratio and max value (see
        :func:`diffode.integrators.dynamic_thresholding`)."""
        return dynamic_thresholding(x0, self.dynamic_thresholding_ratio, self.thresholding_max_val)

    def noise_prediction_fn(self, x: Tensor, t: Tensor) -> Tensor:
        """The noise prediction at ``x`` and time ``t``."""
        return self.model(x, t)

    def data_prediction_fn(self, x: Tensor, t: Tensor) -> Tensor:
        """The data prediction at ``x`` and time ``t``, passed through the x0 correction (thresholding)."""
        noise = self.noise_prediction_fn(x, t)
        point = resolve_point(self._schedule, t, x)
        x0 = get_parameterization("noise").to_data(noise, x, point.alpha, point.sigma)
        fn = self._x0_correction()
        return x0 if fn is None else fn(x0, t)

    def model_fn(self, x: Tensor, t: Tensor) -> Tensor:
        """The prediction the solver integrates: data (``dpmsolver++``) or noise (``dpmsolver``)."""
        if self._kind() == "data":
            return self.data_prediction_fn(x, t)
        return self.noise_prediction_fn(x, t)

    def denoise_to_zero_fn(self, x: Tensor, s: Tensor) -> Tensor:
        """The data prediction at time ``s`` (the final denoising step)."""
        return self.data_prediction_fn(x, s)

    # -- time grids ------------------------------------------------------------------------------

    def get_time_steps(self, skip_type: str, t_T: float, t_0: float, N: int, device: torch.device | str | None) -> Tensor:
        """``N + 1`` times from ``t_T`` to ``t_0`` in the torch default dtype.

        Args:
            skip_type: ``'logSNR'`` (uniform in $\\lambda$), ``'time_uniform'`` or ``'time_quadratic'``
                (uniform in $\\sqrt t$).
            t_T: The first time.
            t_0: The last time.
            N: The number of intervals.
            device: Where the tensor goes.
        """
        ns = self.noise_schedule
        if skip_type == 'logSNR':
            lambda_T = ns.marginal_lambda(torch.tensor(float(t_T)).to(device))
            lambda_0 = ns.marginal_lambda(torch.tensor(float(t_0)).to(device))
            steps = torch.linspace(lambda_T.cpu().item(), lambda_0.cpu().item(), N + 1).to(device)
            return ns.inverse_lambda(steps)
        if skip_type == 'time_uniform':
            return torch.linspace(t_T, t_0, N + 1).to(device)
        if skip_type == 'time_quadratic':
            return torch.linspace(t_T ** (1. / 2), t_0 ** (1. / 2), N + 1).pow(2).to(device)
        raise ValueError(f"Unsupported skip_type {skip_type!r}, need to be 'logSNR' or 'time_uniform' or 'time_quadratic'")

    def get_orders_and_timesteps_for_singlestep_solver(
            self, steps: int, order: int, skip_type: str, t_T: float, t_0: float,
            device: torch.device | str | None) -> tuple[Tensor, list[int]]:
        """The step orders of DPM-Solver-fast (``steps`` evaluations in steps of order 3, 2, 1) and the outer grid.

        With ``'logSNR'`` the steps are uniform in $\\lambda$ whatever their order; otherwise an
        order-k step spans k intervals of the ``steps``-interval grid.
        """
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"'order' must be '1' or '2' or '3', got {order!r}")
        integrator = DPMSolverSinglestep(order, self._kind(), split="fast")
        orders = integrator.plan_orders(steps)
        grid = _ReferenceGrid(self, skip_type, device)
        return integrator.plan_times(self._schedule, grid, t_T, t_0, orders).to(device), orders

    # -- single updates (the reference's public helpers) -----------------------------------------

    def _point(self, t: Tensor | float) -> TimePoint:
        t = as_time(t).reshape(-1)
        if t.numel() > 1 and not bool((t == t[0]).all()):
            raise ValueError("the compat update functions take one time per call (a scalar or equal entries), "
                             f"got {t.numel()} different times")
        with self._schedule.evaluating_in(t.dtype):
            return self._schedule.points(t[:1])[0]

    def dpm_solver_first_update(self, x: Tensor, s: Tensor, t: Tensor, model_s: Tensor | None = None,
                                return_intermediate: bool = False):
        """DPM-Solver-1 (DDIM) from ``s`` to ``t``; ``model_s`` is the model output at ``s`` if known."""
        ps, pt = self._point(s), self._point(t)
        with self._schedule.evaluating_in(as_time(s).dtype):
            m_s = self._predictor().predict(x, ps, self._kind()) if model_s is None else model_s
        x_t = exponential_update(x, ps, pt, [m_s], [0.0], self._kind())
        return (x_t, {'model_s': m_s}) if return_intermediate else x_t

    def _singlestep_update(self, x, s, t, order, r1, r2, model_s, model_s1, return_intermediate, solver_type):
        solver_type = _solver_type(solver_type)
        ps, pt = self._point(s), self._point(t)
        integrator = DPMSolverSinglestep(order, self._kind(), solver_type)
        stages = stages_for(order, solver_type, None if r1 is None else float(r1), None if r2 is None else float(r2))
        predictor = self._predictor()
        with self._schedule.evaluating_in(as_time(s).dtype):
            m_s = integrator.evaluate(predictor, x, ps) if model_s is None else model_s
            if model_s1 is not None:
                predictor = Primed(predictor, [model_s1])
            x_t, values, _ = run_stages(integrator, predictor, x, ps, pt, stages, m_s)
        if return_intermediate:
            names = ('model_s', 'model_s1', 'model_s2')[:order]
            return x_t, dict(zip(names, values))
        return x_t

    def singlestep_dpm_solver_second_update(self, x: Tensor, s: Tensor, t: Tensor, r1: float = 0.5,
                                            model_s: Tensor | None = None, return_intermediate: bool = False,
                                            solver_type: str = 'dpmsolver'):
        """Singlestep DPM-Solver-2 with its intermediate point at ``lambda_s + r1 h``."""
        return self._singlestep_update(x, s, t, 2, r1, None, model_s, None, return_intermediate, solver_type)

    def singlestep_dpm_solver_third_update(self, x: Tensor, s: Tensor, t: Tensor, r1: float = 1. / 3.,
                                           r2: float = 2. / 3., model_s: Tensor | None = None,
                                           model_s1: Tensor | None = None, return_intermediate: bool = False,
                                           solver_type: str = 'dpmsolver'):
        """Singlestep DPM-Solver-3 with intermediate points at ``lambda_s + r1 h`` and ``lambda_s + r2 h``."""
        return self._singlestep_update(x, s, t, 3, r1, r2, model_s, model_s1, return_intermediate, solver_type)

    def singlestep_dpm_solver_update(self, x: Tensor, s: Tensor, t: Tensor, order: int,
                                     return_intermediate: bool = False, solver_type: str = 'dpmsolver',
                                     r1: float | None = None, r2: float | None = None):
        """Singlestep DPM-Solver of ``order`` (1, 2 or 3) from ``s`` to ``t``."""
        if order == 1:
            return self.dpm_solver_first_update(x, s, t, return_intermediate=return_intermediate)
        if order in (2, 3):
            return self._singlestep_update(x, s, t, order, r1, r2, None, None, return_intermediate, solver_type)
        raise ValueError(f"Solver order must be 1 or 2 or 3, got {order!r}")

    def _multistep_update(self, x, models, times, t, solver_type):
        solver_type = _solver_type(solver_type)
        points, pt = [self._point(u) for u in times], self._point(t)
        s = points[-1]
        h = pt.lam - s.lam
        kind = self._kind()
        nodes = [(p.lam - s.lam) / h for p in points]
        reference = ReferenceMultistep(len(points), kind, solver_type)
        factors = reference.update_factors(len(points), -h if kind == "data" else h)
        return exponential_update(x, s, pt, list(models), nodes, kind, solver_type, factors)

    def multistep_dpm_solver_second_update(self, x: Tensor, model_prev_list: Sequence[Tensor],
                                           t_prev_list: Sequence[Tensor], t: Tensor, solver_type: str = "dpmsolver"):
        """Multistep DPM-Solver-2 from the last two outputs."""
        return self._multistep_update(x, model_prev_list[-2:], t_prev_list[-2:], t, solver_type)

    def multistep_dpm_solver_third_update(self, x: Tensor, model_prev_list: Sequence[Tensor],
                                          t_prev_list: Sequence[Tensor], t: Tensor, solver_type: str = 'dpmsolver'):
        """Multistep DPM-Solver-3 from the last three outputs (the reference's weights)."""
        return self._multistep_update(x, model_prev_list[-3:], t_prev_list[-3:], t, solver_type)

    def multistep_dpm_solver_update(self, x: Tensor, model_prev_list: Sequence[Tensor], t_prev_list: Sequence[Tensor],
                                    t: Tensor, order: int, solver_type: str = 'dpmsolver'):
        """Multistep DPM-Solver of ``order`` (1, 2 or 3) from the last outputs to ``t``."""
        if order == 1:
            return self.dpm_solver_first_update(x, t_prev_list[-1], t, model_s=model_prev_list[-1])
        if order in (2, 3):
            return self._multistep_update(x, model_prev_list[-order:], t_prev_list[-order:], t, solver_type)
        raise ValueError(f"Solver order must be 1 or 2 or 3, got {order!r}")

    # -- adaptive --------------------------------------------------------------------------------

    def dpm_solver_adaptive(self, x: Tensor, order: int, t_T: float, t_0: float, h_init: float = 0.05,
                            atol: float = 0.0078, rtol: float = 0.05, theta: float = 0.9, t_err: float = 1e-5,
                            solver_type: str = 'dpmsolver') -> Tensor:
        """Adaptive DPM-Solver-12 (``order=2``) or -23 (``order=3``) from ``t_T`` to ``t_0``."""
        return self._adaptive(x, order, t_T, t_0, h_init, atol, rtol, theta, t_err, solver_type)

    def _adaptive(self, x, order, t_T, t_0, h_init, atol, rtol, theta, t_err, solver_type,
                  callback=None, img_callback=None):
        solver_type = _solver_type(solver_type)
        if order not in (2, 3) or isinstance(order, bool):
            raise ValueError(f"For adaptive step size solver, order must be 2 or 3, got {order!r}")
        integrator = DPMSolverAdaptive(order, self._kind(), solver_type)
        # The reference keeps s, lambda and h in the dtype of x.
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        controller = ReferenceController(dtype, atol=atol, rtol=rtol, theta=theta, h_init=h_init, t_err=t_err,
                                         max_nfe=_MAX_ADAPTIVE_NFE)
        predictor = CountingPredictor(self._predictor())
        hook = None
        if callback is not None or img_callback is not None:
            def hook(x_new, _t, _step):
                # The reference reports the evaluations before the accepted step.
                _notify(callback, img_callback, predictor.count - order, x_new)
                return x_new
        with self._schedule.evaluating_in(dtype):
            solution = solve_adaptive(predictor, x, integrator, float(t_T), float(t_0), controller,
                                      correcting_xt_fn=hook)
        x, nfe = solution.x, solution.nfe
        print('adaptive solver nfe', nfe)
        self.last_nfe = nfe
        return x

    # -- sampling --------------------------------------------------------------------------------

    def add_noise(self, x: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """$\\alpha_t x + \\sigma_t\\,\\epsilon$ for each of the ``n`` times in ``t``: shape ``(n, *x.shape)``,
        or ``x.shape`` when ``n == 1``; ``noise`` (shape ``(n, *x.shape)``) is drawn when not given."""
        t = as_time(t).reshape(-1)
        n = t.shape[0]
        if noise is None:
            noise = torch.randn((n, *x.shape), device=x.device)
        x0 = x.reshape((-1, *x.shape)).expand(n, *x.shape)
        xt = self._schedule.add_noise(x0, t, noise)
        return xt.squeeze(0) if n == 1 else xt

    def inverse(self, x: Tensor, steps: int = 20, t_start: float | None = None, t_end: float | None = None,
                order: int = 2, skip_type: str = 'time_uniform', method: str = 'multistep',
                lower_order_final: bool = True, denoise_to_zero: bool = False, solver_type: str = 'dpmsolver',
                atol: float = 0.0078, rtol: float = 0.05, return_intermediate: bool = False
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Integrate from data at ``t_start`` (default ``1/N``) up to noise at ``t_end`` (default ``T``).

        Takes the arguments of :meth:`sample`; DDIM inversion is ``order=1``.
        """
        t_0 = 1. / self.noise_schedule.total_N if t_start is None else t_start
        t_T = self.noise_schedule.T if t_end is None else t_end
        if not (t_0 > 0 and t_T > 0):
            raise ValueError(f"times must be > 0 (in [1/N, 1] for discrete schedules), got t_start={t_0}, t_end={t_T}")
        return self.sample(x, steps=steps, t_start=t_0, t_end=t_T, order=order, skip_type=skip_type, method=method,
                           lower_order_final=lower_order_final, denoise_to_zero=denoise_to_zero,
                           solver_type=solver_type, atol=atol, rtol=rtol, return_intermediate=return_intermediate)

    def sample(self, x: Tensor, steps: int = 20, t_start: float | None = None, t_end: float | None = None,
               order: int = 2, skip_type: str = 'time_uniform', method: str = 'multistep',
               lower_order_final: bool = True, denoise_to_zero: bool = False, solver_type: str = 'dpmsolver',
               atol: float = 0.0078, rtol: float = 0.05, return_intermediate: bool = False
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Solve the diffusion ODE from ``t_start`` (default ``T``) to ``t_end`` (default ``1/N``).

        Args:
            x: The initial noise, shape ``(B, ...)``.
            steps: Model evaluations of the fixed-grid methods (the adaptive method ignores it).
            t_start: The start time.
            t_end: The end time.
            order: 1, 2 or 3 (2 or 3 for ``'adaptive'``).
            skip_type: ``'time_uniform'``, ``'logSNR'`` or ``'time_quadratic'``.
            method: ``'multistep'``, ``'singlestep'`` (DPM-Solver-fast), ``'singlestep_fixed'`` or
                ``'adaptive'``.
            lower_order_final: Lower orders on the last multistep steps when ``steps < 10``.
            denoise_to_zero: One more evaluation that returns the data prediction at ``t_end``.
            solver_type: ``'dpmsolver'`` (or ``'dpm_solver'``) or ``'taylor'``.
            atol: Absolute tolerance of the adaptive method.
            rtol: Relative tolerance of the adaptive method.
            return_intermediate: Also return the list of intermediate states.

        Returns:
            The sample, or ``(sample, intermediates)``.
        """
        t_0 = 1. / self.noise_schedule.total_N if t_end is None else t_end
        t_T = self.noise_schedule.T if t_start is None else t_start
        return self._sample(x, steps, t_T, t_0, order, skip_type, method, lower_order_final, denoise_to_zero,
                            solver_type, atol, rtol, return_intermediate)

    def _denoise_time(self, t_0: float, x: Tensor) -> Tensor:
        return torch.ones((1,)).to(x.device) * t_0

    def _sample(self, x, steps, t_T, t_0, order, skip_type, method, lower_order_final, denoise_to_zero,
                solver_type, atol, rtol, return_intermediate, callback=None, img_callback=None):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise TypeError(f"x must be a floating tensor of shape (B, ...), got {type(x).__name__}")
        if not (t_0 > 0 and t_T > 0):
            raise ValueError(f"times must be > 0 (in [1/N, 1] for discrete schedules), got t_start={t_T}, t_end={t_0}")
        check_choice("method", method, _METHODS)
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"Solver order must be 1 or 2 or 3, got {order!r}")
        solver_type = _solver_type(solver_type)
        if method == 'adaptive' and return_intermediate:
            raise ValueError("Cannot use adaptive solver when saving intermediate values")
        if method == 'adaptive' and self.correcting_xt_fn is not None:
            raise ValueError("Cannot use adaptive solver when correcting_xt_fn is not None")
        intermediates = None
        with torch.no_grad():
            if method == 'adaptive':
                x = self._adaptive(x, order, t_T, t_0, 0.05, atol, rtol, 0.9, 1e-5, solver_type, callback, img_callback)
                last = nfe = self.last_nfe
            elif method == 'multistep':
                x, intermediates, last, nfe = self._multistep(x, steps, t_T, t_0, order, skip_type, lower_order_final,
                                                              solver_type, return_intermediate, callback, img_callback)
            else:
                x, intermediates, last, nfe = self._singlestep(x, steps, t_T, t_0, order, skip_type, method,
                                                               solver_type, return_intermediate, callback, img_callback)
            if denoise_to_zero:
                t = self._denoise_time(t_0, x)
                x = self._predictor().data(x, t)
                nfe += 1
                if self.correcting_xt_fn is not None:
                    x = self.correcting_xt_fn(x, t, last + 1)
                _notify(callback, img_callback, last, x)
                if intermediates is not None:
                    intermediates.append(x)
        self.last_nfe = nfe
        return (x, intermediates) if return_intermediate else x

    def _multistep(self, x, steps, t_T, t_0, order, skip_type, lower_order_final, solver_type, return_intermediate,
                   callback, img_callback):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < order:
            raise ValueError(f"method='multistep' needs an integer steps >= order, got steps={steps!r}, order={order}")
        timesteps = self.get_time_steps(skip_type, t_T, t_0, steps, x.device)
        integrator = ReferenceMultistep(order, self._kind(), solver_type)
        orders = integrator.step_orders(steps, self.lower_order_final_below if lower_order_final else False)
        predictor = model = self._predictor()
        correct = self.correcting_xt_fn
        with self._schedule.evaluating_in(timesteps.dtype):
            if correct is not None:
                # The first model output is taken before the correction changes x.
                (p0,) = self._schedule.points(timesteps[:1])
                model = Primed(predictor, [integrator.evaluate(predictor, x, p0)])
                x = correct(x, timesteps[0], 0)

            def after_step(x_new, _t, step):
                if correct is not None:
                    x_new = correct(x_new, timesteps[step], step)
                if step >= order:
                    _notify(callback, img_callback, step, x_new)
                return x_new

            hook = after_step if any(f is not None for f in (correct, callback, img_callback)) else None
            solution = solve(model, x, integrator, timesteps, orders=orders, correcting_xt_fn=hook,
                             return_intermediate=return_intermediate)
        return solution.x, solution.intermediates, steps, solution.nfe

    def _singlestep(self, x, steps, t_T, t_0, order, skip_type, method, solver_type, return_intermediate,
                    callback, img_callback):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if method == 'singlestep':
            timesteps, orders = self.get_orders_and_timesteps_for_singlestep_solver(steps, order, skip_type, t_T, t_0,
                                                                                    x.device)
        else:
            orders = [order] * (steps // order)
            timesteps = self.get_time_steps(skip_type, t_T, t_0, len(orders), x.device)
        if not orders:
            return x, ([] if return_intermediate else None), -1, 0
        integrator = DPMSolverSinglestep(max(orders), self._kind(), solver_type,
                                         stages=_ReferenceGrid(self, skip_type, x.device))
        correct = self.correcting_xt_fn

        def after_step(x_new, _t, index):
            if correct is not None:
                x_new = correct(x_new, timesteps[index], index - 1)
            _notify(callback, img_callback, index - 1, x_new)
            return x_new

        hook = after_step if any(f is not None for f in (correct, callback, img_callback)) else None
        with self._schedule.evaluating_in(timesteps.dtype):
            solution = solve(self._predictor(), x, integrator, timesteps, orders=orders, correcting_xt_fn=hook,
                             return_intermediate=return_intermediate)
        intermediates = solution.intermediates[1:] if return_intermediate else None
        return solution.x, intermediates, len(orders) - 1, solution.nfe


class DPM_SolverV2(DPM_Solver):
    """The v2 generation of the reference (bundled with latent-diffusion / Stable Diffusion code).

    :class:`DPM_Solver` returns an instance of this class when called with the v2 arguments. Its
    ``sample`` defaults to DPM-Solver-fast (``order=3, method='singlestep'``), lowers the final
    multistep orders when ``steps < 15`` and takes ``callback(step)`` / ``img_callback(x, step)``.

    Args:
        model_fn: The noise-prediction function ``model_fn(x, t_continuous)``.
        noise_schedule: The :class:`NoiseScheduleVP`.
        predict_x0: Integrate the data prediction (DPM-Solver++) instead of the noise prediction.
        thresholding: Dynamic thresholding of the data prediction (ratio 0.995).
        max_val: The lower bound of the thresholding scale.
    """

    lower_order_final_below = 15

    def __init__(self, model_fn: Callable, noise_schedule: Any, predict_x0: bool = False, thresholding: bool = False,
                 max_val: float = 1.):
        self.model = model_fn
        self.noise_schedule = noise_schedule
        self.predict_x0 = predict_x0
        self.thresholding = thresholding
        self.max_val = max_val
        self.correcting_xt_fn = None
        self._connect(model_fn, noise_schedule)

    @property
    def algorithm_type(self) -> str:
        """``"dpmsolver++"`` when ``predict_x0`` else ``"dpmsolver"``."""
        return "dpmsolver++" if self.predict_x0 else "dpmsolver"

    def _x0_correction(self) -> Callable | None:
        if not self.thresholding:
            return None
        return lambda x0, t: dynamic_thresholding(x0, 0.995, self.max_val)

    def _denoise_time(self, t_0: float, x: Tensor) -> Tensor:
        return torch.ones((x.shape[0],)).to(x.device) * t_0

    def dpm_solver_adaptive(self, x: Tensor, order: int, t_T: float, t_0: float, h_init: float = 0.05,
                            atol: float = 0.0078, rtol: float = 0.05, theta: float = 0.9, t_err: float = 1e-5,
                            solver_type: str = 'dpm_solver', callback: Callable | None = None,
                            img_callback: Callable | None = None) -> Tensor:
        """Adaptive DPM-Solver-12 / -23; ``callback(nfe)`` and ``img_callback(x, nfe)`` on accepted steps."""
        return self._adaptive(x, order, t_T, t_0, h_init, atol, rtol, theta, t_err, solver_type, callback, img_callback)

    def sample(self, x: Tensor, steps: int = 20, t_start: float | None = None, t_end: float | None = None,
               order: int = 3, skip_type: str = 'time_uniform', method: str = 'singlestep',
               lower_order_final: bool = True, denoise_to_zero: bool = False, solver_type: str = 'dpm_solver',
               atol: float = 0.0078, rtol: float = 0.05, callback: Callable | None = None,
               img_callback: Callable | None = None, return_intermediate: bool = False
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Solve the diffusion ODE from ``t_start`` (default ``T``) to ``t_end`` (default ``1/N``), v2 defaults.

        Takes the arguments of :meth:`DPM_Solver.sample` (``lower_order_final`` acts when
        ``steps < 15``) and ``callback(step)`` / ``img_callback(x, step)``, called after each step
        (multistep: after the warm-up steps only).
        """
        t_0 = 1. / self.noise_schedule.total_N if t_end is None else t_end
        t_T = self.noise_schedule.T if t_start is None else t_start
        return self._sample(x, steps, t_T, t_0, order, skip_type, method, lower_order_final, denoise_to_zero,
                            solver_type, atol, rtol, return_intermediate, callback, img_callback)


class _ReferenceGrid(TimeGrid):
    """The reference's own grid of a skip type (:meth:`DPM_Solver.get_time_steps`), as a diffode grid."""

    def __init__(self, solver: DPM_Solver, skip_type: str, device):
        self.solver, self.skip_type, self.device = solver, skip_type, device
        self.uniform_in_lambda = skip_type == 'logSNR'

    def times(self, schedule, t_start: float, t_end: float, n: int) -> Tensor:
        return self.solver.get_time_steps(self.skip_type, t_start, t_end, n, self.device)
