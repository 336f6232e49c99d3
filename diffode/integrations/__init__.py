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
"""Runs with fewer steps than this lower the order of their last steps when asked to
(``lower_order_final``), as the LDM plugin's bundled solver and diffusers'
``DPMSolverMultistepScheduler`` both do."""


def multistep_orders(integrator: Integrator, n_steps: int, lower_order_final: bool) -> list[int]:
    """The order of each of ``n_steps`` multistep steps, chosen as the LDM plugin and diffusers choose them.

    The integrator's own warm-up (orders 1, 2, ... while too few outputs are stored) and, with
    ``lower_order_final`` and fewer than :data:`LOWER_ORDER_FINAL_BELOW` steps, at most
    ``n_steps - i`` at step ``i``: the last step is first order and the one before at most second
    order, which keeps the short final steps of a coarse grid stable.

    Args:
        integrator: The integrator whose warm-up rule to use.
        n_steps: The number of steps.
        lower_order_final: Lower the orders of the last steps of short runs.

    Returns:
        One order per step.
    """
    orders = integrator.step_orders(n_steps)
    if lower_order_final and n_steps < LOWER_ORDER_FINAL_BELOW:
        orders = [min(order, n_steps - i) for i, order in enumerate(orders)]
    return orders
