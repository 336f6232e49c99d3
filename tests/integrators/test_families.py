"""The multistep families beyond DPM-Solver 1-3: exponential Adams-Bashforth 4, iPNDM, DEIS tAB.

Coefficients against independent derivations (sympy / mpmath / adaptive quadrature), fitted orders
against the RK45 ground truth on logSNR grids, and what diffusers' DEIS scheduler computes."""

from __future__ import annotations

import functools
import random

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch

import diffode as dd
from diffode import study
from diffode.integrators import DEIS, IPNDM, DPMSolverMultistep
from diffode.integrators.coefficients import update_weights
from diffode.integrators.deis import tab_weights
from diffode.integrators.ipndm import ADAMS_BASHFORTH
from diffode.integrators.unipc import unipc_factors
from tests.helpers import DDPM_BETAS, mixture2, reference
from tests.integrators.test_coefficients_sympy import H_GRID, SGN, _close

# ---------------------------------------------------------------------------------------------
# Coefficients
# ---------------------------------------------------------------------------------------------


def exact_weights_mp(nodes, h: float, sgn: int) -> list[float]:
    """w_j = int_0^h e^{sgn (h - tau)} l_j(tau / h) d tau (l_j the Lagrange basis through ``nodes``), at
    60 digits: the moments mu_n = int_0^1 e^{a (1 - u)} u^n du by parts (mu_n = (n mu_{n-1} - 1)/a),
    then the Vandermonde system V^T w = h mu; independent of the implementation's phi-functions."""
    with mpmath.workdps(60):
        a = sgn * mpmath.mpf(h)
        mu = [mpmath.expm1(a) / a]
        for n in range(1, len(nodes)):
            mu.append((n * mu[-1] - 1) / a)
        vander_t = mpmath.matrix([[mpmath.mpf(c) ** n for c in nodes] for n in range(len(nodes))])
        w = mpmath.lu_solve(vander_t, mpmath.matrix(mu))
        return [float(mpmath.mpf(h) * w[j]) for j in range(len(nodes))]


@pytest.mark.parametrize("predict", ["data", "noise"])
@pytest.mark.parametrize("seed", [None, 0, 1])
def test_ab4_weights_match_exact_integral_of_cubic_interpolant(predict, seed):
    rng = random.Random(seed)
    steps = [1.0, 1.0, 1.0] if seed is None else [rng.uniform(0.3, 3.0) for _ in range(3)]
    nodes = [0.0, -steps[0], -(steps[0] + steps[1]), -sum(steps)]
    sgn = SGN[predict]
    bad = []
    for h in np.concatenate([H_GRID[::8], -H_GRID[::8]]):
        ref = exact_weights_mp(nodes, float(h), sgn)
        got = update_weights(float(h), nodes[::-1], sgn * float(h))[::-1]  # passed oldest first, as the integrator does
        if not _close(got, ref, rtol=1e-11):
            bad.append((h, got, ref))
    assert not bad, bad[0]


def test_adams_bashforth_table_is_the_integral_of_the_lagrange_basis():
    u = sp.Symbol("u")
    for k, weights in ADAMS_BASHFORTH.items():
        nodes = [-j for j in range(k)]  # newest first, equal steps
        for j, w in enumerate(weights):
            basis = sp.prod([(u - nodes[m]) / sp.Integer(nodes[j] - nodes[m]) for m in range(k) if m != j])
            assert sp.integrate(basis, (u, 0, 1)) == sp.Rational(w.numerator, w.denominator), (k, j)


def test_ipndm_variable_weights_are_the_table_on_equal_steps():
    # Steps equal in rho = e^{-lambda}: s at rho = 1, t at 0.5, the stored outputs at 1.5, 2, 2.5.
    point = {r: dd.schedules.TimePoint(0.0, float(-np.log(r)), 1.0, r) for r in (0.5, 1.0, 1.5, 2.0, 2.5)}
    s, t = point[1.0], point[0.5]
    got = IPNDM(4, variable_step=True).weights(s, t, [point[r].lam for r in (1.0, 1.5, 2.0, 2.5)])
    np.testing.assert_allclose(got, [float(c) for c in ADAMS_BASHFORTH[4]], rtol=1e-13)


