"""The core contract: plain tensors, no writes into memory diffode did not allocate, the integrator
owns its plan and its bookkeeping, every front end asks it, and an integrator from outside the
package runs everywhere with the same NFE for the same budget."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffode as dd
from diffode import study
from diffode.integrators import (INTEGRATORS, DPMSolverMultistep, Integrator, State,
                                 UniformLambda, Update, apply_lower_order_final, exponential_update, get_integrator)

ROOT = Path(__file__).resolve().parents[2]
FIXED = sorted(n for n in INTEGRATORS if not get_integrator(n).adaptive)
ADAPTIVE = sorted(n for n in INTEGRATORS if get_integrator(n).adaptive)


@pytest.fixture(scope="module")
def trapezoid_module():
    """The extension tutorial's integrator, imported from examples/ (outside the package)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        yield importlib.import_module("exponential_trapezoid")
    finally:
        sys.path.remove(str(ROOT / "examples"))


def mixture_model(schedule=None):
    schedule = schedule or dd.LinearVP()
    mixture = dd.GaussianMixture([0.3, 0.7], [[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]], [0.3, 0.6])
    return mixture.predictor(schedule)


def x_T(batch=4, dtype=torch.float64):
    return torch.randn(batch, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))


# -- memory that is not diffode's is never written ------------------------------------------------

class KeepingNetwork:
    """An eps network that returns memory it keeps: a NumPy array, a DLPack capsule's tensor, or a
    view of a persistent buffer; it remembers a copy of each to compare with later."""

    def __init__(self, mixture_model, how: str):
        self.model, self.how, self.kept = mixture_model, how, []
        self.buffer = torch.zeros(4096, 4 * 4, dtype=torch.float64)  # more slots than any run evaluates

    def __call__(self, x, t_input):
        eps = self.model.noise(x, float(t_input[0]))
        if self.how == "numpy":
            array = eps.numpy().copy()
            out = torch.from_numpy(array)
            self.kept.append((array, array.copy()))
        elif self.how == "dlpack":
            source = eps.clone()
            out = torch.from_dlpack(source.__dlpack__())
            self.kept.append((source, source.clone()))
        else:
            slot = self.buffer[len(self.kept)].view(4, 4)
            slot.copy_(eps)
            out = slot
            self.kept.append((slot, slot.clone()))
        return out


@pytest.mark.parametrize("how", ["numpy", "dlpack", "buffer-view"])
@pytest.mark.parametrize("name", FIXED + ADAPTIVE)
def test_nothing_the_network_keeps_changes(name, how):
    schedule = dd.LinearVP()
    net = KeepingNetwork(mixture_model(schedule), how)
    model = dd.wrap(net, schedule, "noise", time_input="continuous")
    x = x_T()
    x_before = x.clone()
    solution = study.sample_nfe(model, x, name, 8, grid="logSNR")
    assert torch.isfinite(solution.x).all()
    assert torch.equal(x, x_before)
    assert len(net.kept) == solution.nfe
    for value, copy in net.kept:
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, copy)
        else:
            assert torch.equal(value, copy)


def test_no_reference_counting_or_private_torch_api():
    pattern = "getrefcount|_use_count|_storage_Use_Count|jiterator|torch\\._C"
    found = subprocess.run(["grep", "-rnE", pattern, str(ROOT / "diffode")], capture_output=True, text=True).stdout
    assert found == ""


def test_diffode_is_pure_python():
    assert not list((ROOT / "diffode").rglob("*.c"))
    assert not (ROOT / "setup.py").exists()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_layering_has_no_cycle():
    # Fronts above the loop above the integrators above the models and schedules: no module imports
    # one above it (and so no lazy import is needed to break a cycle).
    layers = [("diffode.schedules", "diffode.models"), ("diffode.integrators", "diffode.controllers"),
              ("diffode.solve",), ("diffode.sampler", "diffode.study", "diffode.fast"), ("diffode.cli",)]
    rank = {name: i for i, names in enumerate(layers) for name in names}

    def layer(module: str) -> int | None:
        for name, i in rank.items():
            if module == name or module.startswith(name + "."):
                return i
        return None

    for path in (ROOT / "diffode").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = layer(module)
        if own is None:
            continue
        above = sorted(m for m in _imports(path) if (layer(m) or 0) > own)
        assert not above, f"{module} imports {above}, which sit above it"


# -- the integrator owns its bookkeeping and its plan ---------------------------------------------

class Careless(Integrator):
    """An integrator that counts nothing itself: the base class must."""

    order = 1
    evals_per_step = 3

    def _step(self, model, x, s, t, state, order):
        for _ in range(3):
            m = self.evaluate(model, x, s)
        return Update(exponential_update(x, s, t, [m], [0.0], self.predict))


