r"""Solver studies: errors against the ground truth, fitted convergence orders, tables and plots.

The command line (``diffode demo``, ``diffode converge``) and the benchmarks share this module.

* :func:`ground_truth` is the RK45 solution of the probability-flow ODE
  (:func:`~diffode.integrators.solve_reference`), and :func:`zero_noise_limit` carries it on to
  $\sigma = 0$ for analytic models (the end point of samplers whose last step returns the data
  prediction).
* :func:`sample_nfe` runs any integrator with a budget of model evaluations, the way DPM-Solver
  spends ``steps``: multistep methods take one step per evaluation, singlestep methods split the
  budget into steps of order 3, 2 and 1 (DPM-Solver-fast), adaptive methods ignore it.
* :func:`error_vs_nfe` and :func:`convergence_study` tabulate errors; :func:`fitted_slope` fits
  the order; :func:`markdown_table` and :func:`plot_series` present them.

```python
import diffode as dd
from diffode import study

model = dd.GaussianMixture([1.0], [[0.5, -1.0]], [0.3]).predictor(dd.LinearVP())
x = torch.randn(8, 2, dtype=torch.float64)
exact = study.ground_truth(model, x)
results = study.convergence_study(model, x, exact, {"dpmpp_3m": "dpmpp_3m"}, steps=[24, 48, 96, 192])
print(results[0].slope)  # about 3
```
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from diffode._utils import check_choice
from diffode.controllers import AdaptiveController
from diffode.integrators.base import Integrator
from diffode.integrators.grids import TimeGrid, get_grid
from diffode.integrators.reference import integrate_in_lambda, solve_reference
from diffode.integrators.registry import INTEGRATORS, get_integrator
from diffode.models.analytic import AnalyticPredictor
from diffode.models.predictor import Predictor
from diffode.noise import NoiseSource
from diffode.schedules.base import TimePoint, VPSchedule
from diffode.solve import Solution, solve, solve_adaptive

__all__ = [
    "ConvergenceResult", "ErrorRecord", "adaptive_table", "atomic_write", "configure_integrator",
    "continue_in_lambda", "convergence_study", "convergence_table", "error_table", "error_vs_nfe", "fitted_slope",
    "ground_truth", "markdown_table", "plot_series", "registered_names", "rmse", "sample_nfe", "zero_noise_limit",
]


def rmse(a: Tensor, b: Tensor) -> float:
    """Root-mean-square difference of two tensors, computed in float64."""
    return float((a.double() - b.double()).square().mean().sqrt())


def fitted_slope(counts: Sequence[float], errors: Sequence[float], *, floor: float = 0.0) -> float:
    r"""The convergence order: minus the slope of the least-squares line through $(\log n, \log e)$.

    Points with an error at or below ``floor`` (round-off, or the ground truth's own error) are
    dropped. Returns NaN when fewer than two points remain.

    Args:
        counts: Step counts (or NFE), proportional to $1/h$.
        errors: The errors at those counts.
        floor: Errors at or below it are not fitted.
    """
    if len(counts) != len(errors):
        raise ValueError(f"counts and errors differ in length: {len(counts)} and {len(errors)}")
    pts = [(float(n), float(e)) for n, e in zip(counts, errors) if math.isfinite(e) and e > floor]
    if len(pts) < 2:
        return math.nan
    n, e = np.log(np.array(pts)).T
    return float(-np.polyfit(n, e, 1)[0])


def ground_truth(model: Predictor, x: Tensor, t_start: float | None = None, t_end: float | None = None, *,
                 rtol: float = 1e-10, atol: float = 1e-10) -> Tensor:
    """The RK45 (dopri5) solution of the probability-flow ODE in float64, from ``t_start`` (default T) to
    ``t_end`` (default the schedule's ``default_t_end``)."""
    schedule = model.schedule
    t_start = schedule.T if t_start is None else t_start
    t_end = schedule.default_t_end if t_end is None else t_end
    return solve_reference(model, x.double(), t_start, t_end, rtol=rtol, atol=atol).x


def continue_in_lambda(model: Predictor, x: Tensor, lam_from: float, lam_to: float, *, rtol: float = 1e-10,
                       atol: float = 1e-10) -> Tensor:
    r"""Follow the probability-flow ODE of an analytic VP model from half log-SNR ``lam_from`` to ``lam_to``.

    In $\lambda$ the ODE for $y = x/\alpha$ reads $\mathrm dy/\mathrm d\lambda = -e^{-\lambda}\hat\epsilon$,
    and on a VP path $\alpha$ and $\sigma$ are functions of $\lambda$ alone: the ODE does not depend
    on the schedule's time variable, so it can be followed past a schedule's last time (a discrete
    schedule stops at $t = 1/N$). That needs the noise prediction at any $(\alpha, \sigma)$: analytic
    models only. Solved with dopri5 in float64.

    Args:
        model: An analytic model (:class:`~diffode.models.AnalyticPredictor`) under a VP schedule.
        x: The state at ``lam_from``.
        lam_from: Its half log-SNR.
        lam_to: The half log-SNR to reach (``math.inf`` for $\sigma = 0$, see :func:`zero_noise_limit`).
        rtol: Relative tolerance of dopri5.
        atol: Absolute tolerance of dopri5.

    Returns:
        The state at ``lam_to``, in float64.
    """
    if not isinstance(model, AnalyticPredictor) or not isinstance(model.schedule, VPSchedule):
        raise ValueError("following the ODE beyond the schedule needs an analytic model under a VP schedule, "
                         f"got {type(model).__name__} under {model.schedule!r}")
    if lam_to == lam_from:
        return x.double()
    # sigma / alpha = e^{-lambda} is below 1e-17 of its start 40 past it: the sigma = 0 limit to round-off.
    lam_stop = lam_from + 40.0 if math.isinf(lam_to) and lam_to > 0 else float(lam_to)

    def point_at(lam: float) -> TimePoint:
        alpha = math.exp(float(VPSchedule.log_alpha_from_lambda(torch.tensor(lam, dtype=torch.float64))))
        sigma = alpha * math.exp(-lam)
        return TimePoint(t=math.nan, lam=lam, alpha=alpha, sigma=sigma)  # no time: past the schedule's end

    xs, _ = integrate_in_lambda(model, x, [lam_from, lam_stop], point_at, rtol=rtol, atol=atol)
    return xs[-1]


def zero_noise_limit(model: Predictor, x: Tensor, t: float, *, rtol: float = 1e-10, atol: float = 1e-10) -> Tensor:
    r"""Where the probability-flow ODE through ``x`` at time ``t`` arrives at $\sigma = 0$.

    The end point of samplers whose last step returns the data prediction (diffusers'
    ``final_sigmas_type="zero"``, k-diffusion's samplers, DPM-Solver's ``denoise_to_zero``). See
    :func:`continue_in_lambda` (analytic VP models only).
    """
    return continue_in_lambda(model, x, model.schedule.point(t).lam, math.inf, rtol=rtol, atol=atol)


def configure_integrator(name: str | Integrator, **options) -> Integrator:
    """A registered integrator with some of its constructor arguments replaced.

    ``configure_integrator("dpmpp_3m", solver_type="taylor")`` builds the registered configuration,
    reads its constructor arguments back from its attributes, and builds it again with the options
    applied. Unknown options raise a ValueError that lists the known ones.
    """
    integrator = get_integrator(name)
    if not options:
        return integrator
    cls = type(integrator)
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    known = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(options) - known)
    if unknown:
        label = name if isinstance(name, str) else cls.__name__
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for integrator "
                         f"{label!r} ({cls.__name__}); its options are: {', '.join(sorted(known)) or 'none'}")
    current = {p: getattr(integrator, p) for p in known if hasattr(integrator, p)}
    return cls(**{**current, **options})


