r"""Symbolic (sympy) derivations of the exponential-integrator coefficients, compared with ``diffode``.

Nothing here reuses the implementation's formulas: every expected value is derived from the
variation-of-constants formulas of the probability-flow ODE,

* data form:  $x_t = \frac{\sigma_t}{\sigma_s}x_s
  + \sigma_t\int_{\lambda_s}^{\lambda_t} e^{\lambda}\hat x_0(\lambda)\,d\lambda$,
* noise form: $x_t = \frac{\alpha_t}{\alpha_s}x_s
  - \alpha_t\int_{\lambda_s}^{\lambda_t} e^{-\lambda}\hat\epsilon(\lambda)\,d\lambda$,

with $\alpha_t = \sigma_t e^{\lambda_t}$, $h = \lambda_t - \lambda_s$ and $\tau = \lambda - \lambda_s$. Both integral
terms are $b\int_0^h e^{\mathrm{sgn}\,(h-\tau)} m(\tau)\,d\tau$ with $(b, \mathrm{sgn}) = (\alpha_t, -1)$ in data form
and $(-\sigma_t, +1)$ in noise form; the implementation writes them as $b\sum_j w_j m_j$ and evaluates
its $\varphi$-functions at $z = \mathrm{sgn}\cdot h$. Sections:

1. $\varphi_k$ against sympy closed forms evaluated with mpmath at high precision.
2. The update weights against the exact integral of the Lagrange interpolant (singlestep and
   multistep node sets, both forms, $|h| \in [10^{-8}, 10]$).
3. The closed forms of the DPM-Solver papers / reference code, end to end through
   :func:`exponential_update` and the integrators.
4. Order conditions as series in $h$ (symbolic), and the implementation's local errors against
   the symbolic leading error terms (numeric).
"""

from __future__ import annotations

import functools
import math
import random
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch

from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import History, State, exponential_update
from diffode.integrators.coefficients import phi, update_weights
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.integrators.singlestep import DPMSolverSinglestep, stages_for
from diffode.models.predictor import Predictor
from diffode.schedules import LinearVP

Z, U, TAU = sp.symbols("z u tau", real=True)
H = sp.Symbol("h", real=True)
D = sp.symbols("d0:4", real=True)
R0, R1, R2 = sp.symbols("r0 r1 r2", positive=True)
#: A generic smooth model output around lam_s: its Taylor polynomial with symbolic derivatives d_k.
M_TAU = D[0] + D[1] * TAU + D[2] * TAU**2 / 2 + D[3] * TAU**3 / 6

SGN = {"data": -1, "noise": 1}  # kernel e^{sgn (h - tau)}; phi-argument z = sgn * h
PREDICTS = ("data", "noise")
SOLVER_TYPES = ("dpmsolver", "taylor")
DPS = 80  # mpmath digits: enough for the cancellation in the closed forms down to |h| = 1e-8

# |h| in [1e-8, 10], 40 points per decade, plus the neighbours of the series/recursion switch at |z| = 1.
H_GRID = np.unique(np.concatenate([np.logspace(-8, 1, 9 * 40 + 1), [np.nextafter(1.0, 0.0), np.nextafter(1.0, 2.0)]]))


def _rat(x: float) -> sp.Rational:
    """A stage fraction (1/3, 2/3, 1/2, ...) as an exact rational."""
    f = Fraction(x).limit_denominator(10**6)
    assert abs(float(f) - x) < 1e-15, x
    return sp.Rational(f.numerator, f.denominator)


# ---------------------------------------------------------------------------------------------
# 1. phi_k
# ---------------------------------------------------------------------------------------------


@functools.cache
def phi_integral(k: int) -> sp.Expr:
    r"""$\varphi_k(z) = \frac{1}{(k-1)!}\int_0^1 e^{(1-u)z}u^{k-1}\,du$ (integrated by sympy)."""
    return sp.integrate(sp.exp((1 - U) * Z) * U ** (k - 1), (U, 0, 1), conds="none") / sp.factorial(k - 1)


@functools.cache
def phi_recursion(k: int) -> sp.Expr:
    r"""$\varphi_1 = (e^z-1)/z$, $\varphi_{j+1} = (\varphi_j - 1/j!)/z$."""
    expr = (sp.exp(Z) - 1) / Z
    for j in range(1, k):
        expr = (expr - sp.Rational(1, math.factorial(j))) / Z
    return expr


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_closed_forms_agree(k):
    """The integral definition, the recursion and the power series are one function."""
    assert sp.simplify(phi_integral(k) - phi_recursion(k)) == 0
    series = sp.series(phi_integral(k), Z, 0, 8).removeO()
    assert sp.expand(series - sum(Z**j / sp.factorial(j + k) for j in range(8))) == 0


