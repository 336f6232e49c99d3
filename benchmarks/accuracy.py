"""Benchmark 1: accuracy per NFE, diffode's best configuration against the best peer in the same run.

Three problems, all on the discrete DDPM betas (linspace(1e-4, 0.02, 1000)), noise prediction:

* ``mixture``: the built-in analytic 8-component Gaussian mixture in image shape (3, 8, 8): exact
  noise prediction, so the ground truth can be followed to any end point (sigma = 0 included);
* ``digits``: the built-in 8x8-digits U-Net;
* ``ring``: a network diffode has never seen: an MLP trained here, in a few seconds with a fixed seed,
  on a 2-D mixture of 8 Gaussians on a circle.

Every sampler starts from the same x_T and is compared, at its own end point, with a high-accuracy
solution of the same model (torchdiffeq dopri5, float64; rtol 1e-10 for the analytic model, 1e-7
for the networks) there. End points: t_end = 1/N for most; sigma = 0 for samplers whose last step
returns the data prediction (diffode's ``denoise_to_zero``, diffusers' ``final_sigmas_type="zero"``,
k-diffusion on a sigma list ending in 0). For the networks, which are not defined below t = 1/N,
the truth at sigma = 0 is the data prediction at the exact solution's t = 1/N (what an exact
solver followed by a final denoising step returns). NFE is counted at the model, every sampler
spends at most the column's budget (fewer shows in parentheses).

Samplers in the same run:

* diffode: every registered deterministic fixed-grid integrator on the grids ``logSNR``,
  ``time_uniform``, ``time_quadratic``, ``karras``, ``ays_sd15``, with the options
  ``lower_order_final=False``, ``denoise_to_zero`` and (singlestep) ``stages=<the grid>``; runs
  whose plan is the same as another's are taken once. Then calibrated grids
  (``diffode.calibrate.calibrate_grid``, ``"search"``) for the best integrators of each column,
  calibrated on pilot noise of another seed and judged on the benchmark's noise;
* the reference DPM-Solver (through ``diffode.compat.dpm_solver``, which reproduces it to 1e-12):
  multistep and singlestep (DPM-Solver-fast), DPM-Solver and ++, orders 2 and 3, skip types
  ``logSNR``, ``time_uniform``, ``time_quadratic``;
* diffusers: DPMSolverMultistep, DPMSolverSinglestep, UniPC (bh1, bh2), DEIS, each order 2 and 3,
  with and without Karras sigmas (and both final-sigma types where the scheduler has them), and
  IPNDM (its AB4 on the noise prediction, driven on our model's sigma grid, uniform in t or Karras);
* k-diffusion: ``sample_dpmpp_2m``, ``sample_heun``, ``sample_dpm_2`` on Karras sigmas ending in 0
  and ending at sigma_min (skipped, with a note, when k-diffusion does not import).

Mode flips: a sample whose end point lies in another mixture component (mixture, ring) or is
nearest to a training image of another class (digits) than its ground truth's. The tables give the
plain RMSE, and the flip count with the RMSE over the other samples beside it.

    python benchmarks/accuracy.py                 # all three problems, writes results/accuracy.md (~30 min, 2 busy cores)
    python benchmarks/accuracy.py --quick         # smaller batches, fewer candidates: a smoke run
    python benchmarks/accuracy.py --problems mixture --no-write
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import _common
from _common import Counter, markdown_table
import diffode as dd
from diffode import study
from diffode._utils import default_dtype
from diffode.integrators import INTEGRATORS, get_integrator
from diffode.models.builtin import load_model

NFES = (5, 10, 20)
GRIDS = ("logSNR", "time_uniform", "time_quadratic", "karras", "ays_sd15")
REFERENCE_SKIPS = ("logSNR", "time_uniform", "time_quadratic")
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)


def diffode_integrators() -> list[str]:
    """Every registered deterministic integrator that runs on a planned grid."""
    names = []
    for name in INTEGRATORS:
        integrator = get_integrator(name)
        if not integrator.stochastic and not integrator.adaptive:
            names.append(name)
    return names


# -- the problems ---------------------------------------------------------------------------------


@dataclass
class Problem:
    """A model, its noise, the ground truth at any end point, and a labelling of end points."""

    name: str
    description: str
    model: dd.models.Predictor
    x: torch.Tensor
    exact_end: torch.Tensor
    label: Callable[[torch.Tensor], torch.Tensor]
    analytic: bool
    rtol: float
    prior: Callable[[int, int], torch.Tensor]
    cache: dict = field(default_factory=dict)

    @property
    def schedule(self):
        return self.model.schedule

    @property
    def t_end(self) -> float:
        return self.schedule.default_t_end

    @property
    def lam_end(self) -> float:
        return self.schedule.point(self.t_end).lam

    def truth(self, lam: float) -> torch.Tensor:
        """The high-accuracy solution at half log-SNR ``lam`` (``math.inf``: sigma = 0)."""
        if abs(lam - self.lam_end) < 1e-6:  # float32 sigma tables round the end point
            return self.exact_end
        key = lam if math.isinf(lam) else round(lam, 9)
        if key not in self.cache:
            with torch.no_grad():
                if self.analytic:
                    self.cache[key] = study.continue_in_lambda(self.model, self.exact_end, self.lam_end, lam)
                elif math.isinf(lam):
                    self.cache[key] = self.model.data(self.exact_end, self.t_end)
                elif lam < self.lam_end:  # (diffusers' float32 sigma of timestep 0 ends 8e-5 short in lambda)
                    t = float(self.schedule.inverse_lambda(torch.tensor(lam, dtype=torch.float64)))
                    self.cache[key] = dd.solve_reference(self.model, self.exact_end, self.t_end, t,
                                                         rtol=self.rtol, atol=self.rtol).x
                else:
                    raise ValueError(f"{self.name}: an end point beyond t = 1/N (lambda {lam:.4g}) has no truth")
        return self.cache[key]


def mixture_labels(mixture: dd.GaussianMixture) -> Callable[[torch.Tensor], torch.Tensor]:
    """The most probable component of each (nearly clean) sample."""
    mu = mixture.means.reshape(mixture.n_components, -1)
    s2 = mixture.stds.square()
    d = mu.shape[1]

    def label(x: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(x.shape[0], 1, -1).double()
        logits = mixture.weights.log() - 0.5 * (xf - mu).square().sum(-1) / s2 - 0.5 * d * s2.log()
        return logits.argmax(1)

    return label


def make_mixture(batch: int, seed: int) -> Problem:
    spec, model = load_model("mixture", "discrete")
    prior = lambda n, s: spec.prior(model.schedule, n, s)  # noqa: E731
    x = prior(batch, seed)
    exact = study.ground_truth(model, x)
    return Problem("mixture", f"built-in analytic mixture, {model.schedule!r}, batch {batch} of shape (3, 8, 8)",
                   model, x, exact, mixture_labels(model.mixture), True, 1e-10, prior)


def make_digits(batch: int, seed: int) -> Problem:
    from sklearn.datasets import load_digits

    from diffode.models.digits import from_pixels

    spec, model = load_model("digits")
    data = load_digits()
    images = from_pixels(torch.as_tensor(data.data, dtype=torch.float64))
    classes = torch.as_tensor(data.target)

    def label(x: torch.Tensor) -> torch.Tensor:
        return classes[torch.cdist(x.reshape(x.shape[0], -1).double(), images).argmin(1)]

    prior = lambda n, s: spec.prior(model.schedule, n, s)  # noqa: E731
    x = prior(batch, seed)
    with torch.no_grad():
        exact = study.ground_truth(model, x, rtol=1e-7, atol=1e-7)
    return Problem("digits", f"built-in digits U-Net, {model.schedule!r}, batch {batch} of shape (1, 8, 8)",
                   model, x, exact, label, False, 1e-7, prior)


class RingNet(torch.nn.Module):
    """A small MLP noise predictor for 2-D data: (x, sinusoidal features of the time input) -> eps."""

    def __init__(self, width: int = 128, features: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), features // 2)) / 1000.0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2 + features, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, width), torch.nn.SiLU(), torch.nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        angles = t * self.freqs.to(x.dtype)
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def ring_mixture() -> dd.GaussianMixture:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = torch.stack([angles.cos(), angles.sin()], dim=1)
    return dd.GaussianMixture(torch.ones(8), means, torch.full((8,), 0.1))


def train_ring(steps: int, seed: int = 0) -> RingNet:
    """Train the ring MLP for ``steps`` Adam steps (batch 512, DDPM betas, noise prediction), fixed seed."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    mixture = ring_mixture()
    net = RingNet().double()
    log_alpha = 0.5 * torch.cumsum(torch.log1p(-BETAS), 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x0 = mixture.sample(512, generator=g)
        n = torch.randint(0, 1000, (512,), generator=g)
        alpha = log_alpha[n].exp().unsqueeze(1)
        eps = torch.randn(512, 2, generator=g, dtype=torch.float64)
        out = net(alpha * x0 + (1 - alpha.square()).sqrt() * eps, n.double())
        loss = (out - eps).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return net.eval().requires_grad_(False)


def make_ring(batch: int, seed: int, steps: int) -> Problem:
    start = time.perf_counter()
    net = train_ring(steps)
    print(f"  ring: trained in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    seconds = time.perf_counter() - start
    schedule = dd.DiscreteVP(betas=BETAS)
    model = dd.models.wrap(net, schedule, "noise", time_input="discrete")
    prior = lambda n, s: torch.randn(n, 2, generator=torch.Generator().manual_seed(s), dtype=torch.float64)  # noqa: E731
    x = prior(batch, seed)
    with torch.no_grad():
        exact = study.ground_truth(model, x, rtol=1e-7, atol=1e-7)
    return Problem("ring", f"an MLP trained here ({steps} Adam steps, {seconds:.0f} s, seed 0) on 8 Gaussians on a "
                   f"circle in 2-D, {schedule!r}, batch {batch}", model, x, exact, mixture_labels(ring_mixture()),
                   False, 1e-7, prior)


# -- the samplers: each returns (x at its end point, NFE spent, the end point's lambda) -------------


def discrete_noise(problem: Problem):
    """The model as a discrete-time network ``eps(x, timestep)`` (timestep n at t = (n + 1) / 1000)."""
    model = problem.model

    def eps(x, timestep):
        return model.noise(x, (float(timestep) + 1.0) / 1000.0)

    return eps


def run_diffode(problem: Problem, integrator, plan):
    with torch.no_grad():
        sol = dd.solve(problem.model, problem.x, integrator, plan)
    return sol.x, sol.nfe, (math.inf if plan.denoise_to_zero else problem.lam_end)


def run_reference(problem: Problem, algorithm: str, method: str, order: int, skip: str, nfe: int):
    from diffode.compat.dpm_solver import DPM_Solver, NoiseScheduleVP, model_wrapper

    eps = discrete_noise(problem)
    net = Counter(lambda x, t_input: eps(x, float(t_input.reshape(-1)[0])))
    with default_dtype(torch.float64), torch.no_grad():
        ns = NoiseScheduleVP("discrete", betas=BETAS, dtype=torch.float64)
        solver = DPM_Solver(model_wrapper(net, ns, model_type="noise"), ns, algorithm_type=algorithm)
        if method == "multistep" and nfe < order:
            return None
        x = solver.sample(problem.x, steps=nfe, order=order, skip_type=skip, method=method)
    return x, net.calls, problem.lam_end


def diffusers_configs(diffusers) -> dict:
    d = diffusers
    configs = {}
    for karras in (False, True):
        tag = " karras" if karras else ""
        for k in (2, 3):
            for final in ("zero", "sigma_min"):
                end = "" if final == "zero" else " ->sigma_min"
                configs[f"DPMSolverMultistep++ o{k}{tag}{end}"] = (d.DPMSolverMultistepScheduler, dict(
                    solver_order=k, use_karras_sigmas=karras, final_sigmas_type=final))
                configs[f"DPMSolverSinglestep++ o{k}{tag}{end}"] = (d.DPMSolverSinglestepScheduler, dict(
                    solver_order=k, use_karras_sigmas=karras, final_sigmas_type=final))
                for variant in ("bh1", "bh2"):
                    configs[f"UniPC {variant} o{k}{tag}{end}"] = (d.UniPCMultistepScheduler, dict(
                        solver_order=k, solver_type=variant, use_karras_sigmas=karras, final_sigmas_type=final))
            configs[f"DEIS o{k}{tag}"] = (d.DEISMultistepScheduler, dict(solver_order=k, use_karras_sigmas=karras))
    return configs


def run_diffusers(problem: Problem, cls, kwargs: dict, nfe: int):
    scheduler = cls(num_train_timesteps=1000, trained_betas=BETAS.numpy(), **kwargs)
    scheduler.set_timesteps(nfe)
    net = Counter(discrete_noise(problem))
    x = problem.x * float(scheduler.init_noise_sigma)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t), t, x).prev_sample
    sigma_end = float(scheduler.sigmas[-1])  # sigma / alpha
    return x, net.calls, (math.inf if sigma_end == 0.0 else -math.log(sigma_end))


