"""Bad input gets a ValueError or TypeError that names the argument, what was given and what is allowed.

Each case is (callable, exception type, a regex the message must match). The regexes check the
argument's name and, where it makes sense, the value given and what is allowed.
"""

import math
import re

import numpy as np
import pytest
import torch

import diffode as dd
from diffode.integrators import DPMSolverMultistep, GivenTimes, Karras, UniformTime, get_grid, get_integrator
from diffode.solve import NonFiniteError
from tests.helpers import DDPM_BETAS, mixture2
from tests.robustness.common import FIXED_METHODS, Poisoned

LINEAR = dd.LinearVP()
DISCRETE = dd.DiscreteVP(betas=DDPM_BETAS)
MODEL = mixture2().predictor(LINEAR)
SOLVER = dd.DPMSolver(MODEL)
X = torch.randn(3, 4, dtype=torch.float64)


def net(x, t, *args):
    return torch.zeros_like(x)


class WrongShape(dd.Predictor):
    schedule = LINEAR

    def predict(self, x, point, kind):
        return torch.zeros(1, *x.shape[1:], dtype=x.dtype)


class RawTensor(dd.Predictor):
    schedule = LINEAR

    def predict(self, x, point, kind):
        return torch.zeros_like(x).numpy()


def sample(**kwargs):
    return lambda: SOLVER.sample(X, **kwargs)


SCHEDULE_CASES = {
    "beta above 1": (lambda: dd.DiscreteVP(betas=[0.1, 1.2]), ValueError, r"betas must lie in \(0, 1\).*betas\[1\] = 1\.2"),
    "beta zero": (lambda: dd.DiscreteVP(betas=[0.0, 0.2]), ValueError, r"betas must lie in \(0, 1\).*betas\[0\] = 0\.0"),
    "beta negative": (lambda: dd.DiscreteVP(betas=[0.1, -0.2]), ValueError, r"betas\[1\] = -0\.2"),
    "beta nan": (lambda: dd.DiscreteVP(betas=[0.1, math.nan]), ValueError, r"betas contains NaN or Inf.*betas\[1\] = nan"),
    "beta inf": (lambda: dd.DiscreteVP(betas=torch.tensor([0.1, math.inf])), ValueError, r"betas\[1\] = inf"),
    "betas 2-D": (lambda: dd.DiscreteVP(betas=torch.full((2, 2), 0.1)), ValueError, r"betas must be 1-D, got shape \(2, 2\)"),
    "betas 0-D": (lambda: dd.DiscreteVP(betas=0.1), ValueError, r"betas must be 1-D, got shape \(\)"),
    "betas one entry": (lambda: dd.DiscreteVP(betas=[0.1]), ValueError, r"betas needs at least 2 entries, got 1"),
    "betas strings": (lambda: dd.DiscreteVP(betas=["a", "b"]), TypeError, r"betas must be a 1-D sequence"),
    "betas complex": (lambda: dd.DiscreteVP(betas=torch.tensor([0.1j, 0.2j])), TypeError, r"betas must hold real numbers"),
    "neither": (lambda: dd.DiscreteVP(), ValueError, r"exactly one of betas= and alphas_cumprod=, got neither"),
    "both": (lambda: dd.DiscreteVP(betas=[0.1, 0.2], alphas_cumprod=[0.9, 0.8]), ValueError, r"got both"),
    "alphas_cumprod increasing": (lambda: dd.DiscreteVP(alphas_cumprod=[0.9, 0.95, 0.5]), ValueError,
                                  r"alphas_cumprod must be strictly decreasing, got alphas_cumprod\[0\] = 0\.9 <= alphas_cumprod\[1\] = 0\.95"),
    "alphas_cumprod flat": (lambda: dd.DiscreteVP(alphas_cumprod=[0.9, 0.9]), ValueError, r"strictly decreasing"),
    "alphas_cumprod one": (lambda: dd.DiscreteVP(alphas_cumprod=[1.0, 0.5]), ValueError, r"alphas_cumprod must lie in \(0, 1\)"),
    "alphas_cumprod zero": (lambda: dd.DiscreteVP(alphas_cumprod=[0.5, 0.0]), ValueError, r"alphas_cumprod\[1\] = 0\.0"),
    "alphas_cumprod nan": (lambda: dd.DiscreteVP(alphas_cumprod=[0.5, math.nan]), ValueError, r"alphas_cumprod contains NaN"),
    "clip_lambda type": (lambda: dd.DiscreteVP(betas=DDPM_BETAS, clip_lambda="x"), TypeError, r"clip_lambda must be a real number"),
    "clip_lambda nan": (lambda: dd.DiscreteVP(betas=DDPM_BETAS, clip_lambda=math.nan), ValueError, r"clip_lambda must be finite"),
    "clip_lambda too high": (lambda: dd.DiscreteVP(betas=DDPM_BETAS, clip_lambda=100.0), ValueError,
                             r"clip_lambda=100\.0 would remove all but"),
    "beta_0 > beta_1": (lambda: dd.LinearVP(beta_0=5.0, beta_1=1.0), ValueError, r"beta_0 must be <= beta_1, got beta_0=5\.0 > beta_1=1\.0"),
    "beta_0 negative": (lambda: dd.LinearVP(beta_0=-0.1), ValueError, r"beta_0 must be >= 0, got -0\.1"),
    "beta_1 zero": (lambda: dd.LinearVP(beta_0=0.0, beta_1=0.0), ValueError, r"beta_1 must be > 0, got 0\.0"),
    "beta_1 nan": (lambda: dd.LinearVP(beta_1=math.nan), ValueError, r"beta_1 must be finite, got nan"),
    "beta_1 string": (lambda: dd.LinearVP(beta_1="20"), TypeError, r"beta_1 must be a real number, got str"),
    "cosine T = 1": (lambda: dd.CosineVP(T=1.0), ValueError, r"T must be < 1"),
    "cosine T = 0": (lambda: dd.CosineVP(T=0.0), ValueError, r"T must be > 0, got 0\.0"),
    "cosine s = 0": (lambda: dd.CosineVP(s=0.0), ValueError, r"s must be > 0"),
}