@pytest.mark.parametrize("sign", [1, -1], ids=["z>0", "z<0"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_matches_high_precision(k, sign):
    exact = sp.lambdify(Z, phi_integral(k), modules="mpmath")
    worst, where = 0.0, None
    with mpmath.workdps(DPS):
        for h in H_GRID:
            z = sign * float(h)
            ref = exact(mpmath.mpf(z))
            rel = float(abs((mpmath.mpf(phi(k, z)) - ref) / ref))
            if rel > worst:
                worst, where = rel, z
    assert worst <= 1e-12, f"phi({k}, z) relative error {worst:.2e} at z={where!r}"


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_at_zero(k):
    assert phi(k, 0.0) == pytest.approx(1.0 / math.factorial(k), rel=1e-15)
    assert phi(k, -0.0) == pytest.approx(1.0 / math.factorial(k), rel=1e-15)


# ---------------------------------------------------------------------------------------------
# 2. Weights: exact integral of the interpolant
# ---------------------------------------------------------------------------------------------


@functools.cache
def monomial_integral(sgn: int, q: int) -> sp.Expr:
    r"""$\int_0^h e^{\mathrm{sgn}(h-\tau)}\tau^q\,d\tau$."""
    return sp.integrate(sp.exp(sgn * (H - TAU)) * TAU**q, (TAU, 0, H))


def kernel_integral(poly: sp.Expr, sgn: int, step: sp.Expr = H) -> sp.Expr:
    r"""$\int_0^{step} e^{\mathrm{sgn}(step-\tau)}p(\tau)\,d\tau$ for a polynomial ``poly`` in $\tau$ (exact)."""
    p = sp.Poly(sp.expand(poly), TAU)
    return sum(coeff * monomial_integral(sgn, q).subs(H, step) for (q,), coeff in p.terms())


@functools.cache
def lagrange_weights(n: int, sgn: int) -> tuple[tuple[sp.Symbol, ...], tuple[sp.Expr, ...]]:
    r"""Symbolic weights for nodes $0, c_1, \dots, c_{n-1}$ (units of $h$).

    The model output is replaced by its Lagrange interpolant $p$ through the values $m_j$ at
    $c_j h$; the exact integral $\int_0^h e^{\mathrm{sgn}(h-\tau)}p(\tau)\,d\tau$ is linear in the $m_j$,
    and its coefficients are the weights.
    """
    cs = (sp.Integer(0), *sp.symbols(f"c1:{n}", real=True))
    ms = sp.symbols(f"m0:{n}", real=True)
    basis = [sp.Mul(*[(TAU - cs[i] * H) / ((cs[j] - cs[i]) * H) for i in range(n) if i != j]) for j in range(n)]
    interpolant = sum(m * b for m, b in zip(ms, basis))
    for j in range(n):  # it interpolates
        assert sp.simplify(interpolant.subs(TAU, cs[j] * H) - ms[j]) == 0
    integral = sp.expand(kernel_integral(interpolant, sgn))
    weights = tuple(sp.together(integral.diff(m)) for m in ms)
    assert sp.simplify(integral - sum(w * m for w, m in zip(weights, ms))) == 0
    return cs[1:], weights


@functools.cache
def lagrange_weights_mp(n: int, sgn: int):
    cs, weights = lagrange_weights(n, sgn)
    return sp.lambdify((H, *cs), list(weights), modules="mpmath")


def reference_weights(nodes, h: float, sgn: int) -> list[float]:
    """The symbolic weights at float ``nodes`` (node 0 first, any order after) and ``h``, in mpmath."""
    order = sorted(range(len(nodes)), key=lambda j: (nodes[j] != 0.0, j))
    assert nodes[order[0]] == 0.0
    f = lagrange_weights_mp(len(nodes), sgn)
    with mpmath.workdps(DPS):
        ws = f(mpmath.mpf(h), *[mpmath.mpf(nodes[j]) for j in order[1:]])
        ws = [float(w) for w in ws]
    out = [0.0] * len(nodes)
    for pos, j in enumerate(order):
        out[j] = ws[pos]
    return out


def _close(got, ref, rtol=1e-12, floor=0.1):
    """Relative comparison per weight, with an absolute floor ``floor * max|ref|``.

    The floor is needed where one weight is much smaller than the others: with nodes 0, 1/3, 2/3
    the middle weight is O(h^2) while the others are O(h), and the float64 Vandermonde solve gets
    it to ~1e-15 of the largest weight only (observed worst: 7e-15 * max|ref| for close random nodes).
    """
    scale = max(abs(r) for r in ref)
    return all(abs(g - r) <= rtol * max(abs(r), floor * scale) for g, r in zip(got, ref))


def _node_sets(seed):
    if seed is None:  # the defaults of the methods
        r1, r2, q0, q1 = 0.5, 2.0 / 3.0, 1.0, 1.0
        return {"one": [0.0], "single2": [0.0, r1], "single3": [0.0, 1.0 / 3.0, r2],
                "multi2": [0.0, -q0], "multi3": [0.0, -q0, -(q0 + q1)]}
    rng = random.Random(seed)
    while True:
        r1, r2 = sorted(rng.uniform(0.05, 0.95) for _ in range(2))
        if r2 - r1 > 0.05:
            break
    q0, q1 = rng.uniform(0.3, 3.0), rng.uniform(0.3, 3.0)
    return {"one": [0.0], "single2": [0.0, r1], "single3": [0.0, r1, r2],
            "multi2": [0.0, -q0], "multi3": [0.0, -q0, -(q0 + q1)]}


CONFIGS = ("one", "single2", "single3", "multi2", "multi3")


@pytest.mark.parametrize("seed", [None, 0, 1], ids=["defaults", "rand0", "rand1"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("predict", PREDICTS)
def test_update_weights_match_exact_integral_of_interpolant(predict, config, seed):
    sgn = SGN[predict]
    nodes = _node_sets(seed)[config]
    reversed_nodes = nodes[::-1]  # the multistep methods pass their nodes oldest first
    solver_types = ["taylor"] + (["dpmsolver"] if len(nodes) != 2 else [])  # they differ at 2 nodes only
    bad = []
    for h in np.concatenate([H_GRID, -H_GRID]):
        h = float(h)
        ref = reference_weights(nodes, h, sgn)
        for st in solver_types:
            got = update_weights(h, nodes, sgn * h, st)
            if not _close(got, ref):
                bad.append((st, h, got, ref))
            got_rev = update_weights(h, reversed_nodes, sgn * h, st)
            if not _close(got_rev, ref[::-1]):
                bad.append((st + " reversed", h, got_rev, ref[::-1]))
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]}"


# ---------------------------------------------------------------------------------------------
# 3. Closed forms of the papers and of the reference code, end to end
# ---------------------------------------------------------------------------------------------

X, M0, M1, M2, R = sp.symbols("x m0 m1 m2 r", real=True)
AS, AT, SS, ST = sp.symbols("alpha_s alpha_t sigma_s sigma_t", positive=True)


def paper_order2(predict: str, kind: str, solver_type: str) -> sp.Expr:
    r"""$x_t$ of DPM-Solver(++)-2 as written in the papers / reference code.

    ``kind="single"``: outputs $m_0$ at $\lambda_s$ and $m_1$ at $\lambda_s + r h$, $D_1 = (m_1 - m_0)/r$.
    ``kind="multi"``: outputs $m_0$ at $\lambda_s$ and $m_1$ at $\lambda_s - r h$, $D_1 = (m_0 - m_1)/r$.
    """
    d1 = (M1 - M0) / R if kind == "single" else (M0 - M1) / R
    if predict == "data":
        e = sp.exp(-H) - 1
        base = (ST / SS) * X - AT * e * M0
        if solver_type == "dpmsolver":
            return base - sp.Rational(1, 2) * AT * e * d1
        return base + AT * (e / H + 1) * d1
    e = sp.exp(H) - 1
    base = (AT / AS) * X - ST * e * M0
    if solver_type == "dpmsolver":
        return base - sp.Rational(1, 2) * ST * e * d1
    return base - ST * (e / H - 1) * d1


def reference_3m(predict: str, d2_factor: int = 1) -> sp.Expr:
    r"""$x_t$ of the reference code's multistep order-3 update (``multistep_dpm_solver_third_update``).

    Outputs $m_0, m_1, m_2$ at $\lambda_s$, $\lambda_s - r_0h$, $\lambda_s - (r_0+r_1)h$. ``d2_factor=2``
    doubles the $D_2$ term (the exact integral of the quadratic interpolant).
    """
    d1_0 = (M0 - M1) / R0
    d1_1 = (M1 - M2) / R1
    d1 = d1_0 + R0 / (R0 + R1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (R0 + R1)
    if predict == "data":
        p1 = sp.exp(-H) - 1
        p2 = p1 / H + 1
        p3 = p2 / H - sp.Rational(1, 2)
        return (ST / SS) * X - AT * p1 * M0 + AT * p2 * d1 - d2_factor * AT * p3 * d2
    p1 = sp.exp(H) - 1
    p2 = p1 / H - 1
    p3 = p2 / H - sp.Rational(1, 2)
    return (AT / AS) * X - ST * p1 * M0 - ST * p2 * d1 - d2_factor * ST * p3 * d2


def _point_values(s, t) -> dict:
    return {AS: mpmath.mpf(s.alpha), AT: mpmath.mpf(t.alpha), SS: mpmath.mpf(s.sigma), ST: mpmath.mpf(t.sigma),
            H: mpmath.mpf(t.lam) - mpmath.mpf(s.lam)}


@functools.cache
def _linear_coefficients(expr: sp.Expr, variables: tuple, symbols: tuple):
    """mpmath functions of ``symbols`` giving the coefficients of ``expr`` (linear in ``variables``)."""
    coeffs = [sp.diff(expr, v) for v in variables]
    assert sp.simplify(expr - sum(c * v for c, v in zip(coeffs, variables))) == 0  # exactly linear
    return sp.lambdify(symbols, coeffs, modules="mpmath")


def _evaluate_linear_form(expr: sp.Expr, variables, tensors, numbers: dict) -> torch.Tensor:
    """``expr`` is linear in ``variables``; combine ``tensors`` with its coefficients evaluated in mpmath."""
    f = _linear_coefficients(expr, tuple(variables), tuple(numbers))
    with mpmath.workdps(DPS):
        coeffs = [float(c) for c in f(*numbers.values())]
    out = torch.zeros_like(tensors[0])
    for c, tensor in zip(coeffs, tensors):
        out = out + c * tensor
    return out


SCHED = LinearVP()
S_POINT = SCHED.point(0.6)
STEPS = (1e-4, 0.05, 0.6, 2.5, -0.4)


def _tensors(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("predict", PREDICTS)
def test_order2_weights_match_paper(predict, kind, solver_type):
    """Weight level, |h| in [1e-8, 10]: the paper's coefficients of m0, m1 divided by b."""
    expr = paper_order2(predict, kind, solver_type)
    b = AT if predict == "data" else -ST
    coeffs = [sp.simplify(sp.diff(expr, m) / b) for m in (M0, M1)]
    assert all(not c.free_symbols - {H, R} for c in coeffs)
    f = sp.lambdify((H, R), coeffs, modules="mpmath")
    sgn = SGN[predict]
    bad = []
    for r in (0.5, 0.37, 1.0, 2.3) if kind == "multi" else (0.5, 0.37, 0.81):
        nodes = [0.0, r] if kind == "single" else [0.0, -r]
        for h in np.concatenate([H_GRID, -H_GRID]):
            h = float(h)
            with mpmath.workdps(DPS):
                ref = [float(w) for w in f(mpmath.mpf(h), mpmath.mpf(r))]
            got = update_weights(h, nodes, sgn * h, solver_type)
            if not _close(got, ref):
                bad.append((r, h, got, ref))
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]}"


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("predict", PREDICTS)
def test_exponential_update_order2_matches_paper(predict, kind, solver_type, step):
    s = S_POINT
    t = SCHED.point_at_lambda(s.lam + step)
    x, m0, m1 = _tensors(3)
    r = 0.5 if kind == "single" else 0.73
    values = [m0, m1]
    m0v, m1v = m0, m1
    nodes = [0.0, r] if kind == "single" else [0.0, -r]
    got = exponential_update(x, s, t, values, nodes, predict, solver_type)
    numbers = {**_point_values(s, t), R: mpmath.mpf(r)}
    expected = _evaluate_linear_form(paper_order2(predict, kind, solver_type), (X, M0, M1), (x, m0v, m1v), numbers)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13 * float(expected.abs().max()))
    # the multistep methods pass their outputs oldest first
    got_rev = exponential_update(x, s, t, values[::-1], nodes[::-1], predict, solver_type)
    torch.testing.assert_close(got_rev, expected, rtol=1e-12, atol=1e-13 * float(expected.abs().max()))


def test_exponential_update_between_schedule_points():
    """The same closed form with both points from ``LinearVP().point(t)`` (a sampling step 0.8 -> 0.5)."""
    s, t = SCHED.point(0.8), SCHED.point(0.5)
    x, m0, m1 = _tensors(3, seed=1)
    for predict in PREDICTS:
        for st in SOLVER_TYPES:
            got = exponential_update(x, s, t, [m0, m1], [0.0, 0.5], predict, st)
            numbers = {**_point_values(s, t), R: mpmath.mpf(0.5)}
            expected = _evaluate_linear_form(paper_order2(predict, "single", st), (X, M0, M1), (x, m0, m1), numbers)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13 * float(expected.abs().max()))


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("predict", PREDICTS)
def test_exponential_update_order3_multistep_closed_forms(predict, step):
    """Default weights = reference 3M with the D2 term doubled; ``factors=[phi1, phi2, phi3]`` = reference 3M."""
    s = S_POINT
    t = SCHED.point_at_lambda(s.lam + step)
    x, m0, m1, m2 = _tensors(4, seed=2)
    r0, r1 = 0.8, 1.7
    nodes = [-(r0 + r1), -r0, 0.0]  # oldest first, as the multistep integrator passes them
    values = [m2, m1, m0]
    numbers = {**_point_values(s, t), R0: mpmath.mpf(r0), R1: mpmath.mpf(r1)}
    atol = 1e-13 * float(x.abs().max())
    for factor, factors in ((2, None), (1, [phi(k, SGN[predict] * (t.lam - s.lam)) for k in (1, 2, 3)])):
        got = exponential_update(x, s, t, values, nodes, predict, "taylor", factors)
        expected = _evaluate_linear_form(reference_3m(predict, factor), (X, M0, M1, M2), (x, m0, m1, m2), numbers)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=atol)


