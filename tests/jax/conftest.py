"""Shared pieces of the JAX backend's tests: float64 on, the analytic mixture as a JAX network.

Every test here skips cleanly where JAX is not installed (``pytest.importorskip`` in each module).
float64 is switched on for each test and restored after it; float32 tests pass float32 arrays,
which the samplers keep in float32 (their coefficient tables are cast to the state's dtype).
"""

import importlib.util

import pytest
import torch

from diffode.models.analytic import GaussianMixture
from diffode.models.parameterizations import get_parameterization

# No JAX: each test module skips itself (pytest.importorskip); this file must still import.
HAS_JAX = importlib.util.find_spec("jax") is not None

MIXTURE = GaussianMixture([0.3, 0.7], [[1.0, -0.5], [-1.0, 0.5]], [0.4, 0.6])


@pytest.fixture(autouse=True)
def x64():
    if not HAS_JAX:
        yield
        return
    import jax

    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def mixture_network(schedule, parameterization="noise"):
    """The mixture's exact output as a JAX network of continuous time: the same
    :meth:`GaussianMixture.eps` and schedule formulas as the PyTorch path, evaluated on JAX arrays."""
    import jax.numpy as jnp

    param = get_parameterization(parameterization)

    def network(x, t, scale=1.0):
        # exp(log alpha), exp(log sigma) as diffode.models.resolve_point computes them for the
        # PyTorch network (EDM's sigma(t) = t differs from exp(log t) in the last bit).
        alpha, sigma = jnp.exp(schedule.log_alpha(t))[:, None], jnp.exp(schedule.log_sigma(t))[:, None]
        return scale * param.from_noise(MIXTURE.eps(x, alpha, sigma), x, alpha, sigma)

    return network


def torch_mixture_model(schedule, parameterization="noise"):
    """The same network on the PyTorch path (diffode.models.wrap of the mixture's network)."""
    import diffode as dd

    return dd.models.wrap(MIXTURE.network(schedule, parameterization), schedule, parameterization,
                          time_input="continuous")


def noise(schedule, batch=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, generator=g, dtype=torch.float64).mul(schedule.prior_std()).to(dtype)
