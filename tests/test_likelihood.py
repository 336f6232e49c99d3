"""diffode.likelihood against exact log densities: the analytic Gaussian mixture's marginals are known in
closed form at every time, under every schedule.

The ODE starts at t_end > 0, so what it computes is log p_{t_end}(x), the density of the marginal at
t_end; that is what these tests compare with. With the SDE's prior at T the result also carries the
prior's mismatch with the true marginal at T (a few 1e-3 nats per dimension on VP paths); the tests
that measure the ODE and divergence errors alone pass the exact marginal at T as the prior, and one
test checks that the difference is exactly that mismatch.
"""

import math

import pytest
import torch

import diffode as dd
from diffode.likelihood import bits_per_dim, log_likelihood
from diffode.sde import SDE
from tests.helpers import every_schedule, gaussian, mixture2

TOL = dict(rtol=1e-6, atol=1e-6)


def data_at(mixture, schedule, t_end, n=4, seed=1):
    """Samples of the marginal at t_end (so the densities are those of typical points)."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, generator=g)
    return schedule.add_noise(x0, t_end, torch.randn(x0.shape, generator=g, dtype=torch.float64))


def exact_prior(mixture, schedule):
    return lambda z: mixture.log_prob(z, schedule.T, schedule)


@pytest.mark.parametrize("name,t_end", [
    ("linear", 1e-5), ("ve", 1e-5),
    pytest.param("subvp", 1e-5, marks=pytest.mark.slow), pytest.param("edm", 0.002, marks=pytest.mark.slow),
    pytest.param("flow_shift3", 1e-5, marks=pytest.mark.slow), pytest.param("discrete", 1e-3, marks=pytest.mark.slow),
    pytest.param("cosine", 1e-5, marks=pytest.mark.slow), pytest.param("flow", 1e-5, marks=pytest.mark.slow),
])
def test_exact_divergence_matches_the_mixture_density(name, t_end):
    s = every_schedule()[name]
    mixture = mixture2()
    x = data_at(mixture, s, t_end)
    result = log_likelihood(mixture.predictor(s), x, t_end=t_end, prior_logp=exact_prior(mixture, s), **TOL)
    exact = mixture.log_prob(x, t_end, s)
    per_dim = (result.log_p - exact).abs() / 4
    assert per_dim.max() < 1e-4, per_dim
    assert result.stderr is None and result.log_p_probes is None and result.dims == 4
    # z is where the probability-flow ODE takes x: the reference solver brings it back to x
    back = dd.solve_reference(mixture.predictor(s), result.z, s.T, t_end, rtol=1e-9, atol=1e-9).x
    assert torch.allclose(back, x, rtol=1e-4, atol=1e-4 * s.prior_std())


def test_the_sde_prior_adds_exactly_its_mismatch_with_the_marginal_at_T():
    s = dd.LinearVP()
    mixture = mixture2()
    x = data_at(mixture, s, 1e-5)
    model = mixture.predictor(s)
    with_sde_prior = log_likelihood(model, x, t_end=1e-5, **TOL)
    with_exact = log_likelihood(model, x, t_end=1e-5, prior_logp=exact_prior(mixture, s), **TOL)
    assert torch.equal(with_sde_prior.prior_log_p, SDE(s).prior_logp(with_sde_prior.z))
    mismatch = SDE(s).prior_logp(with_exact.z) - mixture.log_prob(with_exact.z, s.T, s)
    assert torch.allclose(with_sde_prior.log_p - with_exact.log_p, mismatch, rtol=1e-9, atol=1e-9)
    assert mismatch.abs().max() > 1e-3  # the mismatch is real: a prior is an approximation of p_T


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_mean_is_within_three_standard_errors(probe):
    s = dd.LinearVP()
    mixture = mixture2()
    x = data_at(mixture, s, 1e-5)
    result = log_likelihood(mixture.predictor(s), x, t_end=1e-5, divergence="hutchinson", probe=probe, n_probes=16,
                            generator=torch.Generator().manual_seed(0), prior_logp=exact_prior(mixture, s), **TOL)
    exact = mixture.log_prob(x, 1e-5, s)
    assert result.log_p_probes.shape == (16, 4)
    assert (result.stderr > 0).all()  # the mixture's Jacobian is not diagonal: probes disagree
    assert ((result.log_p - exact).abs() <= 3 * result.stderr).all(), (result.log_p - exact, result.stderr)
    assert torch.allclose(result.log_p, result.log_p_probes.mean(0))


@pytest.mark.parametrize("name", ["linear", pytest.param("ve", marks=pytest.mark.slow)])
def test_single_gaussian_matches_the_closed_form(name):
    # For N(mu, s^2 I) the probability-flow map is affine, z = alpha_T mu + sqrt(v_T / v_end)(x - alpha_end mu),
    # with v = alpha^2 s^2 + sigma^2, so log p_end(x) = log prior(z) + (D/2) log(v_T / v_end) in closed form.
    s = every_schedule()[name]
    g = gaussian()
    t_end = 1e-5
    x = data_at(g, s, t_end)
    result = log_likelihood(g.predictor(s), x, t_end=t_end, **TOL)
    z = g.pf_solution(x, t_end, s.T, s)
    p_end, p_T = s.point(t_end), s.point(s.T)
    v_end, v_T = (p.alpha**2 * g.stds[0].item() ** 2 + p.sigma**2 for p in (p_end, p_T))
    closed = SDE(s).prior_logp(z) + 1.5 * math.log(v_T / v_end)
    assert ((result.log_p - closed).abs() / 3).max() < 1e-4
    assert torch.allclose(result.z, z, rtol=1e-5, atol=1e-5)
    # Rademacher probes see J = c I exactly: every probe gives the exact trace
    hutch = log_likelihood(g.predictor(s), x, t_end=t_end, divergence="hutchinson", n_probes=3, **TOL)
    assert torch.allclose(hutch.log_p_probes, result.log_p.expand(3, -1), rtol=1e-6, atol=1e-6)


def test_bits_per_dim_offsets():
    log_p = torch.tensor([-3000.0, 1200.0], dtype=torch.float64)
    d = 3 * 32 * 32
    # score_sde: bpd = -log p / (D ln 2) + log2(d inverse_scaler / dx) + 8
    assert torch.allclose(bits_per_dim(log_p, d, data_scale=1.0), -log_p / (d * math.log(2)) + 8.0)
    assert torch.allclose(bits_per_dim(log_p, d, data_scale=2.0), -log_p / (d * math.log(2)) + 7.0)
    # the dequantised uniform density on [0, 1)^D (log p = 0, data_scale = 1) costs exactly 8 bits per dimension
    assert bits_per_dim(torch.zeros(1), 5, data_scale=1.0).item() == 8.0


def test_bits_per_dim_of_a_likelihood():
    s = dd.LinearVP()
    g = gaussian()
    x = data_at(g, s, 1e-3)
    result = log_likelihood(g.predictor(s), x, t_end=1e-3, **TOL)
    assert torch.equal(result.bits_per_dim(data_scale=2.0), bits_per_dim(result.log_p, 3, data_scale=2.0))


def test_float32_input_and_dtype_argument():
    s = dd.LinearVP()
    g = gaussian()
    x = data_at(g, s, 1e-3).float()
    r32 = log_likelihood(g.predictor(s), x, t_end=1e-3)
    r64 = log_likelihood(g.predictor(s), x, t_end=1e-3, dtype=torch.float64)
    assert r32.log_p.dtype == torch.float32 and r64.log_p.dtype == torch.float64
    assert torch.allclose(r32.log_p.double(), r64.log_p, rtol=1e-4, atol=1e-3)


def test_bad_arguments():
    s = dd.LinearVP()
    model = gaussian().predictor(s)
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="model must be a diffode Predictor"):
        log_likelihood(lambda x, t: x, x)
    with pytest.raises(ValueError, match="unknown divergence"):
        log_likelihood(model, x, divergence="trace")
    with pytest.raises(ValueError, match="unknown probe"):
        log_likelihood(model, x, divergence="hutchinson", probe="normal")
    with pytest.raises(ValueError, match="needs divergence='hutchinson'"):
        log_likelihood(model, x, n_probes=4)
    with pytest.raises(ValueError, match="t_end must lie in"):
        log_likelihood(model, x, t_end=0.0)
    with pytest.raises(ValueError, match="t_end must lie in"):
        log_likelihood(model, x, t_end=1.5)
    with pytest.raises(ValueError, match="rtol must be > 0"):
        log_likelihood(model, x, rtol=0.0)
    with pytest.raises(ValueError, match="data_scale must be > 0"):
        bits_per_dim(torch.zeros(1), 3, data_scale=0.0)
    with pytest.raises(TypeError, match="prior_logp must be a callable"):
        log_likelihood(model, x, prior_logp=1.0)


@pytest.mark.parametrize("parameterization", ["noise", "data"])
def test_a_wrapped_network_gives_the_analytic_models_result(parameterization):
    s = dd.LinearVP()
    g = gaussian()
    x = data_at(g, s, 1e-3)
    wrapped = dd.wrap(g.network(s, parameterization), s, parameterization)
    a = log_likelihood(wrapped, x, t_end=1e-3)
    b = log_likelihood(g.predictor(s), x, t_end=1e-3)
    assert torch.allclose(a.log_p, b.log_p, rtol=1e-10, atol=1e-10) and a.nfe == b.nfe
