"""Reporting of studies: tables, plots and files (the numerics are in :mod:`diffode.study`).

The command line, the benchmarks and the documentation's generators present :mod:`diffode.study`'s
results through these: markdown tables of errors and fitted orders, log-log plots, and files written
atomically (a reader never sees a half-written one).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence

from diffode.study import ConvergenceResult, ErrorRecord

__all__ = ["adaptive_table", "atomic_write", "check_output_path", "convergence_table", "diverged", "error_table",
           "markdown_table", "plot_series", "series_figure"]


def _fmt(value: float) -> str:
    return f"{value:.2e}" if math.isfinite(value) else "nan"


def diverged(record: ErrorRecord, scale: float) -> bool:
    """Whether a run's error exceeds ``scale``, the size of the samples themselves (RMS of the ground
    truth): its result says nothing about the samples any more."""
    return not math.isfinite(record.error) or record.error > scale


def error_table(records: Sequence[ErrorRecord], scale: float | None = None) -> tuple[list[str], list[list[str]]]:
    """Rows of fixed-step integrators, columns of NFE budgets (a cell whose run spent another NFE
    than its budget shows the NFE in parentheses; with ``scale``, a run that :func:`diverged` is
    marked so). Adaptive runs go to :func:`adaptive_table`."""
    fixed = [r for r in records if not r.setting]
    budgets = sorted({r.budget for r in fixed})
    header = ["integrator", *[f"NFE {n}" for n in budgets]]
    rows = []
    for label in dict.fromkeys(r.label for r in fixed):
        by_budget = {r.budget: r for r in fixed if r.label == label}
        row = [label]
        for n in budgets:
            r = by_budget.get(n)
            mark = " diverged" if r is not None and scale is not None and diverged(r, scale) else ""
            row.append("" if r is None else _fmt(r.error) + ("" if r.nfe == n else f" ({r.nfe})") + mark)
        rows.append(row)
    return header, rows


def adaptive_table(records: Sequence[ErrorRecord]) -> tuple[list[str], list[list[str]]]:
    """One row per adaptive run: integrator, tolerance, NFE spent, error."""
    header = ["integrator", "tolerance", "NFE", "RMSE"]
    return header, [[r.label, r.setting, str(r.nfe), _fmt(r.error)] for r in records if r.setting]


def convergence_table(results: Sequence[ConvergenceResult]) -> tuple[list[str], list[list[str]]]:
    """Rows of integrators, columns of step counts, then the fitted slope, the steps it was fitted
    over, the nominal order and the verdict (``yes``, ``NO`` or ``inconclusive``)."""
    steps = sorted({n for r in results for n in r.steps})
    header = ["integrator", *[f"n={n}" for n in steps], "slope", "fitted over", "order", "ok"]
    rows = []
    for r in results:
        by_n = dict(zip(r.steps, r.errors))
        slope = f"{r.slope:.2f}" if math.isfinite(r.slope) else "n/a"
        used = f"{r.used[0]}-{r.used[-1]}" if r.used else "-"
        ok = {"passed": "yes", "failed": "NO"}.get(r.verdict, r.verdict)
        rows.append([r.label, *[_fmt(by_n[n]) if n in by_n else "" for n in steps], slope, used, str(r.order), ok])
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


def check_output_path(path: str | os.PathLike, what: str = "output file") -> str:
    """Check that ``path`` can be written: its folder exists (diffode creates no folders: a typo in
    a path should not leave a new directory tree behind) and ``path`` is not itself a folder.

    Returns:
        ``path`` as a string.

    Raises:
        FileNotFoundError: If the folder does not exist.
        IsADirectoryError: If ``path`` is a folder.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write the {what} {path}: the folder {folder} does not exist "
                                "(diffode creates no folders; create it first)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write the {what} {path}: it is a folder; give a file name")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write a file atomically: ``write(tmp)`` writes a temporary file beside ``path``, which then
    replaces ``path`` in one rename (readers never see a half-written file).

    The temporary name keeps the suffix of ``path``, so writers that choose a format by extension
    (matplotlib, numpy) behave. The folder must exist (:func:`check_output_path`).
    """
    path = check_output_path(path)
    folder = os.path.dirname(os.path.abspath(path))
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


def series_figure(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
                  xlabel: str = "NFE", ylabel: str = "RMSE vs RK45"):
    """The matplotlib figure of :func:`plot_series` (the caller closes it).

    The title wraps to the width of the axes, so a long one is not clipped at the figure's edges,
    and the legend sits to the right of the axes, where it cannot cover a data point.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for label, (xs, ys) in series.items():
        pts = [(a, b) for a, b in zip(xs, ys) if b > 0 and math.isfinite(b)]
        if pts:
            ax.loglog(*zip(*pts), marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def plot_series(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                title: str = "", xlabel: str = "NFE", ylabel: str = "RMSE vs RK45") -> None:
    """A log-log plot of ``label -> (xs, ys)`` series, written atomically to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = series_figure(series, title=title, xlabel=xlabel, ylabel=ylabel)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
