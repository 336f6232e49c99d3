"""Benchmark 1: accuracy per NFE against the RK45 ground truth, diffode beside diffusers and k-diffusion.

Every sampler starts from the same x_T of the built-in analytic mixture (shape (B, 3, 8, 8)) and is
compared, at its own end point, with the exact probability-flow ODE solution there:

* diffode's integrators end at t_end = 1/N (discrete) or 1e-3 (linear VP), or at sigma = 0 with
  ``denoise_to_zero`` (one of the NFE then goes to the final data prediction);
* diffusers' schedulers end where their ``sigmas[-1]`` says: 0 with ``final_sigmas_type="zero"``
  (their default), else the sigma of timestep 0;
* k-diffusion's samplers on a sigma grid that ends in 0 return the data prediction at sigma = 0;
  ``sample_dpm_fast`` and ``sample_dpm_adaptive`` end at sigma_min.

The ground truth at each end point is diffode's RK45 solution to t_end, followed in lambda to the
end point (``diffode.study.continue_in_lambda``; for sigma = 0 the limit). NFE is counted by wrapping
the model; comparisons are at equal NFE (a sampler that cannot spend exactly the budget shows what
it spent in parentheses, never more than the budget).

    python benchmarks/accuracy.py            # both schedules, writes results/accuracy.md
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch

import _common
from _common import Counter, markdown_table
from diffode import study
from diffode.models.builtin import load_model
from diffode.schedules import DiscreteVP

NFES = (5, 10, 15, 20, 50)
DIFFODE_GRIDS = ("time_uniform", "logSNR", "time_quadratic", "karras")
DIFFODE_INTEGRATORS = ("ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_3m_sw", "dpmpp_3s", "dpm_2m", "dpm_3m", "dpm_3s")


@dataclass
class Problem:
    """One accuracy problem: model, schedule, noise, and the ground truth at any end point."""

    name: str
    model: object
    x: torch.Tensor
    t_end: float
    lam_end: float
    exact_end: torch.Tensor
    discrete: DiscreteVP  # the N = 1000 training steps the discrete-time peers see
    cache: dict

    def truth(self, lam: float) -> torch.Tensor:
        """The exact solution at half log-SNR ``lam`` (``math.inf`` for sigma = 0)."""
        key = round(lam, 12) if math.isfinite(lam) else lam
        if key not in self.cache:
            self.cache[key] = study.continue_in_lambda(self.model, self.exact_end, self.lam_end, lam)
        return self.cache[key]


def make_problem(schedule_name: str, batch: int, seed: int) -> Problem:
    spec, model = load_model("mixture", schedule_name)
    schedule = model.schedule
    x = spec.prior(schedule, batch, seed)
    t_end = schedule.default_t_end
    exact_end = study.ground_truth(model, x, schedule.T, t_end)
    # The training steps n = 0..999 at t = (n + 1)/1000 (exact for DiscreteVP; samples LinearVP there).
    ts = torch.arange(1, 1001, dtype=torch.float64) / 1000.0
    alphas_cumprod = torch.exp(2.0 * schedule.log_alpha(ts))
    discrete = DiscreteVP(alphas_cumprod=alphas_cumprod, clip_lambda=None)
    lam_end = schedule.point(t_end).lam
    return Problem(schedule_name, model, x, t_end, lam_end, exact_end, discrete, {round(lam_end, 12): exact_end})


# -- diffode --------------------------------------------------------------------------------------


def run_diffode(problem: Problem, name: str, grid: str, nfe: int, to_zero: bool):
    integrator = study.configure_integrator(name)
    budget = nfe - 1 if to_zero else nfe
    if budget < 1:
        return None
    sol = study.sample_nfe(problem.model, problem.x, integrator, budget, grid=grid, denoise_to_zero=to_zero)
    return sol.x, sol.nfe, (math.inf if to_zero else problem.lam_end)


# -- diffusers ------------------------------------------------------------------------------------


def diffusers_configs(diffusers) -> dict:
    d = diffusers
    classes = {"DPMSolverMultistep": d.DPMSolverMultistepScheduler,
               "DPMSolverSinglestep": d.DPMSolverSinglestepScheduler,
               "UniPCMultistep": d.UniPCMultistepScheduler, "DEISMultistep": d.DEISMultistepScheduler}
    configs = {}
    for k in (2, 3):
        for karras in (False, True):
            for name, cls in classes.items():
                label = f"{name} o{k}{' karras' if karras else ''}"
                configs[label] = (cls, dict(solver_order=k, use_karras_sigmas=karras))
        configs[f"DPMSolverMultistep o{k} lu_lambdas"] = (d.DPMSolverMultistepScheduler,
                                                          dict(solver_order=k, use_lu_lambdas=True))
    return configs


def run_diffusers(problem: Problem, cls, kwargs: dict, nfe: int):
    betas = (1.0 - problem.discrete.log_alpha_array.mul(2).exp()
             / torch.cat([torch.ones(1, dtype=torch.float64), problem.discrete.log_alpha_array.mul(2).exp()[:-1]]))
    scheduler = cls(num_train_timesteps=1000, trained_betas=betas.numpy(), **kwargs)
    scheduler.set_timesteps(nfe)
    mixture = problem.model.mixture
    discrete = problem.discrete

    def eps(x, timestep):
        p = discrete.point((float(timestep) + 1.0) / 1000.0)
        return mixture.eps(x, p.alpha, p.sigma)

    net = Counter(eps)
    x = problem.x * float(scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t), t, x).prev_sample
    sigma_end = float(scheduler.sigmas[-1])
    lam = math.inf if sigma_end == 0.0 else -math.log(sigma_end)
    return x, net.calls, lam


# -- k-diffusion ----------------------------------------------------------------------------------


def kdiff_denoiser(problem: Problem):
    """k-diffusion's view: x_k = x / alpha at sigma_k = sigma / alpha, D(x_k, sigma_k) = E[x_0 | x]."""
    mixture = problem.model.mixture

    def denoise(x_k, sigma_k):
        s = float(sigma_k.reshape(-1)[0])
        alpha = 1.0 / math.sqrt(1.0 + s * s)
        return mixture.x0(alpha * x_k, alpha, alpha * s)

    return Counter(denoise)