TIME_CASES = {
    "point above T": (lambda: LINEAR.point(1.5), ValueError, r"t must lie in \[0, 1\] for LinearVP.*got 1\.5"),
    "point below 0": (lambda: LINEAR.point(-0.1), ValueError, r"t must lie in \[0, 1\].*got -0\.1"),
    "point nan": (lambda: LINEAR.point(math.nan), ValueError, r"t must lie in .*got nan"),
    "discrete below t_min": (lambda: DISCRETE.point(0.0), ValueError, r"t must lie in \[0\.001, 1\] for DiscreteVP"),
    "cosine above T": (lambda: dd.CosineVP().point(0.999), ValueError, r"t must lie in \[0, 0\.9946\]"),
    "points one bad": (lambda: LINEAR.points([0.5, 0.2, 2.0]), ValueError, r"t\[2\] must lie in \[0, 1\].*got 2\.0"),
    "check_time tensor": (lambda: LINEAR.check_time("t", torch.tensor([0.2, 1.3, 0.4])), ValueError,
                          r"t must lie in \[0, 1\].*t\[1\] = 1\.3$"),
    "check_time tensor nan": (lambda: LINEAR.check_time("t", torch.tensor([[0.2, math.nan]])), ValueError, r"t\[0, 1\] = nan"),
    "check_time string": (lambda: LINEAR.check_time("t_end", "0.1"), TypeError, r"t_end must be a real number, got str"),
    "point_at_lambda nan": (lambda: LINEAR.point_at_lambda(math.nan), ValueError, r"needs a half log-SNR, got lam=nan"),
    "add_noise time": (lambda: LINEAR.add_noise(X, 1.5), ValueError, r"t must lie in \[0, 1\].*got 1\.5"),
    "add_noise noise shape": (lambda: LINEAR.add_noise(X, 0.5, torch.zeros(3, 1)), ValueError,
                              r"noise must have the shape of x0, \(3, 4\), got \(3, 1\)"),
    "predictor time": (lambda: MODEL.noise(X, 2.0), ValueError, r"t must lie in \[0, 1\].*got 2\.0"),
    "predictor time shape": (lambda: MODEL.noise(X, torch.full((2,), 0.5)), ValueError,
                             r"tensor time must have shape \(\) or \(B,\) with B = 3.*got \(2,\)"),
}

