import pytest
import torch

import diffode as dd
from diffode.integrators import INTEGRATORS, get_integrator, singlestep_orders
from tests.helpers import mixture2, reference, rmse


class Counted:
    """The analytic mixture as a network, counting its calls."""

    def __init__(self, schedule):
        self.net = mixture2().network(schedule)
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.net(x, t)


def counted_model(schedule=None):
    schedule = schedule or dd.LinearVP()
    net = Counted(schedule)
    return net, dd.wrap(net, schedule, time_input="continuous")


def ddim(model, x, times):
    for s, t in zip(times[:-1], times[1:]):
        ps, pt = model.schedule.point(float(s)), model.schedule.point(float(t))
        eps = model.noise(x, ps.t)
        x0 = (x - ps.sigma * eps) / ps.alpha
        x = pt.alpha * x0 + pt.sigma * eps
    return x


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("method", ["multistep", "singlestep_fixed", "singlestep"])
def test_order_one_is_ddim(algorithm, method):
    _, model = counted_model()
    x = torch.randn(5, 4, dtype=torch.float64)
    solver = dd.DPMSolver(model, algorithm=algorithm)
    out = solver.sample(x, steps=10, order=1, method=method)
    times = torch.linspace(1.0, 1e-3, 11, dtype=torch.float64)
    assert torch.allclose(out, ddim(model, x, times), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(INTEGRATORS))
def test_registry_contracts(name):
    integrator = get_integrator(name)
    net, model = counted_model()
    x = torch.randn(3, 4, dtype=torch.float64)
    times = torch.linspace(1.0, 1e-3, 7, dtype=torch.float64)
    if integrator.error_order is not None:
        sol = dd.solve_adaptive(model, x, integrator, 1.0, 1e-3)
    else:
        sol = dd.solve(model, x, integrator, times)
    assert sol.x.shape == x.shape and sol.x.dtype == x.dtype and torch.isfinite(sol.x).all()
    assert sol.nfe == net.calls
    # A zero-length step is the identity.
    p = model.schedule.point(0.5)
    noise = dd.noise.NoiseSource.from_seeds([0] * 3) if integrator.stochastic else None
    step = integrator.step(model, x, p, p, integrator.init(), integrator.order, noise=noise)
    assert torch.allclose(step.x, x, atol=1e-14)
    assert 1 <= integrator.order <= 4 and integrator.evals_per_step >= 1


def test_unknown_integrator_lists_names():
    with pytest.raises(ValueError, match="registered: .*dpmpp_2m"):
        get_integrator("dpmpp_9m")


@pytest.mark.parametrize("steps,order,expected", [
    (20, 3, [3] * 6 + [2]), (21, 3, [3] * 6 + [2, 1]), (22, 3, [3] * 7 + [1]), (3, 3, [2, 1]), (4, 3, [3, 1]),
    (5, 3, [3, 2]), (7, 2, [2, 2, 2, 1]), (8, 2, [2] * 4), (5, 1, [1] * 5), (1, 3, [1]), (2, 3, [2]),
])
def test_singlestep_order_split(steps, order, expected):
    assert singlestep_orders(steps, order) == expected
    assert sum(expected) == steps


@pytest.mark.parametrize("method", ["multistep", "singlestep", "singlestep_fixed"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
def test_every_steps_count_is_finite_with_exact_nfe(method, order, algorithm):
    net, model = counted_model()
    x = torch.randn(2, 4, dtype=torch.float64)
    solver = dd.DPMSolver(model, algorithm=algorithm)
    for steps in range(1, 26):
        for lower_order_final in (True, False):
            net.calls = 0
            out = solver.sample(x, steps=steps, order=order, method=method, lower_order_final=lower_order_final)
            assert out.shape == x.shape and torch.isfinite(out).all()
            assert solver.last_solution.nfe == net.calls
            expected = steps if method != "singlestep_fixed" else max(steps // order, 1) * min(order, steps)
            assert net.calls == expected


def test_nfe_of_denoise_to_zero_and_intermediates():
    net, model = counted_model()
    x = torch.randn(2, 4, dtype=torch.float64)
    solver = dd.DPMSolver(model)
    out, inter = solver.sample(x, steps=6, denoise_to_zero=True, return_intermediate=True)
    assert net.calls == 7 == solver.last_solution.nfe
    assert len(inter) == 8 and inter[0] is x and inter[-1] is out


@pytest.mark.parametrize("order", [1, 2, 3])
def test_inverse_then_sample_returns_the_start(order):
    _, model = counted_model()
    x0 = mixture2().sample(4, generator=torch.Generator().manual_seed(3))
    solver = dd.DPMSolver(model)
    # Order 3 needs the order-keeping warm-up: the inversion starts where the model output varies.
    kwargs = dict(order=order, skip_type="logSNR", lower_order_final=False, warmup="singlestep")
    errors = []
    for steps in (20, 40, 80):
        noise = solver.inverse(x0, steps=steps, t_start=0.01, t_end=0.6, **kwargs)
        back = solver.sample(noise, steps=steps, t_start=0.6, t_end=0.01, **kwargs)
        errors.append(rmse(back, x0))
    assert errors[0] / errors[-1] > 0.7 * 4**order, errors


def test_adaptive_error_falls_with_rtol_and_counts_nfe():
    model, x, exact = reference("linear", "mixture2")
    net, counted = counted_model()
    errors = []
    for rtol in (0.05, 0.005, 0.0005):
        solver = dd.DPMSolver(model)
        out = solver.sample(x, method="adaptive", order=3, rtol=rtol, atol=rtol / 10)
        errors.append(rmse(out, exact))
        assert solver.last_solution.n_accepted > 0
    assert errors[0] > errors[1] > errors[2]
    solver = dd.DPMSolver(counted)
    solver.sample(x, method="adaptive", order=2)
    assert solver.last_solution.nfe == net.calls


def test_adaptive_max_nfe_guard():
    _, model = counted_model()
    ctrl = dd.AdaptiveController(atol=1e-12, rtol=1e-12, max_nfe=30)
    with pytest.raises(RuntimeError, match="max_nfe=30"):
        dd.solve_adaptive(model, torch.randn(2, 4, dtype=torch.float64), get_integrator("dpmpp_adaptive_23"), 1.0, 1e-3, ctrl)


def test_dynamic_thresholding_clamps_per_sample():
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, 0.3, -0.4, 0.1]], dtype=torch.float64)
    out = dd.models.dynamic_thresholding(x0, ratio=1.0, max_val=1.0)
    # Sample 0: s = max|x0| = 3, so x0 / 3; sample 1: s = max(0.4, 1) = 1, unchanged.
    assert torch.allclose(out[0], x0[0] / 3.0) and torch.allclose(out[1], x0[1])
    q = torch.quantile(x0[0].abs(), 0.5).item()
    out = dd.models.dynamic_thresholding(x0, ratio=0.5, max_val=0.5)
    assert torch.allclose(out[0], x0[0].clamp(-q, q) / q)


