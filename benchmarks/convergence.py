"""Benchmark 2: the fitted convergence order of every registered diffode integrator.

On the built-in analytic mixture (shape (8, 3, 8, 8)), under the discrete DDPM betas and the linear
VP schedule, each integrator runs 128, 256, 512 and 1024 steps of a grid uniform in lambda (its full
order on every step; a multistep method still warms up) and is compared with the RK45 ground truth;
the slope of log(error) against log(steps) is the fitted order. The same machinery as
``diffode converge`` (:mod:`diffode.study`).

For contrast, one row runs diffode's multistep order 3 with the reference implementation's weights
(``update_factors`` = phi_1, phi_2, phi_3: half the second-difference term the Taylor expansion
asks for), which is what ``dpm_solver_pytorch.py`` and diffusers' ``solver_order=3`` compute.

    python benchmarks/convergence.py            # writes results/convergence.md
"""

from __future__ import annotations

import argparse
import sys
import time

import _common
from _common import markdown_table
from diffode import report, study
from diffode.integrators import DPMSolverMultistep
from diffode.integrators.coefficients import phi
from diffode.models.builtin import load_model

STEPS = (128, 256, 512, 1024)


class ReferenceWeighted3M(DPMSolverMultistep):
    """Multistep order 3 with the reference implementation's weights (for contrast only)."""

    def update_factors(self, n_nodes, z):
        return [phi(1, z), phi(2, z), phi(3, z)] if n_nodes == 3 else None


def run(schedule_name: str, batch: int, seed: int, tolerance: float):
    spec, model = load_model("mixture", schedule_name)
    x = spec.prior(model.schedule, batch, seed)
    exact = study.ground_truth(model, x)
    integrators = {name: name for name in study.registered_names()}
    integrators["reference-weighted 3M (contrast)"] = ReferenceWeighted3M(3, "data")
    return model, study.convergence_study(model, x, exact, integrators, STEPS, tolerance=tolerance, progress=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", nargs="+", default=["discrete", "linear"], choices=["discrete", "linear"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.25)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    sections = ["# Convergence orders", "", f"Environment: {_common.environment()}", "",
                "Produced by `python benchmarks/convergence.py` (the machinery of `diffode converge`). RMSE "
                "against the RK45 ground truth at t_end on the built-in mixture, grid uniform in lambda; "
                f"slope = fitted order; ok = within {args.tolerance} of the nominal order.", ""]
    all_ok = True
    for name in args.schedules:
        start = time.perf_counter()
        model, results = run(name, args.batch, args.seed, args.tolerance)
        header, rows = report.convergence_table(results)
        third = [r for r in results if r.label in ("dpmpp_3m", "dpm_3m", "dpmpp_3m_sw", "dpm_3m_sw")]
        ok = all(r.slope >= 2.75 for r in third)
        mine = [r for r in results if not r.label.startswith("reference")]
        all_ok &= ok and all(r.passed for r in mine)
        sections += [f"### {name}: {model.schedule!r}", "", markdown_table(header, rows), "",
                     "Multistep order 3 (fitted slope >= 2.75): "
                     + ", ".join(f"{r.label} {r.slope:.2f}" for r in third) + (" -- met" if ok else " -- MISSED"),
                     "", f"({time.perf_counter() - start:.0f} s)", ""]
    _common.report(sections, "convergence", not args.no_write)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
