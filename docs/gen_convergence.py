"""Generate the measured evidence shown on the Verification and Choosing pages.

Run from the repository root (about a minute on one CPU core):

    python docs/gen_convergence.py

It writes, under ``docs/generated/``:

* ``convergence.json``: every measured error, with the configuration that produced it;
* ``convergence_slopes.md``: fitted convergence orders on logSNR grids (the main table);
* ``convergence_warmup.md``: third-order multistep with the two warm-ups;
* ``convergence_time_uniform.md``: why convergence studies use logSNR grids;
* ``accuracy_by_nfe.md``: error at 10 to 50 model evaluations, unguided and guided;
* ``error_vs_steps.png``: the log-log plot.

Everything runs in float64 on the CPU with diffode's public API only: the analytic Gaussian
mixture (:class:`diffode.GaussianMixture`) as the model, :func:`diffode.solve_reference` (RK45 at
rtol = atol = 1e-10) as the ground truth, and :func:`diffode.solve` / :class:`diffode.DPMSolver`
as the integrators under test. ``tests/docs/test_generated.py`` re-runs a few of these cases and
checks that they reproduce the committed numbers, so the pages cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import diffode as dd
from diffode.integrators import (
    DPMSolverMultistep,
    DPMSolverSinglestep,
    UniformLambda,
    UniformTime,
)
from diffode.integrators.coefficients import phi

OUT = Path(__file__).resolve().parent / "generated"

DDPM_BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
STEPS = [24, 48, 96, 192, 384]           # outer steps of the main study (logSNR grids)
WARMUP_STEPS = [32, 64, 128, 256, 512]   # the warm-up study (start at t = 0.5)
UNIFORM_STEPS = [25, 50, 100, 200, 400, 800, 1600]
NFES = [10, 15, 20, 25, 50]
SCHEDULES = {"linear": "LinearVP", "discrete": "DiscreteVP", "cosine": "CosineVP"}


# ---------------------------------------------------------------------------------------------
# Problems: an analytic model, a start state and its RK45 ground truth
# ---------------------------------------------------------------------------------------------

def schedule(name: str) -> dd.NoiseSchedule:
    return {"linear": dd.LinearVP(), "discrete": dd.DiscreteVP(betas=DDPM_BETAS), "cosine": dd.CosineVP()}[name]


def mixture() -> dd.GaussianMixture:
    """Two components in 4 dimensions; the means are not 0 and the stds not 1, so no method is exact."""
    return dd.GaussianMixture([0.3, 0.7], [[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]], [0.3, 0.6])


@dataclass(frozen=True)
class Problem:
    schedule: str = "linear"
    t_start: float | None = None
    t_end: float | None = None
    guidance_scale: float | None = None   # None: unguided; else classifier-free guidance at this scale
    batch: int = 8
    seed: int = 0


_CACHE: dict = {}


def setup(problem: Problem):
    """(model, x_T, exact x at t_end, t_start, t_end) for a problem; the reference solve is cached."""
    if problem in _CACHE:
        return _CACHE[problem]
    sched = schedule(problem.schedule)
    mix = mixture()
    if problem.guidance_scale is None:
        model = mix.predictor(sched)
    else:
        # Classifier-free guidance of an analytic model: the condition selects the first component
        # alone, the empty condition the whole mixture. A large scale makes the ODE stiff.
        cond_mix = dd.GaussianMixture([1.0], mix.means[:1], mix.stds[:1])
        net_u, net_c = mix.network(sched), cond_mix.network(sched)

        def net(x, t, c):
            return torch.where(c.reshape(-1, 1) == 1, net_c(x, t), net_u(x, t))

        model = dd.wrap(net, sched, "noise", guidance="classifier-free", time_input="continuous",
                        condition=torch.ones(problem.batch), unconditional_condition=torch.zeros(problem.batch),
                        scale=problem.guidance_scale)
    t_start = sched.T if problem.t_start is None else problem.t_start
    t_end = sched.default_t_end if problem.t_end is None else problem.t_end
    g = torch.Generator().manual_seed(problem.seed)
    x = torch.randn(problem.batch, 4, generator=g, dtype=torch.float64)
    exact = dd.solve_reference(model, x, t_start, t_end).x
    _CACHE[problem] = (model, x, exact, t_start, t_end)
    return _CACHE[problem]


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).square().mean().sqrt().item()


# ---------------------------------------------------------------------------------------------
# Integrators under test
# ---------------------------------------------------------------------------------------------

class ReferenceWeightedMultistep(DPMSolverMultistep):
    """Multistep DPM-Solver with the reference implementation's order-3 weights.

    The reference code weights the second divided difference by phi_3 where the Taylor expansion
    needs 2 phi_3; :meth:`update_factors` is the documented override point for such variants.
    """

    def update_factors(self, n_nodes, z):
        return [phi(1, z), phi(2, z), phi(3, z)] if n_nodes == 3 else None


@dataclass(frozen=True)
class Case:
    label: str
    method: str            # "multistep" or "singlestep"
    order: int
    algorithm: str = "dpmsolver++"
    solver_type: str = "dpmsolver"
    warmup: str = "lower_order"
    variant: str = "diffode"   # or "reference-3M"
    expected: float | None = None
    name: str | None = None    # a registered integrator (the other fields then only describe it)
    limited_on: tuple[str, ...] = ()  # schedules on which the nominal order does not hold (see the note)

    @property
    def predict(self) -> str:
        return "data" if self.algorithm == "dpmsolver++" else "noise"

    def integrator(self):
        if self.name is not None:
            return dd.get_integrator(self.name)
        if self.variant == "reference-3M":
            return ReferenceWeightedMultistep(self.order, self.predict, self.solver_type)
        if self.method == "multistep":
            return DPMSolverMultistep(self.order, self.predict, self.solver_type, warmup=self.warmup)
        return DPMSolverSinglestep(self.order, self.predict, self.solver_type)


def run(case: Case, problem: Problem, steps: list[int], grid=None) -> tuple[list[float], list[int]]:
    """Errors against the RK45 ground truth and exact NFEs, for each number of steps."""
    model, x, exact, t_start, t_end = setup(problem)
    grid = UniformLambda() if grid is None else grid
    errors, nfes = [], []
    for n in steps:
        times = grid.times(model.schedule, t_start, t_end, n)
        sol = dd.solve(model, x, case.integrator(), times)
        errors.append(rmse(sol.x, exact))
        nfes.append(sol.nfe)
    return errors, nfes


def slope(steps, errors) -> float:
    """Least-squares slope of log(error) against log(1/steps): the measured order."""
    return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


MAIN_CASES = [
    Case("DPM-Solver++ 1 (DDIM)", "multistep", 1, expected=1),
    Case("DPM-Solver++ 2M", "multistep", 2, expected=2),
    Case("DPM-Solver++ 2M, taylor", "multistep", 2, solver_type="taylor", expected=2),
    Case("DPM-Solver++ 3M", "multistep", 3, expected=3),
    Case("DPM-Solver++ 2S", "singlestep", 2, expected=2),
    Case("DPM-Solver++ 3S", "singlestep", 3, expected=3),
    Case("DPM-Solver++ 3S, taylor", "singlestep", 3, solver_type="taylor", expected=3),
    Case("DPM-Solver 2M", "multistep", 2, algorithm="dpmsolver", expected=2),
    Case("DPM-Solver 3M", "multistep", 3, algorithm="dpmsolver", expected=3),
    Case("DPM-Solver 2S", "singlestep", 2, algorithm="dpmsolver", expected=2),
    Case("DPM-Solver 3S", "singlestep", 3, algorithm="dpmsolver", expected=3),
    Case("DPM-Solver++ 4M (exponential AB4)", "multistep", 4, expected=4, name="dpmpp_4m"),
    Case("DPM-Solver 4M (exponential AB4)", "multistep", 4, algorithm="dpmsolver", expected=4, name="dpm_4m"),
    Case("UniPC-2 (bh1)", "multistep", 3, expected=3, name="unipc_bh1_2"),
    Case("UniPC-2 (bh2)", "multistep", 3, expected=3, name="unipc_bh2_2"),
    Case("UniPC-3 (bh1)", "multistep", 4, expected=4, name="unipc_bh1_3"),
    Case("UniPC-3 (bh2)", "multistep", 4, expected=4, name="unipc_bh2_3"),
    Case("UniP-3 (bh2, no corrector)", "multistep", 3, expected=3, name="unip_3"),
    Case("DEIS tAB-1", "multistep", 2, algorithm="dpmsolver", expected=2, name="deis_tab1"),
    Case("DEIS tAB-2", "multistep", 3, algorithm="dpmsolver", expected=3, name="deis_tab2"),
    Case("DEIS tAB-3", "multistep", 4, algorithm="dpmsolver", expected=4, name="deis_tab3", limited_on=("discrete",)),
    Case("iPNDM (equal-step weights)", "multistep", 4, algorithm="dpmsolver", expected=2,
         name="ipndm"),
    Case("DPM-Solver++ 3M, reference weights", "multistep", 3, solver_type="taylor",
         variant="reference-3M", expected=2),
    Case("DPM-Solver 3M, reference weights", "multistep", 3, algorithm="dpmsolver",
         solver_type="taylor", variant="reference-3M", expected=2),
]

WARMUP_CASES = [
    Case("DPM-Solver++ 3M, warmup=\"lower_order\"", "multistep", 3, warmup="lower_order", expected=2),
    Case("DPM-Solver++ 3M, warmup=\"singlestep\"", "multistep", 3, warmup="singlestep", expected=3),
    Case("DPM-Solver 3M, warmup=\"lower_order\"", "multistep", 3, algorithm="dpmsolver", warmup="lower_order",
         expected=2),
    Case("DPM-Solver 3M, warmup=\"singlestep\"", "multistep", 3, algorithm="dpmsolver", warmup="singlestep",
         expected=3),
]

UNIFORM_CASES = [Case(f"DPM-Solver++ multistep order {k}", "multistep", k, expected=k) for k in (1, 2, 3)]

NFE_SOLVERS = [
    ("DDIM (order 1)", "dpmsolver++", dict(order=1, method="multistep")),
    ("DPM-Solver++ 2M", "dpmsolver++", dict(order=2, method="multistep")),
    ("DPM-Solver++ 3M", "dpmsolver++", dict(order=3, method="multistep")),
    ("DPM-Solver++ 2S", "dpmsolver++", dict(order=2, method="singlestep")),
    ("DPM-Solver++ 3S", "dpmsolver++", dict(order=3, method="singlestep")),
    ("DPM-Solver 3S (DPM-Solver-fast)", "dpmsolver", dict(order=3, method="singlestep")),
    ("DPM-Solver++ 4M", "dpmsolver++", dict(integrator="dpmpp_4m")),
    ("UniPC-2 (bh2)", "dpmsolver++", dict(integrator="unipc_bh2_2")),
    ("UniPC-3 (bh1)", "dpmsolver++", dict(integrator="unipc_bh1_3")),
    ("DEIS tAB-3", "dpmsolver", dict(integrator="deis_tab3")),
    ("iPNDM", "dpmsolver", dict(integrator="ipndm")),
]
NFE_PROBLEMS = {
    "unguided": Problem("discrete"),
    "guided (classifier-free, scale 7.5)": Problem("discrete", guidance_scale=7.5),
}


def accuracy_at_nfe(problem: Problem, algorithm: str, kwargs: dict, skip_type: str) -> tuple[list[float], list[int]]:
    """The user-facing front with its defaults (lower_order_final=True): error and NFE at each budget."""
    model, x, exact, t_start, t_end = setup(problem)
    solver = dd.DPMSolver(model, algorithm=algorithm)
    errors, nfes = [], []
    for nfe in NFES:
        out = solver.sample(x, steps=nfe, t_start=t_start, t_end=t_end, skip_type=skip_type, **kwargs)
        errors.append(rmse(out, exact))
        nfes.append(solver.last_solution.nfe)
    return errors, nfes


def adaptive_accuracy(problem: Problem, algorithm: str = "dpmsolver++") -> list[dict]:
    model, x, exact, t_start, t_end = setup(problem)
    solver = dd.DPMSolver(model, algorithm=algorithm)
    rows = []
    for order, rtol in ((2, 0.05), (3, 0.05), (3, 0.01)):
        out = solver.sample(x, order=order, method="adaptive", rtol=rtol, t_start=t_start, t_end=t_end)
        rows.append(dict(order=order, rtol=rtol, atol=0.0078, nfe=solver.last_solution.nfe, error=rmse(out, exact)))
    return rows


def last_step_in_lambda(problem: Problem, grid, n: int) -> float:
    model, _, _, t_start, t_end = setup(problem)
    times = grid.times(model.schedule, t_start, t_end, n)
    lam = model.schedule.lambda_(times[-2:])
    return float(lam[1] - lam[0])


# ---------------------------------------------------------------------------------------------
# The study, the tables and the plot
# ---------------------------------------------------------------------------------------------

def study() -> dict:
    data: dict = {"config": {"steps": STEPS, "warmup_steps": WARMUP_STEPS, "uniform_steps": UNIFORM_STEPS,
                             "nfes": NFES, "reference": "solve_reference, dopri5, rtol=atol=1e-10, float64",
                             "model": "GaussianMixture, 2 components in 4-D, batch 8, seed 0",
                             "torch": torch.__version__, "diffode": dd.__version__},
                  "main": [], "warmup": [], "time_uniform": [], "accuracy": [], "adaptive": {}}
    for case in MAIN_CASES:
        row = {"case": asdict(case), "schedules": {}}
        for sname in SCHEDULES:
            errors, nfes = run(case, Problem(sname), STEPS)
            row["schedules"][sname] = {"steps": STEPS, "nfe": nfes, "error": errors, "slope": slope(STEPS, errors)}
        data["main"].append(row)
    warm = Problem("linear", t_start=0.5, t_end=1e-3)
    for case in WARMUP_CASES:
        errors, nfes = run(case, warm, WARMUP_STEPS)
        data["warmup"].append({"case": asdict(case), "steps": WARMUP_STEPS, "nfe": nfes, "error": errors,
                               "slope": slope(WARMUP_STEPS, errors)})
    lin = Problem("linear")
    for case in UNIFORM_CASES:
        entry = {"case": asdict(case)}
        for key, grid in (("time_uniform", UniformTime()), ("logSNR", UniformLambda())):
            errors, nfes = run(case, lin, UNIFORM_STEPS, grid)
            entry[key] = {"steps": UNIFORM_STEPS, "error": errors, "nfe": nfes}
        data["time_uniform"].append(entry)
    data["last_step"] = {key: [last_step_in_lambda(lin, grid, n) for n in UNIFORM_STEPS]
                         for key, grid in (("time_uniform", UniformTime()), ("logSNR", UniformLambda()))}
    for pname, problem in NFE_PROBLEMS.items():
        for label, algorithm, kwargs in NFE_SOLVERS:
            for skip in ("time_uniform", "logSNR"):
                errors, nfes = accuracy_at_nfe(problem, algorithm, kwargs, skip)
                data["accuracy"].append({"problem": pname, "solver": label, "algorithm": algorithm, **kwargs,
                                         "skip_type": skip, "nfe": nfes, "error": errors})
        data["adaptive"][pname] = adaptive_accuracy(problem)
    return data


def _e(v: float) -> str:
    return f"{v:.2e}" if math.isfinite(v) else "diverged"


def table_slopes(data: dict) -> str:
    heads = " | ".join(f"Measured, `{cls}`" for cls in SCHEDULES.values())
    lines = [f"| Integrator | Order | {heads} | Error, N = {STEPS[0]} | Error, N = {STEPS[-1]} | NFE / step |",
             "|---|:-:|" + ":-:|" * len(SCHEDULES) + ":-:|:-:|:-:|"]
    for row in data["main"]:
        c = row["case"]
        lin = row["schedules"]["linear"]
        nominal = c["order"] if c["variant"] == "diffode" else f"{c['order']} (claimed)"
        if c["variant"] == "diffode" and c["expected"] != c["order"]:
            nominal = f"{c['order']} on grids equal in σ/α; {c['expected']:g} here"
        slopes = " | ".join(f"{row['schedules'][s]['slope']:.2f}†" if s in c.get("limited_on", ())
                            else f"**{row['schedules'][s]['slope']:.2f}**" for s in SCHEDULES)
        lines.append(f"| {c['label']} | {nominal} | {slopes} | {_e(lin['error'][0])} | {_e(lin['error'][-1])} "
                     f"| {lin['nfe'][0] // STEPS[0]} |")
    return "\n".join(lines) + (
        "\n\nM: multistep; S: singlestep, every step at full order (`method=\"singlestep_fixed\"`); "
        "UniPC-p: UniP-p with the UniC corrector (order p + 1, one evaluation per step); DEIS tAB-r and "
        "iPNDM integrate the noise prediction; iPNDM's equal-step weights are order 4 only on grids "
        "equal in σ/α, and 2 on these logSNR grids (its variable-step weights, `ipndm_v`, reach 4 only "
        "beyond about 100 steps here: 3.6 fitted over 24-384 steps, 3.85 over 96-768); †: DEIS extrapolates "
        "in t, and `DiscreteVP` is only piecewise smooth in t (log α is interpolated linearly between its "
        "1000 knots), so once a step spans few knots its order falls (local slope 2.98 from 192 to 384 "
        "steps); the methods in λ or σ/α do not see the knots; "
        "taylor: `solver_type=\"taylor\"` (the others use `\"dpmsolver\"`); reference weights: the "
        "reference implementation's third-order multistep weights. Errors are RMS differences from the "
        "RK45 reference under `LinearVP`.\n")


def table_warmup(data: dict) -> str:
    head = " | ".join(f"N = {n}" for n in WARMUP_STEPS)
    lines = [f"| Integrator | {head} | Measured order | NFE |", "|---|" + ":-:|" * (len(WARMUP_STEPS) + 2)]
    for row in data["warmup"]:
        errs = " | ".join(_e(e) for e in row["error"])
        extra = row["nfe"][0] - row["steps"][0]
        lines.append(f"| {row['case']['label']} | {errs} | **{row['slope']:.2f}** | N{f' + {extra}' if extra else ''} |")
    return "\n".join(lines) + "\n"


def local_slopes(steps, errors) -> list[float]:
    return [float(-(math.log(errors[i + 1]) - math.log(errors[i])) / (math.log(steps[i + 1]) - math.log(steps[i])))
            for i in range(len(steps) - 1)]


def table_time_uniform(data: dict) -> str:
    pairs = [f"{a}→{b}" for a, b in zip(UNIFORM_STEPS[:-1], UNIFORM_STEPS[1:])]
    lines = [f"| Grid | Integrator | {' | '.join(pairs)} |", "|---|---|" + ":-:|" * len(pairs)]
    for key in ("time_uniform", "logSNR"):
        for row in data["time_uniform"]:
            s = local_slopes(UNIFORM_STEPS, row[key]["error"])
            lines.append(f"| `{key}` | {row['case']['label']} | " + " | ".join(f"{v:.2f}" for v in s) + " |")
    steps_head = " | ".join(f"N = {n}" for n in UNIFORM_STEPS)
    lines += ["", f"| Last step in $\\lambda$ | {steps_head} |", "|---|" + ":-:|" * len(UNIFORM_STEPS)]
    for key in ("time_uniform", "logSNR"):
        lines.append(f"| `{key}` | " + " | ".join(f"{v:.3f}" for v in data["last_step"][key]) + " |")
    return "\n".join(lines) + "\n"


def table_accuracy(data: dict) -> str:
    out = []
    for pname in NFE_PROBLEMS:
        head = " | ".join(f"NFE {n}" for n in NFES)
        out += [f"**{pname[0].upper() + pname[1:]}**", "", f"| Solver | `skip_type` | {head} |",
                "|---|---|" + ":-:|" * len(NFES)]
        rows = [r for r in data["accuracy"] if r["problem"] == pname]
        best = [min(r["error"][i] for r in rows) for i in range(len(NFES))]
        for r in rows:
            cells = []
            for i, e in enumerate(r["error"]):
                cell = _e(e)
                cells.append(f"**{cell}**" if e == best[i] else cell)
            lines_nfe = "" if r["nfe"] == NFES else " (NFE " + ", ".join(map(str, r["nfe"])) + ")"
            out.append(f"| {r['solver']}{lines_nfe} | `{r['skip_type']}` | " + " | ".join(cells) + " |")
        out += ["", "M: multistep; S: singlestep with `method=\"singlestep\"` (the NFE split into steps of "
                "orders 3, 2, 1 as DPM-Solver-fast does)."]
        adaptive = data["adaptive"][pname]
        out += ["", "Adaptive step size (`method=\"adaptive\"`, DPM-Solver++, `atol=0.0078`): "
                + "; ".join(f"order {a['order']} at `rtol={a['rtol']}`: NFE {a['nfe']}, error {_e(a['error'])}"
                            for a in adaptive) + ".", ""]
    return "\n".join(out)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    styles = {1: "o-", 2: "s-", 3: "^-"}
    for row in data["main"]:
        c = row["case"]
        if c["algorithm"] != "dpmsolver++" or c["solver_type"] != "dpmsolver" and c["variant"] == "diffode":
            continue
        if c.get("name") is not None:  # the other families: in the table, not in the plot
            continue
        d = row["schedules"]["linear"]
        if c["variant"] == "reference-3M":
            ax1.loglog(d["nfe"], d["error"], "x--", color="crimson", label=f"reference 3M weights ({d['slope']:.2f})")
        elif c["method"] == "multistep":
            ax1.loglog(d["nfe"], d["error"], styles[c["order"]], color=f"C{c['order'] - 1}",
                       label=f"multistep order {c['order']} ({d['slope']:.2f})")
        elif c["order"] == 3:
            ax1.loglog(d["nfe"], d["error"], "v:", color="C4", label=f"singlestep order 3 ({d['slope']:.2f})")
    n = np.array([20, 1200.0])
    for k in (1, 2, 3):
        ax1.loglog(n, 0.6 * (n / n[0]) ** (-k) * (0.3 if k == 3 else 1), color="0.6", lw=0.8, ls=":")
        ax1.annotate(f"slope {k}", (n[-1], 0.6 * (n[-1] / n[0]) ** (-k) * (0.3 if k == 3 else 1)), fontsize=8,
                     color="0.4")
    ax1.set_xlabel("NFE (model evaluations)")
    ax1.set_ylabel("RMSE against RK45 ground truth")
    ax1.set_title("DPM-Solver++ on logSNR grids (LinearVP)")
    ax1.legend(fontsize=8, title="measured order", title_fontsize=8)
    ax1.grid(True, which="both", alpha=0.25)
    for row in data["time_uniform"]:
        k = row["case"]["order"]
        color = f"C{k - 1}"
        ax2.loglog(UNIFORM_STEPS, row["logSNR"]["error"], styles[k], color=color, label=f"order {k}, logSNR")
        ax2.loglog(UNIFORM_STEPS, row["time_uniform"]["error"], styles[k][0] + "--", color=color, mfc="none",
                   label=f"order {k}, time_uniform")
    ax2.set_xlabel("steps N (multistep: NFE = N)")
    ax2.set_title("Grid choice: uniform in λ vs uniform in t")
    ax2.legend(fontsize=8, ncol=2)
    ax2.grid(True, which="both", alpha=0.25)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(data: dict, out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    note = "<!-- generated by docs/gen_convergence.py; do not edit by hand -->\n\n"
    (out / "convergence.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "convergence_slopes.md").write_text(note + table_slopes(data))
    (out / "convergence_warmup.md").write_text(note + table_warmup(data))
    (out / "convergence_time_uniform.md").write_text(note + table_time_uniform(data))
    (out / "accuracy_by_nfe.md").write_text(note + table_accuracy(data))
    plot(data, out / "error_vs_steps.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: docs/generated)")
    parser.add_argument("--tables-only", action="store_true",
                        help="rewrite the tables and the plot from the existing convergence.json")
    args = parser.parse_args(argv)
    if args.tables_only:
        data = json.loads((args.out / "convergence.json").read_text())
    else:
        torch.set_num_threads(1)
        data = study()
    write(data, args.out)
    for row in data["main"]:
        c = row["case"]
        print(f"{c['label']:55s} " + "  ".join(f"{s}: {v['slope']:.2f}" for s, v in row["schedules"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
