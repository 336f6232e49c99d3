"""DPM-Solver++ multistep converges at its nominal order on the paths beyond VP (VE, sub-VP, EDM, flow).

Nothing in the integrators knows the path: they see alpha, sigma and lambda only. The ground truth is
the RK45 reference solution of the probability-flow ODE (``diffode.solve_reference``), the grid is
uniform in lambda, as in test_convergence.py.
"""

import pytest
import torch

import diffode as dd
from tests.helpers import reference, rmse
from tests.integrators.test_convergence import fitted_slope

PATHS = ["ve", "subvp", "edm", "flow", "flow_shift3"]


# Order 2 runs in the quick suite; orders 1 and 3 (about 15 s together) with the slow studies.
@pytest.mark.parametrize("order", [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("sname", PATHS)
def test_dpmpp_multistep_order_on_every_path(sname, order):
    model, x, exact = reference(sname, "mixture2")
    solver = dd.DPMSolver(model, algorithm="dpmsolver++")
    counts = [24, 48, 96, 192]
    errors = []
    for n in counts:
        out = solver.sample(x, steps=n, order=order, method="multistep", skip_type="logSNR", lower_order_final=False)
        assert solver.last_solution.nfe == n
        errors.append(rmse(out, exact))
    slope = fitted_slope(counts, errors)
    assert abs(slope - order) < 0.25, (slope, errors)


@pytest.mark.parametrize("sname", PATHS)
def test_solve_front_runs_on_every_path(sname):
    model, x, _ = reference(sname, "mixture2")
    s = model.schedule
    times = dd.integrators.grids.UniformTime().times(s, s.T, s.default_t_end, 16)
    out = dd.solve(model, x, "dpmpp_2m", times)
    assert torch.isfinite(out.x).all() and out.nfe == 16
