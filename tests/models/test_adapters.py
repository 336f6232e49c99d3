"""Flow, k-diffusion and EDM networks: exact mixture networks through each adapter give the exact predictions."""

import math

import numpy as np
import pytest
import torch

import diffode as dd
from diffode.integrators import DPMSolverMultistep
from diffode.models import (
    EDMNoiseLevel,
    EDMPreconditioned,
    NoiseLevel,
    VESigma,
    from_edm,
    from_k_diffusion,
)
from tests.helpers import DDPM_BETAS, every_schedule, mixture2

SCHEDULES = ["linear", "discrete", "ve", "edm", "subvp", "flow", "flow_shift3"]


def _times(schedule, n=5):
    return torch.linspace(max(schedule.t_min, 1e-3 * schedule.T) + 1e-3, schedule.T, n, dtype=torch.float64).tolist()


def ve_denoiser(gm, seen=None):
    """The mixture's exact k-diffusion denoiser: D(x, sigma) = E[x0 | x0 + sigma eps = x] (VE form)."""

    def denoiser(x, sigma, **kwargs):
        if seen is not None:
            seen.append((sigma, kwargs))
        assert sigma.shape == (x.shape[0],)
        return gm.x0(x, 1.0, sigma)

    return denoiser


def edm_raw_network(gm, sigma_data, seen=None):
    """EDM's F_theta of the mixture, written from Table 1 of Karras et al.: D = c_skip x + c_out F(c_in x, c_noise)."""

    def net(x_in, c_noise, class_labels=None):
        if seen is not None:
            seen.append((c_noise, class_labels))
        sigma = torch.exp(4.0 * c_noise)                 # c_noise = log(sigma) / 4
        root = torch.sqrt(sigma**2 + sigma_data**2).reshape(-1, 1)
        x = x_in * root                                  # c_in = 1 / root
        c_skip = sigma_data**2 / root**2
        c_out = sigma.reshape(-1, 1) * sigma_data / root
        return (gm.x0(x, 1.0, sigma) - c_skip * x) / c_out

    return net