class XModel(Predictor):
    """A model that depends on the state and on lambda (stage values depend on the stage states)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def predict(self, x, point, kind):
        return 0.6 * torch.tanh(x) + math.cos(2.0 * point.lam) + 0.1 * point.lam


def reference_singlestep(model, x, s, t, order, predict, solver_type, r1, r2):
    r"""The reference code's singlestep DPM-Solver(++)-1/2/3 (``singlestep_dpm_solver_*_update``), in float64.

    Data form: $x = \frac{\sigma}{\sigma_s}x - \alpha\phi_1 m_s + \alpha\phi_2 D_1 - \alpha\phi_3 D_2$ with
    $\phi_1 = \mathrm{expm1}(-h)$, $\phi_2 = \phi_1/h + 1$; noise form:
    $x = \frac{\alpha}{\alpha_s}x - \sigma\phi_1 m_s - \sigma\phi_2 D_1 - \sigma\phi_3 D_2$ with
    $\phi_1 = \mathrm{expm1}(h)$, $\phi_2 = \phi_1/h - 1$; both with $\phi_3 = \phi_2/h - 1/2$.
    """
    data = predict == "data"
    h = t.lam - s.lam

    def lin(p): return p.sigma / s.sigma if data else p.alpha / s.alpha
    def phi1(v): return math.expm1(-v) if data else math.expm1(v)
    def phi2(v): return phi1(v) / v + (1.0 if data else -1.0)
    def phi3(v): return phi2(v) / v - 0.5
    def k1(p): return -p.alpha if data else -p.sigma  # factor of the phi_1 term
    def k2(p): return p.alpha if data else -p.sigma  # factor of the phi_2 term
    def k3(p): return -p.alpha if data else -p.sigma  # factor of the phi_3 term
    def output(y, p): return model.predict(y, p, predict)

    m_s = output(x, s)
    start = lin(t) * x + k1(t) * phi1(h) * m_s
    if order == 1:
        return start
    s1 = SCHED.point_at_lambda(s.lam + r1 * h)
    m_s1 = output(lin(s1) * x + k1(s1) * phi1(r1 * h) * m_s, s1)
    if order == 2:
        if solver_type == "dpmsolver":
            return start + 0.5 / r1 * k1(t) * phi1(h) * (m_s1 - m_s)
        return start + 1.0 / r1 * k2(t) * phi2(h) * (m_s1 - m_s)
    s2 = SCHED.point_at_lambda(s.lam + r2 * h)
    x_s2 = lin(s2) * x + k1(s2) * phi1(r2 * h) * m_s + r2 / r1 * k2(s2) * phi2(r2 * h) * (m_s1 - m_s)
    m_s2 = output(x_s2, s2)
    if solver_type == "dpmsolver":
        return start + 1.0 / r2 * k2(t) * phi2(h) * (m_s2 - m_s)
    d1_0 = (m_s1 - m_s) / r1
    d1_1 = (m_s2 - m_s) / r2
    d1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
    return start + k2(t) * phi2(h) * d1 + k3(t) * phi3(h) * d2


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
@pytest.mark.parametrize(("order", "rs"), [(1, None), (2, None), (2, (0.25, 0.6)), (3, None), (3, (0.25, 0.6))],
                         ids=["1", "2", "2-r1=0.25", "3", "3-r=0.25,0.6"])
@pytest.mark.parametrize("predict", PREDICTS)
def test_singlestep_step_matches_reference_code(predict, order, rs, solver_type):
    """Whole singlestep steps (intermediate states included) against the reference code's formulas."""
    model = XModel(SCHED)
    defaults = {2: (0.5, None), 3: (1.0 / 3.0, 2.0 / 3.0), 1: (None, None)}[order]
    r1, r2 = rs if rs is not None else defaults
    if order == 2 and rs is not None:
        r2 = None
    kwargs = {} if rs is None else {"r1": r1, "r2": r2}
    integ = DPMSolverSinglestep(order, predict, solver_type, **kwargs)
    (x,) = _tensors(1, seed=3)
    for step in (0.05, 0.6, 2.0, -0.4):
        s = S_POINT
        t = SCHED.point_at_lambda(s.lam + step)
        got = integ.step(model, x, s, t, State()).x
        expected = reference_singlestep(model, x, s, t, order, predict, solver_type, r1, r2)
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12 * float(expected.abs().max()))


