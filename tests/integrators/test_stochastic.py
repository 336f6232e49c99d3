"""Stochastic samplers and noise sources: reproducibility per seed, the contract, the exact relations
between the SDE solvers and their ODE counterparts, and agreement with diffusers' sde-dpmsolver++
and diffode.sde's discretisation given the same draws (float64, to round-off)."""

from __future__ import annotations

import math

import pytest
import torch

import diffode as dd
from diffode import study
from diffode.integrators import (DDPM, DPMSolverMultistep, EulerMaruyama, INTEGRATORS, PredictorCorrector,
                                 SDEDPMSolverMultistep, get_integrator)
from diffode.integrators.sde_dpm import stretched_point
from diffode.models import Predictor
from diffode.noise import BrownianNoise, NoiseSource, noise_source, zero_noise
from diffode.schedules.base import TimePoint

STOCHASTIC = sorted(n for n in INTEGRATORS if get_integrator(n).stochastic)


def mixture(schedule=None):
    schedule = schedule or dd.LinearVP()
    m = dd.GaussianMixture([0.3, 0.7], [[1.0, -0.5, 0.25], [-1.5, 0.5, 1.0]], [0.3, 0.6])
    return m.predictor(schedule)


def x_T(batch=5, seed=1):
    return torch.randn(batch, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def close(a, b, tol=1e-12):
    return torch.allclose(a, b, rtol=tol, atol=tol)


class Recording(NoiseSource):
    """Draws from a generator and keeps every draw, to feed the same draws to another implementation."""

    def __init__(self, seed=0):
        self.inner = NoiseSource.from_generator(torch.Generator().manual_seed(seed))
        self.draws = []

    def normal(self, like, interval=None):
        z = self.inner.normal(like, interval)
        self.draws.append(z)
        return z


class Replay(NoiseSource):
    def __init__(self, draws):
        self.draws = list(draws)

    def normal(self, like, interval=None):
        return self.draws.pop(0)


# -- noise sources and reproducibility ---------------------------------------------------------------

def test_registry_lists_the_samplers():
    assert set(STOCHASTIC) == {"euler_maruyama", "pc_langevin", "ddpm", "sde_dpmpp_1", "sde_dpmpp_2m",
                               "sde_dpmpp_2m_heun", "sde_dpmpp_3m"}
    assert not any(get_integrator(n).stochastic for n in ("ddim", "dpmpp_2m", "dpm_3s", "dpmpp_adaptive_23"))


@pytest.mark.parametrize("name", STOCHASTIC)
def test_per_sample_seeds_make_results_independent_of_the_batch(name):
    """Sample i depends on x_T[i] and seeds[i] only: bit for bit in any batch, order or size."""
    model = mixture()
    x, seeds = x_T(6), [11, 22, 33, 44, 55, 66]
    plan = get_integrator(name).plan(model.schedule, 12, grid="time_uniform")
    full = dd.solve(model, x, name, plan, seeds=seeds).x
    for idx in ([3], [4, 1], [5, 0, 2, 3, 1, 4]):
        part = dd.solve(model, x[idx], name, plan, seeds=[seeds[i] for i in idx]).x
        assert torch.equal(part, full[idx]), idx
    again = dd.solve(model, x, name, plan, seeds=seeds).x
    assert torch.equal(again, full)
    other = dd.solve(model, x, name, plan, seeds=[11, 22, 33, 44, 55, 67]).x
    assert torch.equal(other[:5], full[:5]) and not torch.equal(other[5], full[5])


def test_generator_reproducible_and_fronts_agree():
    model = mixture()
    x = x_T()
    plan = get_integrator("sde_dpmpp_2m").plan(model.schedule, 10)
    a = dd.solve(model, x, "sde_dpmpp_2m", plan, generator=torch.Generator().manual_seed(3)).x
    b = dd.solve(model, x, "sde_dpmpp_2m", plan, generator=torch.Generator().manual_seed(3)).x
    c = dd.solve(model, x, "sde_dpmpp_2m", plan, generator=torch.Generator().manual_seed(4)).x
    assert torch.equal(a, b) and not torch.equal(a, c)
    seeds = [1, 2, 3, 4, 5]
    direct = dd.solve(model, x, "sde_dpmpp_2m", plan, seeds=seeds).x
    via_study = study.sample_nfe(model, x, "sde_dpmpp_2m", 10, grid="logSNR", seeds=seeds).x
    via_solver = dd.DPMSolver(model).sample(x, steps=10, skip_type="logSNR", integrator="sde_dpmpp_2m", seeds=seeds)
    assert torch.equal(direct, via_study) and torch.equal(direct, via_solver)


def test_noise_source_arguments():
    assert noise_source(seeds=[1]).__class__.__name__ == "_SeededNoise"
    assert noise_source(noise=zero_noise) is zero_noise
    assert type(noise_source()) is NoiseSource
    with pytest.raises(ValueError, match="at most one of noise, generator and seeds"):
        noise_source(zero_noise, seeds=[1])
    with pytest.raises(TypeError, match="NoiseSource"):
        noise_source(noise=torch.Generator())
    with pytest.raises(TypeError, match="one per sample"):
        NoiseSource.from_seeds(3)
    with pytest.raises(ValueError, match=">= 0"):
        NoiseSource.from_seeds([1, -2])
    with pytest.raises(TypeError, match="torch.Generator"):
        NoiseSource.from_generator(0)
    model = mixture()
    with pytest.raises(ValueError, match="3 seeds for a batch of 5"):
        dd.solve(model, x_T(), "ddpm", [1.0, 0.5], seeds=[1, 2, 3])
    # Draws are float32 for float32 states, float64 for float64 ones.
    z32 = NoiseSource.from_seeds([5]).normal(torch.zeros(1, 4))
    z64 = NoiseSource.from_seeds([5]).normal(torch.zeros(1, 4, dtype=torch.float64))
    assert z32.dtype == torch.float32 and z64.dtype == torch.float64
    assert torch.equal(zero_noise.normal(z64), torch.zeros_like(z64))


def test_stochastic_steps_need_a_noise_source_and_sample_downwards():
    model = mixture()
    s, t = model.schedule.point(0.8), model.schedule.point(0.5)
    integrator = get_integrator("sde_dpmpp_2m")
    with pytest.raises(TypeError, match="stochastic sampler: pass noise="):
        integrator.step(model, x_T(), s, t, integrator.init())
    with pytest.raises(ValueError, match="from noise to data only"):
        integrator.step(model, x_T(), t, s, integrator.init(), noise=zero_noise)
    with pytest.raises(ValueError, match="from noise to data only"):
        dd.DPMSolver(model).inverse(x_T(), steps=4, integrator="ddpm")
    # ODE integrators take a noise source and ignore it.
    ode = get_integrator("dpmpp_2m")
    a = ode.step(model, x_T(), s, t, ode.init(), 1).x
    b = ode.step(model, x_T(), s, t, ode.init(), 1, noise=NoiseSource.from_seeds([0] * 5)).x
    assert torch.equal(a, b)
    plan = ode.plan(model.schedule, 6)
    assert torch.equal(dd.solve(model, x_T(), ode, plan).x, dd.solve(model, x_T(), ode, plan, seeds=[9] * 5).x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eta=-0.1), ">= 0"), (dict(eta=1.5), r"\[0, 1\]"), (dict(eta="a"), "real number")])