def sample_nfe(model: Predictor, x: Tensor, integrator: Integrator | str, nfe: int, *,
               grid: str | TimeGrid = "time_uniform", t_start: float | None = None, t_end: float | None = None,
               lower_order_final: bool | int = True, denoise_to_zero: bool = False,
               controller: AdaptiveController | None = None, check_finite: bool = False,
               noise: NoiseSource | None = None, generator: torch.Generator | None = None,
               seeds: Sequence[int] | Tensor | None = None) -> Solution:
    r"""Sample with a budget of ``nfe`` model evaluations, spent as the integrator plans it.

    Fixed-grid integrators spend the budget through their own
    :meth:`~diffode.integrators.Integrator.plan` (multistep methods: one step per evaluation, the
    lower orders on the last steps with ``lower_order_final``; singlestep methods: DPM-Solver-fast's
    split; a method of your own: its own rule). Adaptive integrators ignore ``nfe``; ``controller``
    sets their tolerances.

    With ``denoise_to_zero`` one more evaluation returns the data prediction at the end (the
    $\sigma = 0$ end point); count it in ``nfe`` by passing one less. ``check_finite`` raises
    :class:`~diffode.solve.NonFiniteError` at the first step with a non-finite state (one host sync
    per step). A stochastic integrator draws from ``noise``, ``generator`` or ``seeds`` (see
    :func:`~diffode.solve`).

    Returns:
        The :class:`~diffode.solve.Solution`; ``solution.nfe`` is the exact count.
    """
    integrator = get_integrator(integrator)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    schedule = model.schedule
    t_start = schedule.T if t_start is None else float(t_start)
    t_end = schedule.default_t_end if t_end is None else float(t_end)
    if integrator.adaptive:
        return solve_adaptive(model, x, integrator, t_start, t_end, controller or AdaptiveController(),
                              denoise_to_zero=denoise_to_zero, check_finite=check_finite, noise=noise,
                              generator=generator, seeds=seeds)
    plan = integrator.plan(schedule, nfe, grid=grid, t_start=t_start, t_end=t_end,
                           lower_order_final=lower_order_final, denoise_to_zero=denoise_to_zero)
    return solve(model, x, integrator, plan, check_finite=check_finite, noise=noise, generator=generator, seeds=seeds)


