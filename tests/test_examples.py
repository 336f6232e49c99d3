"""The integrators of examples/ (written outside the package, as a user would): their NFE and
their fitted convergence orders against the RK45 ground truth."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import diffode as dd
from diffode import study
from diffode.integrators import DPMSolverMultistep

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def examples():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield {name: importlib.import_module(name)
               for name in ("exponential_trapezoid", "exponential_ab2", "exponential_pece")}
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def problem():
    schedule = dd.LinearVP()
    mixture = dd.GaussianMixture([0.3, 0.7], [[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]], [0.3, 0.6])
    model = mixture.predictor(schedule)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, x, study.ground_truth(model, x)


@pytest.mark.parametrize("module,cls,nfe_per_step", [("exponential_trapezoid", "ExponentialTrapezoid", 2),
                                                     ("exponential_ab2", "ExponentialAB2", 1),
                                                     ("exponential_pece", "ExponentialPECE", 1)])
def test_example_integrators_converge_at_order_two(examples, problem, module, cls, nfe_per_step):
    model, x, exact = problem
    integrator = getattr(examples[module], cls)()
    steps = [24, 48, 96, 192]
    [result] = study.convergence_study(model, x, exact, {cls: integrator}, steps=steps)
    assert result.nfe == [nfe_per_step * n for n in steps]
    assert abs(result.overall_slope - 2) < 0.25, result
    # The same budget costs the same evaluations through the front.
    solver = dd.DPMSolver(model)
    solver.sample(x, steps=20, skip_type="logSNR", integrator=integrator)
    assert solver.last_solution.nfe == 20


def test_the_multistep_example_is_dpm_solver_pp_2m(examples, problem):
    model, x, _ = problem
    plan = DPMSolverMultistep(2, solver_type="taylor").plan(model.schedule, 15, lower_order_final=False)
    ours = dd.solve(model, x, examples["exponential_ab2"].ExponentialAB2(), plan.times)
    builtin = dd.solve(model, x, DPMSolverMultistep(2, solver_type="taylor"), plan)
    torch.testing.assert_close(ours.x, builtin.x, rtol=1e-13, atol=1e-13)


def test_the_corrector_pays_off(examples, problem):
    # Same NFE, same predictor: correcting each step with the next evaluation lowers the error.
    model, x, exact = problem
    times = dd.integrators.UniformLambda().times(model.schedule, 1.0, 1e-3, 40)
    predicted = dd.solve(model, x, examples["exponential_ab2"].ExponentialAB2(), times)
    corrected = dd.solve(model, x, examples["exponential_pece"].ExponentialPECE(), times)
    assert predicted.nfe == corrected.nfe == 40
    assert study.rmse(corrected.x, exact) < 0.5 * study.rmse(predicted.x, exact)
