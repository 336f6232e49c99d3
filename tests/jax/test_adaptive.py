"""The adaptive JAX sampler against diffode.solve_adaptive: the same steps and the same numbers."""

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import diffode as dd  # noqa: E402
import diffode.jax as djax  # noqa: E402
from diffode.controllers import AdaptiveController  # noqa: E402
from diffode.schedules import EDM, VE, CosineVP, DiscreteVP, FlowMatching, LinearVP, SubVP  # noqa: E402

from tests.jax.conftest import mixture_network, noise, torch_mixture_model  # noqa: E402


def relative(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def run_both(schedule, name, dtype=torch.float64, controller=None):
    x = noise(schedule, dtype=dtype)
    solution = dd.solve_adaptive(torch_mixture_model(schedule), x, name, schedule.T, schedule.default_t_end, controller)
    model = djax.wrap(mixture_network(schedule), schedule, time_input="continuous")
    sampler = djax.AdaptiveSampler(model, name, controller=controller)
    out, nfe, accepted, rejected, status = sampler.run(jnp.asarray(x.numpy()))
    assert int(status) == 0
    assert (int(nfe), int(accepted), int(rejected)) == (solution.nfe, solution.n_accepted, solution.n_rejected)
    return out, solution


# Each sampler compiles its loop once (several seconds on a small CPU): the default run checks one
# pair on one schedule; the slow run covers both pairs in both forms on every kind of schedule.
SCHEDULES = [LinearVP(), DiscreteVP(betas=torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)), CosineVP(), SubVP(),
             FlowMatching(shift=3.0)]
PAIRS = ["dpmpp_adaptive_23", "dpmpp_adaptive_12", "dpm_adaptive_23", "dpm_adaptive_12"]


def test_matches_solve_adaptive_in_float64():
    out, solution = run_both(LinearVP(), "dpmpp_adaptive_23")
    assert relative(out, solution.x.numpy()) <= 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("name", PAIRS)
def test_every_pair_and_schedule_matches_solve_adaptive(schedule, name):
    out, solution = run_both(schedule, name)
    # The noise-form pairs on the flow path reach 1e-11: there the PyTorch result itself moves by
    # 9.5e-12 when theta changes by a relative 1e-15 (the step sizes' last bits, which the two
    # backends round independently in E**(-1/p)).
    assert relative(out, solution.x.numpy()) <= (2e-11 if name.startswith("dpm_") else 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [VE(), EDM()], ids=repr)
@pytest.mark.parametrize("name", PAIRS)
def test_matches_solve_adaptive_on_ill_conditioned_runs(schedule, name):
    # Three long steps from sigma = 50 or 80. The first step's error estimate is about 1e-7, the
    # difference of two solutions that agree to 7 digits, so its own round-off is about 1e-9
    # relative (measured on EDM: E = 1.38025262e-7 on one backend, 1.38025260e-7 on the other), and
    # the next step size inherits it through E**(-1/p): the results then differ by 1.7e-9. The
    # steps taken (accepted, rejected, NFE) must still be the same, which run_both checks.
    out, solution = run_both(schedule, name)
    assert relative(out, solution.x.numpy()) <= 1e-8


def test_float32():
    schedule = LinearVP()
    out, solution = run_both(schedule, "dpmpp_adaptive_23", dtype=torch.float32)
    assert out.dtype == jnp.float32
    assert relative(out, solution.x.numpy()) <= 1e-5


def test_vmap_and_failures():
    schedule = LinearVP()
    model = djax.wrap(mixture_network(schedule), schedule, time_input="continuous")
    sampler = djax.AdaptiveSampler(model, "dpmpp_adaptive_12", denoise_to_zero=True)
    xs = jnp.asarray(np.stack([noise(schedule, seed=s).numpy() for s in range(3)]))
    out, nfe, accepted, _, status = jax.vmap(sampler.run)(xs)
    assert np.all(np.asarray(status) == 0)
    for i in range(3):  # each sample alone on the PyTorch path: its own steps, the same result
        solution = dd.solve_adaptive(torch_mixture_model(schedule), torch.tensor(np.asarray(xs[i])),
                                     "dpmpp_adaptive_12", schedule.T, schedule.default_t_end, denoise_to_zero=True)
        assert (int(nfe[i]), int(accepted[i])) == (solution.nfe, solution.n_accepted)
        assert relative(out[i], solution.x.numpy()) <= 1e-12
    tight = djax.AdaptiveSampler(model, "dpmpp_adaptive_12", controller=AdaptiveController(atol=1e-12, rtol=1e-12,
                                                                                          max_nfe=30))
    with pytest.raises(RuntimeError, match="max_nfe=30"):
        tight(xs[0])
    assert int(tight.run(xs[0])[4]) == 1  # the status says why, without raising


def test_bad_arguments():
    schedule = LinearVP()
    model = djax.wrap(mixture_network(schedule), schedule, time_input="continuous")
    with pytest.raises(ValueError, match="no error estimate"):
        djax.AdaptiveSampler(model, "dpmpp_2m")
    with pytest.raises(ValueError, match="must differ"):
        djax.AdaptiveSampler(model, t_start=0.5, t_end=0.5)
    with pytest.raises(TypeError, match="AdaptiveController"):
        djax.AdaptiveSampler(model, controller=3)


def test_a_schedule_without_jax_formulas_is_refused():
    from diffode.schedules.base import VPSchedule

    class Bisected(VPSchedule):  # the base class bisects lambda with torch: no JAX formula
        def log_alpha(self, t):
            return -0.5 * t * t

        def f(self, t):
            return -t

    schedule = Bisected()
    model = djax.wrap(lambda x, t: x, schedule, time_input="continuous")
    with pytest.raises(djax.NotRepresentableError, match="does not evaluate on JAX arrays"):
        djax.AdaptiveSampler(model, t_start=1.0, t_end=0.1)