# ---------------------------------------------------------------------------------------------
# 4. Order conditions
# ---------------------------------------------------------------------------------------------
#
# The model output is a function of lambda only, m(tau) = d0 + d1 tau + d2 tau^2/2 + d3 tau^3/6,
# so the stage values are m(c_i h) whatever the intermediate states are. Comparing the update's
# integral term with the exact integral then checks the *quadrature* order conditions: for a model
# that depends on lambda only these are the stiff order conditions of exponential Runge--Kutta
# (Hochbruck & Ostermann) and exponential Adams methods. The intermediate stages are checked on
# their own (stage order q: error O(h^{q+1})), and the final weights are checked not to let a
# stage's error into the result below O(h^{order+1}) (w_j = O(h^{order - q_j})): with a bounded
# dm/dx this is the remaining (weak) stiff condition. DPM-Solver-3 with the paper's "dpmsolver"
# final stage (outputs at 0 and r2 only) meets the third-order quadrature condition only because
# r2 = 2/3 cancels the h^3 term; with r2 = 1/2 it is second order (tested below).


def symbolic_weights(nodes, sgn: int, solver_type: str, step: sp.Expr) -> list[sp.Expr]:
    """Weights of one update over ``step`` with the model outputs at ``nodes * step`` (node 0 first)."""
    assert nodes[0] == 0
    if solver_type == "dpmsolver" and len(nodes) == 2:
        # the paper: a m0 + (a / 2) (m1 - m0) / c1, a = 1 - e^{-h} (data) or e^{h} - 1 (noise)
        a = sgn * (sp.exp(sgn * step) - 1)
        return [a * (1 - 1 / (2 * nodes[1])), a / (2 * nodes[1])]
    cs, ws = lagrange_weights(len(nodes), sgn)
    sub = dict(zip(cs, nodes[1:]))
    return [w.subs(sub).subs(H, step) for w in ws]