def test_bad_eta(kwargs, match):
    for cls in (DDPM, SDEDPMSolverMultistep):
        with pytest.raises((TypeError, ValueError), match=match):
            cls(**kwargs)


def test_bad_corrector_arguments():
    with pytest.raises(ValueError, match="snr must be >= 0"):
        PredictorCorrector(snr=-1.0)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 0"):
        PredictorCorrector(n_steps=-1)
    with pytest.raises(ValueError, match="unknown norms 'mean'"):
        PredictorCorrector(norms="mean")


def test_pc_plan_counts_the_corrector():
    model = mixture()
    pc = PredictorCorrector(n_steps=2)
    plan = pc.plan(model.schedule, 12)
    assert plan.steps == 4 and plan.nfe == 12
    solution = dd.solve(model, x_T(), pc, plan, seeds=[0] * 5)
    assert solution.nfe == 12
    assert PredictorCorrector(n_steps=0).plan(model.schedule, 5).steps == 5


# -- noise off: the exact relation to the ODE solvers ------------------------------------------------

def test_ddpm_eta_0_is_ddim():
    model = mixture()
    times = model.schedule.points(torch.linspace(1.0, 1e-3, 16, dtype=torch.float64))
    times = [p.t for p in times]
    got = dd.solve(model, x_T(), DDPM(eta=0.0), times, seeds=[0] * 5).x
    assert close(got, dd.solve(model, x_T(), "ddim", times).x, 1e-13)


