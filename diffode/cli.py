"""The ``diffode`` command line: ``demo``, ``sample``, ``converge``, ``calibrate``, ``likelihood`` and ``list``.

Every command prints a human-readable report, or one JSON document with ``--json``; progress bars
go to stderr and ``--quiet`` silences them. A user mistake (an unknown name, a bad option, a file
that cannot be written) ends with one line ``diffode: error: ...`` and exit status 2; set
``DIFFODE_DEBUG=1`` to see the traceback instead. ``diffode converge`` exits with status 1 when an
integrator's asymptotic slope misses its nominal order by more than ``--tolerance``, and with status 3
when no integrator failed but the given step counts do not reach the asymptotic regime
(inconclusive, see :func:`diffode.study.fit_order`).
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

from diffode import __version__, report

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
        """Whether to show progress bars: not with ``--quiet``, and only on a terminal (in a log file
        a bar's carriage returns would run into the report)."""
        return not self.quiet and sys.stderr.isatty()

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
    if name in BUILTIN_MODELS and args.parameterization is not None:
        raise UsageError(f"--parameterization describes a user network (--model package.module:factory); the built-in "
                         f"{name!r} model has its own prediction, drop --parameterization {args.parameterization}")
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
        if args.parameterization is not None:
            raise UsageError(f"{name} returned a Predictor, which brings its own prediction; drop --parameterization")
        model = obj
    elif callable(obj):
        if isinstance(obj, torch.nn.Module):
            obj = obj.to(device=device, dtype=dtype).eval()
        model = wrap(obj, get_schedule(args.schedule or "discrete"), args.parameterization or "noise")
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
    from diffode.report import plot_series

    if not path:
        return None
    plot_series(series, path, **kwargs)
    return path


# -- diffode list --------------------------------------------------------------------------------


def _plain(text: str) -> str:
    r"""Docstring LaTeX as plain text for a terminal: ``$\hat x_0 = (x - \sigma_t\hat\epsilon)/\alpha_t$``
    becomes ``x0_hat = (x - sigma_t eps_hat)/alpha_t``."""
    import re

    names = {"epsilon": "eps", "nabla": "grad", "cdot": "*", "times": "x"}
    text = re.sub(r"\\hat\s*\\?([A-Za-z]+)(?:_(\w))?", lambda m: "\\" + m.group(1) + (m.group(2) or "") + "_hat", text)
    out, last = [], 0
    for m in re.finditer(r"\\([A-Za-z]+)", text):
        out.append(text[last:m.start()])
        if m.start() and text[m.start() - 1].isalnum():
            out.append(" ")
        out.append(names.get(m.group(1), m.group(1)))
        last = m.end()
    out.append(text[last:])
    text = "".join(out).replace("$", "").replace("{", "").replace("}", "")
    return re.sub(r" {2,}", " ", text).strip()


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
        params[cls.name] = _plain(doc) + aliases
    grids = {"time_uniform": "equal steps in t", "logSNR": "equal steps in the half log-SNR lambda",
             "time_quadratic": "equal steps in sqrt(t)", "karras": "Karras et al.'s sigma^(1/rho) grid, rho = 7"}
    sections = {
        "integrators": {name: _plain(entry.description) for name, entry in sorted(INTEGRATORS.items())},
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
    header, rows = report.error_table(records)
    reporter.text(f"RMSE against the RK45 ground truth ({spec.name}, {schedule!r}, {args.grid} grid, "
                  f"batch {args.batch}, seed {args.seed}; same x_T for every run)")
    reporter.text()
    reporter.text(report.markdown_table(header, rows))
    _adaptive_text(reporter, records)
    reporter.text()
    reporter.text(f"ground truth in {ref_seconds:.1f} s; all runs in {time.perf_counter() - start:.1f} s"
                  + (f"; plot: {plot}" if plot else ""))
    reporter.document(_clean({"model": spec.name, "schedule": repr(schedule), "grid": args.grid, "nfe": nfes,
                              "batch": args.batch, "seed": args.seed, "plot": plot,
                              "records": [vars(r) for r in records]}))
    return 0


def _adaptive_text(reporter: Reporter, records) -> None:

    header, rows = report.adaptive_table(records)
    if rows:
        reporter.text()
        reporter.text("adaptive step size (the tolerance sets the NFE):")
        reporter.text()
        reporter.text(report.markdown_table(header, rows))


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
    scale = study.rmse(exact, torch.zeros_like(exact))
    header, rows = report.error_table(records, scale)
    reporter.text(f"RMSE against the RK45 ground truth (digits network, {args.grid} grid, batch {batch}, "
                  f"seed {args.seed})")
    reporter.text()
    reporter.text(report.markdown_table(header, rows))
    _diverged_text(reporter, records, scale)
    _adaptive_text(reporter, records)
    grid_path = None
    if not args.no_plot and args.plot:
        bad = {f"{r.label} @ {r.nfe}" for r in records if report.diverged(r, scale)}
        rows_to_draw = {(f"{label} (diverged)" if label in bad else label): out for label, out in samples.items()}
        grid_path = _digits_grid({"RK45 ground truth": exact, **rows_to_draw}, spec.to_images, args.plot)
    reporter.text()
    reporter.text(f"done in {time.perf_counter() - start:.1f} s" + (f"; digit grid: {grid_path}" if grid_path else ""))
    reporter.document(_clean({"model": "digits", "grid": args.grid, "nfe": nfes, "batch": batch, "seed": args.seed,
                              "image": grid_path, "records": [vars(r) for r in records]}))
    return 0


def _diverged_text(reporter: Reporter, records, scale: float) -> None:
    """Say which runs diverged (an error above the samples' own size) and why that happens."""

    bad = [f"{r.label} at NFE {r.nfe}" for r in records if report.diverged(r, scale)]
    if bad:
        reporter.text()
        reporter.text(f"diverged (error above the samples' RMS, {scale:.2f}): {', '.join(bad)}. Few large steps in "
                      "noise form (DPM-Solver, dpm_*) multiply the network's error by up to e^h, h the step in "
                      "lambda; the reference DPM-Solver gives the same numbers. Use the data form (dpmpp_*) or "
                      "more evaluations.")


def _digits_grid(rows: dict[str, torch.Tensor], to_images, path: str,
                 columns: int = 8) -> str | None:
    """One row of digits per run, the ground truth first, written atomically as a PNG."""
    from diffode.report import atomic_write

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
    if (args.out is None) == (args.out_dir is None):
        raise UsageError("give either -o FILE (one batch) or --out-dir FOLDER with --num-samples (many samples)")
    if args.out_dir is not None:
        return _sample_many(args, reporter)
    if args.num_samples is not None:
        raise UsageError("--num-samples writes shards to --out-dir; with -o FILE use --batch")
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".pt", ".npz"):
        raise UsageError(f"--out must end in .pt or .npz, got {out!r}")
    report.check_output_path(out, "--out file")
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
    # The Python API's own check (DPMSolver.sample): times in range, > 0, and towards the data.
    t_start, t_end = schedule.check_interval(schedule.T if args.t_start is None else args.t_start,
                                             schedule.default_t_end if args.t_end is None else args.t_end)
    x = schedule.prior_sample((args.batch, *shape), generator=g, dtype=torch.float64).to(device, dtype)
    controller = AdaptiveController(rtol=args.rtol, atol=args.atol) if integrator.adaptive else None
    start = time.perf_counter()
    with torch.no_grad():
        solution = study.sample_nfe(model, x, integrator, args.nfe, grid=args.grid, t_start=t_start,
                                    t_end=t_end, denoise_to_zero=args.denoise_to_zero, controller=controller,
                                    check_finite=not args.no_check_finite, generator=g)  # a stochastic sampler's draws
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    samples = solution.x.detach().cpu()
    meta = {"integrator": args.integrator, "config": repr(integrator), "nfe": solution.nfe, "seconds": seconds,
            "seed": args.seed, "model": args.model, "schedule": repr(schedule), "grid": args.grid,
            "t_start": solution.times[0], "t_end": solution.times[-1], "denoise_to_zero": args.denoise_to_zero}
    if ext == ".pt":
        report.atomic_write(out, lambda tmp: torch.save({"samples": samples, **meta}, tmp))
    else:
        import numpy as np

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, samples=samples.numpy(), **meta)  # the same keys as the .pt file

        report.atomic_write(out, write_npz)
    reporter.text(f"{args.batch} samples of shape {tuple(shape)} with {integrator!r}: NFE {solution.nfe}, "
                  f"wall time {seconds:.3f} s -> {out}")
    reporter.document({"path": out, "shape": list(samples.shape), **meta})
    return 0


