"""Time grids (Align-Your-Steps tables, JSON files) and calibrated grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffode as dd
from diffode.calibrate import BASELINE_GRIDS, calibrate_grid, grid_error
from diffode.integrators import GivenTimes, get_grid, get_integrator
from diffode.integrators.grids import (
    AYS_SIGMAS,
    GRIDS,
    Karras,
    SigmaTable,
    exponential_lambda_times,
    load_grid,
    loglinear_interp,
)
from diffode.study import ground_truth

SD_BETAS = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled-linear betas


def test_ays_tables_reproduce_the_published_timesteps_on_stable_diffusions_schedule():
    schedule = dd.DiscreteVP(betas=SD_BETAS)
    for name, published in (("sd15", [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]),
                            ("sdxl", [999, 845, 730, 587, 443, 310, 193, 116, 53, 13])):
        times = SigmaTable(AYS_SIGMAS[name]).times(schedule, 1.0, 1e-3, 10)
        sigmas = (-schedule.lambda_(times)).exp()
        # The table's levels (the last clamped onto SD's sigma_min 0.0292, which the table rounds to 0.029).
        np.testing.assert_allclose(sigmas[1:-1].numpy(), AYS_SIGMAS[name][1:-1], rtol=1e-9)
        # The AYS timesteps of the same paper: discrete index n = t N - 1, within rounding.
        np.testing.assert_allclose((times[:-1] * 1000 - 1).numpy(), published, atol=0.6)


def test_loglinear_interpolation_is_the_papers():
    table = np.array(AYS_SIGMAS["sd15"])
    for m in (6, 11, 21, 33):
        expected = np.exp(np.interp(np.linspace(0, 1, m), np.linspace(0, 1, 11), np.log(table[::-1])))[::-1]
        np.testing.assert_allclose(loglinear_interp(table, m).numpy(), expected, rtol=1e-13)
    np.testing.assert_allclose(loglinear_interp(table, 11).numpy(), table, rtol=1e-14)


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("schedule", [dd.LinearVP(), dd.DiscreteVP(betas=torch.linspace(1e-4, 0.02, 1000)),
                                      dd.CosineVP()], ids=["linear", "discrete", "cosine"])
@pytest.mark.parametrize("n", [1, 5, 20])
def test_every_named_grid_is_monotone_and_inside_the_schedule(name, schedule, n):
    t_end = schedule.default_t_end
    times = get_grid(name).times(schedule, schedule.T, t_end, n)
    assert times.numel() == n + 1
    assert abs(times[0] - schedule.T) <= 1e-12 and abs(times[-1] - t_end) <= 1e-12 * t_end
    assert (times.diff() < 0).all()
    assert (times >= t_end * (1 - 1e-12)).all() and (times <= schedule.T * (1 + 1e-12)).all()


def test_a_table_outside_the_schedule_is_refused_unless_rescaled():
    schedule = dd.DiscreteVP(betas=SD_BETAS)
    with pytest.raises(ValueError, match="outside DiscreteVP.*pass rescale=True"):
        SigmaTable(AYS_SIGMAS["svd"]).times(schedule, 1.0, 1e-3, 10)
    times = SigmaTable(AYS_SIGMAS["svd"], rescale=True).times(schedule, 1.0, 1e-3, 10)
    assert times[0] == 1.0 and times[-1] == 1e-3 and (times.diff() < 0).all()
    with pytest.raises(ValueError, match="must decrease strictly"):
        SigmaTable([1.0, 2.0])
    with pytest.raises(ValueError, match="entries > 0"):
        SigmaTable([1.0, 0.0])


def test_json_round_trip(tmp_path):
    schedule = dd.LinearVP()
    grid = GivenTimes(get_grid("karras").times(schedule, 1.0, 1e-3, 7), {"note": "karras"})
    path = tmp_path / "grid.json"
    grid.to_json(path, nfe=7)
    back = GivenTimes.from_json(path)
    assert torch.equal(back.values, grid.values) and back.metadata == {"note": "karras", "nfe": 7}
    assert torch.equal(get_grid(str(path)).times(schedule, 1.0, 1e-3, 7), grid.values)
    plan = get_integrator("dpmpp_2m").plan(schedule, 7, grid=str(path))
    assert plan.times == tuple(grid.values.tolist())
    sigmas = tmp_path / "sigmas.json"
    sigmas.write_text(json.dumps({"sigmas": list(AYS_SIGMAS["sd15"]), "rescale": True}))
    assert isinstance(load_grid(sigmas), SigmaTable) and load_grid(sigmas).rescale
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [1, 2]}))
    with pytest.raises(ValueError, match="neither \"times\" nor \"sigmas\""):
        get_grid(str(bad))
    with pytest.raises(ValueError, match="has no \"times\" list"):
        GivenTimes.from_json(sigmas)


@pytest.fixture(scope="module")
def mixture():
    from diffode.models.builtin import load_model

    spec, model = load_model("mixture")
    pilot = spec.prior(model.schedule, 128, seed=0)
    held_out = spec.prior(model.schedule, 256, seed=1000)
    assert not torch.isclose(pilot[:, None], held_out[None]).all(dim=-1).any()  # disjoint noise
    with torch.no_grad():
        return model, pilot, ground_truth(model, pilot, rtol=1e-6, atol=1e-6), held_out, \
            ground_truth(model, held_out, rtol=1e-6, atol=1e-6)


def _held_out_errors(model, integrator, nfe, grids, held_out, held_exact):
    errors = {}
    for name, grid in grids.items():
        plan = integrator.plan(model.schedule, nfe, grid=grid)
        assert plan.nfe == nfe
        errors[name] = grid_error(model, held_out, held_exact, integrator, plan.times, plan.orders)
    return errors


def test_calibrated_grid_beats_every_standard_grid_on_held_out_noise(mixture):
    # iPNDM at NFE 5: the standard grids' held-out errors differ by 30%, so a calibration that picked
    # the wrong grid, or overfitted its pilots' mode flips, fails here.
    model, pilot, pilot_exact, held_out, held_exact = mixture
    integrator = get_integrator("ipndm")
    calibration = calibrate_grid(model, integrator, 5, pilot, exact=pilot_exact, max_runs=40)
    assert calibration.pilot_error <= min(calibration.baselines[g] for g in BASELINE_GRIDS)
    assert set(calibration.baselines) == {*BASELINE_GRIDS, "family"}
    times = calibration.grid.values
    assert times[0] == model.schedule.T and times[-1] == model.schedule.default_t_end and (times.diff() < 0).all()
    errors = _held_out_errors(model, integrator, 5, {"calibrated": calibration.grid, **{g: g for g in BASELINE_GRIDS}},
                              held_out, held_exact)
    best = min(errors[g] for g in BASELINE_GRIDS)
    assert max(errors[g] for g in BASELINE_GRIDS) > 1.2 * best, errors
    assert errors["calibrated"] <= best, errors


def test_significance_test_rejects_an_improvement_carried_by_a_few_samples():
    from diffode.calibrate import _significantly_better

    old = torch.full((100,), 1e-4, dtype=torch.float64)
    old[:2] = 1.0  # two pilots in another mode
    one_flip_less = old.clone()
    one_flip_less[0] = 1e-4
    assert _significantly_better(one_flip_less, old, 0.0)
    assert not _significantly_better(one_flip_less, old, 2.0)  # one sample carries the whole gain
    everywhere = old.clone()
    everywhere[2:] *= 0.5  # every other pilot better: a smaller gain, but a consistent one
    assert _significantly_better(everywhere, old, 2.0)
    assert not _significantly_better(old, everywhere, 0.0)
    with_inf = old.clone()
    with_inf[5] = float("inf")
    assert _significantly_better(old, with_inf, 2.0) and not _significantly_better(with_inf, old, 2.0)
    with pytest.raises(ValueError, match="significance"):
        calibrate_grid(None, "dpmpp_2m", 5, torch.zeros(2, 3), significance=-1.0)


def test_dp_finds_the_cheapest_path():
    from diffode.calibrate import _cheapest_path

    cost = torch.full((4, 4), float("inf"), dtype=torch.float64)
    for (i, j), c in {(0, 1): 1.0, (1, 3): 1.0, (0, 2): 0.5, (2, 3): 0.5, (0, 3): 10.0, (1, 2): 0.1}.items():
        cost[i, j] = c
    assert _cheapest_path(cost, 2) == [0, 2, 3]
    assert _cheapest_path(cost, 3) == [0, 1, 2, 3]
    assert _cheapest_path(cost, 1) == [0, 3]


def test_calibrate_command_writes_a_grid_that_sample_reads(tmp_path, capsys):
    from diffode.cli import main

    out = tmp_path / "grid.json"
    code = main(["calibrate", "--integrator", "dpmpp_2m", "--nfe", "5", "-o", str(out), "--pilots", "4", "--test",
                 "4", "--max-runs", "10", "--quiet", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_seed"] == report["seed"] + 1 and set(report["held_out_rmse"]) >= {"calibrated", "logSNR"}
    assert len(json.loads(out.read_text())["times"]) == 6
    assert main(["sample", "-o", str(tmp_path / "x.pt"), "--nfe", "5", "--grid", str(out), "--batch", "2",
                 "--quiet"]) == 0
    with pytest.raises(SystemExit, match="2"):
        main(["sample", "-o", str(tmp_path / "x.pt"), "--grid", "missing.json", "--quiet"])


def test_exponential_lambda_family_holds_logsnr_and_karras():
    schedule = dd.DiscreteVP(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    t_end = schedule.default_t_end
    logsnr = get_grid("logSNR").times(schedule, 1.0, t_end, 7)
    np.testing.assert_allclose(exponential_lambda_times(schedule, 1.0, t_end, 7, 0.0).numpy(), logsnr.numpy(),
                               rtol=1e-12)
    for rho in (1.0, 7.0):
        np.testing.assert_allclose(exponential_lambda_times(schedule, 1.0, t_end, 7, 1 / rho).numpy(),
                                   Karras(rho).times(schedule, 1.0, t_end, 7).numpy(), rtol=1e-12)
    lam = schedule.lambda_(exponential_lambda_times(schedule, 1.0, t_end, 7, -1.0))
    steps = lam.diff()
    assert (steps > 0).all() and (steps.diff() < 0).all()  # p < 0: shorter steps in lambda at low noise
    # Large |p lambda| (here |lambda| ~ 7) neither overflows nor loses the end points.
    for power in (-40.0, 40.0):
        times = exponential_lambda_times(schedule, 1.0, t_end, 7, power)
        assert torch.isfinite(times).all() and (times.diff() < 0).all() and times[-1] == t_end
    with pytest.raises(ValueError, match="power"):
        exponential_lambda_times(schedule, 1.0, t_end, 7, float("nan"))


def test_family_search_finds_the_minimum_of_a_smooth_objective():
    from diffode.calibrate import FAMILY_POWERS, _family_search

    calls = []

    def objective(p):
        calls.append(p)
        return (p - 0.37) ** 2 + 1.0

    power, value, runs = _family_search(objective, FAMILY_POWERS, 40)
    assert abs(power - 0.37) < 2e-3 and value == pytest.approx(1.0, abs=1e-5) and runs == len(calls) <= 40
    power, _, runs = _family_search(lambda p: (p + 5.0) ** 2, FAMILY_POWERS, 40)
    assert power == pytest.approx(min(FAMILY_POWERS), abs=2e-3)  # at the scan's edge: no extrapolation


def test_calibrate_command_options_reach_the_calibration(tmp_path, capsys):
    from diffode.cli import main

    out = tmp_path / "grid.json"
    assert main(["calibrate", "--integrator", "dpmpp_2m", "--nfe", "4", "-o", str(out), "--pilots", "4", "--test",
                 "4", "--method", "family", "--max-runs", "12", "--significance", "0", "--quiet", "--json"]) == 0
    saved = json.loads(out.read_text())
    assert saved["method"] == "family" and saved["significance"] == 0.0 and len(saved["times"]) == 5
    capsys.readouterr()
    assert main(["calibrate", "-o", str(out), "--significance", "-1", "--pilots", "4", "--test", "4", "--quiet"]) == 2
    assert "significance must be" in capsys.readouterr().err
