"""diffode inside other code bases: latent-diffusion samplers and diffusers pipelines.

* :mod:`diffode.integrations.ldm`: :class:`~diffode.integrations.ldm.DPMSolverSampler`, the
  ``DPMSolverSampler`` plugin of the latent-diffusion code bases (CompVis and Stability-AI Stable
  Diffusion, ControlNet and their forks), built on diffode's integrators.
* :mod:`diffode.integrations.diffusers`: :class:`~diffode.integrations.diffusers.DiffodeScheduler`,
  a diffusers scheduler that runs diffode's multistep integrators inside any pipeline (needs the
  ``diffusers`` extra: ``pip install "diffode[diffusers]"``).

Neither submodule is imported here, so ``import diffode`` never needs diffusers.
"""

__all__ = ["LOWER_ORDER_FINAL_BELOW"]

LOWER_ORDER_FINAL_BELOW = 15
"""The step count below which the LDM plugin's bundled solver and diffusers'
``DPMSolverMultistepScheduler`` lower the orders of the last steps (``lower_order_final``); the
rule itself is :func:`diffode.integrators.apply_lower_order_final`."""