WRAP_CASES = {
    "parameterization": (lambda: dd.wrap(net, LINEAR, "flux"), ValueError,
                         r"unknown parameterization 'flux'; expected one of .*'noise', .*'v'"),
    "parameterization type": (lambda: dd.wrap(net, LINEAR, 3), TypeError, r"parameterization must be a name"),
    "guidance": (lambda: dd.wrap(net, LINEAR, guidance="cfg"), ValueError,
                 r"unknown guidance 'cfg'; expected one of 'uncond', 'classifier', 'classifier-free'"),
    "cfg without uncond": (lambda: dd.wrap(net, LINEAR, guidance="classifier-free", condition=torch.ones(3, 1)),
                           ValueError, r"needs both condition= and unconditional_condition="),
    "cfg without cond": (lambda: dd.wrap(net, LINEAR, guidance="classifier-free", unconditional_condition=torch.ones(3, 1)),
                         ValueError, r"needs both condition= and unconditional_condition="),
    "cfg shapes": (lambda: dd.wrap(net, LINEAR, guidance="classifier-free", condition=torch.ones(3, 2),
                                   unconditional_condition=torch.ones(1, 2), scale=2.0),
                   ValueError, r"must have the same shape, got \(1, 2\) and \(3, 2\)"),
    "classifier without fn": (lambda: dd.wrap(net, LINEAR, guidance="classifier", condition=torch.ones(3)),
                              ValueError, r"guidance='classifier' needs classifier_fn="),
    "classifier without condition": (lambda: dd.wrap(net, LINEAR, guidance="classifier", classifier_fn=lambda *a: 0),
                                     ValueError, r"guidance='classifier' needs condition="),
    "scale nan": (lambda: dd.wrap(net, LINEAR, guidance="classifier-free", condition=torch.ones(3, 1),
                                  unconditional_condition=torch.zeros(3, 1), scale=math.nan),
                  ValueError, r"scale must be finite, got nan"),
    "scale inf": (lambda: dd.wrap(net, LINEAR, scale=math.inf), ValueError, r"scale must be finite, got inf"),
    "scale string": (lambda: dd.wrap(net, LINEAR, scale="7.5"), TypeError, r"scale must be a real number, got str"),
    "scale without guidance": (lambda: dd.wrap(net, LINEAR, scale=7.5), ValueError,
                               r"scale=7\.5 has no effect with guidance='uncond'"),
    "uncond without cfg": (lambda: dd.wrap(net, LINEAR, unconditional_condition=torch.ones(1)), ValueError,
                           r"unconditional_condition is used by guidance='classifier-free' only"),
    "classifier_fn without classifier": (lambda: dd.wrap(net, LINEAR, classifier_fn=lambda *a: 0), ValueError,
                                         r"classifier_fn is used by guidance='classifier' only"),
    "schedule type": (lambda: dd.wrap(net, "linear"), TypeError, r"schedule must be a diffode NoiseSchedule.*got str"),
    "model not callable": (lambda: dd.wrap(3, LINEAR), TypeError, r"model must be callable.*got int"),
    "model_kwargs type": (lambda: dd.wrap(net, LINEAR, model_kwargs=[1]), TypeError, r"model_kwargs must be a dict"),
    "time_input": (lambda: dd.wrap(net, LINEAR, time_input="seconds"), ValueError, r"unknown time_input 'seconds'"),
    "discrete time on linear": (lambda: dd.wrap(net, LINEAR, time_input="discrete"), ValueError, r"needs a discrete schedule"),
    "network output shape": (lambda: dd.wrap(lambda x, t: x[:, :1], LINEAR).noise(X, 0.5), ValueError,
                             r"model returned shape \(3, 1\), but its output must have the shape of x, \(3, 4\)"),
    "network output type": (lambda: dd.wrap(lambda x, t: (x,), LINEAR).noise(X, 0.5), TypeError,
                            r"model returned tuple, but it must return a tensor"),
    "cfg network batch": (lambda: dd.wrap(lambda x, t, c: x[:3], LINEAR, guidance="classifier-free",
                                          condition=torch.ones(3, 1), unconditional_condition=torch.zeros(3, 1),
                                          scale=2.0).noise(X, 0.5),
                          ValueError, r"doubled batch of 6 samples and needs an output with that batch, got \(3, 4\)"),
    "classifier not differentiable": (lambda: dd.wrap(net, LINEAR, guidance="classifier", condition=torch.ones(3),
                                                      classifier_fn=lambda x, t, c: torch.zeros(3), scale=2.0).noise(X, 0.5),
                                      TypeError, r"classifier_fn must return log p\(c\|x\) as a tensor that depends"),
}

