import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffode as dd
from tests.helpers import DDPM_BETAS, schedules

ALL = list(schedules().items())
IDS = [name for name, _ in ALL]


def test_discrete_reproduces_cumsum_at_grid_points():
    s = dd.DiscreteVP(betas=DDPM_BETAS)
    t_n = torch.arange(1, 1001, dtype=torch.float64) / 1000
    expected = 0.5 * torch.cumsum(torch.log(1 - DDPM_BETAS), 0)
    assert torch.allclose(s.log_alpha(t_n), expected, rtol=0, atol=1e-14)


def test_discrete_from_alphas_cumprod_matches_betas():
    a = dd.DiscreteVP(betas=DDPM_BETAS)
    b = dd.DiscreteVP(alphas_cumprod=torch.cumprod(1 - DDPM_BETAS, 0))
    t = torch.linspace(1e-3, 1, 37, dtype=torch.float64)
    assert torch.allclose(a.log_alpha(t), b.log_alpha(t), rtol=1e-12, atol=1e-14)


def test_discrete_interpolates_linearly_between_grid_points():
    s = dd.DiscreteVP(betas=DDPM_BETAS)
    t0, t1 = 0.25, 0.251
    mid = s.log_alpha(0.2505)
    assert torch.allclose(mid, 0.5 * (s.log_alpha(t0) + s.log_alpha(t1)), atol=1e-15)


def test_discrete_lambda_clipping_truncates_cosine_betas():
    n = 1000
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.clamp(1 - f[1:] / f[:-1], max=0.999)
    clipped = dd.DiscreteVP(betas=betas)
    unclipped = dd.DiscreteVP(betas=betas, clip_lambda=None)
    assert unclipped.N == n and clipped.N < n
    assert clipped.lambda_(1.0).item() >= -5.1
    assert unclipped.lambda_(1.0).item() < -5.1


@pytest.mark.parametrize("name,s", ALL, ids=IDS)
def test_inverse_lambda_round_trip(name, s):
    t = torch.linspace(s.default_t_end, s.T, 501, dtype=torch.float64)
    back = s.inverse_lambda(s.lambda_(t))
    assert ((back - t).abs() / t).max() < 1e-10


@pytest.mark.parametrize("name,s", ALL, ids=IDS)
def test_lambda_strictly_decreasing(name, s):
    t = torch.linspace(s.default_t_end, s.T, 2001, dtype=torch.float64)
    assert (s.lambda_(t).diff() < 0).all()


@pytest.mark.parametrize("name,s", ALL, ids=IDS)
def test_variance_preserving(name, s):
    t = torch.linspace(s.default_t_end, s.T, 101, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)


