"""Sampling on a CUDA device: agreement with the CPU, half precision, no host-device synchronisation.

Every test carries the ``cuda`` marker; ``tests/conftest.py`` skips them without a GPU.
``scripts/gpu_check.py`` runs them with a summary on a GPU machine.
"""

import contextlib
import math

import pytest
import torch

import diffode as dd
from diffode.solve import NonFiniteError
from tests.helpers import mixture2
from tests.robustness.common import (
    ALGORITHMS,
    FIXED_METHODS,
    GAUSSIAN_MAX_BOUND,
    HALF,
    MIXTURE_P99_BOUND,
    MIXTURE_RMS_BOUND,
    PRECISION_CASES,
    SKIP_TYPES,
    Poisoned,
    precision_errors,
    schedule,
)

pytestmark = pytest.mark.cuda
METHODS = (*FIXED_METHODS, "adaptive")


def network_model(schedule_name="discrete", parameterization="noise"):
    s = schedule(schedule_name)
    return dd.wrap(mixture2().network(s, parameterization), s, parameterization, time_input="continuous")


def cfg_model(device):
    s = schedule("discrete")
    base = mixture2().network(s, "noise")
    return dd.wrap(lambda x, t, c: base(x, t) + c.to(x.dtype), s, guidance="classifier-free", scale=2.0,
                   condition=torch.full((4, 1), 0.02, device=device),
                   unconditional_condition=torch.zeros(4, 1, device=device), time_input="continuous")


@contextlib.contextmanager
def no_sync_allowed():
    """Any synchronising CUDA call raises while the block runs."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_cuda_matches_the_cpu(method, algorithm, dtype):
    model = network_model("discrete", "v")
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4}[dtype]
    for order in ((2, 3) if method == "adaptive" else (1, 2, 3)):
        kwargs = dict(steps=10, order=order, method=method, atol=1e-5, rtol=1e-5)
        cpu = dd.DPMSolver(model, algorithm=algorithm).sample(x, **kwargs)
        gpu = dd.DPMSolver(model, algorithm=algorithm).sample(x.cuda(), **kwargs)
        assert gpu.device.type == "cuda" and gpu.dtype == dtype
        # The adaptive method may take a different step where an error estimate is within round-off
        # of 1 on the two devices: compare it at its tolerance.
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol if method != "adaptive" else 1e-3,
                                   atol=tol if method != "adaptive" else 1e-3)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_every_method_on_cuda(method, dtype):
    model = network_model("discrete", "noise")
    x = torch.randn(4, 4, device="cuda").to(dtype)
    for order in ((2, 3) if method == "adaptive" else (1, 2, 3)):
        for skip_type in SKIP_TYPES:
            out, states = dd.DPMSolver(model, check_finite=True).sample(
                x, steps=12, order=order, method=method, skip_type=skip_type, return_intermediate=True,
                denoise_to_zero=True)
            assert out.dtype == dtype and out.device.type == "cuda" and torch.isfinite(out).all()
            assert all(v.dtype == dtype and v.device.type == "cuda" for v in states)


@pytest.mark.parametrize("case", sorted(PRECISION_CASES))
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_error_on_cuda_at_input_precision(dtype, case):
    """The float16/bfloat16 bounds of test_precision.py, with the state on the GPU and the float64
    reference on the CPU."""
    gaussian = precision_errors(dtype, case, mixture="gaussian", device="cuda")
    assert gaussian["dtype_ok"] == 1.0 and gaussian["max"] <= GAUSSIAN_MAX_BOUND[case], gaussian
    mixture = precision_errors(dtype, case, mixture="mixture2", device="cuda")
    assert mixture["p99"] <= MIXTURE_P99_BOUND[case] and mixture["rms"] <= MIXTURE_RMS_BOUND, mixture


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_grid_loop_never_synchronises(method, dtype):
    """``torch.cuda.set_sync_debug_mode("error")`` makes every synchronising call raise."""
    models = {"analytic": mixture2().predictor(schedule("discrete")), "network": network_model("discrete", "v"),
              "discrete-time network": dd.wrap(lambda x, t: torch.tanh(x) * (1 + t[:, None] / 1000), schedule("discrete")),
              "cfg": cfg_model("cuda")}
    x = torch.randn(4, 4, device="cuda").to(dtype)
    for name, model in models.items():
        for order in (1, 2, 3):
            kwargs = dict(steps=8, order=order, method=method, skip_type="logSNR", denoise_to_zero=True)
            dd.DPMSolver(model).sample(x, **kwargs)  # warm-up: caches of schedule arrays on the device
            with no_sync_allowed():
                out = dd.DPMSolver(model).sample(x, **kwargs)
            assert torch.isfinite(out).all(), name


def test_sync_guard_catches_the_synchronising_options():
    """The guard can fail: check_finite (one sync per step) and the adaptive loop do synchronise."""
    model = network_model()
    x = torch.randn(4, 4, device="cuda")
    dd.DPMSolver(model, check_finite=True).sample(x, steps=4)
    with pytest.raises(RuntimeError, match="synchroniz"), no_sync_allowed():
        dd.DPMSolver(model, check_finite=True).sample(x, steps=4)
    with pytest.raises(RuntimeError, match="synchroniz"), no_sync_allowed():
        dd.DPMSolver(model).sample(x, method="adaptive", order=2)


def test_dynamic_thresholding_on_cuda():
    model = mixture2().predictor(schedule("discrete"))
    x = torch.randn(4, 4, device="cuda")
    out = dd.DPMSolver(model, correcting_x0_fn="dynamic_thresholding").sample(x, steps=10, denoise_to_zero=True)
    assert out.device.type == "cuda" and out.abs().max().item() <= 1.0 + 1e-6


def test_check_finite_on_cuda_names_step_and_samples():
    model = Poisoned(mixture2().predictor(schedule("linear")), samples=[3], below=0.4)
    with pytest.raises(NonFiniteError) as info:
        dd.DPMSolver(model, check_finite=True).sample(torch.randn(5, 4, device="cuda"), steps=10)
    assert info.value.samples == [3] and info.value.t < 0.4


def test_determinism_and_batch_independence_on_cuda():
    model = network_model("linear", "data")
    x = torch.randn(6, 4, device="cuda")
    for method in FIXED_METHODS:
        first = dd.DPMSolver(model).sample(x, steps=9, order=3, method=method)
        assert torch.equal(first, dd.DPMSolver(model).sample(x, steps=9, order=3, method=method))
        others = torch.randn(3, 4, device="cuda")
        others[0] = math.nan
        mixed = dd.DPMSolver(model).sample(torch.cat([x[:3], others]), steps=9, order=3, method=method)
        torch.testing.assert_close(mixed[:3], first[:3], rtol=1e-5, atol=1e-5)


def test_schedules_and_time_inputs_live_on_the_device():
    for name in ("discrete", "linear", "cosine", "discrete-cosine"):
        s = schedule(name)
        t = torch.rand(5, device="cuda", dtype=torch.float64) * (s.T - s.t_min) + s.t_min
        for fn in (s.log_alpha, s.sigma, s.lambda_, s.f, s.g2):
            assert fn(t).device.type == "cuda"
        assert torch.allclose(s.inverse_lambda(s.lambda_(t)), t, rtol=1e-9)
        assert s.add_noise(torch.zeros(5, 3, device="cuda"), t).device.type == "cuda"
