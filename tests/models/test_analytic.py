import math

import pytest
import torch

import diffode as dd
from tests.helpers import every_schedule, gaussian, mixture2, mixture4


@pytest.mark.parametrize("sname", sorted(every_schedule()))
@pytest.mark.parametrize("make", [mixture2, mixture4])
def test_eps_is_minus_sigma_times_autograd_score(sname, make):
    s = every_schedule()[sname]
    gm = make()
    x = torch.randn(5, *gm.event_shape, dtype=torch.float64, requires_grad=True)
    for q in (0.01, 0.3, 0.9):
        t = s.t_min + q * (s.T - s.t_min)
        (score,) = torch.autograd.grad(gm.log_prob(x, t, s).sum(), x)
        p = s.point(t)
        assert torch.allclose(gm.eps(x.detach(), p.alpha, p.sigma), -p.sigma * score, rtol=1e-10, atol=1e-12)
        assert torch.allclose(gm.score(x.detach(), t, s), score, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sname", sorted(every_schedule()))
def test_x0_consistent_with_eps(sname):
    s = every_schedule()[sname]
    gm = mixture2()
    x = torch.randn(6, 4, dtype=torch.float64)
    p = s.point(s.t_min + 0.2 * (s.T - s.t_min))
    assert torch.allclose(gm.x0(x, p.alpha, p.sigma), (x - p.sigma * gm.eps(x, p.alpha, p.sigma)) / p.alpha, atol=1e-12)


@pytest.mark.parametrize("sname", sorted(every_schedule()))
def test_single_gaussian_log_prob_is_the_closed_form_marginal(sname):
    # x_t = alpha x_0 + sigma eps with x_0 ~ N(mu, s^2 I): x_t ~ N(alpha mu, (alpha^2 s^2 + sigma^2) I), any path.
    s = every_schedule()[sname]
    gm = gaussian()
    x = torch.randn(7, 3, dtype=torch.float64) * 2
    for q in (0.0, 0.4, 1.0):
        t = max(s.t_min + q * (s.T - s.t_min), s.default_t_end)
        a, sg = s.alpha(t).item(), s.sigma(t).item()
        var = a**2 * gm.stds[0].item() ** 2 + sg**2
        exact = torch.distributions.Normal(a * gm.means[0], math.sqrt(var)).log_prob(x).sum(-1)
        assert torch.allclose(gm.log_prob(x, t, s), exact, rtol=1e-13, atol=1e-13)


def test_image_shaped_mixture_and_log_prob_normalised():
    means = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    gm = dd.GaussianMixture([0.2, 0.3, 0.5], means, [0.5, 0.7, 0.9])
    s = dd.LinearVP()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert gm.predictor(s).noise(x, 0.5).shape == x.shape
    # In 1-D the density integrates to one.
    g1 = dd.GaussianMixture([0.4, 0.6], [[-1.0], [2.0]], [0.3, 0.5])
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64).reshape(-1, 1)
    mass = torch.trapezoid(g1.log_prob(grid, 0.3, s).exp(), grid[:, 0])
    assert abs(mass.item() - 1) < 1e-8


def test_samples_have_the_mixture_moments():
    gm = dd.GaussianMixture([0.25, 0.75], [[-2.0], [2.0]], [0.5, 0.5])
    x = gm.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - 1.0) < 0.02
    assert abs(x.var().item() - (0.25 + 4 - 1.0)) < 0.05


def test_bad_mixture_arguments():
    with pytest.raises(ValueError, match="one per mean"):
        dd.GaussianMixture([1.0, 2.0], [[0.0]], [1.0])
    with pytest.raises(ValueError, match="positive"):
        dd.GaussianMixture([1.0], [[0.0]], [-1.0])
    with pytest.raises(ValueError, match="single component"):
        mixture2().pf_solution(torch.zeros(1, 4), 1.0, 0.5, dd.LinearVP())
