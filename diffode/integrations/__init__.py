"""diffode inside other code bases: latent-diffusion samplers and diffusers pipelines.

* :mod:`diffode.integrations.ldm`: :class:`~diffode.integrations.ldm.DPMSolverSampler`, the
  ``DPMSolverSampler`` plugin of the latent-diffusion code bases (CompVis and Stability-AI Stable
  Diffusion, ControlNet and their forks), built on diffode's integrators.
* :mod:`diffode.integrations.diffusers`: :class:`~diffode.integrations.diffusers.DiffodeScheduler`,
  a diffusers scheduler that runs diffode's multistep integrators inside any pipeline (needs the
  ``diffusers`` extra: ``pip install "diffode[diffusers]"``).

Neither submodule is imported here, so ``import diffode`` never needs diffusers.
"""

from __future__ import annotations

from diffode.integrators.base import Integrator

__all__ = ["LOWER_ORDER_FINAL_BELOW", "multistep_orders"]

LOWER_ORDER_FINAL_BELOW = 15
"""The step count below which the LDM plugin's bundled solver and diffusers'
``DPMSolverMultistepScheduler`` lower the orders of the last steps (``lower_order_final``); the
rule itself is :func:`diffode.integrators.apply_lower_order_final`."""


def multistep_orders(integrator: Integrator, n_steps: int, lower_order_final: bool) -> list[int]:
    """The integrator's own orders for ``n_steps`` steps, with the peers' lower-order-final threshold."""
    return integrator.step_orders(n_steps, LOWER_ORDER_FINAL_BELOW if lower_order_final else False)
