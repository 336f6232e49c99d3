"""The fixed-grid JAX sampler against the PyTorch path: same plans, same numbers."""

import functools

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import diffode as dd  # noqa: E402
import diffode.jax as djax  # noqa: E402
from diffode.integrators import DPMSolverMultistep, get_integrator  # noqa: E402
from diffode.integrators.registry import INTEGRATORS  # noqa: E402
from diffode.schedules import EDM, VE, CosineVP, DiscreteVP, FlowMatching, LinearVP, SubVP  # noqa: E402

from tests.jax.conftest import mixture_network, noise, torch_mixture_model  # noqa: E402

FIXED = [n for n in INTEGRATORS if not get_integrator(n).stochastic and not get_integrator(n).adaptive]
STOCHASTIC = [n for n in INTEGRATORS if get_integrator(n).stochastic]
SCHEDULES = {
    "linear": LinearVP(),
    "cosine": CosineVP(),
    "discrete": DiscreteVP(betas=torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)),
    "subvp": SubVP(),
    "ve": VE(),
    "edm": EDM(),
    "flow": FlowMatching(shift=3.0),
}
GRIDS = ["logSNR", "time_uniform", "time_quadratic", "karras"]


@functools.lru_cache(maxsize=None)
def jax_model(schedule_name, parameterization="noise"):
    """One JAX model per schedule and parameterization, so their samplers share compiled loops."""
    schedule = SCHEDULES[schedule_name]
    return djax.wrap(mixture_network(schedule, parameterization), schedule, parameterization, time_input="continuous")


def relative(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300))


def tolerance(model, x, integrator, plan):
    """1e-12, or ten times the PyTorch result's own change under a relative 1e-15 change of x where
    the problem magnifies round-off more than that (DEIS's extrapolation on the flow path near t = 1)."""
    a = dd.solve(model, x, integrator, plan).x
    b = dd.solve(model, x * (1 + 1e-15), integrator, plan).x
    return max(1e-12, 10 * relative(b, a))


def compare(schedule_name, name, grid="logSNR", parameterization="noise", nfe=10, **options):
    schedule = SCHEDULES[schedule_name]
    integrator = get_integrator(name)
    plan = integrator.plan(schedule, nfe, grid=grid, **options)
    x = noise(schedule)
    model = torch_mixture_model(schedule, parameterization)
    expected = dd.solve(model, x, integrator, plan).x
    sampler = djax.Sampler(jax_model(schedule_name, parameterization), integrator, plan)
    got = sampler(jnp.asarray(x.numpy()))
    assert got.dtype == jnp.float64 and got.shape == x.shape
    assert sampler.nfe == plan.nfe
    return relative(got, expected.numpy()), tolerance(model, x, integrator, plan)


@pytest.mark.parametrize("name", FIXED)
def test_every_fixed_grid_integrator_matches_torch_in_float64(name):
    error, tol = compare("linear", name)
    assert error <= tol


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("grid", GRIDS)
def test_every_schedule_and_grid_matches_torch(schedule_name, grid):
    error, tol = compare(schedule_name, "dpmpp_3m", grid)
    assert error <= tol


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("grid", GRIDS)
def test_every_integrator_schedule_and_grid_matches_torch(name, schedule_name, grid):
    error, tol = compare(schedule_name, name, grid)
    assert error <= tol


@pytest.mark.parametrize("parameterization", ["noise", "data", "v", "score", "flow"])
def test_parameterizations(parameterization):
    error, tol = compare("linear", "dpmpp_2m", parameterization=parameterization)
    assert error <= tol


@pytest.mark.parametrize("options", [dict(denoise_to_zero=True), dict(lower_order_final=False), dict(nfe=7)])
def test_plan_options(options):
    error, tol = compare("discrete", "dpmpp_3s", **options)
    assert error <= tol


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpm_3s", "unipc_bh2_3", "heun"])
def test_float32_matches_torch(name):
    schedule = SCHEDULES["linear"]
    integrator = get_integrator(name)
    plan = integrator.plan(schedule, 10)
    x = noise(schedule, dtype=torch.float32)
    expected = dd.solve(torch_mixture_model(schedule), x, integrator, plan).x
    got = djax.Sampler(jax_model("linear"), integrator, plan)(jnp.asarray(x.numpy()))
    assert got.dtype == jnp.float32
    assert relative(got, expected.numpy()) <= 1e-5


def test_vmap_over_noise_batches_and_guidance_scales():
    schedule = SCHEDULES["linear"]
    sampler = djax.Sampler(jax_model("linear"), "dpmpp_2m", 8)
    xs = jnp.asarray(np.stack([noise(schedule, seed=s).numpy() for s in range(4)]))
    batched = jax.vmap(sampler)(xs)
    for i in range(4):
        assert relative(batched[i], sampler(xs[i])) <= 1e-13
    scales = jnp.asarray([0.5, 1.0, 1.5])
    per_scale = jax.vmap(sampler, in_axes=(None, 0))(xs[0], scales)
    for i in range(3):
        assert relative(per_scale[i], sampler(xs[0], scales[i])) <= 1e-13
    assert relative(per_scale[0], per_scale[2]) > 1e-3  # the argument reaches the network


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_integrators_are_refused(name):
    schedule = SCHEDULES["linear"]
    with pytest.raises(djax.NotRepresentableError, match="stochastic"):
        djax.Sampler(jax_model("linear"), name, get_integrator(name).plan(schedule, 6))


def test_adaptive_integrators_are_sent_to_the_adaptive_sampler():
    with pytest.raises(ValueError, match="chooses its own steps"):
        djax.Sampler(jax_model("linear"), "dpmpp_adaptive_23", 6)


class Thresholded(DPMSolverMultistep):
    """A nonlinear variant: clips the state after each step."""

    def _step(self, model, x, s, t, state, order):
        update = super()._step(model, x, s, t, state, order)
        return type(update)(update.x.clamp(-0.5, 0.5), update.history)


def test_a_nonlinear_integrator_is_refused():
    with pytest.raises(djax.NotRepresentableError, match="not linear"):
        djax.Sampler(jax_model("linear"), Thresholded(2), 6)


def test_network_output_of_the_wrong_shape():
    model = djax.wrap(lambda x, t: x[:, :1], SCHEDULES["linear"], time_input="continuous")
    sampler = djax.Sampler(model, "ddim", 3)
    with pytest.raises(ValueError, match="shape of x"):
        sampler(jnp.zeros((2, 2)))


def test_bad_arguments():
    with pytest.raises(TypeError, match="diffode.jax.Model"):
        djax.Sampler(object(), "ddim", 3)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        djax.wrap(lambda x, t: x, object())
    with pytest.raises(TypeError, match="callable"):
        djax.wrap(3, SCHEDULES["linear"])