def test_ddpm_is_sde_dpmpp_1_draw_for_draw():
    model = mixture()
    plan = get_integrator("ddpm").plan(model.schedule, 15)
    a = dd.solve(model, x_T(), "ddpm", plan, seeds=[1, 2, 3, 4, 5]).x
    b = dd.solve(model, x_T(), "sde_dpmpp_1", plan, seeds=[1, 2, 3, 4, 5]).x
    assert close(a, b, 1e-13)


@pytest.mark.parametrize("order, solver_type", [(1, "dpmsolver"), (2, "dpmsolver"), (2, "taylor"), (3, "taylor"),
                                                (3, "dpmsolver")])
def test_sde_dpmpp_eta_0_is_dpmpp(order, solver_type):
    """eta = 0 is DPM-Solver++ of the same order and variant (and draws nothing)."""
    model = mixture()
    sde = SDEDPMSolverMultistep(order, solver_type, eta=0.0)
    plan = sde.plan(model.schedule, 12, grid="logSNR")
    ode = DPMSolverMultistep(order, "data", solver_type)
    assert plan == ode.plan(model.schedule, 12, grid="logSNR")

    class Refusing(NoiseSource):
        def normal(self, like, interval=None):
            raise AssertionError("eta=0 draws nothing")

    assert close(dd.solve(model, x_T(), sde, plan, noise=Refusing()).x, dd.solve(model, x_T(), ode, plan).x, 1e-13)


class Stretched(Predictor):
    """The model seen on a grid whose half log-SNR is stretched by ``factor`` about 0, alpha kept:
    it answers at the point of the true schedule with lambda / factor."""

    def __init__(self, model, factor, points):
        self.model, self.schedule, self.factor, self.points = model, model.schedule, factor, points

    def predict(self, x, point, kind):
        (real,) = [p for p in self.points if abs(p.lam * self.factor - point.lam) < 1e-12]
        return self.model.predict(x, real, kind)


@pytest.mark.parametrize("order, solver_type", [(1, "dpmsolver"), (2, "dpmsolver"), (2, "taylor"), (3, "taylor")])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_sde_dpmpp_without_noise_is_dpmpp_with_stretched_steps(order, solver_type, eta):
    """With zero noise, SDE-DPM-Solver++ is DPM-Solver++ on the grid lambda -> (1 + eta) lambda with the
    same alphas: the probability-flow ODE run (1 + eta) times as fast in lambda. (Not DPM-Solver++ on
    the same grid: eta = 1 doubles every h.)"""
    model = mixture()
    sde = SDEDPMSolverMultistep(order, solver_type, eta=eta)
    plan = sde.plan(model.schedule, 10, grid="logSNR")
    points = model.schedule.points(plan.times)
    got = dd.solve(model, x_T(), sde, plan, noise=zero_noise).x

    factor = 1.0 + eta
    fake = [TimePoint(p.t, factor * p.lam, p.alpha, p.alpha * math.exp(-factor * p.lam)) for p in points]
    stretched_model = Stretched(model, factor, points)
    ode = DPMSolverMultistep(order, "data", solver_type)
    x, state = x_T(), ode.init()
    for i, k in enumerate(plan.orders):
        result = ode.step(stretched_model, x, fake[i], fake[i + 1], state, k)
        x, state = result.x, result.state
    assert close(got, x, 1e-12)
    same_grid = dd.solve(model, x_T(), ode, plan).x
    assert (got - same_grid).abs().max() > 1e-3  # the other statement is false


def test_stretched_point():
    s, t = dd.LinearVP().point(0.7), dd.LinearVP().point(0.4)
    u = stretched_point(s, t, 2.0)
    assert u.lam == pytest.approx(2 * t.lam - s.lam) and u.alpha == t.alpha
    assert u.sigma == pytest.approx(t.alpha * math.exp(-u.lam))


def test_euler_maruyama_without_noise_is_euler_on_the_reverse_drift():
    """Zero noise: Euler's method on dx/dt = f x + g^2/sigma eps (the schedule's own reverse-SDE drift)."""
    model = mixture()
    times = torch.linspace(1.0, 1e-2, 30, dtype=torch.float64).tolist()
    got = dd.solve(model, x_T(), "euler_maruyama", times, noise=zero_noise).x
    x = x_T()
    for s, t in zip(times, times[1:]):
        x = x + (t - s) * model.schedule.reverse_sde_drift(x, s, model.noise(x, s))
    assert close(got, x, 1e-12)


