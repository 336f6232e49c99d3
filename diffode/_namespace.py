"""The array namespace of a value: torch, or JAX under torch's function names.

The schedule formulas, the phi-functions of the update weights and the step-size rule are each
written once, in torch's spelling (``torch.exp``, ``torch.atan``, ``torch.clamp``...). Written as
``xp.exp(...)`` with ``xp = namespace(t)``, the same line runs on torch tensors (the PyTorch
solvers) and on JAX arrays inside a jit-compiled loop (:mod:`diffode.jax`), so the JAX backend
evaluates the very formulas of the PyTorch path instead of copies of them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["is_jax_array", "namespace"]


def is_jax_array(value: Any) -> bool:
    """Whether ``value`` is a JAX array or tracer (checked without importing JAX).

    Tensors and Python numbers are answered by ``isinstance`` first: that is all a PyTorch solve
    meets, and ``torch.compile`` traces it without a graph break (it cannot trace the module name's
    string test).
    """
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, complex)):
        return False
    return type(value).__module__.startswith(("jax", "jaxlib"))


class _JaxNamespace:
    """``jax.numpy`` under the torch names the shared formulas use (the others are jax.numpy's own)."""

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self._jnp = jnp
        self.atan = jnp.arctan
        self.asinh = jnp.arcsinh
        self.sigmoid = jax.nn.sigmoid

    def clamp(self, x, min=None, max=None):  # noqa: A002 - torch's argument names
        return self._jnp.clip(x, min, max)

    def cat(self, arrays):
        return self._jnp.concatenate(arrays)

    def lerp(self, start, end, weight):
        # torch.lerp's rule, so that both backends round alike.
        jnp = self._jnp
        return jnp.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight))

    def logsumexp(self, x, dim, keepdim=False):
        from jax.scipy.special import logsumexp

        return logsumexp(x, axis=dim, keepdims=keepdim)

    def __getattr__(self, name: str):
        return getattr(self._jnp, name)


@functools.lru_cache(maxsize=1)
def _jax_namespace() -> _JaxNamespace:
    return _JaxNamespace()


def namespace(*values: Any):
    """``torch`` for tensors and numbers, the JAX namespace if any of ``values`` is a JAX array."""
    return _jax_namespace() if any(is_jax_array(v) for v in values) else torch
