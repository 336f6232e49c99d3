import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import diffode as dd
from tests.helpers import every_schedule, gaussian, mixture4, schedules


@pytest.mark.parametrize("sname", sorted(every_schedule()))
def test_reference_matches_single_gaussian_closed_form(sname):
    s = every_schedule()[sname]
    gm = gaussian()
    x = torch.randn(4, 3, dtype=torch.float64)
    t_end = s.default_t_end
    sol = dd.solve_reference(gm.predictor(s), x, s.T, t_end, times=[0.5])
    exact = gm.pf_solution(x, s.T, t_end, s)
    assert ((sol.x - exact).norm() / exact.norm()).item() <= 1e-8
    mid = gm.pf_solution(x, s.T, 0.5, s)
    assert ((sol.xs[0] - mid).norm() / mid.norm()).item() <= 1e-8
    assert sol.nfe > 0


def test_reference_runs_backwards():
    s = schedules()["linear"]
    gm = gaussian()
    x0 = torch.randn(3, 3, dtype=torch.float64)
    sol = dd.solve_reference(gm.predictor(s), x0, 1e-3, s.T)
    exact = gm.pf_solution(x0, 1e-3, s.T, s)
    assert ((sol.x - exact).norm() / exact.norm()).item() <= 1e-8


def test_reference_agrees_with_scipy_dop853_on_mixture():
    s = schedules()["linear"]
    gm = mixture4()
    model = gm.predictor(s)
    x = torch.randn(2, 3, dtype=torch.float64)
    sol = dd.solve_reference(model, x, s.T, 1e-3)

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(2, 3)
        eps = model.noise(xt, float(t))
        return s.probability_flow_drift(xt, float(t), eps).reshape(-1).numpy()

    # DOP853 in t: an independent method and variable.
    ref = solve_ivp(rhs, (s.T, 1e-3), x.reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    expected = torch.from_numpy(ref.y[:, -1]).reshape(2, 3)
    assert (np.abs((sol.x - expected).numpy()).max() / expected.abs().max().item()) <= 1e-8


def test_reference_from_a_tiny_time():
    # From t = 1e-5 the vector field is tiny: dopri5's own first-step guess used to jump past
    # lambda_T, where alpha underflows (ZeroDivisionError).
    model = dd.GaussianMixture([1.0], [[0.5, -1.0]], [0.3]).predictor(dd.LinearVP())
    x = torch.randn(4, 2, dtype=torch.float64)
    solution = dd.solve_reference(model, x, 1e-5, 1.0)
    closed = model.mixture.pf_solution(x, 1e-5, 1.0, model.schedule)
    torch.testing.assert_close(solution.x, closed, rtol=1e-8, atol=1e-8)
