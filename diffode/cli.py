"""The ``diffode`` command line: ``demo``, ``sample``, ``converge`` and ``list``.

Every command prints a human-readable report, or one JSON document with ``--json``; progress bars
go to stderr and ``--quiet`` silences them. A user mistake (an unknown name, a bad option, a file
that cannot be written) ends with one line ``diffode: error: ...`` and exit status 2; set
``DIFFODE_DEBUG=1`` to see the traceback instead. ``diffode converge`` exits with status 1 when a
fitted order misses its nominal order by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence

import torch

from diffode import __version__

DEMO_INTEGRATORS = ("ddim", "dpmpp_2m", "dpmpp_3m", "dpm_3s", "dpmpp_adaptive_23")
DIGITS_INTEGRATORS = ("ddim", "dpmpp_2m", "dpmpp_3m", "dpm_3s")
CONVERGE_INTEGRATORS = ("ddim", "dpmpp_2m", "dpmpp_3m", "dpm_2m", "dpm_3m", "dpmpp_2s", "dpmpp_3s", "dpm_2s",
                        "dpm_3s")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UsageError(ValueError):
    """A mistake in the command line's arguments (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- helpers -------------------------------------------------------------------------------------


class Reporter:
    """Where a command's output goes: text on stdout, or one JSON document with ``--json``.

    Args:
        args: The parsed command line (its ``json`` and ``quiet`` flags).
    """

    def __init__(self, args: argparse.Namespace):
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))

    @property
    def progress(self) -> bool:
        """Whether to show progress bars (not with ``--quiet``)."""
        return not self.quiet

    def text(self, message: str = "") -> None:
        """A line of the human-readable report (suppressed with ``--json``)."""
        if not self.json:
            print(message)

    def note(self, message: str) -> None:
        """A side remark on stderr (unless ``--quiet``)."""
        if not self.quiet:
            print(message, file=sys.stderr)

    def document(self, payload: dict) -> None:
        """The JSON document (printed with ``--json`` only)."""
        if self.json:
            json.dump(payload, sys.stdout, indent=2, default=_json_default)
            sys.stdout.write("\n")


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _clean(value):
    """NaN and infinities become ``None`` so that the output is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _parse_options(items: Sequence[str] | None) -> dict:
    """``["order=3", "solver_type=taylor"]`` -> ``{"order": 3, "solver_type": "taylor"}``."""
    options = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"--option expects KEY=VALUE (e.g. solver_type=taylor), got {item!r}")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"unknown device {name!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def _import_factory(spec: str):
    """Import ``package.module:factory`` and return the attribute."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"a user model is given as package.module:factory, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import {module_name!r} for --model {spec}: {error}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r} (from --model {spec})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{spec} is not callable: the factory must be a function returning a network or a Predictor")
    return obj


def _resolve_model(args: argparse.Namespace, dtype: torch.dtype, device: torch.device):
    """``(predictor, sample_shape, to_images, analytic)`` for ``--model``."""
    from diffode.models.builtin import BUILTIN_MODELS, get_schedule, load_model
    from diffode.models.predictor import Predictor
    from diffode.models.wrapper import wrap

    name = args.model
    if name in BUILTIN_MODELS:
        spec, model = load_model(name, args.schedule, device=device, dtype=dtype)
        shape = tuple(args.shape) if args.shape else spec.sample_shape
        if tuple(shape) != spec.sample_shape:
            raise UsageError(f"the {name!r} model samples shape {spec.sample_shape}, got --shape {tuple(shape)}")
        return model, shape, spec.to_images, spec.analytic
    if ":" not in name:
        raise UsageError(f"unknown model {name!r}; built-in: {', '.join(sorted(BUILTIN_MODELS))}, "
                         "or give your own as package.module:factory")
    obj = _import_factory(name)()
    if isinstance(obj, Predictor):
        if args.schedule is not None:
            raise UsageError(f"{name} returned a Predictor, which brings its own schedule; drop --schedule")
        model = obj
    elif callable(obj):
        if isinstance(obj, torch.nn.Module):
            obj = obj.to(device=device, dtype=dtype).eval()
        model = wrap(obj, get_schedule(args.schedule or "discrete"), args.parameterization)
    else:
        raise UsageError(f"{name} returned {type(obj).__name__}; a factory must return a network "
                         "net(x, t_input) or a diffode Predictor")
    shape = tuple(args.shape) if args.shape else getattr(obj, "sample_shape", None)
    if shape is None:
        raise UsageError(f"pass --shape for {name} (or give the object a sample_shape attribute)")
    return model, tuple(int(s) for s in shape), None, False


