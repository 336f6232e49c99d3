r"""Solver studies: errors against the ground truth and fitted convergence orders (the numerics).

The command line (``diffode demo``, ``diffode converge``) and the benchmarks share this module.

* :func:`ground_truth` is the RK45 solution of the probability-flow ODE
  (:func:`~diffode.integrators.solve_reference`), and :func:`zero_noise_limit` carries it on to
  $\sigma = 0$ for analytic models (the end point of samplers whose last step returns the data
  prediction).
* :func:`sample_nfe` runs any integrator with a budget of model evaluations, the way DPM-Solver
  spends ``steps``: multistep methods take one step per evaluation, singlestep methods split the
  budget into steps of order 3, 2 and 1 (DPM-Solver-fast), adaptive methods ignore it.
* :func:`error_vs_nfe` and :func:`convergence_study` measure errors; :func:`fit_order` fits the
  order where the errors are asymptotic. :mod:`diffode.report` presents them (tables, plots, files).

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
    "ConvergenceResult", "ErrorRecord", "OrderFit",
    "configure_integrator", "continue_in_lambda", "convergence_study",
    "error_vs_nfe", "fit_order", "fitted_slope", "ground_truth", "local_slopes",
    "reference_error", "registered_names", "rmse", "sample_nfe", "zero_noise_limit",
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


@dataclass(frozen=True)
class OrderFit:
    r"""The convergence order fitted where the errors are asymptotic, and what it shows.

    Attributes:
        slope: Minus the least-squares slope of $\log e$ against $\log n$ over ``used`` (NaN when
            no asymptotic stretch was found).
        used: The step counts fitted (a stretch of consecutive ones, the finest above the floor).
        local_slopes: The order measured between each pair of consecutive step counts above the
            floor, coarsest first.
        verdict: ``"passed"`` (the asymptotic slope is the order), ``"failed"`` (it is not) or
            ``"inconclusive"`` (these step counts do not reach the asymptotic regime).
        reason: One sentence that says why, for a report.
    """

    slope: float
    used: tuple[int, ...]
    local_slopes: tuple[float, ...]
    verdict: str
    reason: str


def local_slopes(counts: Sequence[float], errors: Sequence[float]) -> list[float]:
    r"""The order between consecutive points: $-\log(e_{i+1}/e_i) / \log(n_{i+1}/n_i)$."""
    return [-math.log(e1 / e0) / math.log(n1 / n0)
            for (n0, e0), (n1, e1) in zip(zip(counts, errors), zip(counts[1:], errors[1:]))]


def fit_order(counts: Sequence[int], errors: Sequence[float], order: float, *, tolerance: float = 0.25,
              floor: float = 0.0, stability: float = 0.125) -> OrderFit:
    r"""Fit the convergence order where the errors are asymptotic, and judge it against ``order``.

    An order-$k$ method has error $e(n) = C n^{-k}(1 + O(1/n))$ for $n$ steps: the local slopes
    between consecutive step counts settle at $k$ as $n$ grows (the asymptotic regime). At too few
    steps they still drift (the pre-asymptotic regime); where the errors reach round-off or the
    ground truth's own error they flatten. So:

    1. Errors at or below ``floor`` (round-off, the ground truth's error) are dropped.
    2. Going from the finest step count down, the stretch whose local slopes all lie within
       ``stability`` of the finest local slope is the asymptotic regime; it needs at least three
       points (two local slopes that agree).
    3. The order is the least-squares slope over that stretch. It *passes* within ``tolerance`` of
       ``order``. It *fails* when it misses, and a Richardson-style extrapolation of the last two
       local slopes (whose differences halve each doubling in the asymptotic regime) misses too.
    4. Without such a stretch, or with a miss that the extrapolation does not confirm, the result
       is *inconclusive*: these step counts cannot show the order, which says nothing against the
       integrator.

    Args:
        counts: Step counts, proportional to $1/h$ (any order; sorted here).
        errors: The errors at those counts.
        order: The nominal order.
        tolerance: The allowed distance between the fitted slope and ``order``.
        floor: Errors at or below it are not fitted.
        stability: How far the local slopes of the asymptotic stretch may lie from the finest one.
    """
    if len(counts) != len(errors):
        raise ValueError(f"counts and errors differ in length: {len(counts)} and {len(errors)}")
    pts = sorted((int(n), float(e)) for n, e in zip(counts, errors))
    kept = [(n, e) for n, e in pts if math.isfinite(e) and e > floor]
    dropped = [n for n, e in pts if (n, e) not in kept]
    ns = [n for n, _ in kept]
    slopes = local_slopes(ns, [e for _, e in kept])
    below = f" ({len(dropped)} at or below the floor {floor:.1e}: steps {', '.join(map(str, dropped))})" if dropped else ""
    if len(kept) < 3:
        return OrderFit(math.nan, tuple(ns), tuple(slopes), "inconclusive",
                        f"inconclusive: {len(kept)} error{'s' if len(kept) != 1 else ''} above the floor{below}; "
                        "a fit needs at least three step counts in the asymptotic regime"
                        + ("; take fewer steps or a tighter ground truth" if dropped else ""))
    start = len(slopes) - 1
    while start > 0 and abs(slopes[start - 1] - slopes[-1]) <= stability:
        start -= 1
    shown = ", ".join(f"{p:.2f}" for p in slopes)
    if start == len(slopes) - 1:
        rising = slopes[-1] > slopes[-2]
        hint = ("take larger step counts" if rising else
                "if the finest errors approach round-off or the ground truth's own error, take smaller step "
                "counts or a tighter ground truth; otherwise larger step counts")
        return OrderFit(math.nan, (), tuple(slopes), "inconclusive",
                        f"inconclusive: errors not in the asymptotic regime at these steps (local slopes {shown}, "
                        f"still {'rising' if rising else 'falling'} by more than {stability:g}){below}; {hint}")
    used = tuple(ns[start:])
    n, e = np.log(np.array(kept[start:], dtype=float)).T
    slope = float(-np.polyfit(n, e, 1)[0])
    where = f"steps {', '.join(map(str, used))}"
    if abs(slope - order) <= tolerance:
        return OrderFit(slope, used, tuple(slopes), "passed", f"slope {slope:.2f} over {where}{below}")
    # In the asymptotic regime the local slopes approach the order with differences that halve each
    # doubling (the O(1/n) term): the last difference again is the rest of the way.
    limit = slopes[-1] + (slopes[-1] - slopes[-2])
    if abs(limit - order) <= tolerance:
        return OrderFit(slope, used, tuple(slopes), "inconclusive",
                        f"inconclusive: slope {slope:.2f} over {where}, still moving towards {order:g} "
                        f"(local slopes {shown}){below}; take larger step counts")
    return OrderFit(slope, used, tuple(slopes), "failed",
                    f"FAILED: the local slopes settle at {slope:.2f} over {where}, not {order:g} "
                    f"(local slopes {shown}){below}")


def ground_truth(model: Predictor, x: Tensor, t_start: float | None = None, t_end: float | None = None, *,
                 rtol: float = 1e-10, atol: float = 1e-10) -> Tensor:
    """The RK45 (dopri5) solution of the probability-flow ODE in float64, from ``t_start`` (default T) to
    ``t_end`` (default the schedule's ``default_t_end``)."""
    schedule = model.schedule
    t_start = schedule.T if t_start is None else t_start
    t_end = schedule.default_t_end if t_end is None else t_end
    return solve_reference(model, x.double(), t_start, t_end, rtol=rtol, atol=atol).x


def reference_error(model: Predictor, x: Tensor, exact: Tensor, t_start: float | None = None,
                    t_end: float | None = None, *, rtol: float = 1e-10, atol: float = 1e-10) -> float:
    """An upper estimate of the error of a ground truth ``exact`` solved at ``rtol`` and ``atol``.

    It is the RMSE between ``exact`` and the same solve at ten times the tolerances: RK45's error
    falls with its tolerance, so this distance is at least the error of ``exact`` (about three times
    it on the built-in mixture). Errors of a study within a small factor of it measure the ground
    truth, not the integrator: pass a multiple of it as ``floor`` to :func:`convergence_study`.
    """
    loose = ground_truth(model, x, t_start, t_end, rtol=10 * rtol, atol=10 * atol)
    return rmse(loose, exact)


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
        slope: The order fitted over the asymptotic stretch ``used`` (NaN when there is none), see
            :func:`fit_order`.
        tolerance: The allowed distance between ``slope`` and ``order``.
        verdict: ``"passed"``, ``"failed"`` or ``"inconclusive"`` (see :func:`fit_order`).
        used: The step counts the slope was fitted over.
        reason: One sentence that explains the verdict.
    """

    label: str
    order: int
    steps: list[int]
    nfe: list[int]
    errors: list[float]
    slope: float
    tolerance: float = 0.25
    extra: dict = field(default_factory=dict)
    verdict: str = ""
    used: list[int] = field(default_factory=list)
    reason: str = ""

    def __post_init__(self):
        if not self.verdict:  # built by hand from a slope alone: judge the slope as it is
            ok = math.isfinite(self.slope) and abs(self.slope - self.order) <= self.tolerance
            self.verdict = "passed" if ok else "failed" if math.isfinite(self.slope) else "inconclusive"

    @property
    def overall_slope(self) -> float:
        """The least-squares slope over every step count (:func:`fitted_slope`), asymptotic or not:
        what a study whose steps were chosen in the asymptotic regime beforehand reads off."""
        return fitted_slope(self.steps, self.errors)

    @property
    def passed(self) -> bool:
        """Whether the asymptotic slope lies within ``tolerance`` of the nominal order."""
        return self.verdict == "passed"

    @property
    def failed(self) -> bool:
        """Whether the asymptotic slope misses the nominal order (not merely inconclusive)."""
        return self.verdict == "failed"

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
            about the error of the default ground truth; :func:`reference_error` measures it).
        progress: Show a progress bar on stderr.

    Returns:
        One :class:`ConvergenceResult` per integrator, judged by :func:`fit_order`.
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
        fit = fit_order(steps, errors, integrator.order, tolerance=tolerance, floor=floor)
        results.append(ConvergenceResult(label, integrator.order, list(steps), nfes, errors, fit.slope, tolerance,
                                         verdict=fit.verdict, used=list(fit.used), reason=fit.reason))
    bar.close()
    return results


def registered_names(kind: str = "all") -> list[str]:
    """Registered integrator names: ``"all"``, ``"fixed"`` (no error estimate) or ``"adaptive"``."""
    check_choice("kind", kind, ("all", "fixed", "adaptive"))
    names = sorted(INTEGRATORS)
    if kind == "all":
        return names
    adaptive = {n for n in names if get_integrator(n).adaptive}
    return sorted(adaptive) if kind == "adaptive" else [n for n in names if n not in adaptive]
