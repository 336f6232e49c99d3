"""UniPC: agreement with diffusers' UniPCMultistepScheduler in float64, the fitted orders (p + 1 with
the corrector, p without), the per-step switch of the corrector, and its relation to DPM-Solver++."""

from __future__ import annotations

import pytest
import torch

import diffode as dd
from diffode import study
from diffode.integrators import DPMSolverMultistep, UniPC
from tests.helpers import DDPM_BETAS, mixture2, reference

N_TRAIN = 1000


def run_diffusers(model, x, steps, predictor_order, variant, predict, lower_order_final, disable=()):
    """diffusers' scheduler driven in float64: its discrete timesteps k are diffode's times (k+1)/N,
    and its sigma table is replaced by the float64 values of the same schedule (diffusers keeps it
    in float32), so both sides compute every coefficient from the same numbers."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(num_train_timesteps=N_TRAIN, solver_order=predictor_order, solver_type=variant,
                                        predict_x0=predict == "data", lower_order_final=lower_order_final,
                                        final_sigmas_type="sigma_min", disable_corrector=list(disable))
    scheduler.set_timesteps(steps)
    times = [(int(k) + 1) / N_TRAIN for k in scheduler.timesteps] + [1.0 / N_TRAIN]
    points = model.schedule.points(torch.tensor(times, dtype=torch.float64))
    scheduler.sigmas = torch.tensor([p.sigma / p.alpha for p in points], dtype=torch.float64)
    for i, k in enumerate(scheduler.timesteps):
        x = scheduler.step(model.noise(x, times[i]), k, x).prev_sample
    return x, times


CASES = [(p, v, predict, steps, lof) for p, v, predict, steps, lof in [
    (1, "bh1", "data", 5, True), (2, "bh2", "data", 12, True), (2, "bh1", "noise", 7, False),
    (3, "bh1", "data", 12, True), (3, "bh2", "data", 25, False), (3, "bh2", "noise", 12, True),
    (3, "bh1", "noise", 2, True), (4, "bh2", "data", 9, False), (4, "bh1", "noise", 12, True)]]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy 2 warning
@pytest.mark.parametrize("predictor_order, variant, predict, steps, lower_order_final", CASES)
def test_matches_diffusers_to_float64_round_off(predictor_order, variant, predict, steps, lower_order_final):
    pytest.importorskip("diffusers")
    model = mixture2().predictor(dd.DiscreteVP(betas=DDPM_BETAS))
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    disable = (1, 4) if steps >= 9 else ()
    expected, times = run_diffusers(model, x, steps, predictor_order, variant, predict, lower_order_final, disable)
    integrator = UniPC(predictor_order, predict, variant, disable_corrector=disable)
    # diffusers lowers the final orders at every step count (no threshold): an integer above n.
    orders = integrator.step_orders(steps, steps + 1 if lower_order_final else False)
    got = dd.solve(model, x, integrator, times, orders=orders)
    assert got.nfe == steps
    scale = expected.abs().max().item()
    assert (got.x - expected).abs().max().item() <= 1e-12 * scale


@pytest.mark.parametrize("predictor_order, variant, predict, corrector", [
    (1, "bh1", "data", True), (2, "bh1", "data", True), (3, "bh1", "data", True), (3, "bh2", "noise", True),
    (2, "bh2", "data", False), (3, "bh2", "data", False)])
def test_convergence_order(predictor_order, variant, predict, corrector):
    model, x, exact = reference("linear", "mixture2")
    integrator = UniPC(predictor_order, predict, variant, corrector=corrector)
    assert integrator.order == predictor_order + corrector
    [result] = study.convergence_study(model, x, exact, {"unipc": integrator}, steps=[24, 48, 96, 192])
    assert result.nfe == [24, 48, 96, 192]
    assert abs(result.overall_slope - integrator.order) < 0.25, result


@pytest.mark.slow
@pytest.mark.parametrize("sname", ["linear", "discrete"])
@pytest.mark.parametrize("predict", ["data", "noise"])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_convergence_order_every_variant(sname, predict, variant):
    model, x, exact = reference(sname, "mixture2")
    integrators = {f"{p}{c}": UniPC(p, predict, variant, corrector=c) for p in (1, 2, 3) for c in (True, False)}
    for result in study.convergence_study(model, x, exact, integrators, steps=[24, 48, 96, 192]):
        assert abs(result.overall_slope - result.order) < 0.25, result


def test_step_orders_are_predictor_orders():
    assert UniPC(3).step_orders(6) == [1, 2, 3, 3, 3, 3]
    assert UniPC(3).step_orders(5, lower_order_final=True) == [1, 2, 3, 2, 1]
    assert UniPC(3).order == 4 and UniPC(3, corrector=False).order == 3
    assert UniPC(2).plan(dd.LinearVP(), 10).nfe == 10
    model = mixture2().predictor(dd.LinearVP())
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    times = [1.0, 0.6, 0.3, 0.1]
    torch.testing.assert_close(dd.solve(model, x, UniPC(3), times, orders=[1, 2, 4]).x,
                               dd.solve(model, x, UniPC(3), times, orders=[1, 2, 3]).x, rtol=0, atol=0)


def test_disabling_every_correction_is_unip():
    model = mixture2().predictor(dd.LinearVP())
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    plan = UniPC(3).plan(model.schedule, 12)
    corrected = dd.solve(model, x, UniPC(3), plan).x
    none = dd.solve(model, x, UniPC(3, disable_corrector=range(12)), plan).x
    unip = dd.solve(model, x, UniPC(3, corrector=False), plan.times, lower_order_final=True).x
    torch.testing.assert_close(none, unip, rtol=0, atol=0)
    assert (corrected - unip).abs().max() > 1e-4
    # Disabling one correction changes the result from that step on only.
    one = dd.solve(model, x, UniPC(3, disable_corrector=[10]), plan, return_intermediate=True)
    full = dd.solve(model, x, UniPC(3), plan, return_intermediate=True)
    for i in range(12):  # state i+1 is the (uncorrected) prediction of step i; step 10 is corrected at 11
        same = torch.equal(one.intermediates[i + 1], full.intermediates[i + 1])
        assert same == (i < 11), i


def test_unip_is_dpm_solver_pp_multistep():
    # UniP-p solves its order conditions exactly except at p = 2, where rho = 1/2 with B(h) = e^h - 1
    # is the "dpmsolver" weight phi_1/2: so UniP-3 (bh2) is DPM-Solver++ 3M, step for step.
    model = mixture2().predictor(dd.LinearVP())
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for predict in ("data", "noise"):
        plan = DPMSolverMultistep(3, predict).plan(model.schedule, 15)
        ours = dd.solve(model, x, UniPC(3, predict, "bh2", corrector=False), plan).x
        theirs = dd.solve(model, x, DPMSolverMultistep(3, predict, "dpmsolver"), plan).x
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)


def test_zero_length_step_is_the_identity():
    model = mixture2().predictor(dd.LinearVP())
    x = torch.randn(3, 4, dtype=torch.float64)
    s = model.schedule.point(0.5)
    result = UniPC(2).step(model, x, s, s, UniPC(2).init(), order=1)
    torch.testing.assert_close(result.x, x, rtol=0, atol=0)


def test_bad_input():
    with pytest.raises(ValueError, match="predictor_order must be 1 to 4"):
        UniPC(5)
    with pytest.raises(ValueError, match="unknown variant"):
        UniPC(2, variant="bh3")
    with pytest.raises(TypeError, match="corrector must be a bool"):
        UniPC(2, corrector=1)
    with pytest.raises(TypeError, match="disable_corrector must be a collection"):
        UniPC(2, disable_corrector=3)
    with pytest.raises(ValueError, match="disable_corrector"):
        UniPC(2, disable_corrector=[-1])