def test_predictor_corrector_without_noise_is_the_deterministic_predictor():
    """Zero noise: the corrector's step (scaled by the noise's norm) vanishes, and the predictor is
    x_t = (2 - a) x + G^2 score."""
    model = mixture(dd.VE())
    times = [1.0, 0.7, 0.3, 0.1]
    got = dd.solve(model, x_T(), PredictorCorrector(snr=0.3, n_steps=2), times, noise=zero_noise)
    alone = dd.solve(model, x_T(), PredictorCorrector(n_steps=0), times, noise=zero_noise).x
    x = x_T()
    sigma = lambda t: 0.01 * 5000.0 ** t  # noqa: E731  (VE: sigma_min (sigma_max / sigma_min)^t)
    for s, t in zip(times, times[1:]):
        score = -model.noise(x, s) / sigma(s)
        x = x + (sigma(s) ** 2 - sigma(t) ** 2) * score  # VE: a = 1, G^2 = sigma_s^2 - sigma_t^2
    assert close(got.x, x) and close(alone, x) and got.nfe == 9


# -- the same draws as other implementations ----------------------------------------------------------

@pytest.mark.parametrize("norms", ["sample", "batch"])
def test_reverse_diffusion_predictor_is_score_sdes_on_its_grid(norms):
    """On score_sde's VE grid t_i = i / (N - 1), a PC step is diffode.sde's reverse discretisation
    (SMLD's) with the Langevin corrector of score_sde (per-sample norms), given the same draws."""
    N = 6
    sde = dd.sde.VESDE(N=N)
    model = mixture(sde.schedule)
    times = [i / (N - 1) for i in range(N - 1, 0, -1)]
    snr = 0.2
    recording = Recording()
    got = dd.solve(model, x_T(), PredictorCorrector(snr=snr, norms=norms), times, noise=recording).x
    draws = iter(recording.draws)
    reverse = sde.reverse(model)
    x = x_T()
    for t in times[:-1]:
        score = reverse.score_fn(x, t)
        z = next(draws)
        norm = lambda v: v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, 1)  # noqa: E731
        if norms == "batch":  # score_sde: the batch means of the norms
            step = 2 * (snr * norm(z).mean() / norm(score).mean()) ** 2
        else:
            step = 2 * (snr * norm(z) / norm(score)) ** 2
        x = x + step * score + (2 * step).sqrt() * z
        f, G = reverse.discretize(x, t)
        x = x - f + G * next(draws)
    assert close(got, x, 1e-11)


@pytest.mark.parametrize("order, solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun")])
def test_sde_dpmpp_matches_diffusers(order, solver_type):
    """diffusers' sde-dpmsolver++ updates, fed the same data predictions and noise in float64, agree to round-off."""
    pytest.importorskip("diffusers")
    from diffusers import DPMSolverMultistepScheduler

    model = mixture()
    n = 12
    integrator = SDEDPMSolverMultistep(order, {"midpoint": "dpmsolver", "heun": "taylor"}[solver_type])
    plan = integrator.plan(model.schedule, n, grid="logSNR", lower_order_final=False)
    points = model.schedule.points(plan.times)
    reference = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=order,
                                            solver_type=solver_type)
    reference.set_timesteps(n)
    reference.sigmas = torch.tensor([math.exp(-p.lam) for p in points], dtype=torch.float64)
    recording = Recording(7)
    x_ours = x_ref = x_T()
    state, outputs = integrator.init(), []
    for i, k in enumerate(plan.orders):
        result = integrator.step(model, x_ours, points[i], points[i + 1], state, k, noise=recording)
        x_ours, state = result.x, result.state
        outputs.append(model.data(x_ref, points[i].t))
        reference._step_index = i
        if k == 1:
            x_ref = reference.dpm_solver_first_order_update(outputs[-1], sample=x_ref, noise=recording.draws[i])
        else:
            x_ref = reference.multistep_dpm_solver_second_order_update(outputs[-2:], sample=x_ref,
                                                                       noise=recording.draws[i])
    assert plan.orders[1:] == (order,) * (n - 1)
    assert close(x_ours, x_ref, 1e-12)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_zero_length_step_is_the_identity(name):
    model = mixture()
    integrator = get_integrator(name)
    p = model.schedule.point(0.5)
    step = integrator.step(model, x_T(), p, p, integrator.init(), integrator.order, noise=NoiseSource.from_seeds([0] * 5))
    assert torch.equal(step.x, x_T())


