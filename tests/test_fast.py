"""PlanSampler: the fixed-plan loop compiled as one graph or captured as one CUDA graph equals solve.

Compiling is slow on a small CPU, so the compile tests use a tiny network, NFE 6, and the
``aot_eager`` backend (Dynamo's full-graph capture and AOT autograd's functional trace, which is
where a graph break or an in-place write into an input would show; no C++ is generated). One test
(slow) compiles with the default inductor backend. The CUDA-graph tests need a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

import diffode as dd
from diffode import PlanSampler
from diffode.integrators import INTEGRATORS, get_integrator
from diffode.models.builtin import load_model
from diffode.noise import NoiseSource

SCHEDULE = dd.DiscreteVP(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
NFE = 6
FAST = {"backend": "aot_eager"}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Tiny(torch.nn.Module):
    """A two-layer convolutional noise predictor with random weights (sample-wise, like a real network)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.a = torch.nn.Conv2d(2, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, 2, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)

    def forward(self, x, t):
        return self.b(torch.tanh(self.a(x) + (t / 1000.0).reshape(-1, 1, 1, 1).to(x.dtype)))


def tiny_model(dtype=torch.float64, device="cpu"):
    return dd.wrap(Tiny().to(device, dtype), SCHEDULE, "noise")


def batch(dtype=torch.float64, device="cpu", n=3):
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device, dtype)


def draws_kw(integrator, n=3):
    return {"seeds": list(range(10, 10 + n))} if integrator.stochastic else {}


# -- compiled: one graph, the numbers of solve ------------------------------------------------------

COMPILED = ["dpmpp_2m", "sde_dpmpp_2m"]
COMPILED_SLOW = ["dpmpp_3m", "dpm_2m", "dpmpp_2s", "dpmpp_3s", "unipc_bh2_2", "ddpm", "deis_tab2", "heun"]


@pytest.mark.parametrize("name", COMPILED + [pytest.param(n, marks=pytest.mark.slow) for n in COMPILED_SLOW])
def test_compiled_full_graph_equals_solve(name):
    integrator = get_integrator(name)
    model, x = tiny_model(), batch()
    plan = integrator.plan(SCHEDULE, NFE)
    sampler = PlanSampler(model, integrator, plan, x, mode="compile", compile_options=FAST)
    kw = draws_kw(integrator)
    expected = dd.solve(model, x, integrator, plan, **kw).x
    x_before = x.clone()
    out = sampler(x, **kw)
    assert sampler.nfe == plan.nfe
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, x_before)
    # A second batch runs the same graph on other values (the plan is not baked into one input).
    other = torch.randn_like(x)
    torch.testing.assert_close(sampler(other, **kw), dd.solve(model, other, integrator, plan, **kw).x,
                               rtol=1e-12, atol=1e-12)


class Breaking(Tiny):
    """A network that reads a tensor on the host: a graph break (and a synchronisation on a GPU)."""

    def forward(self, x, t):
        if float(x.abs().max()) > 1e6:
            return x
        return super().forward(x, t)


def test_a_graph_break_is_an_error_not_a_slow_path():
    model = dd.wrap(Breaking().double(), SCHEDULE, "noise")
    x = batch()
    integrator = get_integrator("dpmpp_2m")
    sampler = PlanSampler(model, integrator, integrator.plan(SCHEDULE, NFE), x, mode="compile", compile_options=FAST)
    with pytest.raises(Exception, match="(?i)graph break|unsupported|data-dependent|item"):
        sampler(x)


@pytest.mark.slow
def test_inductor_compiled_loop_equals_solve_to_round_off():
    # The default backend generates fused kernels: equal to float32 round-off, not bit for bit. The
    # round-off of the loop is measured as eager float32 against eager float64 (same weights, same
    # start): the compiled float32 loop must be as close to the float64 one as that.
    integrator = get_integrator("dpmpp_3m")
    model, x = tiny_model(torch.float32), batch(torch.float32)
    plan = integrator.plan(SCHEDULE, NFE)
    sampler = PlanSampler(model, integrator, plan, x, mode="compile")
    out = sampler(x)
    exact = dd.solve(tiny_model(torch.float64), x.double(), integrator, plan).x
    round_off = (dd.solve(model, x, integrator, plan).x.double() - exact).abs().max().item()
    assert 0.0 < round_off < 1e-3
    assert (out.double() - exact).abs().max().item() <= 4.0 * round_off


def test_many_samplers_in_one_process():
    # torch.compile limits recompilations per code object (8 by default): each sampler has its own.
    model = dd.wrap(lambda x, t: 0.1 * x, SCHEDULE, "noise")
    integrator = get_integrator("ddim")
    plan = integrator.plan(SCHEDULE, 2)
    for n in range(1, 11):
        x = torch.randn(n, 3)
        sampler = PlanSampler(model, integrator, plan, x, mode="compile", compile_options={"backend": "eager"})
        torch.testing.assert_close(sampler(x), dd.solve(model, x, integrator, plan).x, rtol=0, atol=0)


