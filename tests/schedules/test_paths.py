"""Every schedule, VP or not: properties in float64 (hypothesis), the defining formulas of the new paths,
their infinite ends, and argument validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffode as dd
from tests.helpers import every_schedule

EVERY = every_schedule()
NAMES = sorted(EVERY)
EPS = torch.finfo(torch.float64).eps


def time_in_range(s, u: float, decades: float) -> float:
    """A time in [t_min, T], dense near t_min (where lambda grows without bound on most paths)."""
    return s.t_min + (s.T - s.t_min) * u * 10.0 ** (-decades)


def derivative(fn, t: torch.Tensor) -> torch.Tensor:
    """d fn/dt by autograd (a constant, which builds no graph, has derivative 0)."""
    with torch.enable_grad():
        tt = t.clone().requires_grad_(True)
        out = fn(tt)
        if not out.requires_grad:
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(out.sum(), tt)
    return grad


def dlambda_dt(s, t: torch.Tensor) -> torch.Tensor:
    return derivative(s.lambda_, t)


# Times down to ~1e-290 (subnormal times are no schedule's concern) and t = t_min itself.
UNIT = st.one_of(st.just(0.0), st.floats(1e-278, 1.0))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NAMES), u=UNIT, decades=st.floats(0.0, 12.0))
def test_inverse_lambda_round_trip_over_the_whole_range(name, u, decades):
    s = EVERY[name]
    t = torch.tensor([time_in_range(s, u, decades)], dtype=torch.float64)
    lam = s.lambda_(t)
    back = s.inverse_lambda(lam)
    if t.item() == 0.0:  # lambda = +inf at t = 0 on every path that starts there except VE
        assert (lam.item(), back.item()) == (math.inf, 0.0) or name == "ve"
        if name != "ve":
            return
    # 1e-12 relative, plus what the float64 rounding of lambda itself allows (|lambda| eps / |dlambda/dt|):
    # where lambda is finite at t = 0 (VE) a lambda value only determines t to ~1e-16 absolute.
    allowed = 1e-12 * t.abs() + 4 * EPS * lam.abs() / dlambda_dt(s, t).abs()
    assert (back - t).abs().item() <= allowed.item(), (t.item(), back.item(), allowed.item())


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(NAMES), u=UNIT, v=st.floats(0.0, 1.0), decades=st.floats(0.0, 10.0))
def test_lambda_strictly_decreasing(name, u, v, decades):
    s = EVERY[name]
    a = time_in_range(s, u, decades)
    b = a + (s.T - a) * max(v, 1e-6)
    if a < b:
        lam = s.lambda_(torch.tensor([a, b], dtype=torch.float64))
        assert lam[0] > lam[1], (a, b, lam)
    grid = torch.linspace(max(s.default_t_end, s.t_min), s.T, 4001, dtype=torch.float64)
    assert (s.lambda_(grid).diff() < 0).all()


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(NAMES), u=st.floats(1e-3, 1.0), decades=st.floats(0.0, 8.0))
def test_f_and_g2_are_the_autograd_derivatives(name, u, decades):
    s = EVERY[name]
    t = torch.tensor([time_in_range(s, u, decades)], dtype=torch.float64)
    if name == "discrete":  # piecewise linear: keep away from the kinks at t = n/N
        n = torch.round(t * s.N)
        t = ((n + 0.5) / s.N).clamp(s.t_min + 0.5 / s.N, s.T - 0.5 / s.N)
    dlog_alpha = derivative(s.log_alpha, t)
    dsigma2 = derivative(lambda tt: torch.exp(2 * s.log_sigma(tt)), t)
    sigma2 = torch.exp(2 * s.log_sigma(t))
    assert torch.allclose(s.f(t), dlog_alpha, rtol=1e-10, atol=1e-300), (t, s.f(t), dlog_alpha)
    g2 = dsigma2 - 2 * dlog_alpha * sigma2
    scale = dsigma2.abs() + (2 * dlog_alpha * sigma2).abs()
    assert ((s.g2(t) - g2).abs() <= 1e-10 * scale).all(), (t, s.g2(t), g2)
    assert torch.allclose(s.d_sigma2_dt(t), dsigma2, rtol=1e-10, atol=1e-300)
    assert (s.g2(t) >= 0).all()


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from([n for n in NAMES if isinstance(EVERY[n], dd.schedules.VPSchedule)]),
       u=UNIT, decades=st.floats(0.0, 12.0))
def test_vp_schedules_preserve_variance(name, u, decades):
    s = EVERY[name]
    t = torch.tensor([time_in_range(s, u, decades)], dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=4 * EPS)


def test_only_the_vp_schedules_are_vp():
    assert {n for n in NAMES if isinstance(EVERY[n], dd.schedules.VPSchedule)} == {"discrete", "linear", "cosine"}


# -- the defining formulas, written from the papers ---------------------------------------------------

T64 = torch.linspace(0.0, 1.0, 257, dtype=torch.float64)[1:-1]


def test_ve_is_score_sdes_vesde():
    s = dd.VE(sigma_min=0.02, sigma_max=80.0)
    assert torch.allclose(s.sigma(T64), 0.02 * (80.0 / 0.02) ** T64, rtol=1e-13)
    assert (s.alpha(T64) == 1).all() and (s.f(T64) == 0).all()
    # score_sde: diffusion = sigma(t) sqrt(2 (log sigma_max - log sigma_min))
    g = s.sigma(T64) * math.sqrt(2 * (math.log(80.0) - math.log(0.02)))
    assert torch.allclose(s.g2(T64).sqrt(), g, rtol=1e-13)
    assert (s.T, s.t_min, s.prior_std()) == (1.0, 0.0, 80.0)


def test_subvp_is_score_sdes_subvpsde():
    b0, b1 = 0.1, 20.0
    s = dd.SubVP(b0, b1)
    log_mean_coeff = -0.25 * T64**2 * (b1 - b0) - 0.5 * T64 * b0
    assert torch.allclose(s.alpha(T64), log_mean_coeff.exp(), rtol=1e-14)
    assert torch.allclose(s.sigma(T64), 1 - torch.exp(2 * log_mean_coeff), rtol=1e-13)
    beta = b0 + T64 * (b1 - b0)
    assert torch.allclose(s.f(T64), -0.5 * beta, rtol=1e-14)
    discount = 1 - torch.exp(-2 * b0 * T64 - (b1 - b0) * T64**2)
    assert torch.allclose(s.g2(T64), beta * discount, rtol=1e-13)
    # sigma ~ beta_0 t near 0: computed without cancellation
    tiny = torch.tensor([1e-12, 1e-9], dtype=torch.float64)
    assert torch.allclose(s.sigma(tiny), b0 * tiny, rtol=1e-8)
    assert s.prior_std() == 1.0


def test_edm_is_sigma_equals_t():
    s = dd.EDM(sigma_min=0.002, sigma_max=80.0)
    t = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 101, dtype=torch.float64))
    assert torch.equal(s.sigma(t), t) and (s.alpha(t) == 1).all()
    assert torch.allclose(s.lambda_(t), -torch.log(t), rtol=0, atol=1e-15)
    # Karras et al.: the probability-flow ODE is dx/dsigma = eps, i.e. g2 / (2 sigma) = 1.
    assert torch.allclose(s.g2(t) / (2 * s.sigma(t)), torch.ones_like(t), rtol=1e-15)
    assert (s.T, s.t_min, s.default_t_end, s.prior_std()) == (80.0, 0.002, 0.002, 80.0)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_flow_matching_path_and_shift(shift):
    s = dd.FlowMatching(shift=shift)
    shifted = shift * T64 / (1 + (shift - 1) * T64)   # SD3 / Flux / diffusers time shift
    assert torch.allclose(s.sigma(T64), shifted, rtol=1e-14)
    assert torch.allclose(s.alpha(T64), 1 - shifted, rtol=1e-13)
    assert torch.allclose(s.lambda_(T64), torch.log((1 - shifted) / shifted), rtol=1e-12, atol=1e-14)
    if shift == 1.0:
        assert torch.allclose(s.sigma(T64), T64, rtol=1e-15)


def test_flow_matching_ends_are_exactly_infinite_and_excluded_from_the_range():
    s = dd.FlowMatching(shift=3.0)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert s.lambda_(ends).tolist() == [math.inf, -math.inf]
    assert s.inverse_lambda(torch.tensor([math.inf, -math.inf], dtype=torch.float64)).tolist() == [0.0, 1.0]
    assert s.alpha(1.0).item() == 0.0 and s.sigma(0.0).item() == 0.0
    assert s.sigma(1.0).item() == 1.0 and s.alpha(0.0).item() == 1.0
    assert s.T < 1 and s.point(0.0).lam == math.inf
    with pytest.raises(ValueError, match="must lie in"):
        s.point(1.0)
    # the solvers step from T to a small t_end with finite first and last steps
    gm = dd.GaussianMixture([1.0], [[0.5, -1.0]], [0.3])
    x = torch.randn(3, 2, dtype=torch.float64)
    out = dd.DPMSolver(gm.predictor(s)).sample(x, steps=10, order=2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ve", "subvp", "edm", "flow", "flow_shift3"])
def test_new_paths_keep_dtype_and_shape(name):
    s = EVERY[name]
    t = torch.full((2, 3), 0.5 * (s.t_min + s.T), dtype=torch.float32)
    for fn in (s.log_alpha, s.log_sigma, s.alpha, s.sigma, s.lambda_, s.f, s.g2, s.d_sigma2_dt):
        out = fn(t)
        assert out.shape == (2, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert s.inverse_lambda(torch.zeros(4, dtype=torch.float32)).dtype == torch.float32
    assert s.alpha(s.T).dtype == torch.float64
    assert repr(s).startswith(type(s).__name__ + "(")


@pytest.mark.parametrize("make,kwargs,match", [
    (dd.VE, dict(sigma_min=0.0), "sigma_min must be > 0"),
    (dd.VE, dict(sigma_min=5.0, sigma_max=1.0), "sigma_min must be < sigma_max"),
    (dd.VE, dict(sigma_max=float("inf")), "sigma_max must be finite"),
    (dd.EDM, dict(sigma_min=80.0, sigma_max=80.0), "sigma_min must be < sigma_max"),
    (dd.EDM, dict(sigma_min=-1.0), "sigma_min must be > 0"),
    (dd.SubVP, dict(beta_0=5.0, beta_1=1.0), "beta_0 must be <= beta_1"),
    (dd.SubVP, dict(beta_0=-0.1), "beta_0 must be >= 0"),
    (dd.FlowMatching, dict(shift=0.0), "shift must be > 0"),
    (dd.FlowMatching, dict(T=1.0), "T must be < 1"),
    (dd.FlowMatching, dict(shift=float("nan")), "shift must be finite"),
])
def test_bad_arguments(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)
    with pytest.raises(TypeError, match="must be a real number"):
        make(**{next(iter(kwargs)): "1"})
