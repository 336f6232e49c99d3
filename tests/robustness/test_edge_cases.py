"""Numerical edge cases, the adaptive solver's guards, determinism and batch independence."""

import math

import pytest
import torch

import diffode as dd
from diffode.integrators import singlestep_orders
from tests.helpers import mixture2, reference, rmse
from tests.robustness.common import ALGORITHMS, FIXED_METHODS, SKIP_TYPES, Counting, cosine_betas, schedule


def counted(schedule_name="linear"):
    return Counting(mixture2().predictor(schedule(schedule_name)))


def expected_nfe(method, steps, order, denoise_to_zero):
    nfe = steps if method != "singlestep_fixed" else max(steps // order, 1) * min(order, steps)
    return nfe + int(denoise_to_zero)


# -- every step count ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("method", FIXED_METHODS)
def test_every_steps_1_to_30_is_finite_with_exact_nfe(method, order, algorithm):
    model = counted("discrete")
    solver = dd.DPMSolver(model, algorithm=algorithm)
    x = torch.randn(2, 4, dtype=torch.float64)
    for steps in range(1, 31):
        for lower_order_final in (True, False):
            for denoise_to_zero in (False, True):
                model.calls = 0
                out = solver.sample(x, steps=steps, order=order, method=method, lower_order_final=lower_order_final,
                                    denoise_to_zero=denoise_to_zero)
                assert out.shape == x.shape and out.dtype == x.dtype
                assert torch.isfinite(out).all(), (steps, lower_order_final, denoise_to_zero)
                assert model.calls == solver.last_solution.nfe == expected_nfe(method, steps, order, denoise_to_zero)
                times = solver.last_solution.times
                assert times[0] == pytest.approx(1.0, abs=1e-12) and times[-1] == pytest.approx(1e-3, abs=1e-12)


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_one_step_is_one_ddim_step_for_every_order(method):
    """A single evaluation can only take a first-order step, whatever order was asked for."""
    model = mixture2().predictor(schedule("linear"))
    x = torch.randn(3, 4, dtype=torch.float64)
    solver = dd.DPMSolver(model)
    ddim = solver.sample(x, steps=1, order=1, method=method)
    for order in (2, 3):
        assert torch.allclose(solver.sample(x, steps=1, order=order, method=method), ddim, rtol=1e-13, atol=1e-13)
        assert solver.last_solution.nfe == 1


@pytest.mark.parametrize("order", [2, 3])
def test_steps_below_the_order(order):
    model = counted()
    solver = dd.DPMSolver(model)
    x = torch.randn(2, 4, dtype=torch.float64)
    for steps in range(1, order):
        for method in FIXED_METHODS:
            model.calls = 0
            out = solver.sample(x, steps=steps, order=order, method=method)
            assert torch.isfinite(out).all() and model.calls == steps
    # singlestep_fixed with fewer steps than the order: one step of order `steps`.
    dd.DPMSolver(model).sample(x, steps=2, order=3, method="singlestep_fixed")


@pytest.mark.parametrize("skip_type", SKIP_TYPES)
def test_singlestep_order3_at_3n_minus_1_and_3n_plus_1(skip_type):
    """Step counts 3n-1 and 3n+1 end the singlestep split with an order-2 or order-1 step; the grid
    must still end exactly at t_end, spend exactly `steps` evaluations and converge."""
    model, x, exact = reference("linear", "mixture2")
    net = Counting(model)
    solver = dd.DPMSolver(net)
    errors = {}
    for n in (1, 2, 3, 5, 10, 20):
        for steps in (3 * n - 1, 3 * n + 1):
            orders = singlestep_orders(steps, 3)
            assert sum(orders) == steps and all(o in (1, 2, 3) for o in orders)
            net.calls = 0
            out = solver.sample(x, steps=steps, order=3, method="singlestep", skip_type=skip_type)
            times = solver.last_solution.times
            assert net.calls == steps and len(times) == len(orders) + 1
            assert times[0] == 1.0 and abs(times[-1] - 1e-3) < 1e-15
            assert all(a > b for a, b in zip(times, times[1:]))
            assert torch.isfinite(out).all()
            errors[steps] = rmse(out, exact)
    # Third order: four times the steps cut the error by far more than 6 (measured: 10 to 50).
    assert errors[59] < 1e-2 and errors[61] < 1e-2, errors
    assert errors[59] < errors[14] / 6 and errors[61] < errors[16] / 6, errors


# -- schedules at their extremes ----------------------------------------------------------------


@pytest.mark.parametrize("T", [0.9946, 0.999, 0.9999])
def test_cosine_schedule_near_its_singular_end(T):
    """lambda -> -inf as t -> 1 on the cosine schedule: starting closer to it stays finite."""
    s = dd.CosineVP(T=T)
    model = mixture2().predictor(s)
    x = torch.randn(4, 4, dtype=torch.float64)
    assert s.lambda_(T).item() < -4.7
    for algorithm in ALGORITHMS:
        solver = dd.DPMSolver(model, algorithm=algorithm)
        for method in FIXED_METHODS:
            for skip_type in SKIP_TYPES:
                out = solver.sample(x, steps=12, order=3, method=method, skip_type=skip_type)
                assert torch.isfinite(out).all(), (algorithm, method, skip_type)
        assert torch.isfinite(solver.sample(x, method="adaptive", order=2)).all()
    exact = dd.solve_reference(model, x, T, 1e-3).x
    coarse, fine = (rmse(dd.DPMSolver(model).sample(x, steps=n, order=3, skip_type="logSNR"), exact) for n in (30, 60))
    assert fine < 1e-3 and coarse / fine > 6, (coarse, fine)


@pytest.mark.parametrize("clip_lambda", [-5.1, None])
def test_discrete_cosine_betas_with_and_without_lambda_clipping(clip_lambda):
    s = dd.DiscreteVP(betas=cosine_betas(), clip_lambda=clip_lambda)
    lam_T = s.lambda_(1.0).item()
    assert (lam_T >= -5.1) if clip_lambda is not None else (lam_T < -8)
    model = mixture2().predictor(s)
    x = torch.randn(4, 4, dtype=torch.float64)
    for algorithm in ALGORITHMS:
        solver = dd.DPMSolver(model, algorithm=algorithm)
        for method in FIXED_METHODS:
            for skip_type in SKIP_TYPES:
                for order in (2, 3):
                    out = solver.sample(x, steps=10, order=order, method=method, skip_type=skip_type)
                    assert torch.isfinite(out).all(), (algorithm, method, skip_type, order)
    for dtype in (torch.float32, torch.float16):
        assert torch.isfinite(dd.DPMSolver(model).sample(x.to(dtype), steps=10, order=3)).all()


@pytest.mark.parametrize("schedule_name,t_end", [("linear", 1e-6), ("linear", 1e-10), ("cosine", 1e-9)])
def test_schedules_ending_at_very_small_t(schedule_name, t_end):
    """A tiny t_end makes lambda large (the last step's h and e^h are large): still finite and accurate."""
    s = schedule(schedule_name)
    assert s.lambda_(t_end).item() > 6
    model = mixture2().predictor(s)
    x = torch.randn(4, 4, dtype=torch.float64)
    exact = dd.solve_reference(model, x, s.T, t_end).x
    for algorithm in ALGORITHMS:
        solver = dd.DPMSolver(model, algorithm=algorithm)
        for method in FIXED_METHODS:
            for skip_type in SKIP_TYPES:
                out = solver.sample(x, steps=15, order=3, method=method, skip_type=skip_type, t_end=t_end)
                assert torch.isfinite(out).all(), (algorithm, method, skip_type)
        # A longer range of lambda, so more steps for the same accuracy, at the same order (measured
        # ratio ~10 per doubling; 2e-4 at 100 steps for t_end = 1e-10).
        coarse, fine = (rmse(solver.sample(x, steps=n, order=3, skip_type="logSNR", t_end=t_end), exact) for n in (50, 100))
        assert fine < 5e-4 and coarse / fine > 6, (algorithm, coarse, fine)
        out = solver.sample(x, method="adaptive", order=3, t_end=t_end, atol=1e-4, rtol=1e-4)
        assert rmse(out, exact) < 1e-4, algorithm


def test_inverse_for_every_method_and_small_step_counts():
    model = counted()
    x0 = mixture2().sample(3, generator=torch.Generator().manual_seed(0))
    for method in (*FIXED_METHODS, "adaptive"):
        for steps in (1, 2, 3, 4, 7):
            out = dd.DPMSolver(model).inverse(x0, steps=steps, order=3, method=method)
            assert torch.isfinite(out).all()


# -- the adaptive solver's guards -----------------------------------------------------------------


def test_adaptive_max_nfe_guard_is_a_clear_error():
    model = counted()
    ctrl = dd.AdaptiveController(atol=1e-9, rtol=1e-9, max_nfe=40)
    with pytest.raises(RuntimeError, match=r"max_nfe=40 at t=.*loosen the tolerances or raise max_nfe"):
        dd.solve_adaptive(model, torch.randn(2, 4, dtype=torch.float64), "dpmpp_adaptive_23", 1.0, 1e-3, ctrl)
    assert model.calls <= 40


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_impossible_tolerance_ends_with_an_error_not_a_loop(order):
    """A tolerance below round-off cannot be met: the step size collapses, and the solver stops long
    before the default max_nfe (10 000) with an error that says why."""
    model = counted()
    ctrl = dd.AdaptiveController(atol=1e-300, rtol=1e-300)
    with pytest.raises(RuntimeError, match="cannot be met|max_nfe"):
        dd.solve_adaptive(model, torch.randn(2, 4, dtype=torch.float64), dd.integrators.DPMSolverAdaptive(order),
                          1.0, 1e-3, ctrl)
    assert model.calls < 200


def test_adaptive_tiny_interval_and_either_direction():
    model = counted()
    x = torch.randn(2, 4, dtype=torch.float64)
    sol = dd.solve_adaptive(model, x, "dpmpp_adaptive_12", 0.5, 0.5 - 1e-4)
    assert torch.isfinite(sol.x).all() and sol.n_accepted >= 1
    sol = dd.solve_adaptive(model, x, "dpmpp_adaptive_12", 0.2, 0.6)
    assert torch.isfinite(sol.x).all() and sol.times[-1] == pytest.approx(0.6, abs=1e-5)


# -- determinism and batch independence -------------------------------------------------------------


def all_fixed_configs():
    for method in FIXED_METHODS:
        for order in (1, 2, 3):
            for algorithm in ALGORITHMS:
                yield method, order, algorithm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_bit_identical_on_repeat(dtype):
    s = schedule("discrete")
    model = dd.wrap(mixture2().network(s, "v"), s, parameterization="v", time_input="continuous")
    x = torch.randn(5, 4).to(dtype)
    for method, order, algorithm in all_fixed_configs():
        solver = dd.DPMSolver(model, algorithm=algorithm)
        first = solver.sample(x, steps=9, order=order, method=method)
        second = dd.DPMSolver(model, algorithm=algorithm).sample(x.clone(), steps=9, order=order, method=method)
        assert torch.equal(first, second), (method, order, algorithm)
    first = dd.DPMSolver(model).sample(x, method="adaptive", order=3)
    assert torch.equal(first, dd.DPMSolver(model).sample(x, method="adaptive", order=3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_results_do_not_depend_on_batch_size_or_other_samples(dtype):
    """Every fixed-grid method treats each sample alone: the same sample gives the same result
    alone, in a batch, and in a batch whose other samples are different (even NaN)."""
    s = schedule("linear")
    model = dd.wrap(mixture2().network(s, "noise"), s, time_input="continuous")
    x = torch.randn(6, 4).to(dtype)
    tol = {torch.float64: 1e-13, torch.float32: 1e-5, torch.float16: 0.0}[dtype]
    for method, order, algorithm in all_fixed_configs():
        solver = dd.DPMSolver(model, algorithm=algorithm, correcting_x0_fn="dynamic_thresholding"
                              if algorithm == "dpmsolver++" else None)
        full = solver.sample(x, steps=9, order=order, method=method)
        for i in (0, 5):
            alone = solver.sample(x[i:i + 1], steps=9, order=order, method=method)
            torch.testing.assert_close(alone, full[i:i + 1], rtol=tol, atol=tol)
        others = torch.randn(4, 4).to(dtype)
        others[1] = math.nan
        mixed = solver.sample(torch.cat([x[:3], others]), steps=9, order=order, method=method)
        torch.testing.assert_close(mixed[:3], full[:3], rtol=tol, atol=tol)
        assert torch.isnan(mixed[4]).all()


def test_adaptive_step_sizes_are_shared_by_the_batch():
    """The adaptive solver (as DPM-Solver's) takes one step size for the whole batch, so its result
    depends on the other samples through the steps taken, but stays within its tolerance."""
    model, x, exact = reference("linear", "mixture2")
    solver = dd.DPMSolver(model)
    full = solver.sample(x, method="adaptive", order=3, atol=1e-5, rtol=1e-5)
    alone = solver.sample(x[:1], method="adaptive", order=3, atol=1e-5, rtol=1e-5)
    assert rmse(full, exact) < 1e-3 and rmse(alone, exact[:1]) < 1e-3