# -- eager mode and the parts every mode shares -----------------------------------------------------

def test_stochastic_draws_come_from_the_noise_source_in_solves_order():
    # Brownian increments depend on the interval of each draw: equal results mean that the sampler
    # asks for the same draws, at the same intervals, in the same order as solve.
    integrator = get_integrator("sde_dpmpp_3m")
    model, x = tiny_model(), batch()
    plan = integrator.plan(SCHEDULE, NFE)
    sampler = PlanSampler(model, integrator, plan, x, mode="eager")
    for make in (lambda: dd.noise.BrownianNoise(torch.Generator().manual_seed(5)),
                 lambda: NoiseSource.from_generator(torch.Generator().manual_seed(5))):
        torch.testing.assert_close(sampler(x, noise=make()), dd.solve(model, x, integrator, plan, noise=make()).x,
                                   rtol=0, atol=0)
    first = sampler(x, seeds=[1, 2, 3])
    assert not torch.equal(first, sampler(x, seeds=[1, 2, 4]))
    torch.testing.assert_close(first, dd.solve(model, x, integrator, plan, seeds=[1, 2, 3]).x, rtol=0, atol=0)


def test_half_precision_batch_is_integrated_in_float32_as_in_solve():
    integrator = get_integrator("dpmpp_2m")
    model, x = tiny_model(torch.bfloat16), batch(torch.bfloat16)
    plan = integrator.plan(SCHEDULE, NFE)
    out = PlanSampler(model, integrator, plan, x, mode="eager")(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, dd.solve(model, x, integrator, plan).x, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["eager", pytest.param("compile", marks=pytest.mark.slow)])
def test_denoise_to_zero_and_correcting_fn_run_inside_the_loop(mode):
    integrator = get_integrator("dpmpp_2m")
    model, x = tiny_model(), batch()
    plan = integrator.plan(SCHEDULE, NFE, denoise_to_zero=True)
    clip = lambda x, t, step: x.clamp(-2.0, 2.0)
    options = FAST if mode == "compile" else None
    sampler = PlanSampler(model, integrator, plan, x, mode=mode, correcting_xt_fn=clip, compile_options=options)
    assert sampler.nfe == NFE + 1
    torch.testing.assert_close(sampler(x), dd.solve(model, x, integrator, plan, correcting_xt_fn=clip).x,
                               rtol=1e-12, atol=1e-12)


class NanForSample1(Tiny):
    def forward(self, x, t):
        out = super().forward(x, t)
        return out * torch.tensor([1.0, float("nan"), 1.0], dtype=x.dtype).reshape(-1, 1, 1, 1)


def test_check_finite_after_the_run_names_the_samples():
    integrator = get_integrator("dpmpp_2m")
    model, x = dd.wrap(NanForSample1().double(), SCHEDULE, "noise"), batch()
    sampler = PlanSampler(model, integrator, integrator.plan(SCHEDULE, NFE), x, mode="eager")
    assert torch.isnan(sampler(x)[1]).all()  # without the check, no synchronisation and no error
    with pytest.raises(dd.NonFiniteError, match=r"batch indices \[1\]") as info:
        sampler(x, check_finite=True)
    assert info.value.samples == [1] and info.value.step == NFE


def test_bad_arguments_get_clear_errors():
    integrator = get_integrator("dpmpp_2m")
    model, x = tiny_model(), batch()
    plan = integrator.plan(SCHEDULE, NFE)
    with pytest.raises(ValueError, match="mode"):
        PlanSampler(model, integrator, plan, x, mode="fast")
    with pytest.raises(ValueError, match="CUDA batch"):
        PlanSampler(model, integrator, plan, x, mode="cuda_graph")
    with pytest.raises(ValueError, match="solve_adaptive"):
        PlanSampler(model, "dpmpp_adaptive_23", plan, x)
    with pytest.raises(TypeError, match="Plan"):
        PlanSampler(model, integrator, plan.times, x)
    with pytest.raises(ValueError, match="fullgraph"):
        PlanSampler(model, integrator, plan, x, compile_options={"fullgraph": False})
    with pytest.raises(ValueError, match="mode='compile' only"):
        PlanSampler(model, integrator, plan, x, mode="eager", compile_options={"backend": "eager"})
    with pytest.raises(ValueError, match="made by another integrator"):
        PlanSampler(model, "dpmpp_2s", plan, x, mode="eager")
    sampler = PlanSampler(model, integrator, plan, x, mode="eager")
    with pytest.raises(ValueError, match=r"batches of shape \(3, 2, 4, 4\)"):
        sampler(batch(n=4))
    with pytest.raises(ValueError, match="float64"):
        sampler(x.float())


# -- a bfloat16 network on a float32 state ----------------------------------------------------------

FIXED = sorted(n for n in INTEGRATORS if not get_integrator(n).adaptive)
# Measured (8 digits, NFE 10, seeded): the RMS difference between a bfloat16 and a float32 network on a
# float32 state is 0.004 (DPM-Solver++ 2M) to 0.014 (SDE-DPM-Solver++ 2M) for the representative
# integrators below; a bfloat16 unit roundoff is 0.0039 and the samples reach about 1.2.
# Bound: about twice the largest measured value.
REPRESENTATIVE = ["dpmpp_2m", "unipc_bh2_2", "sde_dpmpp_2m"]