def test_thresholding_is_applied_in_sampling():
    s = dd.LinearVP()
    big = dd.GaussianMixture([1.0], [[5.0, -4.0]], [0.2])
    seen = []

    def fn(x0, t):
        seen.append(x0.abs().max().item())
        return x0.clamp(-1, 1)

    solver = dd.DPMSolver(big.predictor(s), correcting_x0_fn=fn)
    out = solver.sample(torch.randn(3, 2, dtype=torch.float64), steps=10)
    assert len(seen) == 10 and max(seen) > 1
    solver = dd.DPMSolver(big.predictor(s), correcting_x0_fn="dynamic_thresholding")
    out = solver.sample(torch.randn(3, 2, dtype=torch.float64), steps=10, denoise_to_zero=True)
    assert out.abs().max() <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="needs algorithm='dpmsolver\\+\\+'"):
        dd.DPMSolver(big.predictor(s), algorithm="dpmsolver", correcting_x0_fn="dynamic_thresholding")


def test_correcting_xt_fn_called_every_step():
    _, model = counted_model()
    calls = []

    def fn(x, t, step):
        calls.append((round(t, 6), step))
        return x

    dd.DPMSolver(model, correcting_xt_fn=fn).sample(torch.randn(2, 4, dtype=torch.float64), steps=4)
    assert [c[1] for c in calls] == [1, 2, 3, 4] and calls[-1][0] == 0.001


@pytest.mark.parametrize("method", ["multistep", "singlestep", "singlestep_fixed"])
def test_batch_independence(method):
    _, model = counted_model()
    x = torch.randn(6, 4, dtype=torch.float64)
    solver = dd.DPMSolver(model)
    full = solver.sample(x, steps=9, order=3, method=method)
    for i in range(6):
        alone = solver.sample(x[i:i + 1], steps=9, order=3, method=method)
        assert torch.allclose(alone, full[i:i + 1], rtol=1e-13, atol=1e-13)
    mixed = solver.sample(torch.cat([x[:3], torch.randn(5, 4, dtype=torch.float64)]), steps=9, order=3, method=method)
    assert torch.allclose(mixed[:3], full[:3], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_preserved_and_close(dtype):
    s = dd.LinearVP()
    model = mixture2().predictor(s)
    x = torch.randn(4, 4, dtype=torch.float64)
    solver = dd.DPMSolver(model)
    ref = solver.sample(x, steps=20, order=2)
    out = solver.sample(x.to(dtype), steps=20, order=2)
    assert out.dtype == dtype
    assert rmse(out.double(), ref) < (1e-5 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("skip_type", ["time_uniform", "logSNR", "time_quadratic", "karras"])
def test_grids_start_and_end_where_asked(skip_type):
    from diffode.integrators import get_grid

    s = dd.DiscreteVP(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    t = get_grid(skip_type).times(s, 1.0, 1e-3, 12)
    assert t.numel() == 13 and abs(t[0].item() - 1.0) < 1e-12 and abs(t[-1].item() - 1e-3) < 1e-12
    assert (t.diff() < 0).all()


def test_user_grid():
    _, model = counted_model()
    grid = [1.0, 0.6, 0.3, 0.1, 0.01, 0.001]
    solver = dd.DPMSolver(model)
    solver.sample(torch.randn(2, 4, dtype=torch.float64), steps=5, skip_type=grid)
    assert solver.last_solution.times == pytest.approx(grid)
    with pytest.raises(ValueError, match="the given grid has 5"):
        solver.sample(torch.randn(2, 4, dtype=torch.float64), steps=4, skip_type=grid)
