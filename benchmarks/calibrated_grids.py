"""Calibrated time grids against the standard ones, on noise disjoint from the pilot noise.

For each built-in model, integrator and NFE budget, and each of ``--draws`` pilot draws ``d``:
calibrate a grid on ``--pilots`` samples of seed ``d`` (``diffode.calibrate.calibrate_grid``), then
measure the RMSE against the RK45 ground truth on ``--held-out`` samples of seed 1000 (disjoint
noise, the same for every draw) for the calibrated grid and every standard grid
(``BASELINE_GRIDS``). The table gives the standard grids' held-out RMSE, the calibrated grids'
median over the draws, and the calibrated / best-standard ratio of each draw (the best standard grid
picked on the held-out noise itself, which favours the standard grids). On the analytic mixture it also
counts mode flips: held-out samples that end nearer another component's mean than the ground truth
does. Writes results/calibrated_grids.md.

    python benchmarks/calibrated_grids.py [--models mixture digits] [--integrators dpmpp_2m ipndm] [--nfe 5 10 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from _common import environment, markdown_table, set_threads, write_results
from diffode.calibrate import BASELINE_GRIDS, calibrate_grid, grid_error
from diffode.integrators import get_integrator
from diffode.models.builtin import image_mixture, load_model
from diffode.solve import solve
from diffode.study import ground_truth

INTEGRATORS = ("dpmpp_2m", "dpmpp_3m", "unipc_bh2_3", "ipndm", "deis_tab3")
#: Per model: pilot samples, held-out samples, ground-truth tolerance.
SETTINGS = {"mixture": (256, 2048, 1e-8), "digits": (64, 128, 1e-5)}


def _ground_truth(name, spec, model, batch, seed, rtol, cache):
    x = spec.prior(model.schedule, batch, seed=seed)
    path = os.path.join(cache, f"{name}_{batch}_{seed}_{rtol:g}.pt") if cache else None
    if path and os.path.exists(path):
        return x, torch.load(path)
    with torch.no_grad():
        exact = ground_truth(model, x, rtol=rtol, atol=rtol)
    if path:
        os.makedirs(cache, exist_ok=True)
        torch.save(exact, path)
    return x, exact


def _flips(model, x, exact, integrator, plan, means):
    """Samples whose nearest mixture mean differs from their ground truth's."""
    with torch.no_grad():
        out = solve(model, x, integrator, plan).x
    nearest = [torch.cdist(v.flatten(1), means.flatten(1)).argmin(dim=1) for v in (out, exact)]
    return int((nearest[0] != nearest[1]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS))
    parser.add_argument("--integrators", nargs="+", default=list(INTEGRATORS))
    parser.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--draws", type=int, default=2, help="pilot/held-out draws (medians over them)")
    parser.add_argument("--pilots", type=int, default=None, help="pilot samples (default per model)")
    parser.add_argument("--held-out", type=int, default=None, help="held-out samples (default per model)")
    parser.add_argument("--max-runs", type=int, default=60)
    parser.add_argument("--method", default="search")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", default=None, help="a folder to keep ground truths in between runs")
    parser.add_argument("--out", default="calibrated_grids")
    args = parser.parse_args()
    set_threads(args.threads)
    grids = (*BASELINE_GRIDS, "calibrated")
    header = ["model", "integrator", "NFE", *grids, "calibrated / best standard", "flips: best standard; calibrated",
              "seconds"]
    rows = []
    means = image_mixture().means
    for name in args.models:
        spec, model = load_model(name)
        pilots, held, rtol = SETTINGS.get(name, (64, 256, 1e-6))
        pilots, held = args.pilots or pilots, args.held_out or held
        test, test_exact = _ground_truth(name, spec, model, held, 1000, rtol, args.cache)
        data = [_ground_truth(name, spec, model, pilots, d, rtol, args.cache) for d in range(args.draws)]
        for integrator_name in args.integrators:
            integrator = get_integrator(integrator_name)
            for nfe in args.nfe:
                errors = {g: [] for g in grids}
                ratios, flips, seconds = [], [], []
                for pilot, pilot_exact in data:
                    start = time.perf_counter()
                    calibration = calibrate_grid(model, integrator, nfe, pilot, exact=pilot_exact, rtol=rtol,
                                                 method=args.method, max_runs=args.max_runs)
                    seconds.append(time.perf_counter() - start)
                    plans = {g: integrator.plan(model.schedule, nfe, grid=calibration.grid if g == "calibrated" else g)
                             for g in grids}
                    draw = {g: grid_error(model, test, test_exact, integrator, p.times, p.orders) for g, p in plans.items()}
                    for g in grids:
                        errors[g].append(draw[g])
                    best = min(BASELINE_GRIDS, key=draw.get)
                    ratios.append(draw["calibrated"] / draw[best])
                    if spec.analytic:
                        flips.append(tuple(_flips(model, test, test_exact, integrator, plans[g], means)
                                           for g in (best, "calibrated")))
                flip_text = f"{flips[0][0]}; " + ", ".join(str(b) for _, b in flips) if flips else "-"
                rows.append([name, integrator_name, str(nfe), *[f"{statistics.median(errors[g]):.4f}" for g in grids],
                             ", ".join(f"{r:.2f}" for r in ratios), flip_text,
                             f"{statistics.median(seconds):.0f}"])
                print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(header, rows)
    print(table)
    settings = ", ".join(f"{m}: {args.pilots or SETTINGS[m][0]} pilots, {args.held_out or SETTINGS[m][1]} held out, "
                         f"ground truth rtol {SETTINGS[m][2]:g}" for m in args.models if m in SETTINGS)
    write_results(args.out, "# Calibrated grids on held-out noise\n\n"
                  f"`calibrate_grid(method={args.method!r}, max_runs={args.max_runs})`; draw d calibrates on the "
                  f"pilot noise of seed d ({args.draws} draws) and every grid is judged on the held-out noise of "
                  f"seed 1000 ({settings}). RMSE against the RK45 ground truth at the schedule's default end time; "
                  "the calibrated column is the median over the draws, the ratio column each draw's calibrated / "
                  "best standard grid (the best picked on the held-out noise itself). Flips (mixture only): "
                  "held-out samples that end nearer another component than their ground truth, for the best "
                  "standard grid, then for each draw's calibrated grid.\n\n"
                  + table + f"\n\n{environment()}\n")


if __name__ == "__main__":
    main()
