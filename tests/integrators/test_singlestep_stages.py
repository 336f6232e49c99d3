"""Grid-placed singlestep stages (``DPMSolverSinglestep(stages=grid)``): the reference DPM-Solver's rule."""

import numpy as np
import pytest
import torch

import diffode as dd
from diffode.integrators import DPMSolverSinglestep, GivenTimes, TimeQuadratic, UniformTime
from diffode.integrators.singlestep import grid_stage_fractions
from diffode.study import configure_integrator
from tests.helpers import DDPM_BETAS, mixture4, reference, rmse


def test_fractions_follow_the_grid():
    schedule = dd.LinearVP()
    s, t = schedule.point(0.5), schedule.point(0.2)
    # Equal in lambda: 1/2 and 1/3, 2/3 whatever the interval.
    assert grid_stage_fractions(schedule, dd.integrators.UniformLambda(), s.t, t.t, 2) == pytest.approx([0.5], abs=1e-12)
    assert grid_stage_fractions(schedule, dd.integrators.UniformLambda(), s.t, t.t, 3) == pytest.approx([1 / 3, 2 / 3],
                                                                                                        abs=1e-12)
    # Equal in t: the stages sit at the lambda of t = 0.4 and 0.3.
    lam = [schedule.point(v).lam for v in (0.5, 0.4, 0.3, 0.2)]
    expected = [(lam[1] - lam[0]) / (lam[3] - lam[0]), (lam[2] - lam[0]) / (lam[3] - lam[0])]
    assert grid_stage_fractions(schedule, UniformTime(), 0.5, 0.2, 3) == pytest.approx(expected, rel=1e-12)
    assert grid_stage_fractions(schedule, UniformTime(), 0.5, 0.2, 1) == ()


def _reference_and_native(skip_type: str, algorithm: str, solver_type: str, steps: int):
    from diffode.compat.dpm_solver import DPM_Solver, NoiseScheduleVP, model_wrapper

    mixture = mixture4()
    schedule = dd.DiscreteVP(betas=DDPM_BETAS)
    model = mixture.predictor(schedule)
    ns = NoiseScheduleVP("discrete", betas=DDPM_BETAS, dtype=torch.float64)

    def net(x, t_input):  # the reference feeds 1000 (t - 1/N)
        return model.noise(x, t_input / 1000.0 + 1.0 / 1000)

    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t_end = 1e-3
    ref = DPM_Solver(model_wrapper(net, ns), ns, algorithm_type=algorithm).sample(
        x, steps=steps, order=3, skip_type=skip_type, method="singlestep", solver_type=solver_type, t_end=t_end)
    solver = dd.DPMSolver(model, algorithm=algorithm)
    kwargs = dict(steps=steps, order=3, skip_type=skip_type, method="singlestep", solver_type=solver_type, t_end=t_end)
    grid_placed = solver.sample(x, stages="grid", **kwargs)
    fixed = solver.sample(x, **kwargs)
    return ref, grid_placed, fixed


@pytest.mark.parametrize("skip_type", ["time_quadratic", "time_uniform"])
@pytest.mark.parametrize("algorithm,solver_type", [("dpmsolver++", "dpmsolver"), ("dpmsolver", "taylor")])
@pytest.mark.parametrize("steps", [10, 11])
def test_grid_placed_stages_equal_the_reference(skip_type, algorithm, solver_type, steps, float64_default):
    ref, grid_placed, fixed = _reference_and_native(skip_type, algorithm, solver_type, steps)
    # The reference's schedule formulas differ from DiscreteVP's in the last bits only.
    torch.testing.assert_close(grid_placed, ref, rtol=1e-12, atol=1e-12)
    # Fixed lambda fractions are another method on these grids (a test that could fail).
    assert (fixed - ref).abs().max() > 1e-4


def test_grid_placed_stages_through_every_front():
    model, x, _ = reference("linear", "mixture2")
    integrator = DPMSolverSinglestep(3, stages="time_quadratic")
    plan = integrator.plan(model.schedule, 10, grid="time_quadratic")
    by_solve = dd.solve(model, x, integrator, plan).x
    by_sampler = dd.DPMSolver(model).sample(x, steps=10, order=3, method="singlestep", skip_type="time_quadratic",
                                            stages="grid")
    by_integrator = dd.DPMSolver(model).sample(x, steps=10, skip_type="time_quadratic", integrator=integrator)
    configured = configure_integrator("dpmpp_3s", stages="time_quadratic")  # the CLI's --option stages=...
    by_study = dd.study.sample_nfe(model, x, configured, 10, grid="time_quadratic").x
    for other in (by_sampler, by_integrator, by_study):
        torch.testing.assert_close(other, by_solve, rtol=0, atol=0)
    lam_fixed = dd.solve(model, x, DPMSolverSinglestep(3), plan).x
    assert (lam_fixed - by_solve).abs().max() > 1e-6
    assert "stages=TimeQuadratic()" in repr(configured)
    # On logSNR, grid-placed stages are the fixed fractions 1/3, 2/3.
    on_lambda = dd.DPMSolver(model).sample(x, steps=10, order=3, method="singlestep", skip_type="logSNR", stages="grid")
    fixed = dd.DPMSolver(model).sample(x, steps=10, order=3, method="singlestep", skip_type="logSNR")
    torch.testing.assert_close(on_lambda, fixed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order,solver_type", [(2, "dpmsolver"), (3, "dpmsolver"), (3, "taylor")])
def test_grid_placed_stages_keep_the_order(order, solver_type):
    # Steps equal in lambda (the asymptotic regime), stages placed by a grid equal in t: r1, r2 then
    # differ from 1/2 or 1/3, 2/3 by O(h), and the order stays.
    model, x, exact = reference("linear", "mixture2")
    outer = [24, 48, 96, 192]
    integrator = DPMSolverSinglestep(order, "data", solver_type, split="fixed", stages=TimeQuadratic())
    errors = []
    for n in outer:
        plan = integrator.plan(model.schedule, n * order, grid="logSNR")
        assert plan.steps == n
        errors.append(rmse(dd.solve(model, x, integrator, plan).x, exact))
    slope = -np.polyfit(np.log(outer), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.25, (slope, errors)


def test_bad_stages():
    with pytest.raises(ValueError, match="stages='grid' needs the grid itself"):
        DPMSolverSinglestep(3, stages="grid")
    with pytest.raises(ValueError, match="same times whatever the interval"):
        DPMSolverSinglestep(3, stages=GivenTimes([1.0, 0.5, 0.1]))
    with pytest.raises(ValueError, match="skip_type"):
        DPMSolverSinglestep(3, stages="time_cubic")
    with pytest.raises(TypeError, match="stages must be"):
        DPMSolverSinglestep(3, stages=3)
    with pytest.raises(TypeError, match="stages must be"):
        DPMSolverSinglestep(3, stages=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="pass one or the other"):
        DPMSolverSinglestep(3, r1=0.4, stages="time_uniform")
    model, x, _ = reference("linear", "mixture2")
    with pytest.raises(ValueError, match="method='multistep' has none"):
        dd.DPMSolver(model).sample(x, steps=10, method="multistep", stages="grid")
    with pytest.raises(ValueError, match="integrator= replaces stages"):
        dd.DPMSolver(model).sample(x, steps=10, integrator="dpmpp_3s", stages="grid")