def sigma_range(problem: Problem) -> tuple[float, float]:
    """k-diffusion's sigma = sigma_t / alpha_t at T and at t_end."""
    p = problem.schedule.point(problem.schedule.T)
    return p.sigma / p.alpha, math.exp(-problem.lam_end)


def run_ipndm(problem: Problem, diffusers, karras: bool, nfe: int):
    """diffusers' IPNDMScheduler on our model: its VP pairs (alpha, sigma) given as ``trained_betas`` (it reads them
    as sigma), uniform in t or Karras in sigma/alpha, ending at t_end; the model output it wants is
    v = alpha eps - sigma x0, so that its AB4 runs on eps with the DDIM transfer."""
    schedule = problem.schedule
    if karras:
        times = dd.integrators.Karras().times(schedule, schedule.T, problem.t_end, nfe)
    else:
        times = torch.linspace(schedule.T, problem.t_end, nfe + 1, dtype=torch.float64)
    points = schedule.points(times)
    sigmas = [p.sigma for p in points]
    scheduler = diffusers.IPNDMScheduler(num_train_timesteps=1000, trained_betas=sigmas)
    scheduler.set_timesteps(nfe)
    scheduler.betas, scheduler.alphas = (torch.tensor(sigmas, dtype=torch.float64),
                                         torch.tensor([p.alpha for p in points], dtype=torch.float64))
    model = problem.model
    calls = 0
    x = problem.x
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            p = points[i]
            eps = model.noise(x, p.t)
            calls += 1
            v = p.alpha * eps - p.sigma * (x - p.sigma * eps) / p.alpha
            x = scheduler.step(v, t, x).prev_sample
    return x, calls, problem.lam_end