def run_kdiff(problem: Problem, K, name: str, nfe: int):
    schedule = problem.model.schedule
    p_start = schedule.point(schedule.T)
    sigma_max = p_start.sigma / p_start.alpha
    sigma_min = math.exp(-problem.lam_end)
    x_k = problem.x / p_start.alpha
    net = kdiff_denoiser(problem)
    if name in ("dpm_fast",):
        out = K.sample_dpm_fast(net, x_k, sigma_min, sigma_max, nfe, disable=True)
        return out * schedule.point(problem.t_end).alpha, net.calls, problem.lam_end
    sampler, two_evals = {"euler": (K.sample_euler, False), "heun": (K.sample_heun, True),
                          "dpm_2": (K.sample_dpm_2, True), "dpmpp_2m": (K.sample_dpmpp_2m, False),
                          "dpmpp_2m exponential": (K.sample_dpmpp_2m, False)}[name]
    steps = (nfe + 1) // 2 if two_evals else nfe
    if name.endswith("exponential"):
        sigmas = K.get_sigmas_exponential(steps, sigma_min, sigma_max).double()
    else:
        sigmas = K.get_sigmas_karras(steps, sigma_min, sigma_max).double()
    out = sampler(net, x_k, sigmas, disable=True)
    return out, net.calls, math.inf  # the last step to sigma = 0 returns the data prediction