def _sample_many(args: argparse.Namespace, reporter: Reporter) -> int:
    """``diffode sample --out-dir``: :func:`diffode.generate.generate` (sharded, resumable, torchrun-aware)."""
    from diffode import study
    from diffode.generate import generate

    if args.num_samples is None or args.num_samples < 1:
        raise UsageError("--out-dir needs --num-samples N (N >= 1)")
    for name in ("t_start", "t_end"):
        if getattr(args, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')} is not supported with --out-dir (the schedule's own range is used)")
    if args.denoise_to_zero:
        raise UsageError("--denoise-to-zero is not supported with --out-dir")
    dtype = DTYPES[args.dtype]
    device = _device(args.device)
    integrator = study.configure_integrator(args.integrator, **_parse_options(args.option))
    model, shape, _, _ = _resolve_model(args, dtype, device)
    report = generate(model, integrator, num_samples=args.num_samples, shape=shape, out_dir=args.out_dir,
                      nfe=args.nfe, grid=str(args.grid), seed=args.seed, shard_size=args.shard_size,
                      batch_size=args.batch, dtype=dtype, device=device, model_name=args.model,
                      progress=reporter.progress)
    reporter.text(f"{report.samples} samples of shape {tuple(shape)} in {report.seconds:.1f} s "
                  f"({report.samples_per_second:.1f} samples/s); {len(report.shards_skipped)} shards were already "
                  f"complete -> {args.out_dir}")
    reporter.document({"out_dir": args.out_dir, "samples": report.samples, "seconds": report.seconds,
                       "shards_done": report.shards_done, "shards_skipped": report.shards_skipped})
    return 0