B_SYM = {"bh1": lambda z: z, "bh2": lambda z: sp.exp(z) - 1}


@functools.cache
def unipc_paper_weights(n: int, variant: str):
    """The UniPC update of the paper, literally: rho from R rho = Phi / B(h) (rho = 1/2 for a single
    difference), then h [phi_1 m_0 + B/z sum rho_j (m_j - m_0)/r_j]; returns the weights of m_j per
    unit h as a function of (z, r_1, ..., r_{n-1})."""
    z = sp.Symbol("z")
    rs = sp.symbols(f"r1:{n}")
    ms = sp.symbols(f"m0:{n}")
    phis = [sp.exp(z)]
    for k in range(1, n + 1):
        phis.append((phis[-1] - 1 / sp.factorial(k - 1)) / z)  # phi_k(z), closed form
    big_b = B_SYM[variant](z)
    if n - 1 == 1:
        rho = [sp.Rational(1, 2)]
    elif n > 1:
        matrix = sp.Matrix(n - 1, n - 1, lambda k, j: rs[j] ** k)
        rhs = sp.Matrix([z * sp.factorial(k) * phis[k + 1] / big_b for k in range(1, n)])
        rho = list(matrix.LUsolve(rhs))
    else:
        rho = []
    term = phis[1] * ms[0] + big_b / z * sum(rho[j] * (ms[j + 1] - ms[0]) / rs[j] for j in range(n - 1))
    weights = [sp.diff(term, m) for m in ms]
    return sp.lambdify((z, *rs), weights, modules="mpmath")


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_unipc_factors_match_the_papers_formulation(variant, n):
    rng = random.Random(n)
    for _ in range(6):
        nodes = [0.0] + sorted((rng.uniform(-3.0, 1.0) for _ in range(n - 1)), reverse=True)
        if n >= 2 and min(abs(a - b) for i, a in enumerate(nodes) for b in nodes[i + 1:]) < 0.1:
            continue
        for h in (1e-3, 0.1, 0.7, 2.5):
            for sgn in (-1, 1):
                z = sgn * h
                with mpmath.workdps(60):
                    ref = [float(w) * h for w in unipc_paper_weights(n, variant)(mpmath.mpf(z), *map(mpmath.mpf, nodes[1:]))]
                got = update_weights(h, nodes, z, factors=unipc_factors(n, z, variant))
                assert _close(got, ref, rtol=1e-10), (nodes, z, got, ref)


def _linear_vp_rho():
    t = sp.Symbol("t")
    log_alpha = -sp.Rational(1, 4) * t**2 * (20 - sp.Rational(1, 10)) - t / 20
    return t, sp.sqrt(1 - sp.exp(2 * log_alpha)) / sp.exp(log_alpha)


@pytest.mark.parametrize("times, t_end", [([0.5, 0.52, 0.54, 0.56], 0.48), ([0.05, 0.1, 0.2], 1e-3),
                                          ([0.9, 0.95], 0.8), ([0.3], 0.2), ([0.2, 0.1, 0.05, 0.02], 0.3)])
def test_deis_weights_match_the_integral_against_drho(times, t_end):
    """C_j = int l_j(tau) rho'(tau) dtau, with rho' differentiated by sympy and integrated by mpmath."""
    t, rho = _linear_vp_rho()
    drho = sp.lambdify(t, sp.diff(rho, t), modules="mpmath")
    got = tab_weights(dd.LinearVP(), times, t_end)
    with mpmath.workdps(30):
        for j, t_j in enumerate(times):
            def basis(tau, j=j, t_j=t_j):
                return mpmath.fprod((tau - times[m]) / (t_j - times[m]) for m in range(len(times)) if m != j)
            ref = float(mpmath.quad(lambda tau: basis(tau) * drho(tau), [times[0], t_end]))
            assert abs(got[j] - ref) <= 1e-12 * max(1.0, abs(ref)), (j, got[j], ref)