def test_step_counts_evaluations_and_steps():
    model = mixture_model()
    schedule = model.schedule
    s, t = schedule.point(0.8), schedule.point(0.5)
    result = Careless().step(model, x_T(), s, t, State(step_index=4))
    assert result.nfe == 3 and result.state.step_index == 5
    solution = dd.solve(model, x_T(), Careless(), [1.0, 0.5, 0.1])
    assert solution.nfe == 6


def test_step_rejects_an_order_above_the_integrators():
    model = mixture_model()
    s, t = model.schedule.point(0.8), model.schedule.point(0.5)
    with pytest.raises(ValueError, match="order must be an integer in \\[1, 2\\]"):
        DPMSolverMultistep(2).step(model, x_T(), s, t, State(), order=3)


def test_step_must_return_an_update():
    class Wrong(Careless):
        def _step(self, model, x, s, t, state, order):
            return x

    model = mixture_model()
    with pytest.raises(TypeError, match="must return a diffode.integrators.Update"):
        Wrong().step(model, x_T(), model.schedule.point(0.8), model.schedule.point(0.5), State())


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("nfe", [1, 2, 3, 5, 10, 11])
def test_every_plan_spends_its_budget_exactly(name, nfe):
    integrator = get_integrator(name)
    schedule = dd.DiscreteVP(betas=torch.linspace(1e-4, 0.02, 1000))
    if name == "pc_langevin" and nfe < integrator.evals_per_step:  # a step is a predictor and a corrector
        with pytest.raises(ValueError, match="evaluations per step"):
            integrator.plan(schedule, nfe)
        return
    plan = integrator.plan(schedule, nfe, grid="time_uniform")
    assert plan.nfe <= nfe and len(plan.times) == plan.steps + 1
    # One evaluation per step: the budget is spent in full (an order-keeping warm-up, whose first
    # step costs two, may leave one unspent).
    if integrator.evals_per_step == 1:
        assert plan.nfe >= nfe - 1 and (plan.nfe == nfe or integrator.step_orders(2)[0] > 1)
    solution = dd.solve(dd.GaussianMixture([1.0], [[0.5, -1.0]], [0.3]).predictor(schedule),
                        torch.randn(2, 2, dtype=torch.float64), integrator, plan)
    assert solution.nfe == plan.nfe


def test_plan_denoise_to_zero_counts_the_extra_evaluation():
    model = mixture_model()
    plan = DPMSolverMultistep(2).plan(model.schedule, 10, denoise_to_zero=True)
    assert plan.steps == 10 and plan.nfe == 11
    solution = dd.solve(model, x_T(), DPMSolverMultistep(2), plan)
    assert solution.nfe == 11
    # The last evaluation returns the data prediction at the last time.
    before = dd.solve(model, x_T(), DPMSolverMultistep(2), plan.times, orders=plan.orders)
    torch.testing.assert_close(solution.x, model.data(before.x, plan.times[-1]))


def test_lower_order_final_is_one_rule():
    assert apply_lower_order_final([1, 2, 3, 3, 3]) == [1, 2, 3, 2, 1]
    assert apply_lower_order_final([3] * 12) == [3] * 12  # 12 steps: not below 10
    assert apply_lower_order_final([3] * 12, 15) == [3] * 10 + [2, 1]
    assert apply_lower_order_final([3] * 4, False) == [3] * 4
    assert DPMSolverMultistep(3).plan(dd.LinearVP(), 5).orders == (1, 2, 3, 2, 1)
    assert DPMSolverMultistep(3).plan(dd.LinearVP(), 5, lower_order_final=False).orders == (1, 2, 3, 3, 3)
    assert DPMSolverMultistep(3, warmup="singlestep").plan(dd.LinearVP(), 12).orders == (2,) + (3,) * 10


def test_fast_split_step_ends_are_the_same_in_every_front():
    # The drift the core-contract issue found: 10-NFE DPM-Solver-3 (fast split) on a logSNR grid.
    from diffode.compat.dpm_solver import DPM_Solver, NoiseScheduleVP, model_wrapper
    from diffode.integrations.ldm import DPMSolverSampler

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    schedule = dd.DiscreteVP(betas=betas, clip_lambda=None)
    plan = get_integrator("dpmpp_3s").plan(schedule, 10, grid="logSNR", t_end=1e-3)
    lam = schedule.lambda_(torch.tensor(plan.times))
    torch.testing.assert_close(lam.diff(), torch.full_like(lam.diff(), float(lam.diff()[0])))
    assert plan.orders == (3, 3, 3, 1) and plan.nfe == 10

    class LDM:
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)

        def apply_model(self, x, t, c):
            return torch.zeros_like(x)

    sampler = DPMSolverSampler(LDM(), integrator="dpmpp_3s", skip_type="logSNR", t_end=1e-3, progress=False)
    sampler.make_schedule(10)
    torch.testing.assert_close(sampler.times, torch.tensor(plan.times, dtype=torch.float64))
    assert sampler.orders == list(plan.orders)

    ns = NoiseScheduleVP("discrete", betas=betas)
    reference = DPM_Solver(model_wrapper(lambda x, t: torch.zeros_like(x), ns), ns)
    times, orders = reference.get_orders_and_timesteps_for_singlestep_solver(10, 3, "logSNR", 1.0, 1e-3, "cpu")
    assert orders == list(plan.orders)
    # (The reference computes its grid in float32, through float32 interpolation tables.)
    torch.testing.assert_close(times.double(), torch.tensor(plan.times, dtype=torch.float64), rtol=5e-4, atol=1e-5)


