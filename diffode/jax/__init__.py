r"""The JAX backend: diffode's verified integrators as jit-compiled JAX loops (optional: ``pip install "diffode[jax]"``).

The step coefficients come from the PyTorch integrators themselves, so both backends run one method:

* fixed grids (:class:`Sampler`): the integrator's :class:`~diffode.integrators.Plan` and its own
  steps are read off as a table of per-evaluation coefficients (:func:`~diffode.jax.program.record`),
  which a ``lax.scan`` applies;
* adaptive steps (:class:`AdaptiveSampler`): a ``lax.while_loop`` calls the integrator's own step
  and the controller's own rule on JAX arrays, the schedule values and the update weights computed
  in the graph by the same formulas.

A JAX network is wrapped like a PyTorch one (:func:`wrap`). Every sampler is a function of the
initial state (and of any extra arguments of the network), compiled once and ready for
``jax.vmap``; it runs in the dtype of the state (float32, or float64 with ``jax_enable_x64``).
"""

from diffode.jax.adaptive import AdaptiveSampler
from diffode.jax.model import Model, wrap
from diffode.jax.program import NotRepresentableError, Program, record
from diffode.jax.sampler import Sampler

__all__ = ["AdaptiveSampler", "Model", "NotRepresentableError", "Program", "Sampler", "record", "wrap"]
