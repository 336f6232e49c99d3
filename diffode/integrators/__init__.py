"""Integrators of the probability-flow ODE, stochastic samplers of the reverse SDE, and the reference solver."""

from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import (
    ExponentialIntegrator,
    History,
    Integrator,
    Plan,
    State,
    StepResult,
    Update,
    exponential_update,
    apply_lower_order_final,
    linear_combination,
)
from diffode.integrators.ddpm import DDPM
from diffode.integrators.euler_maruyama import EulerMaruyama
from diffode.integrators.grids import GivenTimes, Karras, TimeGrid, TimeQuadratic, UniformLambda, UniformTime, get_grid
from diffode.integrators.langevin import PredictorCorrector
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.integrators.reference import ReferenceSolution, solve_reference
from diffode.integrators.registry import INTEGRATORS, get_integrator, register
from diffode.integrators.sde_dpm import SDEDPMSolverMultistep
from diffode.integrators.singlestep import DPMSolverSinglestep, Stage, singlestep_orders

__all__ = [
    "DDPM", "DPMSolverAdaptive", "DPMSolverMultistep", "DPMSolverSinglestep", "EulerMaruyama",
    "ExponentialIntegrator", "GivenTimes", "History", "INTEGRATORS", "Integrator", "Karras", "Plan",
    "PredictorCorrector", "ReferenceSolution", "SDEDPMSolverMultistep", "Stage", "State", "StepResult", "TimeGrid",
    "TimeQuadratic", "UniformLambda", "UniformTime", "Update", "exponential_update", "get_grid", "get_integrator",
    "linear_combination", "apply_lower_order_final", "register", "singlestep_orders", "solve_reference",
]
