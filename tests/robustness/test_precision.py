"""Precision: half-precision states are integrated in float32 and lose nothing beyond their own precision.

Every error is measured against a float64 run from the same rounded start, in units of the input
dtype's unit roundoff ``u`` times the scale of the result (see ``common.precision_errors``).
"""

import pytest
import torch

import diffode as dd
from tests.helpers import mixture2
from tests.robustness.common import (
    GAUSSIAN_MAX_BOUND,
    HALF,
    MIXTURE_P99_BOUND,
    MIXTURE_RMS_BOUND,
    PRECISION_CASES,
    SOLVE_MODULE,
    UNIT_ROUNDOFF,
    Counting,
    precision_errors,
    rounded_exact_network,
    schedule,
)


@pytest.mark.parametrize("case", sorted(PRECISION_CASES))
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("schedule_name", ["discrete", "linear"])
def test_half_precision_gaussian_error_at_input_precision(schedule_name, dtype, case):
    """A single Gaussian (a well-conditioned flow): the largest error stays within a few u."""
    errors = precision_errors(dtype, case, mixture="gaussian", schedule_name=schedule_name)
    assert errors["dtype_ok"] == 1.0
    assert errors["max"] <= GAUSSIAN_MAX_BOUND[case], errors


@pytest.mark.parametrize("case", sorted(PRECISION_CASES))
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_mixture_error_at_input_precision(dtype, case):
    """The two-component mixture of tests/helpers.py. Its flow magnifies perturbations of the few
    samples that start near the boundary between the modes (a float32 run shows the same outliers
    relative to its own u), so the bound is on the 99th percentile and the RMS."""
    errors = precision_errors(dtype, case, mixture="mixture2", schedule_name="discrete")
    assert errors["dtype_ok"] == 1.0
    assert errors["p99"] <= MIXTURE_P99_BOUND[case], errors
    assert errors["rms"] <= MIXTURE_RMS_BOUND, errors


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_the_bounds_catch_half_precision_accumulation(dtype, monkeypatch):
    """With the state integrated in its own half precision (as before the float32 working copy),
    the bounds above fail: they are tight enough to test what they claim."""
    monkeypatch.setattr(SOLVE_MODULE, "working_dtype", lambda d: d)
    violations = [case for case in PRECISION_CASES
                  if precision_errors(dtype, case, mixture="gaussian")["max"] > GAUSSIAN_MAX_BOUND[case]]
    assert len(violations) >= 2, violations


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_network_sees_input_dtype_integrator_sees_float32(dtype):
    s = schedule("linear")
    seen = []
    exact = rounded_exact_network(mixture2(), s)

    def net(x, t):
        seen.append((x.dtype, t.dtype))
        return exact(x, t)

    model = dd.wrap(net, s, time_input="continuous")
    states = []
    integrator = dd.integrators.DPMSolverMultistep(2)
    step = integrator.step

    def spy(model_, x, s_, t_, state, order=None):
        states.append(x.dtype)
        assert isinstance(s_.t, float) and isinstance(s_.alpha, float) and isinstance(s_.sigma, float)
        return step(model_, x, s_, t_, state, order)

    integrator.step = spy
    x = torch.randn(4, 4).to(dtype)
    sol = dd.solve(model, x, integrator, torch.linspace(1.0, 1e-3, 6, dtype=torch.float64), return_intermediate=True)
    assert set(states) == {torch.float32}
    assert set(seen) == {(dtype, torch.float32)}  # time inputs stay float32: 999 is not representable in steps of 1
    assert sol.x.dtype == dtype and all(v.dtype == dtype for v in sol.intermediates)
    assert sol.intermediates[0] is x


@pytest.mark.parametrize("method", ["multistep", "singlestep", "singlestep_fixed", "adaptive"])
@pytest.mark.parametrize("dtype", [*HALF, torch.float32, torch.float64], ids=str)
def test_output_dtype_is_input_dtype_for_every_method(method, dtype):
    s = schedule("discrete")
    model = dd.wrap(rounded_exact_network(mixture2(), s), s, time_input="continuous")
    solver = dd.DPMSolver(model, check_finite=True)
    x = torch.randn(3, 4).to(dtype)
    out, states = solver.sample(x, steps=8, order=3, method=method, denoise_to_zero=True, return_intermediate=True)
    assert out.dtype == dtype and all(v.dtype == dtype for v in states)
    assert torch.isfinite(out).all()


def test_analytic_predictor_in_half_precision_through_default_predict_mixed():
    """A Predictor without a network (the default ``predict_mixed``: cast down, predict, cast up)
    also works, with the mixture itself evaluated in half precision (so a looser bound)."""
    s = schedule("linear")
    model = mixture2().predictor(s)
    x = torch.randn(256, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    solver = dd.DPMSolver(model)
    reference = solver.sample(x.double(), steps=20, order=2)
    out = solver.sample(x, steps=20, order=2)
    assert out.dtype == torch.float16
    rms = (out.double() - reference).square().mean().sqrt().item()
    assert rms <= 10 * UNIT_ROUNDOFF[torch.float16] * reference.abs().max().item()


def test_float32_and_float64_are_integrated_in_their_own_dtype():
    s = schedule("linear")
    net = Counting(mixture2().predictor(s))
    for dtype in (torch.float32, torch.float64):
        assert SOLVE_MODULE.working_dtype(dtype) is dtype
        x = torch.randn(2, 4, dtype=dtype)
        integrator = dd.integrators.DPMSolverMultistep(2)
        seen = []
        step = integrator.step
        integrator.step = lambda m, x_, *a, **k: seen.append(x_.dtype) or step(m, x_, *a, **k)
        dd.solve(net, x, integrator, [1.0, 0.5, 0.1])
        assert set(seen) == {dtype}


def test_correcting_xt_fn_sees_the_working_precision():
    s = schedule("linear")
    seen = []

    def fn(x, t, step):
        seen.append(x.dtype)
        return x.to(torch.float16)  # a careless correction in the caller's dtype is cast back up

    solver = dd.DPMSolver(mixture2().predictor(s), correcting_xt_fn=fn)
    out = solver.sample(torch.randn(2, 4).half(), steps=4)
    assert set(seen) == {torch.float32} and out.dtype == torch.float16