@pytest.fixture(scope="module")
def digits_pair():
    _, float32 = load_model("digits", dtype=torch.float32)
    _, bfloat16 = load_model("digits", dtype=torch.bfloat16)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return float32, bfloat16, x


def bfloat16_gap(float32, bfloat16, x, name):
    """The RMS difference of the two networks' samples (the state checked float32 throughout)."""
    integrator = get_integrator(name)
    plan = integrator.plan(float32.schedule, 10)
    kw = {"seeds": list(range(len(x)))} if integrator.stochastic else {}
    reference = dd.solve(float32, x, integrator, plan, **kw).x
    solution = dd.solve(bfloat16, x, integrator, plan, return_intermediate=True, **kw)
    assert {value.dtype for value in solution.intermediates} == {torch.float32}
    return (solution.x - reference).square().mean().sqrt().item(), reference.square().mean().sqrt().item()


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_bfloat16_digits_network_float32_state(name, digits_pair):
    float32, bfloat16, x = digits_pair
    assert bfloat16.network_dtype == torch.bfloat16
    rms, _ = bfloat16_gap(float32, bfloat16, x, name)
    assert 0.0 < rms < 0.03, rms


@pytest.mark.parametrize("name", FIXED)
def test_every_integrator_runs_a_bfloat16_network_on_a_float32_state(name):
    # The tiny random network's samples are large (RMS ~ 100), so the gap is judged relative to them:
    # measured at most 0.0063 over every fixed-grid integrator (batch 4, NFE 10); bound twice that.
    network = Tiny()
    float32 = dd.wrap(network.float(), SCHEDULE, "noise")
    bfloat16 = dd.wrap(Tiny().to(torch.bfloat16), SCHEDULE, "noise", network_dtype=torch.bfloat16)
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    rms, scale = bfloat16_gap(float32, bfloat16, x, name)
    assert 0.0 < rms / scale < 0.013, rms / scale


def test_network_dtype_casts_at_the_network_only():
    seen = []

    def network(x, t):
        seen.append(x.dtype)
        return (0.5 * x).to(torch.bfloat16)

    model = dd.wrap(network, SCHEDULE, "noise", network_dtype=torch.bfloat16)
    x = batch(torch.float32)
    out = model.noise(x, 0.5)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    torch.testing.assert_close(out, (0.5 * x.bfloat16()).float(), rtol=0, atol=0)
    with pytest.raises(TypeError, match="network_dtype"):
        dd.wrap(network, SCHEDULE, "noise", network_dtype="bfloat16")
    # Without it, a bfloat16 network on a float32 state fails inside the network (dtype mismatch).
    _, plain = load_model("digits", dtype=torch.float32)
    net = plain.network.to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="(?i)dtype|type"):
        dd.wrap(net, plain.schedule, "noise", time_input="discrete").noise(torch.randn(2, 1, 8, 8), 0.5)


# -- CUDA graphs ------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3s", "unipc_bh2_2", "sde_dpmpp_2m"])
def test_cuda_graph_replays_equal_solve(name):
    integrator = get_integrator(name)
    model, x = tiny_model(torch.float32, "cuda"), batch(torch.float32, "cuda")
    plan = integrator.plan(SCHEDULE, NFE)
    sampler = PlanSampler(model, integrator, plan, x, mode="cuda_graph")
    kw = {"noise": None, "seeds": [1, 2, 3]} if integrator.stochastic else {}
    x_before = x.clone()
    first = sampler(x, **kw)
    torch.testing.assert_close(first, dd.solve(model, x, integrator, plan, **kw).x, rtol=1e-5, atol=1e-5)
    other = torch.randn_like(x)
    second = sampler(other, **kw)
    torch.testing.assert_close(second, dd.solve(model, other, integrator, plan, **kw).x, rtol=1e-5, atol=1e-5)
    # The results are our clones: the second replay left the first result and the input alone.
    torch.testing.assert_close(first, dd.solve(model, x, integrator, plan, **kw).x, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, x_before) and first.data_ptr() != second.data_ptr()


@pytest.mark.cuda
@needs_cuda
def test_cuda_compiled_and_bfloat16_network():
    integrator = get_integrator("dpmpp_2m")
    _, model = load_model("digits", device="cuda", dtype=torch.bfloat16)
    x = torch.randn(8, 1, 8, 8, device="cuda")
    plan = integrator.plan(model.schedule, 5)  # few steps: compiling unrolls the loop
    expected = dd.solve(model, x, integrator, plan).x
    for mode in ("compile", "cuda_graph"):
        sampler = PlanSampler(model, integrator, plan, x, mode=mode)
        sampler(x)  # compiles (compile mode)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # a host synchronisation in a call now raises
        try:
            out = sampler(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