@pytest.mark.parametrize("name", SCHEDULES)
def test_k_diffusion_denoiser_gives_the_exact_predictions(name):
    schedule, gm = every_schedule()[name], mixture2()
    seen = []
    model = from_k_diffusion(ve_denoiser(gm, seen), schedule, extra_args={"cond": "c"})
    x = torch.randn(6, 4, dtype=torch.float64) * 2
    for t in _times(schedule):
        p = schedule.point(t)
        torch.testing.assert_close(model.data(x, t), gm.x0(x, p.alpha, p.sigma), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.noise(x, t), gm.eps(x, p.alpha, p.sigma), rtol=1e-9, atol=1e-10)
        sigma, kwargs = seen[-1]
        assert kwargs == {"cond": "c"}
        torch.testing.assert_close(sigma, torch.full((6,), p.sigma / p.alpha, dtype=torch.float64), rtol=1e-12, atol=0)
    t = torch.tensor(_times(schedule, 6), dtype=torch.float64)   # per-sample times
    alpha, sigma = schedule.alpha(t).reshape(-1, 1), schedule.sigma(t).reshape(-1, 1)
    torch.testing.assert_close(model.data(x, t), gm.x0(x, alpha, sigma), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_raw_network_gives_the_exact_predictions(name, sigma_data):
    schedule, gm = every_schedule()[name], mixture2()
    seen = []
    labels = torch.arange(6)
    model = from_edm(edm_raw_network(gm, sigma_data, seen), schedule, sigma_data=sigma_data, class_labels=labels)
    assert isinstance(model.time_input, EDMNoiseLevel) and model.parameterization.sigma_data == sigma_data
    x = torch.randn(6, 4, dtype=torch.float64) * 2
    for t in _times(schedule):
        p = schedule.point(t)
        torch.testing.assert_close(model.data(x, t), gm.x0(x, p.alpha, p.sigma), rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(model.noise(x, t), gm.eps(x, p.alpha, p.sigma), rtol=1e-8, atol=1e-10)
        c_noise, class_labels = seen[-1]
        assert class_labels is labels
        torch.testing.assert_close(c_noise, torch.full((6,), 0.25 * math.log(p.sigma / p.alpha), dtype=torch.float64))


@pytest.mark.parametrize("name", ["linear", "edm", "flow_shift3"])
def test_edm_preconditioned_network_is_a_denoiser(name):
    schedule, gm = every_schedule()[name], mixture2()
    seen = []
    model = from_edm(ve_denoiser(gm, seen), schedule, preconditioned=True)
    assert isinstance(model.time_input, VESigma)
    x = torch.randn(5, 4, dtype=torch.float64)
    p = schedule.point(0.5 * schedule.T)
    torch.testing.assert_close(model.data(x, 0.5 * schedule.T), gm.x0(x, p.alpha, p.sigma), rtol=1e-10, atol=1e-12)
    assert seen[-1][1] == {"class_labels": None}
    with pytest.raises(ValueError, match="sigma_data has no effect with preconditioned=True"):
        from_edm(ve_denoiser(gm), schedule, preconditioned=True, sigma_data=0.5)


def test_edm_input_scaling_keeps_the_network_dtype():
    """A half-precision network sees its input in its dtype, scaled by c_in / alpha, under per-sample times."""
    schedule = dd.LinearVP()
    seen = []

    def net(x_in, c_noise, class_labels=None):
        seen.append(x_in.dtype)
        return torch.zeros_like(x_in)

    model = from_edm(net, schedule)
    x = torch.randn(3, 4, dtype=torch.float32)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    from diffode.models.predictor import resolve_point

    model.predict_mixed(x, resolve_point(schedule, t, x), "data", torch.float16)
    assert seen == [torch.float16]


# -- flow velocity -------------------------------------------------------------------------------


def flow_network(gm, scale=1000.0, seen=None):
    """An exact flow-matching network of the mixture: u(x, timestep) = E[eps - x0 | x], sigma = timestep / scale."""

    def net(x, timestep):
        if seen is not None:
            seen.append(timestep)
        sigma = (timestep / scale).reshape(-1, 1).to(torch.float64)
        alpha = 1.0 - sigma
        return gm.eps(x, alpha, sigma) - gm.x0(x, alpha, sigma)

    return net


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_network_takes_the_noise_level_by_default(shift):
    schedule, gm = dd.FlowMatching(shift=shift), mixture2()
    seen = []
    model = dd.wrap(flow_network(gm, seen=seen), schedule, "flow")
    assert isinstance(model.time_input, NoiseLevel) and model.time_input.scale == 1000.0
    x = torch.randn(6, 4, dtype=torch.float64)
    for t in (0.01, 0.3, 0.7, 0.99):
        p = schedule.point(t)
        torch.testing.assert_close(model.data(x, t), gm.x0(x, p.alpha, p.sigma), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.noise(x, t), gm.eps(x, p.alpha, p.sigma), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(seen[-1], torch.full((6,), 1000.0 * p.sigma, dtype=torch.float64))
    # Flux-style networks take sigma itself.
    flux = dd.wrap(flow_network(gm, scale=1.0), schedule, "flow", time_input=NoiseLevel(schedule, scale=1.0))
    p = schedule.point(0.3)
    torch.testing.assert_close(flux.data(x, 0.3), gm.x0(x, p.alpha, p.sigma), rtol=1e-10, atol=1e-12)
    assert isinstance(dd.wrap(flow_network(gm), schedule, "flow", time_input="noise_level").time_input, NoiseLevel)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_velocity_is_the_probability_flow_velocity_in_sigma(shift):
    """On FlowMatching, dx/dt of the probability-flow ODE = u * dsigma/dt with u = E[eps - x0 | x]."""
    schedule, gm = dd.FlowMatching(shift=shift), mixture2()
    flow = dd.models.Flow()
    x = torch.randn(6, 4, dtype=torch.float64)
    for t in (0.05, 0.4, 0.9):
        p = schedule.point(t)
        eps = gm.eps(x, p.alpha, p.sigma)
        u = flow.from_noise(eps, x, p.alpha, p.sigma)
        dsigma_dt = shift / (1.0 + (shift - 1.0) * t) ** 2
        torch.testing.assert_close(schedule.probability_flow_drift(x, t, eps), u * dsigma_dt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpm_solver_pp_1_is_the_euler_step_of_flow_models(shift):
    """DPM-Solver++ order 1 with a flow network on FlowMatching = diffusers' FlowMatchEulerDiscreteScheduler."""
    diffusers = pytest.importorskip("diffusers")
    gm, n = mixture2(), 12
    schedule = dd.FlowMatching(shift=shift)
    net = flow_network(gm)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(0.99, 0.05, n).tolist())
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sample, states = x_T, []
    for timestep in scheduler.timesteps:
        states.append(sample)
        sample = scheduler.step(net(sample, timestep.expand(8)), timestep, sample).prev_sample
    # The scheduler's (shifted, float32) sigmas as diffode times: t = sigma / (s - (s - 1) sigma).
    sigmas = scheduler.sigmas[:-1].to(torch.float64)
    times = (sigmas / (shift - (shift - 1.0) * sigmas)).tolist()
    model = dd.wrap(net, schedule, "flow")
    solution = dd.solve(model, x_T, DPMSolverMultistep(1, "data"), times, denoise_to_zero=True,
                        return_intermediate=True)
    assert solution.nfe == n
    # diffusers rounds its state to float32 at every step; diffode keeps float64.
    torch.testing.assert_close(solution.x, sample, rtol=2e-6, atol=2e-6)
    for ours, theirs in zip(solution.intermediates, states):
        torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)
    # In float64 the step is Euler's x + (sigma_t - sigma_s) u to round-off.
    x, eps_sigmas = x_T, sigmas.tolist() + [0.0]
    for s_sigma, t_sigma in zip(eps_sigmas[:-1], eps_sigmas[1:]):
        x = x + (t_sigma - s_sigma) * net(x, torch.full((8,), 1000.0 * s_sigma, dtype=torch.float64))
    torch.testing.assert_close(solution.x, x, rtol=1e-12, atol=1e-12)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        EDMPreconditioned(sigma_data=0.0)
    with pytest.raises(TypeError, match="NoiseLevel needs the diffode NoiseSchedule"):
        NoiseLevel("flow")
    with pytest.raises(ValueError, match="'noise_level'"):
        dd.wrap(lambda x, t: x, dd.FlowMatching(), "flow", time_input="sigma")
    assert isinstance(dd.wrap(lambda x, t: x, dd.DiscreteVP(betas=DDPM_BETAS), "flow").time_input, dd.models.DiscreteTime)