@dataclass
class ErrorRecord:
    """One run of one integrator: its cost and its error against the ground truth.

    Attributes:
        label: The row label (usually the registered name).
        nfe: Model evaluations actually spent.
        error: RMSE against the ground truth.
        seconds: Wall time of the run.
        budget: The NFE asked for (equal to ``nfe`` except for adaptive runs).
        setting: For adaptive runs, the tolerance (``"rtol=..."``); else empty.
    """

    label: str
    nfe: int
    error: float
    seconds: float
    budget: int
    setting: str = ""


def error_vs_nfe(model: Predictor, x: Tensor, exact: Tensor, integrators: Mapping[str, Integrator | str],
                 nfes: Sequence[int], *, grid: str | TimeGrid = "time_uniform", t_start: float | None = None,
                 t_end: float | None = None, lower_order_final: bool = True,
                 tolerances: Sequence[float] = (0.1, 0.05, 0.02, 0.005), progress: bool = False,
                 on_sample: Callable[[str, int, Tensor], None] | None = None) -> list[ErrorRecord]:
    """Errors of several integrators at several NFE budgets, all from the same ``x``.

    Adaptive integrators run once per relative tolerance in ``tolerances`` (``atol = rtol / 10``)
    instead of once per budget.

    Args:
        model: The model.
        x: The common starting noise.
        exact: The ground truth at the end time.
        integrators: Row labels mapped to integrators (instances or registered names).
        nfes: The NFE budgets.
        grid: The time grid of the fixed-step runs.
        t_start: The start time (default T).
        t_end: The end time (default the schedule's ``default_t_end``).
        lower_order_final: Passed to :func:`sample_nfe`.
        tolerances: The relative tolerances of adaptive runs.
        progress: Show a progress bar on stderr.
        on_sample: Called as ``on_sample(label, nfe, sample)`` after each run.
    """
    from tqdm.auto import tqdm

    jobs: list[tuple[str, Integrator, int, AdaptiveController | None, str]] = []
    for label, spec in integrators.items():
        integrator = get_integrator(spec)
        if integrator.adaptive:
            for rtol in tolerances:
                jobs.append((label, integrator, 0, AdaptiveController(rtol=rtol, atol=rtol / 10), f"rtol={rtol:g}"))
        else:
            jobs.extend((label, integrator, n, None, "") for n in nfes)
    records = []
    for label, integrator, n, controller, setting in tqdm(jobs, desc="sampling", disable=not progress, leave=False):
        start = time.perf_counter()
        solution = sample_nfe(model, x, integrator, max(n, 1), grid=grid, t_start=t_start, t_end=t_end,
                              lower_order_final=lower_order_final, controller=controller)
        seconds = time.perf_counter() - start
        records.append(ErrorRecord(label, solution.nfe, rmse(solution.x, exact), seconds, n or solution.nfe, setting))
        if on_sample is not None:
            on_sample(label if not setting else f"{label} ({setting})", solution.nfe, solution.x)
    return records