@pytest.mark.parametrize("name,s", ALL, ids=IDS)
def test_f_and_g2_match_finite_differences(name, s):
    # Avoid the kinks of the piecewise-linear discrete schedule: evaluate mid-segment.
    t = (torch.arange(50, 950, 37, dtype=torch.float64) + 0.5) / 1000 * s.T
    d = 1e-7
    dlog_alpha = (s.log_alpha(t + d) - s.log_alpha(t - d)) / (2 * d)
    dsigma2 = (s.sigma(t + d) ** 2 - s.sigma(t - d) ** 2) / (2 * d)
    assert torch.allclose(s.f(t), dlog_alpha, rtol=1e-6, atol=1e-8)
    assert torch.allclose(s.g2(t), dsigma2 - 2 * s.f(t) * s.sigma(t) ** 2, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,s", ALL, ids=IDS)
def test_keeps_dtype_device_and_shape(name, s):
    t = torch.full((2, 3), 0.5, dtype=torch.float32)
    for fn in (s.log_alpha, s.alpha, s.sigma, s.lambda_, s.f, s.g2):
        out = fn(t)
        assert out.shape == (2, 3) and out.dtype == torch.float32
    assert s.inverse_lambda(torch.zeros(4, dtype=torch.float32)).dtype == torch.float32
    assert s.alpha(0.5).dtype == torch.float64


@pytest.mark.parametrize("name,s", [a for a in ALL if a[0] != "discrete"], ids=[i for i in IDS if i != "discrete"])
def test_stable_near_zero(name, s):
    t = torch.tensor([1e-14, 1e-11, 1e-9], dtype=torch.float64)
    sigma = s.sigma(t)
    # sigma^2 ~ beta(0) t as t -> 0: no cancellation to zero.
    assert (sigma > 0).all() and torch.isfinite(s.lambda_(t)).all()
    assert torch.allclose(sigma**2 / t, -2 * s.f(torch.zeros(1, dtype=torch.float64)).expand(3), rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(u=st.floats(0.0, 1.0), which=st.sampled_from(IDS))
def test_inverse_lambda_property(u, which):
    s = schedules()[which]
    t = s.default_t_end + u * (s.T - s.default_t_end)
    lam = s.lambda_(t)
    assert abs(s.inverse_lambda(lam).item() - t) <= 1e-10 * t


@settings(max_examples=40, deadline=None)
@given(beta_0=st.floats(0.01, 1.0), span=st.floats(0.0, 30.0), u=st.floats(0.001, 1.0))
def test_linear_vp_inverse_for_any_betas(beta_0, span, u):
    s = dd.LinearVP(beta_0, beta_0 + span)
    assert abs(s.inverse_lambda(s.lambda_(u)).item() - u) <= 1e-10 * u


def test_sde_view_consistent():
    s = dd.LinearVP()
    x = torch.randn(5, 3, dtype=torch.float64)
    eps = torch.randn(5, 3, dtype=torch.float64)
    t = 0.4
    drift, g = s.sde(x, t)
    assert torch.allclose(drift, s.f(t) * x)
    assert torch.allclose(g ** 2, s.g2(t))
    pf = s.probability_flow_drift(x, t, eps)
    rev = s.reverse_sde_drift(x, t, eps)
    assert torch.allclose(2 * (pf - drift), rev - drift)
    noisy = s.add_noise(x, t, eps)
    assert torch.allclose(noisy, s.alpha(t) * x + s.sigma(t) * eps)
    assert s.prior_sample((3, 2)).shape == (3, 2)


def test_add_noise_per_sample_times():
    s = dd.LinearVP()
    x = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = s.add_noise(x, t, torch.zeros_like(x))
    assert torch.allclose(out[:, 0], s.alpha(t))


@pytest.mark.parametrize("kwargs,match", [
    (dict(betas=torch.tensor([0.1, 1.2])), "betas must lie in"),
    (dict(betas=torch.tensor([0.1, float("nan")])), "NaN"),
    (dict(betas=torch.ones(2, 2) * 0.1), "1-D"),
    (dict(), "exactly one"),
    (dict(betas=torch.tensor([0.1, 0.2]), alphas_cumprod=torch.tensor([0.9, 0.8])), "exactly one"),
    (dict(alphas_cumprod=torch.tensor([0.9, 0.95, 0.5])), "strictly decreasing"),
    # One entry, one noun: "1 entry does not", not "1 entries do not".
    (dict(betas=torch.tensor([0.1, 1.2])), r"; 1 entry does not, the first is betas\[1\] = 1.2"),
    (dict(betas=torch.tensor([1.5, 0.1, 1.2])), "; 2 entries do not"),
    (dict(betas=torch.tensor([0.1, float("nan")])), r"\(1 entry; first"),
    # Steps that do not move lambda in float64: no time in them can be recovered from lambda.
    (dict(betas=[0.5, 5e-324], clip_lambda=None), r"step 1 \(betas\[1\] = 5e-324\) moves the half log-SNR by only 0"),
    (dict(betas=[0.5, 1e-15, 0.1], clip_lambda=None), "inverse_lambda has no meaning there"),
])
def test_discrete_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dd.DiscreteVP(**kwargs)


def test_a_step_that_barely_moves_lambda_inverts_as_exactly_as_float64_allows():
    # Issue 12: betas [0.5, 1e-12] move lambda by 1e-12 over the second step (t from 0.5 to 1), so
    # lambda's float64 round-off (~1e-16) stands for ~1e-4 of time: the inverse can do no better in t,
    # but it must return a time whose lambda is the one asked for.
    s = dd.DiscreteVP(betas=[0.5, 1e-12], clip_lambda=None)
    t = torch.linspace(0.5, 1.0, 101, dtype=torch.float64)
    lam = s.lambda_(t)
    back = s.inverse_lambda(lam)
    assert (lam.diff() < 0).all()
    assert (s.lambda_(back) - lam).abs().max() <= 4 * torch.finfo(torch.float64).eps
    assert ((back >= 0.5) & (back <= 1.0)).all() and (back - t).abs().max() < 1e-3


def test_linear_bad_input():
    with pytest.raises(ValueError, match="beta_0 must be <= beta_1"):
        dd.LinearVP(beta_0=5.0, beta_1=1.0)
    with pytest.raises(ValueError, match="T must be < 1"):
        dd.CosineVP(T=1.0)


def test_memoised_points_are_the_computed_ones_and_follow_the_memo_token():
    from diffode.compat.dpm_solver import NoiseScheduleVP
    from diffode.integrators.base import point_at_lambda
    from diffode.schedules.base import memoised

    s = dd.LinearVP()
    calls = []
    for _ in range(3):
        assert memoised(s, ("test", 0.5), lambda: calls.append(1) or s.point(0.5)) == s.point(0.5)
    assert len(calls) == 1
    assert memoised(s, ["unhashable"], lambda: 7) == 7  # computed, not stored
    assert point_at_lambda(s, 0.25) == s.point_at_lambda(0.25)
    # the compatibility schedule computes its points in a dtype it is told: one memo per dtype
    view = NoiseScheduleVP("discrete", betas=DDPM_BETAS).diffode
    with view.evaluating_in(torch.float32):
        p32 = point_at_lambda(view, 1.0)
    with view.evaluating_in(torch.float64):
        p64 = point_at_lambda(view, 1.0)
    assert p32 != p64


def test_a_memoised_grid_is_still_validated_every_time():
    s = dd.LinearVP()
    x = torch.randn(2, 3)
    model = dd.wrap(lambda x, t: torch.zeros_like(x), s)
    good = [1.0, 0.5, 1e-3]
    for _ in range(2):
        assert dd.solve(model, x, "ddim", good).times == good
        with pytest.raises(ValueError, match="strictly monotone"):
            dd.solve(model, x, "ddim", [1.0, 0.5, 0.7])
        with pytest.raises(ValueError, match="must lie in"):
            dd.solve(model, x, "ddim", [1.0, float("nan")])


def test_times_within_float32_round_off_of_the_ends_are_snapped_to_them():
    """A grid computed in float32, or mapped from float32 noise levels, misses [t_min, T] by a few
    ulps (k-diffusion's sigmas for [1e-3, 1] land at 0.00099999998 and 1.0000000025): those times
    are the ends. A time off by more than 8 float32 ulps is still refused."""
    discrete = dd.DiscreteVP(betas=DDPM_BETAS)
    ulp = torch.finfo(torch.float32).eps
    assert discrete.t_min == 1e-3 and discrete.T == 1.0
    low, high = 0.00099999998, 1.0000000025
    assert discrete.check_time("t", low) == 1e-3 and discrete.check_time("t", high) == 1.0
    assert discrete.check_time("t", 1.0 + 7 * ulp) == 1.0 and discrete.check_time("t", 0.5) == 0.5
    # Points are computed at the end itself (DiscreteVP would extrapolate past it otherwise).
    assert discrete.points([high, 0.5, low]) == discrete.points([1.0, 0.5, 1e-3])
    # A tensor comes back snapped (a new tensor), or itself when nothing needed snapping.
    times = torch.tensor([high, 0.5, low], dtype=torch.float64)
    assert discrete.check_time("times", times).tolist() == [1.0, 0.5, 1e-3]
    inside = torch.tensor([1.0, 0.5])
    assert discrete.check_time("times", inside) is inside
    for bad in (1.0 + 9 * ulp, 1e-3 * (1 - 9 * ulp)):
        with pytest.raises(ValueError, match=r"must lie in \[0.001, 1\]"):
            discrete.check_time("t", bad)
        with pytest.raises(ValueError, match=r"must lie in \[0.001, 1\]"):
            discrete.points([bad])
    # A zero t_min has no slack: a negative time has no meaning.
    with pytest.raises(ValueError, match="must lie in"):
        dd.LinearVP().check_time("t", -1e-12)


def test_a_grid_mapped_from_float32_sigmas_samples():
    """The migration guide's k-diffusion recipe with float32 sigmas: the times it maps them to lie
    a few ulps outside [1/N, 1], and sampling on them equals sampling on the float64 grid to float32
    round-off of the grid."""
    schedule = dd.DiscreteVP(betas=DDPM_BETAS)
    times64 = torch.linspace(1.0, 1e-3, 9, dtype=torch.float64)
    sigmas = torch.exp(-schedule.lambda_(times64)).float()
    times = schedule.inverse_lambda(-torch.log(sigmas.double()))
    assert times[0].item() > 1.0 or times[-1].item() < 1e-3  # the round-off this test is about
    model = dd.wrap(lambda x, t: 0.1 * x, schedule)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    solver = dd.DPMSolver(model)
    got = solver.sample(x, steps=8, skip_type=times, lower_order_final=False)
    assert solver.last_solution.times[0] == 1.0 and solver.last_solution.times[-1] == 1e-3
    expected = solver.sample(x, steps=8, skip_type=times64, lower_order_final=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_check_interval_is_the_sampling_fronts_check():
    s = dd.LinearVP()
    assert s.check_interval(1.0, 1e-3) == (1.0, 1e-3)
    assert s.check_interval(1e-3, 1.0, towards="noise") == (1e-3, 1.0)
    with pytest.raises(ValueError, match=r"sampling needs t_start > t_end, got t_start=0.1, t_end=0.5; use inverse\(\)"):
        s.check_interval(0.1, 0.5)
    with pytest.raises(ValueError, match="inverse needs t_start < t_end"):
        s.check_interval(0.5, 0.1, towards="noise")
    with pytest.raises(ValueError, match="t_end must be > 0"):
        s.check_interval(0.5, 0.0)
    with pytest.raises(ValueError, match="t_start must lie in"):
        s.check_interval(1.5, 0.1)
    with pytest.raises(ValueError, match="towards"):
        s.check_interval(0.5, 0.1, towards="up")
    # The Python API says the same (DPMSolver.sample and the command line share this check).
    model = dd.GaussianMixture([1.0], [[0.5, -1.0]], [0.3]).predictor(s)
    with pytest.raises(ValueError) as api:
        dd.DPMSolver(model).sample(torch.zeros(1, 2, dtype=torch.float64), steps=3, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError) as ours:
        s.check_interval(0.1, 0.5)
    assert str(api.value) == str(ours.value)