def test_brownian_noise_is_one_path():
    """Coarse increments are sums of fine ones; bridge points have the right variance."""
    like = torch.zeros(20000, 1, dtype=torch.float64)
    path = BrownianNoise(torch.Generator().manual_seed(0))
    fine = [path.normal(like, (0.1 * i, 0.1 * (i + 1))) * math.sqrt(0.1) for i in range(10)]
    coarse = path.normal(like, (0.0, 1.0))
    assert close(coarse, sum(fine), 1e-12)
    mid = path.value(0.05, like) - path.value(0.0, like)  # a new point, from the bridge
    assert abs(mid.var().item() - 0.05) < 0.05 * 5 / math.sqrt(like.shape[0] / 2)
    assert path.value(0.3 + 1e-15, like) is path.value(0.3, like)
    with pytest.raises(ValueError, match="needs the interval"):
        path.normal(like)
    with pytest.raises(ValueError, match="not Brownian increments|needs the interval"):
        dd.solve(mixture(), x_T(), "pc_langevin", [1.0, 0.5], noise=BrownianNoise(torch.Generator()))


def test_half_precision_and_intermediates():
    model = mixture()
    x = x_T().half()
    sol = dd.solve(model, x, "sde_dpmpp_2m", get_integrator("sde_dpmpp_2m").plan(model.schedule, 8), seeds=[0] * 5,
                   return_intermediate=True)
    assert sol.x.dtype == torch.float16 and torch.isfinite(sol.x).all() and len(sol.intermediates) == 9
    assert isinstance(get_integrator("euler_maruyama"), EulerMaruyama)


@pytest.mark.cuda
@pytest.mark.parametrize("draw_device", ["cpu", "cuda"])
def test_seeded_sampling_on_cuda(draw_device):
    """A CUDA state with CPU or CUDA generators: results stay per-sample and, with CPU generators,
    equal the CPU run up to the device's arithmetic."""
    model = mixture()
    x = x_T(4)
    plan = get_integrator("sde_dpmpp_2m").plan(model.schedule, 10)

    def run(x, seeds, device):
        noise = NoiseSource.from_seeds(seeds, device=draw_device)
        return dd.solve(model, x.to(device), "sde_dpmpp_2m", plan, noise=noise).x

    full = run(x, [1, 2, 3, 4], "cuda")
    assert full.device.type == "cuda"
    assert torch.equal(run(x[2:], [3, 4], "cuda"), full[2:])
    if draw_device == "cpu":
        assert torch.allclose(full.cpu(), run(x, [1, 2, 3, 4], "cpu"), rtol=1e-10, atol=1e-10)
    generator = torch.Generator("cuda").manual_seed(0)
    out = dd.solve(model, x.cuda(), "ddpm", plan, generator=generator).x
    assert out.device.type == "cuda" and torch.isfinite(out).all()


def test_diffusers_scheduler_refuses_stochastic_samplers():
    pytest.importorskip("diffusers")
    from diffode.integrations.diffusers import DiffodeScheduler, supported_integrators

    assert not set(STOCHASTIC) & set(supported_integrators())
    with pytest.raises(ValueError, match="stochastic sampler, which DiffodeScheduler does not run"):
        DiffodeScheduler(integrator="sde_dpmpp_2m")


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_sde_dpmpp_2m_matches_k_diffusion(solver_type, eta):
    """k-diffusion's sample_dpmpp_2m_sde (its eta included) on a VE path, where its sigma coordinates
    are the state's, fed the same draws: equal to round-off in float64."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    try:
        from benchmarks._common import load_kdiffusion_sampling
    finally:
        sys.path.pop(0)
    sampling = load_kdiffusion_sampling()
    if sampling is None:
        pytest.skip("k-diffusion is not installed")
    model = mixture(dd.VE())
    integrator = SDEDPMSolverMultistep(2, {"midpoint": "dpmsolver", "heun": "taylor"}[solver_type], eta=eta)
    plan = integrator.plan(model.schedule, 10, lower_order_final=False)
    points = model.schedule.points(plan.times)
    x = x_T() * 50.0
    recording = Recording(3)
    ours = dd.solve(model, x, integrator, plan, noise=recording).x

    sigmas = torch.tensor([p.sigma for p in points], dtype=torch.float64)

    def denoiser(x, sigma):
        (point,) = [p for p in points if abs(p.sigma - float(sigma[0])) <= 1e-12 * p.sigma]
        return model.data(x, point)

    draws = iter(recording.draws)
    theirs = sampling.sample_dpmpp_2m_sde(denoiser, x, sigmas, disable=True, eta=eta, solver_type=solver_type,
                                          noise_sampler=lambda sigma, sigma_next: next(draws))
    assert close(ours, theirs, 1e-11)
