"""EDM's Heun and the torchdiffeq bridge: orders fitted against the RK45 ground truth, exact NFE,
every front end by name."""

from __future__ import annotations

import pytest
import torch

import diffode as dd
from diffode import study
from diffode.integrators import Heun, Torchdiffeq, UniformLambda, get_integrator


def mixture_model(schedule=None):
    mixture = dd.GaussianMixture([0.3, 0.7], [[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]], [0.3, 0.6])
    return mixture.predictor(schedule or dd.LinearVP())


@pytest.fixture(scope="module")
def problem():
    model = mixture_model()
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return model, x, study.ground_truth(model, x)


# -- Heun --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [dd.LinearVP(), dd.DiscreteVP(betas=torch.linspace(1e-4, 0.02, 1000))],
                         ids=["linear", "discrete"])
def test_heun_is_second_order(schedule):
    model = mixture_model(schedule)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = study.ground_truth(model, x)
    result = study.convergence_study(model, x, exact, {"heun": "heun"}, steps=[24, 48, 96, 192])[0]
    assert result.nfe == [48, 96, 192, 384]
    assert abs(result.overall_slope - 2) < 0.25, result


def test_heun_step_is_edms_update_in_sigma_over_alpha():
    # One step written in EDM's variables: y = x / alpha, sigma~ = sigma / alpha, slope (y - x0) / sigma~.
    model = mixture_model()
    schedule = model.schedule
    s, t = schedule.point(0.7), schedule.point(0.4)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, ss, st = x / s.alpha, s.sigma / s.alpha, t.sigma / t.alpha
    d_s = (y - model.data(x, s.t)) / ss
    y_euler = y + (st - ss) * d_s
    d_t = (y_euler - model.data(y_euler * t.alpha, t.t)) / st
    expected = (y + (st - ss) * 0.5 * (d_s + d_t)) * t.alpha
    result = Heun().step(model, x, s, t, Heun().init())
    torch.testing.assert_close(result.x, expected, rtol=1e-12, atol=1e-12)
    assert result.nfe == 2
    # The Euler step (order 1) is DDIM exactly.
    euler = Heun().step(model, x, s, t, Heun().init(), order=1)
    ddim = dd.solve(model, x, "ddim", [0.7, 0.4]).x
    torch.testing.assert_close(euler.x, ddim, rtol=1e-12, atol=1e-12)
    assert euler.nfe == 1


@pytest.mark.parametrize("nfe,orders", [(1, (1,)), (4, (2, 2)), (5, (2, 2, 1)), (10, (2,) * 5)])
def test_heun_plan_spends_the_budget(nfe, orders, problem):
    model, x, _ = problem
    plan = Heun().plan(model.schedule, nfe)
    assert plan.orders == orders and plan.nfe == nfe
    assert dd.solve(model, x, "heun", plan).nfe == nfe


def test_heun_with_denoise_to_zero_is_edms_algorithm_1(problem):
    # EDM's N steps end with an Euler step to sigma = 0, which returns the data prediction:
    # a plan of 2N - 2 evaluations with denoise_to_zero.
    model, x, _ = problem
    plan = Heun().plan(model.schedule, 8, grid="karras", denoise_to_zero=True)
    solution = dd.solve(model, x, Heun(), plan)
    assert solution.nfe == 9
    before = dd.solve(model, x, Heun(), plan.times, orders=plan.orders)
    torch.testing.assert_close(solution.x, model.data(before.x, plan.times[-1]))


# -- torchdiffeq --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,order,cost", [("euler", 1, 1), ("midpoint", 2, 2), ("heun3", 3, 3), ("rk4", 4, 4)])
def test_one_step_methods_converge_at_their_order_with_exact_nfe(method, order, cost):
    # One Gaussian: the mixture's samples that change component at coarse steps keep a low-order
    # method out of its asymptotic regime until thousands of steps.
    model = dd.GaussianMixture([1.0], [[0.5, -1.0, 0.25, 2.0]], [0.4]).predictor(dd.LinearVP()) if order < 4 \
        else mixture_model()
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = study.ground_truth(model, x)
    name = f"torchdiffeq:{method}"
    steps = {1: [64, 128, 256], 2: [32, 64, 128], 3: [24, 48, 96], 4: [12, 24, 48]}[order]
    result = study.convergence_study(model, x, exact, {name: name}, steps=steps)[0]
    assert result.nfe == [cost * n for n in steps]
    assert abs(result.overall_slope - order) < 0.3, result