@pytest.mark.parametrize("schedule", [dd.CosineVP(), dd.DiscreteVP(betas=DDPM_BETAS)], ids=["cosine", "discrete"])
def test_deis_weights_integrate_polynomials_in_t_exactly(schedule):
    """sum_j C_j p(t_j) = rho-integral of p, for p of degree < the number of nodes; reference by
    adaptive quadrature of p' rho (integration by parts, split at the knots)."""
    from scipy.integrate import quad

    times, t_end = [0.4, 0.41, 0.425, 0.44], 0.39
    weights = tab_weights(schedule, times, t_end)
    rho = lambda tau: float(torch.exp(-schedule.lambda_(torch.tensor(tau, dtype=torch.float64))))  # noqa: E731
    knots = [k for k in getattr(schedule, "t_array", torch.tensor([])).tolist() if t_end < k < times[0]]
    for degree in range(4):
        inner, _ = quad(lambda tau: degree * tau ** (degree - 1) * rho(tau) if degree else 0.0, times[0], t_end,
                        epsabs=0.0, epsrel=1e-13, limit=500, points=knots or None)
        exact = t_end**degree * rho(t_end) - times[0] ** degree * rho(times[0]) - inner
        got = sum(w * tj**degree for w, tj in zip(weights, times))
        assert abs(got - exact) <= 1e-12 * max(1.0, abs(exact)), (degree, got, exact)


# ---------------------------------------------------------------------------------------------
# Convergence orders (logSNR grids, analytic mixture, RK45 ground truth)
# ---------------------------------------------------------------------------------------------

def _slopes(integrators, steps, sname="linear"):
    model, x, exact = reference(sname, "mixture2")
    return study.convergence_study(model, x, exact, integrators, steps=steps)


@pytest.mark.parametrize("predict", ["data", "noise"])
def test_ab4_converges_at_order_four(predict):
    [result] = _slopes({"4m": DPMSolverMultistep(4, predict, "taylor")}, [24, 48, 96, 192])
    assert result.nfe == [24, 48, 96, 192]
    assert abs(result.overall_slope - 4) < 0.25, result


def test_deis_converges_at_its_order():
    results = _slopes({f"tab{k - 1}": DEIS(k) for k in (2, 4)}, [24, 48, 96, 192])
    for result in results:
        assert abs(result.overall_slope - result.order) < 0.25, result


def test_ipndm_orders():
    # Equal-step weights on a grid not equal in rho: consistent, order 2 whatever k is; the
    # variable-step weights reach order k (in the asymptotic regime of a few hundred steps).
    fixed = _slopes({"ipndm": IPNDM(4)}, [24, 48, 96, 192])[0]
    assert abs(fixed.overall_slope - 2) < 0.25, fixed
    variable = _slopes({"ipndm_v": IPNDM(4, variable_step=True)}, [96, 192, 384, 768])[0]
    assert abs(variable.overall_slope - 4) < 0.25, variable


@pytest.mark.slow
@pytest.mark.parametrize("sname", ["linear", "discrete"])
def test_every_order_of_the_new_families(sname):
    # DEIS extrapolates in t, and DiscreteVP is only piecewise smooth in t (knots every 1/1000): with
    # steps near the knot spacing its order falls, so it is fitted on the smooth schedule only.
    # (Up to 192 steps at order 4: at 768 the errors reach the RK45 ground truth's own, ~1e-9.)
    deis = {f"deis{k}": DEIS(k) for k in (1, 2, 3, 4)} if sname == "linear" else {}
    ab4 = {"dpmpp_4m": DPMSolverMultistep(4, "data"), "dpm_4m": DPMSolverMultistep(4, "noise")}
    for result in _slopes({**deis, **ab4}, [24, 48, 96, 192], sname):
        assert abs(result.overall_slope - result.order) < 0.25, result
    for result in _slopes({f"ipndm_v{k}": IPNDM(k, variable_step=True) for k in (1, 2, 3, 4)}, [96, 192, 384, 768],
                          sname):
        assert abs(result.overall_slope - result.order) < 0.25, result
    for result in _slopes({f"ipndm{k}": IPNDM(k) for k in (2, 3, 4)}, [96, 192, 384, 768], sname):
        assert abs(result.overall_slope - 2) < 0.25, result


# ---------------------------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------------------------