def _check_positive(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{name} must be integers >= 1, got {values}")
    return values


def _write_plot(series: dict, path: str | None, **kwargs) -> str | None:
    from diffode.study import plot_series

    if not path:
        return None
    plot_series(series, path, **kwargs)
    return path


# -- diffode list --------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    """``diffode list``: the registered integrators, schedules, parameterizations, grids and models.

    Args:
        args: The parsed command line.

    Returns:
        The exit status (0).
    """
    from diffode.integrators.grids import GRIDS
    from diffode.integrators.registry import INTEGRATORS
    from diffode.models.builtin import BUILTIN_MODELS, SCHEDULES
    from diffode.models.parameterizations import PARAMETERIZATIONS

    reporter = Reporter(args)
    params: dict[str, str] = {}
    for cls in dict.fromkeys(PARAMETERIZATIONS.values()):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        aliases = f" (aliases: {', '.join(cls.aliases)})" if cls.aliases else ""
        params[cls.name] = doc + aliases
    grids = {"time_uniform": "equal steps in t", "logSNR": "equal steps in the half log-SNR lambda",
             "time_quadratic": "equal steps in sqrt(t)", "karras": "Karras et al.'s sigma^(1/rho) grid, rho = 7"}
    sections = {
        "integrators": {name: entry.description for name, entry in sorted(INTEGRATORS.items())},
        "schedules": {name: desc for name, (_, desc) in SCHEDULES.items()},
        "parameterizations": params,
        "grids": {name: grids.get(name, "") for name in GRIDS},
        "models": {name: spec.description for name, spec in BUILTIN_MODELS.items() if name != "default"},
    }
    reporter.document(sections)
    for title, entries in sections.items():
        reporter.text(f"{title}:")
        width = max(map(len, entries))
        for name, desc in entries.items():
            reporter.text(f"  {name.ljust(width)}  {desc}")
        reporter.text()
    return 0


# -- diffode demo --------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``diffode demo``: integrators at several NFE from one x_T, against the RK45 ground truth.

    On the analytic mixture it prints the error table and writes a log-log plot; with
    ``--model digits`` it also writes a grid of digits per integrator and NFE beside the ground truth.

    Args:
        args: The parsed command line.

    Returns:
        The exit status (0).
    """
    reporter = Reporter(args)
    default_nfe = [5, 10, 20] if args.model == "digits" else [5, 10, 15, 20, 50]
    nfes = _check_positive("--nfe", args.nfe or default_nfe)
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.model == "digits":
        return _demo_digits(args, reporter, nfes)
    from diffode import study
    from diffode.models.builtin import BUILTIN_MODELS, load_model

    if args.model not in BUILTIN_MODELS:
        raise UsageError(f"demo runs a built-in model ({', '.join(sorted(BUILTIN_MODELS))}); got {args.model!r}; "
                         "for your own model use diffode sample")
    names = args.integrators or list(DEMO_INTEGRATORS)
    integrators = {name: study.configure_integrator(name) for name in names}
    spec, model = load_model(args.model, args.schedule)
    schedule = model.schedule
    x = spec.prior(schedule, args.batch, args.seed)
    start = time.perf_counter()
    reporter.note(f"ground truth: RK45 (dopri5, rtol 1e-10) on {spec.name} under {schedule!r}, batch {args.batch}")
    exact = study.ground_truth(model, x)
    ref_seconds = time.perf_counter() - start
    records = study.error_vs_nfe(model, x, exact, integrators, nfes, grid=args.grid, progress=reporter.progress)
    series: dict[str, tuple[list, list]] = {}
    for r in records:
        label = r.label
        xs, ys = series.setdefault(label, ([], []))
        xs.append(r.nfe)
        ys.append(r.error)
    plot = None if args.no_plot else _write_plot(
        series, args.plot, title=f"{spec.name} under {schedule!r}, {args.grid} grid")
    header, rows = study.error_table(records)
    reporter.text(f"RMSE against the RK45 ground truth ({spec.name}, {schedule!r}, {args.grid} grid, "
                  f"batch {args.batch}, seed {args.seed}; same x_T for every run)")
    reporter.text()
    reporter.text(study.markdown_table(header, rows))
    _adaptive_text(reporter, records)
    reporter.text()
    reporter.text(f"ground truth in {ref_seconds:.1f} s; all runs in {time.perf_counter() - start:.1f} s"
                  + (f"; plot: {plot}" if plot else ""))
    reporter.document(_clean({"model": spec.name, "schedule": repr(schedule), "grid": args.grid, "nfe": nfes,
                              "batch": args.batch, "seed": args.seed, "plot": plot,
                              "records": [vars(r) for r in records]}))
    return 0


def _adaptive_text(reporter: Reporter, records) -> None:
    from diffode import study

    header, rows = study.adaptive_table(records)
    if rows:
        reporter.text()
        reporter.text("adaptive step size (the tolerance sets the NFE):")
        reporter.text()
        reporter.text(study.markdown_table(header, rows))


def _demo_digits(args: argparse.Namespace, reporter: Reporter, nfes: list[int]) -> int:
    from diffode import study
    from diffode.models.builtin import load_model

    names = args.integrators or list(DIGITS_INTEGRATORS)
    integrators = {name: study.configure_integrator(name) for name in names}
    spec, model = load_model("digits", args.schedule, dtype=torch.float64)
    batch = min(args.batch, 64)
    x = spec.prior(model.schedule, batch, args.seed)
    start = time.perf_counter()
    reporter.note(f"ground truth: RK45 (dopri5, rtol 1e-5) on the digits network, batch {batch}")
    with torch.no_grad():
        exact = study.ground_truth(model, x, rtol=1e-5, atol=1e-5)
    samples: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        records = study.error_vs_nfe(model, x, exact, integrators, nfes, grid=args.grid, progress=reporter.progress,
                                     on_sample=lambda label, nfe, out: samples.__setitem__(f"{label} @ {nfe}", out))
    header, rows = study.error_table(records)
    reporter.text(f"RMSE against the RK45 ground truth (digits network, {args.grid} grid, batch {batch}, "
                  f"seed {args.seed})")
    reporter.text()
    reporter.text(study.markdown_table(header, rows))
    _adaptive_text(reporter, records)
    grid_path = None
    if not args.no_plot and args.plot:
        grid_path = _digits_grid({"RK45 ground truth": exact, **samples}, spec.to_images, args.plot)
    reporter.text()
    reporter.text(f"done in {time.perf_counter() - start:.1f} s" + (f"; digit grid: {grid_path}" if grid_path else ""))
    reporter.document(_clean({"model": "digits", "grid": args.grid, "nfe": nfes, "batch": batch, "seed": args.seed,
                              "image": grid_path, "records": [vars(r) for r in records]}))
    return 0


def _digits_grid(rows: dict[str, torch.Tensor], to_images, path: str,
                 columns: int = 8) -> str | None:
    """One row of digits per run, the ground truth first, written atomically as a PNG."""
    from diffode.study import atomic_write

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = min(columns, next(iter(rows.values())).shape[0])
    fig, axes = plt.subplots(len(rows), columns, figsize=(0.9 * columns + 2.2, 0.9 * len(rows)), squeeze=False)
    try:
        for i, (label, x) in enumerate(rows.items()):
            images = to_images(x.detach().float().cpu())
            for j in range(columns):
                ax = axes[i][j]
                ax.imshow(images[j, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path


# -- diffode sample ------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    """``diffode sample``: sample with any registered integrator and write the samples atomically.

    Args:
        args: The parsed command line.

    Returns:
        The exit status (0).
    """
    from diffode import study
    from diffode.controllers import AdaptiveController

    reporter = Reporter(args)
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".pt", ".npz"):
        raise UsageError(f"--out must end in .pt or .npz, got {out!r}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.nfe < 1:
        raise UsageError(f"--nfe must be >= 1, got {args.nfe}")
    device = _device(args.device)
    dtype = DTYPES[args.dtype]
    integrator = study.configure_integrator(args.integrator, **_parse_options(args.option))
    model, shape, _, _ = _resolve_model(args, dtype, device)
    g = torch.Generator().manual_seed(args.seed)
    schedule = model.schedule
    x = schedule.prior_sample((args.batch, *shape), generator=g, dtype=torch.float64).to(device, dtype)
    controller = AdaptiveController(rtol=args.rtol, atol=args.atol) if integrator.adaptive else None
    start = time.perf_counter()
    with torch.no_grad():
        solution = study.sample_nfe(model, x, integrator, args.nfe, grid=args.grid, t_start=args.t_start,
                                    t_end=args.t_end, denoise_to_zero=args.denoise_to_zero, controller=controller,
                                    check_finite=not args.no_check_finite, generator=g)  # a stochastic sampler's draws
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    samples = solution.x.detach().cpu()
    meta = {"integrator": args.integrator, "config": repr(integrator), "nfe": solution.nfe, "seconds": seconds,
            "seed": args.seed, "model": args.model, "schedule": repr(schedule), "grid": args.grid,
            "t_end": solution.times[-1], "denoise_to_zero": args.denoise_to_zero}
    if ext == ".pt":
        study.atomic_write(out, lambda tmp: torch.save({"samples": samples, **meta}, tmp))
    else:
        import numpy as np

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, samples=samples.numpy(), nfe=solution.nfe, seconds=seconds, seed=args.seed,
                         integrator=args.integrator)

        study.atomic_write(out, write_npz)
    reporter.text(f"{args.batch} samples of shape {tuple(shape)} with {integrator!r}: NFE {solution.nfe}, "
                  f"wall time {seconds:.3f} s -> {out}")
    reporter.document({"path": out, "shape": list(samples.shape), **meta})
    return 0


# -- diffode converge ----------------------------------------------------------------------------


def cmd_converge(args: argparse.Namespace) -> int:
    """``diffode converge``: a convergence study of integrators x orders x step counts.

    Args:
        args: The parsed command line.

    Returns:
        1 when a fitted slope misses its nominal order by more than ``--tolerance``, else 0.
    """
    from diffode import study
    from diffode.models.builtin import BUILTIN_MODELS, load_model

    reporter = Reporter(args)
    steps = _check_positive("--steps", args.steps)
    if len(steps) < 2:
        raise UsageError("--steps needs at least two step counts to fit a slope")
    if args.tolerance <= 0:
        raise UsageError(f"--tolerance must be > 0, got {args.tolerance}")
    if args.model not in BUILTIN_MODELS:
        raise UsageError(f"converge runs a built-in model ({', '.join(sorted(BUILTIN_MODELS))}), got {args.model!r}")
    names = args.integrators or list(CONVERGE_INTEGRATORS)
    integrators = {}
    for name in names:
        if args.orders:
            for k in args.orders:
                integrators[f"{name}[order={k}]"] = study.configure_integrator(name, order=k)
        else:
            integrators[name] = study.configure_integrator(name)
    dtype = torch.float64
    spec, model = load_model(args.model, args.schedule, dtype=dtype)
    schedule = model.schedule
    x = spec.prior(schedule, args.batch, args.seed)
    t_start = schedule.T if args.t_start is None else args.t_start
    t_end = schedule.default_t_end if args.t_end is None else args.t_end
    rtol = 1e-10 if spec.analytic else 1e-8
    reporter.note(f"ground truth: RK45 (dopri5, rtol {rtol:g}) on {spec.name} under {schedule!r}")
    exact = study.ground_truth(model, x, t_start, t_end, rtol=rtol, atol=rtol)
    results = study.convergence_study(model, x, exact, integrators, steps, grid=args.grid, t_start=t_start,
                                      t_end=t_end, tolerance=args.tolerance, progress=reporter.progress)
    header, rows = study.convergence_table(results)
    failed = [r for r in results if not r.passed]
    plot = None if args.no_plot else _write_plot(
        {r.label: (r.steps, r.errors) for r in results}, args.plot, xlabel="steps",
        title=f"convergence on {spec.name} under {schedule!r}, {args.grid} grid")
    reporter.text(f"RMSE against the RK45 ground truth at t = {t_end:g} ({spec.name}, {schedule!r}, {args.grid} grid, "
                  f"batch {args.batch}); slope = fitted order, tolerance {args.tolerance}")
    reporter.text()
    reporter.text(study.markdown_table(header, rows))
    reporter.text()
    if failed:
        reporter.text("FAILED: " + ", ".join(f"{r.label} (slope {r.slope:.2f}, order {r.order})" for r in failed))
    else:
        reporter.text(f"every fitted order is within {args.tolerance} of its nominal order"
                      + (f"; plot: {plot}" if plot else ""))
    reporter.document(_clean({"model": spec.name, "schedule": repr(schedule), "grid": args.grid, "steps": steps,
                              "tolerance": args.tolerance, "plot": plot, "passed": not failed,
                              "results": [r.as_dict() for r in results]}))
    return 1 if failed else 0


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffode`` command and its four subcommands."""
    from diffode.integrators.grids import GRIDS
    from diffode.models.builtin import SCHEDULES
    from diffode.models.parameterizations import PARAMETERIZATIONS

    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")

    parser = _Parser(prog="diffode", description="Verified DPM-Solver integrators for diffusion ODEs.")
    parser.add_argument("--version", action="version", version=f"diffode {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    p = sub.add_parser("demo", parents=[common], help="compare integrators against the RK45 ground truth",
                       description="Run a handful of integrators at several NFE from the same x_T on a built-in "
                                   "model, compare each with the RK45 ground truth, print the error table and "
                                   "write a log-log plot (or, with --model digits, a grid of digits).")
    p.add_argument("--model", default="mixture", help="built-in model: mixture (default) or digits")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                   help="schedule of the analytic model (default: discrete DDPM betas)")
    p.add_argument("--integrators", nargs="+", metavar="NAME", help="registered integrators (see diffode list)")
    p.add_argument("--nfe", nargs="+", type=int, default=None,
                   help="NFE budgets (default 5 10 15 20 50; 5 10 20 with --model digits)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="logSNR", help="time grid (default logSNR)")
    p.add_argument("--batch", type=int, default=None, help="samples per run (default 16; 8 with --model digits)")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T")
    p.add_argument("--plot", default=None, help="PNG to write (default diffode_demo.png, "
                                                "diffode_digits.png for --model digits)")
    p.add_argument("--no-plot", action="store_true", help="write no image")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("sample", parents=[common], help="sample with any integrator and write the samples",
                       description="Sample a built-in model or your own (package.module:factory, returning a "
                                   "network net(x, t_input) or a diffode Predictor) and write the samples to a "
                                   ".pt or .npz file, atomically.")
    p.add_argument("-o", "--out", required=True, help="output file, .pt or .npz")
    p.add_argument("--model", default="mixture", help="mixture, digits, or package.module:factory")
    p.add_argument("--integrator", default="dpmpp_2m", help="a registered integrator (see diffode list)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="integrator option, repeatable (e.g. --option order=3 --option solver_type=taylor)")
    p.add_argument("--nfe", type=int, default=20, help="model evaluations (fixed-step integrators)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="noise schedule")
    p.add_argument("--parameterization", choices=sorted(PARAMETERIZATIONS), default="noise",
                   help="what a user network predicts")
    p.add_argument("--grid", choices=sorted(GRIDS), default="time_uniform", help="time grid")
    p.add_argument("--shape", nargs="+", type=int, help="shape of one sample, e.g. 3 32 32 (user models)")
    p.add_argument("--batch", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and of a stochastic sampler's draws")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of x")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--t-start", type=float, default=None, help="start time (default T)")
    p.add_argument("--t-end", type=float, default=None, help="end time (default 1/N or 1e-3)")
    p.add_argument("--denoise-to-zero", action="store_true", help="one more evaluation: end at sigma = 0")
    p.add_argument("--no-check-finite", action="store_true",
                   help="skip the per-step check for NaN/Inf states (on by default; it costs one host sync per step)")
    p.add_argument("--rtol", type=float, default=0.05, help="adaptive integrators: relative tolerance")
    p.add_argument("--atol", type=float, default=0.0078, help="adaptive integrators: absolute tolerance")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("converge", parents=[common], help="convergence study; exit 1 if an order is missed",
                       description="Errors of integrators x orders x step counts against the RK45 ground truth, "
                                   "the fitted slopes, and a plot. Exit status 1 when a slope misses its nominal "
                                   "order by more than --tolerance (a CI gate).")
    p.add_argument("--model", default="mixture", help="built-in model (default mixture)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="schedule (default discrete)")
    p.add_argument("--integrators", nargs="+", metavar="NAME", help="registered integrators")
    p.add_argument("--orders", nargs="+", type=int, help="run each integrator at each of these orders")
    p.add_argument("--steps", nargs="+", type=int, default=[128, 256, 512, 1024],
                   help="step counts (default 128 256 512 1024: the asymptotic regime of the built-in mixture)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="logSNR", help="time grid (default logSNR)")
    p.add_argument("--tolerance", type=float, default=0.25, help="allowed |slope - order|")
    p.add_argument("--batch", type=int, default=8, help="samples")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T")
    p.add_argument("--t-start", type=float, default=None, help="start time (default T)")
    p.add_argument("--t-end", type=float, default=None, help="end time (default 1/N or 1e-3)")
    p.add_argument("--plot", default="diffode_convergence.png", help="PNG to write")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.set_defaults(handler=cmd_converge)

    p = sub.add_parser("list", parents=[common], help="registered integrators, schedules, parameterizations",
                       description="The registered integrators, schedules, parameterizations, grids and models.")
    p.set_defaults(handler=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (the ``diffode`` console script and ``python -m diffode``).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 1 for a failed convergence gate, 2 for a user mistake, 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        digits = args.model == "digits"
        if args.plot is None:
            args.plot = "diffode_digits.png" if digits else "diffode_demo.png"
        if args.batch is None:
            args.batch = 8 if digits else 16
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("diffode: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`diffode list | head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as error:
        if os.environ.get("DIFFODE_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"diffode: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
