r"""Drop-in replacement for the reference's JAX file ``dpm_solver_jax.py``, on diffode's JAX backend.

Code written against the reference JAX implementation changes one import line::

    # from dpm_solver_jax import NoiseScheduleVP, model_wrapper, DPM_Solver
    from diffode.jax.dpm_solver import NoiseScheduleVP, model_wrapper, DPM_Solver

The reference JAX file has the v2 interface: ``DPM_Solver(model_fn, noise_schedule, predict_x0=False,
thresholding=False, max_val=1.)`` and ``sample(x, steps=20, t_start=None, t_end=None, order=3,
skip_type='time_uniform', method='singlestep', denoise=False, solver_type='dpm_solver', atol=0.0078,
rtol=0.05)``.

**How.** This module reuses the PyTorch compatibility layer (:mod:`diffode.compat.dpm_solver`)
rather than a copy of it. A fixed-grid ``sample`` is run once by the PyTorch compat solver on
coefficient vectors (:mod:`diffode.jax.program`: every grid, order schedule, inner singlestep ratio
and update weight of the reference comes from there), and the recorded program is then applied to
the JAX model function by a compiled ``lax.scan`` (:class:`~diffode.jax.Sampler`), once per
configuration and then from a cache. ``method='adaptive'`` runs :class:`~diffode.jax.AdaptiveSampler`
(a ``lax.while_loop``; the reference's uses ``jax.experimental.host_callback``, which current JAX
no longer has). Grids and schedule values are computed in float64 when ``jax_enable_x64`` is on and
in float32 otherwise, as the reference computes them in JAX's default dtype.

**Deviations.** ``thresholding=True`` raises ``NotRepresentableError`` (dynamic thresholding is not
linear in the state; use :mod:`diffode.compat.dpm_solver` with PyTorch). ``guidance_type='classifier'``
raises ``ValueError``. Discrete schedules are not clipped at $\lambda = -5.1$ (neither is the
reference JAX file's). The adaptive method uses diffode's controller (the reference's rule, with
the end of the interval approached exactly) and records its NFE in ``last_nfe`` instead of printing it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from diffode._utils import check_choice, default_dtype
from diffode.compat import dpm_solver as torch_compat
from diffode.compat._model import GUIDANCE_TYPES, MODEL_TYPES, ReferenceTimeInput
from diffode.controllers import AdaptiveController
from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.jax.adaptive import AdaptiveSampler
from diffode.jax.model import Model
from diffode.jax.program import NotRepresentableError, Program, _TestModel, check_linear, from_calls
from diffode.jax.sampler import Sampler
from diffode.models.guidance import ClassifierFreeGuidance
from diffode.models.parameterizations import Noise, get_parameterization
from diffode.models.time_inputs import ContinuousTime
from diffode.schedules.base import TimePoint

__all__ = ["DPM_Solver", "NoiseScheduleVP", "model_wrapper"]

_METHODS = ("singlestep", "multistep", "singlestep_fixed", "adaptive")


def _default_dtype() -> torch.dtype:
    """JAX's default float: float64 with ``jax_enable_x64``, else float32."""
    return torch.float64 if jax.config.read("jax_enable_x64") else torch.float32