KDIFF_SAMPLERS = ("euler", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m exponential", "dpm_fast")


def run_adaptive(problem: Problem, K, rtols) -> list[list[str]]:
    """diffode's DPM-Solver-23 (data and noise form) and k-diffusion's sample_dpm_adaptive at the same tolerances."""
    from diffode.controllers import AdaptiveController

    rows = []
    schedule = problem.model.schedule
    p_start = schedule.point(schedule.T)
    truth = problem.truth(problem.lam_end)
    for rtol in rtols:
        atol = rtol / 10
        for name in ("dpmpp_adaptive_23", "dpm_adaptive_23"):
            sol = study.sample_nfe(problem.model, problem.x, name, 1,
                                   controller=AdaptiveController(rtol=rtol, atol=atol))
            rows.append([f"diffode {name}", f"{rtol:g}", str(sol.nfe), f"{study.rmse(sol.x, truth):.2e}"])
        if K is not None:
            net = kdiff_denoiser(problem)
            out = K.sample_dpm_adaptive(net, problem.x / p_start.alpha, math.exp(-problem.lam_end),
                                        p_start.sigma / p_start.alpha, rtol=rtol, atol=atol, disable=True)
            out = out * schedule.point(problem.t_end).alpha
            rows.append(["k-diffusion sample_dpm_adaptive", f"{rtol:g}", str(net.calls),
                         f"{study.rmse(out, truth):.2e}"])
    return rows


# -- the tables -----------------------------------------------------------------------------------


def fmt(error: float, nfe: int, budget: int) -> str:
    return f"{error:.2e}" + ("" if nfe == budget else f" ({nfe})")


def benchmark(schedule_name: str, batch: int, seed: int, nfes=NFES, quiet: bool = False):
    diffusers = _common.load_diffusers()
    if diffusers is not None:
        diffusers.utils.logging.set_verbosity_error()
    K = _common.load_kdiffusion_sampling()
    start = time.perf_counter()
    problem = make_problem(schedule_name, batch, seed)
    rows: list[tuple[str, str, dict]] = []  # (library, label, {budget: (error, nfe)})

    def add(library, label, run):
        cells = {}
        for n in nfes:
            result = run(n)
            if result is None:
                continue
            x, nfe, lam = result
            if nfe > n:
                raise AssertionError(f"{label} spent {nfe} > {n} NFE")
            cells[n] = (study.rmse(x, problem.truth(lam)), nfe)
        rows.append((library, label, cells))
        if not quiet:
            print(f"  {library} {label}: done", file=sys.stderr)

    for grid in DIFFODE_GRIDS:
        for name in DIFFODE_INTEGRATORS:
            add("diffode", f"{name} {grid}", lambda n, name=name, grid=grid: run_diffode(problem, name, grid, n, False))
    for grid in ("logSNR", "karras", "time_uniform"):
        for name in ("dpmpp_2m", "dpmpp_3m", "dpm_3m"):
            add("diffode", f"{name} {grid} +denoise",
                lambda n, name=name, grid=grid: run_diffode(problem, name, grid, n, True))
    if diffusers is not None:
        for label, (cls, kwargs) in diffusers_configs(diffusers).items():
            add("diffusers", label, lambda n, cls=cls, kwargs=kwargs: run_diffusers(problem, cls, kwargs, n))
    if K is not None:
        for name in KDIFF_SAMPLERS:
            add("k-diffusion", f"sample_{name}" if " " not in name else f"sample_{name.replace(' ', ' (')} sigmas)",
                lambda n, name=name: run_kdiff(problem, K, name, n))
    adaptive = run_adaptive(problem, K, (0.05, 0.02, 0.01, 0.005, 0.001))
    seconds = time.perf_counter() - start
    return problem, rows, adaptive, seconds


def render(schedule_name: str, problem: Problem, rows, adaptive, seconds: float, nfes=NFES) -> str:
    header = ["library", "configuration", *[f"NFE {n}" for n in nfes]]
    table = []
    for library, label, cells in rows:
        table.append([library, label, *[fmt(cells[n][0], cells[n][1], n) if n in cells else "" for n in nfes]])
    summary_header = ["NFE", "best diffode", "RMSE", "best peer", "RMSE", "peer / diffode"]
    summary = []
    for n in nfes:
        best = {}
        for library, label, cells in rows:
            if n not in cells:
                continue
            group = "diffode" if library == "diffode" else "peer"
            if group not in best or cells[n][0] < best[group][1]:
                best[group] = (f"{library} {label}" if group == "peer" else label, cells[n][0])
        if "diffode" in best and "peer" in best:
            ratio = best["peer"][1] / best["diffode"][1]
            summary.append([str(n), best["diffode"][0], f"{best['diffode'][1]:.2e}", best["peer"][0],
                            f"{best['peer'][1]:.2e}", f"{ratio:.2f}"])
    lines = [
        f"### {schedule_name}: {problem.model.schedule!r}, batch {problem.x.shape[0]} of shape "
        f"{tuple(problem.x.shape[1:])}, float64",
        "",
        "Best per NFE column (each sampler against the exact solution at its own end point):",
        "",
        markdown_table(summary_header, summary),
        "",
        "Every configuration (RMSE; NFE actually spent in parentheses where it differs from the column):",
        "",
        markdown_table(header, table),
        "",
        "Adaptive step size, same tolerances (atol = rtol / 10), compared at sigma_min:",
        "",
        markdown_table(["sampler", "rtol", "NFE", "RMSE"], adaptive),
        "",
        f"({seconds:.0f} s for this schedule, ground truths included.)",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", nargs="+", default=["discrete", "linear"], choices=["discrete", "linear"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    _common.set_threads(args.threads)
    sections = ["# Accuracy per NFE", "", f"Environment: {_common.environment()}", "",
                "Produced by `python benchmarks/accuracy.py`. See benchmarks/README.md for the method.", ""]
    for name in args.schedules:
        problem, rows, adaptive, seconds = benchmark(name, args.batch, args.seed, quiet=args.quiet)
        sections += [render(name, problem, rows, adaptive, seconds), ""]
    _common.report(sections, "accuracy", not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
