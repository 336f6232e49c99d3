"""The fused linear combination (diffode.kernels): exactness, when it runs, and that it changes no result."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import diffode as dd
from diffode import kernels
from diffode.integrators.registry import get_integrator
from diffode.models.builtin import ddpm_betas

needs_extension = pytest.mark.skipif(not kernels.available(), reason="diffode._combine was not built")


class Counting:
    """Stands in for the extension and counts the fused calls (delegating to the real one)."""

    def __init__(self, real):
        self.real, self.calls = real, 0
        self.MAX_TERMS = real.MAX_TERMS

    def combine(self, *args):
        self.calls += 1
        return self.real.combine(*args)


@pytest.fixture
def counting(monkeypatch):
    fake = Counting(kernels._combine)
    monkeypatch.setattr(kernels, "_combine", fake)
    return fake


def reference(x, a, terms):
    out = x.double() * a
    for t, c in terms:
        out += t.double() * c
    return out


def test_extension_built_where_a_compiler_exists():
    # setup.py builds the extension when diffode is installed; an installed diffode on a machine
    # with a C compiler (CI's) must have it, or the suite would silently test the eager path only.
    # (A checkout used through PYTHONPATH, never installed, has nothing built.)
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("diffode")
    except PackageNotFoundError:
        pytest.skip("diffode is not installed (used from a checkout): setup.py never ran")
    if shutil.which("cc") or shutil.which("gcc"):
        assert kernels.available()


@needs_extension
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("k", range(0, 7))
@pytest.mark.parametrize("n", [1, 7, 64, 1000, 40000])
def test_fused_matches_float64_arithmetic(counting, dtype, tol, k, n):
    g = torch.Generator().manual_seed(k * 1000 + n)
    x = torch.randn(n, generator=g, dtype=dtype)
    terms = [(torch.randn(n, generator=g, dtype=dtype), float(torch.randn((), generator=g))) for _ in range(k)]
    a = -0.75
    out = kernels.linear_combination(x, a, terms)
    assert counting.calls == 1
    assert out.dtype == dtype and out.shape == x.shape
    expected = reference(x, a, terms)
    scale = x.double().abs() * abs(a) + sum(t.double().abs() * abs(c) for t, c in terms)
    assert ((out.double() - expected).abs() <= tol * scale + 1e-300).all()


@needs_extension
def test_fused_and_eager_agree_and_skip_zero_terms(counting):
    x = torch.randn(2, 3, 8, 8)
    m = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    terms = [(m[0], 0.5), (m[1], 0.0), (m[2], -2.0)]
    fused = kernels.linear_combination(x, 0.3, terms)
    with kernels.use_kernels(False):
        eager = kernels.linear_combination(x, 0.3, terms)
    assert counting.calls == 1
    torch.testing.assert_close(fused, eager, rtol=1e-6, atol=1e-6)
    # a NaN in a term with coefficient 0 stays out of the fused result, as 0 * NaN would not
    m[1][0, 0, 0, 0] = float("nan")
    assert torch.isfinite(kernels.linear_combination(x, 0.3, terms)).all()


@needs_extension
def test_the_result_is_a_new_tensor(counting):
    x = torch.randn(4, 5)
    m = torch.randn(4, 5)
    before = x.clone(), m.clone()
    out = kernels.linear_combination(x, 1.0, [(m, 0.0)])
    assert out.data_ptr() not in (x.data_ptr(), m.data_ptr())
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    torch.testing.assert_close((x, m), before, rtol=0, atol=0)


def _cases():
    x = torch.randn(3, 4)
    m = torch.randn(3, 4)
    yield "non-contiguous state", x.t(), [(m.t().contiguous(), 0.5)]
    yield "non-contiguous term", x, [(m.t().contiguous().t(), 0.5)]
    yield "float16", x.half(), [(m.half(), 0.5)]
    yield "mixed dtypes", x, [(m.double(), 0.5)]
    yield "broadcast term", x, [(m[:1], 0.5)]
    yield "tensor coefficient", x, [(m, torch.full((3, 1), 0.5))]
    yield "empty", torch.randn(0, 4), [(torch.randn(0, 4), 0.5)]
    yield "meta device", torch.empty(3, 4, device="meta"), [(torch.empty(3, 4, device="meta"), 0.5)]
    yield "too many terms", x, [(m, 0.1)] * 8


@needs_extension
@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_ineligible_inputs_take_the_eager_path(counting, case):
    _, x, terms = case
    out = kernels.linear_combination(x, 2.0, terms)
    assert counting.calls == 0
    if x.device.type != "meta":
        expected = x * 2.0
        for t, c in terms:
            expected = expected + t * c
        torch.testing.assert_close(out, expected.to(out.dtype))


@needs_extension
def test_autograd_takes_the_eager_path(counting):
    x = torch.randn(5, requires_grad=True)
    m = torch.randn(5)
    kernels.linear_combination(x, 3.0, [(m, 1.0)]).sum().backward()
    assert counting.calls == 0
    torch.testing.assert_close(x.grad, torch.full((5,), 3.0))
    with torch.no_grad():
        kernels.linear_combination(x, 3.0, [(m, 1.0)])
    assert counting.calls == 1


@needs_extension
def test_large_tensors_on_several_threads_stay_eager(counting):
    x = torch.randn(kernels.PARALLEL_GRAIN)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        kernels.linear_combination(x, 1.0, [(x, 1.0)])
        assert counting.calls == 0
        kernels.linear_combination(x[:100], 1.0, [(x[:100], 1.0)])  # small: one thread in torch too
        assert counting.calls == 1
        torch.set_num_threads(1)
        kernels.linear_combination(x, 1.0, [(x, 1.0)])
        assert counting.calls == 2
    finally:
        torch.set_num_threads(threads)


def test_switches(monkeypatch):
    calls = []
    if kernels.available():
        fake = Counting(kernels._combine)
        monkeypatch.setattr(kernels, "_combine", fake)
    assert kernels.enabled() == kernels.available()
    x, m = torch.randn(3), torch.randn(3)
    with kernels.use_kernels(False):
        assert not kernels.enabled()
        torch.testing.assert_close(kernels.linear_combination(x, 1.0, [(m, 1.0)]), x + m)
        calls.append(fake.calls if kernels.available() else 0)
    assert calls == [0]
    assert kernels.enabled() == kernels.available()
    with pytest.raises(TypeError, match="flag must be True or False"):
        kernels.set_enabled("no")


@pytest.mark.parametrize("value, expected", [("0", "False"), ("off", "False"), ("1", str(kernels.available()))])
def test_environment_variable(value, expected):
    env = dict(os.environ, DIFFODE_KERNELS=value)
    out = subprocess.run([sys.executable, "-c", "from diffode import kernels; print(kernels.enabled())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_a_bad_environment_variable_is_a_clear_error():
    env = dict(os.environ, DIFFODE_KERNELS="maybe")
    out = subprocess.run([sys.executable, "-c", "import diffode"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "DIFFODE_KERNELS must be one of" in out.stderr and "'maybe'" in out.stderr


@needs_extension
@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpmpp_3m", "dpm_3m", "dpmpp_3s", "dpm_2s", "dpmpp_adaptive_23"])
@pytest.mark.parametrize("parameterization", ["noise", "data", "v"])
def test_solvers_give_the_same_samples_fused_or_eager(counting, name, parameterization):
    schedule = dd.DiscreteVP(betas=ddpm_betas())
    mixture = dd.GaussianMixture([0.2, 0.3, 0.5], torch.randn(3, 2, 4, 4), [0.3, 0.5, 0.2])
    model = dd.wrap(mixture.network(schedule, parameterization), schedule, parameterization, time_input="continuous")
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    integrator = get_integrator(name)
    times = torch.linspace(1.0, schedule.default_t_end, 9, dtype=torch.float64).tolist()
    if integrator.error_order is None:
        def run():
            return dd.solve(model, x, integrator, times)
        tol = 1e-12
    else:
        def run():
            return dd.solve_adaptive(model, x, integrator, t_start=1.0, t_end=schedule.default_t_end)
        # the step sizes follow the error estimate x - x_low, a difference of nearly equal states
        # whose rounding the controller amplifies: same steps, agreement to ~1e-10
        tol = 1e-8
    fused = run()
    assert counting.calls > 0
    with kernels.use_kernels(False):
        eager = run()
    assert fused.nfe == eager.nfe
    torch.testing.assert_close(fused.x, eager.x, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# A conversion fused into the update (convert_and_combine, Deferred predictions)
# ---------------------------------------------------------------------------------------------

@needs_extension
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 4e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("k", range(0, 4))
@pytest.mark.parametrize("separate_u", [False, True])
def test_convert_and_combine_matches_float64_and_overwrites_w(dtype, tol, k, separate_u):
    g = torch.Generator().manual_seed(10 * k + separate_u)
    n = 1037
    x = torch.randn(n, generator=g, dtype=dtype)
    u = torch.randn(n, generator=g, dtype=dtype) if separate_u else x
    w = torch.randn(n, generator=g, dtype=dtype)
    terms = [(torch.randn(n, generator=g, dtype=dtype), float(torch.randn((), generator=g))) for _ in range(k)]
    x64, u64, w64 = (t.double().clone() for t in (x, u, w))  # before w is overwritten
    cu, cw, weight = 1.3, -0.7, 0.45
    out = kernels.convert_and_combine(x, 0.8, terms, u, cu, w, cw, weight)
    m = cu * u64 + cw * w64
    expected = reference(x64, 0.8, terms) + weight * m
    scale = 0.8 * x64.abs() + weight * (cu * u64.abs() + abs(cw) * w64.abs()) + \
        sum(t.double().abs() * abs(c) for t, c in terms)
    assert ((out.double() - expected).abs() <= tol * scale).all()
    assert ((w.double() - m).abs() <= tol * (cu * u64.abs() + abs(cw) * w64.abs())).all()  # w now holds m
    if separate_u:
        assert not torch.equal(u, w)


@needs_extension
def test_convert_and_combine_declines_without_changing_anything():
    x = torch.randn(kernels.PARALLEL_GRAIN)
    w = torch.randn(kernels.PARALLEL_GRAIN)
    before = w.clone()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # large tensors on several threads: eager territory
        assert kernels.convert_and_combine(x, 1.0, [], x, 1.0, w, 1.0, 1.0) is None
    finally:
        torch.set_num_threads(threads)
    assert kernels.convert_and_combine(x.half(), 1.0, [], x.half(), 1.0, w.half(), 1.0, 1.0) is None
    with kernels.use_kernels(False):
        assert kernels.convert_and_combine(x, 1.0, [], x, 1.0, w, 1.0, 1.0) is None
    assert torch.equal(w, before)


class CountingConversions:
    def __init__(self, monkeypatch):
        import diffode.integrators.base as base

        self.real, self.fused, self.declined = base.convert_and_combine, 0, 0
        monkeypatch.setattr(base, "convert_and_combine", self)

    def __call__(self, *args):
        out = self.real(*args)
        self.fused += out is not None
        self.declined += out is None
        return out


def _eps_problem():
    schedule = dd.DiscreteVP(betas=ddpm_betas())
    fixed = torch.randn(5, 2, 4, 4)

    def net(x, t):  # a fresh, contiguous output, as a network's last layer gives
        return torch.add(fixed, x, alpha=0.1)

    return schedule, net, torch.randn(5, 2, 4, 4)


@needs_extension
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "dpmpp_3s", "dpmpp_2s"])
def test_data_form_solvers_fuse_the_conversion_of_an_eps_network(monkeypatch, name):
    schedule, net, x = _eps_problem()
    times = torch.linspace(1.0, schedule.default_t_end, 9, dtype=torch.float64).tolist()
    counting = CountingConversions(monkeypatch)
    fused = dd.solve(dd.wrap(net, schedule, time_input="continuous"), x, name, times).x
    assert counting.fused > 0 and counting.declined == 0
    with kernels.use_kernels(False):
        eager = dd.solve(dd.wrap(net, schedule, time_input="continuous"), x, name, times).x
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)


@needs_extension
@pytest.mark.parametrize("returns", ["a tensor it keeps", "a view of its buffer", "its input"])
def test_a_network_output_that_anyone_else_can_see_is_never_overwritten(monkeypatch, returns):
    schedule, net, x = _eps_problem()
    x_before = x.clone()
    buffer = torch.zeros(10, 2, 4, 4)
    kept = {}

    def network(x_in, t):
        eps = net(x_in, t)
        if returns == "a tensor it keeps":
            kept["last"], kept["copy"] = eps, eps.clone()
            return eps
        if returns == "a view of its buffer":
            buffer[:5] = eps
            return buffer[:5]
        return x_in  # an identity "network": its output is the state itself

    counting = CountingConversions(monkeypatch)
    times = [1.0, 0.6, 0.3, schedule.default_t_end]
    result = dd.solve(dd.wrap(network, schedule, time_input="continuous"), x, "dpmpp_2m", times).x
    assert counting.fused == 0
    if returns == "a tensor it keeps":
        assert torch.equal(kept["last"], kept["copy"])
    if returns == "a view of its buffer":
        assert torch.equal(buffer[5:], torch.zeros(5, 2, 4, 4))
    assert torch.equal(x, x_before)
    with kernels.use_kernels(False):
        eager = dd.solve(dd.wrap(network, schedule, time_input="continuous"), x, "dpmpp_2m", times).x
    torch.testing.assert_close(result, eager, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Recycling finished states (kernels.recycling, used by solve)
# ---------------------------------------------------------------------------------------------

@needs_extension
def test_recycler_keeps_only_what_nothing_else_can_see():
    with kernels.recycling() as recycler:
        alone = torch.randn(4, 5)
        assert recycler.give(alone)
        listed = torch.randn(4, 5)
        holders = [listed]
        assert not recycler.give(listed)
        viewed = torch.randn(4, 5)
        view = viewed[1:]
        assert not recycler.give(viewed)
        assert not recycler.give(torch.randn(4, 5).t().contiguous().t())  # not contiguous
        assert not recycler.give(torch.randn(3, requires_grad=True))
        assert not recycler.give(torch.randn(3).half())
        reused = kernels.linear_combination(torch.randn(4, 5), 1.0, [])
        assert reused.data_ptr() == alone.data_ptr()
        del holders, view
    with kernels.use_kernels(False), kernels.recycling() as recycler:
        assert not recycler.give(torch.randn(4, 5))  # switched off: plain allocation, as before


@pytest.mark.skipif(not kernels.OWNERSHIP_CHECKS, reason="this interpreter has no ownership tests")
def test_ownership_tests_stay_exact_after_the_interpreter_specialises_them():
    """CPython's adaptive interpreter rewrites hot code; the calibrated reference counts must still
    tell "only we hold it" from "someone else does too", in both directions, on every call."""
    from diffode.models.parameterizations import Deferred

    wrong = []
    for i in range(3000):
        recycler = kernels.Recycler([])
        finished = torch.empty(2)
        if not recycler.give(finished):
            wrong.append(("sole local refused", i))
        held = torch.empty(2)
        holders = [held]
        if recycler.give(held):
            wrong.append(("held state recycled", i))
        d = Deferred(finished, 1.0, torch.empty(2), 1.0)
        exclusive = d.output_is_exclusive()
        if not exclusive:
            wrong.append(("sole output refused", i))
        kept = d.out
        exclusive = d.output_is_exclusive()
        if exclusive:
            wrong.append(("kept output overwritable", i))
        del holders, kept
    assert not wrong, wrong[:5]


class SpareCounter:
    def __init__(self, monkeypatch):
        self.real, self.reused = kernels.spare_like, 0
        monkeypatch.setattr(kernels, "spare_like", self)

    def __call__(self, x):
        spare = self.real(x)
        self.reused += spare is not None
        return spare


@needs_extension
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "dpmpp_3s", "ddim", "dpm_2m"])
def test_solve_recycles_finished_states_and_changes_no_result(monkeypatch, name):
    schedule, net, x = _eps_problem()
    times = torch.linspace(1.0, schedule.default_t_end, 9, dtype=torch.float64).tolist()
    counter = SpareCounter(monkeypatch)
    model = dd.wrap(net, schedule, time_input="continuous")
    got = dd.solve(model, x, name, times, return_intermediate=False).x
    assert counter.reused >= 6  # every step after the first two writes into a finished state
    with kernels.use_kernels(False):
        eager = dd.solve(model, x, name, times).x
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


@needs_extension
def test_states_anyone_else_holds_are_never_recycled(monkeypatch):
    schedule, net, x = _eps_problem()
    x_before = x.clone()
    times = torch.linspace(1.0, schedule.default_t_end, 7, dtype=torch.float64).tolist()
    seen_by_network, seen_by_callback = [], []

    def network(x_in, t):
        seen_by_network.append((x_in, x_in.clone()))
        return net(x_in, t)

    def callback(x_t, t, step):
        seen_by_callback.append((x_t, x_t.clone()))
        return x_t

    model = dd.wrap(network, schedule, time_input="continuous")
    counter = SpareCounter(monkeypatch)
    solution = dd.solve(model, x, "dpmpp_2m", times, return_intermediate=True, correcting_xt_fn=callback)
    assert counter.reused == 0
    assert torch.equal(x, x_before)
    assert all(torch.equal(kept, copy) for kept, copy in seen_by_network + seen_by_callback)
    assert len({t.data_ptr() for t in solution.intermediates}) == len(solution.intermediates)
    with kernels.use_kernels(False):
        eager = dd.solve(model, x, "dpmpp_2m", times, return_intermediate=True)
    for a, b in zip(solution.intermediates, eager.intermediates):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Only the network keeping its inputs: still nothing recycled, every kept input intact.
    seen_by_network.clear()
    dd.solve(model, x, "dpmpp_3m", times)
    assert counter.reused == 0
    assert all(torch.equal(kept, copy) for kept, copy in seen_by_network)


# ---------------------------------------------------------------------------------------------
# CUDA: the jiterator kernel (run by scripts/gpu_check.py where a GPU is lent)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def counting_cuda(monkeypatch):
    calls = []
    real = kernels._cuda_kernel

    def counted(k):
        calls.append(k)
        return real(k)

    monkeypatch.setattr(kernels, "_cuda_kernel", counted)
    return calls


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("k", range(0, 7))
def test_cuda_fused_matches_float64_arithmetic(counting_cuda, dtype, tol, k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3, 5, 7, generator=g, dtype=dtype)
    terms = [(torch.randn(3, 5, 7, generator=g, dtype=dtype), float(torch.randn((), generator=g))) for _ in range(k)]
    out = kernels.linear_combination(x.cuda(), 0.5, [(t.cuda(), c) for t, c in terms])
    assert counting_cuda == [k + 1]
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == x.shape
    scale = x.double().abs() * 0.5 + sum(t.double().abs() * abs(c) for t, c in terms)
    assert ((out.cpu().double() - reference(x, 0.5, terms)).abs() <= tol * scale + 1e-300).all()


@pytest.mark.cuda
def test_cuda_fused_path_takes_strided_tensors_and_leaves_others_eager(counting_cuda):
    x = torch.randn(4, 6, device="cuda")
    m = torch.randn(6, 4, device="cuda").t()  # not contiguous: fine for the CUDA kernel
    torch.testing.assert_close(kernels.linear_combination(x, 2.0, [(m, -1.0)]), 2.0 * x - m)
    assert len(counting_cuda) == 1
    kernels.linear_combination(x.half(), 2.0, [(m.half(), -1.0)])  # float16: eager
    kernels.linear_combination(x, 2.0, [(m[:1], -1.0)])  # broadcast: eager
    with kernels.use_kernels(False):
        kernels.linear_combination(x, 2.0, [(m, -1.0)])
    assert len(counting_cuda) == 1


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "dpmpp_3s", "dpm_2m"])
def test_cuda_solvers_fused_or_eager_agree_without_host_syncs(counting_cuda, name):
    schedule = dd.DiscreteVP(betas=ddpm_betas())
    mixture = dd.GaussianMixture([0.2, 0.3, 0.5], torch.randn(3, 2, 4, 4), [0.3, 0.5, 0.2])
    model = dd.wrap(mixture.network(schedule, "noise"), schedule, time_input="continuous")
    x = torch.randn(5, 2, 4, 4, device="cuda")
    times = torch.linspace(1.0, schedule.default_t_end, 9, dtype=torch.float64).tolist()
    dd.solve(model, x, name, times)  # compile the kernels outside the sync check
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused = dd.solve(model, x, name, times).x
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert counting_cuda
    with kernels.use_kernels(False):
        eager = dd.solve(model, x, name, times).x
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Every instruction set of the C kernel gives the same bits
# ---------------------------------------------------------------------------------------------

def _build_variant(tmp_path, march):
    import importlib.util
    import platform
    import sysconfig
    from pathlib import Path

    source = Path(kernels.__file__).with_name("_combine.c")
    include = sysconfig.get_paths()["include"]
    compiler = shutil.which("cc") or shutil.which("gcc")
    if platform.machine() != "x86_64" or not source.exists() or compiler is None \
            or not Path(include, "Python.h").exists():
        pytest.skip("needs x86-64, the kernel's source, a C compiler and Python's headers")
    target = tmp_path / march / f"_combine{sysconfig.get_config_var('EXT_SUFFIX')}"
    target.parent.mkdir()
    build = subprocess.run([compiler, "-O3", "-ffp-contract=off", "-fPIC", "-shared", "-DDIFFODE_NO_MULTIVERSION",
                            f"-march={march}", f"-I{include}", str(source), "-o", str(target)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"the compiler cannot build for -march={march}: {build.stderr.strip()[:200]}")
    spec = importlib.util.spec_from_file_location("_combine", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_extension
@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3"])  # SSE2 only; AVX2 and FMA available
def test_every_instruction_set_gives_the_same_bits(tmp_path, march):
    """The installed extension runs the clone for this CPU (AVX-512 where there is one); a baseline
    and an AVX2 build of the same source must give identical bits: no multiply-add contraction and
    the same order of operations in vector loops and remainders."""
    variant = _build_variant(tmp_path, march)
    g = torch.Generator().manual_seed(3)
    for dtype, itemsize in ((torch.float32, 4), (torch.float64, 8)):
        for k in range(1, 9):
            for n in (1, 13, 1000, 4099):
                ins = [torch.randn(n, generator=g, dtype=dtype) for _ in range(k)]
                coefficients = tuple(float(c) for c in torch.randn(k, generator=g, dtype=torch.float64))
                conversion = tuple(float(c) for c in torch.randn(k, generator=g, dtype=torch.float64))
                outs = []
                for module in (kernels._combine, variant):
                    out, conv = torch.empty(n, dtype=dtype), ins[-1].clone()
                    module.combine(out.data_ptr(), n, itemsize, tuple(t.data_ptr() for t in ins), coefficients)
                    both = torch.empty(n, dtype=dtype)
                    inputs = (*ins[:-1], conv)  # the conversion overwrites its last input, as in place
                    module.combine(both.data_ptr(), n, itemsize, tuple(t.data_ptr() for t in inputs), coefficients,
                                   conv.data_ptr(), conversion, 0.7)
                    outs.append((out, both, conv))
                for a, b in zip(*outs):
                    assert torch.equal(a, b), (dtype, k, n)