def _host_array(value: Any, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must hold floating numbers, got dtype {array.dtype}")
    return torch.from_numpy(array.copy())


class NoiseScheduleVP(torch_compat.NoiseScheduleVP):
    """The reference JAX file's VP schedule (``'discrete'``, ``'linear'`` or ``'cosine'``).

    The PyTorch compat schedule with the JAX file's two differences: discrete arrays keep the dtype
    of ``betas`` / ``alphas_cumprod`` (a JAX or NumPy array), and no step is clipped at
    $\\lambda < -5.1$. Its ``marginal_*`` methods and ``inverse_lambda`` take JAX arrays.

    Args:
        schedule: ``'discrete'``, ``'linear'`` or ``'cosine'``.
        betas: The training betas of a discrete schedule.
        alphas_cumprod: Or their cumulative products.
        continuous_beta_0: $\\beta_0$ of the linear schedule.
        continuous_beta_1: $\\beta_1$ of the linear schedule.
    """

    def __init__(self, schedule: str = 'discrete', betas: Any = None, alphas_cumprod: Any = None,
                 continuous_beta_0: float = 0.1, continuous_beta_1: float = 20.):
        betas, alphas_cumprod = _host_array(betas, "betas"), _host_array(alphas_cumprod, "alphas_cumprod")
        given = betas if betas is not None else alphas_cumprod
        dtype = given.dtype if given is not None else _default_dtype()
        super().__init__(schedule, betas, alphas_cumprod, continuous_beta_0, continuous_beta_1, dtype=dtype)

    @staticmethod
    def numerical_clip_alpha(log_alphas: torch.Tensor, clipped_lambda: float = -5.1) -> torch.Tensor:
        """The identity: the reference JAX file does not clip (unlike the PyTorch file)."""
        return log_alphas


class ModelFunction:
    """What :func:`model_wrapper` returns: ``model_fn(x, t_continuous)`` is the noise prediction (JAX).

    Attributes:
        model: The :class:`~diffode.jax.Model` behind it (network, parameterization, time input).
        noise_schedule: The schedule.
    """

    def __init__(self, model: Model, noise_schedule: NoiseScheduleVP):
        self.model = model
        self.noise_schedule = noise_schedule

    def __call__(self, x, t_continuous):
        t = jnp.broadcast_to(jnp.reshape(jnp.asarray(t_continuous), (-1,)), (x.shape[0],))
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha = self.noise_schedule.marginal_alpha(t).reshape(shape)
        sigma = self.noise_schedule.marginal_std(t).reshape(shape)
        return self.model.predict(x, TimePoint(t=t, lam=math.nan, alpha=alpha, sigma=sigma), "noise")


def model_wrapper(model: Callable, noise_schedule: NoiseScheduleVP, model_type: str = "noise",
                  model_kwargs: dict = {},  # noqa: B006 -- the reference's signature; never mutated
                  guidance_type: str = "uncond", condition: Any = None, unconditional_condition: Any = None,
                  guidance_scale: float = 1., classifier_fn: Callable | None = None,
                  classifier_kwargs: dict = {}) -> ModelFunction:  # noqa: B006
    """Wrap a JAX network into the noise-prediction function ``model_fn(x, t_continuous)``.

    As :func:`diffode.compat.dpm_solver.model_wrapper` (the same parameterizations, time input and
    classifier-free guidance), on JAX arrays.

    Raises:
        ValueError: For an unknown model or guidance type, or ``guidance_type='classifier'``.
    """
    check_choice("model_type", model_type, MODEL_TYPES)
    check_choice("guidance_type", guidance_type, GUIDANCE_TYPES)
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if guidance_type == "classifier":
        raise ValueError("guidance_type='classifier' is not supported by the JAX compatibility layer; use "
                         "classifier-free guidance or diffode.compat.dpm_solver with PyTorch")
    kwargs = dict(model_kwargs)
    if guidance_type == "classifier-free" and guidance_scale != 1. and unconditional_condition is not None:
        guided = ClassifierFreeGuidance(model, condition, unconditional_condition, float(guidance_scale))
        network = lambda x, t_input: guided(x, t_input, **kwargs)  # noqa: E731
    elif guidance_type == "classifier-free":
        network = lambda x, t_input: model(x, t_input, condition, **kwargs)  # noqa: E731
    else:
        network = lambda x, t_input: model(x, t_input, **kwargs)  # noqa: E731
    schedule = noise_schedule.diffode
    jax_model = Model(network, noise_schedule.native, get_parameterization(MODEL_TYPES[model_type]),
                      ReferenceTimeInput(schedule))
    return ModelFunction(jax_model, noise_schedule)


class _Recording:
    """A PyTorch noise function that returns basis vectors and records its inputs (see :mod:`diffode.jax.program`)."""

    def __init__(self, size: int):
        self.size = size
        self.calls: list[tuple[TimePoint, str, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        j = len(self.calls) + 1
        if j >= self.size:
            raise NotRepresentableError(f"the solver evaluated the model more than {self.size - 1} times")
        self.calls.append((TimePoint(float(t.reshape(-1)[0]), math.nan, math.nan, math.nan), "noise",
                           x.detach().to(torch.float64).clone()))
        out = torch.zeros(self.size, dtype=x.dtype)
        out[j] = 1.0
        return out


_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _network_model(model_fn: Callable, noise_schedule: NoiseScheduleVP) -> Model:
    """The model function as a :class:`~diffode.jax.Model` (a noise prediction at continuous time),
    one per function and schedule, so that the solvers built on it share their compiled loops."""
    try:
        table = _MODELS.setdefault(model_fn, {})
    except TypeError:  # not weakly referenceable
        table = {}
    schedule, model = table.get(id(noise_schedule), (None, None))
    if schedule is not noise_schedule:
        model = Model(model_fn, noise_schedule.native, Noise(), ContinuousTime())
        table[id(noise_schedule)] = (noise_schedule, model)
    return model


class DPM_Solver:
    """DPM-Solver and DPM-Solver++ with the reference JAX file's interface, compiled with JAX.

    Args:
        model_fn: The noise-prediction function ``model_fn(x, t_continuous)`` (from :func:`model_wrapper`,
            or any JAX function of that form).
        noise_schedule: The :class:`NoiseScheduleVP`.
        predict_x0: Integrate the data prediction (DPM-Solver++) instead of the noise prediction.
        thresholding: Dynamic thresholding (not supported here: raises when sampling).
        max_val: The lower bound of the thresholding scale.

    Attributes:
        last_nfe: Model evaluations of the last ``sample``.
    """

    def __init__(self, model_fn: Callable, noise_schedule: NoiseScheduleVP, predict_x0: bool = False,
                 thresholding: bool = False, max_val: float = 1.):
        if not isinstance(noise_schedule, NoiseScheduleVP):
            raise TypeError("noise_schedule must be a diffode.jax.dpm_solver.NoiseScheduleVP, got "
                            f"{type(noise_schedule).__name__}")
        if not callable(model_fn):
            raise TypeError(f"model_fn must be callable, model_fn(x, t_continuous) -> noise; got {type(model_fn).__name__}")
        self.model = model_fn
        self.noise_schedule = noise_schedule
        self.predict_x0 = predict_x0
        self.thresholding = thresholding
        self.max_val = max_val
        self.last_nfe: int | None = None
        self._jax_model = _network_model(model_fn, noise_schedule)
        self._samplers: dict = {}

    def __repr__(self) -> str:
        return f"diffode.jax.dpm_solver.DPM_Solver(predict_x0={self.predict_x0}, noise_schedule={self.noise_schedule!r})"

    def _torch_solver(self, model_fn: Callable) -> torch_compat.DPM_SolverV2:
        return torch_compat.DPM_SolverV2(model_fn, self.noise_schedule, predict_x0=self.predict_x0,
                                         thresholding=self.thresholding, max_val=self.max_val)

    def program(self, steps: int, t_T: float, t_0: float, order: int, skip_type: str, method: str, denoise: bool,
                solver_type: str) -> Program:
        """The recorded program of a fixed-grid ``sample`` (the PyTorch compat solver's own run)."""
        options = dict(steps=steps, t_start=t_T, t_end=t_0, order=order, skip_type=skip_type, method=method,
                       lower_order_final=False, denoise_to_zero=denoise, solver_type=solver_type)
        size = steps + 2
        recording = _Recording(size)
        start = torch.zeros(size, dtype=torch.float64)
        start[0] = 1.0
        # The PyTorch compat layer builds its grids in torch's default dtype (the reference's rule);
        # here that must be JAX's default dtype.
        with default_dtype(_default_dtype()):
            final = self._torch_solver(recording).sample(start, **options)
            program = from_calls(recording.calls, final, None, f"DPM_Solver.sample(method={method!r})")

            def run_test_model(x0: torch.Tensor) -> torch.Tensor:
                return self._torch_solver(lambda x, t: _TestModel.value(x, float(t.reshape(-1)[0]), "noise")).sample(
                    x0, **options)

            check_linear(program, run_test_model, f"DPM_Solver(thresholding={self.thresholding}).sample")
        return program

    def sample(self, x: Any, steps: int = 20, t_start: float | None = None, t_end: float | None = None, order: int = 3,
               skip_type: str = 'time_uniform', method: str = 'singlestep', denoise: bool = False,
               solver_type: str = 'dpm_solver', atol: float = 0.0078, rtol: float = 0.05) -> Any:
        """Solve the diffusion ODE from ``t_start`` (default ``T``) to ``t_end`` (default ``1/N``).

        Args:
            x: The initial noise, a JAX array of shape ``(B, ...)``.
            steps: Model evaluations of the fixed-grid methods.
            t_start: The start time.
            t_end: The end time.
            order: 1, 2 or 3 (2 or 3 for ``'adaptive'``).
            skip_type: ``'time_uniform'``, ``'logSNR'`` or ``'time_quadratic'``.
            method: ``'singlestep'`` (DPM-Solver-fast), ``'multistep'``, ``'singlestep_fixed'`` or ``'adaptive'``.
            denoise: One more evaluation that returns the data prediction at ``t_end``.
            solver_type: ``'dpm_solver'`` or ``'taylor'``.
            atol: Absolute tolerance of the adaptive method.
            rtol: Relative tolerance of the adaptive method.

        Returns:
            The sample (a JAX array).
        """
        check_choice("method", method, _METHODS)
        t_0 = 1. / self.noise_schedule.total_N if t_end is None else float(t_end)
        t_T = self.noise_schedule.T if t_start is None else float(t_start)
        if method == 'adaptive':
            return self._adaptive(x, order, t_T, t_0, atol, rtol, denoise, solver_type)
        key = (steps, t_T, t_0, order, skip_type, method, bool(denoise), solver_type, _default_dtype())
        sampler = self._samplers.get(key)
        if sampler is None:
            program = self.program(steps, t_T, t_0, order, skip_type, method, bool(denoise), solver_type)
            sampler = self._samplers[key] = Sampler.from_program(self._jax_model, program)
        self.last_nfe = sampler.nfe
        return sampler(x)

    def _adaptive(self, x, order, t_T, t_0, atol, rtol, denoise, solver_type):
        if order not in (2, 3) or isinstance(order, bool):
            raise ValueError(f"For adaptive step size solver, order must be 2 or 3, got {order!r}")
        if self.thresholding:
            raise NotRepresentableError("dynamic thresholding is not supported by the JAX backend; use "
                                        "diffode.compat.dpm_solver with PyTorch")
        key = ("adaptive", order, t_T, t_0, atol, rtol, bool(denoise), solver_type, _default_dtype())
        sampler = self._samplers.get(key)
        if sampler is None:
            integrator = DPMSolverAdaptive(order, "data" if self.predict_x0 else "noise",
                                           torch_compat._solver_type(solver_type))
            controller = AdaptiveController(atol=atol, rtol=rtol, theta=0.9, h_init=0.05, t_err=1e-5)
            sampler = self._samplers[key] = AdaptiveSampler(self._jax_model, integrator, t_T, t_0, controller,
                                                            denoise_to_zero=bool(denoise))
        out = sampler(x)
        self.last_nfe = sampler.last_nfe
        return out
