"""Time grids (Align-Your-Steps tables, JSON files) and calibrated grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffode as dd
from diffode.calibrate import calibrate_grid, grid_error
from diffode.integrators import GivenTimes, get_grid, get_integrator
from diffode.integrators.grids import AYS_SIGMAS, GRIDS, SigmaTable, load_grid, loglinear_interp
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
    pilot = spec.prior(model.schedule, 16, seed=0)
    held_out = spec.prior(model.schedule, 32, seed=1)
    assert not torch.isclose(pilot[:, None], held_out[None]).all(dim=-1).any()  # disjoint noise
    with torch.no_grad():
        return model, pilot, ground_truth(model, pilot, rtol=1e-8, atol=1e-8), held_out, \
            ground_truth(model, held_out, rtol=1e-8, atol=1e-8)


def test_calibrated_grid_beats_the_default_grid_on_held_out_noise(mixture):
    model, pilot, pilot_exact, held_out, held_exact = mixture
    integrator = get_integrator("dpmpp_2m")
    calibration = calibrate_grid(model, integrator, 10, pilot, exact=pilot_exact, max_runs=60, rtol=1e-8)
    assert calibration.pilot_error <= min(calibration.baselines.values())
    times = calibration.grid.values
    assert times[0] == model.schedule.T and times[-1] == model.schedule.default_t_end and (times.diff() < 0).all()
    errors = {}
    for name, grid in (("calibrated", calibration.grid), ("time_uniform", "time_uniform")):
        plan = integrator.plan(model.schedule, 10, grid=grid)
        assert plan.nfe == 10
        errors[name] = grid_error(model, held_out, held_exact, integrator, plan.times, plan.orders)
    assert errors["calibrated"] < errors["time_uniform"], errors


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