SOLVER_CASES = {
    "model type": (lambda: dd.DPMSolver(net), TypeError, r"model must be a diffode Predictor"),
    "algorithm": (lambda: dd.DPMSolver(MODEL, algorithm="dpm++"), ValueError,
                  r"unknown algorithm 'dpm\+\+'; expected one of 'dpmsolver', 'dpmsolver\+\+'"),
    "thresholding with noise prediction": (lambda: dd.DPMSolver(MODEL, algorithm="dpmsolver",
                                                                correcting_x0_fn="dynamic_thresholding"),
                                           ValueError, r"correcting_x0_fn \(thresholding\) needs algorithm='dpmsolver\+\+'"),
    "correcting_x0_fn name": (lambda: dd.DPMSolver(MODEL, correcting_x0_fn="clip"), ValueError, r"unknown correcting_x0_fn 'clip'"),
    "correcting_xt_fn type": (lambda: dd.DPMSolver(MODEL, correcting_xt_fn=3), TypeError, r"correcting_xt_fn must be None or a callable"),
    "check_finite type": (lambda: dd.DPMSolver(MODEL, check_finite="yes"), TypeError, r"check_finite must be a bool, got str"),
    "method": (sample(method="euler"), ValueError, r"unknown method 'euler'; expected one of 'singlestep', .*'adaptive'"),
    "skip_type": (sample(skip_type="uniform"), ValueError, r"unknown skip_type 'uniform'; expected one of 'time_uniform', 'logSNR'"),
    "skip_type type": (sample(skip_type=3), TypeError, r"skip_type must be a name, a TimeGrid or a sequence of times, got int"),
    "solver_type": (sample(solver_type="heun"), ValueError, r"unknown solver_type 'heun'; expected one of 'dpmsolver', 'taylor'"),
    "solver_type adaptive": (sample(solver_type="heun", method="adaptive"), ValueError, r"unknown solver_type 'heun'"),
    "warmup": (sample(warmup="none"), ValueError, r"unknown warmup 'none'; expected one of 'lower_order', 'singlestep'"),
    "order 0": (sample(order=0), ValueError, r"order must be 1, 2 or 3, got 0"),
    "order 4": (sample(order=4), ValueError, r"order must be 1, 2 or 3, got 4"),
    "order float": (sample(order=2.0), TypeError, r"order must be an integer, got float \(2\.0\)"),
    "order adaptive": (sample(order=1, method="adaptive"), ValueError, r"order must be 2 .* or 3 .* for method='adaptive', got 1"),
    "steps 0": (sample(steps=0), ValueError, r"steps must be an integer >= 1, got 0"),
    "steps negative": (sample(steps=-5), ValueError, r"steps must be an integer >= 1, got -5"),
    "steps float": (sample(steps=10.5), TypeError, r"steps must be an integer, got float \(10\.5\)"),
    "steps bool": (sample(steps=True), TypeError, r"steps must be an integer, got a bool"),
    "t_start <= t_end": (sample(t_start=0.3, t_end=0.5), ValueError,
                         r"sampling needs t_start > t_end, got t_start=0\.3, t_end=0\.5; use inverse\(\)"),
    "t_start == t_end": (sample(t_start=0.5, t_end=0.5), ValueError, r"sampling needs t_start > t_end"),
    "inverse t_start >= t_end": (lambda: SOLVER.inverse(X, t_start=0.5, t_end=0.3), ValueError,
                                 r"inverse needs t_start < t_end, got t_start=0\.5, t_end=0\.3"),
    "t_end below t_min": (lambda: dd.DPMSolver(mixture2().predictor(DISCRETE)).sample(X, t_end=1e-4), ValueError,
                          r"t_end must lie in \[0\.001, 1\] for DiscreteVP\(N=1000, clip_lambda=-5\.1\), got 0\.0001"),
    "t_start above T": (sample(t_start=1.5), ValueError, r"t_start must lie in \[0, 1\].*got 1\.5"),
    "t_end zero": (sample(t_end=0.0), ValueError, r"t_end must be > 0 \(lambda is infinite at t = 0\), got 0\.0"),
    "t_end nan": (sample(t_end=math.nan), ValueError, r"t_end must be finite, got nan"),
    "atol zero": (sample(atol=0.0), ValueError, r"atol must be > 0, got 0\.0"),
    "rtol negative": (sample(rtol=-0.1, method="adaptive"), ValueError, r"rtol must be > 0, got -0\.1"),
    "x type": (lambda: SOLVER.sample([[0.0]]), TypeError, r"x must be a torch\.Tensor, got list"),
    "x integer": (lambda: SOLVER.sample(torch.zeros(2, 4, dtype=torch.int64)), TypeError,
                  r"x must be a floating-point tensor .* got dtype torch\.int64"),
    "x empty": (lambda: SOLVER.sample(torch.zeros(0, 4)), ValueError, r"x must have shape \(B, \.\.\.\) with B >= 1.*got \(0, 4\)"),
    "x 0-d": (lambda: SOLVER.sample(torch.tensor(1.0)), ValueError, r"x must have shape \(B, \.\.\.\).*got \(\)"),
    "model output shape": (lambda: dd.DPMSolver(WrongShape()).sample(X, steps=3), ValueError,
                           r"model's data prediction at t=1 has shape \(1, 4\) .* but x has shape \(3, 4\)"),
    "model output type": (lambda: dd.DPMSolver(RawTensor()).sample(X, steps=3), TypeError,
                          r"RawTensor\.predict must return a tensor, got ndarray"),
    "grid wrong direction": (sample(steps=3, skip_type=[0.1, 0.4, 0.7, 1.0]), ValueError,
                             r"sample\(\) needs a decreasing time grid, got one from 0\.1 to 1"),
    "grid wrong length": (sample(steps=4, skip_type=[1.0, 0.5, 0.1]), ValueError, r"spends 4 evaluations in 4 steps, but the given grid has 2"),
    "grid not monotone": (sample(steps=3, skip_type=[1.0, 0.2, 0.5, 0.1]), ValueError, r"strictly monotone"),
    "grid nan": (sample(steps=2, skip_type=[1.0, math.nan, 0.1]), ValueError, r"NaN or Inf"),
    "grid out of range": (lambda: dd.DPMSolver(mixture2().predictor(DISCRETE)).sample(X, steps=2, skip_type=[1.0, 0.5, 1e-4]),
                          ValueError, r"times must lie in \[0\.001, 1\].*times\[2\] = 0\.0001"),
    "grid zero": (sample(steps=2, skip_type=[1.0, 0.5, 0.0]), ValueError, r"times\[2\] = 0\.0 has an infinite half log-SNR"),
    "grid 2-D": (sample(steps=2, skip_type=torch.ones(2, 2)), ValueError, r"given time grid must be 1-D, got shape \(2, 2\)"),
}