def test_order_one_of_every_family_is_ddim():
    model = mixture2().predictor(dd.LinearVP())
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    times = dd.integrators.UniformLambda().times(model.schedule, 1.0, 1e-3, 7)
    ddim = dd.solve(model, x, DPMSolverMultistep(1, "noise"), times).x
    for integrator in (IPNDM(1), IPNDM(1, variable_step=True), DEIS(1)):
        torch.testing.assert_close(dd.solve(model, x, integrator, times).x, ddim, rtol=1e-12, atol=1e-12)


def test_warm_ups():
    assert IPNDM(4).step_orders(6, lower_order_final=True) == [1, 2, 3, 4, 4, 4]
    assert DEIS(4).step_orders(6, lower_order_final=True) == [1, 2, 3, 3, 2, 1]
    assert DPMSolverMultistep(4).step_orders(6) == [1, 2, 3, 4, 4, 4]
    assert DPMSolverMultistep(4).plan(dd.LinearVP(), 12).nfe == 12


def test_ab4_has_no_singlestep_warmup():
    with pytest.raises(ValueError, match="keeps the order up to 3 only"):
        DPMSolverMultistep(4, warmup="singlestep")
    # A first step asked at order 4 (no stored outputs) is the third-order singlestep step.
    model = mixture2().predictor(dd.LinearVP())
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ab4 = dd.solve(model, x, DPMSolverMultistep(4), [1.0, 0.5, 0.1], orders=[4, 4])
    assert ab4.nfe == 4 and DPMSolverMultistep(4).evaluations([4, 4]) == 4
    s3 = dd.solve(model, x, DPMSolverMultistep(3), [1.0, 0.5, 0.1], orders=[3, 3])
    torch.testing.assert_close(ab4.x, s3.x, rtol=0, atol=0)  # (the second step has two outputs either way)


def test_bad_input():
    with pytest.raises(ValueError, match="order must be 1, 2, 3 or 4 for IPNDM"):
        IPNDM(5)
    with pytest.raises(TypeError, match="variable_step must be a bool"):
        IPNDM(4, variable_step="yes")
    with pytest.raises(ValueError, match="order must be 1 to 4 for DEIS"):
        DEIS(5)
    with pytest.raises(ValueError, match="order"):
        DEIS(0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy 2 warning
@pytest.mark.parametrize("order, steps", [(2, 8), (3, 8), (3, 20)])
def test_diffusers_deis_is_the_noise_form_multistep_dpm_solver(order, steps):
    """diffusers' DEISMultistepScheduler ("logrho": the polynomial in log rho = -lambda, integrated
    exactly against d rho) is DPMSolverMultistep(order, "noise", "taylor"), not tAB."""
    pytest.importorskip("diffusers")
    from diffusers import DEISMultistepScheduler

    model = mixture2().predictor(dd.DiscreteVP(betas=DDPM_BETAS))
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scheduler = DEISMultistepScheduler(num_train_timesteps=1000, solver_order=order)
    scheduler.set_timesteps(steps)
    times = [(int(k) + 1) / 1000 for k in scheduler.timesteps] + [1.0 / 1000]
    points = model.schedule.points(torch.tensor(times, dtype=torch.float64))
    scheduler.sigmas = torch.tensor([p.sigma / p.alpha for p in points], dtype=torch.float64)
    expected = x
    for i, k in enumerate(scheduler.timesteps):
        expected = scheduler.step(model.noise(expected, times[i]), k, expected).prev_sample
    integrator = DPMSolverMultistep(order, "noise", "taylor")
    got = dd.solve(model, x, integrator, times, orders=integrator.step_orders(steps, 15)).x
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()
    tab = dd.solve(model, x, DEIS(order), times, orders=DEIS(order).step_orders(steps, 15)).x
    assert (tab - expected).abs().max() > 1e-6


def test_registered_configurations_rebuild_with_options():
    from diffode.study import configure_integrator

    assert repr(configure_integrator("unipc_bh1_3", predict="noise")) == \
        "UniPC(predictor_order=3, predict='noise', variant='bh1', corrector=True)"
    assert configure_integrator("ipndm", variable_step=True).variable_step
    assert configure_integrator("deis_tab3", order=2).order == 2
    assert configure_integrator("dpmpp_4m", solver_type="taylor").order == 4
