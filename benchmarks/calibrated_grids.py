"""Calibrated time grids against the standard ones, on noise disjoint from the pilot noise.

For each built-in model, integrator and NFE budget: calibrate a grid on ``--pilots`` samples of
seed 0 (``diffode.calibrate.calibrate_grid``, both searches), then measure the RMSE against the
RK45 ground truth on ``--batch`` samples of seed 1 for the calibrated grids and the standard grids.
Writes results/calibrated_grids.md.

    python benchmarks/calibrated_grids.py [--models mixture digits] [--integrators dpmpp_2m heun] [--nfe 5 10 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import markdown_table, write_results  # noqa: F401  (sets sys.path)
from diffode.calibrate import BASELINE_GRIDS, calibrate_grid, grid_error
from diffode.integrators import get_integrator
from diffode.models.builtin import load_model
from diffode.study import ground_truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mixture", "digits"])
    parser.add_argument("--integrators", nargs="+", default=["dpmpp_2m", "dpmpp_3m", "heun"])
    parser.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--pilots", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-runs", type=int, default=300)
    args = parser.parse_args()
    header = ["model", "integrator", "NFE", *BASELINE_GRIDS, "dp", "search", "search / best standard", "seconds"]
    rows = []
    for name in args.models:
        spec, model = load_model(name)
        rtol = 1e-8 if spec.analytic else 1e-6
        schedule = model.schedule
        pilot = spec.prior(schedule, args.pilots, seed=0)
        test = spec.prior(schedule, args.batch, seed=1)
        with torch.no_grad():
            pilot_exact = ground_truth(model, pilot, rtol=rtol, atol=rtol)
            test_exact = ground_truth(model, test, rtol=rtol, atol=rtol)
        for integrator_name in args.integrators:
            integrator = get_integrator(integrator_name)
            for nfe in args.nfe:
                start = time.perf_counter()
                grids = {}
                for method in ("dp", "search"):
                    grids[method] = calibrate_grid(model, integrator, nfe, pilot, method=method, exact=pilot_exact,
                                                   max_runs=args.max_runs, rtol=rtol).grid
                seconds = time.perf_counter() - start
                errors = {}
                for grid in (*BASELINE_GRIDS, "dp", "search"):
                    plan = integrator.plan(schedule, nfe, grid=grids.get(grid, grid))
                    errors[grid] = grid_error(model, test, test_exact, integrator, plan.times, plan.orders)
                best = min(errors[g] for g in BASELINE_GRIDS)
                rows.append([name, integrator_name, str(nfe), *[f"{errors[g]:.3e}" for g in (*BASELINE_GRIDS, "dp", "search")],
                             f"{errors['search'] / best:.2f}", f"{seconds:.0f}"])
                print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(header, rows)
    print(table)
    write_results("calibrated_grids", "# Calibrated grids on held-out noise\n\n"
                  f"Pilot: {args.pilots} samples of seed 0; judged on {args.batch} samples of seed 1 "
                  "(RMSE against the RK45 ground truth at the schedule's default end time).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
