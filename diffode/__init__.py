"""diffode: verified DPM-Solver integrators for the ODEs of diffusion models."""

from diffode import integrators, models, schedules
from diffode import likelihood, noise, sde  # after models and schedules, which they use
from diffode.controllers import AdaptiveController
from diffode.integrators import Plan, get_integrator, solve_reference
from diffode.models import GaussianMixture, Predictor, wrap
from diffode.sampler import DPMSolver
from diffode.schedules import EDM, VE, CosineVP, DiscreteVP, FlowMatching, LinearVP, NoiseSchedule, SubVP
from diffode.solve import NonFiniteError, Solution, solve, solve_adaptive
from diffode.fast import PlanSampler

__version__ = "0.1.0"

__all__ = [
    "EDM", "VE", "AdaptiveController", "CosineVP", "DPMSolver", "DiscreteVP", "FlowMatching", "GaussianMixture",
    "LinearVP", "NoiseSchedule", "NonFiniteError", "Plan", "PlanSampler", "Predictor", "Solution", "SubVP", "__version__",
    "get_integrator", "integrators", "likelihood", "models", "noise", "schedules", "sde", "solve", "solve_adaptive",
    "solve_reference", "wrap",
]