def kdiff_denoiser(problem: Problem):
    """k-diffusion's view: x_k = x / alpha at sigma_k = sigma / alpha, D(x_k, sigma_k) = x0_hat."""
    schedule, model = problem.schedule, problem.model

    def denoise(x_k, sigma_k):
        s = float(sigma_k.reshape(-1)[0])
        alpha = 1.0 / math.sqrt(1.0 + s * s)
        t = float(schedule.inverse_lambda(torch.tensor(-math.log(s), dtype=torch.float64)))
        return model.data(alpha * x_k, t)

    return Counter(denoise)


def run_kdiff(problem: Problem, K, name: str, to_zero: bool, nfe: int):
    sigma_max, sigma_min = sigma_range(problem)
    sampler, two_evals = {"heun": (K.sample_heun, True), "dpm_2": (K.sample_dpm_2, True),
                          "dpmpp_2m": (K.sample_dpmpp_2m, False)}[name]
    # heun and dpm_2 spend 2 evaluations per step but 1 on a last step to sigma = 0.
    steps = ((nfe + 1) // 2 if to_zero else nfe // 2) if two_evals else nfe
    if to_zero:
        sigmas = K.get_sigmas_karras(steps, sigma_min, sigma_max).double()
    else:  # steps + 1 levels from sigma_max to sigma_min, without the appended 0
        sigmas = K.get_sigmas_karras(steps + 1, sigma_min, sigma_max).double()[:-1]
    net = kdiff_denoiser(problem)
    p_start = problem.schedule.point(problem.schedule.T)
    with torch.no_grad():
        out = sampler(net, problem.x / p_start.alpha, sigmas, disable=True)
    if to_zero:
        return out, net.calls, math.inf
    return out * problem.schedule.point(problem.t_end).alpha, net.calls, problem.lam_end


# -- running and scoring ----------------------------------------------------------------------------


@dataclass
class Cell:
    error: float
    nfe: int
    flips: int
    error_kept: float  # RMSE over the samples that did not flip


@dataclass
class Row:
    library: str
    label: str
    cells: dict = field(default_factory=dict)


def cell(problem: Problem, x: torch.Tensor, nfe: int, lam: float) -> Cell:
    """Score a sample against the truth at its end point: RMSE, flips, RMSE over the samples that did not flip."""
    truth = problem.truth(lam)
    flipped = problem.label(x) != problem.label(truth)
    kept = ~flipped
    error = study.rmse(x, truth)
    error_kept = study.rmse(x[kept], truth[kept]) if bool(kept.any()) else math.nan
    return Cell(error if math.isfinite(error) else math.inf, nfe, int(flipped.sum()), error_kept)


class Runner:
    def __init__(self, problem: Problem, nfes, quiet: bool):
        self.problem, self.nfes, self.quiet = problem, nfes, quiet
        self.rows: list[Row] = []
        self.seen: dict = {}
        self.failures: list[str] = []
        self.start = time.perf_counter()

    def add(self, library: str, label: str, run: Callable[[int], tuple | None]) -> Row:
        row = Row(library, label)
        for n in self.nfes:
            try:
                result = run(n)
            except Exception as error:  # noqa: BLE001 - a peer that fails is reported, not fatal
                self.failures.append(f"{library} {label} at NFE {n}: {type(error).__name__}: {error}")
                continue
            if result is None:
                continue
            x, nfe, lam = result
            if nfe > n:
                raise AssertionError(f"{label} spent {nfe} > {n} NFE")
            row.cells[n] = cell(self.problem, x, nfe, lam)
        self.rows.append(row)
        if not self.quiet:
            print(f"  {self.problem.name}: {library} {label} ({time.perf_counter() - self.start:.0f} s)", file=sys.stderr)
        return row

    def add_diffode(self, name: str, grid, label: str, options: dict, plan_options: dict) -> None:
        """One diffode configuration; a plan already run by the same integrator configuration is not run again."""
        problem = self.problem
        integrator = study.configure_integrator(name, **options)

        def run(n):
            budget = n - 1 if plan_options.get("denoise_to_zero") else n
            if budget < 1:
                return None
            try:
                plan = integrator.plan(problem.schedule, budget, grid=grid, **plan_options)
            except ValueError:
                return None  # a given grid made for another budget
            key = (repr(integrator), plan)
            if key in self.seen:
                return "same", self.seen[key]
            result = run_diffode(problem, integrator, plan)
            self.seen[key] = result
            return result

        row = Row("diffode", label)
        duplicate_everywhere = True
        for n in self.nfes:
            try:
                result = run(n)
            except Exception as error:  # noqa: BLE001 - reported beside the tables
                self.failures.append(f"diffode {label} at NFE {n}: {type(error).__name__}: {error}")
                continue
            if result is None:
                continue
            if result[0] == "same":
                result = result[1]
            else:
                duplicate_everywhere = False
            x, nfe, lam = result
            row.cells[n] = cell(problem, x, nfe, lam)
        if row.cells and not duplicate_everywhere:
            self.rows.append(row)
        if not self.quiet:
            print(f"  {problem.name}: {label} ({time.perf_counter() - self.start:.0f} s)", file=sys.stderr)


def diffode_candidates(names, grids, stages: bool):
    """(integrator, grid, label, constructor options, plan options) of every diffode configuration."""
    for name in names:
        integrator = get_integrator(name)
        singlestep = hasattr(integrator, "stages")  # the singlestep integrators' stage placement
        for grid in grids:
            variants = [("", {}, {})]
            variants.append((" lof=False", {}, {"lower_order_final": False}))
            variants.append((" +denoise", {}, {"denoise_to_zero": True}))
            if singlestep and stages and grid != "logSNR":
                variants.append((" stages=grid", {"stages": grid}, {}))
                variants.append((" stages=grid +denoise", {"stages": grid}, {"denoise_to_zero": True}))
            for suffix, options, plan_options in variants:
                yield name, grid, f"{name} {grid}{suffix}", options, plan_options


def best(rows, n, library_filter, kept: bool = False):
    """The lowest RMSE in column ``n`` (``kept``: over the samples that did not flip) and its row."""
    candidates = [((row.cells[n].error_kept if kept else row.cells[n].error), row) for row in rows
                  if n in row.cells and library_filter(row.library)]
    candidates = [c for c in candidates if math.isfinite(c[0])]
    return min(candidates, key=lambda c: c[0], default=(math.inf, None))


def calibrate(runner: Runner, n: int, top: int, pilots: int, pilot_seed: int, max_runs: int,
              candidates_per_step: int) -> None:
    """Calibrate grids (on pilot noise of ``pilot_seed``) for the ``top`` best diffode integrators at budget ``n``;
    each is judged on the benchmark's own noise, which is disjoint from the pilots."""
    from diffode.calibrate import calibrate_grid

    problem = runner.problem
    ranked = sorted((row.cells[n].error, row.label) for row in runner.rows
                    if row.library == "diffode" and n in row.cells and "+denoise" not in row.label
                    and "calibrated" not in row.label and "lof=False" not in row.label)
    chosen = []
    for _, label in ranked:
        name = label.split()[0]
        options = {"stages": label.split()[1]} if "stages=grid" in label else {}
        if (name, tuple(options.items())) not in chosen:
            chosen.append((name, tuple(options.items())))
        if len(chosen) == top:
            break
    pilot = problem.prior(pilots, pilot_seed)
    with torch.no_grad():
        if problem.analytic:
            pilot_exact = study.ground_truth(problem.model, pilot)
        else:
            pilot_exact = study.ground_truth(problem.model, pilot, rtol=problem.rtol, atol=problem.rtol)
    for name, options in chosen:
        integrator = study.configure_integrator(name, **dict(options))
        start = time.perf_counter()
        try:
            with torch.no_grad():
                steps = integrator.plan(problem.schedule, n).steps
                result = calibrate_grid(problem.model, integrator, n, pilot, exact=pilot_exact, max_runs=max_runs,
                                        rtol=problem.rtol, candidates=candidates_per_step * steps + 1)
        except ValueError as error:
            print(f"  {problem.name}: no calibrated grid for {name} at NFE {n}: {error}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        suffix = " stages=grid" if options else ""
        label = f"{name}{suffix} calibrated@{n} ({pilots} pilots, seed {pilot_seed}, {seconds:.0f} s)"
        row = Row("diffode", label)
        plan = integrator.plan(problem.schedule, n, grid=result.grid)
        x, nfe, lam = run_diffode(problem, integrator, plan)
        row.cells[n] = cell(problem, x, nfe, lam)
        runner.rows.append(row)
        if not runner.quiet:
            print(f"  {problem.name}: {label}: {row.cells[n].error:.3e}", file=sys.stderr)


def benchmark(problem: Problem, args) -> tuple[Runner, float]:
    start = time.perf_counter()
    runner = Runner(problem, args.nfe, args.quiet)
    diffusers = _common.load_diffusers()
    if diffusers is not None:
        diffusers.utils.logging.set_verbosity_error()
    K = _common.load_kdiffusion_sampling()
    names = args.integrators or diffode_integrators()
    for name, grid, label, options, plan_options in diffode_candidates(names, args.grids, True):
        runner.add_diffode(name, grid, label, options, plan_options)
    for algorithm in ("dpmsolver++", "dpmsolver"):
        for method in ("multistep", "singlestep"):
            for order in (2, 3):
                for skip in REFERENCE_SKIPS:
                    runner.add("reference", f"{algorithm} {method} o{order} {skip}",
                               lambda n, a=algorithm, m=method, o=order, s=skip: run_reference(problem, a, m, o, s, n))
    if diffusers is not None:
        for label, (cls, kwargs) in diffusers_configs(diffusers).items():
            runner.add("diffusers", label, lambda n, cls=cls, kwargs=kwargs: run_diffusers(problem, cls, kwargs, n))
        for karras in (False, True):
            runner.add("diffusers", f"IPNDM{' karras' if karras else ' time_uniform'} ->sigma_min",
                       lambda n, karras=karras: run_ipndm(problem, diffusers, karras, n))
    if K is not None:
        for name in ("dpmpp_2m", "heun", "dpm_2"):
            for to_zero in (True, False):
                runner.add("k-diffusion", f"sample_{name} karras{'' if to_zero else ' ->sigma_min'}",
                           lambda n, name=name, to_zero=to_zero: run_kdiff(problem, K, name, to_zero, n))
    if args.calibrate_top > 0:
        for n in args.nfe:
            calibrate(runner, n, args.calibrate_top, args.pilots, args.pilot_seed, args.calibrate_runs,
                      args.calibrate_candidates)
    return runner, time.perf_counter() - start


# -- the tables -------------------------------------------------------------------------------------


def fmt(cell: Cell, budget: int) -> str:
    text = f"{cell.error:.2e}" + ("" if cell.nfe == budget else f" ({cell.nfe})")
    if cell.flips:
        text += f" [{cell.flips}f: {cell.error_kept:.2e}]"
    return text


def summary_rows(problem: Problem, rows: list[Row], nfes) -> list[list[str]]:
    out = []
    diffode_side = lambda lib: lib == "diffode"  # noqa: E731
    peer_side = lambda lib: lib != "diffode"  # noqa: E731
    for n in nfes:
        d_err, d_row = best(rows, n, diffode_side)
        p_err, p_row = best(rows, n, peer_side)
        r_err, r_row = best(rows, n, lambda lib: lib == "reference")
        if d_row is None or p_row is None:
            continue
        dk_err, dk_row = best(rows, n, diffode_side, kept=True)
        pk_err, pk_row = best(rows, n, peer_side, kept=True)
        out.append([problem.name, str(n), d_row.label, f"{d_err:.2e} ({d_row.cells[n].flips}f)",
                    f"{p_row.library} {p_row.label}", f"{p_err:.2e} ({p_row.cells[n].flips}f)", f"**{d_err / p_err:.2f}**",
                    f"{r_row.label}: {r_err:.2e}" if r_row is not None else "",
                    f"{dk_row.label}: {dk_err:.2e} ({dk_row.cells[n].flips}f) / {pk_row.library} {pk_row.label}: "
                    f"{pk_err:.2e} ({pk_row.cells[n].flips}f) = {dk_err / pk_err:.2f}"])
    return out


SUMMARY_HEADER = ["problem", "NFE", "best diffode", "RMSE (flips)", "best peer", "RMSE (flips)", "diffode / peer",
                  "best reference DPM-Solver", "without flips: diffode / peer (RMSE over the samples that did not flip)"]


def render(problem: Problem, runner: Runner, seconds: float, nfes) -> str:
    rows = runner.rows
    header = ["library", "configuration", *[f"NFE {n}" for n in nfes]]
    order = {"diffode": 0, "reference": 1, "diffusers": 2, "k-diffusion": 3}
    table = [[row.library, row.label, *[fmt(row.cells[n], n) if n in row.cells else "" for n in nfes]]
             for row in sorted(rows, key=lambda r: order[r.library])]
    lines = [
        f"### {problem.name}: {problem.description}",
        "",
        f"Every configuration ({len(rows)}; RMSE; NFE spent in parentheses where it differs from the column; "
        "[kf: e]: k samples flipped, e the RMSE over the others):",
        "",
        "<details><summary>the full table</summary>",
        "",
        markdown_table(header, table),
        "",
        "</details>",
        "",
        f"({seconds:.0f} s for this problem, ground truths and calibrations included.)",
    ]
    if runner.failures:
        lines += ["", "Runs that raised (left out of the tables):", ""] + [f"* {f}" for f in runner.failures]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["mixture", "digits", "ring"],
                        choices=["mixture", "digits", "ring"])
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFES))
    parser.add_argument("--grids", nargs="+", default=list(GRIDS))
    parser.add_argument("--integrators", nargs="+", default=None, help="diffode integrators (default: all)")
    parser.add_argument("--batch", type=int, default=32, help="samples of the mixture and ring problems")
    parser.add_argument("--digits-batch", type=int, default=8, help="samples of the digits problem")
    parser.add_argument("--ring-steps", type=int, default=1500, help="Adam steps of the ring MLP")
    parser.add_argument("--seed", type=int, default=0, help="seed of the judged noise")
    parser.add_argument("--pilot-seed", type=int, default=1, help="seed of the calibration pilots (not --seed)")
    parser.add_argument("--pilots", type=int, default=8, help="calibration pilot samples")
    parser.add_argument("--calibrate-top", type=int, default=1, help="calibrate the best K integrators per column")
    parser.add_argument("--calibrate-runs", type=int, default=40, help="max_runs of each calibration search")
    parser.add_argument("--calibrate-candidates", type=int, default=3,
                        help="candidate times per step of the search's dynamic-programming start")
    parser.add_argument("--quick", action="store_true", help="small batches, fewer candidates: a smoke run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.pilot_seed == args.seed:
        parser.error("--pilot-seed must differ from --seed: a calibrated grid is judged on other noise")
    if args.quick:
        args.batch, args.digits_batch, args.ring_steps = 16, 4, 300
        args.grids = ["logSNR", "time_quadratic"]
        args.integrators = args.integrators or ["dpmpp_2m", "dpmpp_3m", "dpmpp_3s", "unipc_bh2_3", "ipndm"]
        args.calibrate_top, args.calibrate_runs, args.pilots = 1, 10, 4
    _common.set_threads(args.threads)
    makers = {"mixture": lambda: make_mixture(args.batch, args.seed),
              "digits": lambda: make_digits(args.digits_batch, args.seed),
              "ring": lambda: make_ring(args.batch, args.seed, args.ring_steps)}
    summary, sections = [], []
    total = time.perf_counter()
    command = "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for i, name in enumerate(args.problems):
        start = time.perf_counter()
        problem = makers[name]()
        runner, _ = benchmark(problem, args)
        summary += summary_rows(problem, runner.rows, args.nfe)
        sections += [render(problem, runner, time.perf_counter() - start, args.nfe), ""]
        done = i + 1 == len(args.problems)
        head = ["# Accuracy per NFE: diffode's best against the best peer", "",
                f"Environment: {_common.environment()}", "",
                f"Produced by `{command.strip()}` in {time.perf_counter() - total:.0f} s"
                + ("" if done else f" (partial: {i + 1} of {len(args.problems)} problems)") + ". See "
                "benchmarks/README.md for the method; every sampler at its own end point against a high-accuracy "
                "solution of the same model. `diffode / peer` below 1 means diffode's best has the lower RMSE (the "
                "issue's goal: 0.5 or less); (kf): k samples flipped mode.", "",
                markdown_table(SUMMARY_HEADER, summary), ""]
        if done:
            _common.report(head + sections, "accuracy", not args.no_write)
        elif not args.no_write:
            _common.write_results("accuracy", "\n".join(head + sections))  # a partial file while the next problem runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