def test_adaptive_integrators_do_not_plan():
    with pytest.raises(ValueError, match="chooses its own steps"):
        get_integrator("dpmpp_adaptive_23").plan(dd.LinearVP(), 10)


def test_a_given_grid_must_fit_the_budget():
    grid = UniformLambda().times(dd.LinearVP(), 1.0, 1e-3, 6)
    assert DPMSolverMultistep(2).plan(dd.LinearVP(), 6, grid=grid).steps == 6
    with pytest.raises(ValueError, match="spends 8 evaluations in 8 steps, but the given grid has 6"):
        DPMSolverMultistep(2).plan(dd.LinearVP(), 8, grid=grid)


# -- an integrator from outside the package, through every front end ------------------------------

def test_outside_integrator_through_solve_sampler_and_study(trapezoid_module):
    ExponentialTrapezoid = trapezoid_module.ExponentialTrapezoid
    model = mixture_model()
    plan = ExponentialTrapezoid().plan(model.schedule, 20, grid="logSNR")
    assert plan.steps == 10 and plan.nfe == 20
    by_solve = dd.solve(model, x_T(), ExponentialTrapezoid(), plan)
    solver = dd.DPMSolver(model)
    by_front = solver.sample(x_T(), steps=20, skip_type="logSNR", integrator=ExponentialTrapezoid())
    by_study = study.sample_nfe(model, x_T(), ExponentialTrapezoid(), 20, grid="logSNR")
    by_reference = study.sample_nfe(model, x_T(), "exponential_trapezoid:ExponentialTrapezoid", 20, grid="logSNR")
    assert by_solve.nfe == solver.last_solution.nfe == by_study.nfe == by_reference.nfe == 20
    for x in (by_front, by_study.x, by_reference.x):
        torch.testing.assert_close(x, by_solve.x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="integrator= replaces method, order"):
        solver.sample(x_T(), steps=20, method="singlestep", order=3, integrator=ExponentialTrapezoid())


def test_outside_integrator_converges_at_its_order(trapezoid_module):
    model = mixture_model()
    x = x_T()
    exact = study.ground_truth(model, x)
    results = study.convergence_study(model, x, exact, {"trapezoid": "exponential_trapezoid:ExponentialTrapezoid"},
                                      steps=[24, 48, 96, 192])
    assert results[0].nfe == [48, 96, 192, 384]
    assert abs(results[0].overall_slope - 2) < 0.25, results[0]


def test_outside_integrator_in_the_ldm_sampler(trapezoid_module):
    from diffode.integrations.ldm import DPMSolverSampler

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    calls = []

    class LDM:
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)

        def apply_model(self, x, t, c):
            calls.append(1)
            return 0.1 * x

    sampler = DPMSolverSampler(LDM(), integrator=trapezoid_module.ExponentialTrapezoid(), progress=False)
    samples, _ = sampler.sample(S=10, batch_size=2, shape=(4,), x_T=torch.randn(2, 4, dtype=torch.float64),
                                verbose=False)
    assert samples.shape == (2, 4)
    assert len(calls) == sampler.last_solution.nfe == 10 and sampler.num_steps == 5


def test_outside_integrator_in_the_diffusers_scheduler(trapezoid_module):
    pytest.importorskip("diffusers")
    from diffode.integrations.diffusers import DiffodeScheduler

    with pytest.raises(ValueError, match="evaluat"):
        DiffodeScheduler(integrator="exponential_trapezoid:ExponentialTrapezoid")


def test_outside_integrator_in_the_command_line(trapezoid_module, tmp_path, monkeypatch):
    from diffode.cli import main

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    code = main(["converge", "--integrators", "exponential_trapezoid:ExponentialTrapezoid", "--steps", "24", "48",
                 "96", "192", "--schedule", "linear", "--no-plot", "--json", "--quiet"])
    assert code == 0
    code = main(["sample", "-o", str(tmp_path / "x.pt"), "--integrator", "exponential_trapezoid:ExponentialTrapezoid",
                 "--nfe", "10", "--batch", "2", "--quiet"])
    assert code == 0
    assert torch.load(tmp_path / "x.pt")["nfe"] == 10