LOOP_CASES = {
    "solve model": (lambda: dd.solve(net, X, "dpmpp_2m", [1.0, 0.5]), TypeError, r"model must be a diffode Predictor"),
    "solve integrator name": (lambda: dd.solve(MODEL, X, "dpmpp_9m", [1.0, 0.5]), ValueError,
                              r"unknown integrator 'dpmpp_9m'; registered: .*dpmpp_2m"),
    "solve integrator type": (lambda: dd.solve(MODEL, X, 3, [1.0, 0.5]), TypeError, r"expected an integrator name or instance, got int"),
    "solve times one": (lambda: dd.solve(MODEL, X, "ddim", [1.0]), ValueError, r"times must be 1-D with at least 2 entries"),
    "solve times type": (lambda: dd.solve(MODEL, X, "ddim", "1.0"), TypeError, r"times must be a 1-D sequence"),
    "solve orders length": (lambda: dd.solve(MODEL, X, "dpmpp_2m", [1.0, 0.5, 0.1], orders=[1]), ValueError,
                            r"orders has 1 entries for 2 steps"),
    "solve orders too high": (lambda: dd.solve(MODEL, X, "dpmpp_2m", [1.0, 0.5, 0.1], orders=[1, 3]), ValueError,
                              r"orders\[1\] = 3 exceeds the order of DPMSolverMultistep\(order=2"),
    "solve orders zero": (lambda: dd.solve(MODEL, X, "dpmpp_2m", [1.0, 0.5, 0.1], orders=[1, 0]), ValueError,
                          r"orders\[1\] must be an integer >= 1, got 0"),
    "solve correcting_xt_fn": (lambda: dd.solve(MODEL, X, "ddim", [1.0, 0.5], correcting_xt_fn="clip"), TypeError,
                               r"correcting_xt_fn must be None or a callable, got str"),
    "solve correcting_xt_fn output": (lambda: dd.solve(MODEL, X, "ddim", [1.0, 0.5], correcting_xt_fn=lambda x, t, i: x[:1]),
                                      ValueError, r"correcting_xt_fn must return a tensor of the shape of x, \(3, 4\), got \(1, 4\)"),
    "adaptive no error estimate": (lambda: dd.solve_adaptive(MODEL, X, "dpmpp_2m", 1.0, 1e-3), ValueError,
                                   r"has no error estimate; use an embedded pair"),
    "adaptive equal times": (lambda: dd.solve_adaptive(MODEL, X, "dpmpp_adaptive_23", 0.5, 0.5), ValueError,
                             r"t_start and t_end must differ, got 0\.5 for both"),
    "adaptive t_end": (lambda: dd.solve_adaptive(MODEL, X, "dpmpp_adaptive_23", 1.0, 0.0), ValueError,
                       r"infinite half log-SNR"),
    "adaptive controller type": (lambda: dd.solve_adaptive(MODEL, X, "dpmpp_adaptive_23", 1.0, 1e-3, controller={}),
                                 TypeError, r"controller must be an AdaptiveController, got dict"),
    "controller atol": (lambda: dd.AdaptiveController(atol=0.0), ValueError, r"atol must be > 0, got 0\.0"),
    "controller rtol": (lambda: dd.AdaptiveController(rtol=-1.0), ValueError, r"rtol must be > 0, got -1\.0"),
    "controller theta": (lambda: dd.AdaptiveController(theta=2.0), ValueError, r"theta must lie in \(0, 1\], got 2\.0"),
    "controller max_nfe": (lambda: dd.AdaptiveController(max_nfe=0), ValueError, r"max_nfe must be an integer >= 1, got 0"),
    "integrator order": (lambda: DPMSolverMultistep(5), ValueError, r"order must be 1, 2, 3 or 4 for DPMSolverMultistep, got 5"),
    "integrator predict": (lambda: DPMSolverMultistep(2, "score"), ValueError, r"unknown predict 'score'; expected one of 'data', 'noise'"),
    "grid n": (lambda: UniformTime().times(LINEAR, 1.0, 0.1, 0), ValueError, r"n must be an integer >= 1, got 0"),
    "grid t_end zero": (lambda: get_grid("logSNR").times(LINEAR, 1.0, 0.0, 5), ValueError, r"a time grid needs t > 0"),
    "grid t_start above T": (lambda: Karras().times(LINEAR, 2.0, 0.1, 5), ValueError, r"t_start must lie in \[0, 1\].*got 2\.0"),
    "karras rho": (lambda: Karras(rho=0.0), ValueError, r"rho must be > 0, got 0\.0"),
    "given grid one time": (lambda: GivenTimes([1.0]), ValueError, r"at least 2 times, got 1"),
}