def test_explicit_adams_replays_one_torchdiffeq_call(problem):
    # Step by step through diffode equals one torchdiffeq call over the whole grid, at the cost
    # torchdiffeq itself spends: two RK4 warm-up steps, then one evaluation a step.
    from torchdiffeq import odeint

    from diffode.integrators.reference import lambda_rhs

    model, x, exact = problem
    schedule = model.schedule
    times = UniformLambda().times(schedule, 1.0, 1e-3, 16)
    points = schedule.points(times)
    calls = []

    def rhs(lam, y):
        calls.append(1)
        return lambda_rhs(model, schedule.point_at_lambda)(lam, y)

    ys = odeint(rhs, x / points[0].alpha, torch.tensor([p.lam for p in points], dtype=torch.float64),
                method="explicit_adams", options={"max_order": 4})
    solution = dd.solve(model, x, "torchdiffeq:explicit_adams", times)
    torch.testing.assert_close(solution.x, ys[-1] * points[-1].alpha, rtol=0, atol=0)
    assert solution.nfe == len(calls) == 8 + 14
    plan = get_integrator("torchdiffeq:explicit_adams").plan(schedule, 22)
    assert plan.steps == 16 and plan.nfe == 22


def test_explicit_adams_is_third_order(problem):
    model, x, exact = problem
    result = study.convergence_study(model, x, exact, {"ab": "torchdiffeq:explicit_adams"}, steps=[40, 80, 160])[0]
    assert abs(result.overall_slope - 3) < 0.3, result


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_methods_take_one_step_and_meet_their_tolerance(method, problem):
    model, x, exact = problem
    errors = []
    for rtol in (1e-3, 1e-6):
        integrator = study.configure_integrator(f"torchdiffeq:{method}", rtol=rtol, atol=rtol)
        plan = integrator.plan(model.schedule, 20, grid="karras")
        assert plan.steps == 1 and plan.times == (1.0, model.schedule.default_t_end) and plan.nfe == 0
        calls = []

        class Counted(dd.Predictor):
            schedule = model.schedule

            def predict(self, x, point, kind):
                calls.append(1)
                return model.predict(x, point, kind)

        solution = dd.solve(Counted(), x, integrator, plan)
        assert solution.nfe == len(calls) > 0
        errors.append(study.rmse(solution.x, exact))
    assert errors[1] < errors[0] / 100 and errors[1] < 1e-4


@pytest.mark.parametrize("name", ["torchdiffeq:rk4", "torchdiffeq:explicit_adams", "torchdiffeq:dopri5", "heun"])
def test_every_front_end_runs_them_by_name(name, problem, tmp_path):
    from diffode.cli import main

    model, x, _ = problem
    by_study = study.sample_nfe(model, x, name, 12, grid="logSNR")
    solver = dd.DPMSolver(model)
    by_front = solver.sample(x, steps=12, skip_type="logSNR", integrator=name)
    torch.testing.assert_close(by_front, by_study.x, rtol=0, atol=0)
    assert solver.last_solution.nfe == by_study.nfe
    assert main(["sample", "-o", str(tmp_path / "x.pt"), "--integrator", name, "--nfe", "12", "--batch", "2",
                 "--quiet"]) == 0
    assert torch.load(tmp_path / "x.pt")["nfe"] == torch.load(tmp_path / "x.pt")["nfe"] > 0


def test_converge_command_fits_torchdiffeq_rk4(capsys):
    from diffode.cli import main

    code = main(["converge", "--integrators", "torchdiffeq:rk4", "heun", "--steps", "24", "48", "96",
                 "--schedule", "linear", "--no-plot", "--quiet"])
    assert code == 0, capsys.readouterr().out


def test_bridge_keeps_float32(problem):
    model, x, _ = problem
    out = dd.solve(model, x.float(), "torchdiffeq:rk4", [1.0, 0.5, 1e-3]).x
    assert out.dtype == torch.float32


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="unknown torchdiffeq method 'rk5'; expected one of euler"):
        get_integrator("torchdiffeq:rk5")
    with pytest.raises(ValueError, match="families: torchdiffeq:METHOD"):
        get_integrator("no_such_integrator")
    with pytest.raises(ValueError, match="max_order must be an integer in \\[4, 12\\]"):
        Torchdiffeq("explicit_adams", max_order=13)
    with pytest.raises(ValueError, match="rtol must be > 0"):
        Torchdiffeq("dopri5", rtol=0.0)