def update_error(nodes, sgn: int, solver_type: str, step: sp.Expr) -> sp.Expr:
    """Numerical integral term minus the exact one, for the model output ``M_TAU``."""
    ws = symbolic_weights(nodes, sgn, solver_type, step)
    approx = sum(w * M_TAU.subs(TAU, c * step) for w, c in zip(ws, nodes))
    return approx - kernel_integral(M_TAU, sgn, step)


def series_coeffs(expr: sp.Expr, upto: int) -> list[sp.Expr]:
    """Coefficients of h^0 .. h^upto of the expansion of ``expr`` at h = 0.

    Same result as ``sympy.series(expr, h, 0, upto + 1)`` (checked in
    :func:`test_series_helper_matches_sympy_series`) but fast: every ``exp`` is replaced by its
    Taylor polynomial of degree ``upto + 6``, the result is one fraction whose denominator is
    ``h^k`` times an ``h``-free factor (asserted, ``k <= 5``), so the numerator's coefficients up to
    ``h^(upto + k)`` are exact; those below ``h^k`` must cancel (asserted).
    """
    n = upto + 6
    expr = expr.replace(lambda e: e.is_Pow and isinstance(e.base, sp.exp), lambda e: sp.exp(e.base.args[0] * e.exp))
    expr = expr.replace(sp.exp, lambda a: sum(a**j / sp.factorial(j) for j in range(n + 1)))
    assert not expr.has(sp.exp)
    num, den = sp.fraction(sp.together(expr))
    rest, hpow = sp.factor(den).as_independent(H, as_Add=False)
    k = sp.degree(hpow, H) if hpow != 1 else 0
    assert hpow == H**k and k <= 5, den
    poly = sp.Poly(sp.expand(num), H)
    for j in range(k):
        assert sp.cancel(poly.coeff_monomial(H**j) / rest) == 0, f"negative power h^{j - k} in {expr}"
    return [sp.factor(sp.cancel(poly.coeff_monomial(H ** (j + k)) / rest)) for j in range(upto + 1)]


