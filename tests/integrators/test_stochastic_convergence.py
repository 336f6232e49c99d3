"""Convergence of the stochastic samplers on analytic Gaussian mixtures.

* Strong order: the RMS distance to a 1024-step solution driven by the same Brownian path
  (diffode.noise.BrownianNoise, each sampler in its own Brownian clock) falls as N^-1.
* Weak order: the expectations of test functions (x, x^2, cos 2x, sin 2x), estimated with the runs
  coupled through one Brownian path per sample so that their differences have a small sampling
  error, approach those of a 512-step run at the sampler's weak order (1 for Euler-Maruyama and
  DDPM, 2 observed for SDE-DPM-Solver++ 2M/3M); and that run's expectations match the exact ones of
  the data distribution at t_end (closed form for a Gaussian mixture) within 4 standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffode as dd
from diffode import study
from diffode.integrators import PredictorCorrector, get_grid, get_integrator
from diffode.noise import BrownianNoise

pytestmark = pytest.mark.slow

SAMPLERS = [("euler_maruyama", "time_uniform"), ("ddpm", "logSNR"), ("sde_dpmpp_2m", "logSNR"),
            ("sde_dpmpp_2m_heun", "logSNR"), ("sde_dpmpp_3m", "logSNR")]


def run(model, x, name, grid, n, noise, t_end):
    times = get_grid(grid).times(model.schedule, model.schedule.T, t_end, n)
    return dd.solve(model, x, name, times, noise=noise).x


@pytest.mark.parametrize("name, grid", SAMPLERS)
def test_strong_order(name, grid):
    # Overlapping components: a trajectory rarely changes its mode between step counts, which would
    # put O(1) outliers into the pathwise error.
    model = dd.GaussianMixture([0.4, 0.6], [[0.6, -0.3], [-0.4, 0.2]], [0.5, 0.6]).predictor(dd.LinearVP())
    x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    path = BrownianNoise(torch.Generator().manual_seed(1))
    fine = run(model, x, name, grid, 1024, path, 1e-2)
    steps = [16, 32, 64, 128]
    errors = [study.rmse(run(model, x, name, grid, n, path, 1e-2), fine) for n in steps]
    slope = study.fitted_slope(steps, errors)
    assert abs(slope - get_integrator(name).strong_order) < 0.25, (errors, slope)


MIXTURE = dd.GaussianMixture([0.3, 0.7], [[1.5], [-1.0]], [0.4, 0.5])
T_END = 1e-3


def statistics(y):
    y = y[:, 0]
    return torch.stack([y, y * y, torch.cos(2 * y), torch.sin(2 * y)], 1)


def exact_statistics(schedule):
    """E[x], E[x^2], E[cos 2x], E[sin 2x] under the mixture's marginal at T_END."""
    p = schedule.point(T_END)
    w = MIXTURE.weights
    mu = MIXTURE.means[:, 0] * p.alpha
    var = (MIXTURE.stds * p.alpha) ** 2 + p.sigma ** 2
    damp = torch.exp(-2 * var)
    return torch.stack([(w * mu).sum(), (w * (mu ** 2 + var)).sum(), (w * torch.cos(2 * mu) * damp).sum(),
                        (w * torch.sin(2 * mu) * damp).sum()]).double()


# Second-order weak errors reach the sampling error (M = 20000) beyond 64 steps.
WEAK_STEPS = {"sde_dpmpp_2m": [16, 32, 64], "sde_dpmpp_2m_heun": [16, 32, 64], "sde_dpmpp_3m": [16, 32, 64]}


@pytest.mark.parametrize("name, grid", SAMPLERS)
def test_weak_order_and_the_exact_distribution(name, grid):
    schedule = dd.LinearVP()
    model = MIXTURE.predictor(schedule)
    M = 20000
    x = torch.randn(M, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    path = BrownianNoise(torch.Generator().manual_seed(1))
    fine = statistics(run(model, x, name, grid, 512, path, T_END))
    # The fine run samples the data distribution: every statistic within 4 standard errors.
    error = fine.mean(0) - exact_statistics(schedule)
    assert (error.abs() <= 4 * fine.std(0) / math.sqrt(M)).all(), error
    steps = WEAK_STEPS.get(name, [16, 32, 64, 128])
    errors, noise = [], []
    for n in steps:
        diff = statistics(run(model, x, name, grid, n, path, T_END)) - fine
        worst = diff.mean(0).abs().argmax()  # the statistic with the largest error, and its standard error
        errors.append(diff.mean(0).abs()[worst].item())
        noise.append((diff.std(0)[worst] / math.sqrt(M)).item())
    assert all(e > 2.5 * s for e, s in zip(errors, noise)), (errors, noise)  # resolved above sampling error
    slope = study.fitted_slope(steps, errors)
    assert abs(slope - get_integrator(name).weak_order) < 0.35, (errors, slope)


def test_predictor_corrector_samples_the_data_distribution():
    """score_sde's PC sampler (its VE SDE, snr 0.16, batch norms as score_sde in one dimension): at
    100 steps its statistics match the data's within 4 standard errors plus a bias of 0.03; so does
    the reverse-diffusion predictor alone (snr 0)."""
    schedule = dd.VE()
    model = MIXTURE.predictor(schedule)
    M = 20000
    x = schedule.prior_sample((M, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_statistics(schedule)
    for snr in (0.16, 0.0):
        out = dd.solve(model, x, PredictorCorrector(snr=snr, norms="batch"),
                       get_grid("time_uniform").times(schedule, 1.0, T_END, 100),
                       generator=torch.Generator().manual_seed(2))
        stats = statistics(out.x)
        error = (stats.mean(0) - exact).abs()
        assert (error <= 4 * stats.std(0) / math.sqrt(M) + 0.03).all(), (snr, error)
