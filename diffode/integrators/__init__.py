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
from diffode.integrators.deis import DEIS
from diffode.integrators.euler_maruyama import EulerMaruyama
from diffode.integrators.grids import GivenTimes, Karras, TimeGrid, TimeQuadratic, UniformLambda, UniformTime, get_grid
from diffode.integrators.heun import Heun
from diffode.integrators.ipndm import IPNDM
from diffode.integrators.langevin import PredictorCorrector
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.integrators.reference import ReferenceSolution, solve_reference
from diffode.integrators.registry import INTEGRATORS, get_integrator, register
from diffode.integrators.sde_dpm import SDEDPMSolverMultistep
from diffode.integrators.singlestep import DPMSolverSinglestep, Stage, singlestep_orders
from diffode.integrators.torchdiffeq_bridge import Torchdiffeq
from diffode.integrators.unipc import UniPC

__all__ = [
    "DDPM", "DEIS", "DPMSolverAdaptive", "DPMSolverMultistep", "DPMSolverSinglestep", "EulerMaruyama",
    "ExponentialIntegrator", "GivenTimes", "Heun", "History", "INTEGRATORS", "IPNDM", "Integrator", "Karras", "Plan",
    "PredictorCorrector", "ReferenceSolution", "SDEDPMSolverMultistep", "Stage", "State", "StepResult", "TimeGrid",
    "TimeQuadratic", "Torchdiffeq", "UniPC", "UniformLambda", "UniformTime", "Update", "apply_lower_order_final",
    "exponential_update", "get_grid", "get_integrator", "linear_combination", "register", "singlestep_orders",
    "solve_reference",
]
