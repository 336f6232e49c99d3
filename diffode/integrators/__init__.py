"""Integrators of the probability-flow ODE and the high-accuracy reference solver."""

from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import ExponentialIntegrator, History, Integrator, State, StepResult, exponential_update
from diffode.integrators.dpm_solver import DPMSolver, dynamic_thresholding, singlestep_orders, singlestep_times
from diffode.integrators.grids import GivenTimes, Karras, TimeGrid, TimeQuadratic, UniformLambda, UniformTime, get_grid
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.integrators.reference import ReferenceSolution, solve_reference
from diffode.integrators.registry import INTEGRATORS, get_integrator, register
from diffode.integrators.singlestep import DPMSolverSinglestep, Stage

__all__ = [
    "DPMSolver", "DPMSolverAdaptive", "DPMSolverMultistep", "DPMSolverSinglestep", "ExponentialIntegrator",
    "GivenTimes", "History", "INTEGRATORS", "Integrator", "Karras", "ReferenceSolution", "Stage", "State",
    "StepResult", "TimeGrid", "TimeQuadratic", "UniformLambda", "UniformTime", "dynamic_thresholding",
    "exponential_update", "get_grid", "get_integrator", "register", "singlestep_orders", "singlestep_times",
    "solve_reference",
]
