"""Compatibility layers: drop-in modules with the interfaces of other DPM-Solver code.

* :mod:`diffode.compat.dpm_solver`: the reference ``dpm_solver_pytorch.py`` (``NoiseScheduleVP``,
  ``model_wrapper``, ``DPM_Solver``), both its current and its v2 (latent-diffusion) generation.
"""

from diffode.compat import dpm_solver
from diffode.compat.dpm_solver import DPM_Solver, DPM_SolverV2, NoiseScheduleVP, model_wrapper

__all__ = ["DPM_Solver", "DPM_SolverV2", "NoiseScheduleVP", "dpm_solver", "model_wrapper"]