# -- diffode converge ----------------------------------------------------------------------------


def cmd_converge(args: argparse.Namespace) -> int:
    """``diffode converge``: a convergence study of integrators x orders x step counts.

    Args:
        args: The parsed command line.

    Returns:
        1 when an asymptotic slope misses its nominal order by more than ``--tolerance``, else 3 when
        some order could not be shown at these steps (inconclusive), else 0.
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
    # A network costs far more per evaluation than the analytic mixture: the digits study runs the
    # integrators of its demo only.
    names = args.integrators or list(DIGITS_INTEGRATORS if args.model == "digits" else CONVERGE_INTEGRATORS)
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
    t_start, t_end = schedule.check_interval(schedule.T if args.t_start is None else args.t_start,
                                             schedule.default_t_end if args.t_end is None else args.t_end)
    rtol = 1e-10 if spec.analytic else 1e-8
    reporter.note(f"ground truth: RK45 (dopri5, rtol {rtol:g}) on {spec.name} under {schedule!r}")
    with torch.no_grad():
        exact = study.ground_truth(model, x, t_start, t_end, rtol=rtol, atol=rtol)
        # Errors within 10x of the ground truth's own (estimated) error measure the ground truth.
        reference_error = study.reference_error(model, x, exact, t_start, t_end, rtol=rtol, atol=rtol)
        results = study.convergence_study(model, x, exact, integrators, steps, grid=args.grid, t_start=t_start,
                                          t_end=t_end, tolerance=args.tolerance, floor=10 * reference_error,
                                          progress=reporter.progress)
    header, rows = report.convergence_table(results)
    failed = [r for r in results if r.failed]
    inconclusive = [r for r in results if not r.passed and not r.failed]
    plot = None if args.no_plot else _write_plot(
        {r.label: (r.steps, r.errors) for r in results}, args.plot, xlabel="steps",
        title=f"convergence: {spec.name}, {schedule!r}, {args.grid} grid")
    reporter.text(f"RMSE against the RK45 ground truth at t = {t_end:g} ({spec.name}, {schedule!r}, {args.grid} grid, "
                  f"batch {args.batch}; the ground truth's own error is below {reference_error:.1e}); slope = order "
                  f"fitted where the errors are asymptotic, tolerance {args.tolerance}")
    reporter.text()
    reporter.text(report.markdown_table(header, rows))
    reporter.text()
    for r in failed + inconclusive:
        reporter.text(f"{r.label}: {r.reason}")
    if failed:
        reporter.text("FAILED: " + ", ".join(f"{r.label} (slope {r.slope:.2f}, order {r.order})" for r in failed))
    elif inconclusive:
        reporter.text("INCONCLUSIVE: " + ", ".join(r.label for r in inconclusive) + ": these step counts cannot "
                      "show the order (exit status 3); no integrator failed")
    else:
        reporter.text(f"every fitted order is within {args.tolerance} of its nominal order"
                      + (f"; plot: {plot}" if plot else ""))
    status = 1 if failed else 3 if inconclusive else 0
    reporter.document(_clean({"model": spec.name, "schedule": repr(schedule), "grid": args.grid, "steps": steps,
                              "tolerance": args.tolerance, "reference_error": reference_error, "plot": plot,
                              "passed": status == 0, "status": status, "results": [r.as_dict() for r in results]}))
    return status


# -- diffode calibrate and the --grid argument -----------------------------------------------------

GRID_HELP = "time grid: a name (see diffode list) or a JSON file with \"times\" or \"sigmas\" (diffode calibrate -o)"


def _grid_argument(value: str) -> str:
    """``--grid``: a registered grid name or an existing ``.json`` file (read by ``get_grid``)."""
    from diffode.integrators.grids import GRIDS

    if value in GRIDS:
        return value
    if value.endswith(".json"):
        if not os.path.isfile(value):
            raise argparse.ArgumentTypeError(f"grid file {value!r} does not exist")
        return value
    raise argparse.ArgumentTypeError(f"unknown grid {value!r}; expected one of {', '.join(sorted(GRIDS))} "
                                     "or a .json file")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``diffode calibrate``: the grid that minimises an integrator's error at a budget, judged on other noise.

    Calibrates on ``--pilots`` samples of ``--seed`` (:func:`diffode.calibrate.calibrate_grid`), writes the
    grid to ``--out`` as JSON, and reports the RMSE of the calibrated and the standard grids on
    ``--test`` samples of seed ``--seed + 1``.

    Args:
        args: The parsed command line.

    Returns:
        The exit status (0).
    """
    from diffode import study
    from diffode.calibrate import BASELINE_GRIDS, calibrate_grid, grid_error

    reporter = Reporter(args)
    if not args.out.endswith(".json"):
        raise UsageError(f"--out must end in .json, got {args.out!r}")
    for name in ("nfe", "pilots", "test"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    integrator = study.configure_integrator(args.integrator, **_parse_options(args.option))
    model, shape, _, analytic = _resolve_model(args, torch.float64, torch.device("cpu"))
    schedule = model.schedule
    rtol = args.rtol if args.rtol is not None else (1e-8 if analytic else 1e-6)

    def noise(batch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return schedule.prior_sample((batch, *shape), generator=g, dtype=torch.float64)

    pilot, test = noise(args.pilots, args.seed), noise(args.test, args.seed + 1)
    t_start = schedule.T if args.t_start is None else args.t_start
    t_end = schedule.default_t_end if args.t_end is None else args.t_end
    start = time.perf_counter()
    reporter.note(f"calibrating {integrator!r} at NFE {args.nfe} on {args.pilots} pilot samples (seed {args.seed})")
    with torch.no_grad():
        calibration = calibrate_grid(model, integrator, args.nfe, pilot, method=args.method, t_start=t_start,
                                     t_end=t_end, knots=args.knots, max_runs=args.max_runs,
                                     significance=args.significance, rtol=rtol)
        reporter.note(f"judging on {args.test} held-out samples (seed {args.seed + 1})")
        exact = study.ground_truth(model, test, t_start, t_end, rtol=rtol, atol=rtol)
        held_out = {}
        for name in ("calibrated", *BASELINE_GRIDS):
            grid = calibration.grid if name == "calibrated" else name
            plan = integrator.plan(schedule, args.nfe, grid=grid, t_start=t_start, t_end=t_end)
            held_out[name] = grid_error(model, test, exact, integrator, plan.times, plan.orders)
    seconds = time.perf_counter() - start
    best = min(BASELINE_GRIDS, key=held_out.get)
    meta = {"model": args.model, "seed": args.seed, "test_seed": args.seed + 1, "test_samples": args.test,
            "held_out_rmse": held_out, "pilot_rmse_standard_grids": calibration.baselines}
    report.atomic_write(args.out, lambda tmp: calibration.grid.to_json(tmp, **_clean(meta)))
    rows = [[name, f"{calibration.baselines.get(name, calibration.pilot_error):.3e}", f"{held_out[name]:.3e}"]
            for name in ("calibrated", *BASELINE_GRIDS)]
    reporter.text(f"{integrator!r} at NFE {args.nfe} on {args.model} under {schedule!r}: RMSE against the RK45 "
                  f"ground truth; pilots: {args.pilots} samples of seed {args.seed}, held out: {args.test} of seed "
                  f"{args.seed + 1}")
    reporter.text()
    reporter.text(report.markdown_table(["grid", "pilot RMSE", "held-out RMSE"], rows))
    reporter.text()
    reporter.text(f"calibrated / best standard grid ({best}) on held-out noise: "
                  f"{held_out['calibrated'] / held_out[best]:.2f}; {calibration.runs} runs in {seconds:.1f} s "
                  f"-> {args.out}")
    reporter.document(_clean({"path": args.out, "integrator": repr(integrator), "nfe": args.nfe,
                              "times": calibration.grid.values.tolist(), "pilot_rmse": calibration.pilot_error,
                              "seconds": seconds, **meta}))
    return 0


# -- diffode likelihood --------------------------------------------------------------------------


def _load_data(path: str) -> torch.Tensor:
    """Samples from a ``.pt`` (a tensor, or a dict with ``"samples"``, as ``diffode sample`` writes) or ``.npz`` file."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        data = obj.get("samples") if isinstance(obj, dict) else obj
    elif ext == ".npz":
        import numpy as np

        with np.load(path) as arrays:
            key = "samples" if "samples" in arrays.files else arrays.files[0]
            data = torch.from_numpy(arrays[key])
    else:
        raise UsageError(f"--data must be a .pt or .npz file, got {path!r}")
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.ndim < 2:
        raise UsageError(f"--data {path} must hold a floating tensor of shape (B, ...) (a .pt tensor or a dict with "
                         "'samples', as diffode sample writes)")
    return data


def cmd_likelihood(args: argparse.Namespace) -> int:
    """``diffode likelihood``: log p and bits/dim through the probability-flow ODE (:mod:`diffode.likelihood`).

    The data come from ``--data`` (a file) or, for the built-in analytic mixture, are drawn from it;
    then its exact marginal density is printed beside the estimate.

    Args:
        args: The parsed command line.

    Returns:
        The exit status (0).
    """
    from diffode.likelihood import log_likelihood
    from diffode.models.analytic import AnalyticPredictor

    reporter = Reporter(args)
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.probes != 1 and args.divergence == "exact":
        raise UsageError(f"--probes {args.probes} needs --divergence hutchinson")
    device, dtype = _device(args.device), DTYPES[args.dtype]
    model, shape, _, _ = _resolve_model(args, dtype, device)
    if args.data:
        x = _load_data(args.data)
        if tuple(x.shape[1:]) != tuple(shape):
            raise UsageError(f"--data holds samples of shape {tuple(x.shape[1:])}, the model's are {tuple(shape)}")
        x = x[:args.batch]
    elif isinstance(model, AnalyticPredictor):
        x = model.mixture.sample(args.batch, generator=torch.Generator().manual_seed(args.seed))
    else:
        raise UsageError(f"pass --data FILE (.pt or .npz) with samples to score under {args.model}")
    x = x.to(device, dtype)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    start = time.perf_counter()
    result = log_likelihood(model, x, t_end=args.t_end, divergence=args.divergence, probe=args.probe,
                            n_probes=args.probes, generator=generator, rtol=args.rtol, atol=args.atol)
    seconds = time.perf_counter() - start
    bpd = result.bits_per_dim(data_scale=args.data_scale)
    t_end = model.schedule.default_t_end if args.t_end is None else args.t_end
    exact = None
    if isinstance(model, AnalyticPredictor):
        exact = model.mixture.log_prob(x, t_end, model.schedule).detach().cpu()
    log_p = result.log_p.detach().cpu()
    reporter.text(f"log p at t = {t_end:g} by the probability-flow ODE ({args.divergence} divergence"
                  + (f", {args.probes} {args.probe} probe(s)" if args.divergence == "hutchinson" else "")
                  + f"; {model.schedule!r}, {x.shape[0]} samples of shape {tuple(shape)})")
    reporter.text()
    header = ["sample", "log p (nats)", "bits/dim"] + (["stderr"] if result.stderr is not None else []) \
        + (["exact log p", "error"] if exact is not None else [])
    rows = []
    for i in range(x.shape[0]):
        row = [str(i), f"{float(log_p[i]):.6f}", f"{float(bpd[i]):.6f}"]
        if result.stderr is not None:
            row.append(f"{float(result.stderr[i]):.3g}")
        if exact is not None:
            row += [f"{float(exact[i]):.6f}", f"{float(log_p[i] - exact[i]):.2e}"]
        rows.append(row)
    from diffode.report import markdown_table

    reporter.text(markdown_table(header, rows))
    reporter.text()
    reporter.text(f"mean bits/dim {float(bpd.mean()):.6f} (data scale {args.data_scale:g}); "
                  f"{result.nfe} ODE evaluations in {seconds:.1f} s")
    reporter.document(_clean({
        "model": args.model, "schedule": repr(model.schedule), "t_end": t_end, "divergence": args.divergence,
        "probe": args.probe if args.divergence == "hutchinson" else None, "probes": args.probes,
        "dims": result.dims, "data_scale": args.data_scale, "nfe": result.nfe, "seconds": seconds,
        "log_p": log_p.tolist(), "bits_per_dim": bpd.detach().cpu().tolist(),
        "mean_bits_per_dim": float(bpd.mean()),
        "stderr": None if result.stderr is None else result.stderr.detach().cpu().tolist(),
        "exact_log_p": None if exact is None else exact.tolist()}))
    return 0


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffode`` command and its subcommands."""
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
    p.add_argument("--grid", type=_grid_argument, default="logSNR", help=GRID_HELP + " (default logSNR)")
    p.add_argument("--batch", type=int, default=None, help="samples per run (default 16; 8 with --model digits)")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T")
    p.add_argument("--plot", default=None, help="PNG to write (default diffode_demo.png, "
                                                "diffode_digits.png for --model digits)")
    p.add_argument("--no-plot", action="store_true", help="write no image")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("sample", parents=[common], help="sample with any integrator and write the samples",
                       description="Sample a built-in model or your own (package.module:factory, returning a "
                                   "network net(x, t_input) or a diffode Predictor) and write the samples to a "
                                   ".pt or .npz file, atomically; or, with --num-samples and --out-dir, many "
                                   "samples in checksummed shards, resumable and shared across torchrun processes.")
    p.add_argument("-o", "--out", default=None, help="output file, .pt or .npz (or use --out-dir)")
    p.add_argument("--out-dir", default=None,
                   help="folder for many samples in shards (with --num-samples; rerun the same command to resume)")
    p.add_argument("--num-samples", type=int, default=None, help="how many samples to write to --out-dir")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard file (with --out-dir)")
    p.add_argument("--model", default="mixture", help="mixture, digits, or package.module:factory")
    p.add_argument("--integrator", default="dpmpp_2m", help="a registered integrator (see diffode list)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="integrator option, repeatable (e.g. --option order=3 --option solver_type=taylor)")
    p.add_argument("--nfe", type=int, default=20, help="model evaluations (fixed-step integrators)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="noise schedule")
    p.add_argument("--parameterization", choices=sorted(PARAMETERIZATIONS), default=None,
                   help="what a user network predicts (default noise); built-in models bring their own")
    p.add_argument("--grid", type=_grid_argument, default="logSNR",
                   help=GRID_HELP + " (default logSNR, as demo and converge: on the built-in mixture it gives 13x "
                        "lower error than time_uniform with dpmpp_2m at NFE 20)")
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
                                   "the orders fitted where the errors are asymptotic (the steps used are "
                                   "shown), and a plot. A CI gate: exit status 0 when every order is met, 1 "
                                   "when an asymptotic slope misses its nominal order by more than --tolerance, "
                                   "3 when the step counts cannot show an order (inconclusive: errors not in "
                                   "the asymptotic regime, or at the ground truth's error floor).")
    p.add_argument("--model", default="mixture",
                   help="built-in model (default mixture, whose exact prediction is smooth in lambda; the digits "
                        "network varies at the scale of its 1000 training steps, so its orders need steps much "
                        "finer than these defaults and the study is usually inconclusive)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="schedule (default discrete)")
    p.add_argument("--integrators", nargs="+", metavar="NAME",
                   help=f"registered integrators (default {' '.join(CONVERGE_INTEGRATORS)}; with --model digits "
                        f"{' '.join(DIGITS_INTEGRATORS)})")
    p.add_argument("--orders", nargs="+", type=int, help="run each integrator at each of these orders")
    p.add_argument("--steps", nargs="+", type=int, default=[128, 256, 512, 1024],
                   help="step counts (default 128 256 512 1024: the asymptotic regime of the built-in mixture)")
    p.add_argument("--grid", type=_grid_argument, default="logSNR", help=GRID_HELP + " (default logSNR)")
    p.add_argument("--tolerance", type=float, default=0.25, help="allowed |slope - order|")
    p.add_argument("--batch", type=int, default=8, help="samples")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T")
    p.add_argument("--t-start", type=float, default=None, help="start time (default T)")
    p.add_argument("--t-end", type=float, default=None, help="end time (default 1/N or 1e-3)")
    p.add_argument("--plot", default="diffode_convergence.png", help="PNG to write")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.set_defaults(handler=cmd_converge)

    p = sub.add_parser("calibrate", parents=[common], help="calibrate a time grid for an integrator and a budget",
                       description="Find the time grid on which an integrator, with a budget of model evaluations, "
                                   "best follows the model's ODE on a few pilot samples; write it as JSON (use it with "
                                   "--grid FILE) and report its error on held-out noise beside the standard grids.")
    p.add_argument("-o", "--out", required=True, help="the grid file to write (.json)")
    p.add_argument("--model", default="mixture", help="mixture, digits, or package.module:factory")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="noise schedule")
    p.add_argument("--parameterization", choices=sorted(PARAMETERIZATIONS), default=None,
                   help="what a user network predicts (default noise); built-in models bring their own")
    p.add_argument("--shape", nargs="+", type=int, help="shape of one sample (user models)")
    p.add_argument("--integrator", default="dpmpp_2m", help="a fixed-grid integrator (see diffode list)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="integrator option, repeatable")
    p.add_argument("--nfe", type=int, default=10, help="the budget of model evaluations")
    p.add_argument("--method", choices=["search", "family", "dp"], default="search",
                   help="search (default: the best standard or one-parameter-family grid, then warped), family "
                        "(that grid alone) or dp (GITS's dynamic programming)")
    p.add_argument("--knots", type=int, default=2, help="interior knots of the search's warp (0: no warp)")
    p.add_argument("--significance", type=float, default=2.0,
                   help="standard errors by which a candidate grid must beat the current best on the pilots")
    p.add_argument("--pilots", type=int, default=256,
                   help="pilot samples to calibrate on (default 256: fewer fit their own mode flips)")
    p.add_argument("--test", type=int, default=256, help="held-out samples to judge on (seed + 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pilot noise")
    p.add_argument("--max-runs", type=int, default=200, help="most sampling runs of the search")
    p.add_argument("--rtol", type=float, default=None, help="ground-truth tolerance (default 1e-8; 1e-6 for networks)")
    p.add_argument("--t-start", type=float, default=None, help="start time (default T)")
    p.add_argument("--t-end", type=float, default=None, help="end time (default 1/N or 1e-3)")
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("likelihood", parents=[common], help="log p and bits/dim through the probability-flow ODE",
                       description="Log-likelihoods (nats) and bits/dim of data under a built-in model or your "
                                   "own (package.module:factory), by the probability-flow ODE with the exact "
                                   "divergence or Hutchinson's estimator. The built-in mixture scores its own "
                                   "samples and prints its exact density beside the estimate.")
    p.add_argument("--model", default="mixture", help="mixture, digits, or package.module:factory")
    p.add_argument("--data", default=None, help=".pt or .npz file of samples (B, ...), e.g. from diffode sample")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="noise schedule")
    p.add_argument("--parameterization", choices=sorted(PARAMETERIZATIONS), default=None,
                   help="what a user network predicts (default noise); built-in models bring their own")
    p.add_argument("--shape", nargs="+", type=int, help="shape of one sample (user models)")
    p.add_argument("--divergence", choices=("exact", "hutchinson"), default="exact",
                   help="exact trace (one backward pass per dimension) or Hutchinson's estimator")
    p.add_argument("--probe", choices=("rademacher", "gaussian"), default="rademacher", help="Hutchinson's probes")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes (several give a standard error)")
    p.add_argument("--batch", type=int, default=4, help="samples to score (the first of --data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixture's samples and of the probes")
    p.add_argument("--t-end", type=float, default=None, help="the time the data sit at (default: the schedule's)")
    p.add_argument("--data-scale", type=float, default=2.0,
                   help="dx/du for 8-bit data u in [0, 1): 2 for data in [-1, 1] (default), 1 for [0, 1]")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of the ODE solver")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of the ODE solver")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64", help="dtype of the computation")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(handler=cmd_likelihood)

    p = sub.add_parser("list", parents=[common], help="registered integrators, schedules, parameterizations",
                       description="The registered integrators, schedules, parameterizations, grids and models.")
    p.set_defaults(handler=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (the ``diffode`` console script and ``python -m diffode``).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 1 for a failed convergence gate, 2 for a user mistake, 3 for an
        inconclusive convergence study, 130 on Ctrl-C.
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
        if getattr(args, "plot", None) and not getattr(args, "no_plot", False):
            from diffode.report import check_output_path

            check_output_path(args.plot, "--plot file")  # before minutes of work, not after
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
