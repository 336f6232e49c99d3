"""The adaptive sampler: the integrator's own embedded-pair step and the controller's own rule in a ``lax.while_loop``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffode._utils import NonFiniteError
from diffode.controllers import AdaptiveController
from diffode.integrators.base import Integrator
from diffode.integrators.registry import get_integrator
from diffode.jax.model import Model
from diffode.jax.program import NotRepresentableError
from diffode.schedules.base import TimePoint

__all__ = ["AdaptiveSampler"]

def _fields(p: TimePoint) -> tuple:
    return p.t, p.lam, p.alpha, p.sigma


# The loop's status codes.
RUNNING, MAX_NFE, UNDERFLOW, NON_FINITE = 0, 1, 2, 3


class AdaptiveSampler:
    """An embedded pair (DPM-Solver-12 / -23) with step-size control, compiled as one ``lax.while_loop``.

    The loop is :func:`diffode.solve_adaptive`'s: each iteration calls the integrator's own
    :meth:`~diffode.integrators.Integrator.step` on JAX arrays (its stage points, weights and
    conversions computed in the graph by the same functions as on the PyTorch path), then the
    controller's :meth:`~diffode.controllers.AdaptiveController.errors` and
    :meth:`~diffode.controllers.AdaptiveController.next_h` accept or reject the step and size the
    next one. Schedule values at the new points come from the schedule's own formulas
    (:meth:`~diffode.schedules.NoiseSchedule.array_point`).

    ``sampler(x, *args)`` returns the final state and raises if the loop failed (one host
    synchronisation, at the end); :meth:`run` returns the raw ``(x, nfe, accepted, rejected, status)``
    for use under ``jax.vmap`` or inside other compiled code (status 0: done, 1: ``max_nfe`` reached,
    2: the step size underflowed, 3: a non-finite state).

    Args:
        model: The :class:`~diffode.jax.Model`.
        integrator: An embedded pair, e.g. ``"dpmpp_adaptive_23"`` or ``DPMSolverAdaptive(2, "noise")``.
        t_start: The start time (default the schedule's ``T``).
        t_end: The end time (default the schedule's ``default_t_end``).
        controller: The :class:`~diffode.controllers.AdaptiveController` (default tolerances if ``None``).
        denoise_to_zero: End with one more evaluation that returns the data prediction.

    Raises:
        ValueError: For an integrator without an error estimate, or bad times.
        NotRepresentableError: For a stochastic pair or one that keeps a history between steps.
    """

    def __init__(self, model: Model, integrator: Integrator | str = "dpmpp_adaptive_23", t_start: float | None = None,
                 t_end: float | None = None, controller: AdaptiveController | None = None, *,
                 denoise_to_zero: bool = False):
        from diffode.solve import _grid_points

        if not isinstance(model, Model):
            raise TypeError(f"model must be a diffode.jax.Model (diffode.jax.wrap(network, schedule, ...)), got "
                            f"{type(model).__name__}")
        integrator = get_integrator(integrator)
        if not integrator.adaptive:
            raise ValueError(f"{integrator!r} has no error estimate; use an embedded pair such as DPMSolverAdaptive "
                             "(or diffode.jax.Sampler for a fixed grid)")
        if integrator.stochastic:
            raise NotRepresentableError(f"{integrator!r} is stochastic; the JAX backend runs deterministic integrators")
        if controller is None:
            controller = AdaptiveController()
        elif not isinstance(controller, AdaptiveController):
            raise TypeError(f"controller must be an AdaptiveController, got {type(controller).__name__}")
        if not isinstance(denoise_to_zero, bool):
            raise TypeError(f"denoise_to_zero must be a bool, got {type(denoise_to_zero).__name__}")
        schedule = model.schedule
        t_start = schedule.check_time("t_start", schedule.T if t_start is None else t_start)
        t_end = schedule.check_time("t_end", schedule.default_t_end if t_end is None else t_end)
        if t_start == t_end:
            raise ValueError(f"t_start and t_end must differ, got {t_start} for both")
        try:  # the loop evaluates the schedule's own formulas on JAX arrays
            jax.eval_shape(lambda lam: _fields(schedule.array_point(lam)), jnp.zeros(()))
        except Exception as error:
            raise NotRepresentableError(f"{schedule!r} does not evaluate on JAX arrays ({type(error).__name__}: "
                                        f"{error}); the adaptive loop needs its log_alpha, log_sigma and "
                                        "inverse_lambda written with diffode._namespace.namespace") from None
        self.model, self.integrator, self.controller = model, integrator, controller
        self.start, self.end = _grid_points(schedule, [t_start, t_end])
        self.denoise_to_zero = denoise_to_zero
        self._run = jax.jit(self._loop)

    def __repr__(self) -> str:
        return f"diffode.jax.AdaptiveSampler({self.integrator!r}, {self.controller!r})"

    def _loop(self, x, args):
        model, integrator, controller = self.model.bind(args), self.integrator, self.controller
        schedule = model.schedule

        def point(values) -> TimePoint:
            return TimePoint(*values)

        # Times, step sizes and weights in float64 where JAX allows it (as the PyTorch loop keeps them
        # on the host in float64), so that a float32 state takes the same steps on both backends.
        wide = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32

        def host(p: TimePoint) -> tuple:
            return tuple(jnp.asarray(v, dtype=wide) for v in (p.t, p.lam, p.alpha, p.sigma))

        end = host(self.end)
        start = host(self.start)
        counter = jnp.zeros((), jnp.int32)
        carry = (x, x, start, controller.first_h(end[1] - start[1]), counter, counter, counter, counter)

        def running(c):
            s, status = c[2], c[7]
            return (jnp.abs(s[0] - end[0]) > controller.t_err) & (status == RUNNING)

        def body(c):
            x, x_prev, s, h, nfe, accepted, rejected, _ = c
            over = nfe + integrator.evals_per_step > controller.max_nfe
            underflow = s[1] + h == s[1]
            moved = schedule.array_point(s[1] + h)
            reach = controller.reaches_end(h, end[1] - s[1])
            t = tuple(jnp.where(reach, e, m.astype(wide)) for e, m in
                      zip(end, (moved.t, moved.lam, moved.alpha, moved.sigma)))
            result = integrator.step(model, x, point(s), point(t), integrator.init())
            if result.state.history or result.state.carry is not None:
                raise NotRepresentableError(f"{integrator!r} keeps a state between steps; the JAX adaptive loop "
                                            "runs embedded pairs of singlestep methods")
            finite = jnp.all(jnp.isfinite(result.x)) & jnp.all(jnp.isfinite(result.x_low))
            error = jnp.max(controller.errors(result.x, result.x_low, x_prev)).astype(wide)
            error = jnp.where(jnp.isfinite(error), error, jnp.inf)
            status = jnp.where(over, MAX_NFE, jnp.where(underflow, UNDERFLOW, jnp.where(finite, RUNNING, NON_FINITE)))
            stepped = ~over & ~underflow
            accept = stepped & finite & (error <= 1.0)
            x_new = jnp.where(accept, result.x, x)
            x_prev = jnp.where(accept, result.x_low, x_prev)
            s_new = tuple(jnp.where(accept, b, a) for a, b in zip(s, t))
            h_new = controller.next_h(h, error, integrator.order, end[1] - s_new[1])
            return (x_new, x_prev, s_new, jnp.where(stepped, h_new, h), nfe + jnp.where(stepped, result.nfe, 0),
                    accepted + accept, rejected + (stepped & ~accept), status.astype(jnp.int32))

        x, _, s, _, nfe, accepted, rejected, status = jax.lax.while_loop(running, body, carry)
        if self.denoise_to_zero:
            x = model.predict(x, point(s), "data")
            nfe = nfe + 1
        return x, nfe, accepted, rejected, status

    def run(self, x, *args):
        """``(x, nfe, accepted, rejected, status)`` without a host synchronisation (vmap-able)."""
        return self._run(x, args)

    def __call__(self, x, *args):
        """The final state; raises if the loop stopped early (reads the status on the host).

        Raises:
            RuntimeError: When ``controller.max_nfe`` was reached or the step size underflowed.
            NonFiniteError: When a step produced a NaN or an infinity.
        """
        out, nfe, accepted, rejected, status = self._run(x, args)
        worst = int(jnp.max(status))
        if worst == MAX_NFE:
            raise RuntimeError(f"the adaptive solver reached max_nfe={self.controller.max_nfe} (atol="
                               f"{self.controller.atol}, rtol={self.controller.rtol}); loosen the tolerances or raise max_nfe")
        if worst == UNDERFLOW:
            raise RuntimeError(f"the adaptive solver's step size underflowed: the tolerances atol={self.controller.atol}, "
                               f"rtol={self.controller.rtol} cannot be met; loosen them")
        if worst == NON_FINITE:
            raise NonFiniteError(int(jnp.max(accepted + rejected)), math.nan, [], "state")
        self.last_nfe = int(jnp.max(nfe))
        return out
