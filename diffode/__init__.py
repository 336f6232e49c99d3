"""diffode: verified DPM-Solver integrators for the ODEs of diffusion models."""

from diffode import integrators, models, schedules
from diffode.controllers import AdaptiveController
from diffode.integrators import Plan, get_integrator, solve_reference
from diffode.models import GaussianMixture, Predictor, wrap
from diffode.sampler import DPMSolver
from diffode.schedules import CosineVP, DiscreteVP, LinearVP, NoiseSchedule
from diffode.solve import NonFiniteError, Solution, solve, solve_adaptive

__version__ = "0.1.0"

__all__ = [
    "AdaptiveController", "CosineVP", "DPMSolver", "DiscreteVP", "GaussianMixture", "LinearVP", "NoiseSchedule", "NonFiniteError",
    "Plan", "Predictor", "Solution", "__version__", "get_integrator", "integrators", "models", "schedules", "solve",
    "solve_adaptive", "solve_reference", "wrap",
]
