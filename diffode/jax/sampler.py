"""The fixed-grid sampler: a recorded :class:`~diffode.jax.program.Program` applied by ``lax.scan``."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffode.integrators.base import Integrator, Plan
from diffode.jax.model import Model
from diffode.jax.program import Program, record

__all__ = ["Sampler"]


def _scan(network_model: Model, x, tables, args):
    model = network_model.bind(args)
    t_input, scale, conv_a, conv_b, a_in, b_in, a_out, b_out = tables
    window = b_in.shape[1]

    def body(carry, row):
        state, buf = carry
        t, c, ca, cb, ai, bi, ao, bo = row
        u = ai * state + jnp.tensordot(bi, buf, axes=1)
        m = model.apply(u, t, c, ca, cb)
        buf = jnp.concatenate([m[None], buf[:-1]], axis=0)
        return (ao * u + jnp.tensordot(bo, buf, axes=1), buf), None

    buf = jnp.zeros((window, *x.shape), x.dtype)
    (state, _), _ = jax.lax.scan(body, (x, buf), (t_input, scale, conv_a, conv_b, a_in, b_in, a_out, b_out))
    return state


@functools.lru_cache(maxsize=64)
def _compiled(model: Model):
    return jax.jit(functools.partial(_scan, model))


class Sampler:
    """A fixed-grid integrator on a JAX model, compiled once: ``sampler(x, *args)`` returns the final state.

    The plan and every coefficient come from the PyTorch integrator (:func:`~diffode.jax.program.record`);
    the compiled loop is a ``lax.scan`` over the model evaluations. The state keeps its dtype
    (float32, or float64 with ``jax_enable_x64``), and the call is a pure JAX function of ``x`` and
    ``args``: ``jax.vmap(sampler)`` samples several batches, ``jax.vmap(sampler, (None, 0))`` several
    values of a network argument (a guidance scale, say).

    Args:
        model: The :class:`~diffode.jax.Model` (:func:`~diffode.jax.wrap`).
        integrator: A deterministic fixed-grid integrator or its registered name.
        plan: Its :class:`~diffode.integrators.Plan`, or the NFE for ``integrator.plan(schedule, nfe, **options)``.
        **options: The options of :meth:`~diffode.integrators.Integrator.plan` when ``plan`` is a number.

    Raises:
        NotRepresentableError: For an integrator that is stochastic, adaptive or not linear.
    """

    def __init__(self, model: Model, integrator: Integrator | str, plan: Plan | int, **options: Any):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a diffode.jax.Model (diffode.jax.wrap(network, schedule, ...)), got "
                            f"{type(model).__name__}")
        from diffode.integrators.registry import get_integrator

        self.model = model
        self.integrator = get_integrator(integrator)
        if not isinstance(plan, Plan):
            plan = self.integrator.plan(model.schedule, plan, **options)
        elif options:
            raise ValueError(f"options {sorted(options)} are for building a plan; a Plan was given")
        self.plan = plan
        self._load(record(self.integrator, model.schedule, plan))

    @classmethod
    def from_program(cls, model: Model, program: Program) -> Sampler:
        """A sampler that runs a recorded :class:`~diffode.jax.program.Program` (:mod:`diffode.jax.dpm_solver`
        records the compatibility solver's runs this way)."""
        sampler = cls.__new__(cls)
        sampler.model, sampler.integrator, sampler.plan = model, None, program.plan
        sampler._load(program)
        return sampler

    def _load(self, program: Program) -> None:
        self.program = program
        rows = [tuple(float(v) for v in self.model.coefficients(p, k)) for p, k in zip(program.points, program.kinds)]
        columns = np.array(rows, dtype=np.float64).T
        self._tables = (*columns, program.a_in, program.b_in, program.a_out, program.b_out)
        self._run = _compiled(self.model)

    def __repr__(self) -> str:
        return f"diffode.jax.Sampler({self.integrator!r}, nfe={self.nfe})"

    @property
    def nfe(self) -> int:
        """The model evaluations of one call."""
        return self.program.nfe

    def __call__(self, x, *args):
        """The state at the end of the plan from ``x`` at its start (``args`` go to the network)."""
        tables = tuple(jnp.asarray(t, dtype=x.dtype) for t in self._tables)
        return self._run(x, tables, args)