def test_series_helper_matches_sympy_series():
    for expr, upto in ((update_error([sp.Integer(0)], -1, "taylor", H), 3),
                       ((sp.exp(-R0 * H) - 1 + R0 * H) / H**2, 4)):
        reference = sp.expand(sp.series(expr, H, 0, upto + 1).removeO())
        fast = series_coeffs(expr, upto)
        assert all(sp.simplify(reference.coeff(H, j) - fast[j]) == 0 for j in range(upto + 1))


@functools.cache
def tableau_analysis(stages, sgn: int, order: int):
    """Stage and final-step local error series of a singlestep tableau (stage fractions as rationals)."""
    fractions, stage_order = [sp.Integer(0)], [None]
    stage_checks = []
    for stage in stages[:-1]:
        c = _rat(stage.c)
        nodes = [fractions[j] / c for j in stage.nodes]
        q = len(stage.nodes)
        stage_checks.append((q, series_coeffs(update_error(nodes, sgn, stage.solver_type, c * H), q + 1)))
        fractions.append(c)
        stage_order.append(q)
    final = stages[-1]
    nodes = [fractions[j] for j in final.nodes]
    final_coeffs = series_coeffs(update_error(nodes, sgn, final.solver_type, H), order + 2)
    weights = symbolic_weights(nodes, sgn, final.solver_type, H)
    weight_checks = [(stage_order[j], series_coeffs(w, order)) for j, w in zip(final.nodes, weights)]
    return stage_checks, final_coeffs, weight_checks


SINGLESTEP_TABLEAUS = {
    **{f"order{k}-{st}": (stages_for(k, st), k) for k in (1, 2, 3) for st in SOLVER_TYPES},
    # the adaptive pairs' lower members: DPM-Solver-1 (in DPM-Solver-12) and DPM-Solver-2 with r1 = 1/3 (DPM-Solver-23)
    **{f"adaptive-low-{k}-{st}": (stages_for(k - 1, st, 1.0 / 3.0 if k == 3 else None), k - 1)
       for k in (2, 3) for st in SOLVER_TYPES},
    # the adaptive pairs' upper members (DPM-Solver-12 uses r1 = 1/2)
    **{f"adaptive-high-{k}-{st}": (stages_for(k, st, 0.5 if k == 2 else 1.0 / 3.0), k)
       for k in (2, 3) for st in SOLVER_TYPES},
    "order2-taylor-r1=0.3": (stages_for(2, "taylor", 0.3), 2),
    "order3-taylor-r1=0.2": (stages_for(3, "taylor", 0.2, 2.0 / 3.0), 3),
}