@dataclass
class ConvergenceResult:
    """A convergence study of one integrator at one order.

    Attributes:
        label: The row label.
        order: The nominal order.
        steps: The step counts.
        nfe: The model evaluations at each step count.
        errors: The RMSE against the ground truth at each step count.
        slope: The fitted order (NaN when fewer than two errors lie above round-off).
        tolerance: The allowed distance between ``slope`` and ``order``.
    """

    label: str
    order: int
    steps: list[int]
    nfe: list[int]
    errors: list[float]
    slope: float
    tolerance: float = 0.25
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether the fitted slope lies within ``tolerance`` of the nominal order."""
        return math.isfinite(self.slope) and abs(self.slope - self.order) <= self.tolerance

    def as_dict(self) -> dict:
        """A JSON-ready dictionary (a NaN slope becomes ``None``)."""
        out = asdict(self)
        out["slope"] = self.slope if math.isfinite(self.slope) else None
        out["passed"] = self.passed
        return out


def convergence_study(model: Predictor, x: Tensor, exact: Tensor, integrators: Mapping[str, Integrator | str],
                      steps: Sequence[int] = (24, 48, 96, 192), *, grid: str | TimeGrid = "logSNR",
                      t_start: float | None = None, t_end: float | None = None, tolerance: float = 0.25,
                      floor: float | None = None, progress: bool = False) -> list[ConvergenceResult]:
    """Fit the convergence order of each integrator from its errors at several step counts.

    Every step has the integrator's full order (a multistep method still warms up on its first
    steps), on a grid uniform in $\\lambda$ by default: that is the regime in which the nominal order
    speaks of $h \\to 0$ (see ``tests/integrators/test_convergence.py``).

    Args:
        model: The model.
        x: The common starting noise.
        exact: The ground truth at the end time.
        integrators: Row labels mapped to integrators (instances or registered names).
        steps: The step counts (not NFE: a singlestep method of order k spends ``k * n``).
        grid: The time grid.
        t_start: The start time (default T).
        t_end: The end time (default the schedule's ``default_t_end``).
        tolerance: The allowed distance between the fitted slope and the nominal order.
        floor: Errors at or below it are not fitted (default ``1e-9`` times the RMS of ``exact``,
            about the ground truth's own accuracy).
        progress: Show a progress bar on stderr.
    """
    from tqdm.auto import tqdm

    schedule = model.schedule
    t_start = schedule.T if t_start is None else float(t_start)
    t_end = schedule.default_t_end if t_end is None else float(t_end)
    grid = get_grid(grid)
    if floor is None:
        floor = 1e-9 * max(float(exact.double().square().mean().sqrt()), 1.0)
    results = []
    bar = tqdm(total=len(integrators) * len(steps), desc="convergence", disable=not progress, leave=False)
    for label, spec in integrators.items():
        integrator = get_integrator(spec)
        nfes, errors = [], []
        for n in steps:
            solution = solve(model, x, integrator, grid.times(schedule, t_start, t_end, n))
            nfes.append(solution.nfe)
            errors.append(rmse(solution.x, exact))
            bar.update()
        results.append(ConvergenceResult(label, integrator.order, list(steps), nfes, errors,
                                         fitted_slope(steps, errors, floor=floor), tolerance))
    bar.close()
    return results


def _fmt(value: float) -> str:
    return f"{value:.2e}" if math.isfinite(value) else "nan"


def error_table(records: Sequence[ErrorRecord]) -> tuple[list[str], list[list[str]]]:
    """Rows of fixed-step integrators, columns of NFE budgets (a cell whose run spent another NFE
    than its budget shows the NFE in parentheses). Adaptive runs go to :func:`adaptive_table`."""
    fixed = [r for r in records if not r.setting]
    budgets = sorted({r.budget for r in fixed})
    header = ["integrator", *[f"NFE {n}" for n in budgets]]
    rows = []
    for label in dict.fromkeys(r.label for r in fixed):
        by_budget = {r.budget: r for r in fixed if r.label == label}
        row = [label]
        for n in budgets:
            r = by_budget.get(n)
            row.append("" if r is None else _fmt(r.error) + ("" if r.nfe == n else f" ({r.nfe})"))
        rows.append(row)
    return header, rows


def adaptive_table(records: Sequence[ErrorRecord]) -> tuple[list[str], list[list[str]]]:
    """One row per adaptive run: integrator, tolerance, NFE spent, error."""
    header = ["integrator", "tolerance", "NFE", "RMSE"]
    return header, [[r.label, r.setting, str(r.nfe), _fmt(r.error)] for r in records if r.setting]


def convergence_table(results: Sequence[ConvergenceResult]) -> tuple[list[str], list[list[str]]]:
    """Rows of integrators, columns of step counts, then the fitted and the nominal order."""
    steps = sorted({n for r in results for n in r.steps})
    header = ["integrator", *[f"n={n}" for n in steps], "slope", "order", "ok"]
    rows = []
    for r in results:
        by_n = dict(zip(r.steps, r.errors))
        slope = f"{r.slope:.2f}" if math.isfinite(r.slope) else "n/a"
        rows.append([r.label, *[_fmt(by_n[n]) if n in by_n else "" for n in steps], slope, str(r.order),
                     "yes" if r.passed else "NO"])
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table with padded columns (readable as plain text too)."""
    cols = len(header)
    cells = [list(map(str, header))] + [list(map(str, r)) + [""] * (cols - len(r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(cols)]

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *map(line, cells[1:])])


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write a file atomically: ``write(tmp)`` writes a temporary file beside ``path``, which then
    replaces ``path`` in one rename (readers never see a half-written file).

    The temporary name keeps the suffix of ``path``, so writers that choose a format by extension
    (matplotlib, numpy) behave.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".diffode-", suffix=suffix, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot_series(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                title: str = "", xlabel: str = "NFE", ylabel: str = "RMSE vs RK45") -> None:
    """A log-log plot of ``label -> (xs, ys)`` series, written atomically to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        for label, (xs, ys) in series.items():
            pts = [(a, b) for a, b in zip(xs, ys) if b > 0 and math.isfinite(b)]
            if pts:
                ax.loglog(*zip(*pts), marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def registered_names(kind: str = "all") -> list[str]:
    """Registered integrator names: ``"all"``, ``"fixed"`` (no error estimate) or ``"adaptive"``."""
    check_choice("kind", kind, ("all", "fixed", "adaptive"))
    names = sorted(INTEGRATORS)
    if kind == "all":
        return names
    adaptive = {n for n in names if get_integrator(n).adaptive}
    return sorted(adaptive) if kind == "adaptive" else [n for n in names if n not in adaptive]