CASES = {**SCHEDULE_CASES, **TIME_CASES, **WRAP_CASES, **SOLVER_CASES, **LOOP_CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_a_clear_error(name):
    fn, kind, pattern = CASES[name]
    with pytest.raises(Exception) as info:
        fn()
    # Exactly the advertised kind: never an IndexError, AssertionError or RuntimeError from inside.
    assert type(info.value) is kind, f"{type(info.value).__name__}: {info.value}"
    assert re.search(pattern, str(info.value)), str(info.value)


def test_numpy_numbers_are_accepted_where_numbers_are():
    out = SOLVER.sample(X, steps=np.int64(4), order=np.int32(2), t_end=np.float32(0.01))
    assert torch.isfinite(out).all()
    assert dd.DPMSolver(MODEL).sample(X, steps=3, skip_type=np.array([1.0, 0.5, 0.1, 0.01])).shape == X.shape


# -- non-finite model output --------------------------------------------------------------------


@pytest.mark.parametrize("method", [*FIXED_METHODS, "adaptive"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_output_is_reported_at_its_step(method, value):
    model = Poisoned(mixture2().predictor(LINEAR), samples=[1, 4], below=0.5, value=value)
    solver = dd.DPMSolver(model, check_finite=True)
    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(NonFiniteError) as info:
        solver.sample(x, steps=12, order=3, method=method)
    error = info.value
    assert isinstance(error, ValueError)
    first_bad = next(t for t in model.times if t < 0.5)
    assert error.samples == [1, 4] and error.t == pytest.approx(first_bad, abs=1e-12)
    assert error.what.startswith("model output")
    # Detected at the end of the step where it appeared: at most the rest of that step's stages ran.
    assert len(model.times) - model.times.index(first_bad) - 1 < 3
    assert f"step {error.step}" in str(error) and "batch indices [1, 4]" in str(error)
    if method == "multistep":
        assert error.step == len(model.times)  # one evaluation per step


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_non_finite_output_without_the_check_costs_nothing_and_stays_in_its_samples(method):
    model = Poisoned(mixture2().predictor(LINEAR), samples=[2], below=0.5)
    out = dd.DPMSolver(model).sample(torch.randn(4, 4, dtype=torch.float64), steps=10, order=2, method=method)
    bad = ~torch.isfinite(out).all(dim=1)
    assert bad.tolist() == [False, False, True, False]


def test_adaptive_always_detects_non_finite_steps():
    """The adaptive loop reads its error on the host anyway: a NaN is caught even unchecked."""
    model = Poisoned(mixture2().predictor(LINEAR), samples=[0], below=0.5)
    with pytest.raises(NonFiniteError, match=r"non-finite (lower-order )?state at step \d+ .*batch indices \[0\]"):
        dd.DPMSolver(model).sample(torch.randn(3, 4, dtype=torch.float64), method="adaptive", order=2)


def test_non_finite_initial_state():
    x = torch.randn(3, 4, dtype=torch.float64)
    x[2, 1] = math.inf
    with pytest.raises(NonFiniteError, match=r"non-finite state in the initial state .*batch indices \[2\]") as info:
        dd.DPMSolver(MODEL, check_finite=True).sample(x, steps=5)
    assert info.value.step == 0 and info.value.t == 1.0


def test_non_finite_state_from_the_correction():
    def fn(x, t, step):
        if step == 3:
            x = x.clone()
            x[0] = math.nan
        return x

    with pytest.raises(NonFiniteError, match=r"non-finite state at step 3 .*batch indices \[0\]"):
        dd.DPMSolver(MODEL, correcting_xt_fn=fn, check_finite=True).sample(X, steps=6)


def test_non_finite_final_denoising():
    model = Poisoned(mixture2().predictor(LINEAR), samples=[1], below=0.0011)
    with pytest.raises(NonFiniteError, match=r"at step 6 \(t=0\.001\).*batch indices \[1\]"):
        dd.DPMSolver(model, check_finite=True).sample(X, steps=5, denoise_to_zero=True)


def test_non_finite_error_is_exported_and_a_value_error():
    assert issubclass(NonFiniteError, ValueError)
    error = NonFiniteError(3, 0.25, list(range(40)), "state")
    assert error.samples == list(range(40)) and "40 sample(s)" in str(error) and "..." in str(error)


def test_integrator_names_and_grid_objects_are_accepted():
    assert isinstance(get_integrator("dpmpp_3m"), DPMSolverMultistep)
    assert dd.solve(MODEL, X, "dpmpp_3m", [1.0, 0.6, 0.3, 0.1]).nfe == 3
    grid = Karras(rho=5.0).times(LINEAR, 1.0, 1e-3, 4)
    assert dd.DPMSolver(MODEL).sample(X, steps=4, skip_type=GivenTimes(grid)).shape == X.shape