def _assert_order(coeffs, p, what):
    for k in range(p + 1):
        assert coeffs[k] == 0, f"{what}: h^{k} term of the local error is {coeffs[k]} (order {p} needs 0)"
    assert coeffs[p + 1] != 0, f"{what}: the h^{p + 1} term vanishes (the check would be vacuous)"


@pytest.mark.parametrize("predict", PREDICTS)
@pytest.mark.parametrize("name", list(SINGLESTEP_TABLEAUS))
def test_singlestep_order_conditions(name, predict):
    stages, order = SINGLESTEP_TABLEAUS[name]
    stage_checks, final_coeffs, weight_checks = tableau_analysis(stages, SGN[predict], order)
    for i, (q, coeffs) in enumerate(stage_checks, start=1):
        _assert_order(coeffs, q, f"{name} stage {i} (stage order {q})")
    _assert_order(final_coeffs, order, f"{name} final stage")
    for q, coeffs in weight_checks:
        if q is None:
            continue  # the output at the step start is exact
        for k in range(order - q):
            assert coeffs[k] == 0, f"{name}: final weight of a stage of order {q} has an h^{k} term {coeffs[k]}"


@pytest.mark.parametrize("predict", PREDICTS)
def test_dpmsolver_order3_relies_on_r2_two_thirds(predict):
    """The check can fail: the 'dpmsolver' DPM-Solver-3 with r2 = 1/2 is only second order."""
    sgn = SGN[predict]
    _, final_coeffs, _ = tableau_analysis(stages_for(3, "dpmsolver", 1.0 / 3.0, 0.5), sgn, 3)
    assert all(c == 0 for c in final_coeffs[:3])
    assert final_coeffs[3] != 0  # h^3: second order only
    # symbolically in r2: the h^3 term of the final stage (outputs at 0 and r2) vanishes iff r2 = 2/3
    coeff3 = series_coeffs(update_error([sp.Integer(0), R2], sgn, "taylor", H), 3)[3]
    assert sp.solve(sp.diff(coeff3, D[2]), R2) == [sp.Rational(2, 3)]
    assert sp.diff(coeff3, D[2]).subs(R2, sp.Rational(2, 3)) == 0


@pytest.mark.parametrize("predict", PREDICTS)
def test_taylor_order3_with_r2_half_passes_quadrature_but_not_stage_condition(predict):
    """'taylor' DPM-Solver-3 with r2 = 1/2: exact for lambda-only models to O(h^4), but the final weight of
    the first-order stage at r1 is O(h^1), so an x-dependent model sees an O(h^3) local error."""
    stages = stages_for(3, "taylor", 1.0 / 3.0, 0.5)
    _, final_coeffs, weight_checks = tableau_analysis(stages, SGN[predict], 3)
    _assert_order(final_coeffs, 3, "taylor r2=1/2")
    (q, w1), = [(q, c) for q, c in weight_checks if q == 1]
    assert w1[0] == 0 and w1[1] != 0


MULTISTEP_NODES = {1: [sp.Integer(0)], 2: [sp.Integer(0), -R0], 3: [sp.Integer(0), -R0, -(R0 + R1)]}


@functools.cache
def multistep_error_coeffs(order: int, sgn: int, solver_type: str):
    return series_coeffs(update_error(MULTISTEP_NODES[order], sgn, solver_type, H), order + 2)


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("predict", PREDICTS)
def test_multistep_order_conditions(predict, order, solver_type):
    """Exponential Adams with symbolic step ratios r0, r1: local error O(h^{order+1})."""
    coeffs = multistep_error_coeffs(order, SGN[predict], solver_type)
    _assert_order(coeffs, order, f"multistep order {order} {solver_type}")


@functools.cache
def reference_3m_error_coeffs(sgn: int, d2_factor: int):
    predict = "data" if sgn == -1 else "noise"
    b = AT if predict == "data" else -ST
    expr = reference_3m(predict, d2_factor)
    subs = {M0: M_TAU.subs(TAU, 0), M1: M_TAU.subs(TAU, -R0 * H), M2: M_TAU.subs(TAU, -(R0 + R1) * H)}
    integral_term = sum(sp.diff(expr, m) * value for m, value in subs.items()) / b  # expr is linear in m0, m1, m2
    return series_coeffs(integral_term - kernel_integral(M_TAU, sgn), 5)


@pytest.mark.parametrize("predict", PREDICTS)
def test_reference_multistep_order3_is_second_order(predict):
    """The reference 3M weights D2 by phi_3 (factors [phi1, phi2, phi3]): h^3 error -d2 h^3/12; doubled: O(h^4)."""
    sgn = SGN[predict]
    ref = reference_3m_error_coeffs(sgn, 1)
    assert all(c == 0 for c in ref[:3])
    assert sp.simplify(ref[3] + D[2] / 12) == 0
    _assert_order(reference_3m_error_coeffs(sgn, 2), 3, "reference 3M with doubled D2")


# ---- the implementation's local errors against the symbolic leading terms --------------------

D_VALUES = (0.7, -1.3, 2.1, -3.4)
D_SUBS = dict(zip(D, D_VALUES))
RATIOS = {R0: 0.7, R1: 1.6}
LAM_S = S_POINT.lam


class LambdaOnlyModel(Predictor):
    """The model output is the polynomial M_TAU in tau = lambda - lam_s (same for either prediction)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def predict(self, x, point, kind):
        tau = point.lam - LAM_S
        value = sum(d * tau**k / math.factorial(k) for k, d in enumerate(D_VALUES))
        return torch.full_like(x, value)


def _exact_integral(sgn: int, h: float) -> mpmath.mpf:
    f = sp.lambdify(H, kernel_integral(M_TAU, sgn).subs(D_SUBS), modules="mpmath")
    with mpmath.workdps(DPS):
        return f(mpmath.mpf(h))


def _predicted_error(coeffs, p: int, h: float, subs=None) -> float:
    """The h^{p+1} and h^{p+2} terms of the local error series, at ``h``."""
    subs = {**D_SUBS, **(subs or {})}
    return float(sum(sp.N(coeffs[k].subs(subs), 30) * h**k for k in (p + 1, p + 2)))


def _check_local_error(integ_result_x, x, s, t, predict, coeffs, p, subs=None):
    h = t.lam - s.lam
    sgn = SGN[predict]
    a, b = (t.sigma / s.sigma, t.alpha) if predict == "data" else (t.alpha / s.alpha, -t.sigma)
    integral_term = (integ_result_x - a * x) / b  # the implementation's sum_j w_j m_j
    error = float(integral_term[0, 0]) - float(_exact_integral(sgn, h))
    predicted = _predicted_error(coeffs, p, h, subs)
    assert abs(predicted) > 1e-12, "degenerate test values"
    assert abs(error - predicted) <= 0.03 * abs(predicted), (error, predicted)


STEP_H = 0.04


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("predict", PREDICTS)
def test_singlestep_local_error_matches_symbolic(predict, order, solver_type):
    s = S_POINT
    t = SCHED.point_at_lambda(s.lam + STEP_H)
    x = torch.full((2, 3), 0.3, dtype=torch.float64)
    integ = DPMSolverSinglestep(order, predict, solver_type)
    res = integ.step(LambdaOnlyModel(SCHED), x, s, t, State())
    _, coeffs, _ = tableau_analysis(stages_for(order, solver_type), SGN[predict], order)
    _check_local_error(res.x, x, s, t, predict, coeffs, order)


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("predict", PREDICTS)
def test_adaptive_pair_local_errors_match_symbolic(predict, order, solver_type):
    s = S_POINT
    t = SCHED.point_at_lambda(s.lam + STEP_H)
    x = torch.full((2, 3), 0.3, dtype=torch.float64)
    res = DPMSolverAdaptive(order, predict, solver_type).step(LambdaOnlyModel(SCHED), x, s, t, State())
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    _, high, _ = tableau_analysis(stages_for(order, solver_type, r1), SGN[predict], order)
    _check_local_error(res.x, x, s, t, predict, high, order)
    low_stages = stages_for(order - 1, solver_type, 1.0 / 3.0 if order == 3 else None)
    _, low, _ = tableau_analysis(low_stages, SGN[predict], order - 1)
    _check_local_error(res.x_low, x, s, t, predict, low, order - 1)


class ReferenceWeightedMultistep(DPMSolverMultistep):
    """The reference code's order-3 weighting, through the documented override point."""

    def update_factors(self, n_nodes, z):
        return [phi(1, z), phi(2, z), phi(3, z)] if n_nodes == 3 else None


def _multistep_state(order: int, h: float) -> State:
    model = LambdaOnlyModel(SCHED)
    lams = [LAM_S - RATIOS[R0] * h, LAM_S - (RATIOS[R0] + RATIOS[R1]) * h][: order - 1]
    x = torch.zeros(2, 3, dtype=torch.float64)
    history = tuple(History(lam, model.predict(x, SCHED.point_at_lambda(lam), "data")) for lam in reversed(lams))
    return State(history=history, step_index=len(history))


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
@pytest.mark.parametrize(("order", "variant"), [(1, "default"), (2, "default"), (3, "default"), (3, "reference")])
@pytest.mark.parametrize("predict", PREDICTS)
def test_multistep_local_error_matches_symbolic(predict, order, variant, solver_type):
    """One multistep step (unequal ratios 0.7, 1.6) vs the symbolic error; the reference weighting is order 2."""
    s = S_POINT
    t = SCHED.point_at_lambda(s.lam + STEP_H)
    x = torch.full((2, 3), 0.3, dtype=torch.float64)
    cls = DPMSolverMultistep if variant == "default" else ReferenceWeightedMultistep
    res = cls(order, predict, solver_type).step(LambdaOnlyModel(SCHED), x, s, t, _multistep_state(order, STEP_H))
    assert res.nfe == 1
    if variant == "default":
        coeffs, p = multistep_error_coeffs(order, SGN[predict], solver_type), order
    else:
        coeffs, p = reference_3m_error_coeffs(SGN[predict], 1), 2
    _check_local_error(res.x, x, s, t, predict, coeffs, p, subs=RATIOS)
